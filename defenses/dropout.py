"""Dropout at the cut: randomly zero smash entries during training."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from split_workbench.defenses import _checks
from split_workbench.defenses.base import Defense, stateless
from split_workbench.defenses.registry import register_defense, vmappable

__all__ = ["cut_dropout"]


@vmappable("rate")
@register_defense("cut_dropout")
def cut_dropout(rate: float = 0.5) -> Defense:
    """Inverted dropout on the smash during training only.

    ``z~ = z * m / (1 - p)``, ``m_i ~ Bernoulli(1 - p)`` i.i.d., so ``E[z~] = z``; at
    inference the smash is sent as is (no rescaling needed).

    Guarantee: empirical, no formal guarantee. The dropped positions are not encoded, so
    the bytes on the wire are unchanged (dense). Gradient: the server's ``dz`` flows back to
    the client's ``z`` as is (straight-through: the client's vjp is of its own forward,
    not of the mask).
    Edge cases: ``rate = 0`` is the identity (exactly); ``rate`` must be < 1; NaN entries
    that are dropped become 0 (``where``, not multiplication), kept ones stay NaN.

    Args:
      rate: drop probability p in [0, 1).

    Returns:
      a ``Defense`` with a ``forward`` transform.

    References:
      Srivastava et al. 2014 (dropout); used at the cut as a baseline in split-learning
      defence studies (e.g. Titcombe et al. 2021's noise-style defences).
    """
    p = _checks.in_range("cut_dropout", "rate", rate, 0.0, 1.0, lo_open=False, hi_open=True)
    name = f"cut_dropout(rate={p!r})"
    if not _checks.traced(p) and p == 0:
        return Defense(name=name, guarantee="none (rate = 0: identity)")

    def drop(z, *, key):
        keep = jax.random.bernoulli(key, 1.0 - p, z.shape)
        return jnp.where(keep, z / jnp.asarray(1.0 - p, z.dtype), jnp.zeros_like(z))

    return Defense(name=name, forward=stateless(drop), guarantee="empirical, no formal guarantee")
