"""Attacks on split learning: model inversion on smash data, label inference on cut gradients.

Importing this package imports every attack module, so ``ATTACKS`` lists them all.
"""

from attacks.base import (
    OBSERVATION_FIELDS,
    AbstractAttack,
    AttackResult,
    MissingObservation,
    Observation,
)
from attacks.registry import ATTACKS, build_attack, register_attack
from attacks.inverse_net import Decoder, InverseNet, InverseNetConfig, make_decoder, train_decoder
from attacks.rmle import RMLE, RMLEConfig, rmle_reconstruct

__all__ = [
    "OBSERVATION_FIELDS", "AbstractAttack", "AttackResult", "MissingObservation", "Observation",
    "ATTACKS", "build_attack", "register_attack",
    "RMLE", "RMLEConfig", "rmle_reconstruct",
    "InverseNet", "InverseNetConfig", "Decoder", "make_decoder", "train_decoder",
]
