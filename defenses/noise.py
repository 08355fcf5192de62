"""Additive noise on the smash (Titcombe et al. 2021): Gaussian and Laplace.

Guarantee: empirical, no formal guarantee. The smash is not clipped, so its sensitivity
is unbounded and the noise buys no (epsilon, delta); use ``dp_smash`` for a formal one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from split_workbench.defenses import _checks
from split_workbench.defenses.base import Defense, stateless
from split_workbench.defenses.registry import register_defense, vmappable

__all__ = ["gaussian_noise", "laplace_noise", "add_gaussian", "add_laplace"]

_EMPIRICAL = "empirical, no formal guarantee (unclipped smash: unbounded sensitivity)"


def add_gaussian(z: jax.Array, sigma: float, *, key: jax.Array) -> jax.Array:
    """``z + sigma * N(0, I)`` in ``z``'s dtype. NaN/inf in ``z`` pass through unchanged."""
    return z + (sigma * jax.random.normal(key, z.shape, jnp.float32)).astype(z.dtype)


def add_laplace(z: jax.Array, scale: float, *, key: jax.Array) -> jax.Array:
    """``z + Laplace(0, b)`` per coordinate (std ``sqrt(2) b``), in ``z``'s dtype."""
    return z + (scale * jax.random.laplace(key, z.shape, jnp.float32)).astype(z.dtype)


def _placed(name: str, fn, at: str, guarantee: str) -> Defense:
    train, infer = _checks.where(name.split("(")[0], at)
    t = stateless(fn)
    return Defense(name=name, forward=t if train else None, inference=t if infer else None, guarantee=guarantee)


@vmappable("sigma")
@register_defense("gaussian_noise")
def gaussian_noise(sigma: float = 0.5, at: str = "train") -> Defense:
    """Isotropic Gaussian noise on the smash.

    ``z~ = z + sigma * e``, ``e ~ N(0, I)``, a fresh draw per step from the step's key.

    Guarantee: empirical, no formal guarantee (the smash is unclipped).
    Edge cases: ``sigma = 0`` is the identity (exactly; no transform is installed);
    NaN/inf in the smash pass through unchanged.

    Args:
      sigma: noise standard deviation, >= 0.
      at: ``"train"`` (smash during training), ``"inference"`` (after training:
        evaluation and queries) or ``"both"``.

    Returns:
      a ``Defense`` with a ``forward`` and/or ``inference`` transform.

    References:
      Titcombe et al. 2021, "Practical Defences Against Model Inversion Attacks for Split
      Neural Networks", arXiv:2104.05743.
    """
    sigma = _checks.nonnegative("gaussian_noise", "sigma", sigma)
    name = f"gaussian_noise(sigma={sigma!r}, at={at!r})"
    if not _checks.traced(sigma) and sigma == 0:
        _checks.where("gaussian_noise", at)
        return Defense(name=name, guarantee="none (sigma = 0: identity)")
    return _placed(name, lambda z, *, key: add_gaussian(z, sigma, key=key), at, _EMPIRICAL)


@vmappable("scale")
@register_defense("laplace_noise")
def laplace_noise(scale: float = 0.5, at: str = "train") -> Defense:
    """Laplace noise on the smash, as in Titcombe et al. 2021.

    ``z~ = z + e``, ``e_i ~ Laplace(0, b)`` i.i.d., so ``std(e_i) = sqrt(2) b``.

    Guarantee: empirical, no formal guarantee (the smash is unclipped, so this is not the
    Laplace mechanism of pure DP).
    Edge cases: ``scale = 0`` is the identity (exactly); NaN/inf pass through unchanged.

    Args:
      scale: the Laplace scale b, >= 0.
      at: ``"train"``, ``"inference"`` or ``"both"``.

    Returns:
      a ``Defense`` with a ``forward`` and/or ``inference`` transform.

    References:
      Titcombe et al. 2021, arXiv:2104.05743 (noise b = 0.5, 1.0 on MNIST).
    """
    scale = _checks.nonnegative("laplace_noise", "scale", scale)
    name = f"laplace_noise(scale={scale!r}, at={at!r})"
    if not _checks.traced(scale) and scale == 0:
        _checks.where("laplace_noise", at)
        return Defense(name=name, guarantee="none (scale = 0: identity)")
    return _placed(name, lambda z, *, key: add_laplace(z, scale, key=key), at, _EMPIRICAL)
