"""Gradient-side defenses against label leakage (Li et al. 2022): noise on the cut gradient
the server sends back, so the client (the non-label party) cannot read labels from it.

The cut gradient of a batch-mean loss carries a 1/B factor: ``sigma`` is in those units.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from defenses import _checks
from defenses.base import Defense, stateless
from defenses.noise import add_gaussian
from defenses.registry import register_defense, vmappable

__all__ = ["grad_noise", "max_norm", "max_norm_noise"]


@vmappable("sigma")
@register_defense("grad_noise")
def grad_noise(sigma: float = 0.01) -> Defense:
    """Isotropic Gaussian noise on the cut gradient: ``dz~ = dz + sigma e``, ``e ~ N(0, I)``.

    Guarantee: empirical, no formal guarantee (the cut gradient is unclipped).
    Edge cases: ``sigma = 0`` is the identity (exactly); NaN passes through.

    Args:
      sigma: noise std >= 0, in the units of the per-example cut gradient (which carries
        the loss's 1/B factor).

    Returns:
      a ``Defense`` with a ``backward`` transform.

    References:
      Li et al. 2022, "Label Leakage and Protection in Two-party Split Learning", ICLR
      (the isotropic Gaussian baseline).
    """
    sigma = _checks.nonnegative("grad_noise", "sigma", sigma)
    name = f"grad_noise(sigma={sigma!r})"
    if not _checks.traced(sigma) and sigma == 0:
        return Defense(name=name, guarantee="none (sigma = 0: identity)")
    return Defense(name=name, backward=stateless(lambda g, *, key: add_gaussian(g, sigma, key=key)),
                   guarantee="empirical, no formal guarantee")


def max_norm_noise(g: jax.Array, *, key: jax.Array) -> jax.Array:
    """Li et al.'s max-norm heuristic on a batch of cut gradients ``g`` (B, ...).

    ``g~_j = g_j + sigma_j e_j``, ``sigma_j = sqrt((max_i ||g_i||^2 - ||g_j||^2) / d)``, so
    ``E ||g~_j||^2 = max_i ||g_i||^2``: every example's expected squared norm matches the
    batch's largest, and the norm no longer separates the classes.
    Rows with a non-finite norm are left out of the max and passed through unchanged.
    """
    b = g.shape[0]
    d = g.size // b
    sq_B = jnp.sum(jnp.square(g.reshape(b, -1).astype(jnp.float32)), axis=1)
    finite_B = jnp.isfinite(sq_B)
    top = jnp.max(jnp.where(finite_B, sq_B, 0.0))
    sigma_B = jnp.sqrt(jnp.where(finite_B, jnp.maximum(top - sq_B, 0.0), 0.0) / d)
    e = jax.random.normal(key, g.shape, jnp.float32)
    return g + (sigma_B.reshape((b,) + (1,) * (g.ndim - 1)) * e).astype(g.dtype)


@register_defense("max_norm")
def max_norm() -> Defense:
    """Max-norm: per-example Gaussian noise on the cut gradient that lifts each example's
    expected squared norm to the largest in its batch.

    ``sigma_j^2 = (max_i ||g_i||^2 - ||g_j||^2) / d``; ``g~_j = g_j + N(0, sigma_j^2 I_d)``.

    Guarantee: empirical, no formal guarantee (a heuristic against the norm attack; the
    cosine/direction attack is not addressed).
    Edge cases: it has no strength parameter and no identity setting; the largest-norm
    example gets no noise; an all-equal-norm batch is unchanged; zero gradients get noise
    up to the batch max (zero if the whole batch is zero); rows with NaN/inf are ignored
    for the max and passed through.

    Returns:
      a ``Defense`` with a ``backward`` transform.

    References:
      Li et al. 2022, "Label Leakage and Protection in Two-party Split Learning", ICLR
      (section "max norm" heuristic).
    """
    return Defense(name="max_norm", backward=stateless(max_norm_noise), guarantee="empirical, no formal guarantee")
