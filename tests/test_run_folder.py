"""Run folders: the trained state saved with orbax under its real names, restored exactly;
`train` is `run` without attacks; `attack` rescoring a run or a sweep record through the
same observation and scores as the run itself."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from split_workbench.models import MODELS, ModelInfo
from split_workbench.models.base import Sequential, flatten, relu
from split_workbench.orchestration import cli, run_folder
from split_workbench.orchestration.checkpoint import CheckpointMismatch, checkpoint_names, restore_state
from split_workbench.orchestration.experiment import ExperimentSpec
from split_workbench.orchestration.run_folder import load_run
from split_workbench.orchestration.runner import prepare, run_experiment, train_stage
from split_workbench.orchestration.sweep import run_sweep

ATTACK = "rmle(steps=5)"
SPEC = ExperimentSpec(data="digits", model="mlp", cut="relu1", model_kwargs={"hidden": (32, 16)}, epochs=1,
                      batch_size=32, train_size=128, targets=4, attacks=(ATTACK,), seed=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run_experiment(SPEC, out)
    return out / SPEC.hash()


def _equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_run_folder_round_trips_under_real_names(folder):
    trained = train_stage(prepare(SPEC)).state
    run = load_run(folder)
    _equal(run.state, trained)
    assert run.record["checkpoint"] == "checkpoint" and run.prepared.spec.hash() == SPEC.hash()
    names = {"/".join(n) for n in checkpoint_names(folder / "checkpoint")}
    assert {"params/client/layers/1/kernel", "params/server/layers/2/bias", "opt_state/client/0/mu/layers/1/kernel",
            "opt_state/server/0/nu/layers/2/kernel", "opt_state/client/0/count", "step"} <= names
    # the same run through result.json, and no temporary folder left beside it
    _equal(load_run(folder / "result.json").state, trained)
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_checkpoint_changes_no_record_value(folder):
    written = json.loads((folder / "result.json").read_text())
    plain = run_experiment(SPEC)
    assert written["metrics"] == plain["metrics"]
    assert written["attacks"][ATTACK]["ssim"] == plain["attacks"][ATTACK]["ssim"]
    assert [h["train_loss"] for h in written["history"]] == [h["train_loss"] for h in plain["history"]]
    assert set(written) - set(plain) == {"checkpoint", "reconstructions"}


def test_a_mismatched_checkpoint_is_refused(folder):
    other = prepare(dataclasses.replace(SPEC, model_kwargs={"hidden": (32, 8)}))
    with pytest.raises(CheckpointMismatch, match=r"params/server/layers/0/kernel: saved \(32, 16\) float32, expected \(32, 8\)"):
        restore_state(other.trainer.init(), folder / "checkpoint")


class _Tiny(nnx.Module):
    def __init__(self, d_in, d_out, rngs):
        self.proj = nnx.Linear(d_in, d_out, rngs=rngs)

    def __call__(self, x):
        return self.proj(x)


def _tiny(shape, num_classes, rngs):
    d = shape[0] * shape[1] * shape[2]
    return Sequential([("flatten", flatten), ("enc", _Tiny(d, 12, rngs)), ("act", relu),
                       ("head", _Tiny(12, num_classes, rngs))], input_shape=shape)


def test_a_user_model_restores(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, "user-tiny", ModelInfo("user-tiny", _tiny, (8, 8, 1), "act", (), "a test model"))
    spec = dataclasses.replace(SPEC, model="user-tiny", cut="act", model_kwargs={}, attacks=())
    run_experiment(spec, tmp_path)
    run = load_run(tmp_path / spec.hash())
    _equal(run.state, train_stage(prepare(spec)).state)
    names = {"/".join(n) for n in checkpoint_names(tmp_path / spec.hash() / "checkpoint")}
    assert "params/client/layers/1/proj/kernel" in names and "params/server/layers/0/proj/bias" in names


def test_attack_on_a_sweep_record_scores_as_the_sweep(tmp_path, capsys):
    specs = [dataclasses.replace(SPEC, seed=s) for s in (0, 1)]  # one vmapped group
    records = run_sweep(specs, tmp_path)
    out = tmp_path / "again.json"
    assert cli.main(["attack", str(tmp_path / specs[1].hash() / "result.json"), "--attack", ATTACK,
                     "--out", str(out)]) == 0
    again = json.loads(out.read_text())["attacks"][ATTACK]
    theirs = records[1]["attacks"][ATTACK]
    for k in ("ssim_mean", "psnr_mean", "mse_mean"):
        assert again[k] == pytest.approx(theirs[k], abs=1e-6)
    np.testing.assert_allclose(again["ssim"], theirs["ssim"], atol=1e-6)
    # the sweep's folder of runs is refused, naming one run to pass instead
    assert cli.main(["attack", str(tmp_path), "--attack", ATTACK]) == 2
    assert "holds 2 runs" in capsys.readouterr().err


def test_train_then_attack_from_the_command_line(tmp_path, capsys):
    argv = ["train", "--data", "digits", "--model", "mlp", "--cut", "relu1", "--epochs", "1", "--batch-size", "64",
            "--out", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "client->server" in text and "FLOPs" in text
    (run,) = [p for p in tmp_path.iterdir()]
    record = json.loads((run / "result.json").read_text())
    assert record["spec"]["attacks"] == [] and record["spec"]["cut"] == "relu1" and (run / "checkpoint").is_dir()
    assert cli.main(argv) == 0 and "reused the finished run" in capsys.readouterr().out
    assert cli.main(["attack", str(run), "--attack", ATTACK, "--attack", "norm_leak"]) == 0
    text = capsys.readouterr().out
    assert ATTACK in text and "norm_leak" in text
    (written,) = run.glob("attack-*.json")
    rec = json.loads(written.read_text())
    assert rec["run"] == record["hash"] and rec["attacks"][ATTACK]["kind"] == "inversion"
    assert len(rec["attacks"][ATTACK]["ssim"]) == record["spec"]["targets"]
    # a record is also a spec: `run` on it (how an old record gets a checkpoint) trains the same run
    assert cli.main(["run", str(run / "result.json"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    again = json.loads((tmp_path / "again" / run.name / "result.json").read_text())
    assert again["metrics"] == record["metrics"]


def test_attack_fails_before_any_work(folder, tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("prepared a run on bad input")

    monkeypatch.setattr(run_folder, "prepare", no_work)
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(folder / "result.json", old / "result.json")  # a record written before checkpoints
    cases = [(old, [ATTACK], "run its spec again"), (tmp_path / "empty", [ATTACK], "does not exist"),
             (tmp_path, [ATTACK], "holds 1 runs"), (folder, ["nonsense(x=1)"], "unknown attack"),
             (folder / "reconstructions.png", [ATTACK], "not a run record")]
    for path, attacks, msg in cases:
        argv = ["attack", str(path)] + [a for s in attacks for a in ("--attack", s)]
        assert cli.main(argv) == 2
        assert msg in capsys.readouterr().err
    assert not list(folder.glob("attack-*.json"))


@pytest.mark.parametrize("argv,msg", [
    (["--model", "nope"], "unknown model"),
    (["--model", "mlp", "--cut", "zzz"], "cut"),
    (["--data", "nope", "--model", "mlp"], "unknown dataset"),
    (["--model", "he2019-lenet"], "at least 16x16"),
    (["--model", "mlp", "--defense", "nonsense(x=1)"], "unknown defense"),
    (["--model", "mlp", "--epochs", "0"], "epochs"),
])
def test_train_errors_before_any_work(argv, msg, tmp_path, capsys):
    out = tmp_path / "never"
    # argparse keeps the last --data, so a case may override the default dataset
    assert cli.main(["train", "--data", "digits", *argv, "--out", str(out), "--quiet"]) == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()


def test_list(capsys):
    assert cli.main(["list"]) == 0
    text = capsys.readouterr().out
    assert "he2019-lenet" in text and "relu2*" in text and "digits" in text


def test_a_topology_run_restores_and_rescores_as_recorded(tmp_path):
    spec = dataclasses.replace(SPEC, topology="splitfed_v1", clients=2)
    record = run_experiment(spec, tmp_path)
    run = load_run(tmp_path / spec.hash())
    again, _ = run_folder.attack_run(run, [ATTACK], list(run.prepared.built.attacks))
    assert again["attacks"][ATTACK]["ssim"] == record["attacks"][ATTACK]["ssim"]
