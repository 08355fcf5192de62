"""UnSplit (Erdogan, Küpçü, Çiçek 2022): inversion and label inference knowing only the architecture.

Inversion threat model: the attacker (the server) observes the smash ``z`` and knows the
client's architecture (``client_apply``, ``client_init``) but not its parameters, and has
no auxiliary data. It alternates ``input_steps`` Adam steps on the inputs ``x`` with
``model_steps`` Adam steps on a clone of the client, for ``rounds`` rounds:

    x    <- argmin  MSE(clone(x), z) + tv * TV(x) + l2 * mean(x^2)
    clone <- argmin MSE(clone(x), z)

from a constant 0.5 image (the official code: 1000 rounds of 100 + 100 AMSGrad steps,
lr 1e-3, tv 0.1, l2 1.0; our defaults are shorter, see the class docstring).

Label threat model (``unsplit_labels``): the party holding only the last layer (and the
labels) returns the gradient at its input. The attacker sent the activations ``smash``,
receives ``cut_grads`` and knows that layer's architecture (given as ``client_apply``,
``client_init``: here the "client" is the label party). For every candidate label it
computes the gradient a clone layer would return and picks the closest, training the
clone by gradient matching with the picked labels.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from split_workbench.attacks.base import AbstractAttack, AttackResult, Observation
from split_workbench.attacks.common import (
    check_nonneg,
    check_positive,
    check_smash,
    initial_images,
    input_shape_of,
    per_image_sum,
    reinit_like,
    timed,
    total_variation,
)
from split_workbench.attacks.registry import register_attack

__all__ = ["UnSplit", "UnSplitConfig", "UnSplitLabels", "LabelMatchConfig"]


class UnSplitConfig(NamedTuple):
    rounds: int = 100
    input_steps: int = 20
    model_steps: int = 20
    lr: float = 1e-3
    model_lr: float = 1e-3
    tv: float = 0.1
    l2: float = 1.0


def _unsplit(client_apply, clone0, z, x0, cfg: UnSplitConfig):
    # AMSGrad as in the official code; one clone is shared by the whole batch (the clone is
    # the same client for every target, so every target constrains it).
    x_opt, m_opt = optax.amsgrad(cfg.lr), optax.amsgrad(cfg.model_lr)

    def feat(p, x):
        return per_image_sum(jnp.square(client_apply(p, x) - z))

    def x_obj(x, p):
        per = feat(p, x) + cfg.tv * total_variation(x) + cfg.l2 * per_image_sum(jnp.square(x))
        return jnp.sum(per), per  # a sum: each image's steps are those it would take alone

    def x_step(carry, _):
        x, s, p = carry
        g, per = jax.grad(x_obj, has_aux=True)(x, p)
        upd, s = x_opt.update(g, s, x)
        x = jnp.clip(optax.apply_updates(x, upd), 0.0, 1.0)
        return (x, s, p), per.mean()

    def m_step(carry, _):
        p, s, x = carry
        loss, g = jax.value_and_grad(lambda p: feat(p, x).mean())(p)
        upd, s = m_opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s, x), loss

    def round_(carry, _):
        x, xs, p, ps = carry
        (x, xs, _), x_losses = jax.lax.scan(x_step, (x, xs, p), None, length=cfg.input_steps)
        (p, ps, _), m_losses = jax.lax.scan(m_step, (p, ps, x), None, length=cfg.model_steps)
        return (x, xs, p, ps), (x_losses[-1], m_losses[-1])

    carry0 = (x0, x_opt.init(x0), clone0, m_opt.init(clone0))
    (x, _, clone, _), (x_curve, m_curve) = jax.lax.scan(round_, carry0, None, length=cfg.rounds)
    return x, clone, x_curve, m_curve


_unsplit_jit = jax.jit(_unsplit, static_argnames=("client_apply", "cfg"))


@register_attack("unsplit")
class UnSplit(AbstractAttack):
    """UnSplit inversion: alternate input and clone-model optimisation from a 0.5 image.

    Needs ``smash``, ``client_apply``, ``client_init``. The clone starts from
    ``client_init``'s structure with each leaf randomly permuted (architecture and
    initialiser scale known, weights not). One clone is shared by the batch of targets
    (the paper attacks one client; more targets constrain that one clone better), while
    each image's input steps are independent (sum of per-image objectives, Adam is
    elementwise). Defaults (100 rounds of 20 + 20 steps) are a CPU-sized cut of the official
    1000 x (100 + 100); pass ``rounds=1000, input_steps=100, model_steps=100`` for the
    published protocol. Images are projected onto [0, 1] after every input step.

    Returns images and stats ``loss_curve`` (input objective at the end of each round),
    ``model_loss_curve``, ``rounds``, ``steps`` (input steps in all), ``seconds``.
    """

    name = "unsplit"
    needs = frozenset({"smash", "client_apply", "client_init"})
    kind = "inversion"

    def __init__(self, *, rounds: int = 100, input_steps: int = 20, model_steps: int = 20, lr: float = 1e-3,
                 model_lr: float = 1e-3, tv: float = 0.1, l2: float = 1.0):
        n = self.name
        self.config = UnSplitConfig(
            rounds=check_positive("rounds", rounds, n, integer=True),
            input_steps=check_positive("input_steps", input_steps, n, integer=True),
            model_steps=check_positive("model_steps", model_steps, n, integer=True),
            lr=check_positive("lr", lr, n), model_lr=check_positive("model_lr", model_lr, n),
            tv=check_nonneg("tv", tv, n), l2=check_nonneg("l2", l2, n))

    def run(self, obs: Observation, *, key: jax.Array) -> AttackResult:
        smash = check_smash(obs.smash, self.name)
        shape = input_shape_of(obs, self.name)
        clone0 = reinit_like(obs.client_init, key=key)
        x0 = initial_images((smash.shape[0], *shape), "grey", key=key)
        (x, _, x_curve, m_curve), seconds = timed(_unsplit_jit, obs.client_apply, clone0, smash, x0, self.config)
        c = self.config
        return AttackResult(x, {"loss_curve": x_curve, "model_loss_curve": m_curve, "rounds": c.rounds,
                                "steps": c.rounds * c.input_steps, "seconds": seconds,
                                "images_per_second": smash.shape[0] / seconds})


class LabelMatchConfig(NamedTuple):
    steps: int = 300
    lr: float = 1e-2
    num_classes: int = 10


def _label_grads(client_apply, p, z, num_classes):
    """Gradient at the input of the label party's layer for every candidate label:
    (C, N, *z) — the per-example loss gradient, scaled by 1/N as in a batch-mean loss."""
    n = z.shape[0]

    def grad_for(c):
        y = jnp.full((n,), c, jnp.int32)
        return jax.grad(lambda z_: optax.softmax_cross_entropy_with_integer_labels(client_apply(p, z_), y).mean())(z)

    return jax.vmap(grad_for)(jnp.arange(num_classes))


def _unsplit_labels(client_apply, clone0, z, g_obs, cfg: LabelMatchConfig):
    opt = optax.adam(cfg.lr)
    n = z.shape[0]
    g_NxD = g_obs.reshape(n, -1)
    g_NxD = g_NxD / jnp.maximum(jnp.linalg.norm(g_NxD, axis=1, keepdims=True), 1e-30)

    def dists(p):
        # Cosine distance: the batch size and loss scaling the label party used (which
        # scale every returned gradient) do not matter; a zero gradient matches nothing.
        cand_CxNxD = _label_grads(client_apply, p, z, cfg.num_classes).reshape(cfg.num_classes, n, -1)
        norm = jnp.maximum(jnp.linalg.norm(cand_CxNxD, axis=2, keepdims=True), 1e-30)
        return 1.0 - jnp.einsum("cnd,nd->nc", cand_CxNxD / norm, g_NxD)  # (N, C)

    def step(carry, _):
        p, s = carry

        def loss(p):
            d = dists(p)
            return jnp.mean(jnp.min(d, axis=1))  # match with the best label of each example

        val, g = jax.value_and_grad(loss)(p)
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), val

    (p, _), curve = jax.lax.scan(step, (clone0, opt.init(clone0)), None, length=cfg.steps)
    d = dists(p)
    return jnp.argmin(d, axis=1).astype(jnp.int32), -d, curve


_unsplit_labels_jit = jax.jit(_unsplit_labels, static_argnames=("client_apply", "cfg"))


@register_attack("unsplit_labels")
class UnSplitLabels(AbstractAttack):
    """UnSplit label inference by gradient matching (label party holds only the last layer).

    Needs ``smash`` (the activations the attacker sent to the label party), ``cut_grads``
    (the gradients it got back, from a batch-mean cross-entropy) and ``client_apply``,
    ``client_init`` (the label party's layer architecture). Output: predicted labels
    (N,) int32; stats ``scores`` (N, C) (higher is a better match), ``loss_curve``, ``steps``,
    ``seconds``. Accuracy is scored outside the attack against the true labels.
    """

    name = "unsplit_labels"
    needs = frozenset({"smash", "cut_grads", "client_apply", "client_init"})
    kind = "label"

    def __init__(self, *, steps: int = 300, lr: float = 1e-2, num_classes: int = 10):
        n = self.name
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"{n}: num_classes must be an integer >= 2, got {num_classes!r}")
        self.config = LabelMatchConfig(check_positive("steps", steps, n, integer=True), check_positive("lr", lr, n),
                                       num_classes)

    def run(self, obs: Observation, *, key: jax.Array) -> AttackResult:
        smash = check_smash(obs.smash, self.name)
        grads = check_smash(obs.cut_grads, self.name)
        if grads.shape != smash.shape:
            raise ValueError(f"{self.name}: cut_grads {grads.shape} must have the smash's shape {smash.shape}")
        try:
            out = jax.eval_shape(obs.client_apply, obs.client_init, smash)
        except (TypeError, ValueError) as e:
            # The usual cause: the server's view of a run (client_apply = the client, which
            # takes images) handed to an attack whose "client" is the label party's layer.
            raise ValueError(
                f"{self.name}: client_apply must be the label party's layer, mapping the smash "
                f"{tuple(smash.shape[1:])} to logits (e.g. client_apply=server.apply, "
                f"client_init=the server's initial parameters); applying it to the smash failed: {e}") from None
        if out.shape != (smash.shape[0], self.config.num_classes):
            raise ValueError(f"{self.name}: the label party's layer outputs {out.shape[1:]}, expected "
                             f"({self.config.num_classes},) logits: set num_classes")
        clone0 = reinit_like(obs.client_init, key=key)
        (labels, scores, curve), seconds = timed(_unsplit_labels_jit, obs.client_apply, clone0, smash, grads,
                                                 self.config)
        return AttackResult(labels, {"scores": scores, "loss_curve": curve, "steps": self.config.steps,
                                     "seconds": seconds, "images_per_second": smash.shape[0] / seconds})
