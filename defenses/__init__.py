"""Defenses: transforms of what crosses the cut, client loss terms, DP on client updates.

Importing this package imports every module in its folder, so the registry is populated: a
new defense is one file that registers itself (the explicit imports below re-export the
public names).
"""

import importlib
import pkgutil

from split_workbench.defenses.accounting import Schedule, calibrate_noise, epsilon, privacy_report
from split_workbench.defenses.base import (
    CutTransform,
    Defense,
    EmptyState,
    GradPrivatizer,
    LossTerm,
    chain,
    combine,
    dense_nbytes,
    identity,
    is_identity,
    message_nbytes,
    stateless,
)
from split_workbench.defenses.clipping import clip_per_example, clip_tree_per_example, per_example_norms
from split_workbench.defenses.compression import quantize, topk
from split_workbench.defenses.dp_sgd import dp_sgd, dp_sgd_privatizer
from split_workbench.defenses.dp_smash import dp_smash
from split_workbench.defenses.dropout import cut_dropout
from split_workbench.defenses.label_leakage import grad_noise, marvell, max_norm
from split_workbench.defenses.noise import gaussian_noise, laplace_noise
from split_workbench.defenses.nopeek import nopeek
from split_workbench.defenses.registry import DEFENSES, build_defense, register_defense
from split_workbench.defenses.scrutinizer import Scrutinizer, scrutinizer
from split_workbench.defenses.splitguard import SplitGuard, splitguard
from split_workbench.defenses.splitout import SplitOut, splitout

__all__ = [
    "SplitGuard", "splitguard", "SplitOut", "splitout", "Scrutinizer", "scrutinizer",
    "CutTransform", "Defense", "EmptyState", "GradPrivatizer", "LossTerm", "chain", "combine", "dense_nbytes",
    "identity", "is_identity", "message_nbytes", "stateless", "DEFENSES", "build_defense", "register_defense",
    "Schedule", "calibrate_noise", "epsilon", "privacy_report",
    "clip_per_example", "clip_tree_per_example", "per_example_norms",
    "gaussian_noise", "laplace_noise", "dp_smash", "dp_sgd", "dp_sgd_privatizer", "nopeek", "cut_dropout",
    "quantize", "topk", "grad_noise", "max_norm", "marvell",
]

for _module in pkgutil.iter_modules(__path__):  # a new defense file registers without an edit here
    importlib.import_module(f"{__name__}.{_module.name}")
