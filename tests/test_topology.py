"""Topologies: measured bytes equal the analytic formulas; equivalences between topologies;
vmapped SplitFed equals a per-client loop; U-shaped and vertical gradients equal jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from split_workbench.data import load
from split_workbench.models import make_model
from split_workbench.protocol import cross_entropy
from split_workbench.split import split
from split_workbench.topology import (Task, UShapedTrainer, VerticalTrainer, epoch_plan, fedavg, make_clients, make_vertical,
                                plan_key, same_optimizer_trainer, sflv1_epoch, split_learning, splitfed_v1,
                                splitfed_v2, step_keys, tree_nbytes, u_shaped, u_split, vertical)
from split_workbench.topology.clients import tree_broadcast

B = 16


@pytest.fixture(scope="module")
def setup():
    ds = load("digits")
    key = jax.random.key(0)
    sm = split(make_model("mlp", key=key, input_shape=ds.input_shape, num_classes=10), "relu1")
    opt = optax.adam(1e-3)
    return ds, sm, opt, same_optimizer_trainer(sm, opt)


def task_of(ds, k, alpha=None, n=None):
    x, y = (ds.x_train, ds.y_train) if n is None else (ds.x_train[:n], ds.y_train[:n])
    return Task.build(x, y, ds.x_test[:200], ds.y_test[:200],
                      make_clients(y, k, key=jax.random.key(7), batch_size=B, alpha=alpha))


def close(a, b, tol=1e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


@pytest.mark.parametrize("alpha", [None, 0.5])
def test_split_learning_bytes_equal_the_formula(setup, alpha):
    ds, sm, _, tr = setup
    task = task_of(ds, 5, alpha)
    epochs = 2
    # p: samples the epoch really processed, full batches only (n_k // B * B per client)
    p = int(sum(n // B * B for n in task.clients.sizes))
    q, f = sm.smash_size, 4  # float32
    eta_n = sm.param_counts["client"]
    k = 5
    r = split_learning(tr, task, epochs=epochs, key=jax.random.key(3), handover="peer")
    by = r.ledger.summary(epochs)["by_kind"]
    assert by["activations"] + by["gradients"] == 2 * p * q * f
    assert by["labels"] == p * 4
    assert by["weights"] == eta_n * k * f  # eta*N per hand-over, K hand-overs per epoch
    assert r.samples_per_epoch == p
    relay = split_learning(tr, task, epochs=1, key=jax.random.key(3), handover="server")
    assert relay.ledger.total("weights") == 2 * eta_n * k * f  # every hand-over crosses two links
    own = split_learning(tr, task, epochs=1, key=jax.random.key(3), handover="none")
    assert own.ledger.total("weights") == 0


def test_splitfed_and_fedavg_bytes_equal_the_formula(setup):
    ds, sm, opt, tr = setup
    task = task_of(ds, 4)
    p = int(sum(n // B * B for n in task.clients.sizes))
    q, f, k = sm.smash_size, 4, 4
    n_all = sm.param_counts["client"] + sm.param_counts["server"]
    eta_n = sm.param_counts["client"]
    for run in (splitfed_v1, splitfed_v2):
        r = run(tr, task, epochs=1, key=jax.random.key(3))
        by = r.ledger.summary()["by_kind"]
        assert by["activations"] + by["gradients"] == 2 * p * q * f
        assert by["weights"] == 2 * eta_n * k * f  # client parts up and down once per round
    r = fedavg(sm, opt, task, epochs=2, key=jax.random.key(3))
    assert r.ledger.total() == 2 * 2 * k * n_all * f  # 2N per client per round, 2 rounds
    np.testing.assert_array_equal(r.ledger.client_sent() + r.ledger.client_received(), 2 * 2 * n_all * f)
    assert tree_nbytes(sm.params) == n_all * f


def test_flops_of_the_parts_add_up_to_the_whole(setup):
    from split_workbench.topology import whole_train_flops
    _, sm, _, _ = setup
    fl = sm.flops()
    whole = whole_train_flops(sm.apply, sm.params, sm.input_shape)
    # Forward: the halves are the whole model's ops, counted exactly.
    assert fl["client_forward"] + fl["server_forward"] == pytest.approx(fl["whole_forward"], rel=1e-6)
    # Training: the whole program's gradient never forms dz as a separate output, so XLA may fuse
    # a few element-wise ops differently; the gap is tiny.
    assert fl["client_train"] + fl["server_train"] == pytest.approx(whole, rel=0.02)


def test_sflv1_with_one_client_is_split_learning(setup):
    ds, sm, _, tr = setup
    task = task_of(ds, 1, n=400)
    key = jax.random.key(5)
    a = splitfed_v1(tr, task, epochs=2, key=key)
    b = split_learning(tr, task, epochs=2, key=key)
    c = splitfed_v2(tr, task, epochs=2, key=key)
    close(a.params, b.params)
    close(b.params, {"client": c.params["client"][0], "server": c.params["server"]}, tol=0)
    # and split learning with one client is the plain SplitTrainer on the same batches
    st = tr.init()
    step = jax.jit(tr.step)  # compiled once for every step below
    for e in range(2):
        ids, valid = epoch_plan(task.clients, key=plan_key(key, e))
        kk = step_keys(key, e, 1)[0]
        for s in range(int(valid[0].sum())):
            st, _, _ = step(st, task.x_train[ids[0, s]], task.y_train[ids[0, s]], key=jax.random.fold_in(kk, s))
    close(b.params, st.params)


def test_fedavg_with_one_client_is_centralised_training(setup):
    ds, sm, opt, _ = setup
    task = task_of(ds, 1, n=400)
    key = jax.random.key(5)
    r = fedavg(sm, opt, task, epochs=2, key=key)
    params, o = sm.params, opt.init(sm.params)

    @jax.jit
    def step(params, o, x, y):
        g = jax.grad(lambda p: cross_entropy(sm.apply(p, x), y))(params)
        u, o = opt.update(g, o, params)
        return optax.apply_updates(params, u), o

    for e in range(2):
        ids, valid = epoch_plan(task.clients, key=plan_key(key, e))
        for s in range(int(valid[0].sum())):
            params, o = step(params, o, task.x_train[ids[0, s]], task.y_train[ids[0, s]])
    close(r.params, params)


def test_vmapped_splitfed_equals_a_per_client_loop(setup):
    ds, sm, _, tr = setup
    task = task_of(ds, 3, alpha=1.0, n=300)
    k = 3
    st = tr.init()
    ids, valid = epoch_plan(task.clients, key=jax.random.key(1))
    keys = step_keys(jax.random.key(2), 0, k)
    out = sflv1_epoch(tr, tree_broadcast(st.params["client"], k), tree_broadcast(st.opt_state["client"], k),
                      st.params["server"], st.opt_state["server"], tree_broadcast(st.wire_state, k),
                      task.x_train, task.y_train, ids, valid, keys)
    # reference: one client at a time, server gradients averaged over the clients with a batch
    pcs, ocs = [st.params["client"]] * k, [st.opt_state["client"]] * k
    ps, os_ = st.params["server"], st.opt_state["server"]
    grads = jax.jit(tr.compute_grads)
    for s in range(ids.shape[1]):
        gs = []
        for c in range(k):
            if not bool(valid[c, s]):
                continue
            g, _, _, _ = grads({"client": pcs[c], "server": ps}, st.wire_state, task.x_train[ids[c, s]],
                               task.y_train[ids[c, s]], key=jax.random.fold_in(keys[c], s))
            u, ocs[c] = tr.client_opt.update(g["client"], ocs[c], pcs[c])
            pcs[c] = optax.apply_updates(pcs[c], u)
            gs.append(g["server"])
        g_s = jax.tree.map(lambda *a: sum(a) / len(a), *gs)
        u, os_ = tr.server_opt.update(g_s, os_, ps)
        ps = optax.apply_updates(ps, u)
    close(out[2], ps)
    for c in range(k):
        close(jax.tree.map(lambda a: a[c], out[0]), pcs[c])
    np.testing.assert_array_equal(np.asarray(out[5]), np.asarray(valid.sum(1)))


def test_u_shaped_gradients_and_bytes(setup):
    ds, _, opt, _ = setup
    model = make_model("mlp", key=jax.random.key(1), input_shape=ds.input_shape, num_classes=10)
    um = u_split(model, "relu1", "relu2")
    tr = UShapedTrainer(um, opt, opt)
    x, y = jnp.asarray(ds.x_train[:B]), jnp.asarray(ds.y_train[:B])
    g, msgs, _ = tr.messages(um.params, x, y)
    ref = jax.grad(lambda p: cross_entropy(um.apply(p, x), y))(um.params)
    close(g, ref)
    task = task_of(ds, 3, n=600)
    r = u_shaped(tr, task, epochs=1, key=jax.random.key(0))
    p = int(sum(n // B * B for n in task.clients.sizes))
    q1, q2 = int(np.prod(um.cut1_shape)), int(np.prod(um.cut2_shape))
    by = r.ledger.summary()["by_kind"]
    assert by["labels"] == 0  # labels never leave the client
    assert by["activations"] + by["gradients"] == 2 * p * (q1 + q2) * 4
    assert by["weights"] == um.param_counts["client"] * 3 * 4


def test_vertical_gradients_and_bytes(setup):
    ds, _, opt, _ = setup
    vm = make_vertical(ds.input_shape, 10, key=jax.random.key(2), num_clients=2, hidden=32)
    tr = VerticalTrainer(vm, opt, opt)
    x, y = jnp.asarray(ds.x_train[:B]), jnp.asarray(ds.y_train[:B])
    g, (z, _), _ = tr.messages(vm.params, x, y)
    assert z.shape == (2, B, 32)
    close(g, jax.grad(lambda p: cross_entropy(vm.apply(p, x), y))(vm.params))
    r = vertical(tr, ds.x_train[:500], ds.y_train[:500], ds.x_test, ds.y_test, epochs=1, batch_size=B,
                 key=jax.random.key(0))
    p = 500 // B * B
    np.testing.assert_array_equal(r.ledger.client_sent() + r.ledger.client_received(), 2 * p * 32 * 4)


def test_every_topology_sees_the_same_partition_and_batches(setup):
    ds, _, _, _ = setup
    a = make_clients(ds.y_train, 10, key=jax.random.key(4), batch_size=B, alpha=0.3)
    b = make_clients(ds.y_train, 10, key=jax.random.key(4), batch_size=B, alpha=0.3)
    np.testing.assert_array_equal(a.idx_KxN, b.idx_KxN)
    ids, valid = epoch_plan(a, key=jax.random.key(0))
    for k in range(10):
        got = np.asarray(ids[k][np.asarray(valid[k])]).ravel()
        assert len(set(got)) == got.size == a.samples[k]  # no repeats, full batches only
        assert set(got) <= set(a.idx_KxN[k, : a.sizes[k]])
