"""DP defenses: clipping bounds and edge cases, the accountant against the TF Privacy
yardstick (classic and library RDP conversions, PLD), calibration, DP-SGD vs a reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from split_workbench.defenses import build_defense, clip_per_example, clip_tree_per_example
from split_workbench.defenses.accounting import Schedule, calibrate_noise, epsilon, privacy_report

F32_EPS = float(jnp.finfo(jnp.float32).eps)


def test_clipped_norms_are_bounded():
    z = jax.random.normal(jax.random.key(0), (64, 7, 3)) * jnp.logspace(-3, 3, 64)[:, None, None]
    for c in (1e-2, 1.0, 50.0):
        out = np.asarray(clip_per_example(z, c), np.float64).reshape(64, -1)
        norms = np.linalg.norm(out, axis=1)
        assert np.all(norms <= c * (1 + 4 * F32_EPS))
        small = np.linalg.norm(np.asarray(z, np.float64).reshape(64, -1), axis=1) <= c
        np.testing.assert_array_equal(out[small], np.asarray(z).reshape(64, -1)[small])  # untouched below C


def test_clipping_zero_and_non_finite():
    z = jnp.stack([jnp.zeros(4), jnp.array([jnp.nan, 1.0, 2.0, 3.0]), jnp.array([jnp.inf, 0, 0, 0]),
                   jnp.array([3.0, 4.0, 0.0, 0.0])])
    out = np.asarray(clip_per_example(z, 1.0))
    np.testing.assert_array_equal(out[0], 0.0)  # zero norm stays zero (no 0/0)
    np.testing.assert_array_equal(out[1:3], 0.0)  # NaN/inf examples are zeroed: the bound holds
    np.testing.assert_allclose(out[3], [0.6, 0.8, 0, 0], rtol=1e-6)
    tree = {"a": z, "b": jnp.ones((4, 2))}
    out = clip_tree_per_example(tree, 1.0)
    gnorm = np.sqrt(sum(np.sum(np.asarray(v).reshape(4, -1) ** 2, axis=1) for v in out.values()))
    assert np.all(gnorm <= 1 + 4 * F32_EPS)
    np.testing.assert_array_equal(np.asarray(out["b"])[1:3], 0.0)  # the whole example is zeroed


def test_dp_smash_clips_then_adds_sigma_c_noise():
    t = build_defense("dp_smash(clip=2.0, noise_multiplier=0.0)").forward
    z = jax.random.normal(jax.random.key(0), (32, 50)) * 10
    out = t.apply(z, t.init(z[:1]), key=jax.random.key(0))[0]
    assert float(jnp.max(jnp.linalg.norm(out, axis=1))) <= 2.0 * (1 + 4 * F32_EPS)
    t = build_defense("dp_smash(clip=2.0, noise_multiplier=1.5)").forward
    zero = jnp.zeros((2000, 100))
    noise = np.asarray(t.apply(zero, t.init(zero[:1]), key=jax.random.key(1))[0])
    se = 3.0 / math.sqrt(2 * noise.size)
    assert abs(noise.std() - 3.0) < 3 * se


def test_dp_sgd_privatizer_matches_a_one_at_a_time_reference():
    d = build_defense("dp_sgd(clip=1.0, noise_multiplier=0.0)")
    k = jax.random.split(jax.random.key(0), 2)
    g = {"w": jax.random.normal(k[0], (6, 3, 2)) * 2, "b": jax.random.normal(k[1], (6, 2))}
    out = d.privatizer(g, key=jax.random.key(0))
    ref = {"w": np.zeros((3, 2)), "b": np.zeros(2)}
    for i in range(6):
        gi = {n: np.asarray(v[i], np.float64) for n, v in g.items()}
        norm = math.sqrt(sum(np.sum(v ** 2) for v in gi.values()))
        for n in ref:
            ref[n] += gi[n] * min(1.0, 1.0 / norm)
    for n in ref:
        np.testing.assert_allclose(out[n], ref[n] / 6, rtol=1e-5, atol=1e-7)
    # the noise: std sigma C / B per coordinate
    d = build_defense("dp_sgd(clip=0.5, noise_multiplier=2.0)")
    zeros = {"w": jnp.zeros((4, 300, 100))}
    noise = np.asarray(d.privatizer(zeros, key=jax.random.key(3))["w"])
    assert abs(noise.std() - 2.0 * 0.5 / 4) < 3 * (0.25 / math.sqrt(2 * noise.size))


# TF Privacy MNIST tutorial: N = 60,000, batch 256, delta 1e-5, orders 1.1..10.9, 12..63.
# rdp_classic: the published numbers; rdp (library conversion) and pld: pinned to what
# dp-accounting 0.6.0 gives, and asserted below the classic one.
YARDSTICK = [  # noise, epochs, published, rdp_classic (ours), rdp, pld
    (1.12, 60, 2.92, 2.9223, 2.5187, 2.3193),
    (0.6, 30, 9.74, 9.7603, 8.7771, 7.6921),
    (1.2, 10, 1.20, 1.1984, 0.9318, 0.7959),
]


@pytest.mark.parametrize("noise,epochs,published,classic,lib,pld", YARDSTICK)
def test_accountant_reproduces_the_yardstick(noise, epochs, published, classic, lib, pld):
    sched = Schedule.from_epochs(epochs, 256, 60_000)
    e_classic = epsilon(noise, 1e-5, sched, method="rdp_classic")
    e_lib = epsilon(noise, 1e-5, sched, method="rdp")
    e_pld = epsilon(noise, 1e-5, sched, method="pld")
    # 2.92 and 1.20 to 0.01; 9.74 is 0.02 off (we get 9.760 with every steps convention we tried)
    assert abs(e_classic - published) <= (0.025 if published == 9.74 else 0.01)
    assert e_classic == pytest.approx(classic, abs=1e-3)
    assert e_lib == pytest.approx(lib, abs=1e-3) and e_lib <= e_classic
    assert e_pld == pytest.approx(pld, abs=1e-3) and e_pld <= e_lib


def test_dp_sgd_defense_accountant_reports_both_conversions():
    d = build_defense("dp_sgd(clip=1.0, noise_multiplier=1.12)")
    r = d.accountant(steps=14063, batch_size=256, dataset_size=60_000, delta=1e-5)
    assert r["method"] == "rdp" and r["epsilon"] == r["epsilon_rdp"]
    assert r["epsilon_rdp_classic"] == pytest.approx(2.9223, abs=1e-3)
    assert r["epsilon_rdp"] < r["epsilon_rdp_classic"]


def test_shuffled_epochs_compose_without_amplification():
    """Shuffling: e epochs = e unamplified Gaussian releases = one with noise sigma/sqrt(e)."""
    d = build_defense("dp_smash(clip=1.0, noise_multiplier=4.0)")
    r = d.accountant(steps=10 * 234, batch_size=256, dataset_size=60_000, delta=1e-5)
    assert r["releases_per_example"] == 10 and r["sampling"] == "shuffle"
    one = epsilon(4.0 / math.sqrt(10), 1e-5, Schedule(234, 256, 60_000, "shuffle"), method="pld")
    assert r["epsilon_pld"] == pytest.approx(one, rel=0.02)
    # analytic: 10 Gaussian releases with noise 4 have RDP a * rho, rho = 10 / (2 * 4^2); the
    # classic conversion's minimum over a is rho + 2 sqrt(rho log(1/delta)) (the order grid
    # adds a little)
    rho = 10 / (2 * 16.0)
    assert r["epsilon_rdp_classic"] == pytest.approx(rho + 2 * math.sqrt(rho * math.log(1e5)), rel=1e-3)
    # replace-one doubles the sensitivity: same epsilon as add/remove with half the noise
    r2 = build_defense("dp_smash(clip=1.0, noise_multiplier=8.0, adjacency='replace_one')").accountant(
        steps=10 * 234, batch_size=256, dataset_size=60_000, delta=1e-5)
    assert r2["epsilon"] == pytest.approx(r["epsilon"], rel=1e-9)
    # the Poisson number is much smaller (amplification), which is why its assumption matters
    p = epsilon(4.0, 1e-5, Schedule(10 * 234, 256, 60_000, "poisson"))
    assert p < r["epsilon"]


def test_accountant_edge_cases():
    s = Schedule(100, 10, 1000)
    assert epsilon(0.0, 1e-5, s) == math.inf
    assert epsilon(1.0, 1e-5, Schedule(0, 10, 1000)) == 0.0
    with pytest.raises(ValueError, match="delta"):
        epsilon(1.0, 0.0, s)
    with pytest.raises(ValueError, match="pld"):
        epsilon(1.0, 1e-5, Schedule(100, 10, 1000, "poisson", "replace_one"), method="rdp")
    assert epsilon(1.0, 1e-5, Schedule(100, 10, 1000, "poisson", "replace_one"), method="pld") > 0
    assert privacy_report(1.0, 1e-5, Schedule(100, 10, 1000, "poisson", "replace_one"))["method"] == "pld"


@pytest.mark.parametrize("target,method", [(2.92, "rdp_classic"), (1.0, "rdp"), (3.0, "pld")])
def test_calibrate_noise_inverts_the_accountant(target, method):
    sched = Schedule.from_epochs(60, 256, 60_000)
    sigma = calibrate_noise(target, 1e-5, sched, method=method)
    assert epsilon(sigma, 1e-5, sched, method=method) <= target
    assert epsilon(sigma * 0.995, 1e-5, sched, method=method) > target  # and it is (nearly) the smallest
    if method == "rdp_classic":
        assert sigma == pytest.approx(1.12, abs=0.005)
