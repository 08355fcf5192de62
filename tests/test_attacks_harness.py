"""The shared harness every registered attack passes: shapes and range, determinism in the
key, jitted == eager, and refusal of an Observation missing what the threat model needs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from split_workbench import attacks
from split_workbench.attacks import ATTACKS, FSHA, MissingObservation, Observation, build_attack
from split_workbench.observation import PartyView
from split_workbench.models import make_model
from split_workbench.split import split

# A tiny configuration of every registered attack; a new attack must add one here.
TINY = {
    "rmle": "rmle(steps=5)",
    "inverse_net": "inverse_net(steps=3, batch_size=4, width=4)",
    "query_free": "query_free(shadow_steps=3, steps=3, batch_size=4)",
    "unsplit": "unsplit(rounds=2, input_steps=2, model_steps=2)",
    "unsplit_labels": "unsplit_labels(steps=3, num_classes=3)",
    "norm_leak": "norm_leak",
    "cosine_leak": "cosine_leak",
    "fsha": "fsha",
    "fsha_property": "fsha_property",
}
N = 3
SHAPE = (16, 16, 1)


@pytest.fixture(scope="module")
def tiny():
    """A tiny LeNet at conv1 (spatial smash) and a last-layer label party, every field filled."""
    key = jax.random.key(0)
    sm = split(make_model("he2019-lenet", key=key, input_shape=SHAPE, num_classes=3), "conv1")
    p = sm.params
    x = jax.random.uniform(jax.random.fold_in(key, 1), (N, *SHAPE))
    y = jnp.array([0, 1, 2], jnp.int32)
    aux_x = jax.random.uniform(jax.random.fold_in(key, 2), (8, *SHAPE))
    aux_y = jnp.arange(8, dtype=jnp.int32) % 3
    z = sm.client.apply(p["client"], x)
    full = Observation(
        smash=z, labels=y, cut_grads=jax.random.normal(jax.random.fold_in(key, 3), z.shape),
        client_apply=sm.client.apply, client_params=p["client"], client_init=p["client"],
        query=jax.jit(lambda a: sm.client.apply(p["client"], a)), aux_x=aux_x, aux_y=aux_y,
        server_apply=sm.server.apply, server_params=p["server"], input_shape=SHAPE)
    # the label party of unsplit_labels holds only a last layer: smash (N, 5) -> 3 logits
    last = split(make_model("mlp", key=key, input_shape=(1, 1, 5), num_classes=3, hidden=(5,)), "relu1")
    h = jax.random.normal(jax.random.fold_in(key, 4), (N, 5))
    g = jax.grad(lambda h_: optax.softmax_cross_entropy_with_integer_labels(
        last.server.apply(last.params["server"], h_), y).mean())(h)
    label_party = Observation(smash=h, cut_grads=g, client_apply=last.server.apply,
                              client_init=last.params["server"], input_shape=SHAPE)
    # a hijacking server's party (FSHA attacks read its decoder or classifier), freshly initialised
    views = {}
    for head in ("decoder", "classifier"):
        server = FSHA(width=4, d_width=8, d_blocks=1, head=head).bind(np.asarray(aux_x), np.asarray(aux_y))
        views[head] = dataclasses.replace(full, server_party=PartyView(server, sm, server.init(sm, key=key)))
    return {"full": full, "label_party": label_party, "x": x, "fsha": views["decoder"],
            "fsha_property": views["classifier"]}


def _obs(tiny, name):
    if name in ("fsha", "fsha_property"):
        return tiny[name]
    return tiny["label_party"] if name == "unsplit_labels" else tiny["full"]


def test_every_attack_has_a_tiny_config():
    assert sorted(TINY) == ATTACKS.names()


def test_import_populates_registry_and_exports():
    for name in TINY:
        assert name in ATTACKS
    for public in attacks.__all__:
        assert hasattr(attacks, public)


@pytest.mark.parametrize("name", sorted(TINY))
def test_shapes_range_determinism(tiny, name):
    attack = build_attack(TINY[name])
    obs = _obs(tiny, name).only(attack.needs)
    r1 = attack(obs, key=jax.random.key(1))
    r2 = attack(obs, key=jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(r1.output), np.asarray(r2.output))
    assert "seconds" in r1.stats
    if attack.kind == "inversion":
        assert r1.output.shape == (N, *SHAPE)
        assert r1.output.dtype == jnp.float32
        assert float(r1.output.min()) >= 0.0 and float(r1.output.max()) <= 1.0
        assert "loss_curve" in r1.stats and "steps" in r1.stats
        assert np.all(np.isfinite(np.asarray(r1.stats["loss_curve"])))
    else:
        assert attack.kind == "label"
        assert r1.output.shape == (N,)


@pytest.mark.parametrize("name", sorted(TINY))
def test_jit_equals_eager(tiny, name):
    attack = build_attack(TINY[name])
    obs = _obs(tiny, name).only(attack.needs)
    jitted = attack(obs, key=jax.random.key(2)).output
    with jax.disable_jit():
        eager = attack(obs, key=jax.random.key(2)).output
    # Adam divides by the running RMS of the gradient, so a float reassociation difference in a
    # near-zero gradient (or at a kink of |.| in TV) can become a step of size ~lr:
    # optimising attacks get a tolerance of a few learning rates; label scores are exact.
    atol = 1e-2 if build_attack(TINY[name]).kind == "inversion" else 1e-6
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=atol, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(TINY))
def test_refuses_missing_fields(tiny, name):
    attack = build_attack(TINY[name])
    obs = _obs(tiny, name).only(attack.needs)
    for field in sorted(attack.needs):
        with pytest.raises(MissingObservation, match=field):
            attack(dataclasses.replace(obs, **{field: None}), key=jax.random.key(0))


@pytest.mark.parametrize("spec, match", [
    ("rmle(steps=0)", "steps"), ("rmle(loss='l3')", "loss"), ("rmle(box='tanh')", "box"),
    ("rmle(tv=-1.0)", "tv"), ("rmle(init='black')", "init"), ("inverse_net(lr=0)", "lr"),
    ("unsplit(rounds=1.5)", "rounds"), ("unsplit_labels(num_classes=1)", "num_classes"),
    ("rmle(nope=1)", "nope"),
])
def test_bad_config_fails_before_work(spec, match):
    with pytest.raises(ValueError, match=match):
        build_attack(spec)


def test_bad_observation_fails_early(tiny):
    obs = tiny["full"].only({"smash", "client_apply", "client_params"})
    with pytest.raises(ValueError, match="NaN"):
        build_attack("rmle(steps=2)")(dataclasses.replace(obs, smash=obs.smash.at[0].set(jnp.nan)),
                                     key=jax.random.key(0))
    with pytest.raises(ValueError, match="input_shape"):
        build_attack("rmle(steps=2)")(dataclasses.replace(obs, input_shape=None), key=jax.random.key(0))


def test_unsplit_labels_refuses_a_client_that_does_not_take_the_smash(tiny):
    """The server's view (client_apply = the image client) is not the label party's layer."""
    obs = tiny["full"].only({"smash", "cut_grads", "client_apply", "client_init"})
    with pytest.raises(ValueError, match="label party's layer"):
        build_attack("unsplit_labels(steps=2, num_classes=3)")(obs, key=jax.random.key(0))


def test_observe_tap_grants_white_box_fields():
    """observe_tap with parameter grants: the tapped smash plus the given parameters, and a
    query that answers as the (here undefended) training wire did."""
    from split_workbench.attacks import observe_tap
    from split_workbench.protocol import SplitTrainer
    from split_workbench.training import fit

    key = jax.random.key(0)
    sm = split(make_model("mlp", key=key, input_shape=(4, 4, 1), num_classes=3, hidden=(8,)), "relu1")
    trainer = SplitTrainer(sm, optax.adam(1e-3), optax.adam(1e-3))
    x = jax.random.uniform(jax.random.fold_in(key, 1), (16, 4, 4, 1))
    y = jnp.arange(16, dtype=jnp.int32) % 3
    res = fit(trainer, x, y, epochs=1, batch_size=4, key=key, tap_steps=(0,))
    p0 = sm.params  # the parameters at step 0, before any update
    obs = observe_tap(res.taps[0], 0, trainer, p0, grants={"smash", "client_apply", "client_params", "query"},
                      key=key)
    assert obs.available() == {"smash", "client_apply", "client_params", "query", "input_shape"}
    xs = x[np.asarray(res.taps[0].example_ids[0])]
    np.testing.assert_allclose(np.asarray(obs.query(xs)), np.asarray(obs.smash), rtol=1e-6, atol=1e-6)
