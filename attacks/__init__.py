"""Attacks on split learning: model inversion on smash data, label inference on cut gradients."""

from attacks.base import (
    OBSERVATION_FIELDS,
    AbstractAttack,
    AttackResult,
    MissingObservation,
    Observation,
)
from attacks.registry import ATTACKS, build_attack, register_attack

__all__ = [
    "OBSERVATION_FIELDS", "AbstractAttack", "AttackResult", "MissingObservation", "Observation",
    "ATTACKS", "build_attack", "register_attack",
]
