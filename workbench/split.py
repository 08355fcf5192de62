"""Cut a model of named blocks into a client half and a server half.

Each half is a graph definition plus a parameter pytree (an ``nnx.State`` holding only
``nnx.Param`` leaves) and a pure ``apply(params, x)``. Parameters are partitioned
functionally as ``{"client": ..., "server": ...}``: nothing is copied into or mutated in
a module at run time; ``nnx.merge`` rebuilds each half inside the traced function.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from split_workbench.models.base import Block, Sequential

__all__ = ["Half", "SplitModel", "split", "join_params", "partition_params", "count_params"]

Params = Any


class GraphApply:
    """``apply(params, x)`` of an NNX graph definition, equal and hashed by that definition:
    jitted programs that take it as a static argument (attacks take ``client_apply``)
    compile once per architecture, not once per trained model of a sweep."""

    def __init__(self, graphdef):
        self.graphdef = graphdef

    def __call__(self, params: Params, x: jax.Array) -> jax.Array:
        return nnx.merge(self.graphdef, params)(x)

    def __hash__(self):
        return hash(self.graphdef)

    def __eq__(self, other):
        return isinstance(other, GraphApply) and self.graphdef == other.graphdef


@dataclass(frozen=True, eq=False)
class Half:
    """One side of the cut: ``apply(params, x)`` is a pure function of its arguments."""

    graphdef: Any
    names: tuple[str, ...]

    @property
    def apply(self) -> GraphApply:
        return GraphApply(self.graphdef)


def count_params(params: Params) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def _cost_flops(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax returned one dict per device
        analysis = analysis[0]
    return float((analysis or {}).get("flops", float("nan")))


@dataclass(frozen=True, eq=False)
class SplitModel:
    """A model cut in two. ``params`` holds the initial ``{"client", "server"}`` parameters."""

    client: Half
    server: Half
    params: dict[str, Params]
    cut: str
    cut_index: int
    cut_points: tuple[str, ...]
    input_shape: tuple[int, ...]
    smash_shape: tuple[int, ...]
    smash_dtype: Any
    output_shape: tuple[int, ...]

    def apply(self, params: dict[str, Params], x: jax.Array) -> jax.Array:
        """The whole model, client then server (no wire, no defenses)."""
        return self.server.apply(params["server"], self.client.apply(params["client"], x))

    @property
    def param_counts(self) -> dict[str, int]:
        return {side: count_params(self.params[side]) for side in ("client", "server")}

    @property
    def smash_size(self) -> int:
        """Number of values each example sends across the cut."""
        return int(np.prod(self.smash_shape))

    def flops(self) -> dict[str, float]:
        """FLOPs per example from XLA's cost analysis of the compiled halves (batch of 1).

        ``client_forward``/``server_forward``: inference; ``client_train``/``server_train``:
        forward plus backward as run by one training step (the client's backward is the
        vector-Jacobian product at the cut; the server's includes the loss and ``dz``).
        """
        return dict(self._flops)

    @functools.cached_property
    def _flops(self) -> dict[str, float]:  # computed once per split model
        x = jnp.zeros((1, *self.input_shape), jnp.float32)
        z = jnp.zeros((1, *self.smash_shape), self.smash_dtype)
        pc, ps = self.params["client"], self.params["server"]

        def client_train(p, x, dz):
            z, vjp = jax.vjp(lambda p: self.client.apply(p, x), p)
            return z, vjp(dz)

        def server_train(p, z):
            def loss(p, z):
                logits = self.server.apply(p, z)
                return -jax.nn.log_softmax(logits)[:, 0].mean()
            return jax.value_and_grad(loss, argnums=(0, 1))(p, z)

        return {
            "client_forward": _cost_flops(self.client.apply, pc, x),
            "server_forward": _cost_flops(self.server.apply, ps, z),
            "client_train": _cost_flops(client_train, pc, x, z),
            "server_train": _cost_flops(server_train, ps, z),
            "whole_forward": _cost_flops(self.apply, self.params, x),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "cut": self.cut,
            "cut_index": self.cut_index,
            "input_shape": list(self.input_shape),
            "smash_shape": list(self.smash_shape),
            "params": self.param_counts,
            "flops_per_example": self.flops(),
        }


def _resolve_cut(names: tuple[str, ...], cut: str | int) -> int:
    valid = names[:-1]
    listing = ", ".join(f"{i + 1}:{n}" for i, n in enumerate(valid))
    if isinstance(cut, (bool, np.bool_)):
        raise TypeError(f"cut must be a cut-point name or an index, got {cut!r}; valid cuts: {listing}")
    if isinstance(cut, (int, np.integer)):
        i = int(cut)
        if not 1 <= i <= len(valid):
            raise ValueError(
                f"cut index {i} is out of range: a cut must leave at least one block on each side, "
                f"so it is 1..{len(valid)} (index i cuts after block i). Valid cuts: {listing}")
        return i
    if isinstance(cut, str):
        if cut == names[-1]:
            raise ValueError(f"cut {cut!r} is after the last block, which leaves the server nothing. "
                             f"Valid cuts: {listing}")
        if cut not in valid:
            raise ValueError(f"unknown cut {cut!r}. Valid cuts (index:name): {listing}")
        return valid.index(cut) + 1
    raise TypeError(f"cut must be a cut-point name or an index, got {type(cut).__name__}; valid cuts: {listing}")


def _as_sequential(model, input_shape) -> Sequential:
    if isinstance(model, Sequential):
        return model
    if isinstance(model, Sequence) and all(isinstance(p, tuple) and len(p) == 2 for p in model):
        return Sequential(list(model), input_shape=input_shape)
    raise TypeError("split() takes a split_workbench.models.Sequential or a sequence of (name, block) pairs, "
                    f"got {type(model).__name__}")


def _half(blocks: list[tuple[str, Block]]) -> tuple[Half, Params]:
    module = Sequential(blocks)
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    leftover = jax.tree.leaves(rest)
    if leftover:
        kinds = sorted({type(v).__name__ for v in jax.tree.leaves(rest, is_leaf=lambda v: isinstance(v, nnx.Variable))})
        raise ValueError(
            f"split() supports models whose state is all nnx.Param; found {kinds}. Batch statistics "
            "or RNG state would be shared across the cut: use GroupNorm/LayerNorm instead of BatchNorm "
            "and pass dropout keys explicitly.")
    graphdef = nnx.graphdef(module)  # graph with params as the only state
    return Half(graphdef, module.names), params


def split(model, cut: str | int, *, input_shape: tuple[int, ...] | None = None) -> SplitModel:
    """Cuts ``model`` after block ``cut`` (a name or a 1-based index).

    Args:
      model: a ``Sequential`` of named blocks (see ``split_workbench.models``), or a sequence of
        ``(name, block)`` pairs where a block is an ``nnx.Module`` or a pure callable.
      cut: the name of the last client block, or the number of client blocks.
      input_shape: one example's shape (H, W, C); defaults to the model's ``input_shape``.

    Returns:
      A ``SplitModel`` whose halves compose to the original model exactly.
    """
    seq = _as_sequential(model, input_shape)
    shape = tuple(input_shape) if input_shape is not None else seq.input_shape
    if shape is None:
        raise ValueError("the model has no input_shape: pass split(model, cut, input_shape=(H, W, C))")
    i = _resolve_cut(seq.names, cut)
    blocks = seq.blocks()
    client, pc = _half(blocks[:i])
    server, ps = _half(blocks[i:])
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    z = jax.eval_shape(client.apply, pc, x)
    out = jax.eval_shape(server.apply, ps, z)
    return SplitModel(
        client=client, server=server, params={"client": pc, "server": ps},
        cut=seq.names[i - 1], cut_index=i, cut_points=seq.cut_points,
        input_shape=shape, smash_shape=tuple(z.shape[1:]), smash_dtype=z.dtype,
        output_shape=tuple(out.shape[1:]),
    )


def _layers(params: Params) -> dict[int, Any]:
    pure = params.to_pure_dict() if hasattr(params, "to_pure_dict") else params
    return dict(pure.get("layers", {}))




def join_params(sm: SplitModel, params: dict[str, Params]) -> dict:
    """The whole model's parameters as a pure dict ``{"layers": {i: ...}}`` (block indices)."""
    layers = dict(_layers(params["client"]))
    for j, v in _layers(params["server"]).items():
        layers[int(j) + sm.cut_index] = v
    return {"layers": layers}


def partition_params(sm: SplitModel, whole: dict) -> dict[str, Params]:
    """Inverse of ``join_params``: a whole-model pure dict to ``{"client", "server"}`` states."""
    out = {}
    for side, lo in (("client", 0), ("server", sm.cut_index)):
        template = jax.tree.map(lambda a: a, sm.params[side])
        pure = template.to_pure_dict()
        for j in pure.get("layers", {}):
            pure["layers"][j] = whole["layers"][int(j) + lo]
        nnx.replace_by_pure_dict(template, pure)
        out[side] = template
    return out
