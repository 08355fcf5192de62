"""Reliability of experiments: determinism, resumable sweeps, clear errors that write nothing."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from split_workbench.orchestration.experiment import ExperimentSpec, SpecError, load_spec, record_path
from split_workbench.orchestration.report import _mean_ci, write_report
from split_workbench.orchestration.runner import TrainedModels, run_experiment
from split_workbench.orchestration.sweep import expand_grid, parse_grid, run_sweep

TINY = ExperimentSpec(data="digits", model="mlp", cut="relu1", epochs=1, batch_size=64, aux_size=100, targets=4,
                      attacks=("rmle(steps=20)",))
VOLATILE = {"seconds", "images_per_second", "images_per_s"}


def _stable(record):
    """A record without wall-clock fields."""
    if isinstance(record, dict):
        return {k: _stable(v) for k, v in record.items() if k not in VOLATILE | {"timings", "versions", "_dir"}}
    if isinstance(record, list):
        return [_stable(v) for v in record]
    return record


def test_same_spec_same_record(tmp_path):
    a = run_experiment(TINY, tmp_path / "a")
    b = run_experiment(TINY, tmp_path / "b")  # no cache: trained from scratch (determinism of training)
    assert "train_path" not in b["timings"]
    assert _stable(a) == _stable(b)  # bitwise: floats compare exactly
    c = run_experiment(TINY.with_overrides(["seed=1"]), tmp_path / "c")
    assert _stable(c)["metrics"] != _stable(a)["metrics"]
    # a finished run is reused, not recomputed
    again = run_experiment(TINY, tmp_path / "a")
    assert again["timings"] == a["timings"]


def test_runs_differing_only_in_threat_model_share_the_trained_model(tmp_path):
    """observe / attacks / targets do not change training: the second run reuses the model,
    and its record equals that of a run trained from scratch."""
    cache = TrainedModels()
    run_experiment(TINY, tmp_path / "a", cache=cache)
    other = TINY.with_overrides(["observe=inference", "targets=3", "attacks=['rmle(steps=10)']"])
    shared = run_experiment(other, tmp_path / "a", cache=cache)
    assert shared["timings"]["train_path"].startswith("reused")
    fresh = run_experiment(other, tmp_path / "fresh")
    assert "train_path" not in fresh["timings"]
    assert _stable(shared) == _stable(fresh)
    # a field training reads (here lr) trains again
    again = run_experiment(other.with_overrides(["lr=0.01"]), tmp_path / "a", cache=cache)
    assert "train_path" not in again["timings"]


def test_spec_files_and_hash(tmp_path):
    spec = TINY.with_overrides(["defense=laplace_noise(scale=0.5)", "epochs=2"])
    assert spec.defenses == ("laplace_noise(scale=0.5)",) and spec.epochs == 2
    (tmp_path / "s.toml").write_text(spec.to_toml())
    (tmp_path / "s.json").write_text(json.dumps(spec.to_dict()))
    assert load_spec(tmp_path / "s.toml").hash() == load_spec(tmp_path / "s.json").hash() == spec.hash()
    assert spec.hash() != TINY.hash()


BAD = [
    (dict(model="nope"), "field 'model'"),
    (dict(data="nope"), "field 'data'"),
    (dict(cut="zzz"), "field 'cut'"),
    (dict(epochs=0), "field 'epochs'"),
    (dict(epochs="3"), "field 'epochs'"),
    (dict(lr=-1.0), "field 'lr'"),
    (dict(targets=1), "field 'targets'"),
    (dict(observe="sometimes"), "field 'observe'"),
    (dict(topology="ring"), "field 'topology'"),
    (dict(defenses=("laplace_noise(scale=-1.0)",)), "field 'defenses'"),
    (dict(defenses=("nonsense",)), "unknown defense"),
    (dict(attacks=("rmle(stepz=3)",)), "field 'attacks'"),
    (dict(attacks=("nope",)), "unknown attack"),
    (dict(model_kwargs={"hidden": (8,), "bogus": 1}), "field 'model_kwargs'"),
]


@pytest.mark.parametrize("change,msg", BAD)
def test_bad_specs_fail_before_work_and_write_nothing(change, msg, tmp_path):
    spec = ExperimentSpec(**{**TINY.to_dict(), **change})
    with pytest.raises(SpecError, match=msg):
        run_sweep([spec], tmp_path / "out")
    assert not any((tmp_path / "out").glob("*/result.json"))


@pytest.mark.parametrize("text,suffix,msg", [
    ("epochs = [", ".toml", "not valid TOML"),
    ("{", ".json", "not valid JSON"),
    ("epochz = 3", ".toml", "unknown field"),
    ("epochs = 3", ".yaml", "must end in .toml or .json"),
])
def test_bad_spec_files(text, suffix, msg, tmp_path):
    f = tmp_path / f"s{suffix}"
    f.write_text(text)
    with pytest.raises(SpecError, match=msg):
        load_spec(f)
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.toml")
    with pytest.raises(SpecError, match="field=value"):
        TINY.with_overrides(["epochs"])
    with pytest.raises(SpecError, match="unknown field"):
        TINY.with_overrides(["epoch=3"])


def test_vmapped_seeds_match_one_by_one(tmp_path):
    specs = expand_grid(TINY, parse_grid(["seed=0|1"]))
    v = run_sweep(specs, tmp_path / "v", vmap_seeds=True)
    s = run_sweep(specs, tmp_path / "s", vmap_seeds=False)
    for a, b in zip(v, s):
        assert a["timings"]["train_path"].startswith("vmapped") and b["timings"]["train_path"] == "one by one"
        np.testing.assert_allclose(a["metrics"]["test_accuracy"], b["metrics"]["test_accuracy"], atol=1e-6)
        np.testing.assert_allclose(a["attacks"]["rmle(steps=20)"]["ssim"], b["attacks"]["rmle(steps=20)"]["ssim"],
                                   atol=1e-3)


def test_vmapped_strengths_match_one_by_one(tmp_path):
    """Two Laplace scales x two seeds train as one program of four; each member equals its
    one-by-one run, and the two strengths really differ (the strength is not shared)."""
    specs = expand_grid(TINY, parse_grid(["defense=laplace_noise(scale=0.3)|laplace_noise(scale=3.0)",
                                          "seed=0|1"]))
    v = run_sweep(specs, tmp_path / "v")
    s = run_sweep(specs, tmp_path / "s", vmap_seeds=False, vmap_strengths=False)
    for a, b in zip(v, s):
        assert a["timings"]["train_path"] == "vmapped over 4 specs" and b["timings"]["train_path"] == "one by one"
        np.testing.assert_allclose(a["metrics"]["train_loss"], b["metrics"]["train_loss"], rtol=1e-4)
        np.testing.assert_allclose(a["metrics"]["test_accuracy"], b["metrics"]["test_accuracy"], atol=1e-6)
    by = {(r["spec"]["defenses"][0], r["spec"]["seed"]): r["metrics"]["train_loss"] for r in v}
    assert by[("laplace_noise(scale=3.0)", 0)] > by[("laplace_noise(scale=0.3)", 0)] + 0.05


def test_strength_groups():
    from split_workbench.defenses.registry import strength_split
    from split_workbench.orchestration.sweep import _group_key

    assert strength_split("laplace_noise(scale=0.5)") == ("laplace_noise(scale='<vmapped>')", {"scale": 0.5})
    assert strength_split("laplace_noise") == ("laplace_noise(scale='<vmapped>')", {"scale": 0.5})
    assert strength_split("laplace_noise(scale=0)")[1] == {}  # zero installs no transform: another program
    assert strength_split("topk(fraction=0.1)") == ("topk(fraction=0.1)", {})  # not vmappable
    key = lambda d, seed=0: _group_key(TINY.with_overrides([f"defense={d}", f"seed={seed}"]))  # noqa: E731
    assert key("laplace_noise(scale=0.5)") == key("laplace_noise(scale=2.0)", seed=3)
    assert key("laplace_noise(scale=0.5)") != key("laplace_noise(scale=0.5, at='both')")
    assert key("laplace_noise(scale=0.5)") != key("gaussian_noise(sigma=0.5)")
    assert key("laplace_noise(scale=0.5)") != key("laplace_noise(scale=0)")
    assert key("topk(fraction=0.1)") != key("topk(fraction=0.2)")


def test_sweep_killed_and_restarted_records_each_run_once(tmp_path):
    out = tmp_path / "sweep"
    script = textwrap.dedent(f"""
        from split_workbench.orchestration.experiment import ExperimentSpec
        from split_workbench.orchestration.sweep import expand_grid, parse_grid, run_sweep
        base = ExperimentSpec(**{TINY.to_dict()!r})
        specs = expand_grid(base, parse_grid(["seed=0|1|2|3"]))
        run_sweep(specs, {str(out)!r}, vmap_seeds=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1])
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("*/result.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/result.json")}
    assert 1 <= len(done) < 4, "the sweep should have been killed part-way"
    for d in out.iterdir():  # every visible folder is a complete record
        assert d.name.startswith(".tmp-") or (d / "result.json").is_file()
    specs = expand_grid(TINY, parse_grid(["seed=0|1|2|3"]))
    records = run_sweep(specs, out, vmap_seeds=False)
    assert sorted(r["spec"]["seed"] for r in records) == [0, 1, 2, 3]
    folders = [d for d in out.iterdir() if not d.name.startswith(".")]
    assert len(folders) == 4 and not list(out.glob(".tmp-*"))
    for name, mtime in done.items():  # finished runs were not redone
        assert (out / name / "result.json").stat().st_mtime_ns == mtime


def test_report_has_matrix_intervals_and_figures(tmp_path):
    specs = expand_grid(TINY, parse_grid(["seed=0|1", "defense=none|laplace_noise(scale=1.0)"]))
    run_sweep(specs, tmp_path / "r")
    md = write_report(tmp_path / "r").read_text()
    assert "| none | 2 |" in md and "laplace_noise" in md and "±" in md
    for f in ("report.html", "privacy_utility.png", "privacy_utility.pdf", "reconstructions_0.png",
              "reconstructions_0.pdf"):
        assert (tmp_path / "r" / "report" / f).stat().st_size > 0
    m, half, n = _mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and half == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)
    with pytest.raises(FileNotFoundError, match="no result records"):
        write_report(tmp_path / "r" / "report")
