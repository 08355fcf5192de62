"""Interfaces for attacks: what the adversary observes, and the attack signature.

The threat model is in the names. An ``Observation`` holds exactly what one adversary may
see; an attack declares the fields it ``needs`` and the evaluation hands it an
``Observation`` restricted to those fields (``Observation.only``). A field that is
``None`` is one the adversary does not have.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import jax

__all__ = ["Observation", "AttackResult", "AbstractAttack", "MissingObservation", "OBSERVATION_FIELDS"]


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


class MissingObservation(ValueError):
    """The attack needs something its Observation does not hold."""


@dataclass(frozen=True)
class AttackResult:
    """Reconstructions (images or labels/scores) plus statistics (loss curve, steps, time)."""

    output: jax.Array
    stats: dict[str, Any]


class AbstractAttack(abc.ABC):
    """An attack: ``attack(observation, key=key) -> AttackResult``.

    Subclasses set ``name``, ``needs`` (Observation fields the threat model grants) and
    implement ``run``. ``__call__`` refuses an Observation missing a needed field, naming it.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]]
    kind: ClassVar[str] = "inversion"  # "inversion" (returns images) or "label" (returns scores/labels)

    def __call__(self, obs: Observation, *, key: jax.Array) -> AttackResult:
        missing = sorted(f for f in self.needs if getattr(obs, f) is None)
        if missing:
            raise MissingObservation(
                f"attack {self.name!r} needs {sorted(self.needs)} but the observation lacks {missing}; "
                f"its threat model must grant these (the observation holds {sorted(obs.available())})")
        return self.run(obs, key=key)

    @abc.abstractmethod
    def run(self, obs: Observation, *, key: jax.Array) -> AttackResult:
        """Runs the attack on an Observation that holds everything in ``needs``."""
