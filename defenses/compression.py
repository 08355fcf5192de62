"""Smash compression that shrinks the bytes on the wire: top-k sparsification and uniform
quantisation. Each declares ``nbytes`` honestly, so ``SplitTrainer.traffic`` counts the
encoded message.

Gradient (both): straight-through. The server differentiates its loss at the message it
received and sends ``dz`` back; the client applies it to its own un-compressed ``z``
through its vjp, as if the compression were the identity (the protocol never
differentiates through the wire).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from split_workbench.defenses import _checks
from split_workbench.defenses.base import Defense, stateless
from split_workbench.defenses.registry import register_defense

__all__ = ["topk", "quantize", "topk_k", "index_bytes", "topk_nbytes", "quantize_nbytes"]

_SCALE_BYTES = 4  # one float32 each for the quantiser's offset and step


def topk_k(n: int, fraction: float) -> int:
    """Values kept per example: ``max(1, ceil(fraction * n))``."""
    return max(1, min(n, math.ceil(fraction * n)))


def index_bytes(n: int) -> int:
    """Bytes of an index into ``n`` positions: ``ceil(ceil(log2 n) / 8)``, at least 1."""
    return max(1, math.ceil(math.ceil(math.log2(max(n, 2))) / 8))


def topk_nbytes(fraction: float):
    def nbytes(shape, dtype):
        b, n = int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))
        k = topk_k(n, fraction)
        return b * k * (np.dtype(dtype).itemsize + index_bytes(n))
    return nbytes


def quantize_nbytes(bits: int):
    def nbytes(shape, dtype):
        del dtype
        return math.ceil(int(np.prod(shape, dtype=np.int64)) * bits / 8) + 2 * _SCALE_BYTES
    return nbytes


def _placed(defense, name, t, at, guarantee):
    train, infer = _checks.where(defense, at)
    return Defense(name=name, forward=t if train else None, inference=t if infer else None, guarantee=guarantee)


@register_defense("topk")
def topk(fraction: float = 0.1, at: str = "train") -> Defense:
    """Top-k sparsification: each example keeps its k largest-magnitude smash values.

    ``k = max(1, ceil(fraction n))`` of the example's ``n`` values are sent with their
    indices; the server scatters them into zeros. Bytes per message:
    ``B k (itemsize + ceil(ceil(log2 n) / 8))``.

    Guarantee: empirical, no formal guarantee. Gradient: straight-through (module doc).
    Edge cases: ``fraction = 1`` is the identity (exactly), sent dense (cheaper than
    values + indices); ties are broken by ``lax.top_k`` (lowest index first), so exactly k
    values are sent; NaN ranks as largest in ``lax.top_k`` and is sent as NaN.

    Args:
      fraction: the kept fraction in (0, 1].
      at: ``"train"``, ``"inference"`` or ``"both"``.

    Returns:
      a ``Defense`` whose transform declares ``nbytes``.

    References:
      Aji & Heafield 2017 (sparsified communication); Singh et al. 2019 (split-learning cost).
    """
    f = _checks.in_range("topk", "fraction", fraction, 0.0, 1.0, lo_open=True, hi_open=False)
    name = f"topk(at={at!r}, fraction={f!r})"
    if f == 1:
        _checks.where("topk", at)
        return Defense(name=name, guarantee="none (fraction = 1: identity)")

    def sparsify(z, *, key):
        del key  # deterministic
        b = z.shape[0]
        z_BxN = z.reshape(b, -1)
        k = topk_k(z_BxN.shape[1], f)
        _, idx_BxK = jax.lax.top_k(jnp.abs(z_BxN), k)
        vals_BxK = jnp.take_along_axis(z_BxN, idx_BxK, axis=1)
        out = jnp.zeros_like(z_BxN).at[jnp.arange(b)[:, None], idx_BxK].set(vals_BxK)
        return out.reshape(z.shape)

    return _placed("topk", name, stateless(sparsify, topk_nbytes(f)), at, "empirical, no formal guarantee")


@register_defense("quantize")
def quantize(bits: int = 8, at: str = "train") -> Defense:
    """Uniform quantisation of each message to ``2^bits`` levels between its min and max.

    ``lo, hi = min z, max z`` over the whole message (batch); ``s = (hi - lo) / (2^bits - 1)``;
    ``z~ = lo + s round((z - lo) / s)``. Bytes per message: ``ceil(n bits / 8) + 8`` (n values
    of the batch, plus ``lo`` and ``s`` as float32).

    Guarantee: empirical, no formal guarantee. Gradient: straight-through (module doc).
    Edge cases: a constant message (``hi = lo``) is sent exactly; any NaN in the message
    makes ``lo``/``hi`` NaN and the whole received message NaN (visible, not hidden);
    there is no zero strength (quantisation always rounds), ``bits`` must be an integer in
    [1, 16].

    Args:
      bits: bits per value, integer in [1, 16].
      at: ``"train"``, ``"inference"`` or ``"both"``.

    Returns:
      a ``Defense`` whose transform declares ``nbytes``.

    References:
      Gupta et al. 2015; Singh et al. 2019 (split-learning communication).
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise _checks.SpecError(f"quantize: bits must be an integer in [1, 16], got {bits!r}")
    levels = float(2 ** bits - 1)

    def quant(z, *, key):
        del key  # deterministic rounding
        zf = z.astype(jnp.float32)
        lo, hi = jnp.min(zf), jnp.max(zf)
        step = (hi - lo) / levels
        safe = jnp.where(step > 0, step, 1.0)
        q = jnp.clip(jnp.round((zf - lo) / safe), 0.0, levels)
        return jnp.where(step > 0, lo + q * safe, zf).astype(z.dtype)

    return _placed("quantize", f"quantize(at={at!r}, bits={bits!r})", stateless(quant, quantize_nbytes(bits)),
                   at, "empirical, no formal guarantee")
