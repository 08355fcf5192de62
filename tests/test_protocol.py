"""The split step is the unsplit model's gradient step, for every zoo model and every cut."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from split_workbench.defenses.base import CutTransform, LossTerm
from split_workbench.models import list_models, make_model
from split_workbench.protocol import SplitTrainer, cross_entropy
from split_workbench.split import join_params, split
from split_workbench.wire import Wire

# Small inputs keep the exhaustive (model x cut) sweep fast; the architectures are unchanged.
SHAPES = {"he2019-lenet": (16, 16, 1), "he2019-cifar": (8, 8, 3), "titcombe2021-mnist": (8, 8, 1),
          "mlp": (6, 6, 1), "resnet18": (16, 16, 3), "fsha-resnet": (16, 16, 1)}
KWARGS = {"resnet18": {"width": 8}, "fsha-resnet": {"width": 4}}


def _model(name):
    return make_model(name, key=jax.random.key(1), input_shape=SHAPES[name], **KWARGS.get(name, {}))


def _whole_loss(model):
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(pure, x, y):
        state = jax.tree.map(lambda a: a, params)
        nnx.replace_by_pure_dict(state, pure)
        return cross_entropy(nnx.merge(graphdef, state)(x), y)

    return params.to_pure_dict(), loss


def _batch(shape, n=6):
    kx, ky = jax.random.split(jax.random.key(2))
    return jax.random.uniform(kx, (n, *shape)), jax.random.randint(ky, (n,), 0, 10)


def _close(a, b, rtol=1e-5, atol=1e-6):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


CASES = [(info.name, cut) for info in list_models() for cut in _model(info.name).cut_points]


@pytest.mark.parametrize("name,cut", CASES)
def test_split_grads_equal_unsplit(name, cut):
    model = _model(name)
    x, y = _batch(SHAPES[name])
    pure, whole_loss = _whole_loss(model)
    want = jax.jit(jax.grad(whole_loss))(pure, x, y)

    sm = split(model, cut)
    trainer = SplitTrainer(sm, optax.sgd(0.1), optax.sgd(0.1))
    state = trainer.init()
    grads, *_ = jax.jit(lambda p, w: trainer.compute_grads(p, w, x, y, key=jax.random.key(3)))(
        state.params, state.wire_state)
    got = join_params(sm, grads)
    assert sorted(got["layers"]) == sorted(want.get("layers", {}))
    _close(got, want)


@pytest.mark.parametrize("name", [info.name for info in list_models()])
def test_split_training_tracks_unsplit_training(name):
    """After N Adam steps on the same batches the split parameters equal the unsplit ones."""
    model = _model(name)
    cut = model.cut_points[len(model.cut_points) // 2]
    sm = split(model, cut)
    pure, whole_loss = _whole_loss(model)
    opt = optax.adam(1e-3)
    trainer = SplitTrainer(sm, opt, opt)
    steps = 4
    xs, ys = zip(*[_batch(SHAPES[name]) for _ in range(steps)])

    @jax.jit
    def unsplit(p):
        s = opt.init(p)
        for x, y in zip(xs, ys):
            g = jax.grad(whole_loss)(p, x, y)
            u, s = opt.update(g, s, p)
            p = optax.apply_updates(p, u)
        return p

    @jax.jit
    def split_train(state):
        for i, (x, y) in enumerate(zip(xs, ys)):
            state, _, _ = trainer.step(state, x, y, key=jax.random.key(i))
        return state

    want = unsplit(pure)
    got = join_params(sm, split_train(trainer.init()).params)
    _close(got, want, rtol=1e-4, atol=1e-5)


def test_epoch_is_one_scan_and_taps_record_the_wire():
    sm = split(_model("he2019-lenet"), "relu2")
    trainer = SplitTrainer(sm, optax.adam(1e-3), optax.adam(1e-3))
    x, y = _batch(SHAPES["he2019-lenet"], n=40)
    state, metrics, tap = trainer.epoch(trainer.init(), x, y, key=jax.random.key(0), batch_size=8,
                                        tap_local=(1, 3))
    assert metrics.loss.shape == (5,) and int(state.step) == 5
    assert tap.smash.shape == (2, 8, *sm.smash_shape) and tap.cut_grads.shape == tap.smash.shape
    # the tapped smash is what the client computed at that step from the recorded examples
    s = trainer.init()
    k_perm, k_steps = jax.random.split(jax.random.key(0))
    for i in range(4):
        ids = jax.random.permutation(k_perm, 40)[: 40].reshape(5, 8)[i]
        if i == 3:
            np.testing.assert_array_equal(np.asarray(ids), np.asarray(tap.example_ids[1]))
            z = sm.client.apply(s.params["client"], x[ids])
            np.testing.assert_allclose(np.asarray(z), np.asarray(tap.smash[1]), rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(np.asarray(y[ids]), np.asarray(tap.labels[1]))
        s, _, _ = trainer.step(s, x[ids], y[ids], key=jax.random.fold_in(k_steps, i))


def test_wire_transforms_and_loss_terms_enter_the_right_places():
    sm = split(_model("mlp"), "relu1")
    x, y = _batch(SHAPES["mlp"])
    scale = CutTransform(lambda z: (), lambda z, s, *, key: (2.0 * z, s))
    zero_grad = CutTransform(lambda z: (), lambda z, s, *, key: (jnp.zeros_like(z), s))
    plain = SplitTrainer(sm, optax.sgd(1.0), optax.sgd(1.0))
    k = jax.random.key(0)
    g0, *_ = plain.compute_grads(sm.params, plain.init().wire_state, x, y, key=k)
    # the server sees the transformed smash: its gradient is that of the model on 2z
    t = SplitTrainer(sm, optax.sgd(1.0), optax.sgd(1.0), wire=Wire(forward=scale))
    g1, _, _, obs = t.compute_grads(sm.params, t.init().wire_state, x, y, key=k)
    np.testing.assert_allclose(obs.smash, 2.0 * sm.client.apply(sm.params["client"], x), rtol=1e-6)
    assert not np.allclose(jax.tree.leaves(g0["server"])[0], jax.tree.leaves(g1["server"])[0])
    # a zeroed cut gradient leaves the client nothing but its own loss term
    term = LossTerm(lambda x_, z_: jnp.mean(z_ ** 2), 0.5, "l2")
    t = SplitTrainer(sm, optax.sgd(1.0), optax.sgd(1.0), wire=Wire(backward=zero_grad), loss_terms=(term,))
    g2, _, m, _ = t.compute_grads(sm.params, t.init().wire_state, x, y, key=k)
    want = jax.grad(lambda p: 0.5 * jnp.mean(sm.client.apply(p, x) ** 2))(sm.params["client"])
    _close(g2["client"], want)
    _close(g2["server"], g0["server"])
    assert float(m.client_reg) > 0


def test_evaluate_matches_direct_accuracy():
    sm = split(_model("mlp"), "relu1")
    trainer = SplitTrainer(sm, optax.sgd(0.1), optax.sgd(0.1))
    x, y = _batch(SHAPES["mlp"], n=37)
    out = trainer.evaluate(sm.params, x, y, batch_size=8)
    logits = sm.apply(sm.params, x)
    assert out["accuracy"] == pytest.approx(float((jnp.argmax(logits, -1) == y).mean()))
    assert out["loss"] == pytest.approx(float(cross_entropy(logits, y)), rel=1e-5)
