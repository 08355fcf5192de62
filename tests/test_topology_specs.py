"""Every topology from a spec: one defense and one attack end to end on digits; the wire
really carries the defenses in U-shaped and vertical split learning; Dirichlet partitions
are label-skewed; specs that do not fit are refused before any data loads."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from split_workbench.models import make_model
from split_workbench.orchestration.run_folder import attack_run, load_run
from split_workbench.orchestration.sweep import _group_key
from split_workbench.orchestration.experiment import ExperimentSpec, SpecError
from split_workbench.orchestration.runner import observation, prepare, run_experiment, train_stage
from split_workbench.topology import vertical_split

ATTACK = "rmle(steps=30)"
BASE = dict(data="digits", model="mlp", epochs=1, batch_size=16, train_size=192, targets=8, aux_size=100,
            defenses=("laplace_noise(scale=0.05)",), attacks=(ATTACK,))


@pytest.mark.parametrize("topology, extra", [
    ("round_robin(handover='peer')", dict(clients=3)),
    ("round_robin(handover='none')", dict(clients=2, partition="dirichlet(alpha=1.0)")),
    ("splitfed_v1", dict(clients=3, partition="dirichlet(alpha=0.5)")),
    ("splitfed_v2", dict(clients=2)),
    ("u_shaped", dict(clients=2, attacks=(ATTACK, "norm_leak"))),  # cut 1's smash, cut 2's gradient
    ("vertical(join='sum')", dict(clients=2)),
])
def test_every_topology_runs_from_a_spec_with_a_defense_and_an_attack(topology, extra):
    spec = ExperimentSpec(topology=topology, **{**BASE, **extra})
    r = run_experiment(spec)
    a = r["attacks"][ATTACK]
    assert a["kind"] == "inversion" and len(a["ssim"]) == spec.targets
    assert np.isfinite([a["ssim_mean"], a["psnr_mean"], a["mse_mean"]]).all()
    assert 0.0 <= a["ssim_mean"] <= 1.0
    m = r["metrics"]
    assert np.isfinite([m["test_accuracy"], m["test_loss"], m["train_loss"], m["dcor_input_smash"]]).all()
    assert m["train_loss"] < 2.6  # 10 classes: ln 10 = 2.30 at chance; it trained and stayed sane
    assert r["bytes_per_epoch"]["forward_bytes"] > 0 and r["bytes_per_epoch"]["backward_bytes"] > 0
    assert r["topology"]["name"] == topology.split("(")[0]
    assert r["privacy"][0]["defense"].startswith("laplace_noise")
    # fields added for topologies are in the spec's dict (and hash) only off their defaults
    assert ("clients" in r["spec"]) == (extra.get("clients", 1) != 1)
    if "norm_leak" in spec.attacks:  # label leakage from the gradient at cut 2 (ten classes: no AUC)
        assert r["attacks"]["norm_leak"]["kind"] == "label" and r["attacks"]["norm_leak"]["auc"] is None


def test_sweeps_train_topologies_one_spec_at_a_time():
    one = ExperimentSpec(topology="splitfed_v1", clients=2, **BASE)
    assert _group_key(one) != _group_key(dataclasses.replace(one, seed=1))
    vanilla = ExperimentSpec(**BASE)
    assert _group_key(vanilla) == _group_key(dataclasses.replace(vanilla, seed=1))


def test_vanilla_spec_hash_and_dict_do_not_change():
    d = ExperimentSpec().to_dict()
    assert "clients" not in d and "partition" not in d
    assert ExperimentSpec(clients=1, partition="iid").hash() == ExperimentSpec().hash()


def _noisy_and_clean(topology, clients, defense):
    noisy = prepare(ExperimentSpec(topology=topology, clients=clients, **{**BASE, "defenses": (defense,)}))
    clean = prepare(ExperimentSpec(topology=topology, clients=clients, **{**BASE, "defenses": ()}))
    return noisy, clean


def test_u_shaped_wires_carry_the_defenses_at_both_cuts():
    """Noise on the smash reaches z1 at cut 1; gradient noise reaches dz2 at cut 2 (the
    client's gradient, which the server receives); the server's messages are clean."""
    for defense, noisy_msg in (("laplace_noise(scale=100.0)", 0), ("grad_noise(sigma=100.0)", 2)):
        noisy, clean = _noisy_and_clean("u_shaped", 2, defense)
        x, y = jnp.asarray(noisy.x_train[:16]), jnp.asarray(noisy.y_train[:16])
        tn, tc = noisy.trainer.trainer, clean.trainer.trainer
        params = tc.model.params
        got = tn.exchange(params, tn.init_wire(), x, y, key=jax.random.key(1)).messages
        ref = tc.exchange(params, tc.init_wire(), x, y, key=jax.random.key(1)).messages
        assert float(jnp.abs(got[noisy_msg] - ref[noisy_msg]).mean()) > 10.0
        for i in range(noisy_msg):  # messages before the noisy one are untouched
            np.testing.assert_array_equal(np.asarray(got[i]), np.asarray(ref[i]))
    # the adversary's observation carries the noisy smash, and training on it hurts accuracy
    noisy, clean = _noisy_and_clean("u_shaped", 2, "laplace_noise(scale=100.0)")
    key = jax.random.key(3)
    obs_n, _, _ = observation(noisy, train_stage(noisy).state, key)
    obs_c, _, _ = observation(clean, train_stage(clean).state, key)
    assert obs_n.labels is None and obs_n.server_apply is None  # labels never leave the client
    assert float(jnp.abs(obs_n.smash).mean()) > 10 * float(jnp.abs(obs_c.smash).mean())
    assert obs_n.cut_grads.shape[1:] == noisy.trainer.trainer.model.cut2_shape  # dz2, at cut 2


def test_vertical_wire_carries_each_partys_smash_through_the_defense():
    noisy, clean = _noisy_and_clean("vertical(join='sum')", 2, "laplace_noise(scale=100.0)")
    x, y = jnp.asarray(noisy.x_train[:16]), jnp.asarray(noisy.y_train[:16])
    tn, tc = noisy.trainer.trainer, clean.trainer.trainer
    params = tc.model.params
    zn, _ = tn.exchange(params, tn.init_wire(), x, y, key=jax.random.key(1)).messages
    zc, _ = tc.exchange(params, tc.init_wire(), x, y, key=jax.random.key(1)).messages
    assert zn.shape == zc.shape == (2, 16, *tc.model.party_smash_shape)
    for m in range(2):  # every party's smash, each with its own noise
        assert float(jnp.abs(zn[m] - zc[m]).mean()) > 10.0
    assert not np.allclose(np.asarray(zn[0] - zc[0]), np.asarray(zn[1] - zc[1]))
    fn, fc = train_stage(noisy), train_stage(clean)
    acc_n = noisy.trainer.evaluate(fn.state, noisy.x_test, noisy.y_test)["accuracy"]
    acc_c = clean.trainer.evaluate(fc.state, clean.x_test, clean.y_test)["accuracy"]
    assert acc_n < acc_c
    obs, x_scored, _ = observation(noisy, fn.state, jax.random.key(0))
    q = tc.model.party_smash_shape[0]
    assert obs.smash.shape == (BASE["targets"], 2 * q)  # every party's smash, side by side
    np.testing.assert_array_equal(np.asarray(tc.model.parties_of(obs.smash)[1]), np.asarray(obs.smash[:, q:]))
    assert x_scored.shape == (BASE["targets"], 8, 8, 1)  # scored against the whole input


def test_vertical_concat_fits_convolutional_strips():
    def make(*, key, input_shape):
        return make_model("he2019-cifar", key=key, input_shape=input_shape, num_classes=10)

    vm = vertical_split(make, "pool1", (16, 16, 1), num_clients=2, key=jax.random.key(0))
    assert vm.party_smash_shape == (8, 4, 64) and vm.join == "concat"  # side by side: the whole image's (8, 8, 64)
    x = jnp.zeros((3, 16, 16, 1))
    assert vm.apply(vm.params, x).shape == (3, 10)
    with pytest.raises(ValueError, match="join='sum'"):
        vertical_split(make, "fc1", (16, 16, 1), num_clients=2, key=jax.random.key(0))


def _skew(hist):
    """Mean total-variation distance between each client's label distribution and the pool's."""
    p = hist / hist.sum(1, keepdims=True)
    q = hist.sum(0) / hist.sum()
    return float(0.5 * np.abs(p - q).sum(1).mean())


def test_dirichlet_partition_is_label_skewed_and_iid_is_not():
    spec = dict(BASE, train_size=800)
    iid = prepare(ExperimentSpec(topology="splitfed_v1", clients=4, **spec)).trainer.labels_KxC
    skew = prepare(ExperimentSpec(topology="splitfed_v1", clients=4, partition="dirichlet(alpha=0.1)",
                                  **spec)).trainer.labels_KxC
    assert iid.sum() == skew.sum() == 800
    assert _skew(iid) < 0.15
    assert _skew(skew) > 0.4


def test_multi_client_targets_are_client_0s_private_examples():
    p = prepare(ExperimentSpec(topology="round_robin", clients=3, **BASE))
    x_t, y_t = p.trainer.targets(p.x_train, p.y_train, 8)
    ids = p.trainer.clients.idx_KxN[0, :8]
    np.testing.assert_array_equal(np.asarray(x_t), p.x_train[ids])
    assert set(ids) <= set(p.trainer.clients.idx_KxN[0, : p.trainer.clients.sizes[0]])


@pytest.mark.parametrize("fields, match", [
    (dict(clients=2), "topology 'vanilla' is one client"),
    (dict(topology="ring"), "registered topologies: \\['round_robin'"),
    (dict(topology="round_robin(handover='sideways')"), "handover must be one of"),
    (dict(topology="vertical", clients=1), "clients >= 2"),
    (dict(topology="vertical", clients=2), "join='sum'"),  # mlp smashes are dense: concat does not fit
    (dict(topology="vertical(join='sum')", clients=2, partition="dirichlet(alpha=0.5)"), "no partition"),
    (dict(topology="u_shaped(cut2='relu1')", clients=2), "cut2 must name a block after cut"),
    (dict(topology="u_shaped", attacks=("query_free",)), "never observes"),
    (dict(topology="u_shaped", attacks=("unsplit_labels",)), "assumes one cut"),
    (dict(topology="u_shaped", defenses=("dp_sgd(clip=1.0)",)), "no DP-SGD"),
    (dict(topology="round_robin", clients=2, server="malicious_example"), "field 'server'"),
    (dict(topology="splitfed_v1", clients=0), "field 'clients'"),
    (dict(topology="splitfed_v1", clients=2, partition="dirichlet(alpha=0)"), "field 'partition'"),
    (dict(topology="splitfed_v1", clients=2, partition="zipf"), "unknown partition"),
])
def test_specs_that_do_not_fit_a_topology_are_refused(fields, match):
    with pytest.raises(SpecError, match=match):
        ExperimentSpec(**{**BASE, **fields}).build()


@pytest.mark.parametrize("topology, clients", [
    pytest.param("splitfed_v2", 2, marks=pytest.mark.slow),  # tests/test_run_folder.py restores splitfed_v1
    ("u_shaped", 2),
    pytest.param("vertical(join='sum')", 2, marks=pytest.mark.slow),
])
def test_a_topology_run_folder_restores_and_attacks_again(tmp_path, topology, clients):
    """The run folder of a topology holds its trained state: it restores exactly into the
    topology's own template (``TopologyTrainer.init``) and the attack scores as in the record."""
    spec = ExperimentSpec(topology=topology, clients=clients, **BASE)
    record = run_experiment(spec, tmp_path)
    fitted = train_stage(prepare(spec))
    run = load_run(tmp_path / spec.hash())
    assert jax.tree.structure(run.state) == jax.tree.structure(fitted.state)
    for a, b in zip(jax.tree.leaves(run.state.params), jax.tree.leaves(fitted.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    again, _ = attack_run(run, [ATTACK], list(spec.build().attacks))
    assert again["attacks"][ATTACK]["ssim"] == pytest.approx(record["attacks"][ATTACK]["ssim"], abs=1e-5)


def test_dp_accounting_of_a_client_uses_its_own_examples():
    """With K clients, client 0's DP-SGD guarantee is over its own share and its own steps:
    a third of the data gives a larger epsilon than the whole data would."""
    base = {**BASE, "defenses": ("dp_sgd(clip=1.0, noise_multiplier=1.0)",), "attacks": (), "train_size": 480}
    p = prepare(ExperimentSpec(topology="round_robin", clients=3, **base))
    assert p.trainer.private_examples(p.dataset_size) == p.trainer.clients.sizes[0] == 160
    many = run_experiment(p)["privacy"][0]
    one = run_experiment(ExperimentSpec(**base))["privacy"][0]
    assert many["epsilon"] > one["epsilon"]
