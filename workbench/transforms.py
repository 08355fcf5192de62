"""The wire's contracts: transforms of what crosses the cut, client loss terms, privatizers.

These are the core's interfaces that defenses (plugins) implement; the wire and the
protocol depend on them and on nothing in ``defenses/``.

A ``CutTransform`` is optax-style: a NamedTuple of pure functions. ``init(example)``
makes the transform's state from one example message; ``apply(z, state, *, key)``
returns the transformed message and the new state. Transforms compose with ``chain``.
``nbytes(shape, dtype)``, when given, says how many bytes the transformed message takes
on the wire (a compressing transform makes the message smaller); the last transform of
a chain that declares an encoding decides the wire format. A transform with
``needs_labels`` is applied as ``apply(z, state, *, key, labels)`` with the batch's labels:
only the server (the label party) can run one, so it belongs on the cut gradient (Marvell).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["CutTransform", "LossTerm", "GradPrivatizer", "identity", "chain", "is_identity",
           "dense_nbytes", "message_nbytes", "stateless", "EmptyState"]

State = Any


class CutTransform(NamedTuple):
    """A pure transformation of the messages that cross the cut (smash or cut gradient)."""

    init: Callable[[jax.Array], State]
    apply: Callable[..., tuple[jax.Array, State]]
    nbytes: Callable[[tuple[int, ...], Any], int] | None = None
    needs_labels: bool = False


class LossTerm(NamedTuple):
    """A client-side regulariser ``weight * fn(x, z)`` on the private batch and its smash.

    The client adds it to its objective: its gradient with respect to ``z`` is added to the
    cut gradient the server returns before the client's backward pass. It never crosses
    the wire.
    """

    fn: Callable[[jax.Array, jax.Array], jax.Array]
    weight: float
    name: str


class EmptyState(NamedTuple):
    pass


def dense_nbytes(shape: tuple[int, ...], dtype: Any) -> int:
    """Bytes of an uncompressed message: every value at its dtype's width."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _identity_init(z):
    del z
    return EmptyState()


def _identity_apply(z, state, *, key):
    del key
    return z, state


_IDENTITY = CutTransform(_identity_init, _identity_apply, None)


def identity() -> CutTransform:
    """The transform that sends the message as it is (the undefended wire)."""
    return _IDENTITY


def stateless(fn: Callable[..., jax.Array], nbytes: Callable[[tuple[int, ...], Any], int] | None = None
              ) -> CutTransform:
    """A ``CutTransform`` from a pure ``fn(z, *, key) -> z`` that keeps no state."""
    def apply(z, state, *, key):
        return fn(z, key=key), state
    return CutTransform(_identity_init, apply, nbytes)


def is_identity(t: CutTransform) -> bool:
    return t is _IDENTITY


def chain(*transforms: CutTransform) -> CutTransform:
    """Applies ``transforms`` in order; each one draws its own key, ``fold_in(key, i)``."""
    ts = tuple(t for t in transforms if not is_identity(t))
    for t in ts:
        if not isinstance(t, CutTransform):
            raise TypeError(f"chain() takes CutTransforms, got {type(t).__name__}")
    if not ts:
        return identity()
    if len(ts) == 1:
        return ts[0]

    def init(z):
        states = []
        for t in ts:
            states.append(t.init(z))
        return tuple(states)

    needs_labels = any(t.needs_labels for t in ts)

    def apply(z, state, *, key, labels=None):
        new = []
        for i, (t, s) in enumerate(zip(ts, state)):
            extra = {"labels": labels} if t.needs_labels else {}
            z, s = t.apply(z, s, key=jax.random.fold_in(key, i), **extra)
            new.append(s)
        return z, tuple(new)

    encoders = [t.nbytes for t in ts if t.nbytes is not None]
    return CutTransform(init, apply, encoders[-1] if encoders else None, needs_labels)


def message_nbytes(t: CutTransform, shape: tuple[int, ...], dtype: Any) -> int:
    """Bytes on the wire for one message of ``shape`` after transform ``t``."""
    return int(t.nbytes(shape, dtype)) if t.nbytes is not None else dense_nbytes(shape, dtype)


GradPrivatizer = Callable[..., Any]
"""``privatize(per_example_grads, *, key) -> grads``: turns the client's per-example
parameter gradients (leading batch axis) into the update it applies (DP-SGD: clip each,
sum, add noise, average). When a defense sets one, the protocol computes per-example
client gradients (one vjp per example, vmapped) instead of the batch gradient."""
