"""Query-free model inversion: rMLE against a shadow client trained through the server.

Threat model (He, Zhang, Lee 2019, query-free): the attacker is the server. It observes the
smash ``z``, holds the trained server (``server_apply``, ``server_params``), knows the
client's architecture (``client_apply``, ``client_init``) and has auxiliary labelled data
(``aux_x``, ``aux_y``) from the same distribution. It can neither query the client nor
see its parameters. It trains a shadow client ``f'`` so that the frozen server classifies
``f'(aux_x)`` correctly, then inverts ``f'`` by rMLE at the observed smash.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from split_workbench.attacks.base import AbstractAttack, AttackResult, Observation
from split_workbench.attacks.common import (
    BOXES,
    INITS,
    check_choice,
    check_images,
    check_nonneg,
    check_positive,
    check_smash,
    initial_images,
    input_shape_of,
    minibatch,
    reinit_like,
    timed,
)
from split_workbench.attacks.registry import register_attack
from split_workbench.attacks.rmle import RMLEConfig, _rmle

__all__ = ["QueryFree", "ShadowConfig", "train_shadow_client"]


class ShadowConfig(NamedTuple):
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3


def _train_shadow(client_apply, server_apply, server_params, shadow0, xs, ys, key, cfg: ShadowConfig):
    opt = optax.adam(cfg.lr)
    n = xs.shape[0]

    def loss_fn(p, x, y):
        logits = server_apply(server_params, client_apply(p, x))
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, i):
        p, s = carry
        idx = minibatch(key, i, n, cfg.batch_size)
        loss, g = jax.value_and_grad(loss_fn)(p, xs[idx], ys[idx])
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), loss

    (p, _), losses = jax.lax.scan(step, (shadow0, opt.init(shadow0)), jnp.arange(cfg.steps))
    return p, losses


def _query_free(client_apply, server_apply, server_params, shadow0, xs, ys, z, x0, key, scfg, rcfg):
    shadow, shadow_losses = _train_shadow(client_apply, server_apply, server_params, shadow0, xs, ys, key, scfg)
    x, per_SxN, final = _rmle(client_apply, shadow, z, x0, rcfg)
    return x, per_SxN, final, shadow_losses


_query_free_jit = jax.jit(_query_free, static_argnames=("client_apply", "server_apply", "scfg", "rcfg"))


def train_shadow_client(client_apply, server_apply, server_params, client_init, aux_x, aux_y, *,
                        key: jax.Array, config: ShadowConfig = ShadowConfig()):
    """A shadow client (re-initialised from ``client_init``'s structure) trained so that the
    frozen server classifies its outputs on ``(aux_x, aux_y)``; returns ``(params, losses)``."""
    k_init, k_train = jax.random.split(key)
    shadow0 = reinit_like(client_init, key=k_init)
    fn = jax.jit(_train_shadow, static_argnames=("client_apply", "server_apply", "cfg"))
    return fn(client_apply, server_apply, server_params, shadow0, aux_x, aux_y, k_train, config)


@register_attack("query_free")
class QueryFree(AbstractAttack):
    """Query-free attack (He et al. 2019): shadow client through the frozen server, then rMLE.

    Needs ``smash``, ``client_apply``, ``client_init``, ``server_apply``, ``server_params``,
    ``aux_x``, ``aux_y``. The shadow starts from ``client_init``'s structure with each leaf's
    entries randomly permuted (the attacker knows the architecture and the initialiser's
    scale, not the victim's initial weights). ``shadow_steps``/``shadow_lr`` train the
    shadow; ``steps``, ``lr``, ``tv``, ``init``, ``box`` configure the rMLE stage. Returns
    images in [0, 1] and stats ``shadow_loss_curve``, ``loss_curve``, ``steps``, ``seconds``.
    """

    name = "query_free"
    needs = frozenset({"smash", "client_apply", "client_init", "server_apply", "server_params", "aux_x", "aux_y"})
    kind = "inversion"

    def __init__(self, *, shadow_steps: int = 1000, shadow_lr: float = 1e-3, batch_size: int = 64,
                 steps: int = 500, lr: float = 0.01, tv: float = 0.05, init: str = "grey", box: str = "clip"):
        n = self.name
        self.shadow = ShadowConfig(check_positive("shadow_steps", shadow_steps, n, integer=True),
                                   check_positive("batch_size", batch_size, n, integer=True),
                                   check_positive("shadow_lr", shadow_lr, n))
        self.rmle = RMLEConfig(steps=check_positive("steps", steps, n, integer=True), lr=check_positive("lr", lr, n),
                               tv=check_nonneg("tv", tv, n), init=check_choice("init", init, INITS, n),
                               box=check_choice("box", box, BOXES, n))

    def run(self, obs: Observation, *, key: jax.Array) -> AttackResult:
        smash = check_smash(obs.smash, self.name)
        shape = input_shape_of(obs, self.name)
        aux_x = check_images(obs.aux_x, self.name)
        aux_y = jnp.asarray(obs.aux_y)
        if aux_y.shape != (aux_x.shape[0],) or not jnp.issubdtype(aux_y.dtype, jnp.integer):
            raise ValueError(f"{self.name}: aux_y must be integer labels of shape ({aux_x.shape[0]},), "
                             f"got {aux_y.dtype} {aux_y.shape}")
        k_perm, k_train, k_x0 = jax.random.split(key, 3)
        shadow0 = reinit_like(obs.client_init, key=k_perm)
        x0 = initial_images((smash.shape[0], *shape), self.rmle.init, key=k_x0)
        (x, per_SxN, final, shadow_losses), seconds = timed(
            _query_free_jit, obs.client_apply, obs.server_apply, obs.server_params, shadow0, aux_x, aux_y,
            smash, x0, k_train, self.shadow, self.rmle)
        return AttackResult(x, {"loss_curve": per_SxN.mean(axis=1), "final_loss": final,
                                "shadow_loss_curve": shadow_losses, "steps": self.rmle.steps,
                                "shadow_steps": self.shadow.steps, "seconds": seconds,
                                "images_per_second": smash.shape[0] / seconds, "aux_size": int(np.shape(aux_x)[0])})
