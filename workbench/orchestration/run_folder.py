"""A run folder, read back: its spec rebuilt, its trained state restored, attacked again.

A run folder is ``<out>/<hash>/`` as ``run``, ``sweep`` and ``train`` write it
(``runner.write_record``): ``result.json`` (the record, with the spec), the reconstructions
and ``checkpoint/`` (orbax-checkpoint, every array under its real name). ``load_run``
rebuilds the trainer from the record's spec, so it works for a model registered in the
session (``split_workbench.models.register_model``) as long as the spec names it, and
restores the state into that trainer's structure. ``attack_run`` attacks the restored state
through the same observation and scoring as ``run`` (``runner.attack_stage``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import jax

from split_workbench.orchestration.checkpoint import restore_state
from split_workbench.orchestration.experiment import ExperimentSpec, SpecError, package_versions
from split_workbench.orchestration.runner import CHECKPOINT, Prepared, attack_stage, prepare
from split_workbench.training import party_key

__all__ = ["LoadedRun", "find_record", "load_run", "attack_run", "write_attack_record", "attack_hash"]


class LoadedRun(NamedTuple):
    """A run read back from its folder (``load_run``)."""

    prepared: Prepared  # the spec built and prepared again: data, trainer, built objects
    state: Any  # the trained SplitState, restored from the checkpoint
    record: dict  # result.json
    path: Path  # the run folder


def find_record(path: str | os.PathLike) -> Path:
    """The ``result.json`` of the run at ``path`` (a run folder or its ``result.json``).

    Raises:
      FileNotFoundError: ``path`` does not exist, is a folder of several runs (a sweep's
        output: pass one of them), or holds no record.
    """
    path = Path(path)
    if path.is_file():
        if path.name != "result.json":
            raise FileNotFoundError(f"{path} is not a run record: pass a run folder or its result.json")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist (pass a run folder written by `split-workbench run`, "
                                "`sweep` or `train`, or its result.json)")
    if (path / "result.json").is_file():
        return path / "result.json"
    runs = sorted(p.parent.name for p in path.glob("*/result.json"))
    if runs:
        raise FileNotFoundError(f"{path} holds {len(runs)} runs (a sweep's output); attack one of them at a time, "
                                f"e.g. {path / runs[0]} (`split-workbench report {path}` lists them)")
    raise FileNotFoundError(f"{path} is not a run folder: it has no result.json (runs are written by "
                            "`split-workbench run`, `sweep` or `train`)")


def _checked(path) -> tuple[Path, dict, ExperimentSpec]:
    """Record path, record and spec of the run at ``path``; fails before any data is loaded."""
    rec_path = find_record(path)
    folder = rec_path.parent
    record = json.loads(rec_path.read_text())
    if not (folder / CHECKPOINT).is_dir():
        raise FileNotFoundError(
            f"{folder} has no {CHECKPOINT}/: it was written before runs saved their trained state. To get one, "
            f"move the folder aside and run its spec again (the spec is the record's 'spec' field; "
            f"`split-workbench run {rec_path} --out {folder.parent}` reads it from the record)")
    if "spec" not in record:
        raise ValueError(f"{rec_path} has no 'spec' field: it is not a run record")
    spec = ExperimentSpec.from_dict(record["spec"], source=str(rec_path))
    if record.get("hash") not in (None, spec.hash()):
        raise ValueError(f"{rec_path}: its spec hashes to {spec.hash()}, the record says {record['hash']} "
                         "(was the record edited?)")
    return rec_path, record, spec


def load_run(path: str | os.PathLike) -> LoadedRun:
    """Rebuilds the trainer from the run's spec and restores its trained state.

    Args:
      path: a run folder (``<out>/<hash>/``) or its ``result.json``.

    Returns:
      ``LoadedRun(prepared, state, record, path)``; ``state`` equals the trained state exactly.

    Raises:
      FileNotFoundError: not a run folder, a folder of several runs, or no checkpoint.
      SpecError: the spec names a model, dataset, defense or party not registered in this
        session (register a user model before calling ``load_run``).
      CheckpointMismatch: the saved arrays do not fit the model the spec builds.
    """
    rec_path, record, spec = _checked(path)
    try:
        built = spec.build()
    except SpecError as e:
        raise SpecError(f"{rec_path}: {e} (a model or defense of your own must be registered before load_run)") \
            from None
    p = prepare(built)
    template = p.trainer.init(key=party_key(jax.random.fold_in(jax.random.key(spec.seed), 1)))
    state = restore_state(template, rec_path.parent / CHECKPOINT)
    return LoadedRun(p, state, record, rec_path.parent)


def attack_hash(attack_specs) -> str:
    return hashlib.sha256(json.dumps(list(attack_specs)).encode()).hexdigest()[:12]


def attack_run(run: LoadedRun, attack_specs, attacks) -> tuple[dict, dict]:
    """Attacks a restored run through ``runner.attack_stage``: the spec's targets, its wire,
    its scores (``runner.SCORING``).

    An attack that the run's spec already held keeps its index there, so it draws the same
    key and scores as in the run's record; a new one takes the next free index.

    Args:
      run: from ``load_run``.
      attack_specs: the attack spec strings.
      attacks: the built attacks, in the same order.

    Returns:
      ``(attack record, images)``; the record holds the run's hash and spec, ``attacks``
      (``{spec: scores}``), ``targets``, ``timings`` and ``versions``.
    """
    done = list(run.prepared.spec.attacks)
    index, nxt = [], len(done)
    for s in attack_specs:
        if s in done:
            index.append(done.index(s))
        else:
            index.append(nxt)
            nxt += 1
    timings: dict = {}
    results, images = attack_stage(run.prepared, run.state, list(zip(attack_specs, attacks, index)),
                                   timings=timings)
    record = {"run": run.record["hash"], "run_path": str(run.path), "spec": run.record["spec"],
              "attack_hash": attack_hash(attack_specs), "targets": run.prepared.spec.targets,
              "attacks": results, "timings": timings, "versions": package_versions()}
    return record, images


def write_attack_record(record: dict, path: str | os.PathLike) -> Path:
    """Writes ``record`` as JSON to ``path`` atomically (a temporary file, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
