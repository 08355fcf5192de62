"""The shared harness every registered defense runs through (opacus/optax style).

A new defense must add a row to ``HARNESS``: its simple spec, its zero-strength spec (or
None where it has none, with the reason), and whether it draws randomness.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from split_workbench import defenses
from split_workbench.defenses import DEFENSES, build_defense, combine, is_identity
from split_workbench.registry import SpecError
from split_workbench.training import fit
from split_workbench.orchestration.experiment import ExperimentSpec
from split_workbench.orchestration.runner import build_trainer

# name: (spec, zero-strength spec or None, random)
HARNESS = {
    "gaussian_noise": ("gaussian_noise(sigma=0.5, at='both')", "gaussian_noise(sigma=0.0, at='both')", True),
    "laplace_noise": ("laplace_noise(scale=0.5, at='both')", "laplace_noise(scale=0, at='both')", True),
    "dp_smash": ("dp_smash(clip=1.0, noise_multiplier=1.0, at='both')",
                 "dp_smash(clip=1e9, noise_multiplier=0.0, at='both')", True),
    # zero noise + huge clip equals the batch-mean gradient only up to float rounding: checked below
    "dp_sgd": ("dp_sgd(clip=1.0, noise_multiplier=1.0)", None, True),
    "nopeek": ("nopeek(alpha=0.5)", "nopeek(alpha=0.0)", False),
    "cut_dropout": ("cut_dropout(rate=0.5)", "cut_dropout(rate=0.0)", True),
    "topk": ("topk(fraction=0.25, at='both')", "topk(fraction=1.0, at='both')", False),
    "quantize": ("quantize(bits=4, at='both')", None, False),  # rounding has no zero strength
    "grad_noise": ("grad_noise(sigma=0.1)", "grad_noise(sigma=0.0)", True),
    "max_norm": ("max_norm", None, True),  # no strength parameter
    "marvell": ("marvell(scale=1.0)", "marvell(scale=0)", True),  # binary tasks; reads the labels
}
NAMES = sorted(HARNESS)
# jitted vs eager: marvell's covariances come from a float32 minimisation whose optimum is flat,
# so the two roundings may settle on points about 3e-4 apart (relative); same jit, same result
JIT_RTOL = {"marvell": 1e-3}
B, D = 8, 16


def _z(seed=1):
    return jax.random.normal(jax.random.key(seed), (B, D), jnp.float32)


def _transforms(d):
    return [(where, t) for where, t in (("forward", d.forward), ("inference", d.inference),
                                        ("backward", d.backward)) if t is not None]


def _per_example_grads():
    k1, k2 = jax.random.split(jax.random.key(3))
    return {"w": jax.random.normal(k1, (B, 4, 3)), "b": jax.random.normal(k2, (B, 3))}


def test_every_registered_defense_is_in_the_harness():
    assert sorted(DEFENSES.names()) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_builds_and_documents(name):
    spec = HARNESS[name][0]
    d = build_defense(spec)
    assert isinstance(d, defenses.Defense) and d.guarantee
    doc = DEFENSES.get(name).__doc__
    for word in ("Guarantee", "Edge cases", "Returns", "References"):
        assert word in doc, f"{name}'s docstring lacks {word}"
    assert (d.accountant is not None) == name.startswith("dp_")


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_and_keys(name):
    spec, _, random = HARNESS[name]
    d = build_defense(spec)
    z = _z()
    for where, t in _transforms(d):
        state = t.init(z[:1])
        extra = {"labels": jnp.arange(B) % 2} if t.needs_labels else {}
        apply = lambda z_, k: t.apply(z_, state, key=k, **extra)[0]  # noqa: E731
        out = apply(z, jax.random.key(0))
        assert out.shape == z.shape and out.dtype == z.dtype, where
        tol = JIT_RTOL.get(name, 1e-6)
        np.testing.assert_allclose(jax.jit(apply)(z, jax.random.key(0)), out, rtol=tol, atol=tol)
        np.testing.assert_array_equal(jax.jit(apply)(z, jax.random.key(0)), jax.jit(apply)(z, jax.random.key(0)))
        np.testing.assert_array_equal(apply(z, jax.random.key(0)), out)
        differs = not np.array_equal(apply(z, jax.random.key(1)), out)
        assert differs == random, f"{name} {where}: key dependence {differs}, expected {random}"
    for term in d.loss_terms:
        x = jax.random.uniform(jax.random.key(2), (B, 8, 8, 1))
        v = term.fn(x, z)
        assert v.shape == () and jnp.isfinite(v)
        np.testing.assert_allclose(jax.jit(term.fn)(x, z), v, rtol=1e-5)
    if d.privatizer is not None:
        g = _per_example_grads()
        out = d.privatizer(g, key=jax.random.key(0))
        assert jax.tree.map(lambda a: (a.shape, a.dtype), out) == jax.tree.map(lambda a: (a.shape[1:], a.dtype), g)
        jit_out = jax.jit(lambda g_, k: d.privatizer(g_, key=k))(g, jax.random.key(0))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), jit_out, out)
        other = d.privatizer(g, key=jax.random.key(1))
        assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(other)))


@pytest.mark.parametrize("name", NAMES)
def test_zero_strength_is_exact_identity(name):
    zero = HARNESS[name][1]
    if zero is None:
        pytest.skip(f"{name} has no zero-strength setting (see HARNESS)")
    d = build_defense(zero)
    parts = combine([d])
    assert parts["loss_terms"] == () and parts["privatizer"] is None
    z = _z()
    for where in ("forward", "backward", "inference"):
        t = parts[where]
        if not is_identity(t):
            out, _ = t.apply(z, t.init(z[:1]), key=jax.random.key(0))
            np.testing.assert_array_equal(out, z)


def test_dp_sgd_without_noise_or_clipping_is_the_mean_gradient():
    d = build_defense("dp_sgd(clip=1e9, noise_multiplier=0.0)")
    g = _per_example_grads()
    out = d.privatizer(g, key=jax.random.key(0))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b.mean(0), rtol=1e-6, atol=1e-7), out, g)


def _trainer(spec, classes=10):
    """The trainer of an 8x8 MLP split with ``spec`` on the wire (a 2-class dataset for a
    binary-only defense), built from an ExperimentSpec as every run builds it."""
    data = "lfw-subset" if classes == 2 else "digits"
    built = ExperimentSpec(data=data, model="mlp", model_kwargs={"hidden": (16, 8)}, batch_size=B,
                           defenses=(spec,), seed=0, attacks=()).build()
    assert built.num_classes == classes
    return build_trainer(built, (8, 8, 1))


@pytest.mark.parametrize("name", NAMES)
def test_in_a_real_trainer(name):
    """Built through build_trainer; state carried through 3 steps of one jitted epoch
    (a lax.scan of the six-step protocol); evaluation through the inference wire."""
    classes = 2 if build_defense(HARNESS[name][0]).binary_labels else 10
    trainer = _trainer(HARNESS[name][0], classes)
    x = jax.random.uniform(jax.random.key(5), (3 * B, 8, 8, 1))
    y = jnp.arange(3 * B, dtype=jnp.int32) % classes
    state0 = trainer.init()
    res = fit(trainer, x, y, epochs=1, batch_size=B, key=jax.random.key(0), x_test=x, y_test=y,
              tap_steps=(2,), state=state0)
    state, rec = res.state, res.history[0]
    assert int(state.step) == 3 and rec["steps"] == 3
    assert jax.tree.structure(state.wire_state) == jax.tree.structure(state0.wire_state)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(state.params))
    assert np.isfinite(rec["train_loss"]) and 0 <= rec["test_accuracy"] <= 1
    assert res.taps[0].smash.shape == (1, B, *trainer.model.smash_shape)
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params["client"]),
                                                         jax.tree.leaves(state0.params["client"]))]
    assert any(changed), "the client did not train"


BAD = ["gaussian_noise(sigma=-0.1)", "laplace_noise(scale=-1)", "gaussian_noise(at='always')",
       "dp_smash(clip=0)", "dp_smash(noise_multiplier=-1)", "dp_smash(sampling='random')",
       "dp_sgd(clip=-1)", "dp_sgd(adjacency='swap')", "nopeek(alpha=-1)", "nopeek(variant='rv')",
       "cut_dropout(rate=1.0)", "cut_dropout(rate=-0.1)", "topk(fraction=0)", "topk(fraction=1.5)",
       "quantize(bits=0)", "quantize(bits=2.5)", "quantize(bits=17)", "grad_noise(sigma=-1)",
       "gaussian_noise(sigma='big')", "max_norm(sigma=1)", "marvell(scale=-1)", "marvell(sum_kl_bound=-1)"]


@pytest.mark.parametrize("spec", BAD)
def test_bad_specs_fail_before_training(spec):
    with pytest.raises(SpecError):
        build_defense(spec)
    with pytest.raises(SpecError):
        _trainer(spec, 10)
