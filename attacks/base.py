"""Interfaces for attacks: what the adversary observes, and the attack signature.

The threat model is in the names. An ``Observation`` holds exactly what one adversary may
see; an attack declares the fields it ``needs`` and the evaluation hands it an
``Observation`` restricted to those fields (``Observation.only``). A field that is
``None`` is one the adversary does not have.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import jax

from split_workbench.observation import OBSERVATION_FIELDS, Observation

__all__ = ["Observation", "AttackResult", "AbstractAttack", "MissingObservation", "OBSERVATION_FIELDS"]


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
