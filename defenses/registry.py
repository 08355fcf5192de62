"""The defense registry: ``build_defense("laplace_noise(scale=0.5)") -> Defense``.

Each defense module registers its factories here; importing ``defenses`` imports them all.
"""

from __future__ import annotations

from split_workbench.defenses.base import Defense
from split_workbench.registry import Registry, format_spec

__all__ = ["DEFENSES", "build_defense", "register_defense", "vmappable", "VMAPPABLE", "strength_split",
           "build_defense_traced"]

DEFENSES = Registry("defense")
register_defense = DEFENSES.register

# defense name -> the numeric arguments that may be arrays (traced under vmap)
VMAPPABLE: dict[str, tuple[str, ...]] = {}


def vmappable(*args: str):
    """Declares that a registered factory accepts traced values for ``args``.

    Such a factory must use those arguments only in array arithmetic (no Python branching
    on them except behind ``_checks.traced``), so one trainer program, vmapped over an
    array of strengths, runs every strength of a sweep at once. Put it above
    ``@register_defense``."""

    def mark(factory):
        name = next(n for n, f in DEFENSES._factories.items() if f is factory)
        VMAPPABLE[name] = tuple(args)
        return factory

    return mark


def strength_split(spec: str) -> tuple[str, dict[str, float]]:
    """``"laplace_noise(scale=0.5, at='both')"`` -> (a key with the vmappable arguments
    blanked, ``{"scale": 0.5}``). Specs that share the key differ only in strengths a
    vmapped program can take as data. A zero strength stays in the key: zero means "no
    transform installed", a different program. Non-vmappable defenses return ``(spec, {})``."""

    name, kwargs = DEFENSES.validate(spec)
    params = DEFENSES.parameters(name)
    rest, values = dict(kwargs), {}
    for k in VMAPPABLE.get(name, ()):
        v = kwargs.get(k, params[k])
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0:
            values[k], rest[k] = float(v), "<vmapped>"
        else:
            rest[k] = v
    return format_spec(name, rest), values


def build_defense_traced(spec: str, values: dict) -> Defense:
    """Builds ``spec`` with ``values`` (arrays, e.g. tracers under vmap) in place of its
    vmappable arguments; the concrete spec must have been validated already."""
    name, kwargs = DEFENSES.validate(spec)
    bad = sorted(set(values) - set(VMAPPABLE.get(name, ())))
    if bad:
        raise ValueError(f"defense {name!r} cannot take {bad} as arrays; vmappable: {VMAPPABLE.get(name, ())}")
    return DEFENSES.get(name)(**{**kwargs, **values})


def build_defense(spec: str) -> Defense:
    """Builds the ``Defense`` that spec string ``spec`` names; its ``name`` is the spec."""
    d = DEFENSES.build(spec)
    if not isinstance(d, Defense):
        raise TypeError(f"defense factory for {spec!r} returned {type(d).__name__}, not a Defense")
    return d
