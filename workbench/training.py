"""From a training configuration to a trained split model, and runs saved to folders.

``fit`` loops over epochs in Python (orchestration, progress, evaluation); each epoch is
one jitted ``lax.scan`` over its steps. A run folder holds the configuration, the
metrics and both halves' parameters and optimizer states, written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench.models import make_model
from workbench.progress import Progress
from workbench.protocol import SplitState, SplitTrainer
from workbench.split import split
from workbench.wire import Tap, Wire

__all__ = ["TrainConfig", "FitResult", "Run", "build_trainer", "fit", "prepare", "save_run", "load_run", "train"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a split training run (serialisable to JSON)."""

    data: str = "digits"
    model: str = "he2019-lenet"
    cut: str | int | None = None  # None: the model's default cut
    epochs: int = 3
    batch_size: int = 32
    client_lr: float = 1e-3
    server_lr: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    defenses: tuple[str, ...] = ()
    model_kwargs: dict = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None  # filled from the data when built
    num_classes: int | None = None

    def __post_init__(self):
        checks = [(self.epochs >= 1, "epochs", "an integer >= 1"),
                  (self.batch_size >= 1, "batch_size", "an integer >= 1"),
                  (self.client_lr > 0, "client_lr", "a positive number"),
                  (self.server_lr > 0, "server_lr", "a positive number"),
                  (self.optimizer in OPTIMIZERS, "optimizer", f"one of {sorted(OPTIMIZERS)}")]
        for ok, name, what in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name} must be {what}, got {getattr(self, name)!r}")
        object.__setattr__(self, "defenses", tuple(self.defenses))
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(self.input_shape))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; fields: {sorted(known)}")
        return cls(**d)


OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd}


def build_trainer(config: TrainConfig) -> SplitTrainer:
    """The trainer a config describes (``input_shape``/``num_classes`` must be set)."""
    if config.input_shape is None or config.num_classes is None:
        raise ValueError("build_trainer needs config.input_shape and config.num_classes (use train() or "
                         "dataclasses.replace(config, input_shape=..., num_classes=...))")
    from defenses import build_defense  # defenses registers its factories on import
    from defenses.base import combine

    key = jax.random.key(config.seed)
    model = make_model(config.model, key=jax.random.fold_in(key, 0), input_shape=config.input_shape,
                       num_classes=config.num_classes, **config.model_kwargs)
    from workbench.models import MODELS
    sm = split(model, config.cut if config.cut is not None else MODELS[config.model].default_cut)
    built = [build_defense(s) for s in config.defenses]
    for d in built:
        if d.binary_labels and config.num_classes != 2:
            raise ValueError(f"defense {d.name!r} is defined for binary tasks (labels 0/1), but the model has "
                             f"{config.num_classes} classes: use a binary task (e.g. li2022's shirt-vs-rest)")
    parts = combine(built)
    opt = OPTIMIZERS[config.optimizer]
    return SplitTrainer(
        sm, opt(config.client_lr), opt(config.server_lr),
        wire=Wire(parts["forward"], parts["backward"], parts["inference"]),
        loss_terms=parts["loss_terms"], privatizer=parts["privatizer"])


@dataclass
class FitResult:
    state: SplitState
    history: list[dict]
    taps: list[Tap]


def fit(trainer: SplitTrainer, x_train, y_train, *, epochs: int, batch_size: int, key: jax.Array,
        x_test=None, y_test=None, tap_steps: tuple[int, ...] = (), state: SplitState | None = None,
        progress: bool = False) -> FitResult:
    """Trains for ``epochs``; the per-epoch key is ``fold_in(key, epoch)``.

    ``tap_steps`` are global step indices at which what crossed the wire is recorded.
    """
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
    n = x_train.shape[0]
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
    steps = n // batch_size
    taps_sorted = tuple(sorted({int(s) for s in tap_steps}))
    if taps_sorted and (taps_sorted[0] < 0 or taps_sorted[-1] >= epochs * steps):
        raise ValueError(f"tap_steps must lie in 0..{epochs * steps - 1} ({epochs} epochs x {steps} steps)")
    state = trainer.init() if state is None else state
    traffic = trainer.traffic(batch_size).scale(steps)
    history, taps = [], []
    bar = Progress(epochs, "train", enabled=progress)
    for e in range(epochs):
        start = int(state.step)
        local = tuple(s - start for s in taps_sorted if start <= s < start + steps)
        t0 = time.perf_counter()
        state, metrics, tap = trainer.epoch(state, x_train, y_train, key=jax.random.fold_in(key, e),
                                            batch_size=batch_size, tap_local=local)
        jax.block_until_ready(state)
        seconds = time.perf_counter() - t0
        if tap is not None:
            taps.append(tap._replace(steps=tap.steps + start))
        rec = {"epoch": e + 1, "steps": steps, "train_loss": float(metrics.loss.mean()),
               "train_accuracy": float(metrics.accuracy.mean()), "client_reg": float(metrics.client_reg.mean()),
               "seconds": seconds, "images_per_second": steps * batch_size / seconds, **traffic.as_dict()}
        if x_test is not None:
            ev = trainer.evaluate(state.params, x_test, y_test)
            rec.update(test_loss=ev["loss"], test_accuracy=ev["accuracy"])
        history.append(rec)
        bar.update(1, f"loss {rec['train_loss']:.3f}" + (f" test acc {rec['test_accuracy']:.3f}" if x_test is not None else ""))
    return FitResult(state, history, taps)


@dataclass
class Run:
    config: TrainConfig
    trainer: SplitTrainer
    state: SplitState
    metrics: dict
    path: Path | None = None


def prepare(config: TrainConfig, *, root: str | None = None):
    """Loads the data and builds the trainer: every configuration error surfaces here,
    before any training. Returns ``(config with shapes filled in, trainer, dataset)``."""
    from workbench.data import load

    ds = load(config.data, root=root)
    config = dataclasses.replace(config, input_shape=ds.input_shape, num_classes=ds.num_classes)
    return config, build_trainer(config), ds


def train(config: TrainConfig, *, root: str | None = None, progress: bool = False, prepared=None) -> Run:
    """Loads the data, builds the trainer, fits it and evaluates it on the test split."""
    config, trainer, ds = prepared if prepared is not None else prepare(config, root=root)
    result = fit(trainer, ds.x_train, ds.y_train, epochs=config.epochs, batch_size=config.batch_size,
                 key=jax.random.fold_in(jax.random.key(config.seed), 1), x_test=ds.x_test, y_test=ds.y_test,
                 progress=progress)
    sm = trainer.model
    metrics = {"history": result.history, "final": result.history[-1], "split": sm.summary(),
               "dataset": {"name": ds.name, "train": int(ds.x_train.shape[0]), "test": int(ds.x_test.shape[0])}}
    return Run(config, trainer, result.state, metrics)


def _leaves(state: SplitState) -> dict[str, np.ndarray]:
    leaves = jax.tree.leaves(state)
    return {f"leaf{i:05d}": np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for i, x in enumerate(leaves)}


def save_run(run: Run, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Writes ``config.json``, ``metrics.json`` and ``state.npz`` to ``path`` atomically
    (a temporary folder beside it, then one rename): a crash leaves no half-written run.
    With ``overwrite`` an existing run folder is replaced only once the new one is complete."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"run folder {path} already exists; choose another --out, remove it, "
                              "or pass --overwrite")
    if path.exists() and not (path / "config.json").is_file():
        raise FileExistsError(f"{path} exists and is not a run folder; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(run.config.to_json(), indent=2))
        (tmp / "metrics.json").write_text(json.dumps(run.metrics, indent=2))
        np.savez(tmp / "state.npz", **_leaves(run.state))
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "run")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    run.path = path
    return path


def load_run(path: str | os.PathLike) -> Run:
    """Reads a run folder written by ``save_run``: the trainer is rebuilt from the config and
    the saved parameters and optimizer states are put back in it."""
    path = Path(path)
    for f in ("config.json", "metrics.json", "state.npz"):
        if not (path / f).is_file():
            raise FileNotFoundError(f"{path} is not a run folder: {f} is missing (runs are written by "
                                    "`split-workbench train --out DIR`)")
    config = TrainConfig.from_json(json.loads((path / "config.json").read_text()))
    trainer = build_trainer(config)
    template = trainer.init()
    flat, treedef = jax.tree.flatten(template)
    with np.load(path / "state.npz") as z:
        saved = [z[f"leaf{i:05d}"] for i in range(len(z.files))]
    if len(saved) != len(flat) or any(np.shape(a) != np.shape(b) for a, b in zip(saved, flat)):
        raise ValueError(f"{path}/state.npz does not match the model its config describes "
                         f"({len(saved)} arrays saved, {len(flat)} expected)")
    restored = [jax.random.wrap_key_data(jnp.asarray(s)) if jnp.issubdtype(t.dtype, jax.dtypes.prng_key)
                else jnp.asarray(s, t.dtype) for s, t in zip(saved, flat)]
    state = jax.tree.unflatten(treedef, restored)
    return Run(config, trainer, state, json.loads((path / "metrics.json").read_text()), path)
