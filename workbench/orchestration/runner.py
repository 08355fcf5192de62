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
from split_workbench.attacks.evaluate import PSNR_CLIP, score_inversion, score_labels
from split_workbench.data import load, split_aux
from split_workbench.defenses.base import combine
from split_workbench.models import make_model
from split_workbench.observation import OBSERVATION_FIELDS, observe
from split_workbench.parties import bind_data, needs_data
from split_workbench.orchestration.checkpoint import save_state
from split_workbench.orchestration.experiment import Built, ExperimentSpec, SpecError, package_versions, record_path
from split_workbench.protocol import SplitTrainer
from split_workbench.split import split
from split_workbench.topology import TopologyParts, TopologyTrainer
from split_workbench.training import OPTIMIZERS, fit
from split_workbench.wire import Wire

__all__ = ["Prepared", "prepare", "build_trainer", "train_stage", "training_hash", "TrainedModels", "observation",
           "attack_stage", "evaluate_stage", "run_experiment", "write_record", "NOT_TRAINING_FIELDS", "CHECKPOINT",
           "SCORING", "PSNR_CLIP"]


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
    built: Built


def build_trainer(built: Built, input_shape: tuple[int, ...]) -> SplitTrainer:
    """The split trainer a built spec describes: the model initialised from ``fold_in(seed, 0)``
    and cut at the resolved cut, the defenses on the wire, the parties' strategies."""
    spec = built.spec
    model = make_model(spec.model, key=jax.random.fold_in(jax.random.key(spec.seed), 0), input_shape=input_shape,
                       num_classes=built.num_classes, **spec.model_kwargs)
    parts = combine(list(built.defenses))
    opt = OPTIMIZERS[spec.optimizer]
    return SplitTrainer(split(model, built.cut), opt(spec.lr), opt(spec.lr),
                        wire=Wire(parts["forward"], parts["backward"], parts["inference"]),
                        loss_terms=parts["loss_terms"], privatizer=parts["privatizer"],
                        server=built.server, client=built.client)


def build_topology_trainer(built: Built, input_shape: tuple[int, ...], y_train) -> TopologyTrainer:
    """The topology a built spec names, ready to train: the spec's model (initialised from
    ``fold_in(seed, 0)`` as in vanilla), its defenses on the topology's wire(s), and the
    clients' shares of the private training set (partitioned with ``fold_in(seed, 5)``)."""
    spec = built.spec
    seed = jax.random.key(spec.seed)
    parts = combine(list(built.defenses))
    opt = OPTIMIZERS[spec.optimizer]

    def make(*, key, input_shape):
        return make_model(spec.model, key=key, input_shape=input_shape, num_classes=built.num_classes,
                          **spec.model_kwargs)

    return built.topology.build(
        make, built.cut, TopologyParts(opt(spec.lr), opt(spec.lr), Wire(parts["forward"], parts["backward"],
                                                                         parts["inference"]),
                                       parts["loss_terms"], parts["privatizer"], built.server, built.client),
        input_shape=tuple(input_shape), num_classes=built.num_classes, labels=y_train, clients=spec.clients,
        alpha=built.alpha, batch_size=spec.batch_size, model_key=jax.random.fold_in(seed, 0),
        partition_key=jax.random.fold_in(seed, 5))


def _vanilla(p: "Prepared") -> bool:
    return p.built.topology.name == "vanilla"


def prepare(spec: ExperimentSpec | Built) -> Prepared:
    """Builds the spec (once: pass a ``Built`` to skip it), loads the data, carves the
    attacker's auxiliary set out of the training set (disjoint from the private data) and
    builds the trainer."""
    built = spec if isinstance(spec, Built) else spec.build()
    spec = built.spec
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
    # Parties that hold data get theirs: a server its public set (the attacker's auxiliary
    # data), a client its own training set (a detector's calibration).
    bound = {}
    for side, party in (("server", built.server), ("client", built.client)):
        which = needs_data(party)
        if which is not None:
            try:
                bound[side] = bind_data(party, *((aux.x_train, aux.y_train) if which == "aux" else (x, y)))
            except ValueError as e:
                raise SpecError(f"field {side!r}: {e}") from None
    if bound:
        built = dataclasses.replace(built, **bound)
    trainer = (build_trainer(built, ds.input_shape) if built.topology.name == "vanilla"
               else build_topology_trainer(built, ds.input_shape, y))
    return Prepared(spec, trainer, x, y, ds.x_test, ds.y_test, aux.x_train,
                    aux.y_train, ds.num_classes, int(x.shape[0]), built)


# The run folder's subfolder that holds the trained state (orbax-checkpoint).
CHECKPOINT = "checkpoint"

# Spec fields that training does not read: specs differing only in these train the same model
# (unless a party is active: then the adversary is part of training).
NOT_TRAINING_FIELDS = ("observe", "attacks", "targets", "delta")


def training_hash(spec: ExperimentSpec) -> str:
    """Hash of the fields that decide the trained model (``spec.hash()`` without
    ``NOT_TRAINING_FIELDS``)."""
    d = {k: v for k, v in spec.to_dict().items() if k not in NOT_TRAINING_FIELDS}
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


class TrainedModels:
    """The last trained model, for the next run to reuse when it trains the same model.

    A sweep (or a notebook) owns one and passes it to ``run_experiment``; nothing is kept
    between calls without it. A run with an active party (a malicious server, a detecting
    client) neither reuses a model nor offers its own: its adversary is part of training.
    """

    def __init__(self):
        self._last: tuple[str, Any] | None = None

    def get(self, p: Prepared):
        if p.trainer.active or self._last is None or self._last[0] != training_hash(p.spec):
            return None
        return self._last[1]

    def put(self, p: Prepared, fitted) -> None:
        self._last = None if p.trainer.active else (training_hash(p.spec), fitted)

    def clear(self) -> None:
        self._last = None


def train_stage(p: Prepared, *, progress: bool = False, cache: TrainedModels | None = None):
    """Trains the spec's model; with ``cache``, a model trained for the previous spec is
    reused when the two differ only in ``NOT_TRAINING_FIELDS`` and no party is active
    (training is deterministic given the other fields, so the result is the same)."""
    fitted = cache.get(p) if cache is not None else None
    if fitted is not None:
        return fitted
    key = jax.random.fold_in(jax.random.key(p.spec.seed), 1)
    if _vanilla(p):
        fitted = fit(p.trainer, p.x_train, p.y_train, epochs=p.spec.epochs, batch_size=p.spec.batch_size,
                     key=key, progress=progress)
    else:  # a topology (clients, cuts, parties): its own loop, the same history keys
        fitted = p.trainer.fit(p.x_train, p.y_train, epochs=p.spec.epochs, key=key, x_test=p.x_test, y_test=p.y_test)
    if cache is not None:
        cache.put(p, fitted)
    return fitted


def observation(p: Prepared, state, key):
    """Everything any adversary could be granted on the spec's targets (the first private
    training examples, in the seeded shuffle of ``prepare``), through the wire the spec observes; each attack then gets
    ``.only(attack.needs)``. Returns ``(observation, x_targets, y_targets)``.

    With K clients the targets are client 0's first private examples and the observation is
    of client 0; what each topology lets the adversary observe, and the input a
    reconstruction is scored against (vertical: the whole input), is in
    ``split_workbench.topology.runtime``."""

    n = p.spec.targets
    if not _vanilla(p):
        x_t, y_t = p.trainer.targets(p.x_train, p.y_train, n)
        obs, x_scored = p.trainer.observe(state, x_t, y_t, grants=set(OBSERVATION_FIELDS) - {"input_shape"},
                                          aux=(p.aux_x, p.aux_y), key=key, wire=p.spec.observe)
        return obs, x_scored, y_t
    x_t, y_t = jnp.asarray(p.x_train[:n]), jnp.asarray(p.y_train[:n])
    obs = observe(p.trainer, state.params, x_t, y_t, grants=set(OBSERVATION_FIELDS) - {"input_shape"},
                  aux=(p.aux_x, p.aux_y), key=key, wire=p.spec.observe, parties=state.parties)
    return obs, x_t, y_t



SCORING = """Scoring (the same for `run`, `sweep` and `attack`): the targets are the spec's first
`targets` private training examples (in the seeded shuffle of `prepare`, never the test
set; with K clients, client 0's); the observation is what one more training step on them
carries across the wire at the trained parameters (`observe="inference"`: the
inference-time smash). Inversion
attacks: `ssim_mean`, `psnr_mean` (dB, each image's PSNR capped at 100), `mse_mean`, and
the per-image lists `ssim`, `psnr`, `mse` (SSIM as scikit-image's defaults, data_range 1).
Label attacks: `auc` of a score output against the labels (binary tasks; null with a note
otherwise), or `label_accuracy` of an integer-label output. Every attack also records
`kind`, `needs`, `seconds` and its scalar `stats`. Attack i of a run uses the key
fold_in(fold_in(key(seed), 3), 10 + i); `attack` reruns an attack of the run's spec at its
index (so it scores as the record does) and gives new ones the next indices."""


def attack_stage(p: Prepared, state, attacks, *, timings: dict) -> tuple[dict, dict]:
    """Observation -> attacks -> scores: the one scoring path of ``run``, ``sweep`` and ``attack``.

    Args:
      p: the prepared spec (its targets, wire and data).
      state: the trained state (its parameters and the parties' states).
      attacks: ``(spec string, built attack, index)`` triples; attack ``index`` draws the key
        ``fold_in(fold_in(key(seed), 3), 10 + index)``, so an attack at index i of the spec
        scores the same wherever it runs.
      timings: ``attack:<spec>`` seconds are added to it.

    Returns:
      ``({spec: scores}, {"original": targets, spec: reconstruction, ...})``; the scores are
      described in ``SCORING``.
    """
    key = jax.random.fold_in(jax.random.key(p.spec.seed), 3)
    obs, x_t, y_t = observation(p, state, jax.random.fold_in(key, 0))
    results, recons = {}, {}
    for a_spec, attack, i in attacks:
        t0 = time.perf_counter()
        result = attack(obs.only(attack.needs), key=jax.random.fold_in(key, 10 + i))
        out = jax.block_until_ready(result.output)
        seconds = time.perf_counter() - t0
        timings[f"attack:{a_spec}"] = seconds
        if attack.kind == "inversion":
            scores = score_inversion(out, x_t)
            recons[a_spec] = np.asarray(out)
        else:
            scores = score_labels(out, y_t, positive=1 if p.num_classes == 2 else None)
        stats = {k: v for k, v in result.stats.items() if isinstance(v, (int, float, str, bool))}
        results[a_spec] = {"kind": attack.kind, "needs": sorted(attack.needs), "seconds": seconds, **scores,
                           "stats": stats}
    return results, {"original": np.asarray(x_t), **recons}


def evaluate_stage(p: Prepared, state, history: list[dict], *, timings: dict) -> tuple[dict, dict]:
    """Accuracy, dCor, privacy accounting and every attack (``attack_stage``); returns
    (record, reconstructions)."""

    spec, trainer = p.spec, p.trainer
    t0 = time.perf_counter()
    vanilla = _vanilla(p)
    ev = trainer.evaluate(state.params if vanilla else state, p.x_test, p.y_test)
    n_dcor = min(256, p.x_train.shape[0])
    xd = jnp.asarray(p.x_train[:n_dcor])
    z_clean = trainer.model.client.apply(state.params["client"], xd) if vanilla else trainer.clean_smash(state, xd)
    dcor = float(metrics.distance_correlation(xd, z_clean))
    dcor_sq = float(metrics.distance_correlation_squared_distances(xd, z_clean))  # Titcombe et al.'s variant
    timings["evaluate"] = time.perf_counter() - t0

    # The guarantee is the attacked client's: with K clients, over its own examples and steps.
    private = p.dataset_size if vanilla else trainer.private_examples(p.dataset_size)
    steps = spec.epochs * (private // spec.batch_size)
    built = p.built
    privacy = []
    for d in built.defenses:
        entry = {"defense": d.name, "guarantee": d.guarantee}
        if d.accountant is not None:
            entry.update(d.accountant(steps=steps, batch_size=spec.batch_size, dataset_size=private,
                                      delta=spec.delta))
        privacy.append(entry)

    attacks, images = attack_stage(p, state, [(s, a, i) for i, (s, a) in enumerate(zip(spec.attacks, built.attacks))],
                                   timings=timings)

    final = history[-1]
    record = {
        "spec": spec.to_dict(), "hash": spec.hash(),
        "metrics": {"test_accuracy": ev["accuracy"], "test_loss": ev["loss"],
                    "train_loss": final["train_loss"], "train_accuracy": final["train_accuracy"],
                    "dcor_input_smash": dcor, "dcor_input_smash_squared": dcor_sq,
                    "dcor_examples": n_dcor},
        "history": history,
        "bytes_per_epoch": {k: final[k] for k in ("forward_bytes", "backward_bytes", "label_bytes")},
        "split": trainer.model.summary() if vanilla else trainer.summary(),
        "privacy": privacy,
        "attacks": attacks,
        "timings": timings,
        "versions": package_versions(),
    }
    if not vanilla:
        record["topology"] = trainer.describe()
    return record, images


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


def write_record(out_dir: str | os.PathLike, record: dict, images: dict[str, np.ndarray], state=None) -> Path:
    """Writes ``<out>/<hash>/`` atomically: a temporary folder, completed, then renamed.

    The folder holds ``result.json`` (the record, its spec included), the reconstructions
    and, given the trained ``state``, ``checkpoint/``: both halves' parameters and optimizer
    states (and the wire's and parties' states) under their real names (``checkpoint.py``),
    which ``load_run`` restores. The checkpoint adds the field ``checkpoint`` to the record
    and changes no other."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / record["hash"]
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{record['hash']}-", dir=out_dir))
    try:
        if state is not None:
            save_state(state, tmp / CHECKPOINT)
            record = {**record, "checkpoint": CHECKPOINT}
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


def run_experiment(spec: ExperimentSpec | Built | Prepared, out_dir: str | os.PathLike | None = None, *,
                   progress: bool = False, cache: TrainedModels | None = None) -> dict:
    """Runs ``spec`` end to end; with ``out_dir`` the run folder (record and checkpoint) is
    written (and a finished one reused); with ``cache`` a model trained for the previous spec
    may be reused. A ``Built`` or ``Prepared`` spec is not built or prepared again."""
    plain = spec.spec if isinstance(spec, (Built, Prepared)) else spec
    if out_dir is not None and record_path(out_dir, plain).is_file():
        return json.loads(record_path(out_dir, plain).read_text())
    timings = {}
    t0 = time.perf_counter()
    p = spec if isinstance(spec, Prepared) else prepare(spec)
    timings["prepare"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    shared = cache is not None and cache.get(p) is not None
    fitted = train_stage(p, progress=progress, cache=cache)
    timings["train"] = time.perf_counter() - t0
    if shared:
        timings["train_path"] = "reused: the previous run trained the same model (differs only in " \
                                f"{', '.join(NOT_TRAINING_FIELDS)})"
    record, images = evaluate_stage(p, fitted.state, fitted.history, timings=timings)
    if out_dir is not None:
        write_record(out_dir, record, images, fitted.state)
    return record
