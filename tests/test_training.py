import jax
import numpy as np
import pytest

from split_workbench.orchestration.experiment import ExperimentSpec
from split_workbench.orchestration.runner import prepare, train_stage

SPEC = ExperimentSpec(data="digits", model="mlp", cut="relu1", epochs=2, batch_size=64, seed=3, attacks=())


@pytest.fixture(scope="module")
def run():
    p = prepare(SPEC)
    return p, train_stage(p)


def test_same_spec_same_result(run):
    _, fitted = run
    again = train_stage(prepare(SPEC))
    for a, b in zip(jax.tree.leaves(fitted.state.params), jax.tree.leaves(again.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    drop = ("seconds", "images_per_second")
    assert [{k: v for k, v in h.items() if k not in drop} for h in fitted.history] == \
        [{k: v for k, v in h.items() if k not in drop} for h in again.history]
    other = train_stage(prepare(ExperimentSpec(**{**SPEC.to_dict(), "seed": 4})))
    assert not np.array_equal(np.asarray(jax.tree.leaves(fitted.state.params)[0]),
                              np.asarray(jax.tree.leaves(other.state.params)[0]))


def test_bytes_are_what_the_wire_carries(run):
    p, fitted = run
    final = fitted.history[-1]
    steps = p.dataset_size // 64
    assert p.dataset_size == 1437 - SPEC.aux_size  # digits' training split less the attacker's auxiliary set
    assert final["steps"] == steps
    assert final["forward_bytes"] == final["backward_bytes"] == steps * 64 * 256 * 4  # relu1: 256 float32 values
    assert final["label_bytes"] == steps * 64 * 4


def test_learns_digits(run):
    p, fitted = run
    assert p.trainer.evaluate(fitted.state.params, p.x_test, p.y_test)["accuracy"] > 0.8
