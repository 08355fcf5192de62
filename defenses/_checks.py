"""Spec-time validation shared by the defense factories: bad strengths fail when the spec
is built, before any training, with a message naming the parameter and the valid range."""

from __future__ import annotations

import math

import jax

from split_workbench.registry import SpecError

__all__ = ["SpecError", "nonnegative", "positive", "in_range", "choice", "AT_CHOICES", "where", "traced"]

AT_CHOICES = ("train", "inference", "both")


def traced(value) -> bool:
    """True for a JAX tracer: a strength that a vmapped sweep passes in as an array.

    Sweeps validate every concrete value before tracing (``spec.validate()``), so factories
    skip the value checks and the ``== 0`` identity shortcut for traced strengths."""

    return isinstance(value, jax.core.Tracer)


def _number(defense: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{defense}: {name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise SpecError(f"{defense}: {name} must be a number, got nan")
    return value


def nonnegative(defense: str, name: str, value) -> float:
    if traced(value):
        return value
    v = _number(defense, name, value)
    if v < 0 or math.isinf(v):
        raise SpecError(f"{defense}: {name} must be a finite number >= 0 (0 disables it), got {value!r}")
    return v


def positive(defense: str, name: str, value, *, allow_inf: bool = False) -> float:
    if traced(value):
        return value
    v = _number(defense, name, value)
    if v <= 0 or (math.isinf(v) and not allow_inf):
        raise SpecError(f"{defense}: {name} must be a {'' if allow_inf else 'finite '}number > 0, got {value!r}")
    return v


def in_range(defense: str, name: str, value, lo: float, hi: float, *, lo_open: bool, hi_open: bool) -> float:
    if traced(value):
        return value
    v = _number(defense, name, value)
    ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise SpecError(f"{defense}: {name} must lie in {rng}, got {value!r}")
    return v


def choice(defense: str, name: str, value, options) -> str:
    if value not in options:
        raise SpecError(f"{defense}: {name} must be one of {list(options)}, got {value!r}")
    return value


def where(defense: str, at: str) -> tuple[bool, bool]:
    """``at`` -> (acts during training, acts at inference)."""
    choice(defense, "at", at, AT_CHOICES)
    return at in ("train", "both"), at in ("inference", "both")
