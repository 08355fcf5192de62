"""Marvell (Li et al. 2022): its optimiser against an independent solver, the noise it draws
against the covariances it solved for, and its effect on the norm attack."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from split_workbench.defenses import build_defense, combine
from split_workbench.defenses.label_leakage import MarvellState, marvell_noise, marvell_solve, marvell_sum_kl
from split_workbench.metrics import roc_auc
from split_workbench.registry import SpecError
from split_workbench.training import fit
from split_workbench.orchestration.experiment import ExperimentSpec
from split_workbench.orchestration.runner import build_trainer
from split_workbench.wire import Wire


def _sum_kl_np(lam, u, v, n, g):
    a1, b1, a2, b2 = u + lam[0], v + lam[2], u + lam[1], v + lam[3]
    return 0.5 * ((a1 - b1) ** 2 / (a1 * b1) + (n - 1) * (a2 - b2) ** 2 / (a2 * b2) + g * (1 / a1 + 1 / b1))


def _scipy_best(u, v, n, g, p, power, starts=30):
    """Multi-start SLSQP over the four variances, in float64: an independent optimum."""
    rng = np.random.default_rng(0)
    spend = lambda lam: (1 - p) * (lam[0] + (n - 1) * lam[1]) + p * (lam[2] + (n - 1) * lam[3])  # noqa: E731
    cons = [{"type": "ineq", "fun": lambda lam: power - spend(lam)}]
    best = np.inf
    for _ in range(starts):
        w = rng.dirichlet(np.ones(4)) * power
        x0 = np.array([w[0] / (1 - p), w[1] / ((1 - p) * (n - 1)), w[2] / p, w[3] / (p * (n - 1))])
        r = minimize(_sum_kl_np, x0, args=(u, v, n, g), method="SLSQP", bounds=[(0, None)] * 4,
                     constraints=cons, options={"ftol": 1e-14, "maxiter": 500})
        if r.success:
            best = min(best, r.fun)
    return best


CASES = [  # (u, v, dim, dist_sq, p, power): unit-free; u < v and u > v; small and large dims
    (2.7e-3, 0.70, 16, 1.0, 0.22, 0.70),
    (1.7e-2, 4.5e-2, 128, 1.0, 0.07, 3.2),
    (0.77, 0.15, 16, 1.0, 0.35, 0.36),
    (0.81, 3.5e-2, 16, 1.0, 0.11, 1.77),
    (8.4e-2, 0.36, 1000, 1.0, 0.38, 0.33),
    (8.7e-2, 0.14, 2, 1.0, 0.51, 0.37),
    (3e-6, 5e-6, 128, 1e-4, 0.1, 4e-4),  # gradient-sized numbers: the solver works in units of dist_sq
]


@pytest.mark.parametrize("case", CASES)
def test_solver_matches_an_independent_optimiser(case):
    u, v, n, g, p, power = case
    sol = marvell_solve(u, v, n, g, p, power)
    lam = np.array([sol.lam0_par, sol.lam0_perp, sol.lam1_par, sol.lam1_perp], np.float64)
    assert np.all(lam >= 0)
    spent = (1 - p) * (lam[0] + (n - 1) * lam[1]) + p * (lam[2] + (n - 1) * lam[3])
    np.testing.assert_allclose(spent, power, rtol=1e-5)  # more power never hurts: all of it is spent
    np.testing.assert_allclose(float(sol.sum_kl), _sum_kl_np(lam, u, v, n, g), rtol=1e-4)
    ref = _scipy_best(u / g, v / g, n, 1.0, p, power / g)  # SLSQP needs O(1) numbers; the KL is scale-free
    assert float(sol.sum_kl) <= ref * (1 + 1e-4), (float(sol.sum_kl), ref)
    assert float(sol.sum_kl) >= ref * (1 - 5e-2)  # not below a float64 optimum by more than slack
    # the same problem at unit scale: variances scale with it, the KL does not
    unit = marvell_solve(u / g, v / g, n, 1.0, p, power / g)
    np.testing.assert_allclose(float(unit.sum_kl), float(sol.sum_kl), rtol=1e-4)
    np.testing.assert_allclose(float(unit.lam0_par) * g, float(sol.lam0_par), rtol=1e-3, atol=1e-12 * g)
    # no feasible random point does better
    rng = np.random.default_rng(1)
    w = rng.dirichlet(np.ones(4), size=4000) * power
    pts = np.stack([w[:, 0] / (1 - p), w[:, 1] / ((1 - p) * (n - 1)), w[:, 2] / p, w[:, 3] / (p * (n - 1))], 1)
    assert _sum_kl_np(pts.T, u, v, n, g).min() >= float(sol.sum_kl) * (1 - 1e-4)


def test_sum_kl_is_the_gaussian_kl_sum():
    """The closed form equals KL(N0||N1) + KL(N1||N0) of the full covariance matrices."""
    n, u, v, lam = 5, 0.3, 0.7, (0.4, 0.1, 0.2, 0.05)
    rng = np.random.default_rng(0)
    m0, m1 = rng.normal(size=n), rng.normal(size=n)
    d = (m1 - m0) / np.linalg.norm(m1 - m0)
    P = np.outer(d, d)
    s0 = u * np.eye(n) + lam[0] * P + lam[1] * (np.eye(n) - P)
    s1 = v * np.eye(n) + lam[2] * P + lam[3] * (np.eye(n) - P)

    def kl(ma, sa, mb, sb):
        ib = np.linalg.inv(sb)
        return 0.5 * (np.trace(ib @ sa) - n + (mb - ma) @ ib @ (mb - ma) + np.log(np.linalg.det(sb) / np.linalg.det(sa)))

    want = kl(m0, s0, m1, s1) + kl(m1, s1, m0, s0)
    got = marvell_sum_kl(*lam, u=u, v=v, dim=n, dist_sq=float(np.sum((m1 - m0) ** 2)))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def _batch(b=64, n=12, seed=0):
    """Cut gradients like a binary task's: positives far larger along one direction."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    y = (jnp.arange(b) % 4 == 0).astype(jnp.int32)
    mean = jnp.where(y[:, None] == 1, 1.0, -0.1) * jnp.ones((1, n)) / np.sqrt(n)
    g = mean + 0.05 * jax.random.normal(k1, (b, n))
    return g, y


def test_noise_has_the_solved_covariances():
    """Over many draws, each class's noise has variance lam_par along the mean difference and
    lam_perp across it, zero mean, and the state records the power and the sum of KLs."""
    g, y = _batch()
    state0 = MarvellState(jnp.zeros(()), jnp.full((), jnp.nan))
    draw = jax.jit(jax.vmap(lambda k: marvell_noise(g, y, state0, key=k, scale=1.0)[0]))
    out = draw(jax.random.split(jax.random.key(0), 4000))
    noise = np.asarray(out - g[None], np.float64)
    x, yb = np.asarray(g, np.float64), np.asarray(y).astype(bool)
    m1, m0 = x[yb].mean(0), x[~yb].mean(0)
    d = (m1 - m0) / np.linalg.norm(m1 - m0)
    u = ((x[~yb] - m0) ** 2).mean()
    v = ((x[yb] - m1) ** 2).mean()
    sol = marvell_solve(u, v, x.shape[1], np.sum((m1 - m0) ** 2), yb.mean(), np.sum((m1 - m0) ** 2))
    along = noise @ d  # (draws, B)
    perp = noise - along[..., None] * d
    for cls, lp, lq in ((True, sol.lam1_par, sol.lam1_perp), (False, sol.lam0_par, sol.lam0_perp)):
        np.testing.assert_allclose(along[:, yb == cls].var(), float(lp), rtol=0.05, atol=1e-6)
        per_dim = (perp[:, yb == cls] ** 2).sum(-1).mean() / (x.shape[1] - 1)
        np.testing.assert_allclose(per_dim, float(lq), rtol=0.05, atol=1e-6)
        assert abs(along[:, yb == cls].mean()) < 0.05 * np.sqrt(float(lp)) + 1e-6
    _, st = marvell_noise(g, y, state0, key=jax.random.key(0), scale=1.0)
    np.testing.assert_allclose(float(st.power), np.sum((m1 - m0) ** 2), rtol=1e-4)
    np.testing.assert_allclose(float(st.sum_kl), float(sol.sum_kl), rtol=1e-3)


def test_more_power_lower_sum_kl_and_the_bound_mode():
    g, y = _batch()
    state0 = MarvellState(jnp.zeros(()), jnp.full((), jnp.nan))
    kls = [float(marvell_noise(g, y, state0, key=jax.random.key(0), scale=s)[1].sum_kl) for s in (0.1, 1, 4, 16)]
    assert all(a > b for a, b in zip(kls, kls[1:])), kls
    _, st = marvell_noise(g, y, state0, key=jax.random.key(0), scale=0.1, sum_kl_bound=0.25)
    assert float(st.sum_kl) <= 0.25 and float(st.power) > 0.1 * 0.9  # grew from 0.1 x dist^2 until under it


def test_norm_attack_is_hidden():
    """The norm attack separates the raw batch perfectly; after Marvell (s=4) it is near chance."""
    g, y = _batch(b=256, seed=3)
    norms = lambda a: jnp.linalg.norm(a, axis=1)  # noqa: E731
    assert float(roc_auc(norms(g), y)) > 0.99
    state0 = MarvellState(jnp.zeros(()), jnp.full((), jnp.nan))
    aucs = [float(roc_auc(norms(marvell_noise(g, y, state0, key=jax.random.key(k), scale=4.0)[0]), y))
            for k in range(20)]
    assert abs(np.mean(aucs) - 0.5) < 0.12, np.mean(aucs)


def test_edge_cases():
    g, y = _batch()
    state = MarvellState(jnp.asarray(2.0), jnp.asarray(0.3))
    # one class only: isotropic noise with the last power, identical law for every example
    ones = jnp.ones_like(y)
    out, st = marvell_noise(g, ones, state, key=jax.random.key(0), scale=1.0)
    draws = jax.vmap(lambda k: marvell_noise(g, ones, state, key=k, scale=1.0)[0])(jax.random.split(jax.random.key(1), 2000))
    per_coord = np.asarray((draws - g[None]) ** 2).mean()
    np.testing.assert_allclose(per_coord, 2.0 / g.shape[1], rtol=0.05)
    assert float(st.power) == 2.0 and np.isnan(float(st.sum_kl))
    # identical class means: no power, unchanged
    same = jnp.ones_like(g)
    out, _ = marvell_noise(same, y, MarvellState(jnp.zeros(()), jnp.zeros(())), key=jax.random.key(0), scale=1.0)
    np.testing.assert_array_equal(out, same)
    # scale 0 installs nothing
    assert combine([build_defense("marvell(scale=0)")])["backward"].needs_labels is False


@pytest.mark.parametrize("spec", ["marvell(scale=-1)", "marvell(scale=0, sum_kl_bound=0.1)",
                                  "marvell(sum_kl_bound=0)", "marvell(power=1)"])
def test_bad_specs(spec):
    with pytest.raises(SpecError):
        build_defense(spec)


def _trainer(spec, classes):
    """The trainer of an 8x8 MLP split with ``spec`` on the wire (a 2-class dataset for a
    binary-only defense), built from an ExperimentSpec as every run builds it."""
    data = "lfw-subset" if classes == 2 else "digits"
    built = ExperimentSpec(data=data, model="mlp", model_kwargs={"hidden": (16, 8)}, batch_size=8,
                           defenses=(spec,), seed=0, attacks=()).build()
    assert built.num_classes == classes
    return build_trainer(built, (8, 8, 1))


def test_spec_validation_refuses_a_multiclass_dataset():
    with pytest.raises(SpecError, match="binary"):
        ExperimentSpec(data="digits", defenses=("marvell(scale=1.0)",)).validate()
    ExperimentSpec(data="lfw-subset", model="mlp", defenses=("marvell(scale=1.0)",)).validate()  # 2 classes


def test_trainer_refuses_a_multiclass_task_and_the_smash_side():
    with pytest.raises(ValueError, match="binary"):
        _trainer("marvell(scale=1.0)", 10)
    t = build_defense("marvell(scale=1.0)").backward
    with pytest.raises(ValueError, match="labels"):
        Wire(forward=t)
    with pytest.raises(ValueError, match="labels"):
        Wire(backward=t).send_backward(jnp.ones((4, 3)), Wire(backward=t).init(jnp.ones((1, 3)), jnp.ones((1, 3))),
                                       key=jax.random.key(0))


def test_in_a_real_trainer_the_client_receives_the_perturbed_gradient():
    trainer = _trainer("marvell(scale=4.0)", 2)
    x = jax.random.uniform(jax.random.key(5), (64, 8, 8, 1))
    y = (jnp.arange(64) % 3 == 0).astype(jnp.int32)
    res = fit(trainer, x, y, epochs=1, batch_size=8, key=jax.random.key(0), tap_steps=(0,))
    plain = _trainer("marvell(scale=0)", 2)
    ref = fit(plain, x, y, epochs=1, batch_size=8, key=jax.random.key(0), tap_steps=(0,))
    assert np.isfinite(float(res.state.wire_state.backward.sum_kl))
    assert float(res.state.wire_state.backward.power) > 0
    assert res.taps[0].cut_grads.shape == ref.taps[0].cut_grads.shape
    # step 0: same parameters, same batch; only the server's noise differs
    np.testing.assert_array_equal(res.taps[0].labels, ref.taps[0].labels)
    assert not np.allclose(res.taps[0].cut_grads[0], ref.taps[0].cut_grads[0])
