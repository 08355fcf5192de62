"""Parties: the honest default, a toy malicious server (tests/fixtures/malicious_server.py),
a client that stops training, and the rule that active adversaries never share training."""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fixtures.malicious_server import LabelShiftServer

from split_workbench.models import make_model
from split_workbench.orchestration.experiment import ExperimentSpec, SpecError
from split_workbench.orchestration.runner import TrainedModels, prepare, run_experiment, train_stage
from split_workbench.parties import HonestServer, build_server
from split_workbench.protocol import SplitTrainer, cross_entropy
from split_workbench.split import split
from split_workbench.training import fit


def _trainer(**kw):
    model = make_model("mlp", key=jax.random.key(1), input_shape=(6, 6, 1), hidden=(16, 8))
    return SplitTrainer(split(model, "relu1"), optax.sgd(0.1), optax.sgd(0.1), **kw)


def _batch(n=8):
    kx, ky = jax.random.split(jax.random.key(2))
    return jax.random.uniform(kx, (n, 6, 6, 1)), jax.random.randint(ky, (n,), 0, 10)


def test_honest_server_is_the_default_and_sends_the_true_gradient():
    x, y = _batch()
    plain, honest = _trainer(), _trainer(server=HonestServer())
    g0, _, m0, o0 = plain.compute_grads(plain.model.params, plain.init().wire_state, x, y, key=jax.random.key(0))
    g1, _, m1, o1 = honest.compute_grads(honest.model.params, honest.init().wire_state, x, y, key=jax.random.key(0))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), (g0, m0, o0), (g1, m1, o1)))
    sm = plain.model
    z = sm.client.apply(sm.params["client"], x)
    true = jax.grad(lambda z_: cross_entropy(sm.server.apply(sm.params["server"], z_), y))(z)
    np.testing.assert_allclose(o0.cut_grads, true, rtol=1e-6, atol=1e-7)
    assert not plain.active


def test_malicious_server_sends_the_gradient_of_another_loss():
    x, y = _batch()
    honest, evil = _trainer(), _trainer(server=build_server("label_shift(shift=3)"))
    assert evil.active and evil.server == LabelShiftServer(3)
    sm = evil.model
    state = evil.init()
    g_h, _, m_h, _ = honest.compute_grads(sm.params, state.wire_state, x, y, key=jax.random.key(0))
    g_e, _, m_e, obs = evil.compute_grads(sm.params, state.wire_state, x, y, key=jax.random.key(0))
    z = sm.client.apply(sm.params["client"], x)
    shifted = jax.grad(lambda z_: cross_entropy(sm.server.apply(sm.params["server"], z_), (y + 3) % 10))(z)
    honest_dz = jax.grad(lambda z_: cross_entropy(sm.server.apply(sm.params["server"], z_), y))(z)
    np.testing.assert_allclose(obs.cut_grads, shifted, rtol=1e-6, atol=1e-7)
    assert float(jnp.abs(obs.cut_grads - honest_dz).max()) > 1e-3  # it really lies
    # it trains its own half honestly and reports the honest loss
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.allclose(a, b)), g_h["server"], g_e["server"]))
    assert float(m_h.loss) == pytest.approx(float(m_e.loss))
    # so the client's update follows the lie
    assert not jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.allclose(a, b)), g_h["client"], g_e["client"]))


def test_a_party_carries_its_state_through_training():
    evil = _trainer(server=LabelShiftServer())
    x, y = jax.random.uniform(jax.random.key(3), (64, 6, 6, 1)), jax.random.randint(jax.random.key(4), (64,), 0, 10)
    res = fit(evil, x, y, epochs=2, batch_size=16, key=jax.random.key(5))
    assert int(res.state.parties["server"]["replies"]) == 2 * 4 == int(res.state.step)
    assert res.state.parties["client"] == ()


@dataclass(frozen=True)
class StopAt:
    """A client that stops training at step ``at`` (a stand-in for a detector's verdict)."""

    at: int
    name: str = "stop_at"
    active: bool = True
    can_stop: bool = True
    alters_batches: bool = False

    def init(self, model, *, key):
        return {"max_grad": jnp.zeros((), jnp.float32)}

    def send(self, state, x, y, *, key, step):
        return state, x, y, jnp.ones((), bool)

    def inspect(self, state, smash, cut_grads, labels, *, step, grads):
        seen = jnp.maximum(state["max_grad"], jnp.abs(cut_grads).max())
        return {"max_grad": seen}, step >= self.at


def test_a_client_party_can_stop_training():
    x, y = jax.random.uniform(jax.random.key(3), (64, 6, 6, 1)), jax.random.randint(jax.random.key(4), (64,), 0, 10)
    # 4 steps per epoch: the client stops at the first step of the second epoch (global step 4)
    guarded = _trainer(client=StopAt(at=4))
    res = fit(guarded, x, y, epochs=5, batch_size=16, key=jax.random.key(5))
    assert len(res.history) == 2 and res.history[-1]["stopped"] and bool(res.state.stopped)
    assert "stopped" not in res.history[0]
    assert float(res.state.parties["client"]["max_grad"]) > 0
    # no update from the stopping step on: the parameters are those after one honest epoch
    honest = _trainer()
    one = fit(honest, x, y, epochs=1, batch_size=16, key=jax.random.key(5))
    two = fit(honest, x, y, epochs=2, batch_size=16, key=jax.random.key(5))
    same = [np.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in
            zip(jax.tree.leaves(res.state.params), jax.tree.leaves(one.state.params))]
    assert all(same)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(res.state.params),
                                                      jax.tree.leaves(two.state.params)))
    assert int(res.state.step) == 8  # steps still ran (and counted) after the stop, without updates


@dataclass(frozen=True)
class ProbeEveryOther:
    """Sends every other batch with shifted labels as a probe (as SplitGuard's fake batches)."""

    name: str = "probe"
    active: bool = True
    can_stop: bool = False
    alters_batches: bool = True

    def init(self, model, *, key):
        return {"probes": jnp.zeros((), jnp.int32)}

    def send(self, state, x, y, *, key, step):
        probe = step % 2 == 1
        return {"probes": state["probes"] + probe}, x, jnp.where(probe, (y + 1) % 10, y), ~probe

    def inspect(self, state, smash, cut_grads, labels, *, step, grads):
        return state, jnp.zeros((), bool)


def test_a_client_party_can_send_probe_batches_it_does_not_learn_from():
    x, y = _batch()
    t = _trainer(client=ProbeEveryOther())
    s0 = t.init()
    s1, _, o1 = t.step(s0, x, y, key=jax.random.key(0))  # step 0: a regular batch
    s2, _, o2 = t.step(s1, x, y, key=jax.random.key(1))  # step 1: a probe
    np.testing.assert_array_equal(o1.labels, y)
    np.testing.assert_array_equal(o2.labels, (y + 1) % 10)  # the server sees the probe's labels
    changed = lambda a, b: not all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert changed(s0.params["client"], s1.params["client"])
    assert not changed(s1.params["client"], s2.params["client"])  # no update from the probe
    assert not changed(s1.opt_state["client"], s2.opt_state["client"])
    assert changed(s1.params["server"], s2.params["server"])  # the server trains on it regardless
    assert int(s2.parties["client"]["probes"]) == 1


TINY = ExperimentSpec(data="digits", model="mlp", cut="relu1", epochs=2, batch_size=64, aux_size=100, targets=4,
                      attacks=("rmle(steps=10)",), train_size=512)


def test_server_from_a_spec_and_active_runs_never_share_training(tmp_path):
    evil = TINY.with_overrides(["server=label_shift"])
    assert "server" not in TINY.to_dict() and evil.to_dict()["server"] == "label_shift"
    assert evil.hash() != TINY.hash()
    cache = TrainedModels()
    honest = run_experiment(TINY, tmp_path, cache=cache)
    bad = run_experiment(evil, tmp_path, cache=cache)
    again = run_experiment(evil.with_overrides(["targets=3"]), tmp_path, cache=cache)
    assert "train_path" not in bad["timings"] and "train_path" not in again["timings"]
    # an active run keeps no model for the next: the honest one trains again, then is reused
    honest2 = run_experiment(TINY.with_overrides(["targets=3"]), tmp_path, cache=cache)
    assert "train_path" not in honest2["timings"]
    honest3 = run_experiment(TINY.with_overrides(["targets=5"]), tmp_path, cache=cache)
    assert honest3["timings"]["train_path"].startswith("reused")
    # the lying server hurts the model it helps train (0.61 against 0.71 here)
    assert bad["metrics"]["test_accuracy"] < honest["metrics"]["test_accuracy"] - 0.05


@pytest.mark.parametrize("field, value, match", [("server", "nobody", "field 'server'"),
                                                 ("server", "label_shift(shift=0)", "shift >= 1"),
                                                 ("client", "label_shift", "field 'client'")])
def test_bad_party_specs_fail_before_any_work(field, value, match):
    with pytest.raises(SpecError, match=match):
        ExperimentSpec(**{**TINY.to_dict(), field: value}).build()


def test_the_phases_of_a_step_run_apart_as_two_processes_would():
    """client_send | server_reply | client_receive, each jitted on its own with only its
    party's parameters, give the exchange's messages and gradients."""
    x, y = _batch()
    t = _trainer(server=LabelShiftServer(), client=ProbeEveryOther())
    s = t.init()
    key, step = jax.random.key(7), jnp.ones((), jnp.int32)  # step 1: a probe batch
    ex = jax.jit(lambda s: t.exchange(s.params, s.wire_state, s.parties, x, y, key=key, step=step))(s)
    send = jax.jit(lambda pc, party, ws: t.client_send(pc, party, ws, x, y, key=key, step=step))
    z, labels, ws, kept = send(s.params["client"], s.parties["client"], s.wire_state)
    dz, ws, reply = jax.jit(lambda ps, party, ws, z, l: t.server_reply(ps, party, ws, z, l, key=key))(
        s.params["server"], s.parties["server"], ws, z, labels)
    g_client, party, stop, _ = jax.jit(lambda pc, kept, dz: t.client_receive(pc, kept, dz, key=key, step=step))(
        s.params["client"], kept, dz)
    np.testing.assert_array_equal(labels, (y + 1) % 10)
    for a, b in [(z, ex.observed.smash), (dz, ex.observed.cut_grads), (g_client, ex.grads["client"]),
                 (reply.grads, ex.grads["server"]), (party, ex.parties["client"])]:
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)
    assert not bool(kept.applies) and not bool(stop)


@pytest.mark.parametrize("topology", ["round_robin(handover='peer')", "splitfed_v2"])
def test_parties_in_multi_client_topologies(topology):
    """One server party serves every client: its state counts every client's steps; each
    client keeps its own client party state."""
    evil = TINY.with_overrides([f"topology={topology}", "clients=2", "server=label_shift", "epochs=1"])
    p = prepare(evil)
    assert p.trainer.active
    fitted = train_stage(p)
    steps = sum(h["steps"] for h in fitted.history)
    assert steps > 0 and int(fitted.state.parties["server"]["replies"]) == steps
    assert fitted.state.parties["client"] == ()
    with pytest.raises(SpecError, match="splitfed_v2"):
        evil.with_overrides(["topology=splitfed_v1"]).build()
