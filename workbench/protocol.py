"""The six steps of split learning as one jitted step; an epoch as one ``lax.scan``.

1. client forward: ``z, client_vjp = jax.vjp(client.apply, client_params, x)``
2. ``z`` crosses the wire (client -> server) through the forward transforms
3. server forward on the received smash, loss on the labels
4. server backward: gradients for the server parameters and ``dz`` at the cut
5. ``dz`` crosses the wire (server -> client) through the backward transforms
6. client backward: ``client_vjp(dz + d(loss terms)/dz)``; both optimizers step

With an identity wire and no loss terms the gradients equal ``jax.grad`` of the whole
model (tests/test_protocol.py checks every zoo model at every cut).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from split_workbench.data.base import shuffled_batches
from split_workbench.split import SplitModel
from split_workbench.transforms import GradPrivatizer, LossTerm
from split_workbench.wire import Tap, Traffic, Wire, WireState

__all__ = ["SplitState", "StepMetrics", "Observed", "SplitTrainer", "cross_entropy"]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


class SplitState(NamedTuple):
    params: dict  # {"client": ..., "server": ...}
    opt_state: dict  # {"client": ..., "server": ...}
    wire_state: WireState
    step: jax.Array  # int32 scalar, global step count


class StepMetrics(NamedTuple):
    loss: jax.Array  # server's task loss on the batch
    accuracy: jax.Array  # server's accuracy on the batch
    client_reg: jax.Array  # sum of the client's weighted loss terms


class Observed(NamedTuple):
    """What crossed the wire in one step: the server's and the client's views."""

    smash: jax.Array  # received by the server
    labels: jax.Array  # received by the server
    cut_grad: jax.Array  # received by the client


@dataclass(frozen=True, eq=False)
class SplitTrainer:
    """Trains a ``SplitModel`` with the six-step protocol.

    Attributes:
      model: the split model (its ``params`` are the initial parameters).
      client_opt, server_opt: optax transformations for each side's parameters.
      wire: forward (smash) and backward (cut gradient) transforms.
      loss_terms: client-side regularisers on (x, z), e.g. NoPeek.
      loss: the server's task loss ``loss(logits, labels) -> scalar`` (mean over the batch).
      privatizer: if set, the client computes per-example parameter gradients (one vjp per
        example, vmapped) and applies ``privatizer(per_example, key=...)`` instead of the
        batch gradient (DP-SGD on the client's updates).
    """

    model: SplitModel
    client_opt: optax.GradientTransformation
    server_opt: optax.GradientTransformation
    wire: Wire = field(default_factory=Wire)
    loss_terms: tuple[LossTerm, ...] = ()
    loss: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy
    privatizer: GradPrivatizer | None = None
    _jit: dict = field(default_factory=dict, repr=False)

    # ---------------------------------------------------------------- state
    def init(self, params: dict | None = None) -> SplitState:
        params = self.model.params if params is None else params
        z = jnp.zeros((1, *self.model.smash_shape), self.model.smash_dtype)
        return SplitState(
            params=params,
            opt_state={"client": self.client_opt.init(params["client"]),
                       "server": self.server_opt.init(params["server"])},
            wire_state=self.wire.init(z, z),
            step=jnp.zeros((), jnp.int32),
        )

    def traffic(self, batch_size: int) -> Traffic:
        return self.wire.traffic(batch_size, self.model.smash_shape, self.model.smash_dtype)

    # ---------------------------------------------------------------- one step
    def compute_grads(self, params: dict, wire_state: WireState, x: jax.Array, y: jax.Array, *,
                      key: jax.Array) -> tuple[dict, WireState, StepMetrics, Observed]:
        """Steps 1-6 up to, not including, the optimizer updates; pure and jittable."""
        client, server = self.model.client, self.model.server
        k_fwd, k_bwd, k_priv = jax.random.split(key, 3)

        # 1. client forward, keeping the vjp for step 6
        z, client_vjp = jax.vjp(lambda p: client.apply(p, x), params["client"])
        # 2. smash across the wire
        z_sent, wire_state = self.wire.send_forward(z, wire_state, key=k_fwd)

        # 3-4. server forward, loss, backward to its parameters and to the cut
        def server_loss(ps, z_in):
            logits = server.apply(ps, z_in)
            return self.loss(logits, y), logits

        (loss, logits), (g_server, dz) = jax.value_and_grad(server_loss, argnums=(0, 1), has_aux=True)(
            params["server"], z_sent)
        # 5. cut gradient across the wire
        dz_sent, wire_state = self.wire.send_backward(dz, wire_state, key=k_bwd, labels=y)

        # 6. client backward through the saved vjp, plus the client's own loss terms
        cotangent, reg = dz_sent, jnp.zeros((), jnp.float32)
        if self.loss_terms:
            def client_reg(z_):
                return sum(t.weight * t.fn(x, z_) for t in self.loss_terms)
            reg, g_reg = jax.value_and_grad(client_reg)(z)
            cotangent = dz_sent + g_reg
        if self.privatizer is None:
            (g_client,) = client_vjp(cotangent)
        else:
            # The batch mean in the loss makes each row of dz carry a 1/B factor; per-example
            # gradients are those of each example's own loss, so that factor is undone.
            b = x.shape[0]

            def one(xi, ci):
                _, vjp_i = jax.vjp(lambda p: client.apply(p, xi[None]), params["client"])
                return vjp_i(ci[None] * b)[0]

            g_client = self.privatizer(jax.vmap(one)(x, cotangent), key=k_priv)

        acc = (jnp.argmax(logits, -1) == y).mean()
        return ({"client": g_client, "server": g_server}, wire_state,
                StepMetrics(loss, acc, reg), Observed(z_sent, y, dz_sent))

    def step(self, state: SplitState, x: jax.Array, y: jax.Array, *, key: jax.Array
             ) -> tuple[SplitState, StepMetrics, Observed]:
        """One training step on batch ``(x, y)``: the six steps, then both optimizers."""
        grads, wire_state, metrics, observed = self.compute_grads(state.params, state.wire_state, x, y, key=key)
        new_params, new_opt = {}, {}
        for side, opt in (("client", self.client_opt), ("server", self.server_opt)):
            updates, new_opt[side] = opt.update(grads[side], state.opt_state[side], state.params[side])
            new_params[side] = optax.apply_updates(state.params[side], updates)
        return SplitState(new_params, new_opt, wire_state, state.step + 1), metrics, observed

    # ---------------------------------------------------------------- an epoch
    def epoch(self, state: SplitState, x_all: jax.Array, y_all: jax.Array, *, key: jax.Array,
              batch_size: int, tap_local: tuple[int, ...] = ()) -> tuple[SplitState, StepMetrics, Tap | None]:
        """One pass over ``(x_all, y_all)`` in shuffled batches (the remainder is dropped).

        Jitted as one program: a ``lax.scan`` over the steps. ``tap_local`` lists step
        indices within this epoch at which to record what crossed the wire.
        """
        fn = self._jit.get(("epoch", batch_size, tap_local))
        if fn is None:
            fn = jax.jit(lambda s, xa, ya, k: self._epoch(s, xa, ya, k, batch_size, tap_local))
            self._jit[("epoch", batch_size, tap_local)] = fn
        return fn(state, x_all, y_all, key)

    def _epoch(self, state, x_all, y_all, key, batch_size, tap_local):
        k_perm, k_steps = jax.random.split(key)
        ids_SxB = shuffled_batches(x_all.shape[0], batch_size, key=k_perm)
        steps = ids_SxB.shape[0]
        taps = jnp.asarray(tap_local, jnp.int32)

        def empty_tap():
            t = len(tap_local)
            z = jnp.zeros((t, batch_size, *self.model.smash_shape), self.model.smash_dtype)
            return Observed(z, jnp.zeros((t, batch_size), y_all.dtype), z), jnp.zeros((t, batch_size), jnp.int32)

        def body(carry, inp):
            state, buf = carry
            i, ids = inp
            state, metrics, obs = self.step(state, x_all[ids], y_all[ids], key=jax.random.fold_in(k_steps, i))
            if tap_local:
                slot = jnp.clip(jnp.searchsorted(taps, i), 0, len(tap_local) - 1)
                hit = taps[slot] == i
                buf = jax.lax.cond(
                    hit,
                    lambda b: jax.tree.map(lambda a, v: a.at[slot].set(v), b, (obs, ids)),
                    lambda b: b, buf)
            return (state, buf), metrics

        buf0 = empty_tap() if tap_local else None
        (state, buf), metrics = jax.lax.scan(body, (state, buf0), (jnp.arange(steps), ids_SxB))
        tap = None
        if tap_local:
            obs, ids = buf
            tap = Tap(np.asarray(tap_local), obs.smash, obs.labels, obs.cut_grad, ids)
        return state, metrics, tap

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, params: dict, x: jax.Array, y: jax.Array, *, batch_size: int = 1000) -> dict[str, float]:
        """Task loss and accuracy of the trained split model on held-out data (no wire noise
        unless the wire's ``inference`` transform adds it)."""
        fn = self._jit.get(("eval", batch_size))
        if fn is None:
            fn = jax.jit(lambda p, xa, ya, k: self._evaluate(p, xa, ya, k, batch_size))
            self._jit[("eval", batch_size)] = fn
        loss, acc = fn(params, jnp.asarray(x), jnp.asarray(y), jax.random.key(0))
        return {"loss": float(loss), "accuracy": float(acc)}

    def _evaluate(self, params, x, y, key, batch_size):
        n = x.shape[0]
        b = min(batch_size, n)
        chunks = -(-n // b)
        pad = chunks * b - n
        xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(chunks, b, *x.shape[1:])
        yp = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]).reshape(chunks, b)
        mask = (jnp.arange(chunks * b) < n).reshape(chunks, b)
        infer = self.wire.inference
        state0 = infer.init(jnp.zeros((1, *self.model.smash_shape), self.model.smash_dtype))

        def one(inp):
            i, xb, yb, mb = inp
            z = self.model.client.apply(params["client"], xb)
            z, _ = infer.apply(z, state0, key=jax.random.fold_in(key, i))
            logits = self.model.server.apply(params["server"], z)
            per = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
            return (per * mb).sum(), ((jnp.argmax(logits, -1) == yb) * mb).sum()

        losses, correct = jax.lax.map(one, (jnp.arange(chunks), xp, yp, mask))
        return losses.sum() / n, correct.sum() / n
