"""Attacks on split learning: model inversion on smash data, label inference on cut gradients.

Importing this package imports every module in its folder, so the registry is populated: a
new attack is one file that registers itself (the explicit imports below re-export the
public names).
"""

import importlib
import pkgutil

from split_workbench.attacks.base import (
    OBSERVATION_FIELDS,
    AbstractAttack,
    AttackResult,
    MissingObservation,
    Observation,
)
from split_workbench.attacks.fsha import FSHA, FSHAAttack, FSHAProperty, fsha_networks, mse_paper_scale
from split_workbench.attacks.inverse_net import Decoder, InverseNet, InverseNetConfig, make_decoder, train_decoder
from split_workbench.attacks.label_leak import CosineLeak, NormLeak, cosine_scores, norm_scores
from split_workbench.attacks.query_free import QueryFree, ShadowConfig, train_shadow_client
from split_workbench.attacks.registry import ATTACKS, build_attack, register_attack
from split_workbench.attacks.rmle import RMLE, RMLEConfig, rmle_reconstruct
from split_workbench.attacks.unsplit import LabelMatchConfig, UnSplit, UnSplitConfig, UnSplitLabels
from split_workbench.attacks.evaluate import evaluate_attack
from split_workbench.observation import observe, observe_tap, tap_targets, wire_query

__all__ = [
    "OBSERVATION_FIELDS", "AbstractAttack", "AttackResult", "MissingObservation", "Observation",
    "ATTACKS", "build_attack", "register_attack",
    "RMLE", "RMLEConfig", "rmle_reconstruct",
    "FSHA", "FSHAAttack", "FSHAProperty", "fsha_networks", "mse_paper_scale",
    "InverseNet", "InverseNetConfig", "Decoder", "make_decoder", "train_decoder",
    "QueryFree", "ShadowConfig", "train_shadow_client",
    "UnSplit", "UnSplitConfig", "UnSplitLabels", "LabelMatchConfig",
    "NormLeak", "CosineLeak", "norm_scores", "cosine_scores",
    "observe", "observe_tap", "tap_targets", "evaluate_attack", "wire_query",
]

for _module in pkgutil.iter_modules(__path__):  # a new attack file registers without an edit here
    importlib.import_module(f"{__name__}.{_module.name}")
