"""A training state on disk: orbax-checkpoint, every array under its real name.

``save_state`` writes a ``SplitState`` (both halves' parameters and optimizer states, the
wire's and the parties' states, the step) as one orbax PyTree checkpoint whose tree is a
nested dict of the state's own names: ``params/client/layers/1/kernel``,
``opt_state/server/0/mu/layers/2/bias``, ``step``. Names come from the pytree paths: a dict
key, a NamedTuple field (optax's ``count``, ``mu``, ``nu``), a sequence index; an nnx
Variable's ``value`` is named by its variable's path. ``restore_state`` puts the arrays back
into a template state (the one the run's spec builds), and refuses a checkpoint whose names,
shapes or dtypes differ from the template's, naming the differences.

The synchronous API is used: when ``save_state`` returns, the checkpoint is complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

__all__ = ["state_names", "save_state", "restore_state", "checkpoint_names", "CheckpointMismatch"]


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the state its spec builds."""


def _entry(k) -> str:
    if isinstance(k, DictKey):
        return str(k.key)
    if isinstance(k, GetAttrKey):
        return k.name
    if isinstance(k, SequenceKey):
        return str(k.idx)
    if isinstance(k, FlattenedIndexKey):
        return str(k.key)
    raise TypeError(f"cannot name pytree path entry {k!r}")


def _name(path) -> tuple[str, ...]:
    parts = [_entry(k) for k in path]
    if len(path) > 1 and isinstance(path[-1], GetAttrKey) and path[-1].name == "value":
        parts = parts[:-1]  # an nnx Variable: its array is named by the variable's path
    return tuple(parts)


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _stored(x) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype ``x`` is saved with (a PRNG key as its key data)."""
    a = jax.random.key_data(x) if _is_key(x) else x
    return tuple(np.shape(a)), np.dtype(a.dtype)


def state_names(state) -> list[tuple[tuple[str, ...], object]]:
    """``(name, leaf)`` for every array of ``state``, in its flattening order; names are unique."""
    named = [(_name(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(state)[0]]
    seen = set()
    for n, _ in named:
        if n in seen:
            raise ValueError(f"two arrays of the state share the name {'/'.join(n)!r}")
        seen.add(n)
    return named


def _nest(items) -> dict:
    tree: dict = {}
    for name, value in items:
        node = tree
        for part in name[:-1]:
            node = node.setdefault(part, {})
        node[name[-1]] = value
    return tree


def save_state(state, path: str | os.PathLike) -> Path:
    """Writes ``state`` to the folder ``path`` (which must not exist) as an orbax PyTree
    checkpoint of numpy arrays under their real names; PRNG keys are saved as key data."""
    path = Path(path).absolute()
    items = [(n, np.asarray(jax.random.key_data(x) if _is_key(x) else x)) for n, x in state_names(state)]
    ocp.PyTreeCheckpointer().save(path, _nest(items))
    return path


def checkpoint_names(path: str | os.PathLike) -> dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]]:
    """``{name: (shape, dtype)}`` of every array in the checkpoint at ``path`` (its metadata only)."""
    tree = ocp.PyTreeCheckpointer().metadata(Path(path).absolute()).item_metadata.tree
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))[0]
    return {tuple(_entry(k) for k in p): (tuple(m.shape), np.dtype(m.dtype)) for p, m in flat}


def restore_state(template, path: str | os.PathLike):
    """The state saved at ``path``, in ``template``'s structure (``template`` is the state the
    run's spec builds, e.g. ``trainer.init(...)``).

    Raises:
      CheckpointMismatch: the checkpoint lacks a name the template has, holds one it lacks,
        or an array's shape or dtype differs; the message lists them.
    """
    path = Path(path).absolute()
    named = state_names(template)
    saved = checkpoint_names(path)
    want = {n: _stored(x) for n, x in named}
    missing = sorted("/".join(n) for n in want.keys() - saved.keys())
    extra = sorted("/".join(n) for n in saved.keys() - want.keys())
    wrong = sorted(f"{'/'.join(n)}: saved {saved[n][0]} {saved[n][1]}, expected {want[n][0]} {want[n][1]}"
                   for n in want.keys() & saved.keys() if saved[n] != want[n])
    if missing or extra or wrong:
        lines = [f"checkpoint {path} does not match the model its spec builds "
                 "(was the model's code or a registered model changed since the run?):"]
        for what, names in (("missing", missing), ("unexpected", extra), ("different", wrong)):
            if names:
                lines.append(f"  {what}: {', '.join(names[:8])}" + (f" and {len(names) - 8} more" if len(names) > 8 else ""))
        raise CheckpointMismatch("\n".join(lines))
    args = _nest((n, ocp.RestoreArgs(restore_type=np.ndarray)) for n, _ in named)
    tree = ocp.PyTreeCheckpointer().restore(path, restore_args=args)
    leaves = []
    for n, t in named:
        a = tree
        for part in n:
            a = a[part]
        leaves.append(jax.random.wrap_key_data(jnp.asarray(a), impl=jax.random.key_impl(t)) if _is_key(t)
                      else jnp.asarray(a, t.dtype))
    return jax.tree.unflatten(jax.tree.structure(template), leaves)
