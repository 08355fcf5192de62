"""Per-example L2 clipping, the bounded-sensitivity step of every Gaussian mechanism here.

Edge cases, handled explicitly (as in jax_privacy):

* zero norm: the example is returned unchanged (zero stays zero; no division by zero).
* non-finite (NaN or inf anywhere in the example): the example is replaced by zeros before
  clipping. A NaN would otherwise pass through unbounded and void the sensitivity bound;
  zeroing keeps every output norm <= C, so the guarantee holds for every input.
* clip = 0 is rejected by the factories (every output would be zero).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["clip_per_example", "clip_tree_per_example", "per_example_norms"]


def _axes(x):
    return tuple(range(1, x.ndim))


def per_example_norms(tree) -> jax.Array:
    """Global L2 norm of each example across all leaves (leading batch axis), float32 (B,)."""
    sq = sum(jnp.sum(jnp.square(leaf.astype(jnp.float32)), axis=_axes(leaf)) for leaf in jax.tree.leaves(tree))
    return jnp.sqrt(sq)


def _finite_rows(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf), axis=_axes(leaf)) for leaf in jax.tree.leaves(tree)]),
                   axis=0)


def clip_tree_per_example(tree, clip: float):
    """Scales each example's slice of ``tree`` (every leaf has a leading batch axis B) to
    global L2 norm at most ``clip``: ``g_i * min(1, C / ||g_i||)``.

    Args:
      tree: pytree of arrays with a common leading batch axis.
      clip: the norm bound C > 0.

    Returns:
      the clipped pytree, same structure, shapes and dtypes; non-finite examples are zeros.
    """
    ok_B = _finite_rows(tree)
    tree = jax.tree.map(lambda g: jnp.where(ok_B.reshape((-1,) + (1,) * (g.ndim - 1)), g, jnp.zeros_like(g)), tree)
    norm_B = per_example_norms(tree)
    # tiny in the denominator only matters at norm 0, where min(1, .) = 1 leaves zeros zero.
    scale_B = jnp.minimum(1.0, clip / jnp.maximum(norm_B, jnp.finfo(jnp.float32).tiny))
    return jax.tree.map(lambda g: (g * scale_B.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype)).astype(g.dtype),
                        tree)


def clip_per_example(z: jax.Array, clip: float) -> jax.Array:
    """``clip_tree_per_example`` for one array ``z`` of shape (B, ...)."""
    return clip_tree_per_example(z, clip)
