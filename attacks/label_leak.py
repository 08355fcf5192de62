"""Label leakage from cut gradients (Li et al. 2022): the norm and cosine attacks.

Threat model: the non-label party (the client, which sends the smash) reads the per-example
gradients it receives at the cut (``cut_grads``) in a two-party split learning task whose
labels are binary and imbalanced (positives the minority). It knows nothing else.

- Norm attack: positives are rarer, so the model is less confident on them and their loss
  gradients are larger; the score is ``||g_i||``.
- Cosine attack: for a binary task the gradients of the two classes point in roughly
  opposite directions; the score is ``-cos(g_i, r)`` where ``r`` is the majority direction
  (the normalised mean of the unit gradients, dominated by the negatives), so examples
  pointing away from the majority, i.e. likely positives, score high.

Outputs are per-example scores, higher meaning "more likely positive"; the leak AUC is
scored outside the attack with ``split_workbench.metrics.roc_auc`` (``evaluate_attack`` does it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from split_workbench.attacks.base import AbstractAttack, AttackResult, Observation
from split_workbench.attacks.common import check_smash, timed
from split_workbench.attacks.registry import register_attack

__all__ = ["NormLeak", "CosineLeak", "norm_scores", "cosine_scores"]

_TINY = 1e-30


@jax.jit
def norm_scores(g_NxD: jax.Array) -> jax.Array:
    """``||g_i||_2`` per example, shape (N,)."""
    return jnp.linalg.norm(g_NxD.reshape(g_NxD.shape[0], -1), axis=1)


@jax.jit
def cosine_scores(g_NxD: jax.Array) -> jax.Array:
    """``-cos(g_i, r)`` with ``r`` the normalised mean of the unit gradients, shape (N,).

    Zero gradients (e.g. examples the model already fits exactly) get score 0, between
    the two directions. Assumes the positives are the minority (as in Li et al.): with a
    majority of positives the scores flip sign and the AUC becomes ``1 - AUC``.
    """
    g = g_NxD.reshape(g_NxD.shape[0], -1)
    norms = jnp.linalg.norm(g, axis=1, keepdims=True)
    unit = jnp.where(norms > _TINY, g / jnp.maximum(norms, _TINY), 0.0)
    ref = unit.mean(axis=0)
    ref = ref / jnp.maximum(jnp.linalg.norm(ref), _TINY)
    return -(unit @ ref)


class _GradientScoreAttack(AbstractAttack):
    needs = frozenset({"cut_grads"})
    kind = "label"
    _score = None

    def __init__(self):
        pass

    def run(self, obs: Observation, *, key: jax.Array) -> AttackResult:
        del key  # deterministic: the scores are a function of the observed gradients
        g = check_smash(obs.cut_grads, self.name)
        scores, seconds = timed(type(self)._score, g)
        return AttackResult(scores, {"seconds": seconds, "examples": int(g.shape[0]),
                                     "images_per_second": g.shape[0] / max(seconds, 1e-9)})


@register_attack("norm_leak")
class NormLeak(_GradientScoreAttack):
    """Norm attack (Li et al. 2022): score ``||g_i||`` of each received cut gradient.

    Needs ``cut_grads`` (N, *smash_shape) as received by the client; pass all examples of
    one or more steps. Output: scores (N,), higher = more likely the minority label.
    """

    name = "norm_leak"
    _score = norm_scores


@register_attack("cosine_leak")
class CosineLeak(_GradientScoreAttack):
    """Cosine attack (Li et al. 2022): score ``-cos(g_i, majority direction)``.

    Needs ``cut_grads`` from ONE step (the majority direction is that of the current model;
    pooled steps mix directions). Output: scores (N,), higher = more likely the minority label.
    """

    name = "cosine_leak"
    _score = cosine_scores
