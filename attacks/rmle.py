"""Regularised maximum-likelihood estimation (rMLE): white-box model inversion.

Threat model (He, Zhang, Lee 2019, white-box): the attacker observes the smash ``z`` that
crossed the wire and knows the client's architecture AND parameters. It solves

    x* = argmin_{x in [0,1]^n}  d(f_client(x), z) + tv * TV(x) + l2 * mean(x^2)

with Adam from a constant grey (or random) image, where ``d`` is the mean squared error
(``loss="l2"``) or, for an adaptive attacker that knows the wire adds Laplace noise, the
mean absolute error (``loss="l1"``, the Laplace negative log-likelihood).

A whole batch of targets is one jitted program: the objective is the SUM of per-image
objectives and Adam is elementwise, so every image follows exactly the trajectory it
would follow alone, while the client runs once per step on the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from split_workbench.attacks.base import AbstractAttack, AttackResult, Observation
from split_workbench.attacks.common import (
    BOXES,
    INITS,
    LOSSES,
    check_choice,
    check_nonneg,
    check_positive,
    check_smash,
    data_term,
    from_box,
    initial_images,
    input_shape_of,
    timed,
    to_box,
    total_variation,
)
from split_workbench.attacks.registry import register_attack

__all__ = ["RMLE", "RMLEConfig", "rmle_reconstruct"]


class RMLEConfig(NamedTuple):
    """Hashable settings of one rMLE program (a static argument of the jitted program)."""

    steps: int = 500
    lr: float = 0.01
    tv: float = 0.01
    l2: float = 0.0
    loss: str = "l2"
    init: str = "grey"
    box: str = "clip"


def _objective(client_apply, params, u, z, cfg: RMLEConfig):
    x = to_box(u, cfg.box)
    per = data_term(client_apply(params, x), z, cfg.loss) + cfg.tv * total_variation(x)
    if cfg.l2:
        per = per + cfg.l2 * jnp.mean(jnp.square(x).reshape(x.shape[0], -1), axis=1)
    return jnp.sum(per), per


def _rmle(client_apply, params, z, x0, cfg: RMLEConfig):
    opt = optax.adam(cfg.lr)
    u0 = from_box(x0, cfg.box)
    grad = jax.grad(lambda u: _objective(client_apply, params, u, z, cfg), has_aux=True)

    def step(carry, _):
        u, s = carry
        g, per = grad(u)
        upd, s = opt.update(g, s, u)
        u = optax.apply_updates(u, upd)
        if cfg.box == "clip":  # projected Adam: the iterate never leaves the box
            u = jnp.clip(u, 0.0, 1.0)
        return (u, s), per

    (u, _), per_SxN = jax.lax.scan(step, (u0, opt.init(u0)), None, length=cfg.steps)
    _, final = _objective(client_apply, params, u, z, cfg)
    return to_box(u, cfg.box), per_SxN, final


_rmle_jit = jax.jit(_rmle, static_argnames=("client_apply", "cfg"))


def rmle_reconstruct(client_apply: Callable, client_params: Any, smash: jax.Array, *, key: jax.Array,
                     input_shape: tuple[int, ...], config: RMLEConfig = RMLEConfig(), jit: bool = True):
    """Inverts ``client_apply(client_params, .)`` at every row of ``smash`` (one program).

    Args:
      client_apply: pure ``apply(params, x_NxHxWxC) -> z``; it must be hashable (a bound
        ``Half.apply`` is) because it is a static argument of the compiled program.
      client_params: the parameters the attacker inverts through.
      smash: observed smash, (N, *smash_shape).
      key: draws the random initial images (unused by the grey init, but always required).
      input_shape: (H, W, C) of one private input.
      config: an ``RMLEConfig``.
      jit: False runs the same program eagerly (for tests).

    Returns:
      ``(x_NxHxWxC in [0, 1], loss_SxN per-image objective per step, final_N)``.
    """
    x0 = initial_images((smash.shape[0], *input_shape), config.init, key=key)
    fn = _rmle_jit if jit else _rmle
    return fn(client_apply, client_params, smash, x0, config)


@register_attack("rmle")
class RMLE(AbstractAttack):
    """rMLE (He et al. 2019): white-box inversion of the client from the observed smash.

    Needs ``smash``, ``client_apply``, ``client_params``. Returns images in [0, 1] of the
    observation's ``input_shape`` and stats ``loss_curve`` (mean objective per step),
    ``final_loss`` (per image), ``steps``, ``seconds`` (wall time including compilation on
    the first call for a given shape).

    Box constraint: ``box="clip"`` (default) is projected Adam, ``box="sigmoid"`` optimises
    logits. Projection reconstructs better here: from the grey start the sigmoid's
    gradient shrinks as pixels approach 0 or 1, so the saturated background of
    Fashion-MNIST/MNIST (exact zeros) is reached slowly, while projection reaches the edge
    of the box in a few steps and keeps full-size gradients inside it.

    References:
      He, Zhang, Lee, "Model Inversion Attacks against Collaborative Inference", ACSAC 2019.
    """

    name = "rmle"
    needs = frozenset({"smash", "client_apply", "client_params"})
    kind = "inversion"

    def __init__(self, *, steps: int = 500, lr: float = 0.01, tv: float = 0.01, l2: float = 0.0,
                 loss: str = "l2", init: str = "grey", box: str = "clip"):
        n = self.name
        self.config = RMLEConfig(
            steps=check_positive("steps", steps, n, integer=True), lr=check_positive("lr", lr, n),
            tv=check_nonneg("tv", tv, n), l2=check_nonneg("l2", l2, n),
            loss=check_choice("loss", loss, LOSSES, n), init=check_choice("init", init, INITS, n),
            box=check_choice("box", box, BOXES, n))

    def run(self, obs: Observation, *, key: jax.Array) -> AttackResult:
        smash = check_smash(obs.smash, self.name)
        shape = input_shape_of(obs, self.name)
        (x, per_SxN, final), seconds = timed(
            rmle_reconstruct, obs.client_apply, obs.client_params, smash, key=key, input_shape=shape,
            config=self.config)
        return AttackResult(x, {"loss_curve": per_SxN.mean(axis=1), "final_loss": final,
                                "steps": self.config.steps, "seconds": seconds,
                                "images_per_second": smash.shape[0] / seconds})
