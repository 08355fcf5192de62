"""The wire between client and server: defense hooks, byte accounting, observation taps.

Two messages cross per training step: the smash data (client -> server) and the cut
gradient (server -> client). Each goes through its chain of ``CutTransform``s; the bytes
counted are those of the message as sent (after a compressing transform, its encoding).
Labels also cross in vanilla split learning (the server computes the loss): they are
counted separately so the smash/gradient traffic can be checked against 2pq.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from split_workbench.transforms import CutTransform, identity, is_identity, message_nbytes

__all__ = ["Wire", "WireState", "Traffic", "Tap"]


class WireState(NamedTuple):
    forward: Any
    backward: Any


class Traffic(NamedTuple):
    """Bytes that cross the wire in one training step (static: shapes are known when traced)."""

    forward: int  # smash, client -> server
    backward: int  # cut gradient, server -> client
    labels: int  # labels, client -> server

    def scale(self, n: int) -> "Traffic":
        return Traffic(self.forward * n, self.backward * n, self.labels * n)

    def as_dict(self) -> dict[str, int]:
        return {"forward_bytes": self.forward, "backward_bytes": self.backward, "label_bytes": self.labels}


class Tap(NamedTuple):
    """What the server observed at chosen training steps, stacked over those steps.

    ``example_ids`` index the private training set; they are for scoring attacks against
    the private inputs and are never part of an ``Observation``.
    """

    steps: np.ndarray  # (T,) global step indices
    smash: jax.Array  # (T, B, *smash_shape), as received by the server
    labels: jax.Array  # (T, B)
    cut_grads: jax.Array  # (T, B, *smash_shape), as received by the client
    example_ids: jax.Array  # (T, B)


@dataclass(frozen=True)
class Wire:
    """The two directions of the cut, each a chain of transforms (identity by default).

    ``inference`` transforms the smash when the trained model is used after training
    (evaluation, queries of a deployed client): identity unless a defense is also applied
    at inference time.
    """

    forward: CutTransform = field(default_factory=identity)
    backward: CutTransform = field(default_factory=identity)
    inference: CutTransform = field(default_factory=identity)

    def __post_init__(self):
        for where in ("forward", "inference"):
            if getattr(self, where).needs_labels:
                raise ValueError(f"a label-dependent transform cannot act on the smash ({where}): the client "
                                 "that sends it does not hold the labels; put it on the cut gradient")

    def init(self, z_example: jax.Array, dz_example: jax.Array) -> WireState:
        return WireState(self.forward.init(z_example), self.backward.init(dz_example))

    def send_forward(self, z, state: WireState, *, key) -> tuple[jax.Array, WireState]:
        if is_identity(self.forward):
            return z, state
        z, s = self.forward.apply(z, state.forward, key=key)
        return z, state._replace(forward=s)

    def send_backward(self, dz, state: WireState, *, key, labels=None) -> tuple[jax.Array, WireState]:
        """The cut gradient as the client receives it. ``labels`` (the batch's, held by the
        server) reach the transforms that declare ``needs_labels``."""
        if is_identity(self.backward):
            return dz, state
        if self.backward.needs_labels:
            if labels is None:
                raise ValueError("the backward wire has a label-dependent transform (e.g. marvell): "
                                 "pass the batch's labels to send_backward(..., labels=y)")
            dz, s = self.backward.apply(dz, state.backward, key=key, labels=labels)
        else:
            dz, s = self.backward.apply(dz, state.backward, key=key)
        return dz, state._replace(backward=s)

    def traffic(self, batch_size: int, smash_shape: tuple[int, ...], dtype: Any,
                label_dtype: Any = jnp.int32) -> Traffic:
        shape = (int(batch_size), *smash_shape)
        return Traffic(
            forward=message_nbytes(self.forward, shape, dtype),
            backward=message_nbytes(self.backward, shape, dtype),
            labels=int(batch_size) * np.dtype(label_dtype).itemsize,
        )
