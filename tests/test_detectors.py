"""Client-side detectors of a hijacking server (SplitGuard, SplitOut, Gradients Scrutinizer):
the gradient they read, SplitOut's LOF against scikit-learn, each detector on an honest and a
lying server, and the specs they refuse."""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fixtures.malicious_server import LabelShiftServer
from sklearn.neighbors import LocalOutlierFactor

from split_workbench.data import load
from split_workbench.defenses._detect import first_layer_kernel
from split_workbench.defenses.scrutinizer import pair_similarities, quadratic_fit_rmse
from split_workbench.defenses.splitguard import SplitGuard, sg_score
from split_workbench.defenses.splitout import fit_lof, lof_decision
from split_workbench.models import make_model
from split_workbench.orchestration.experiment import ExperimentSpec, SpecError
from split_workbench.orchestration.runner import prepare, train_stage
from split_workbench.parties import CLIENTS, ServerReply, build_client, task_reply
from split_workbench.protocol import SplitTrainer
from split_workbench.split import split
from split_workbench.training import fit


@dataclass(frozen=True)
class RandomLabelServer:
    """SplitGuard's own adversary (its notebook's ``adv_type == 'random'``): the server learns,
    and sends the gradient of, uniformly random labels: its gradients ignore the labels sent."""

    name: str = "random_labels"
    active: bool = True

    def init(self, model, *, key):
        return ()

    def respond(self, model, loss, params, state, smash, labels, *, key) -> ServerReply:
        fake = jax.random.randint(key, labels.shape, 0, model.output_shape[-1]).astype(labels.dtype)
        return task_reply(model, loss, params, smash, fake, state)


@pytest.fixture(scope="module")
def digits():
    ds = load("digits")
    return ds.x_train, ds.y_train


@pytest.fixture(scope="module")
def mlp_model(digits):
    return split(make_model("mlp", key=jax.random.key(1), input_shape=digits[0].shape[1:]), "relu1")


def _run(model, digits, client, server=None, *, epochs, batch_size=64, seed=0):
    """Adam 1e-3 on both halves (the detectors' repositories train with Adam)."""
    kw = {} if server is None else {"server": server}
    trainer = SplitTrainer(model, optax.adam(1e-3), optax.adam(1e-3), client=client, **kw)
    return fit(trainer, *digits, epochs=epochs, batch_size=batch_size, key=jax.random.key(seed))


# ------------------------------------------------------------------ the first layer
@pytest.mark.parametrize("name, cut, shape, first", [("he2019-lenet", "relu2", (28, 28, 1), 0),
                                                    ("mlp", "relu1", (8, 8, 1), 1)])
def test_first_layer_kernel_is_the_first_conv_or_dense_kernel(name, cut, shape, first):
    sm = split(make_model(name, key=jax.random.key(0), input_shape=shape), cut)
    pc = sm.params["client"]
    k = first_layer_kernel(pc)
    np.testing.assert_array_equal(k, pc["layers"][first]["kernel"].value)
    assert k.shape == ((5, 5, 1, 8) if name == "he2019-lenet" else (64, 256))
    # in a gradient pytree of the same layout it picks the same leaf
    x = jnp.ones((2, *shape))
    g = jax.jit(jax.grad(lambda p: jnp.sum(sm.client.apply(p, x) ** 2)))(pc)
    assert first_layer_kernel(g).shape == k.shape
    with pytest.raises(ValueError, match="rank >= 2"):
        first_layer_kernel({"b": jnp.zeros(3)})


# ------------------------------------------------------------------ SplitGuard
def test_sg_score_on_known_vectors():
    e1, e2 = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
    # fakes orthogonal to the regular batches and twice as large, the halves identical:
    # x = pi/2 (d2 = 0), SG = sigmoid(5 pi / 2)^2
    sg, x = sg_score(2 * e1, 2.0, e2, 1.0, e2, 1.0)
    assert float(x) == pytest.approx(np.pi / 2, rel=1e-6)
    assert float(sg) == pytest.approx((1 / (1 + np.exp(-5 * np.pi / 2))) ** 2, rel=1e-6)
    # fakes like the regular batches and the halves orthogonal: x = -(pi/2) d2/(d1+d2)
    sg, x = sg_score(e1 + e2, 1.5, e1, 1.0, e2, 2.0)
    assert float(x) == pytest.approx(-np.pi / 2, rel=1e-6)  # d1 = |1.5 - 1.5| = 0
    assert float(sg) < 0.01


def test_splitguard_flags_a_label_blind_server_and_passes_an_honest_one(mlp_model, digits):
    guard = build_client("splitguard(stop=False)")
    # 44 steps per epoch at batch 32: 3 epochs give ~11 fake batches after N = 20
    honest = _run(mlp_model, digits, guard, epochs=3, batch_size=32).state.parties["client"]
    blind = _run(mlp_model, digits, guard, RandomLabelServer(), epochs=3, batch_size=32).state.parties["client"]
    shift = _run(mlp_model, digits, guard, LabelShiftServer(), epochs=3, batch_size=32).state.parties["client"]
    assert int(honest["counts"][0]) >= 5 and int(blind["counts"][0]) >= 5  # fake batches were sent
    assert not bool(honest["alarm"]) and float(honest["score"]) > 0.99 and int(honest["alarm_step"]) == -1
    assert bool(blind["alarm"]) and 20 < int(blind["alarm_step"]) < 132
    # honest fakes point elsewhere (x ~ 2.5 rad); label-blind ones only differ by noise, so x
    # wanders around 0 and SG with it: the latched alarm catches its first dip below 0.5
    # (seeds 0 and 2 at steps 29 and 66; seed 1 stays above 0.5 for these 132 steps, x = 0.99)
    assert float(honest["x"]) > 2.0 and float(blind["x"]) < 1.2
    # label_shift's lie still depends on the labels (it answers a fake batch towards y + r + 1):
    # SplitGuard, which looks for label-blind gradients, does not see it (x falls, SG does not)
    assert not bool(shift["alarm"]) and float(shift["score"]) > 0.9
    assert float(shift["x"]) < float(honest["x"]) - 0.5


def test_splitguard_alarm_stops_training(mlp_model, digits):
    res = _run(mlp_model, digits, build_client("splitguard"), RandomLabelServer(), epochs=6, batch_size=32)
    c = res.state.parties["client"]
    assert bool(c["alarm"]) and bool(res.state.stopped) and res.history[-1].get("stopped")
    assert len(res.history) < 6


# ------------------------------------------------------------------ SplitOut
def test_lof_scorer_equals_sklearn():
    rng = np.random.default_rng(0)
    for n, d, scale in [(10, 200, 1e-2), (25, 50, 1.0), (4, 3, 10.0)]:
        x = rng.normal(size=(n, d)) * scale
        q = np.concatenate([rng.normal(size=(30, d)) * scale, rng.normal(size=(10, d)) * 3 * scale + scale])
        ref = LocalOutlierFactor(n_neighbors=n - 1, novelty=True).fit(x).decision_function(q)
        lof = {k: jnp.asarray(v) for k, v in fit_lof(x).items()}
        got = jax.jit(jax.vmap(lambda v: lof_decision(lof, v)))(jnp.asarray(q, jnp.float32))
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)
        assert (ref < 0).any() and (ref > 0).any()  # both verdicts occur
    with pytest.raises(ValueError, match="at least 3"):
        fit_lof(np.zeros((2, 4)))


def test_splitout_flags_label_shift_and_passes_an_honest_server(mlp_model, digits):
    party = build_client("splitout(window=10, stop=False)").bind(*digits)
    assert party.calibration_steps == 10  # 1% of 22 steps per epoch is under one: at least 10
    # 6 epochs of 22 steps
    honest = _run(mlp_model, digits, party, epochs=6).state.parties["client"]
    lying = _run(mlp_model, digits, party, LabelShiftServer(), epochs=6).state.parties["client"]
    assert not bool(honest["alarm"]) and float(honest["score"]) > 0
    assert bool(lying["alarm"]) and 10 <= int(lying["alarm_step"]) < 88 and float(lying["score"]) < 0
    assert lying["lof"]["points"].shape == (10, 64 * 256)


def test_splitout_needs_its_data_bound(mlp_model):
    with pytest.raises(ValueError, match="bind"):
        build_client("splitout").init(mlp_model, key=jax.random.key(0))
    with pytest.raises(ValueError, match="holds only"):
        build_client("splitout").bind(jnp.zeros((10, 8, 8, 1)), jnp.zeros((10,), jnp.int32))


# ------------------------------------------------------------------ Gradients Scrutinizer
def test_pair_similarities_and_fit_error_against_numpy():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(6, 3, 2)).astype(np.float32)
    g[5] = 0  # a zero gradient has similarity 0 with everything (get_cos_sim)
    y = np.array([0, 0, 1, 1, 2, 0])
    flat = g.reshape(6, -1)
    same, diff = [], []
    for k in range(6):
        for j in range(6):
            if k != j:
                den = np.linalg.norm(flat[k]) * np.linalg.norm(flat[j])
                s = 0.5 + 0.5 * flat[k] @ flat[j] / den if den else 0.0
                (same if y[k] == y[j] else diff).append(s)
    got = pair_similarities(jnp.asarray(g), jnp.asarray(y))
    np.testing.assert_allclose(got, [np.mean(diff), np.mean(same), np.std(diff), np.std(same)], rtol=1e-5)
    h = 0.5 + 0.1 * np.sin(np.arange(4000) / 300) + rng.normal(size=4000) * 0.01
    for n in (50, 3950):
        t = np.arange(n)
        ref = np.sqrt(np.mean((h[:n] - np.poly1d(np.polyfit(t, h[:n], 2))(t)) ** 2))
        assert float(quadratic_fit_rmse(jnp.asarray(h, jnp.float32), jnp.asarray(n))) == pytest.approx(ref, rel=1e-4)


def test_scrutinizer_flags_a_label_blind_server_and_passes_an_honest_one(mlp_model, digits):
    watch = build_client("scrutinizer(stop=False)")  # period 50: 3 epochs of 22 steps reach one score
    honest = _run(mlp_model, digits, watch, epochs=3).state.parties["client"]
    blind = _run(mlp_model, digits, watch, RandomLabelServer(), epochs=3).state.parties["client"]
    shift = _run(mlp_model, digits, watch, LabelShiftServer(), epochs=3).state.parties["client"]
    assert not bool(honest["alarm"]) and float(honest["score"]) > 0.6 and float(honest["gap"]) > 0.2
    assert bool(blind["alarm"]) and int(blind["alarm_step"]) == 50 and float(blind["score"]) < 0.1
    assert abs(float(blind["gap"])) < 0.05 and float(blind["iou"]) > 0.8  # same and diff pairs look alike
    # label_shift's gradients still separate the classes (towards y + 1): same-label pairs stay
    # more alike than different-label ones, so the Scrutinizer does not see this lie
    assert not bool(shift["alarm"]) and float(shift["score"]) > 0.6 and float(shift["gap"]) > 0.2


# ------------------------------------------------------------------ specs
TINY = ExperimentSpec(data="digits", model="mlp", cut="relu1", epochs=2, batch_size=64, aux_size=100, targets=4,
                      attacks=("rmle(steps=10)",), train_size=512)  # 8 steps per epoch, 16 in all


@pytest.mark.parametrize("client, match", [
    ("splitout(window=17)", "longer than the run's 16 steps"),
    ("splitout(window=0)", "window must be an integer >= 1"),
    ("splitguard(p_fake=1.5)", r"p_fake must be a probability in \(0, 1\)"),
    ("splitguard", "at least min_fakes=5 fake batches"),
    ("scrutinizer", "scores first at step 50"),
    ("scrutinizer(period=8, horizon=8)", r"horizon \(8\) must exceed the period"),
])
def test_bad_detector_specs_fail_at_build(client, match):
    with pytest.raises(SpecError, match=match):
        ExperimentSpec(**{**TINY.to_dict(), "client": client}).build()


def test_the_runner_binds_splitout_and_its_alarm_stops_the_run():
    """Through the spec and the runner: the client's own training set calibrates the LOF
    (8 steps per epoch here, so the 10 calibration steps wrap around it)."""
    p = prepare(TINY.with_overrides(["client=splitout", "server=label_shift", "epochs=6"]))
    assert p.built.client.x.shape[0] == p.dataset_size == 512
    fitted = train_stage(p)
    c = fitted.state.parties["client"]
    assert bool(c["alarm"]) and bool(fitted.state.stopped) and fitted.history[-1]["stopped"]
    assert len(fitted.history) == int(c["alarm_step"]) // 8 + 1 < 6


def test_detectors_are_registered():
    assert {"splitguard", "splitout", "scrutinizer"} <= set(CLIENTS.names())
    assert isinstance(build_client("splitguard(start=5)"), SplitGuard)
