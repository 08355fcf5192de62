"""A defense as the places it acts on the wire, and how defenses combine into a trainer's parts.

The contracts a defense implements (``CutTransform``, ``LossTerm``, ``GradPrivatizer``)
belong to the core (``split_workbench.transforms``); they are re-exported here for
plugin authors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from split_workbench.transforms import (
    CutTransform,
    EmptyState,
    GradPrivatizer,
    LossTerm,
    chain,
    dense_nbytes,
    identity,
    is_identity,
    message_nbytes,
    stateless,
)

__all__ = ["CutTransform", "LossTerm", "Defense", "GradPrivatizer", "identity", "chain", "is_identity",
           "dense_nbytes", "message_nbytes", "combine", "stateless", "EmptyState"]


@dataclass(frozen=True)
class Defense:
    """A defense as the places it acts on; any field may be empty.

    Attributes:
      name: the spec string that built it.
      forward: transform of the smash during training (client -> server).
      inference: transform of the smash after training (evaluation, queries).
      backward: transform of the cut gradient (server -> client).
      loss_terms: client-side regularisers on (x, z).
      privatizer: per-example client-gradient privatizer (DP-SGD on the client's updates).
      guarantee: the formal guarantee in words, or "empirical, no formal guarantee".
      accountant: ``accountant(steps=..., batch_size=..., dataset_size=..., delta=...) -> dict``
        giving (epsilon, delta) for a training schedule, when the defense has a formal one.
      binary_labels: the defense is defined for binary tasks only (labels 0/1); the trainer
        refuses it for a model with another number of classes.
    """

    name: str
    forward: CutTransform | None = None
    inference: CutTransform | None = None
    backward: CutTransform | None = None
    loss_terms: tuple[LossTerm, ...] = ()
    privatizer: GradPrivatizer | None = None
    guarantee: str = "empirical, no formal guarantee"
    accountant: Callable[..., dict] | None = None
    binary_labels: bool = False


def combine(defenses: Sequence[Defense]) -> dict[str, Any]:
    """Chains defenses in order into the trainer's arguments: forward/backward/inference
    transforms, loss terms, and at most one gradient privatizer."""
    privatizers = [d for d in defenses if d.privatizer is not None]
    if len(privatizers) > 1:
        raise ValueError(f"at most one client-gradient privatizer per run, got {[d.name for d in privatizers]}")
    return {
        "forward": chain(*(d.forward for d in defenses if d.forward is not None)),
        "backward": chain(*(d.backward for d in defenses if d.backward is not None)),
        "inference": chain(*(d.inference for d in defenses if d.inference is not None)),
        "loss_terms": tuple(t for d in defenses for t in d.loss_terms),
        "privatizer": privatizers[0].privatizer if privatizers else None,
    }
