"""Pieces shared by the attack families: image priors, box constraints, validation, timing.

Everything here is a pure function of its arguments (jittable where it touches arrays);
the validators run on the host before any work and raise errors that say how to fix them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from split_workbench.split import GraphApply

__all__ = [
    "total_variation", "data_term", "to_box", "from_box", "initial_images", "reinit_like",
    "check_choice", "check_positive", "check_nonneg", "check_smash", "check_images", "timed",
    "per_image_sum", "input_shape_of", "BOXES", "INITS", "LOSSES", "ModuleApply", "minibatch",
]

BOXES = ("clip", "sigmoid")
INITS = ("grey", "random")
LOSSES = ("l2", "l1")


def per_image_sum(a_NxD: jax.Array) -> jax.Array:
    """Mean over all but the leading axis: one value per example."""
    return jnp.mean(a_NxD.reshape(a_NxD.shape[0], -1), axis=1)


def total_variation(x_NxHxWxC: jax.Array) -> jax.Array:
    """Anisotropic total variation per image, shape (N,): mean |vertical| + mean |horizontal|
    differences (means, not sums, so the weight does not depend on the image size)."""
    dv = jnp.abs(x_NxHxWxC[:, 1:] - x_NxHxWxC[:, :-1])
    dh = jnp.abs(x_NxHxWxC[:, :, 1:] - x_NxHxWxC[:, :, :-1])
    return per_image_sum(dv) + per_image_sum(dh)


def data_term(pred: jax.Array, target: jax.Array, loss: str) -> jax.Array:
    """Per-example feature distance: mean squared (``"l2"``, Gaussian noise model) or mean
    absolute (``"l1"``, the maximum-likelihood loss under Laplace noise) error."""
    diff = pred - target
    return per_image_sum(jnp.square(diff) if loss == "l2" else jnp.abs(diff))


def to_box(u: jax.Array, box: str) -> jax.Array:
    """The image an optimisation variable stands for: clipped or squashed into [0, 1]."""
    return jnp.clip(u, 0.0, 1.0) if box == "clip" else jax.nn.sigmoid(u)


def from_box(x: jax.Array, box: str) -> jax.Array:
    """The optimisation variable for image ``x`` (inverse of ``to_box`` inside the box)."""
    if box == "clip":
        return x
    x = jnp.clip(x, 1e-3, 1.0 - 1e-3)  # finite logits at the box edges
    return jnp.log(x) - jnp.log1p(-x)


def initial_images(shape: tuple[int, ...], init: str, *, key: jax.Array) -> jax.Array:
    """Constant grey (0.5, He et al. 2019; Erdogan et al. 2022) or uniform random images."""
    if init == "grey":
        return jnp.full(shape, 0.5, jnp.float32)
    return jax.random.uniform(key, shape, jnp.float32)


def reinit_like(params: Any, *, key: jax.Array) -> Any:
    """A fresh parameter pytree with the same structure and per-leaf value distribution.

    The attacker knows the architecture (``client_init``) but not the victim's initial
    weights, so each leaf's entries are randomly permuted: the scale of the initialiser is
    kept (zero biases stay zero) while the values no longer match the victim's.
    """
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    out = [jax.random.permutation(k, leaf.reshape(-1)).reshape(leaf.shape) if leaf.size > 1 else leaf
           for k, leaf in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, out)


def check_choice(name: str, value: str, choices: tuple[str, ...], attack: str) -> str:
    if value not in choices:
        raise ValueError(f"{attack}: {name} must be one of {list(choices)}, got {value!r}")
    return value


def check_positive(name: str, value, attack: str, *, integer: bool = False):
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) if integer else \
        isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if not ok or not value > 0 or not np.isfinite(value):
        raise ValueError(f"{attack}: {name} must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return int(value) if integer else float(value)


def check_nonneg(name: str, value, attack: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value >= 0 \
            or not np.isfinite(value):
        raise ValueError(f"{attack}: {name} must be a number >= 0, got {value!r}")
    return float(value)


def check_smash(smash, attack: str) -> jax.Array:
    """The observed smash as a float array with a leading batch axis; finite."""
    smash = jnp.asarray(smash)
    if smash.ndim < 2 or smash.shape[0] < 1:
        raise ValueError(f"{attack}: smash must be a batch (N, *smash_shape) with N >= 1, got shape {smash.shape}")
    if not jnp.issubdtype(smash.dtype, jnp.floating):
        raise ValueError(f"{attack}: smash must be floating point, got {smash.dtype}")
    if not bool(jnp.all(jnp.isfinite(smash))):
        raise ValueError(f"{attack}: the observed smash holds NaN or inf values")
    return smash.astype(jnp.float32)


def check_images(x, attack: str, what: str = "aux_x") -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4 or x.shape[0] < 1:
        raise ValueError(f"{attack}: {what} must be an NHWC batch of images, got shape {x.shape}")
    return x


def input_shape_of(obs, attack: str) -> tuple[int, ...]:
    if obs.input_shape is None:
        raise ValueError(f"{attack}: the observation must carry input_shape (H, W, C) of the private inputs")
    return tuple(int(d) for d in obs.input_shape)


def timed(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` blocked until ready, and its wall time in seconds."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - t0


# ``apply(params, x)`` for an NNX graph definition, hashable by that definition, so it can be
# a static argument of a jitted program and hit the compilation cache across calls.
ModuleApply = GraphApply


def minibatch(key: jax.Array, step, n: int, batch_size: int) -> jax.Array:
    """Indices of one minibatch: the whole set if it is small, else ``batch_size`` uniform
    draws (with replacement: O(batch) per step instead of a permutation of ``n``) with key
    ``fold_in(key, step)``. Jittable; ``n`` and ``batch_size`` are static."""
    if batch_size >= n:
        return jnp.arange(n)
    return jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, n)
