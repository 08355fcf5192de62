"""Gradient-side defenses against label leakage (Li et al. 2022): noise on the cut gradient
the server sends back, so the client (the non-label party) cannot read labels from it:
isotropic noise, max-norm, and Marvell (label-dependent noise from an optimisation).

The cut gradient of a batch-mean loss carries a 1/B factor: ``sigma`` is in those units.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from split_workbench.defenses import _checks
from split_workbench.defenses.base import CutTransform, Defense, stateless
from split_workbench.defenses.noise import add_gaussian
from split_workbench.defenses.registry import register_defense, vmappable

__all__ = ["grad_noise", "max_norm", "max_norm_noise", "marvell", "marvell_solve", "marvell_noise",
           "marvell_sum_kl", "MarvellSolution", "MarvellState"]


@vmappable("sigma")
@register_defense("grad_noise")
def grad_noise(sigma: float = 0.01) -> Defense:
    """Isotropic Gaussian noise on the cut gradient: ``dz~ = dz + sigma e``, ``e ~ N(0, I)``.

    Guarantee: empirical, no formal guarantee (the cut gradient is unclipped).
    Edge cases: ``sigma = 0`` is the identity (exactly); NaN passes through.

    Args:
      sigma: noise std >= 0, in the units of the per-example cut gradient (which carries
        the loss's 1/B factor).

    Returns:
      a ``Defense`` with a ``backward`` transform.

    References:
      Li et al. 2022, "Label Leakage and Protection in Two-party Split Learning", ICLR
      (the isotropic Gaussian baseline).
    """
    sigma = _checks.nonnegative("grad_noise", "sigma", sigma)
    name = f"grad_noise(sigma={sigma!r})"
    if not _checks.traced(sigma) and sigma == 0:
        return Defense(name=name, guarantee="none (sigma = 0: identity)")
    return Defense(name=name, backward=stateless(lambda g, *, key: add_gaussian(g, sigma, key=key)),
                   guarantee="empirical, no formal guarantee")


def max_norm_noise(g: jax.Array, *, key: jax.Array) -> jax.Array:
    """Li et al.'s max-norm heuristic on a batch of cut gradients ``g`` (B, ...).

    ``g~_j = g_j + sigma_j e_j``, ``sigma_j = sqrt((max_i ||g_i||^2 - ||g_j||^2) / d)``, so
    ``E ||g~_j||^2 = max_i ||g_i||^2``: every example's expected squared norm matches the
    batch's largest, and the norm no longer separates the classes.
    Rows with a non-finite norm are left out of the max and passed through unchanged.
    """
    b = g.shape[0]
    d = g.size // b
    sq_B = jnp.sum(jnp.square(g.reshape(b, -1).astype(jnp.float32)), axis=1)
    finite_B = jnp.isfinite(sq_B)
    top = jnp.max(jnp.where(finite_B, sq_B, 0.0))
    sigma_B = jnp.sqrt(jnp.where(finite_B, jnp.maximum(top - sq_B, 0.0), 0.0) / d)
    e = jax.random.normal(key, g.shape, jnp.float32)
    return g + (sigma_B.reshape((b,) + (1,) * (g.ndim - 1)) * e).astype(g.dtype)


@register_defense("max_norm")
def max_norm() -> Defense:
    """Max-norm: per-example Gaussian noise on the cut gradient that lifts each example's
    expected squared norm to the largest in its batch.

    ``sigma_j^2 = (max_i ||g_i||^2 - ||g_j||^2) / d``; ``g~_j = g_j + N(0, sigma_j^2 I_d)``.

    Guarantee: empirical, no formal guarantee (a heuristic against the norm attack; the
    cosine/direction attack is not addressed).
    Edge cases: it has no strength parameter and no identity setting; the largest-norm
    example gets no noise; an all-equal-norm batch is unchanged; zero gradients get noise
    up to the batch max (zero if the whole batch is zero); rows with NaN/inf are ignored
    for the max and passed through.

    Returns:
      a ``Defense`` with a ``backward`` transform.

    References:
      Li et al. 2022, "Label Leakage and Protection in Two-party Split Learning", ICLR
      (section "max norm" heuristic).
    """
    return Defense(name="max_norm", backward=stateless(max_norm_noise), guarantee="empirical, no formal guarantee")


# ------------------------------------------------------------------------------- Marvell
class MarvellSolution(NamedTuple):
    """Noise covariances of Marvell for one batch, in the gradient's units.

    Negative examples get ``lam0_par`` along the unit mean difference ``Delta^`` and
    ``lam0_perp`` in every direction orthogonal to it; positive examples ``lam1_par`` and
    ``lam1_perp``. ``sum_kl`` is KL(P1~ || P0~) + KL(P0~ || P1~) of the perturbed
    class-conditional Gaussians; ``power`` the trace budget P the solution spends.
    """

    lam0_par: jax.Array
    lam0_perp: jax.Array
    lam1_par: jax.Array
    lam1_perp: jax.Array
    sum_kl: jax.Array
    power: jax.Array


def _ratio_term(a, b):
    """``a/b + b/a - 2 = (a - b)^2 / (a b)``, without the cancellation of the first form."""
    return jnp.square(a - b) / (a * b)


def marvell_sum_kl(lam0_par, lam0_perp, lam1_par, lam1_perp, *, u, v, dim, dist_sq):
    """Sum of the two KL divergences between ``N(m0, (u I + S0))`` and ``N(m1, (v I + S1))``,
    ``S_i = lam_i_par D D^T + lam_i_perp (I - D D^T)``, ``D = (m1 - m0) / ||m1 - m0||``,
    ``dist_sq = ||m1 - m0||^2``, in ``dim`` dimensions (the log-determinants cancel)."""
    a1, b1 = u + lam0_par, v + lam1_par
    a2, b2 = u + lam0_perp, v + lam1_perp
    return 0.5 * (_ratio_term(a1, b1) + (dim - 1) * _ratio_term(a2, b2) + dist_sq * (1.0 / a1 + 1.0 / b1))


def marvell_solve(u, v, dim, dist_sq, p, power, *, grid: int = 33, levels: int = 5) -> MarvellSolution:
    """Marvell's optimisation (Li et al. 2022, eq. 4): minimise the symmetrised KL between the
    perturbed class-conditional gradient distributions, each modelled as an isotropic
    Gaussian (coordinate variance ``u`` for negatives, ``v`` for positives, means
    ``dist_sq`` apart), over noise covariances of the optimal form (one variance along the
    mean difference, one across it, per class), under the power constraint
    ``(1 - p) tr(S0) + p tr(S1) <= power``.

    The objective separates into the along-``Delta`` part and the orthogonal part, coupled by
    the budget. The orthogonal part's best use of a budget ``B2`` is to raise the smaller of
    ``u`` and ``v`` towards the larger (it is zero once they are equal), so the problem is two
    numbers: the share of ``power`` spent across ``Delta`` (up to what equalising costs) and the
    split of the rest between the classes. Both are found by a grid search refined ``levels``
    times around the best point (relative precision about ``(2 / (grid - 1))**levels``): no
    Python loop, jittable and vmappable, and not trapped by local minima of the coarse grid.

    All arguments may be traced scalars; ``0 < p < 1`` and ``dist_sq > 0`` are the caller's to
    ensure (``marvell_noise`` handles the other cases).
    """
    f32 = jnp.float32
    u, v, dim, dist_sq, p, power = (jnp.asarray(a, f32) for a in (u, v, dim, dist_sq, p, power))
    # work in units of dist_sq: the objective is invariant to a common scale
    scale = dist_sq
    uu, vv, pp = u / scale, v / scale, power / scale
    small_neg = uu < vv
    w_small = jnp.where(small_neg, 1.0 - p, p)
    equalise = (dim - 1) * w_small * jnp.abs(vv - uu)  # budget that makes the orthogonal part zero
    cap = jnp.minimum(pp, equalise)

    def lams(t, s):
        b2 = t * cap
        b1 = pp - b2
        perp = b2 / jnp.maximum(w_small * (dim - 1), 1e-30)
        lam0_perp = jnp.where(small_neg, perp, 0.0)
        lam1_perp = jnp.where(small_neg, 0.0, perp)
        return s * b1 / (1.0 - p), lam0_perp, (1.0 - s) * b1 / p, lam1_perp

    def objective(t, s):
        l0a, l0b, l1a, l1b = lams(t, s)
        kl = marvell_sum_kl(l0a, l0b, l1a, l1b, u=uu, v=vv, dim=dim, dist_sq=1.0)
        return jnp.where(jnp.isfinite(kl), kl, jnp.inf)

    ticks = jnp.linspace(-1.0, 1.0, grid, dtype=f32)
    t0, s0, half = f32(0.5), f32(0.5), f32(0.5)
    for _ in range(levels):  # static unroll: `levels` small grids, each one vectorised
        ts = jnp.clip(t0 + half * ticks, 0.0, 1.0)
        ss = jnp.clip(s0 + half * ticks, 0.0, 1.0)
        vals = objective(ts[:, None], ss[None, :])
        i, j = jnp.unravel_index(jnp.argmin(vals), vals.shape)
        t0, s0 = ts[i], ss[j]
        half = half * 2.0 / (grid - 1)
    l0a, l0b, l1a, l1b = lams(t0, s0)
    kl = marvell_sum_kl(l0a, l0b, l1a, l1b, u=uu, v=vv, dim=dim, dist_sq=1.0)
    return MarvellSolution(l0a * scale, l0b * scale, l1a * scale, l1b * scale, kl, power)


class MarvellState(NamedTuple):
    """Carried across steps: the power of the last two-class batch (used for a batch with one
    class only) and, for inspection, the last batch's achieved sum of KL divergences."""

    power: jax.Array
    sum_kl: jax.Array


def marvell_noise(g: jax.Array, labels: jax.Array, state: MarvellState, *, key: jax.Array, scale,
                  sum_kl_bound=None, max_doublings: int = 60) -> tuple[jax.Array, MarvellState]:
    """Marvell on a batch of cut gradients ``g`` (B, ...) with binary ``labels`` (B,).

    Per batch: class means ``m0, m1`` and average coordinate variances ``u, v`` of the
    negative and positive gradients, the positive fraction ``p``, the power
    ``P = scale * ||m1 - m0||^2``; ``marvell_solve`` gives the covariances; each example gets
    ``sqrt(lam_par) (e . D) D + sqrt(lam_perp) (e - (e . D) D)``, ``e ~ N(0, I)``, with its
    class's variances. With ``sum_kl_bound``, P grows by 1.5x from ``scale * ||m1 - m0||^2``
    until the solution's sum of KL divergences is at most the bound (Li et al.'s "dynamic"
    mode; at most ``max_doublings`` growths).

    A batch with one class only (no mean difference) gets isotropic noise with the power of
    the last two-class batch, the same for every example; a batch whose class means coincide
    has P = 0 and passes unchanged.
    """
    b = g.shape[0]
    x = g.reshape(b, -1).astype(jnp.float32)
    n = x.shape[1]
    y1 = (labels.reshape(b) == 1).astype(jnp.float32)
    y0 = 1.0 - y1
    n1, n0 = y1.sum(), y0.sum()
    two_class = (n1 > 0) & (n0 > 0)
    m1 = (y1[:, None] * x).sum(0) / jnp.maximum(n1, 1.0)
    m0 = (y0[:, None] * x).sum(0) / jnp.maximum(n0, 1.0)
    v = (y1[:, None] * jnp.square(x - m1)).sum() / jnp.maximum(n1 * n, 1.0)
    u = (y0[:, None] * jnp.square(x - m0)).sum() / jnp.maximum(n0 * n, 1.0)
    diff = m1 - m0
    dist_sq = jnp.sum(jnp.square(diff))
    usable = two_class & (dist_sq > 0)
    safe_dist = jnp.where(usable, dist_sq, 1.0)
    p = jnp.where(usable, n1 / b, 0.5)

    def solve(power):
        return marvell_solve(u, v, n, safe_dist, p, power)

    power0 = jnp.asarray(scale, jnp.float32) * safe_dist
    sol = solve(power0)
    if sum_kl_bound is not None:
        def cond(c):
            i, s = c
            return (i < max_doublings) & (s.sum_kl > sum_kl_bound)

        def body(c):
            i, s = c
            return i + 1, solve(s.power * 1.5)

        _, sol = jax.lax.while_loop(cond, body, (jnp.asarray(0), sol))

    direction = jnp.where(usable, diff / jnp.sqrt(safe_dist), 0.0)
    e = jax.random.normal(key, x.shape, jnp.float32)
    along = (e @ direction)[:, None] * direction[None, :]
    lam_par = jnp.where(y1 > 0, sol.lam1_par, sol.lam0_par)
    lam_perp = jnp.where(y1 > 0, sol.lam1_perp, sol.lam0_perp)
    # one class only: isotropic noise of the last two-class batch's power, for everyone
    iso = state.power / n
    lam_par = jnp.where(usable, lam_par, jnp.where(two_class, 0.0, iso))
    lam_perp = jnp.where(usable, lam_perp, jnp.where(two_class, 0.0, iso))
    noise = jnp.sqrt(lam_par)[:, None] * along + jnp.sqrt(lam_perp)[:, None] * (e - along)
    out = (x + noise).reshape(g.shape).astype(g.dtype)
    new = MarvellState(power=jnp.where(usable, sol.power, state.power),
                       sum_kl=jnp.where(usable, sol.sum_kl, jnp.nan))
    return out, new


@vmappable("scale")
@register_defense("marvell")
def marvell(scale: float = 1.0, sum_kl_bound: float | None = None) -> Defense:
    """Marvell (Li et al. 2022): label-dependent Gaussian noise on the cut gradient, with
    covariances chosen per batch to minimise the symmetrised KL divergence between the
    positive and negative gradient distributions the client receives, under a power budget.

    The server (the label party) estimates each class's gradient mean and average coordinate
    variance on the batch, sets the budget ``P = scale * ||m1 - m0||^2``, solves for the
    optimal covariances (``marvell_solve``) and perturbs each example with its class's.
    Binary tasks only (labels 0/1), as in the paper.

    Guarantee: empirical, no formal guarantee. Under the model's assumption (each class's
    cut gradients are isotropic Gaussians) a sum of KL divergences ``eps`` bounds any
    detector's error (mean of FPR and FNR) below by ``1/2 - sqrt(eps)/4``; the achieved
    ``eps`` of the last batch is kept in the wire state (``MarvellState.sum_kl``). The
    assumption does not hold exactly, so the bound is not a guarantee about real gradients.
    Edge cases: ``scale = 0`` is the identity (exactly); a batch with one class only gets
    isotropic noise of the last two-class batch's power; equal class means give P = 0.

    Args:
      scale: the power budget as a multiple of the squared distance between the class means
        of the batch's cut gradients (the paper's ``s``, e.g. 0.1 to 4), >= 0.
      sum_kl_bound: if set (> 0), the budget grows by 1.5x per round from ``scale`` until the
        solution's sum of KL divergences is at most this (the paper's dynamic mode).

    Returns:
      a ``Defense`` with a label-dependent ``backward`` transform, for binary tasks.

    References:
      Li et al. 2022, "Label Leakage and Protection in Two-party Split Learning", ICLR
      (section 4, "Marvell", and the authors' solver of the 4-variable problem).
    """
    scale = _checks.nonnegative("marvell", "scale", scale)
    if sum_kl_bound is not None:
        sum_kl_bound = _checks.positive("marvell", "sum_kl_bound", sum_kl_bound)
        if not _checks.traced(scale) and scale == 0:
            raise _checks.SpecError("marvell: sum_kl_bound grows the budget from scale, so scale must be > 0 "
                                    f"with it (the paper starts at 1.0), got scale={scale!r}")
    name = f"marvell(scale={scale!r}" + ("" if sum_kl_bound is None else f", sum_kl_bound={sum_kl_bound!r}") + ")"
    if not _checks.traced(scale) and scale == 0 and sum_kl_bound is None:
        return Defense(name=name, guarantee="none (scale = 0: identity)", binary_labels=True)

    def init(dz):
        del dz
        return MarvellState(jnp.zeros((), jnp.float32), jnp.full((), jnp.nan, jnp.float32))

    def apply(dz, state, *, key, labels):
        return marvell_noise(dz, labels, state, key=key, scale=scale, sum_kl_bound=sum_kl_bound)

    return Defense(name=name, backward=CutTransform(init, apply, None, needs_labels=True),
                   guarantee="empirical, no formal guarantee", binary_labels=True)
