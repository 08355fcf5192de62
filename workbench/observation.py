"""What an adversary observes: the ``Observation``, and how it is built from what crossed the
wire (a training tap) or from a trained split model under a threat model's grants.

``observe`` grants exactly the fields named in ``grants`` and nothing else: an attack that
needs more is refused by ``AbstractAttack.__call__`` with ``MissingObservation``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from split_workbench.protocol import SplitTrainer
from split_workbench.wire import Tap

__all__ = ["Observation", "PartyView", "OBSERVATION_FIELDS", "observe", "observe_tap", "tap_targets", "wire_query"]


class PartyView(NamedTuple):
    """A party as trained: its strategy object, the split model and its party state."""

    strategy: Any
    model: Any
    state: Any


@dataclass(frozen=True)
class Observation:
    """What an honest-but-curious party observes, plus what its threat model grants.

    Attributes:
      smash: the smash data as it crossed the wire (after the client's defenses), (N, *smash_shape).
      labels: the labels of the observed examples (the server sees them in vanilla split learning).
      cut_grads: the cut gradients as they crossed the wire (after the server's defenses).
      client_apply: the client architecture, as a pure ``apply(params, x)`` (needs params to run).
      client_params: the client's parameters (white-box).
      client_init: a fresh client parameter pytree of the right structure (architecture knowledge).
      query: black-box access to the client: ``query(x) -> smash`` as the wire would carry it.
      aux_x, aux_y: auxiliary data the attacker holds, disjoint from the private data.
      server_apply, server_params: the server's model (the server is the attacker).
      server_party: the server party as trained (a ``PartyView``: its strategy, the split
        model and its party state), e.g. a hijacking server's decoder; granted to an
        attacker that is the server.
      input_shape: the shape of one private input (H, W, C).
    """

    smash: jax.Array | None = None
    labels: jax.Array | None = None
    cut_grads: jax.Array | None = None
    client_apply: Callable | None = None
    client_params: Any = None
    client_init: Any = None
    query: Callable | None = None
    aux_x: jax.Array | None = None
    aux_y: jax.Array | None = None
    server_apply: Callable | None = None
    server_params: Any = None
    server_party: Any = None
    input_shape: tuple[int, ...] | None = None

    def only(self, fields: frozenset[str] | set[str]) -> "Observation":
        """A copy holding only ``fields`` (and ``input_shape``): what a given attack may see."""
        unknown = set(fields) - set(OBSERVATION_FIELDS)
        if unknown:
            raise ValueError(f"unknown observation fields {sorted(unknown)}; known: {OBSERVATION_FIELDS}")
        keep = set(fields) | {"input_shape"}
        return dataclasses.replace(self, **{f: None for f in OBSERVATION_FIELDS if f not in keep})

    def available(self) -> frozenset[str]:
        return frozenset(f for f in OBSERVATION_FIELDS if getattr(self, f) is not None)


OBSERVATION_FIELDS = tuple(f.name for f in dataclasses.fields(Observation))


def _check_grants(grants: Iterable[str]) -> frozenset[str]:
    grants = frozenset(grants)
    unknown = sorted(grants - set(OBSERVATION_FIELDS))
    if unknown:
        raise ValueError(f"unknown observation field(s) {unknown} in grants; known: {list(OBSERVATION_FIELDS)}")
    return grants


WIRES = ("inference", "train")


def wire_query(trainer: SplitTrainer, client_params: Any, *, key: jax.Array, wire: str = "inference"):
    """``query(x) -> smash`` of the client: its output passed through the wire's
    ``inference`` transform (a deployed client), or with ``wire="train"`` through the
    training-time ``forward`` transform, as the attacker would receive it
    (``SplitTrainer.send_smash``).

    The transform's randomness uses ``key`` (fixed per query function): querying the same
    batch twice returns the same noisy smash, which keeps attacks deterministic in their key.
    """
    if wire not in WIRES:
        raise ValueError(f"wire must be one of {WIRES}, got {wire!r}")
    return jax.jit(lambda x: trainer.send_smash(client_params, x, key=key, wire=wire))


def _aux_fields(grants, aux):
    out = {}
    if "aux_x" in grants or "aux_y" in grants:
        if aux is None:
            raise ValueError("grants include aux_x/aux_y but no aux=(aux_x, aux_y) was given")
        aux_x, aux_y = aux
        if "aux_x" in grants:
            out["aux_x"] = jnp.asarray(aux_x)
        if "aux_y" in grants:
            if aux_y is None:
                raise ValueError("grants include aux_y but aux has no labels")
            out["aux_y"] = jnp.asarray(aux_y)
    return out


def _model_fields(grants, trainer: SplitTrainer, params: dict, key, wire: str):
    sm = trainer.model
    available = {
        "client_apply": lambda: sm.client.apply,
        "client_params": lambda: params["client"],
        "client_init": lambda: sm.params["client"],
        "server_apply": lambda: sm.server.apply,
        "server_params": lambda: params["server"],
        "query": lambda: wire_query(trainer, params["client"], key=key, wire=wire),
    }
    return {f: make() for f, make in available.items() if f in grants}


def observe(trainer: SplitTrainer, params: dict, x_targets, y_targets=None, *, grants: Iterable[str],
            aux: tuple | None = None, key: jax.Array, wire: str = "inference", parties=None) -> Observation:
    """What an adversary with ``grants`` observes of the trained model on ``x_targets``.

    ``smash`` is the client's output on the targets through ``trainer.wire.inference``
    (what crosses the wire at inference), or with ``wire="train"`` through the
    training-time forward transforms (what a training step on the targets would send). ``cut_grads`` (and ``labels``) need ``y_targets``:
    they are what the wire would carry if the targets formed one training batch at these
    parameters (forward and backward transforms applied). ``params`` is
    ``{"client", "server"}`` (e.g. ``state.params``). ``client_init`` grants the model's
    initial client parameters as an architecture template (attacks re-randomise them).
    ``parties`` are the parties' trained states (``state.parties``; default: their initial
    states): the cut gradients are the ones the server strategy would send.
    """
    grants = _check_grants(grants)
    x = jnp.asarray(x_targets, jnp.float32)
    if x.ndim != 4 or x.shape[1:] != tuple(trainer.model.input_shape):
        raise ValueError(f"x_targets must be (N, *{tuple(trainer.model.input_shape)}), got {x.shape}")
    k_smash, k_query, k_step = jax.random.split(key, 3)
    fields: dict[str, Any] = {}
    if "smash" in grants:
        fields["smash"] = wire_query(trainer, params["client"], key=k_smash, wire=wire)(x)
    if {"cut_grads", "labels"} & grants:
        if y_targets is None:
            raise ValueError("granting cut_grads or labels needs y_targets (the targets' labels)")
        y = jnp.asarray(y_targets, jnp.int32)
        _, _, _, observed = trainer.compute_grads(params, trainer.init(params).wire_state, x, y, key=k_step,
                                                  parties=parties)
        if "cut_grads" in grants:
            fields["cut_grads"] = observed.cut_grads
        if "labels" in grants:
            fields["labels"] = y
    fields.update(_model_fields(grants, trainer, params, k_query, wire))
    fields.update(_aux_fields(grants, aux))
    if "server_party" in grants:
        state = trainer.init_parties() if parties is None else parties
        fields["server_party"] = PartyView(trainer.server, trainer.model, () if not state else state["server"])
    return Observation(input_shape=tuple(trainer.model.input_shape), **fields)


def observe_tap(tap: Tap, step: int, trainer: SplitTrainer, params: dict | None, *, grants: Iterable[str],
                aux: tuple | None = None, key: jax.Array, wire: str = "train") -> Observation:
    """The Observation at tapped training step ``step``: ``smash``, ``labels`` and
    ``cut_grads`` exactly as recorded on the wire at that step.

    Limitation: a tap records messages, not parameters. White-box fields (``client_params``,
    ``server_params``, ``query``) come from ``params``, which the caller must supply for
    that step (e.g. run ``fit`` for the epochs up to it and ``trainer.step`` the rest);
    passing the final parameters for an early step attacks a different model. ``params``
    may be None when no such field is granted. A granted ``query`` answers through the
    training-time transforms (``wire="train"``, as the tapped smash did) unless
    ``wire="inference"``.
    """
    grants = _check_grants(grants)
    steps = [int(s) for s in np.asarray(tap.steps)]
    if step not in steps:
        raise ValueError(f"step {step} was not tapped; tapped steps: {steps}")
    i = steps.index(step)
    needs_params = {"client_params", "server_params", "query", "client_apply", "client_init", "server_apply"} & grants
    if needs_params and params is None:
        raise ValueError(f"grants {sorted(needs_params)} need the parameters at step {step}; pass params")
    fields: dict[str, Any] = {}
    for f, arr in (("smash", tap.smash), ("labels", tap.labels), ("cut_grads", tap.cut_grads)):
        if f in grants:
            fields[f] = arr[i]
    if needs_params:
        fields.update(_model_fields(grants, trainer, params, key, wire))
    fields.update(_aux_fields(grants, aux))
    return Observation(input_shape=tuple(trainer.model.input_shape), **fields)


def tap_targets(tap: Tap, step: int, x_train) -> tuple[np.ndarray, np.ndarray]:
    """The private inputs and labels behind tapped step ``step`` (for scoring only)."""
    steps = [int(s) for s in np.asarray(tap.steps)]
    if step not in steps:
        raise ValueError(f"step {step} was not tapped; tapped steps: {steps}")
    ids = np.asarray(tap.example_ids[steps.index(step)])
    return np.asarray(x_train)[ids], np.asarray(tap.labels[steps.index(step)])
