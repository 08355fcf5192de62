"""Noise statistics, compression bytes on the wire, dropout and the gradient-side defenses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from split_workbench.defenses import build_defense
from split_workbench.defenses.compression import index_bytes, topk_k
from split_workbench.defenses.label_leakage import max_norm_noise
from split_workbench.orchestration.experiment import ExperimentSpec
from split_workbench.orchestration.runner import build_trainer

N = 200_000


def _apply(t, z, seed=0):
    return t.apply(z, t.init(z[:1]), key=jax.random.key(seed))[0]


@pytest.mark.parametrize("spec,std", [("gaussian_noise(sigma=0.7)", 0.7), ("laplace_noise(scale=0.5)", math.sqrt(2) * 0.5),
                                      ("grad_noise(sigma=0.3)", 0.3)])
def test_noise_std_within_three_standard_errors(spec, std):
    d = build_defense(spec)
    t = d.forward or d.backward
    z = jnp.full((N // 100, 100), 2.0, jnp.float32)
    e = np.asarray(_apply(t, z), np.float64).ravel() - 2.0
    # standard error of the sample std: sqrt(Var(s^2)) / (2 std), Var(s^2) = (m4 - std^4) / n
    m4 = np.mean(e ** 4)
    se = math.sqrt((m4 - std ** 4) / e.size) / (2 * std)
    assert abs(e.std() - std) < 3 * se, (e.std(), std, se)
    assert abs(e.mean()) < 3 * std / math.sqrt(e.size)


def test_noise_placement():
    train = build_defense("gaussian_noise(sigma=1.0)")
    infer = build_defense("gaussian_noise(sigma=1.0, at='inference')")
    both = build_defense("laplace_noise(scale=1.0, at='both')")
    assert train.forward is not None and train.inference is None
    assert infer.forward is None and infer.inference is not None
    assert both.forward is not None and both.inference is not None


def test_cut_dropout_rate_and_inverted_scaling():
    t = build_defense("cut_dropout(rate=0.3)").forward
    z = jnp.ones((1000, 100), jnp.float32)
    out = np.asarray(_apply(t, z))
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 3 * math.sqrt(0.7 * 0.3 / kept.size)
    np.testing.assert_allclose(out[kept], 1 / 0.7, rtol=1e-6)
    assert build_defense("cut_dropout(rate=0.3)").inference is None  # training only


def test_topk_keeps_the_largest_k_per_example():
    t = build_defense("topk(fraction=0.25)").forward
    z = jax.random.normal(jax.random.key(0), (4, 3, 5), jnp.float32)  # n = 15 -> k = 4
    out = np.asarray(_apply(t, z)).reshape(4, -1)
    zf = np.asarray(z).reshape(4, -1)
    for row, ref in zip(out, zf):
        idx = np.argsort(-np.abs(ref))[:4]
        expect = np.zeros_like(ref)
        expect[idx] = ref[idx]
        np.testing.assert_array_equal(row, expect)


def test_quantize_error_bound_and_levels():
    t = build_defense("quantize(bits=3)").forward
    z = jax.random.normal(jax.random.key(0), (16, 32), jnp.float32)
    out = np.asarray(_apply(t, z))
    step = (float(z.max()) - float(z.min())) / 7
    assert np.max(np.abs(out - np.asarray(z))) <= step / 2 + 1e-6
    assert len(np.unique(out)) <= 8
    const = jnp.full((4, 5), 0.3, jnp.float32)
    np.testing.assert_array_equal(_apply(t, const), const)


def test_index_width():
    assert [index_bytes(n) for n in (2, 256, 257, 65536, 65537)] == [1, 1, 2, 2, 3]
    assert topk_k(100, 0.001) == 1 and topk_k(100, 0.25) == 25


@pytest.mark.parametrize("spec,expect", [
    # he2019-lenet on 28x28 at relu2: smash 8x8x16 = 1024 values per example, batch 32
    ("topk(fraction=0.1)", 32 * 103 * (4 + 2)),  # k = ceil(102.4) = 103, indices < 1024: 2 bytes
    ("quantize(bits=4)", math.ceil(32 * 1024 * 4 / 8) + 8),
    ("quantize(bits=1)", 32 * 1024 // 8 + 8),
    ("gaussian_noise(sigma=1.0)", 32 * 1024 * 4),
    ("cut_dropout(rate=0.5)", 32 * 1024 * 4),  # dropped positions are not encoded: dense
])
def test_traffic_counts_the_encoded_bytes(spec, expect):
    trainer = build_trainer(ExperimentSpec(model="he2019-lenet", cut="relu2", defenses=(spec,)).build(), (28, 28, 1))
    assert trainer.model.smash_shape == (8, 8, 16)
    traffic = trainer.traffic(32)
    assert traffic.forward == expect
    assert traffic.backward == 32 * 1024 * 4  # the cut gradient goes back dense


def test_compression_gradient_is_straight_through():
    """The client's gradient is its vjp of the server's dz at the *received* smash: the
    compression is not differentiated (identity Jacobian)."""
    spec = ExperimentSpec(model="mlp", model_kwargs={"hidden": (16,)}, defenses=("topk(fraction=0.25)",), batch_size=4)
    trainer = build_trainer(spec.build(), (8, 8, 1))
    state = trainer.init()
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
    y = jnp.arange(4, dtype=jnp.int32)
    grads, _, _, obs = trainer.compute_grads(state.params, state.wire_state, x, y, key=jax.random.key(1))
    client, p = trainer.model.client, state.params["client"]
    _, vjp = jax.vjp(lambda q: client.apply(q, x), p)
    (expect,) = vjp(obs.cut_grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), grads["client"], expect)
    # the received smash really is sparse: 4 of 16 values per example
    assert int((np.asarray(obs.smash) != 0).sum(axis=1).max()) <= 4


def test_max_norm_matches_the_largest_expected_norm():
    norms = jnp.array([0.1, 1.0, 3.0, 0.5])
    g = norms[:, None] * jax.random.normal(jax.random.key(0), (4, 4000)) / math.sqrt(4000)
    true_sq = np.asarray(jnp.sum(g * g, axis=1))
    keys = jax.random.split(jax.random.key(1), 200)
    out = jax.vmap(lambda k: max_norm_noise(g, key=k))(keys)
    mean_sq = np.asarray(jnp.mean(jnp.sum(out * out, axis=2), axis=0))
    np.testing.assert_allclose(mean_sq, true_sq.max(), rtol=0.01)
    # the largest-norm example is untouched
    np.testing.assert_array_equal(out[0, int(np.argmax(true_sq))], g[int(np.argmax(true_sq))])


def test_max_norm_edge_cases():
    zero = jnp.zeros((3, 5))
    np.testing.assert_array_equal(max_norm_noise(zero, key=jax.random.key(0)), zero)
    g = jnp.ones((3, 5)).at[1, 0].set(jnp.nan)
    out = max_norm_noise(g, key=jax.random.key(0))
    assert np.all(np.isfinite(np.asarray(out)[[0, 2]]))  # the NaN row does not poison the batch max
    np.testing.assert_array_equal(np.asarray(out)[[0, 2]], np.ones((2, 5)))  # equal norms: unchanged
