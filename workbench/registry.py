"""Name -> factory registries, configured by spec strings like ``"laplace_noise(scale=0.5)"``.

A spec string is a registered name, optionally followed by keyword arguments whose values
are Python literals (numbers, strings, booleans, None, tuples, lists). Unknown names,
unknown or missing arguments and non-literal values are errors that name the problem and
list what is valid, raised before anything is built.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["Registry", "parse_spec", "format_spec", "SpecError"]


class SpecError(ValueError):
    """A spec string that cannot be parsed or does not match its factory."""


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name(a=1, b='x')"`` -> ``("name", {"a": 1, "b": "x"})``; ``"name"`` -> ``("name", {})``."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"a spec must be a non-empty string like 'name(arg=1.0)', got {spec!r}")
    text = spec.strip()
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise SpecError(f"cannot parse spec {spec!r}: {e.msg}; write it as name(arg=value, ...)") from None
    if isinstance(node, ast.Name):
        return node.id, {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise SpecError(f"spec {spec!r} must be a name or a call like name(arg=value)")
    if node.args:
        raise SpecError(f"spec {spec!r}: pass arguments by keyword, e.g. {node.func.id}(scale=0.5)")
    kwargs = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise SpecError(f"spec {spec!r}: **kwargs are not allowed")
        try:
            kwargs[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            raise SpecError(f"spec {spec!r}: the value of {kw.arg!r} must be a literal "
                            f"(number, string, bool, None, tuple, list)") from None
    return node.func.id, kwargs


def format_spec(name: str, kwargs: dict[str, Any]) -> str:
    if not kwargs:
        return name
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items())) + ")"


class Registry:
    """A registry of factories of one kind (``"attack"``, ``"defense"``, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, factory: Callable[..., Any] | None = None):
        """Registers ``factory`` under ``name``; usable as a decorator. Duplicates raise."""
        def add(f):
            if not name or not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"{self.kind} names are identifiers like 'gaussian_noise', got {name!r}")
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = f
            return f
        return add(factory) if factory is not None else add

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._factories[name]
        except KeyError:
            plural = self.kind[:-1] + "ies" if self.kind.endswith("y") else self.kind + "s"
            raise SpecError(f"unknown {self.kind} {name!r}; registered {plural}: {self.names()}") from None

    def parameters(self, name: str) -> dict[str, Any]:
        """The factory's keyword parameters and defaults (``inspect.Parameter.empty`` if required)."""
        sig = inspect.signature(self.get(name))
        return {p.name: p.default for p in sig.parameters.values()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    def validate(self, spec: str) -> tuple[str, dict[str, Any]]:
        """Parses ``spec`` and checks its arguments against the factory, building nothing."""
        name, kwargs = parse_spec(spec)
        factory = self.get(name)
        params = self.parameters(name)
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise SpecError(f"{self.kind} {name!r} has no parameter(s) {unknown}; its parameters: "
                            f"{', '.join(f'{k}={v!r}' if v is not inspect.Parameter.empty else k for k, v in params.items()) or 'none'}")
        try:
            inspect.signature(factory).bind(**kwargs)
        except TypeError as e:
            raise SpecError(f"{self.kind} spec {spec!r}: {e}") from None
        return name, kwargs

    def build(self, spec: str, **context):
        """Builds the object that ``spec`` names; ``context`` is passed to factories that take it."""
        name, kwargs = self.validate(spec)
        factory = self.get(name)
        params = self.parameters(name)
        extra = {k: v for k, v in context.items() if k in params and k not in kwargs}
        return factory(**kwargs, **extra)
