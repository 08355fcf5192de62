"""Experiments: a frozen, serialisable spec -> one run -> one result record, written atomically.

A run trains the split model with the spec's defenses, builds what the server observes,
hands each attack exactly the fields its threat model grants, scores the reconstructions
against the private inputs, and writes ``<out>/<hash>/result.json`` (plus a
reconstruction grid and ``checkpoint/``, the trained state saved with orbax under its real
names) by renaming a finished temporary folder: a run folder either holds a complete
record or does not exist. ``run_folder.load_run`` reads one back; ``split-workbench attack``
attacks it again with the same scoring (``runner.SCORING``).

What the attacker observes: the attack targets are private training examples; the
observation is what one more training step on them carries across the wire (the smash
after the client's training-time defenses, their labels, the cut gradients after the
server's defenses), computed with the trained parameters. With ``observe="inference"``
the smash goes through the inference-time transforms instead (collaborative inference).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import platform
import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import flax
import jax
import numpy as np
import optax
import skimage

from split_workbench.attacks import ATTACKS
from split_workbench.data import list_datasets
from split_workbench.defenses import DEFENSES
from split_workbench.models import MODELS, make_model
from split_workbench.parties import CLIENTS, SERVERS, ClientStrategy, ServerStrategy, needs_data
from split_workbench.registry import SpecError
from split_workbench.split import _resolve_cut
from split_workbench.topology import PARTITIONS, TOPOLOGIES, Topology, Vanilla

__all__ = ["ExperimentSpec", "Built", "SpecError", "load_spec", "record_path", "package_versions"]

OBSERVE = ("train", "inference")


@dataclass(frozen=True)
class ExperimentSpec:
    """Everything that defines one experiment; its hash names the run."""

    data: str = "digits"
    model: str = "mlp"
    cut: str | int | None = None
    model_kwargs: dict = field(default_factory=dict)
    topology: str = "vanilla"
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    train_size: int | None = None
    aux_size: int = 200
    targets: int = 16
    observe: str = "train"
    defenses: tuple[str, ...] = ()
    attacks: tuple[str, ...] = ("rmle",)
    seed: int = 0
    delta: float = 1e-5
    server: str = "honest"
    client: str = "honest"
    clients: int = 1
    partition: str = "iid"

    def __post_init__(self):
        for name in ("defenses", "attacks"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))

    # ------------------------------------------------------------ identity
    def to_dict(self) -> dict:
        """The spec as plain data; fields added after records existed are left out at their
        default, so a spec's hash (its run's name) does not change when fields are added."""
        d = dataclasses.asdict(self)
        d["defenses"], d["attacks"] = list(self.defenses), list(self.attacks)
        return {k: v for k, v in d.items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}

    def hash(self) -> str:
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "spec") -> "ExperimentSpec":
        if not isinstance(d, dict):
            raise SpecError(f"{source}: an experiment spec is a table of fields, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(f"{source}: unknown field(s) {unknown}; fields: {sorted(known)}")
        return cls(**d)

    def with_overrides(self, assignments: list[str]) -> "ExperimentSpec":
        """Applies ``field=value`` overrides (``--set``); ``defense=X``/``attack=X`` set one-element lists."""
        d = self.to_dict()
        for a in assignments:
            if "=" not in a:
                raise SpecError(f"override {a!r} must look like field=value, e.g. epochs=5 or defense=nopeek(alpha=1.0)")
            k, v = a.split("=", 1)
            k = k.strip()
            alias = {"defense": "defenses", "attack": "attacks"}.get(k)
            if alias:
                d[alias] = [] if v.strip() in ("", "none") else [v.strip()]
                continue
            if k not in {f.name for f in dataclasses.fields(ExperimentSpec)}:
                raise SpecError(f"override {a!r}: unknown field {k!r}; fields: {sorted(d)}")
            d[k] = _literal(v)
        return ExperimentSpec.from_dict(d, source="--set")

    def to_toml(self) -> str:
        lines = []
        for k, v in self.to_dict().items():
            if v is None:
                continue
            lines.append(f"{k} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------ validation
    def validate(self) -> "ExperimentSpec":
        """Checks every field before any work; a bad one raises SpecError naming it."""
        self.build()
        return self

    def build(self) -> "Built":
        """Checks every field and builds what the spec names (the defenses, attacks and
        parties, the resolved cut), before any data is loaded: a bad field raises SpecError
        naming it. The rest of the pipeline receives the ``Built``, not the strings."""
        ints = {"epochs": 1, "batch_size": 1, "aux_size": 1, "targets": 2, "seed": 0}
        for name, lo in ints.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise SpecError(f"field {name!r} must be an integer >= {lo}, got {v!r}")
        if self.train_size is not None and (not isinstance(self.train_size, int) or self.train_size < self.batch_size):
            raise SpecError(f"field 'train_size' must be null or an integer >= batch_size ({self.batch_size}), "
                            f"got {self.train_size!r}")
        for name in ("lr", "delta"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise SpecError(f"field {name!r} must be a positive number, got {v!r}")
        if not self.delta < 1:
            raise SpecError(f"field 'delta' must be < 1, got {self.delta!r}")
        datasets = {d["name"]: d for d in list_datasets()}
        names = list(datasets)
        if self.data not in names:
            raise SpecError(f"field 'data': unknown dataset {self.data!r}; known: {names}")
        if self.model not in MODELS:
            raise SpecError(f"field 'model': unknown model {self.model!r}; known: {sorted(MODELS)}")
        if self.observe not in OBSERVE:
            raise SpecError(f"field 'observe': {self.observe!r} is not one of {OBSERVE}")
        if self.optimizer not in ("adam", "sgd"):
            raise SpecError(f"field 'optimizer': {self.optimizer!r} is not one of ('adam', 'sgd')")
        if not isinstance(self.model_kwargs, dict):
            raise SpecError(f"field 'model_kwargs' must be a table, got {self.model_kwargs!r}")
        cut = self.cut if self.cut is not None else MODELS[self.model].default_cut
        block_names = _model_names(self.model, self.model_kwargs)
        try:
            cut_name = block_names[_resolve_cut(block_names, cut) - 1]
        except (ValueError, TypeError) as e:
            raise SpecError(f"field 'cut': {e}") from None
        classes = datasets[self.data]["classes"]
        built = {}
        for reg, specs, fld in ((DEFENSES, self.defenses, "defenses"), (ATTACKS, self.attacks, "attacks")):
            built[fld] = []
            for s in specs:
                try:
                    obj = reg.build(s)  # factories check strengths (negative noise, bits < 1, ...)
                except (ValueError, TypeError) as e:
                    raise SpecError(f"field {fld!r}: {e}") from None
                if getattr(obj, "binary_labels", False) and classes != 2:
                    raise SpecError(f"field 'defenses': {s!r} is defined for binary tasks (labels 0/1), but "
                                    f"dataset {self.data!r} has {classes} classes; use it on a binary task "
                                    "(papers/li2022 relabels Fashion-MNIST shirt-vs-rest)")
                built[fld].append(obj)
        parties = {}
        for reg, fld, proto in ((SERVERS, "server", ServerStrategy), (CLIENTS, "client", ClientStrategy)):
            try:
                parties[fld] = reg.build(getattr(self, fld))
            except (ValueError, TypeError) as e:
                raise SpecError(f"field {fld!r}: {e}") from None
            if not isinstance(parties[fld], proto):
                raise SpecError(f"field {fld!r}: {getattr(self, fld)!r} does not build a {proto.__name__}")
        topology, alpha = self._build_topology(datasets[self.data], cut_name, built, parties)
        return Built(self, cut_name, classes, tuple(built["defenses"]), tuple(built["attacks"]),
                     parties["server"], parties["client"], topology, alpha)

    def _build_topology(self, dataset: dict, cut: str, built: dict, parties: dict) -> tuple[Topology, float | None]:
        """The topology and the partition's Dirichlet alpha (None: IID), checked against the
        clients, the model on the dataset's inputs, the defenses and the attacks."""
        for name, reg in (("topology", TOPOLOGIES), ("partition", PARTITIONS)):
            if not isinstance(getattr(self, name), str):
                raise SpecError(f"field {name!r} must be a spec string such as {reg.names()[0]!r}, "
                                f"got {getattr(self, name)!r}; known: {reg.names()}")
        if isinstance(self.clients, bool) or not isinstance(self.clients, int) or self.clients < 1:
            raise SpecError(f"field 'clients' must be an integer >= 1, got {self.clients!r}")
        try:
            topology = TOPOLOGIES.build(self.topology)
        except (ValueError, TypeError) as e:
            raise SpecError(f"field 'topology': {e}") from None
        try:
            alpha = PARTITIONS.build(self.partition)
        except (ValueError, TypeError) as e:
            raise SpecError(f"field 'partition': {e}") from None

        def make(*, key, input_shape):
            return make_model(self.model, key=key, input_shape=input_shape, num_classes=dataset["classes"],
                              **self.model_kwargs)

        privatizer = any(getattr(d, "privatizer", None) is not None for d in built["defenses"])
        honest = not (parties["server"].active or parties["client"].active or self.server != "honest"
                      or self.client != "honest")
        try:
            topology.check(make, cut, input_shape=tuple(dataset["shape"]), clients=self.clients, alpha=alpha,
                           privatizer=privatizer, honest=honest)
        except (ValueError, TypeError) as e:
            raise SpecError(f"field 'topology': {e}") from None
        # the run's length for the parties' checks: the training split's size is the first
        # number of the dataset's description ("60000 / 10000 (official)", "train 1200 / ...")
        found = re.search(r"\d+", str(dataset.get("splits", "")))
        steps = None
        if found:
            train = int(found.group()) - self.aux_size
            steps = (min(train, self.train_size) if self.train_size else train) // self.batch_size * self.epochs
        for side in ("server", "client"):
            party = parties[side]
            if needs_data(party) is not None and topology.name != "vanilla":
                raise SpecError(f"field {side!r}: {getattr(self, side)!r} holds its own data, which only the "
                                f"'vanilla' topology binds today; use topology='vanilla'")
            check = getattr(party, "check_run", None)
            if check is not None and steps is not None:
                try:
                    check(steps)  # e.g. a detector's window must fit in the run
                except ValueError as e:
                    raise SpecError(f"field {side!r}: {e}") from None
        for s, attack in zip(self.attacks, built["attacks"]):
            wants = getattr(attack, "requires_server", None)  # an attack that reads what a server party learnt
            if wants is not None and parties["server"].name != wants:
                raise SpecError(f"field 'attacks': {s!r} reads a trained {wants!r} server, but the spec's server is "
                                f"{self.server!r}; set server={wants!r} (with its arguments)")
            why = topology.refuse(frozenset(attack.needs))
            if why:
                raise SpecError(f"field 'attacks': {s!r} needs {sorted(attack.needs)}, but {why}")
        return topology, alpha


# Fields added after records existed, at the values that mean "as before": left out of
# ``to_dict`` (and so of the hash) at these values.
LATER_FIELDS = {"server": "honest", "client": "honest", "clients": 1, "partition": "iid"}


@dataclass(frozen=True)
class Built:
    """A validated spec and the objects it names, built once (``ExperimentSpec.build``).

    Attributes:
      spec: the spec.
      cut: the cut's block name (the model's default cut resolved).
      num_classes: the dataset's number of classes.
      defenses, attacks: the built defense and attack objects, in spec order.
      server, client: the parties' strategies.
      topology: the topology (``split_workbench.topology.TOPOLOGIES``), checked against the rest.
      alpha: the partition's Dirichlet concentration (None: IID).
    """

    spec: ExperimentSpec
    cut: str
    num_classes: int
    defenses: tuple
    attacks: tuple
    server: ServerStrategy
    client: ClientStrategy
    topology: Topology = Vanilla()
    alpha: float | None = None

    @property
    def active(self) -> bool:
        """Whether a party departs from the honest protocol: its training is its own and is
        never shared with another spec's."""
        return bool(self.server.active or self.client.active)


def _model_names(model: str, kwargs: dict) -> tuple[str, ...]:

    try:
        return make_model(model, key=jax.random.key(0), **kwargs).names
    except TypeError as e:
        raise SpecError(f"field 'model_kwargs': {e}") from None


def _literal(text: str):

    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise SpecError(f"cannot write {v!r} to TOML")


def load_spec(path: str | os.PathLike) -> ExperimentSpec:
    """Reads a spec from a ``.toml`` or ``.json`` file; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            d = tomllib.loads(text)
        elif path.suffix == ".json":
            d = json.loads(text)
        else:
            raise SpecError(f"spec file {path} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise SpecError(f"spec file {path} is not valid {path.suffix[1:].upper()}: {e}") from None
    return ExperimentSpec.from_dict(d, source=str(path))


def record_path(out_dir: str | os.PathLike, spec: ExperimentSpec) -> Path:
    return Path(out_dir) / spec.hash() / "result.json"


def package_versions() -> dict:

    v = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
         "optax": optax.__version__, "numpy": np.__version__, "scikit-image": skimage.__version__}
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        v["commit"] = out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        v["commit"] = "unknown"
    return v
