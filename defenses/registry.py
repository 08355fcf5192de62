"""The defense registry: ``build_defense("laplace_noise(scale=0.5)") -> Defense``.

Each defense module registers its factories here; importing ``defenses`` imports them all.
"""

from __future__ import annotations

from defenses.base import Defense
from workbench.registry import Registry

__all__ = ["DEFENSES", "build_defense", "register_defense"]

DEFENSES = Registry("defense")
register_defense = DEFENSES.register


def build_defense(spec: str) -> Defense:
    """Builds the ``Defense`` that spec string ``spec`` names; its ``name`` is the spec."""
    d = DEFENSES.build(spec)
    if not isinstance(d, Defense):
        raise TypeError(f"defense factory for {spec!r} returned {type(d).__name__}, not a Defense")
    return d
