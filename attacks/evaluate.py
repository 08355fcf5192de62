"""Scoring an attack: one set of metric names for every caller.

``run``, ``sweep`` and ``attack`` (through the runner) and ``evaluate_attack`` (from Python)
score with these functions, so a record, an attack record and a notebook name the same
numbers the same way:

* inversion: ``ssim_mean``, ``psnr_mean`` (dB; each image's PSNR capped at ``PSNR_CLIP``,
  since a perfect reconstruction has infinite PSNR), ``mse_mean``, and the per-image lists
  ``ssim``, ``psnr`` (capped), ``mse``; SSIM and PSNR equal scikit-image's
  (``structural_similarity`` with its defaults and ``data_range=1``; ``tests/test_metrics.py``);
* label inference: ``label_accuracy`` for an output of integer labels; ``auc`` for an output
  of per-example scores, the ROC AUC of the scores for ``labels == positive`` (``positive``
  None: a multi-class task with no positive class chosen, ``auc`` is None with a ``note``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from split_workbench import metrics
from split_workbench.attacks.base import AbstractAttack
from split_workbench.observation import Observation

__all__ = ["PSNR_CLIP", "score_inversion", "score_labels", "evaluate_attack"]

PSNR_CLIP = 100.0


def score_inversion(recon, truth) -> dict:
    """Reconstructions ``recon`` against the private images ``truth``, (N, H, W, C) in [0, 1]."""
    recon, truth = jnp.asarray(recon), jnp.asarray(truth)
    if recon.shape != truth.shape:
        raise ValueError(f"reconstructions are {recon.shape}, the private images {truth.shape}")
    ssim = np.asarray(metrics.ssim(recon, truth))
    psnr = np.minimum(np.asarray(metrics.psnr(recon, truth)), PSNR_CLIP)
    mse = np.asarray(metrics.mse(recon, truth))
    return {"ssim_mean": float(ssim.mean()), "psnr_mean": float(np.mean(psnr)), "mse_mean": float(mse.mean()),
            "ssim": ssim.tolist(), "psnr": psnr.tolist(), "mse": mse.tolist()}


def score_labels(output, truth, *, positive: int | None = 1) -> dict:
    """A label attack's ``output`` against the true labels ``truth`` (N,)."""
    out, truth = np.asarray(output), np.asarray(truth)
    if out.ndim == 1 and np.issubdtype(out.dtype, np.floating):
        if out.shape != truth.reshape(-1).shape:
            raise ValueError(f"scores are {out.shape}, the labels {truth.shape}")
        if positive is None:
            return {"auc": None, "note": "leak AUC needs a binary task (or a positive class)"}
        return {"auc": float(metrics.roc_auc(jnp.asarray(out), jnp.asarray(truth == positive, jnp.int32)))}
    if out.size != truth.size:
        raise ValueError(f"predicted labels are {out.shape}, the labels {truth.shape}")
    return {"label_accuracy": float(np.mean(out.reshape(-1) == truth.reshape(-1)))}


def evaluate_attack(attack: AbstractAttack, obs: Observation, truth, *, key: jax.Array,
                    positive: int | None = 1) -> dict:
    """Runs ``attack`` on ``obs`` restricted to its ``needs`` and scores it against ``truth``
    (private images for an inversion, labels for a label attack) with the record's names
    (module docstring), plus ``attack``, ``kind`` and the attack's scalar stats (``seconds``
    among them)."""
    result = attack(obs.only(attack.needs), key=key)
    out: dict[str, Any] = {"attack": attack.name, "kind": attack.kind}
    if attack.kind == "inversion":
        out.update(score_inversion(result.output, jnp.asarray(truth, jnp.float32)))
    else:
        out.update(score_labels(result.output, truth, positive=positive))
    for k, v in result.stats.items():
        if isinstance(v, (int, float)) or (hasattr(v, "shape") and np.shape(v) == ()):
            out[k] = float(v) if not isinstance(v, int) else v
    return out
