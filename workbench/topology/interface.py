"""Topologies from spec strings: one registry, one interface.

A spec's ``topology`` names one of ``TOPOLOGIES`` (arguments as in every registry,
``"round_robin(handover='server')"``); its ``clients`` and ``partition`` say how many
clients and how the training set is shared among them (``PARTITIONS``: ``"iid"`` or
``"dirichlet(alpha=0.5)"``, label skew after Hsu et al. 2019).

========================  ====================================================================
``vanilla``               one client, one server (``training.fit``; the default)
``round_robin(handover)`` K clients take turns against one server part (Gupta & Raskar 2018);
                          ``handover`` "peer", "server" or "none" (see ``sequential.py``)
``splitfed_v1``           K clients in parallel, client parts averaged each epoch (Thapa et al.)
``splitfed_v2``           K clients served in sequence, client parts averaged each epoch
``u_shaped(cut2)``        K clients take turns; the client keeps the first blocks (up to the
                          spec's ``cut``) and the head (after ``cut2``, default the last cut
                          point); labels never leave the client
``vertical(join)``        ``clients`` = M parties, each holding a vertical strip of every
                          image and its own bottom (the spec's model cut at ``cut``, built for
                          the strip); the server joins their smashes (``"concat"``: side by side,
                          for convolutional smashes; ``"sum"``: for dense ones) into the top
========================  ====================================================================

Every topology has a wire carrying the spec's defenses. Single-cut topologies (vanilla,
round-robin, SplitFed) put them on every client's smash (forward transforms, loss terms,
the DP-SGD privatizer) and cut gradient (backward transforms). U-shaped: the client's
defenses act on what the client sends: its smash at cut 1 (forward and inference
transforms, loss terms on ``(x, z1)``) and its gradient at cut 2 (backward transforms; the
client holds the labels, so Marvell works there); the server's messages (``z2``, ``dz1``)
cross identity wires. Vertical: each party's smash and the gradient it receives cross its
own wire (its own state and randomness); loss terms act on ``(its strip, its smash)``.
What the adversary observes in each topology is described in ``runtime.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import optax

from split_workbench.protocol import SplitTrainer
from split_workbench.registry import Registry
from split_workbench.split import split
from split_workbench.topology.clients import make_clients
from split_workbench.topology.runtime import ManyClients, TopologyTrainer, UShapedClients, VerticalParties, label_histograms
from split_workbench.topology.ushaped import UShapedTrainer, u_split
from split_workbench.topology.vertical import JOINS, VerticalTrainer, vertical_split
from split_workbench.transforms import GradPrivatizer, LossTerm, identity
from split_workbench.wire import Wire

__all__ = ["TOPOLOGIES", "PARTITIONS", "Topology", "TopologyParts", "Vanilla", "SingleCut", "UShaped", "Vertical",
           "build_topology", "partition_alpha"]

TOPOLOGIES = Registry("topology")
PARTITIONS = Registry("partition")

# make(key=, input_shape=) -> a zoo-style Sequential model with the spec's architecture.
MakeModel = Callable[..., Any]


class TopologyParts(NamedTuple):
    """What the spec's optimizer and defenses give every topology."""

    client_opt: optax.GradientTransformation
    server_opt: optax.GradientTransformation
    wire: Wire
    loss_terms: tuple[LossTerm, ...] = ()
    privatizer: GradPrivatizer | None = None
    server: Any = None  # the server party's strategy (None: honest)
    client: Any = None  # every client's party strategy (None: honest)


@runtime_checkable
class Topology(Protocol):
    """A topology as a spec names it: checked before any data loads, then built."""

    name: str

    def check(self, make: MakeModel, cut: str, *, input_shape: tuple[int, ...], clients: int, alpha: float | None,
              privatizer: bool, honest: bool) -> None:
        """Raises ValueError naming what does not fit (clients, partition, model, defenses)."""

    def refuse(self, needs: frozenset[str]) -> str | None:
        """Why an attack with these ``needs`` cannot run on this topology (None: it can)."""

    def build(self, make: MakeModel, cut: str, parts: TopologyParts, *, input_shape: tuple[int, ...],
              num_classes: int, labels, clients: int, alpha: float | None, batch_size: int,
              model_key: jax.Array, partition_key: jax.Array) -> TopologyTrainer:
        """The runtime object that trains and is observed (``runtime.TopologyTrainer``)."""


def _check_count(clients: int, lo: int, name: str) -> None:
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < lo:
        raise ValueError(f"topology {name!r} needs clients >= {lo}, got {clients!r}")


def _honest_only(name: str, privatizer: bool, honest: bool, *, dp: bool) -> None:
    if not honest:
        raise ValueError(f"topology {name!r} runs honest parties only; server and client strategies (an active "
                         "adversary, a detector) run in vanilla, round_robin and splitfed_v2")
    if privatizer and not dp:
        raise ValueError(f"topology {name!r} has no DP-SGD on the client's update (a privatizer defense); it runs "
                         "in vanilla, round_robin, splitfed_v1 and splitfed_v2")


@dataclass(frozen=True)
class Vanilla:
    """One client, one server: ``training.fit`` (the run pipeline's own path)."""

    name: str = "vanilla"

    def check(self, make, cut, *, input_shape, clients, alpha, privatizer, honest) -> None:
        del make, cut, input_shape, privatizer, honest
        if clients != 1 or alpha is not None:
            got = f"clients={clients!r}" + ("" if alpha is None else f" and a Dirichlet(alpha={alpha:g}) partition")
            raise ValueError(f"topology 'vanilla' is one client with all the data (clients=1, partition='iid'), got "
                             f"{got}; for K clients pick one of {TOPOLOGIES.names()}")

    def refuse(self, needs):
        return None

    def build(self, *a, **k):
        raise TypeError("the vanilla topology trains with training.fit on a SplitTrainer, not a TopologyTrainer")


def _split_trainer(make, cut, parts: TopologyParts, input_shape, model_key) -> SplitTrainer:
    sm = split(make(key=model_key, input_shape=input_shape), cut)
    parties = {k: v for k, v in (("server", parts.server), ("client", parts.client)) if v is not None}
    return SplitTrainer(sm, parts.client_opt, parts.server_opt, wire=parts.wire, loss_terms=parts.loss_terms,
                        privatizer=parts.privatizer, **parties)


def _clients(labels, clients, alpha, batch_size, partition_key, num_classes):
    cl = make_clients(labels, clients, key=partition_key, batch_size=batch_size, alpha=alpha)
    return cl, label_histograms(cl, labels, num_classes)


@dataclass(frozen=True)
class SingleCut:
    """Round-robin (``mode`` = the hand-over) and SplitFed (``mode`` "sflv1", "sflv2"): one
    cut, K clients, the vanilla ``SplitTrainer`` per step."""

    name: str
    mode: str

    def check(self, make, cut, *, input_shape, clients, alpha, privatizer, honest) -> None:
        del make, cut, input_shape, alpha
        _check_count(clients, 1, self.name)
        # round-robin and SplitFed V2 run the parties (one server party, a client party per
        # client); SplitFed V1's clients step in parallel under vmap, honest only for now
        _honest_only(self.name, privatizer, honest or self.mode != "sflv1", dp=True)

    def refuse(self, needs):
        return None

    def build(self, make, cut, parts, *, input_shape, num_classes, labels, clients, alpha, batch_size, model_key,
              partition_key) -> ManyClients:
        cl, hist = _clients(labels, clients, alpha, batch_size, partition_key, num_classes)
        return ManyClients(self.name, _split_trainer(make, cut, parts, input_shape, model_key), cl, self.mode, hist)


HANDOVERS = ("peer", "server", "none")


@dataclass(frozen=True)
class UShaped:
    """U-shaped split learning: the spec's ``cut`` is cut 1, ``cut2`` the head's input."""

    cut2: str | None = None
    name: str = "u_shaped"

    def cuts(self, names: tuple[str, ...], cut: str) -> tuple[str, str]:
        cut2 = names[-2] if self.cut2 is None else self.cut2
        i = names.index(cut)
        if cut2 not in names[i + 1:-1]:
            raise ValueError(f"topology 'u_shaped': cut2 must name a block after cut {cut!r} and before the last "
                             f"block, one of {list(names[i + 1:-1])}, got {cut2!r}"
                             + ("; move cut earlier" if not names[i + 1:-1] else ""))
        return cut, cut2

    def check(self, make, cut, *, input_shape, clients, alpha, privatizer, honest) -> None:
        del alpha
        _check_count(clients, 1, self.name)
        _honest_only(self.name, privatizer, honest, dp=False)
        self.cuts(make(key=jax.random.key(0), input_shape=input_shape).names, cut)

    def refuse(self, needs):
        hidden = sorted(needs & {"labels", "server_apply", "server_params"})
        if hidden:
            return (f"the server in U-shaped split learning never observes {hidden}: labels stay on the client, and "
                    "its model ends at cut 2 (the head is the client's), so it is no task model")
        if {"smash", "cut_grads"} <= needs:
            return ("U-shaped split learning observes the smash at cut 1 and the cut gradient at cut 2; an attack "
                    "pairing them assumes one cut")
        return None

    def build(self, make, cut, parts, *, input_shape, num_classes, labels, clients, alpha, batch_size, model_key,
              partition_key) -> UShapedClients:
        model = make(key=model_key, input_shape=input_shape)
        cuts = self.cuts(model.names, cut)
        w = parts.wire
        trainer = UShapedTrainer(u_split(model, *cuts), parts.client_opt, parts.server_opt,
                                 wire=Wire(w.forward, identity(), w.inference), wire2=Wire(identity(), w.backward),
                                 loss_terms=parts.loss_terms)
        cl, hist = _clients(labels, clients, alpha, batch_size, partition_key, num_classes)
        return UShapedClients(self.name, trainer, cl, hist, cuts)


@dataclass(frozen=True)
class Vertical:
    """Vertical split learning over ``clients`` parties (vertical strips of each image)."""

    join: str = "concat"
    name: str = "vertical"

    def check(self, make, cut, *, input_shape, clients, alpha, privatizer, honest) -> None:
        _check_count(clients, 2, self.name)
        _honest_only(self.name, privatizer, honest, dp=False)
        if alpha is not None:
            raise ValueError("topology 'vertical': every party holds every example (its strip of it), so there is "
                             "no partition of examples; use partition='iid'")
        if len(input_shape) != 3:
            raise ValueError(f"topology 'vertical' splits images (H, W, C) into strips, got inputs {input_shape}")
        vertical_split(make, cut, input_shape, num_clients=clients, key=jax.random.key(0), join=self.join)

    def refuse(self, needs):
        return None

    def build(self, make, cut, parts, *, input_shape, num_classes, labels, clients, alpha, batch_size, model_key,
              partition_key) -> VerticalParties:
        del num_classes, labels, alpha, partition_key
        vm = vertical_split(make, cut, input_shape, num_clients=clients, key=model_key, join=self.join)
        trainer = VerticalTrainer(vm, parts.client_opt, parts.server_opt, wire=parts.wire, loss_terms=parts.loss_terms)
        return VerticalParties(self.name, trainer, batch_size, cut)


@TOPOLOGIES.register("vanilla")
def _vanilla() -> Vanilla:
    return Vanilla()


@TOPOLOGIES.register("round_robin")
def _round_robin(handover: str = "peer") -> SingleCut:
    if handover not in HANDOVERS:
        raise ValueError(f"round_robin: handover must be one of {HANDOVERS}, got {handover!r}")
    return SingleCut("round_robin", handover)


@TOPOLOGIES.register("splitfed_v1")
def _splitfed_v1() -> SingleCut:
    return SingleCut("splitfed_v1", "sflv1")


@TOPOLOGIES.register("splitfed_v2")
def _splitfed_v2() -> SingleCut:
    return SingleCut("splitfed_v2", "sflv2")


@TOPOLOGIES.register("u_shaped")
def _u_shaped(cut2: str | None = None) -> UShaped:
    if cut2 is not None and not isinstance(cut2, str):
        raise ValueError(f"u_shaped: cut2 must be a block name, got {cut2!r}")
    return UShaped(cut2)


@TOPOLOGIES.register("vertical")
def _vertical(join: str = "concat") -> Vertical:
    if join not in JOINS:
        raise ValueError(f"vertical: join must be one of {JOINS}, got {join!r}")
    return Vertical(join)


@PARTITIONS.register("iid")
def _iid() -> None:
    return None


@PARTITIONS.register("dirichlet")
def _dirichlet(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"dirichlet: alpha must be a finite number > 0, got {alpha!r}")
    return float(alpha)


def partition_alpha(spec: str) -> float | None:
    """The Dirichlet concentration a partition spec names (None: IID)."""
    return PARTITIONS.build(spec)


def build_topology(spec: str | Topology) -> Topology:
    """A topology from its spec string (or an instance), checked against ``Topology``."""
    t = TOPOLOGIES.build(spec) if isinstance(spec, str) else spec
    if not isinstance(t, Topology):
        raise TypeError(f"{t!r} is not a topology: it needs name, check, refuse and build")
    return t

