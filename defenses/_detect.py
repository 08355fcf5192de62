"""What the client-side detectors of a hijacking server share: which gradient they read, and
the verdict every one of them records.

**The first layer.** SplitGuard and SplitOut read the gradient of the client's first layer
(the official PyTorch code takes ``list(model.parameters())[0].grad``: the first layer's
weight, not its bias). ``first_layer_kernel`` finds the same leaf in a split model's
parameter pytree (an ``nnx.State`` of ``nnx.Param``): the first leaf of rank >= 2 in the
order of the layers, the kernel of the first convolution or dense layer. It selects by rank,
not by a name, so biases and normalisation scales (rank 1) are passed over whatever they are
called.

**The verdict.** Every detector's party state is a dict holding at least

* ``"alarm"``: bool scalar, raised once and then latched;
* ``"alarm_step"``: int32 scalar, the global step of the first alarm, -1 if none;
* ``"score"``: float32 scalar, the detector's latest score (NaN until it has one);

so that a detection table reads any of them the same way. ``verdict`` updates these three.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["first_layer_kernel", "first_layer_vector", "initial_verdict", "verdict", "positive_int",
           "probability"]


def _order(entry) -> tuple[int, Any]:
    """A path entry as a sortable key: integers (layer indices) numerically, before names."""
    k = getattr(entry, "key", getattr(entry, "idx", getattr(entry, "name", entry)))
    return (0, k) if isinstance(k, int) else (1, str(k))


def first_layer_kernel(params) -> jax.Array:
    """The first layer's kernel in a client parameter (or gradient) pytree.

    Args:
      params: a pytree of arrays laid out as the client half's parameters (layer index,
        then the layer's own names).

    Returns:
      The first leaf of rank >= 2 in layer order (layer indices compared as integers): the
      first convolution's (H, W, C_in, C_out) or the first dense layer's (D_in, D_out) kernel.

    Raises:
      ValueError: if no leaf has rank >= 2 (a client half with no weight matrix).
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    kernels = [(tuple(_order(e) for e in path), leaf) for path, leaf in leaves if jnp.ndim(leaf) >= 2]
    if not kernels:
        raise ValueError("the client half has no parameter of rank >= 2 (no convolution or dense kernel) "
                         "whose gradient a detector could read")
    return min(kernels, key=lambda pk: pk[0])[1]


def first_layer_vector(grads) -> jax.Array:
    """``first_layer_kernel(grads)`` flattened to a float32 vector."""
    return jnp.ravel(first_layer_kernel(grads)).astype(jnp.float32)


def initial_verdict() -> dict[str, jax.Array]:
    """No alarm yet, no score yet (NaN)."""
    return {"alarm": jnp.zeros((), bool), "alarm_step": jnp.full((), -1, jnp.int32),
            "score": jnp.full((), jnp.nan, jnp.float32)}


def verdict(state: dict, raised: jax.Array, score: jax.Array, step: jax.Array) -> dict:
    """``state`` with the alarm latched if ``raised``, the step of the first alarm kept, and the
    latest ``score``."""
    first = raised & ~state["alarm"]
    return {**state, "alarm": state["alarm"] | raised,
            "alarm_step": jnp.where(first, jnp.asarray(step, jnp.int32), state["alarm_step"]),
            "score": jnp.asarray(score, jnp.float32)}


def positive_int(name: str, value, *, at_least: int = 1) -> int:
    """``value`` as an int, or a ValueError naming ``name`` if it is not an integer >= ``at_least``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < at_least:
        raise ValueError(f"{name} must be an integer >= {at_least}, got {value!r}")
    return value


def probability(name: str, value) -> float:
    """``value`` as a float in the open interval (0, 1), or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be a probability in (0, 1), got {value!r}")
    return float(value)
