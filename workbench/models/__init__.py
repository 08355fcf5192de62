"""Model zoo with named cut points."""

from split_workbench.models.base import (
    Sequential,
    flatten,
    global_avg_pool,
    max_pool_2x2,
    relu,
    sigmoid,
    tanh,
)
from split_workbench.models.zoo import MODELS, ModelInfo, list_models, make_model, register_model

__all__ = [
    "Sequential", "flatten", "global_avg_pool", "max_pool_2x2", "relu", "sigmoid", "tanh",
    "MODELS", "ModelInfo", "list_models", "make_model", "register_model",
]
