"""Defenses: transforms of what crosses the cut, client loss terms, DP on client updates."""

from defenses.base import (
    CutTransform,
    Defense,
    GradPrivatizer,
    LossTerm,
    chain,
    combine,
    dense_nbytes,
    identity,
    is_identity,
    message_nbytes,
)
from defenses.registry import DEFENSES, build_defense, register_defense

__all__ = [
    "CutTransform", "Defense", "GradPrivatizer", "LossTerm", "chain", "combine", "dense_nbytes",
    "identity", "is_identity", "message_nbytes", "DEFENSES", "build_defense", "register_defense",
]
