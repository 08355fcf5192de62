"""Runs one ExperimentSpec: data -> training -> observation -> attacks -> scored record."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.image import imsave

from split_workbench import metrics
from split_workbench.attacks import build_attack
from split_workbench.attacks.base import OBSERVATION_FIELDS
from split_workbench.data import load, split_aux
from split_workbench.defenses import build_defense
from split_workbench.models import MODELS
from split_workbench.observation import observe
from split_workbench.orchestration.experiment import ExperimentSpec, package_versions, record_path
from split_workbench.orchestration.runs import TrainConfig, build_trainer
from split_workbench.training import fit

__all__ = ["Prepared", "prepare", "train_stage", "training_hash", "shares_training", "observation", "evaluate_stage",
           "run_experiment", "write_record", "NOT_TRAINING_FIELDS", "clear_training_cache"]


@dataclasses.dataclass
class Prepared:
    spec: ExperimentSpec
    trainer: Any
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    aux_x: np.ndarray
    aux_y: np.ndarray
    num_classes: int
    dataset_size: int


def prepare(spec: ExperimentSpec) -> Prepared:
    """Validates the spec, loads the data, carves the attacker's auxiliary set out of the
    training set (disjoint from the private data) and builds the trainer."""

    spec.validate()
    key = jax.random.key(spec.seed)
    ds = load(spec.data)
    if spec.aux_size >= ds.num_train:
        raise ValueError(f"aux_size {spec.aux_size} leaves no private training data ({ds.num_train} examples)")
    private, aux = split_aux(ds, aux_size=spec.aux_size, key=jax.random.fold_in(key, 2))
    x, y = private.x_train, private.y_train
    # Loaders may keep examples ordered by class (mnist10k, lfw-subset): a prefix would hold
    # one or two classes, so train_size and the targets take a prefix of a seeded shuffle.
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 4), x.shape[0]))
    if spec.train_size is not None:
        perm = perm[: spec.train_size]  # gather only the prefix: a sweep holds one copy per run
    x, y = x[perm], y[perm]
    if spec.targets > x.shape[0]:
        raise ValueError(f"targets {spec.targets} exceeds the {x.shape[0]} private training examples")
    config = TrainConfig(data=spec.data, model=spec.model,
                         cut=spec.cut if spec.cut is not None else MODELS[spec.model].default_cut,
                         epochs=spec.epochs, batch_size=spec.batch_size, client_lr=spec.lr, server_lr=spec.lr,
                         optimizer=spec.optimizer, seed=spec.seed, defenses=spec.defenses,
                         model_kwargs=dict(spec.model_kwargs), input_shape=ds.input_shape,
                         num_classes=ds.num_classes)
    return Prepared(spec, build_trainer(config), x, y, ds.x_test, ds.y_test, aux.x_train, aux.y_train,
                    ds.num_classes, int(x.shape[0]))


# Spec fields that training does not read: specs differing only in these train the same model.
NOT_TRAINING_FIELDS = ("observe", "attacks", "targets", "delta")
_LAST_TRAINED: dict[str, Any] = {}  # training hash -> FitResult; only the last one is kept


def training_hash(spec: ExperimentSpec) -> str:
    """Hash of the fields that decide the trained model (``spec.hash()`` without
    ``NOT_TRAINING_FIELDS``)."""

    d = {k: v for k, v in spec.to_dict().items() if k not in NOT_TRAINING_FIELDS}
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def clear_training_cache() -> None:
    """Forget the last trained model (the next run trains from scratch)."""
    _LAST_TRAINED.clear()


def shares_training(spec: ExperimentSpec) -> bool:
    """Whether ``train_stage`` will reuse the model trained for the previous spec (same
    training fields, e.g. the same model attacked under another threat model)."""
    return training_hash(spec) in _LAST_TRAINED


def train_stage(p: Prepared, *, progress: bool = False):
    """Trains the spec's model. The last trained model is kept in memory: a spec that differs
    from the previous one only in ``NOT_TRAINING_FIELDS`` reuses it (training is
    deterministic given those fields, so the result is the same)."""

    h = training_hash(p.spec)
    if h in _LAST_TRAINED:
        return _LAST_TRAINED[h]
    fitted = fit(p.trainer, p.x_train, p.y_train, epochs=p.spec.epochs, batch_size=p.spec.batch_size,
                 key=jax.random.fold_in(jax.random.key(p.spec.seed), 1), progress=progress)
    _LAST_TRAINED.clear()
    _LAST_TRAINED[h] = fitted
    return fitted


def observation(p: Prepared, state, key):
    """Everything any adversary could be granted on the spec's targets (the first private
    training examples, in the seeded shuffle of ``prepare``), through the wire the spec observes; each attack then gets
    ``.only(attack.needs)``. Returns ``(observation, x_targets, y_targets)``."""

    n = p.spec.targets
    x_t, y_t = jnp.asarray(p.x_train[:n]), jnp.asarray(p.y_train[:n])
    obs = observe(p.trainer, state.params, x_t, y_t, grants=set(OBSERVATION_FIELDS) - {"input_shape"},
                  aux=(p.aux_x, p.aux_y), key=key, wire=p.spec.observe)
    return obs, x_t, y_t


def _score_inversion(recon, x_true) -> dict:
    ssim = np.asarray(metrics.ssim(recon, x_true))
    psnr = np.asarray(metrics.psnr(recon, x_true))
    mse = np.asarray(metrics.mse(recon, x_true))
    return {"ssim_mean": float(ssim.mean()), "psnr_mean": float(np.mean(np.minimum(psnr, 100.0))),
            "mse_mean": float(mse.mean()), "ssim": ssim.tolist(), "psnr": np.minimum(psnr, 100.0).tolist(),
            "mse": mse.tolist()}


def _score_label(output, y_true, num_classes) -> dict:
    out = np.asarray(output)
    if out.ndim == 1 and np.issubdtype(out.dtype, np.floating):
        if num_classes == 2:
            return {"auc": float(metrics.roc_auc(jnp.asarray(out), jnp.asarray(y_true)))}
        return {"auc": None, "note": "leak AUC needs a binary task"}
    return {"label_accuracy": float(np.mean(out.reshape(-1) == np.asarray(y_true).reshape(-1)))}


def evaluate_stage(p: Prepared, state, history: list[dict], *, timings: dict) -> tuple[dict, dict]:
    """Accuracy, dCor, privacy accounting and every attack; returns (record, reconstructions)."""

    spec, trainer = p.spec, p.trainer
    key = jax.random.fold_in(jax.random.key(spec.seed), 3)
    t0 = time.perf_counter()
    ev = trainer.evaluate(state.params, p.x_test, p.y_test)
    obs, x_t, y_t = observation(p, state, jax.random.fold_in(key, 0))
    n_dcor = min(256, p.x_train.shape[0])
    xd = jnp.asarray(p.x_train[:n_dcor])
    z_clean = trainer.model.client.apply(state.params["client"], xd)
    dcor = float(metrics.distance_correlation(xd, z_clean))
    dcor_sq = float(metrics.distance_correlation_squared_distances(xd, z_clean))  # Titcombe et al.'s variant
    timings["evaluate"] = time.perf_counter() - t0

    steps = spec.epochs * (p.dataset_size // spec.batch_size)
    privacy = []
    for d_spec in spec.defenses:
        d = build_defense(d_spec)
        entry = {"defense": d.name, "guarantee": d.guarantee}
        if d.accountant is not None:
            entry.update(d.accountant(steps=steps, batch_size=spec.batch_size, dataset_size=p.dataset_size,
                                      delta=spec.delta))
        privacy.append(entry)

    attacks, recons = {}, {}
    for i, a_spec in enumerate(spec.attacks):
        attack = build_attack(a_spec)
        t0 = time.perf_counter()
        result = attack(obs.only(attack.needs), key=jax.random.fold_in(key, 10 + i))
        out = jax.block_until_ready(result.output)
        seconds = time.perf_counter() - t0
        timings[f"attack:{a_spec}"] = seconds
        if attack.kind == "inversion":
            scores = _score_inversion(out, x_t)
            recons[a_spec] = np.asarray(out)
        else:
            scores = _score_label(out, y_t, p.num_classes)
        stats = {k: v for k, v in result.stats.items() if isinstance(v, (int, float, str, bool))}
        attacks[a_spec] = {"kind": attack.kind, "needs": sorted(attack.needs), "seconds": seconds, **scores,
                           "stats": stats}

    final = history[-1]
    record = {
        "spec": spec.to_dict(), "hash": spec.hash(),
        "metrics": {"test_accuracy": ev["accuracy"], "test_loss": ev["loss"],
                    "train_loss": final["train_loss"], "train_accuracy": final["train_accuracy"],
                    "dcor_input_smash": dcor, "dcor_input_smash_squared": dcor_sq,
                    "dcor_examples": n_dcor},
        "history": history,
        "bytes_per_epoch": {k: final[k] for k in ("forward_bytes", "backward_bytes", "label_bytes")},
        "split": trainer.model.summary(),
        "privacy": privacy,
        "attacks": attacks,
        "timings": timings,
        "versions": package_versions(),
    }
    return record, {"original": np.asarray(x_t), **recons}


def _grid_png(images: dict[str, np.ndarray], path: Path, columns: int = 8) -> None:

    rows = []
    for x in images.values():
        x = np.clip(np.asarray(x[:columns], np.float32), 0, 1)
        x = x[..., 0] if x.shape[-1] == 1 else x
        pad = [(0, 0), (1, 1), (1, 1)] + ([(0, 0)] if x.ndim == 4 else [])
        x = np.pad(x, pad, constant_values=1.0)
        rows.append(np.concatenate(list(x), axis=1))
    grid = np.concatenate(rows, axis=0)
    imsave(path, grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1)


def write_record(out_dir: str | os.PathLike, record: dict, images: dict[str, np.ndarray]) -> Path:
    """Writes ``<out>/<hash>/`` atomically: a temporary folder, completed, then renamed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / record["hash"]
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{record['hash']}-", dir=out_dir))
    try:
        np.savez_compressed(tmp / "reconstructions.npz", **{k.replace("/", "_"): v for k, v in images.items()})
        record = {**record, "reconstructions": {"png": "reconstructions.png", "rows": list(images)}}
        _grid_png(images, tmp / "reconstructions.png")
        (tmp / "result.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        if final.exists():  # a concurrent or earlier run finished the same spec first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / "result.json"


def run_experiment(spec: ExperimentSpec, out_dir: str | os.PathLike | None = None, *,
                   progress: bool = False) -> dict:
    """Runs ``spec`` end to end; with ``out_dir`` the record is written (and a finished one reused)."""
    if out_dir is not None and record_path(out_dir, spec).is_file():
        return json.loads(record_path(out_dir, spec).read_text())
    timings = {}
    t0 = time.perf_counter()
    p = prepare(spec)
    timings["prepare"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    shared = shares_training(spec)
    fitted = train_stage(p, progress=progress)
    timings["train"] = time.perf_counter() - t0
    if shared:
        timings["train_path"] = "reused: the previous run trained the same model (differs only in " \
                                f"{', '.join(NOT_TRAINING_FIELDS)})"
    record, images = evaluate_stage(p, fitted.state, fitted.history, timings=timings)
    if out_dir is not None:
        write_record(out_dir, record, images)
    return record
