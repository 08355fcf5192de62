"""Train-only runs: a ``TrainConfig`` -> a trained split model, saved to a run folder.

A run folder holds the configuration, the metrics and both halves' parameters and
optimizer states, written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from split_workbench.data import load
from split_workbench.defenses import build_defense
from split_workbench.defenses.base import combine
from split_workbench.models import MODELS, make_model
from split_workbench.protocol import SplitState, SplitTrainer
from split_workbench.split import split
from split_workbench.training import OPTIMIZERS, fit
from split_workbench.wire import Wire

__all__ = ["TrainConfig", "Run", "build_trainer", "prepare", "save_run", "load_run", "train"]


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


def build_trainer(config: TrainConfig) -> SplitTrainer:
    """The trainer a config describes (``input_shape``/``num_classes`` must be set)."""
    if config.input_shape is None or config.num_classes is None:
        raise ValueError("build_trainer needs config.input_shape and config.num_classes (use train() or "
                         "dataclasses.replace(config, input_shape=..., num_classes=...))")
    key = jax.random.key(config.seed)
    model = make_model(config.model, key=jax.random.fold_in(key, 0), input_shape=config.input_shape,
                       num_classes=config.num_classes, **config.model_kwargs)
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
class Run:
    config: TrainConfig
    trainer: SplitTrainer
    state: SplitState
    metrics: dict
    path: Path | None = None


def prepare(config: TrainConfig, *, root: str | None = None):
    """Loads the data and builds the trainer: every configuration error surfaces here,
    before any training. Returns ``(config with shapes filled in, trainer, dataset)``."""
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
