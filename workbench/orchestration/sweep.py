"""Sweeps: a grid of ExperimentSpecs, run resumably; seeds and strengths train as one vmapped program.

Each finished run is a folder ``<out>/<hash>/`` renamed into place complete, so a sweep
killed at any moment (even SIGKILL) and restarted skips what finished, redoes what did
not, and never holds a half-written record. Specs that differ only in their seed, and in
the strengths of defenses declared ``vmappable`` (noise scales, NoPeek's weight, dropout
rate), share one program: their training runs as one ``vmap`` over the group, with the
strengths passed in as arrays.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import time
from collections import defaultdict
from pathlib import Path

import jax
import jax.numpy as jnp

from split_workbench.defenses.base import combine
from split_workbench.defenses.registry import build_defense, build_defense_traced, strength_split
from split_workbench.orchestration.experiment import ExperimentSpec, SpecError, record_path
from split_workbench.orchestration.runner import TrainedModels, evaluate_stage, prepare, train_stage, write_record
from split_workbench.progress import Progress
from split_workbench.training import party_key
from split_workbench.wire import Wire

__all__ = ["expand_grid", "parse_grid", "run_sweep", "fit_group", "fit_seeds"]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["seed=0|1|2", "defense=none", "defense=nopeek(alpha=1.0)"]`` -> ``{field: [values]}``.

    Values of one field are separated by ``|`` or given by repeating the field."""
    grid: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise SpecError(f"grid item {item!r} must look like field=v1|v2|v3")
        k, v = item.split("=", 1)
        grid.setdefault(k.strip(), []).extend(x.strip() for x in v.split("|"))
    return grid


def expand_grid(base: ExperimentSpec, grid: dict[str, list]) -> list[ExperimentSpec]:
    """The cartesian product of ``grid`` applied to ``base`` (``run_sweep`` builds, and so
    checks, every spec before any work)."""
    keys = list(grid)
    specs = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        spec = base.with_overrides([f"{k}={v}" for k, v in zip(keys, combo)])
        specs.append(spec)
    unique = list({s.hash(): s for s in specs}.values())
    return unique


def _group_key(spec: ExperimentSpec, *, seeds: bool = True, strengths: bool = True) -> str:
    """Specs with the same key train as one vmapped program: they may differ in their seed
    (``seeds``) and in the vmappable strengths of their defenses (``strengths``; see
    ``defenses.registry.vmappable``), nothing else. A spec with another topology than
    vanilla trains alone (its topology runs its own loop)."""

    if spec.topology != "vanilla":
        return spec.hash()
    changes = {}
    if seeds:
        changes["seed"] = 0
    if strengths:
        changes["defenses"] = tuple(strength_split(d)[0] for d in spec.defenses)
    return dataclasses.replace(spec, **changes).hash() if changes else spec.hash()


def _strengths(spec: ExperimentSpec) -> list[dict[str, float]]:

    return [strength_split(d)[1] for d in spec.defenses]


def _traced_trainer(p0, values: list[dict]):
    """``p0.trainer`` with its defenses rebuilt from ``values`` (arrays, traced under vmap)."""

    parts = combine([build_defense_traced(d, v) if v else build_defense(d)
                     for d, v in zip(p0.spec.defenses, values)])
    return dataclasses.replace(p0.trainer, wire=Wire(parts["forward"], parts["backward"], parts["inference"]),
                               loss_terms=parts["loss_terms"], privatizer=parts["privatizer"])


def fit_group(prepared: list, *, progress: bool = False):
    """Trains specs that differ only in their seed and in vmappable defense strengths as
    one vmapped program.

    Each spec keeps its own initial parameters, data order, keys (those of
    ``training.fit``) and strengths, passed in as arrays along the vmapped axis, so the
    arithmetic matches the one-by-one path up to float reassociation under ``vmap``.
    Returns, per spec, ``(state, history)`` as ``training.fit`` would.
    """
    p0 = prepared[0]
    spec0 = p0.spec
    bs, epochs = spec0.batch_size, spec0.epochs
    states = jax.tree.map(lambda *a: jnp.stack(a), *[p.trainer.init(key=party_key(jax.random.fold_in(jax.random.key(p.spec.seed), 1))) for p in prepared])
    xs = jnp.stack([jnp.asarray(p.x_train) for p in prepared])
    ys = jnp.stack([jnp.asarray(p.y_train) for p in prepared])
    per_spec = [_strengths(p.spec) for p in prepared]
    values = [{k: jnp.asarray([v[i][k] for v in per_spec], jnp.float32) for k in per_spec[0][i]}
              for i in range(len(spec0.defenses))]
    base_keys = [jax.random.fold_in(jax.random.key(p.spec.seed), 1) for p in prepared]

    def one(s, x, y, k, vals):
        trainer = _traced_trainer(p0, vals) if any(vals) else p0.trainer
        return trainer._epoch(s, x, y, k, bs, ())[:2]

    epoch = jax.jit(jax.vmap(one))
    steps = xs.shape[1] // bs
    histories = [[] for _ in prepared]
    traffic = [p.trainer.traffic(bs).scale(steps) for p in prepared]
    n_strengths = len({json.dumps(v, sort_keys=True) for v in per_spec})
    bar = Progress(epochs, f"train x{len(prepared)} ({n_strengths} strengths)", enabled=progress)
    for e in range(epochs):
        keys = jnp.stack([jax.random.fold_in(k, e) for k in base_keys])
        t0 = time.perf_counter()
        states, m = epoch(states, xs, ys, keys, values)
        jax.block_until_ready(states)
        seconds = time.perf_counter() - t0
        for i in range(len(prepared)):
            histories[i].append({"epoch": e + 1, "steps": steps, "train_loss": float(m.loss[i].mean()),
                                 "train_accuracy": float(m.accuracy[i].mean()),
                                 "client_reg": float(m.client_reg[i].mean()), "seconds": seconds,
                                 "images_per_second": len(prepared) * steps * bs / seconds,
                                 **traffic[i].as_dict()})
        bar.update(1)
    return [(jax.tree.map(lambda a: a[i], states), histories[i]) for i in range(len(prepared))]


fit_seeds = fit_group  # the name of the seeds-only version


def _clean_stale(out_dir: Path) -> None:
    for tmp in out_dir.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def run_sweep(specs: list[ExperimentSpec], out_dir, *, vmap_seeds: bool = True, vmap_strengths: bool = True,
              max_group: int = 32, progress: bool = False) -> list[dict]:
    """Runs every spec not yet recorded in ``out_dir``; returns all records in spec order.

    Specs that differ only in their seed (``vmap_seeds``) and in vmappable defense strengths
    (``vmap_strengths``) train as one vmapped program, at most ``max_group`` at a time (each
    member holds its own copy of the training data on the device); the rest run one by one.
    Attacks and evaluation run per spec either way."""
    if max_group < 1:
        raise ValueError(f"max_group must be >= 1, got {max_group}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale(out_dir)  # left by a killed run: never a record, safe to drop
    built = {s.hash(): s.build() for s in specs}  # every spec checked before any work
    todo = [s for s in specs if not record_path(out_dir, s).is_file()]
    groups: dict[str, list[ExperimentSpec]] = defaultdict(list)
    for s in todo:
        groups[_group_key(s, seeds=vmap_seeds, strengths=vmap_strengths)].append(s)
    groups = {f"{k}/{i}": g[i:i + max_group] for k, g in groups.items() for i in range(0, len(g), max_group)}
    bar = Progress(len(todo), "sweep", enabled=progress)
    cache = TrainedModels()
    for group in groups.values():
        if len(group) == 1:
            _run_one(built[group[0].hash()], out_dir, cache)
            bar.update(1, group[0].hash())
            continue
        t0 = time.perf_counter()
        prepared = [prepare(built[s.hash()]) for s in group]
        t_prep = (time.perf_counter() - t0) / len(group)
        t0 = time.perf_counter()
        fitted = fit_group(prepared)
        t_train = (time.perf_counter() - t0) / len(group)
        for p, (state, history) in zip(prepared, fitted):
            timings = {"prepare": t_prep, "train": t_train, "train_path": f"vmapped over {len(group)} specs"}
            record, images = evaluate_stage(p, state, history, timings=timings)
            write_record(out_dir, record, images, state)
            bar.update(1, p.spec.hash())
    return [json.loads(record_path(out_dir, s).read_text()) for s in specs]


def _run_one(built, out_dir: Path, cache: TrainedModels) -> None:
    timings = {}
    t0 = time.perf_counter()
    p = prepare(built)
    timings["prepare"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    shared = cache.get(p) is not None
    fitted = train_stage(p, cache=cache)
    timings["train"] = time.perf_counter() - t0
    timings["train_path"] = "reused from the previous spec" if shared else "one by one"
    record, images = evaluate_stage(p, fitted.state, fitted.history, timings=timings)
    write_record(out_dir, record, images, fitted.state)
