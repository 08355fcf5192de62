import json

import jax
import numpy as np
import pytest

from split_workbench.orchestration import cli
from split_workbench.orchestration.runs import TrainConfig, load_run, save_run, train


@pytest.fixture(scope="module")
def run():
    return train(TrainConfig(data="digits", model="mlp", cut="relu1", epochs=2, batch_size=64, seed=3))


def test_same_config_same_result(run):
    again = train(TrainConfig(data="digits", model="mlp", cut="relu1", epochs=2, batch_size=64, seed=3))
    for a, b in zip(jax.tree.leaves(run.state.params), jax.tree.leaves(again.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert run.metrics["final"] == {**again.metrics["final"], "seconds": run.metrics["final"]["seconds"],
                                    "images_per_second": run.metrics["final"]["images_per_second"]}
    other = train(TrainConfig(data="digits", model="mlp", cut="relu1", epochs=2, batch_size=64, seed=4))
    assert not np.array_equal(np.asarray(jax.tree.leaves(run.state.params)[0]),
                              np.asarray(jax.tree.leaves(other.state.params)[0]))


def test_bytes_are_what_the_wire_carries(run):
    final = run.metrics["final"]
    steps = 1437 // 64
    assert final["steps"] == steps
    assert final["forward_bytes"] == final["backward_bytes"] == steps * 64 * 256 * 4  # relu1: 256 float32 values
    assert final["label_bytes"] == steps * 64 * 4


def test_learns_digits(run):
    assert run.metrics["final"]["test_accuracy"] > 0.8


def test_save_load_roundtrip(run, tmp_path):
    path = save_run(run, tmp_path / "r")
    back = load_run(path)
    for a, b in zip(jax.tree.leaves(run.state), jax.tree.leaves(back.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileExistsError, match="already exists"):
        save_run(run, path)
    save_run(run, path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no temporary folders left behind
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        load_run(tmp_path)


def test_bad_config_fails_early():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_json({"epoch": 3})


def test_cli_train_and_list(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--data", "digits", "--model", "mlp", "--cut", "relu1", "--epochs", "1",
                     "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "client->server" in text and "FLOPs" in text
    assert json.loads((out / "config.json").read_text())["cut"] == "relu1"
    assert cli.main(["list"]) == 0
    text = capsys.readouterr().out
    assert "he2019-lenet" in text and "relu2*" in text and "digits" in text


@pytest.mark.parametrize("argv,msg", [
    (["--model", "nope"], "unknown model"),
    (["--model", "mlp", "--cut", "zzz"], "unknown cut"),
    (["--data", "nope", "--model", "mlp"], "unknown dataset"),
    (["--model", "he2019-lenet"], "at least 16x16"),
    (["--model", "mlp", "--defense", "nonsense(x=1)"], "unknown defense"),
    (["--model", "mlp", "--epochs", "0"], "epochs"),
])
def test_cli_errors_before_any_work(argv, msg, tmp_path, capsys):
    out = tmp_path / "never"
    # argparse keeps the last --data, so a case may override the default dataset
    assert cli.main(["train", "--data", "digits", *argv, "--out", str(out), "--quiet"]) == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()
