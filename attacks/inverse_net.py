"""Inverse network: black-box model inversion with a decoder trained on the attacker's queries.

Threat model (He, Zhang, Lee 2019, black-box): the attacker observes the smash ``z`` and
may query the deployed client with its own auxiliary inputs (``query(aux_x)`` returns the
smash as the wire would carry it, defenses included). It never sees the client's
parameters. It trains a decoder ``g: z -> x`` on ``(query(aux_x), aux_x)`` with pixel MSE
(one ``lax.scan`` over Adam steps) and returns ``g(z)`` for the observed smash.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from split_workbench.attacks.base import AbstractAttack, AttackResult, Observation
from split_workbench.attacks.common import (
    ModuleApply,
    check_images,
    check_positive,
    check_smash,
    input_shape_of,
    minibatch,
    timed,
)
from split_workbench.attacks.registry import register_attack
from split_workbench.ops import conv_kwargs

__all__ = ["InverseNet", "InverseNetConfig", "Decoder", "make_decoder", "train_decoder"]


class Decoder(nnx.Module):
    """A decoder from smash shape to image shape, derived from the smash shape.

    Flat smash (D,): Dense(D, 16 width) - ReLU - Dense(16 width, H*W*C). Spatial smash (h, w, c):
    a stride-2 transposed conv per doubling needed to approach (H, W), two 3x3 convs at that
    resolution, a bilinear resize to (H, W) for any remaining factor, then one 3x3 conv to C
    channels. The wide convs run at the (smaller) smash resolution, which keeps the decoder
    cheap enough to train in seconds on a CPU. A sigmoid keeps outputs in [0, 1].
    """

    def __init__(self, smash_shape: tuple[int, ...], input_shape: tuple[int, ...], *, width: int,
                 rngs: nnx.Rngs):
        self.input_shape = tuple(input_shape)
        h_out, w_out, c_out = self.input_shape
        if len(smash_shape) == 1:
            self.spatial = False
            self.dense = nnx.List([nnx.Linear(smash_shape[0], 16 * width, rngs=rngs),
                                   nnx.Linear(16 * width, h_out * w_out * c_out, rngs=rngs)])
            return
        if len(smash_shape) != 3:
            raise ValueError(f"inverse_net derives decoders for flat (D,) or spatial (H, W, C) smash, got "
                             f"{smash_shape}; pass decoder= for other shapes")
        self.spatial = True
        h, _, c = smash_shape
        ups = []
        while 2 * h <= h_out:
            # a stride-2 transposed conv, written as an input-dilated conv (the same layer
            # up to a flip of its learnt kernel) so its gradients take split_workbench.ops' path
            ups.append(nnx.Conv(c, width, (4, 4), input_dilation=2, padding=((2, 2), (2, 2)), rngs=rngs,
                                **conv_kwargs()))
            c, h = width, 2 * h
        self.ups = nnx.List(ups)
        self.conv_in = nnx.Conv(c, width, (3, 3), padding="SAME", rngs=rngs, **conv_kwargs())
        self.conv_mid = nnx.Conv(width, width, (3, 3), padding="SAME", rngs=rngs, **conv_kwargs())
        # A small size gap (e.g. 24 -> 28 after a VALID 5x5 conv) is closed by one VALID
        # transposed conv, which undoes that conv's geometry and is much cheaper than a
        # resize followed by a full-resolution conv; larger gaps resize first.
        dh, dw = h_out - h, w_out - smash_shape[1] * (h // smash_shape[0])
        self.valid_gap = 0 <= dh <= 8 and 0 <= dw <= 8
        if self.valid_gap:
            # a VALID transposed conv: a "full" conv padded by kernel size - 1
            self.conv_out = nnx.Conv(width, c_out, (dh + 1, dw + 1), padding=((dh, dh), (dw, dw)), rngs=rngs,
                                     **conv_kwargs())
        else:
            self.conv_out = nnx.Conv(width, c_out, (3, 3), padding="SAME", rngs=rngs, **conv_kwargs())

    def __call__(self, z):
        n = z.shape[0]
        if not self.spatial:
            hdn = jax.nn.relu(self.dense[0](z))
            return jax.nn.sigmoid(self.dense[1](hdn)).reshape(n, *self.input_shape)
        for up in self.ups:
            z = jax.nn.relu(up(z))
        hdn = jax.nn.relu(self.conv_mid(jax.nn.relu(self.conv_in(z))))
        h_out, w_out, _ = self.input_shape
        if not self.valid_gap:
            hdn = jax.image.resize(hdn, (n, h_out, w_out, hdn.shape[-1]), "bilinear")
        return jax.nn.sigmoid(self.conv_out(hdn))


def make_decoder(smash_shape: tuple[int, ...], input_shape: tuple[int, ...], *, key: jax.Array,
                 width: int = 16) -> tuple[Callable, Any]:
    """``(apply, params)`` of the default ``Decoder`` for these shapes."""
    graphdef, params = nnx.split(Decoder(tuple(smash_shape), tuple(input_shape), width=width,
                                         rngs=nnx.Rngs(params=key)), nnx.Param)
    return ModuleApply(graphdef), params


class InverseNetConfig(NamedTuple):
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3


def _train_decoder(apply, params, zs, xs, key, cfg: InverseNetConfig):
    opt = optax.adam(cfg.lr)
    n = zs.shape[0]

    def step(carry, i):
        p, s = carry
        idx = minibatch(key, i, n, cfg.batch_size)
        loss, g = jax.value_and_grad(lambda p: jnp.mean(jnp.square(apply(p, zs[idx]) - xs[idx])))(p)
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(cfg.steps))
    return params, losses


def smash_standardizer(zs: jax.Array) -> Callable:
    """Per-channel (last axis) standardisation fitted on the attacker's own smash ``zs``.

    Deep cuts carry activations of arbitrary scale (tens after a trained ReLU); fed raw, a
    small decoder trained with Adam at 1e-3 saturates and learns the mean image. The
    statistics come from the attacker's queries only, never from the observed smash.
    """
    axes = tuple(range(zs.ndim - 1))
    mu = jnp.mean(zs, axis=axes)
    sd = jnp.std(zs, axis=axes) + 1e-6 * (1.0 + jnp.mean(jnp.abs(zs)))
    return lambda z: (z - mu) / sd


def _inverse_net(apply, params, zs, xs, z_obs, key, cfg, standardize):
    if standardize:
        norm = smash_standardizer(zs)
        zs, z_obs = norm(zs), norm(z_obs)
    params, losses = _train_decoder(apply, params, zs, xs, key, cfg)
    return jnp.clip(apply(params, z_obs), 0.0, 1.0), losses


_inverse_net_jit = jax.jit(_inverse_net, static_argnames=("apply", "cfg", "standardize"))


def train_decoder(apply: Callable, params: Any, smash: jax.Array, images: jax.Array, *, key: jax.Array,
                  config: InverseNetConfig = InverseNetConfig()):
    """Fits ``apply(params, smash) ~ images`` by pixel MSE; returns ``(params, loss per step)``."""
    return jax.jit(_train_decoder, static_argnames=("apply", "cfg"))(apply, params, smash, images, key, config)


@register_attack("inverse_net")
class InverseNet(AbstractAttack):
    """Inverse network (He et al. 2019): black-box inversion through a learnt decoder.

    Needs ``smash``, ``query``, ``aux_x``. The attacker's training pairs are
    ``(query(aux_x), aux_x)``: a decoder trained on them sees exactly the distribution of
    smash the wire carries (with defenses), so it is scored against what really crosses.
    ``standardize`` (default) feeds the decoder the smash standardised per channel with the
    mean and std of the attacker's own queries (``smash_standardizer``).
    ``decoder`` optionally supplies ``decoder(smash_shape, input_shape, *, key) -> (apply,
    params)`` (``apply`` must be hashable); by default it is derived from the smash shape.
    Returns images in [0, 1] and stats ``loss_curve`` (training MSE per step), ``steps``,
    ``seconds``.
    """

    name = "inverse_net"
    needs = frozenset({"smash", "query", "aux_x"})
    kind = "inversion"

    def __init__(self, *, steps: int = 1500, batch_size: int = 64, lr: float = 1e-3, width: int = 16,
                 standardize: bool = True, decoder: Callable | None = None):
        n = self.name
        if not isinstance(standardize, bool):
            raise TypeError(f"{n}: standardize must be True or False, got {standardize!r}")
        self.config = InverseNetConfig(check_positive("steps", steps, n, integer=True),
                                       check_positive("batch_size", batch_size, n, integer=True),
                                       check_positive("lr", lr, n))
        self.standardize = standardize
        self.width = check_positive("width", width, n, integer=True)
        if decoder is not None and not callable(decoder):
            raise TypeError(f"{n}: decoder must be a callable (smash_shape, input_shape, *, key) -> (apply, params)")
        self.decoder = decoder

    def run(self, obs: Observation, *, key: jax.Array) -> AttackResult:
        smash = check_smash(obs.smash, self.name)
        aux_x = check_images(obs.aux_x, self.name)
        shape = input_shape_of(obs, self.name)
        if aux_x.shape[1:] != shape:
            raise ValueError(f"{self.name}: aux_x images are {aux_x.shape[1:]} but the private inputs are {shape}")
        aux_z = check_smash(obs.query(aux_x), self.name)
        if aux_z.shape[1:] != smash.shape[1:]:
            raise ValueError(f"{self.name}: query returned smash of shape {aux_z.shape[1:]}, the observed smash "
                             f"is {smash.shape[1:]}: the query must reach the same cut")
        k_init, k_train = jax.random.split(key)
        smash_shape = tuple(int(d) for d in smash.shape[1:])
        if self.decoder is None:
            apply, params = make_decoder(smash_shape, shape, key=k_init, width=self.width)
        else:
            apply, params = self.decoder(smash_shape, shape, key=k_init)
        (x, losses), seconds = timed(_inverse_net_jit, apply, params, aux_z, aux_x, smash, k_train, self.config,
                                     self.standardize)
        return AttackResult(x, {"loss_curve": losses, "steps": self.config.steps, "seconds": seconds,
                                "images_per_second": smash.shape[0] / seconds,
                                "aux_size": int(np.shape(aux_x)[0])})
