"""Gradients Scrutinizer (Fu et al., NDSS 2023): the client watches how alike the per-example
cut gradients of same-label and different-label examples are.

Under honest training the cut gradients of two examples of one class point alike, more than
those of two classes, and these similarities evolve smoothly; a hijacking server's gradients
(FSHA's) ignore the labels. Every step the client computes, over the pairs ``k != l`` of its
batch, the similarity ``0.5 + 0.5 cos(g_k, g_l)`` of the cut gradients it received, and keeps
the mean and standard deviation over same-label pairs and over different-label pairs. Every
``period`` steps ``s`` within the first ``horizon``:

    gap   = (same_s - diff_s) / (same_s + diff_s)
    err   = mean of the RMSEs of quadratic fits to the same and diff mean histories [0, s)
    IoU   = overlap / span of the bands same_s +- std and diff_s +- std
    m_gap = gap / |gap|^0.6,  m_err = -ln(7 err + e^-2),  m_iou = -ln(IoU + e^-1)
    score = sigmoid(5 (m_gap m_err m_iou - 0.7))

An honest server scores high (a clear gap, a smooth history, separate bands); the client
raises the alarm when the score falls *below* ``threshold`` (0.5).

Followed (``CGCL-codes/GradientsScrutinizer``, ``GradientsScrutinizer/util.py``
``detection_score`` and ``SL.py``):

* similarities over all ordered pairs ``k != l`` of the batch, 0 for a zero-norm gradient
  (``get_cos_sim``), per-step means and (population) standard deviations;
* evaluation steps ``range(period, horizon, period)`` with period 50 and horizon 4000
  (``similarity[:, :4000]``, ``np.arange(50, n_len, 50)``); gap and IoU read the step ``s``
  itself, the fit error the history ``[0, s)`` (``similarity[0][:i]``), averaged over the
  diff and same curves, times ``la = 7``; ``epsilo = e^-2``, ``la_g = 0.6``, ``la_ds = 5``,
  ``eposilo_iou = e^-1``; the threshold 0.5 (the plot's detection line);
* the IoU as computed for the FSHA run: intersection ``min(maxes) - max(mins)`` (0 if the
  bands are apart) over ``max(maxes) - min(mins)``. The repository's honest branch computes
  the intersection as ``min(maxes) - min(mins)`` (a typo that inflates the honest IoU and so
  lowers the honest score); the correct intersection is used for every run here.

Departed:

* the similarities are those of the cut gradient the client receives in the step, before
  the update; the repository recomputes the gradient on the same batch after the update
  (``get_gradient`` after ``train_step``), which the client of a real split cannot do
  without a second round trip;
* the history is a fixed buffer of ``horizon`` steps (inside ``lax.scan``); after the
  horizon the detector stops scoring and keeps its verdict;
* the quadratic fit is solved on the steps rescaled to [-1, 1] (the same least-squares fit
  as ``np.polyfit`` on raw steps, which is ill-conditioned in float32 for thousands of
  steps), its RMSE from the explicit residuals;
* ``m_gap`` is written ``sign(gap) |gap|^0.4`` (equal to ``gap / |gap|^0.6``, and 0, not NaN,
  at gap = 0); a band span of 0 (both bands one point) has IoU 1 if they coincide, else 0;
  a batch without a same-label (or different-label) pair records similarity 0 for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from split_workbench.defenses._detect import initial_verdict, positive_int, probability, verdict
from split_workbench.parties import CLIENTS

__all__ = ["Scrutinizer", "scrutinizer", "pair_similarities", "quadratic_fit_rmse", "detection_score"]


def pair_similarities(cut_grads: jax.Array, labels: jax.Array) -> jax.Array:
    """``[diff mean, same mean, diff std, same std]`` of ``0.5 + 0.5 cos`` over the ordered
    pairs ``k != l`` of a batch of per-example cut gradients (B, ...), by whether the labels
    agree."""
    g_BxD = cut_grads.reshape(cut_grads.shape[0], -1).astype(jnp.float32)
    norm_B = jnp.linalg.norm(g_BxD, axis=1)
    denom_BxB = norm_B[:, None] * norm_B[None, :]
    ok = denom_BxB > 0
    sim_BxB = jnp.where(ok, 0.5 + 0.5 * (g_BxD @ g_BxD.T) / jnp.where(ok, denom_BxB, 1.0), 0.0)
    off = ~jnp.eye(g_BxD.shape[0], dtype=bool)
    agree = labels[:, None] == labels[None, :]
    out = []
    for mask in (off & ~agree, off & agree):
        n = jnp.maximum(mask.sum(), 1)
        mean = jnp.sum(sim_BxB * mask) / n
        out.append((mean, jnp.sqrt(jnp.sum(mask * (sim_BxB - mean) ** 2) / n)))
    (dm, ds), (sm, ss) = out
    return jnp.stack([dm, sm, ds, ss])


def quadratic_fit_rmse(y_T: jax.Array, n: jax.Array) -> jax.Array:
    """The RMSE of the least-squares quadratic through ``y_T[:n]`` against the step index
    (``np.polyfit(arange(n), y[:n], 2)``); entries from ``n`` on are ignored. Needs n >= 3."""
    t = jnp.arange(y_T.shape[0], dtype=jnp.float32)
    m = (t < n).astype(jnp.float32)
    u = 2.0 * t / jnp.maximum(n - 1, 1).astype(jnp.float32) - 1.0  # the steps on [-1, 1]
    basis_Tx3 = jnp.stack([jnp.ones_like(u), u, u * u], axis=1)
    a = basis_Tx3.T @ (basis_Tx3 * m[:, None])
    beta = jnp.linalg.solve(a, basis_Tx3.T @ (y_T * m))
    r = (y_T - basis_Tx3 @ beta) * m
    return jnp.sqrt(jnp.sum(r * r) / jnp.maximum(n, 1).astype(jnp.float32))


def detection_score(now: jax.Array, err: jax.Array) -> tuple[jax.Array, dict]:
    """The score from one step's ``[diff mean, same mean, diff std, same std]`` and the mean
    fit error; returns ``(score, {"gap", "iou", "err"})``."""
    dm, sm, ds, ss = now[0], now[1], now[2], now[3]
    gap = (sm - dm) / (sm + dm)
    s_lo, s_hi, d_lo, d_hi = sm - ss, sm + ss, dm - ds, dm + ds
    inter = jnp.maximum(jnp.minimum(s_hi, d_hi) - jnp.maximum(s_lo, d_lo), 0.0)
    span = jnp.maximum(s_hi, d_hi) - jnp.minimum(s_lo, d_lo)
    iou = jnp.where(span > 0, inter / jnp.where(span > 0, span, 1.0), (sm == dm).astype(jnp.float32))
    m_err = -jnp.log(7.0 * err + math.exp(-2))
    m_iou = -jnp.log(iou + math.exp(-1))
    m_gap = jnp.sign(gap) * jnp.abs(gap) ** 0.4
    score = jax.nn.sigmoid(5.0 * (m_gap * m_err * m_iou - 0.7))
    return score, {"gap": gap, "iou": iou, "err": err}


@dataclass(frozen=True)
class Scrutinizer:
    """The Gradients Scrutinizer client (see the module docstring).

    Attributes:
      period: steps between two scores (50).
      horizon: the steps watched (4000); scores at ``period, 2 period, ... < horizon``.
      threshold: the alarm is raised when the score falls below it (0.5).
      stop: stop training at the alarm (False: only record it).
    """

    period: int = 50
    horizon: int = 4000
    threshold: float = 0.5
    stop: bool = True
    name: str = "scrutinizer"
    active: bool = True
    can_stop: bool = True
    alters_batches: bool = False

    def check_run(self, steps: int) -> None:
        """Refuses a run that ends before the first score (step ``period``)."""
        if steps <= self.period:
            raise ValueError(f"scrutinizer scores first at step {self.period} (period), after the run's "
                             f"{steps} steps; shorten the period or lengthen the run")

    def init(self, model, *, key: jax.Array) -> dict:
        del model, key
        zero = jnp.zeros((), jnp.float32)
        return {**initial_verdict(), "history": jnp.zeros((4, self.horizon), jnp.float32),
                "gap": zero, "iou": zero, "err": zero}

    def send(self, state, x, y, *, key, step):
        del key, step
        return state, x, y, jnp.ones((), bool)

    def inspect(self, state, smash, cut_grads, labels, *, step, grads):
        del smash, grads
        inside = step < self.horizon
        now = pair_similarities(cut_grads, labels)
        slot = jnp.clip(step, 0, self.horizon - 1)
        history = jnp.where(inside, state["history"].at[:, slot].set(now), state["history"])
        scoring = inside & (step >= self.period) & (step % self.period == 0)
        err = (quadratic_fit_rmse(history[0], step) + quadratic_fit_rmse(history[1], step)) / 2
        score, parts = detection_score(now, err)
        kept = {k: jnp.where(scoring, v, state[k]) for k, v in parts.items()}
        state = verdict({**state, "history": history, **kept}, scoring & (score < self.threshold),
                        jnp.where(scoring, score, state["score"]), step)
        return state, state["alarm"] & self.stop


@CLIENTS.register("scrutinizer")
def scrutinizer(period: int = 50, horizon: int = 4000, threshold: float = 0.5, stop: bool = True) -> Scrutinizer:
    """The Gradients Scrutinizer with the repository's period 50, horizon 4000, threshold 0.5."""
    positive_int("scrutinizer period", period, at_least=3)  # a quadratic fit needs 3 points
    positive_int("scrutinizer horizon", horizon)
    if horizon <= period:
        raise ValueError(f"scrutinizer horizon ({horizon}) must exceed the period ({period}): the first score "
                         f"is at step {period}")
    threshold = probability("scrutinizer threshold", threshold)
    if not isinstance(stop, bool):
        raise ValueError(f"scrutinizer stop must be True or False, got {stop!r}")
    return Scrutinizer(period, horizon, threshold, stop)
