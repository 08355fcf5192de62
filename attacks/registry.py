"""The attack registry: ``build_attack("rmle(steps=500)") -> AbstractAttack``.

Each attack module registers its class here; importing ``attacks`` imports them all.
"""

from __future__ import annotations

from split_workbench.attacks.base import AbstractAttack
from split_workbench.registry import Registry

__all__ = ["ATTACKS", "build_attack", "register_attack"]

ATTACKS = Registry("attack")
register_attack = ATTACKS.register


def build_attack(spec: str) -> AbstractAttack:
    a = ATTACKS.build(spec)
    if not isinstance(a, AbstractAttack):
        raise TypeError(f"attack factory for {spec!r} returned {type(a).__name__}, not an AbstractAttack")
    return a
