"""Trained topologies behind one interface: fit, evaluate, and what the adversary observes.

Every topology built from a spec (``interface.py``) is one of three runtime objects with the
same methods (``TopologyTrainer``): ``ManyClients`` (round-robin split learning, SplitFed V1
and V2: K clients, one ``SplitTrainer`` whose wire carries every client's messages),
``UShapedClients`` (K clients taking turns, two cuts, a wire at each) and ``VerticalParties``
(M parties, each holding a vertical strip of every example, each with its own wire).

The attacked client. With K clients the adversary's victim is client 0: the targets are the
first private examples of client 0's share, and the observation uses client 0's trained
client part. ``fit`` returns client 0's final state as a ``SplitState`` whose ``params`` are
``{"client": what the client holds, "server": what the server holds}``.

What the adversary observes (``observe``):

* round-robin / SplitFed: exactly the vanilla observation (``observation.observe``) of
  client 0's split model: the smash it sends, the labels, the cut gradient it receives.
* U-shaped: the honest-but-curious server receives the client's smash ``z1`` at cut 1
  and the client's gradient ``dz2`` at cut 2. ``smash`` is ``z1`` as received (``query``,
  ``client_apply``, ``client_params``, ``client_init`` describe the client's front, so
  inversion attacks reconstruct the input from cut 1); ``cut_grads`` is ``dz2`` as
  received (the gradient at the head's input, which label-leakage attacks read).
  ``labels`` are never observable (they never leave the client), nor are ``server_apply``
  and ``server_params`` as a task model (the server's part ends at cut 2, not in logits).
* vertical: the server receives every party's smash. ``smash`` holds them side by side
  (``VerticalModel.side_by_side``: concatenated along the features of dense smashes, along
  the width of image smashes, so it looks like one client's smash), and
  ``client_apply(params, x)`` maps a whole input to that array (each party's bottom on its
  strip), so an inversion reconstructs every party's strip at once and is scored against
  the whole input (strip m of the reconstruction is the attack on party m); ``cut_grads``
  holds the gradients the parties receive, side by side; ``labels`` are the server's;
  ``server_apply`` is the top on the side-by-side smashes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from split_workbench.observation import WIRES, Observation, observe
from split_workbench.protocol import SplitState, SplitTrainer, evaluate_batched
from split_workbench.topology.accounting import KINDS, NetworkModel, TopologyResult
from split_workbench.topology.clients import Clients, Task
from split_workbench.topology.sequential import run_clients
from split_workbench.topology.splitfed import run_splitfed_v1
from split_workbench.topology.ushaped import UShapedTrainer, run_u_shaped
from split_workbench.topology.vertical import VerticalModel, VerticalTrainer, run_vertical
from split_workbench.training import FitResult, party_key
from split_workbench.wire import Wire

__all__ = ["TopologyTrainer", "ManyClients", "UShapedClients", "VerticalParties", "send_outside_training",
           "label_histograms"]


@runtime_checkable
class TopologyTrainer(Protocol):
    """A topology ready to train: what the run pipeline calls for every topology."""

    name: str
    active: bool  # whether a party departs from the honest protocol (never, for now)

    def init(self, *, key: jax.Array) -> SplitState:
        """The initial state: the structure ``fit`` returns (a template to restore into)."""

    def fit(self, x, y, *, epochs: int, key: jax.Array, x_test, y_test) -> FitResult:
        """Trains; the history has ``training.fit``'s keys (per epoch)."""

    def targets(self, x, y, n: int) -> tuple[jax.Array, jax.Array]:
        """The attacked client's first ``n`` private examples."""

    def private_examples(self, dataset_size: int) -> int:
        """How many private training examples the attacked client holds (its DP accounting's n)."""

    def observe(self, state: SplitState, x, y, *, grants: Iterable[str], aux, key: jax.Array, wire: str
                ) -> tuple[Observation, jax.Array]:
        """What the adversary observes of the targets ``(x, y)``, and the private input each
        reconstruction is scored against."""

    def evaluate(self, state: SplitState, x, y) -> dict[str, float]:
        """Test ``loss`` and ``accuracy`` of the trained model (inference transforms on the wire)."""

    def clean_smash(self, state: SplitState, x) -> jax.Array:
        """The attacked client's smash on ``x`` before the wire (for dCor)."""

    def summary(self) -> dict:
        """The split: cut(s), shapes, parameters per party."""

    def describe(self) -> dict:
        """The topology: its name, clients and their shares."""


def send_outside_training(wire: Wire, z: jax.Array, *, key: jax.Array, which: str = "inference") -> jax.Array:
    """``z`` as the wire carries it outside training: through ``wire.inference`` or, with
    ``which="train"``, the training-time ``forward`` transform from a fresh state (as
    ``SplitTrainer.send_smash``)."""
    if which not in WIRES:
        raise ValueError(f"wire must be one of {WIRES}, got {which!r}")
    t = wire.inference if which == "inference" else wire.forward
    out, _ = t.apply(z, t.init(jnp.zeros((1, *z.shape[1:]), z.dtype)), key=key)
    return out


def label_histograms(clients: Clients, labels, num_classes: int) -> np.ndarray:
    """``(K, C)`` examples of each class on each client."""
    y = np.asarray(labels)
    return np.stack([np.bincount(y[clients.idx_KxN[k, : clients.sizes[k]]], minlength=num_classes)
                     for k in range(clients.num_clients)])


def _history(result: TopologyResult, seconds: float, batch_size: int) -> list[dict]:
    """``training.fit``'s history keys from a topology run: per-epoch bytes from its ledger
    (``forward_bytes`` = activations, ``backward_bytes`` = gradients, plus ``weight_bytes``)."""
    e = result.epochs
    per = {k: result.ledger.total(k) // e for k in KINDS}
    out = []
    for h in result.history:
        s = seconds / e
        out.append({**h, "seconds": s, "images_per_second": h["steps"] * batch_size / max(s, 1e-9),
                    "forward_bytes": per["activations"], "backward_bytes": per["gradients"],
                    "label_bytes": per["labels"], "weight_bytes": per["weights"]})
    return out


def _check_targets(clients: Clients | None, n: int, where: str) -> None:
    if clients is not None and clients.sizes[0] < n:
        raise ValueError(f"{where}: client 0 holds {clients.sizes[0]} private examples, fewer than the {n} targets; "
                         "lower targets, raise train_size or use fewer clients")


def _client0_targets(clients: Clients, x, y, n: int):
    _check_targets(clients, n, "targets")
    ids = clients.idx_KxN[0, :n]
    return jnp.asarray(np.asarray(x)[ids]), jnp.asarray(np.asarray(y)[ids])


_evaluate = jax.jit(evaluate_batched, static_argnames=("logits_fn", "batch_size"))


def _evaluated(logits_fn, params, x, y) -> dict[str, float]:
    loss, acc = _evaluate(logits_fn, params, jnp.asarray(x), jnp.asarray(y, jnp.int32), jax.random.key(0), 1000)
    return {"loss": float(loss), "accuracy": float(acc)}


def _aux(grants, aux) -> dict:
    out = {}
    if aux is not None:
        if "aux_x" in grants:
            out["aux_x"] = jnp.asarray(aux[0])
        if "aux_y" in grants and aux[1] is not None:
            out["aux_y"] = jnp.asarray(aux[1])
    return out


# ---------------------------------------------------------------- round-robin and SplitFed
class _ClientZeroAttacked:
    """K clients, the adversary's victim is client 0: its own first examples are the
    targets, and its own share is what its DP accounting counts."""

    def targets(self, x, y, n: int):
        return _client0_targets(self.clients, x, y, n)

    def private_examples(self, dataset_size: int) -> int:
        del dataset_size
        return int(self.clients.sizes[0])


@dataclass(frozen=True, eq=False)
class ManyClients(_ClientZeroAttacked):
    """K clients against one server part with one ``SplitTrainer``: ``mode`` is a round-robin
    hand-over (``"peer"``, ``"server"``, ``"none"``), ``"sflv1"`` or ``"sflv2"``."""

    name: str
    trainer: SplitTrainer
    clients: Clients
    mode: str
    labels_KxC: np.ndarray
    network: NetworkModel = NetworkModel()

    @property
    def active(self) -> bool:
        return self.trainer.active

    @property
    def model(self):
        """The split model every client runs (``SplitModel``)."""
        return self.trainer.model

    def init(self, *, key: jax.Array) -> SplitState:
        return self.trainer.init(key=key)

    def fit(self, x, y, *, epochs: int, key: jax.Array, x_test, y_test) -> FitResult:
        task = Task.build(x, y, x_test, y_test, self.clients)
        t0 = time.perf_counter()
        if self.mode == "sflv1":
            result, state = run_splitfed_v1(self.trainer, task, epochs=epochs, key=key, network=self.network)
        else:
            result, state = run_clients(self.trainer, task, epochs=epochs, key=key, network=self.network,
                                        mode=self.mode, name=self.name, state0=self.init(key=party_key(key)))
        jax.block_until_ready(state)
        return FitResult(state, _history(result, time.perf_counter() - t0, self.clients.batch_size), [])

    def observe(self, state, x, y, *, grants, aux, key, wire):
        return observe(self.trainer, state.params, x, y, grants=grants, aux=aux, key=key, wire=wire,
                       parties=state.parties), jnp.asarray(x)

    def evaluate(self, state, x, y):
        return self.trainer.evaluate(state.params, x, y)

    def clean_smash(self, state, x):
        return self.trainer.model.client.apply(state.params["client"], jnp.asarray(x))

    def summary(self) -> dict:
        return self.trainer.model.summary()

    def describe(self) -> dict:
        return {"name": self.name, "clients": self.clients.describe(), "labels_per_client": self.labels_KxC.tolist()}


# ---------------------------------------------------------------- U-shaped
@dataclass(frozen=True, eq=False)
class UShapedClients(_ClientZeroAttacked):
    """K clients taking turns with the U-shaped protocol (two cuts, labels on the clients)."""

    name: str
    trainer: UShapedTrainer
    clients: Clients
    labels_KxC: np.ndarray
    cuts: tuple[str, str]
    network: NetworkModel = NetworkModel()
    active: bool = False

    @staticmethod
    def _state(params, oc, os_, ws, steps) -> SplitState:
        return SplitState({"client": {"front": params["front"], "head": params["head"]},
                           "server": {"middle": params["middle"]}}, {"client": oc, "server": os_}, ws,
                          jnp.asarray(steps, jnp.int32))

    def init(self, *, key: jax.Array) -> SplitState:
        del key  # honest parties: no party state to seed
        return self._state(*self.trainer.init(), self.trainer.init_wire(), 0)

    def fit(self, x, y, *, epochs: int, key: jax.Array, x_test, y_test) -> FitResult:
        task = Task.build(x, y, x_test, y_test, self.clients)
        t0 = time.perf_counter()
        result, (params, oc, os_, ws, steps) = run_u_shaped(self.trainer, task, epochs=epochs, key=key,
                                                            network=self.network)
        state = self._state(params, oc, os_, ws, steps)
        jax.block_until_ready(state)
        return FitResult(state, _history(result, time.perf_counter() - t0, self.clients.batch_size), [])

    def _params(self, state) -> dict:
        return {**state.params["client"], **state.params["server"]}

    def _logits(self, params, x, key):
        m, wire = self.trainer.model, self.trainer.wire
        z1 = send_outside_training(wire, m.front.apply(params["front"], x), key=key)
        return m.head.apply(params["head"], m.middle.apply(params["middle"], z1))

    def observe(self, state, x, y, *, grants, aux, key, wire):
        grants = frozenset(grants)
        tr, m, p = self.trainer, self.trainer.model, self._params(state)
        x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
        k_smash, k_query, k_step = jax.random.split(key, 3)
        fields: dict[str, Any] = {}
        send = jax.jit(lambda x: send_outside_training(tr.wire, m.front.apply(p["front"], x), key=k_query,
                                                       which=wire))
        if "smash" in grants:
            fields["smash"] = send_outside_training(tr.wire, m.front.apply(p["front"], x), key=k_smash, which=wire)
        if "cut_grads" in grants:  # dz2 as the server receives it, one step on the targets at these parameters
            fields["cut_grads"] = tr.exchange(p, tr.init_wire(), x, y, key=k_step).messages[2]
        model_fields = {"client_apply": lambda: m.front.apply, "client_params": lambda: p["front"],
                        "client_init": lambda: m.params["front"], "query": lambda: send}
        fields.update({f: make() for f, make in model_fields.items() if f in grants})
        fields.update(_aux(grants, aux))
        return Observation(input_shape=tuple(m.input_shape), **fields), x

    def evaluate(self, state, x, y):
        return _evaluated(self._logits, self._params(state), x, y)

    def clean_smash(self, state, x):
        return self.trainer.model.front.apply(state.params["client"]["front"], jnp.asarray(x))

    def summary(self) -> dict:
        m = self.trainer.model
        return {"cut": self.cuts[0], "cut2": self.cuts[1], "input_shape": list(m.input_shape),
                "smash_shape": list(m.cut1_shape), "cut2_shape": list(m.cut2_shape), "params": m.param_counts}

    def describe(self) -> dict:
        return {"name": self.name, "clients": self.clients.describe(), "labels_per_client": self.labels_KxC.tolist(),
                "observed": "smash: z1 at cut 1 (client -> server); cut_grads: dz2 at cut 2 (client -> server)"}


# ---------------------------------------------------------------- vertical
@dataclass(frozen=True)
class PartySmashes:
    """``apply(stacked params, x)``: every party's smash of its strip, side by side."""

    model: VerticalModel

    def __call__(self, params, x):
        return self.model.side_by_side(self.model.smashes(params, x))


@dataclass(frozen=True)
class TopOnParties:
    """``apply(top params, z side by side) -> logits``: the top on the joined smashes."""

    model: VerticalModel

    def __call__(self, params, z):
        return self.model.top.apply(params, self.model.joined(self.model.parties_of(z)))


@dataclass(frozen=True, eq=False)
class VerticalParties:
    """M parties holding vertical strips of the same examples; labels on the server."""

    name: str
    trainer: VerticalTrainer
    batch_size: int
    cut: str
    network: NetworkModel = NetworkModel()
    active: bool = False

    @staticmethod
    def _state(params, opt_state, ws, steps) -> SplitState:
        return SplitState({"client": params["clients"], "server": params["server"]},
                          {"client": opt_state[0], "server": opt_state[1]}, ws, jnp.asarray(steps, jnp.int32))

    def init(self, *, key: jax.Array) -> SplitState:
        del key  # honest parties: no party state to seed
        return self._state(*self.trainer.init(), self.trainer.init_wire(), 0)

    def fit(self, x, y, *, epochs: int, key: jax.Array, x_test, y_test) -> FitResult:
        t0 = time.perf_counter()
        result, (params, opt_state, ws, steps) = run_vertical(self.trainer, x, y, x_test, y_test, epochs=epochs,
                                                               batch_size=self.batch_size, key=key,
                                                               network=self.network)
        state = self._state(params, opt_state, ws, steps)
        jax.block_until_ready(state)
        return FitResult(state, _history(result, time.perf_counter() - t0, self.batch_size), [])

    def targets(self, x, y, n: int):
        return jnp.asarray(np.asarray(x)[:n]), jnp.asarray(np.asarray(y)[:n])

    def private_examples(self, dataset_size: int) -> int:
        return dataset_size  # every party holds (its strip of) every example

    def _send(self, params, x, key, which):
        m, wire = self.trainer.model, self.trainer.wire
        z_M = m.smashes(params, x)
        out = jax.vmap(lambda z, i: send_outside_training(wire, z, key=jax.random.fold_in(key, i), which=which))(
            z_M, jnp.arange(m.num_clients))
        return out

    def _logits(self, params, x, key):
        m = self.trainer.model
        return m.top.apply(params["server"], m.joined(self._send(params["clients"], x, key, "inference")))

    def observe(self, state, x, y, *, grants, aux, key, wire):
        grants = frozenset(grants)
        tr, m = self.trainer, self.trainer.model
        p = {"clients": state.params["client"], "server": state.params["server"]}
        x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
        k_smash, k_query, k_step = jax.random.split(key, 3)
        fields: dict[str, Any] = {}
        if "smash" in grants:
            fields["smash"] = m.side_by_side(self._send(p["clients"], x, k_smash, wire))
        if "cut_grads" in grants:
            fields["cut_grads"] = m.side_by_side(tr.exchange(p, tr.init_wire(), x, y, key=k_step).messages[1])
        if "labels" in grants:
            fields["labels"] = y
        model_fields = {
            "client_apply": lambda: PartySmashes(m), "client_params": lambda: p["clients"],
            "client_init": lambda: m.params["clients"], "server_apply": lambda: TopOnParties(m),
            "server_params": lambda: p["server"],
            "query": lambda: jax.jit(lambda x: m.side_by_side(self._send(p["clients"], x, k_query, wire))),
        }
        fields.update({f: make() for f, make in model_fields.items() if f in grants})
        fields.update(_aux(grants, aux))
        return Observation(input_shape=tuple(m.input_shape), **fields), x

    def evaluate(self, state, x, y):
        return _evaluated(self._logits, {"clients": state.params["client"], "server": state.params["server"]}, x, y)

    def clean_smash(self, state, x):
        return PartySmashes(self.trainer.model)(state.params["client"], jnp.asarray(x))

    def summary(self) -> dict:
        m = self.trainer.model
        return {"cut": self.cut, "input_shape": list(m.input_shape), "strip_shape": list(m.strip_shape),
                "smash_shape": list(m.side_by_side(jnp.zeros((m.num_clients, 1, *m.party_smash_shape))).shape[1:]),
                "party_smash_shape": list(m.party_smash_shape), "join": m.join, "params": m.param_counts}

    def describe(self) -> dict:
        m = self.trainer.model
        return {"name": self.name, "parties": m.num_clients, "strip_shape": list(m.strip_shape),
                "observed": "smash: every party's smash, side by side; scored against the whole input"}

