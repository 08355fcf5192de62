"""Runs an attack on an Observation restricted to its threat model and scores it."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from split_workbench import metrics
from split_workbench.attacks.base import AbstractAttack
from split_workbench.observation import Observation

__all__ = ["evaluate_attack"]


def evaluate_attack(attack: AbstractAttack, obs: Observation, truth, *, key: jax.Array,
                    positive: int = 1) -> dict:
    """Runs ``attack`` on ``obs`` restricted to its ``needs`` and scores it against ``truth``.

    Inversion attacks: ``truth`` are the private images (N, H, W, C) in [0, 1]; returns mean
    and per-image ``ssim``, ``psnr`` (dB), ``mse``. Label attacks: ``truth`` are the true
    labels (N,); returns ``auc`` of the scores for ``labels == positive`` (score outputs) or
    ``accuracy`` (integer label outputs). Always returns ``seconds`` and the attack's scalar stats.
    """
    result = attack(obs.only(attack.needs), key=key)
    out: dict[str, Any] = {"attack": attack.name, "kind": attack.kind}
    truth = jnp.asarray(truth)
    if attack.kind == "inversion":
        if result.output.shape != truth.shape:
            raise ValueError(f"{attack.name} returned {result.output.shape}, the truth is {truth.shape}")
        for name, fn in (("ssim", metrics.ssim), ("psnr", metrics.psnr), ("mse", metrics.mse)):
            per = np.asarray(fn(result.output, truth.astype(jnp.float32)))
            out[name] = float(per.mean())
            out[f"{name}_per_image"] = per.tolist()
    else:
        if result.output.shape != truth.shape:
            raise ValueError(f"{attack.name} returned {result.output.shape}, the labels are {truth.shape}")
        if jnp.issubdtype(result.output.dtype, jnp.integer):
            out["accuracy"] = float(jnp.mean(result.output == truth))
        else:
            out["auc"] = float(metrics.roc_auc(result.output, (truth == positive).astype(jnp.int32)))
    for k, v in result.stats.items():
        if isinstance(v, (int, float)) or (hasattr(v, "shape") and np.shape(v) == ()):
            out[k] = float(v) if not isinstance(v, int) else v
    return out
