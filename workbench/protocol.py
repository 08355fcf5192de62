"""The six steps of split learning as one jitted step; an epoch as one ``lax.scan``.

1. client forward: ``z, client_vjp = jax.vjp(client.apply, client_params, x)``
2. ``z`` crosses the wire (client -> server) through the forward transforms
3-4. the server party responds to the received smash and the labels (``parties.py``); the
   honest server computes the task loss, its gradients for the server parameters and
   ``dz`` at the cut
5. ``dz`` crosses the wire (server -> client) through the backward transforms; the client
   party inspects it and may stop training
6. client backward: ``client_vjp(dz + d(loss terms)/dz)``; both optimizers step

With an identity wire and no loss terms the gradients equal ``jax.grad`` of the whole
model (tests/test_protocol.py checks every zoo model at every cut).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from split_workbench.data.base import shuffled_batches
from split_workbench.parties import ClientStrategy, HonestClient, HonestServer, ServerReply, ServerStrategy
from split_workbench.split import SplitModel
from split_workbench.transforms import GradPrivatizer, LossTerm
from split_workbench.wire import Tap, Traffic, Wire, WireState

__all__ = ["SplitState", "StepMetrics", "Observed", "ClientKept", "Exchange", "SplitTrainer", "cross_entropy",
           "evaluate_batched"]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _empty(party_state) -> bool:
    return isinstance(party_state, tuple) and not party_state


class SplitState(NamedTuple):
    params: dict  # {"client": ..., "server": ...}
    opt_state: dict  # {"client": ..., "server": ...}
    wire_state: WireState
    step: jax.Array  # int32 scalar, global step count
    parties: Any = ()  # {"client": party state, "server": party state} (() for honest parties)
    stopped: Any = None  # bool scalar once a client party that can stop is present: training stopped


class StepMetrics(NamedTuple):
    loss: jax.Array  # server's task loss on the batch
    accuracy: jax.Array  # server's accuracy on the batch
    client_reg: jax.Array  # sum of the client's weighted loss terms


class Observed(NamedTuple):
    """What crossed the wire in one step: the server's and the client's views (the same
    names as ``Tap`` and ``Observation``)."""

    smash: jax.Array  # received by the server
    labels: jax.Array  # received by the server
    cut_grads: jax.Array  # received by the client


class ClientKept(NamedTuple):
    """What the client keeps between sending the smash and receiving the cut gradient."""

    x: jax.Array  # the batch it sent (a probe's, if its party chose one)
    labels: jax.Array
    z: jax.Array  # its smash before the wire
    smash_sent: jax.Array  # its smash as sent
    vjp: Any  # the vjp of its forward pass (a pytree: it can cross a jit boundary)
    party: Any  # its party state
    applies: jax.Array  # bool scalar: whether it applies this step's update


class Exchange(NamedTuple):
    """One step's messages and what each party made of them (``SplitTrainer.exchange``)."""

    grads: dict  # {"client": ..., "server": ...}
    wire_state: WireState
    parties: Any  # the parties' new states
    stop: jax.Array  # bool scalar: the client party asks to stop
    client_applies: jax.Array  # bool scalar: the client applies this step's update (False: a probe batch)
    metrics: StepMetrics
    observed: Observed


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
      server: the server party's strategy (honest by default): what it computes on the
        received smash and sends back.
      client: the client party's strategy (honest by default): what it does with the cut
        gradient it receives (a detector may stop training).
    """

    model: SplitModel
    client_opt: optax.GradientTransformation
    server_opt: optax.GradientTransformation
    wire: Wire = field(default_factory=Wire)
    loss_terms: tuple[LossTerm, ...] = ()
    loss: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy
    privatizer: GradPrivatizer | None = None
    server: ServerStrategy = field(default_factory=HonestServer)
    client: ClientStrategy = field(default_factory=HonestClient)

    @property
    def active(self) -> bool:
        """Whether a party departs from the honest protocol (its training is its own)."""
        return bool(self.server.active or self.client.active)

    # ---------------------------------------------------------------- state
    def init(self, params: dict | None = None, *, key: jax.Array | None = None) -> SplitState:
        """The initial training state; ``key`` seeds the parties' own state (extra models)."""
        params = self.model.params if params is None else params
        z = jnp.zeros((1, *self.model.smash_shape), self.model.smash_dtype)
        return SplitState(
            params=params,
            opt_state={"client": self.client_opt.init(params["client"]),
                       "server": self.server_opt.init(params["server"])},
            wire_state=self.wire.init(z, z),
            step=jnp.zeros((), jnp.int32),
            parties=self.init_parties(key),
            stopped=jnp.zeros((), bool) if self.client.can_stop else None,
        )

    def init_parties(self, key: jax.Array | None = None):
        """The parties' initial states (``()`` when both are stateless)."""
        key = jax.random.key(0) if key is None else key
        client = self.client.init(self.model, key=jax.random.fold_in(key, 0))
        server = self.server.init(self.model, key=jax.random.fold_in(key, 1))
        if _empty(client) and _empty(server):
            return ()
        return {"client": client, "server": server}

    def traffic(self, batch_size: int) -> Traffic:
        return self.wire.traffic(batch_size, self.model.smash_shape, self.model.smash_dtype)

    def send_smash(self, client_params, x: jax.Array, *, key: jax.Array, wire: str = "inference") -> jax.Array:
        """The client's smash on ``x`` as the wire carries it outside training: through the
        ``inference`` transform (a deployed client, collaborative inference) or, with
        ``wire="train"``, the training-time ``forward`` transform from a fresh wire state."""
        if wire not in ("inference", "train"):
            raise ValueError(f"wire must be 'inference' or 'train', got {wire!r}")
        t = self.wire.inference if wire == "inference" else self.wire.forward
        state0 = t.init(jnp.zeros((1, *self.model.smash_shape), self.model.smash_dtype))
        z, _ = t.apply(self.model.client.apply(client_params, x), state0, key=key)
        return z

    # ---------------------------------------------------------------- one step
    def compute_grads(self, params: dict, wire_state: WireState, x: jax.Array, y: jax.Array, *,
                      key: jax.Array, parties=None) -> tuple[dict, WireState, StepMetrics, Observed]:
        """Steps 1-6 up to, not including, the optimizer updates; pure and jittable.
        ``parties`` are the parties' states (default: their initial states)."""
        ex = self.exchange(params, wire_state, self.init_parties() if parties is None else parties, x, y,
                           key=key, step=jnp.zeros((), jnp.int32))
        return ex.grads, ex.wire_state, ex.metrics, ex.observed

    def exchange(self, params: dict, wire_state: WireState, parties, x: jax.Array, y: jax.Array, *,
                 key: jax.Array, step: jax.Array) -> Exchange:
        """One step's messages between the two parties, and the gradients of both halves:
        ``client_send``, then ``server_reply``, then ``client_receive``. Each phase sees only
        its own party's parameters and state and the messages; each derives its randomness
        from the step's ``key`` (so two processes holding one party each can run them)."""
        p_client, p_server = ((), ()) if _empty(parties) else (parties["client"], parties["server"])
        z_sent, y_sent, wire_state, kept = self.client_send(params["client"], p_client, wire_state, x, y,
                                                            key=key, step=step)
        dz_sent, wire_state, reply = self.server_reply(params["server"], p_server, wire_state, z_sent, y_sent,
                                                       key=key)
        g_client, p_client, stop, reg = self.client_receive(params["client"], kept, dz_sent, key=key, step=step)
        acc = (jnp.argmax(reply.logits, -1) == y_sent).mean()
        new_parties = () if _empty(parties) else {"client": p_client, "server": reply.state}
        return Exchange({"client": g_client, "server": reply.grads}, wire_state, new_parties, stop, kept.applies,
                        StepMetrics(reply.loss, acc, reg), Observed(z_sent, y_sent, dz_sent))

    def client_send(self, client_params, party, wire_state: WireState, x: jax.Array, y: jax.Array, *,
                    key: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array, WireState, "ClientKept"]:
        """The client's half of steps 1-2: its party chooses the batch (a probe, or the batch
        itself), the client computes the smash and sends it through the forward transforms.
        Returns ``(smash as sent, labels as sent, wire state, what the client keeps)``."""
        applies = jnp.ones((), bool)
        if self.client.alters_batches:  # the client party chooses what it sends (e.g. a probe batch)
            party, x, y, applies = self.client.send(party, x, y, key=jax.random.fold_in(key, 4), step=step)
        # 1. client forward, keeping the vjp for step 6
        z, client_vjp = jax.vjp(lambda p: self.model.client.apply(p, x), client_params)
        # 2. smash across the wire
        z_sent, wire_state = self.wire.send_forward(z, wire_state, key=jax.random.split(key, 3)[0])
        return z_sent, y, wire_state, ClientKept(x, y, z, z_sent, client_vjp, party, applies)

    def server_reply(self, server_params, party, wire_state: WireState, smash: jax.Array, labels: jax.Array, *,
                     key: jax.Array) -> tuple[jax.Array, WireState, ServerReply]:
        """The server's half, steps 3-5: its strategy responds to the received smash and
        labels, and the cut gradient goes back through the backward transforms. Returns
        ``(cut gradient as sent, wire state, the server's reply)``."""
        reply = self.server.respond(self.model, self.loss, server_params, party, smash, labels,
                                    key=jax.random.fold_in(key, 3))
        dz_sent, wire_state = self.wire.send_backward(reply.cut_grads, wire_state, key=jax.random.split(key, 3)[1],
                                                      labels=labels)
        return dz_sent, wire_state, reply

    def client_receive(self, client_params, kept: "ClientKept", cut_grads: jax.Array, *, key: jax.Array,
                       step: jax.Array) -> tuple[Any, Any, jax.Array, jax.Array]:
        """The client's half of steps 5-6: its party inspects the received cut gradient (and
        may ask to stop), then the client backpropagates it, plus its own loss terms.
        Returns ``(client gradients, party state, stop, the loss terms' value)``."""
        # What the received cut gradient alone does to the client's parameters (a detector
        # reads it; XLA drops it when the party does not).
        (g_cut,) = kept.vjp(cut_grads)
        party, stop = self.client.inspect(kept.party, kept.smash_sent, cut_grads, kept.labels, step=step,
                                          grads=g_cut)
        x, z = kept.x, kept.z
        cotangent, reg = cut_grads, jnp.zeros((), jnp.float32)
        if self.loss_terms:
            def client_reg(z_):
                return sum(t.weight * t.fn(x, z_) for t in self.loss_terms)
            reg, g_reg = jax.value_and_grad(client_reg)(z)
            cotangent = cut_grads + g_reg
        if self.privatizer is None:
            (g_client,) = kept.vjp(cotangent) if self.loss_terms else (g_cut,)
        else:
            # The batch mean in the loss makes each row of dz carry a 1/B factor; per-example
            # gradients are those of each example's own loss, so that factor is undone.
            b = x.shape[0]

            def one(xi, ci):
                _, vjp_i = jax.vjp(lambda p: self.model.client.apply(p, xi[None]), client_params)
                return vjp_i(ci[None] * b)[0]

            g_client = self.privatizer(jax.vmap(one)(x, cotangent), key=jax.random.split(key, 3)[2])
        return g_client, party, stop, reg

    def step(self, state: SplitState, x: jax.Array, y: jax.Array, *, key: jax.Array
             ) -> tuple[SplitState, StepMetrics, Observed]:
        """One training step on batch ``(x, y)``: the six steps, then both optimizers. Once a
        client party has stopped training, steps leave the parameters as they are; on a
        probe batch (the client party's ``send`` says so) the client keeps its own."""
        ex = self.exchange(state.params, state.wire_state, state.parties, x, y, key=key, step=state.step)
        new_params, new_opt = {}, {}
        for side, opt in (("client", self.client_opt), ("server", self.server_opt)):
            updates, new_opt[side] = opt.update(ex.grads[side], state.opt_state[side], state.params[side])
            new_params[side] = optax.apply_updates(state.params[side], updates)
        stopped = state.stopped
        if self.client.can_stop or self.client.alters_batches:
            if self.client.can_stop:
                stopped = state.stopped | ex.stop
            halt = stopped if self.client.can_stop else jnp.zeros((), bool)
            hold = {"client": halt | ~ex.client_applies, "server": halt}
            for side in ("client", "server"):
                keep = functools.partial(jax.tree.map, lambda old, new, h=hold[side]: jnp.where(h, old, new))
                new_params[side] = keep(state.params[side], new_params[side])
                new_opt[side] = keep(state.opt_state[side], new_opt[side])
        return (SplitState(new_params, new_opt, ex.wire_state, state.step + 1, ex.parties, stopped),
                ex.metrics, ex.observed)

    # ---------------------------------------------------------------- an epoch
    def epoch(self, state: SplitState, x_all: jax.Array, y_all: jax.Array, *, key: jax.Array,
              batch_size: int, tap_local: tuple[int, ...] = ()) -> tuple[SplitState, StepMetrics, Tap | None]:
        """One pass over ``(x_all, y_all)`` in shuffled batches (the remainder is dropped).

        Jitted as one program: a ``lax.scan`` over the steps. ``tap_local`` lists step
        indices within this epoch at which to record what crossed the wire.
        """
        return self._epoch_jit(state, x_all, y_all, key, batch_size, tap_local)

    @functools.cached_property
    def _epoch_jit(self):  # one jitted function per trainer (compiled once per batch size and taps)
        return jax.jit(self._epoch, static_argnums=(4, 5))

    @functools.cached_property
    def _evaluate_jit(self):
        return jax.jit(self._evaluate, static_argnums=(4,))

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
            tap = Tap(np.asarray(tap_local), obs.smash, obs.labels, obs.cut_grads, ids)
        return state, metrics, tap

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, params: dict, x: jax.Array, y: jax.Array, *, batch_size: int = 1000) -> dict[str, float]:
        """Task loss and accuracy of the trained split model on held-out data (no wire noise
        unless the wire's ``inference`` transform adds it)."""
        loss, acc = self._evaluate_jit(params, jnp.asarray(x), jnp.asarray(y), jax.random.key(0), batch_size)
        return {"loss": float(loss), "accuracy": float(acc)}

    def _evaluate(self, params, x, y, key, batch_size):
        def logits(p, xb, k):
            return self.model.server.apply(p["server"], self.send_smash(p["client"], xb, key=k))
        return evaluate_batched(logits, params, x, y, key, batch_size)


def evaluate_batched(logits_fn, params, x: jax.Array, y: jax.Array, key: jax.Array, batch_size: int):
    """Mean task loss and accuracy of ``logits_fn(params, x_batch, key_i)`` over ``(x, y)`` in
    chunks of ``batch_size`` (the last one padded and masked), chunk ``i`` with
    ``fold_in(key, i)``: one ``lax.map``, for every topology's evaluation."""
    n = x.shape[0]
    b = min(batch_size, n)
    chunks = -(-n // b)
    pad = chunks * b - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(chunks, b, *x.shape[1:])
    yp = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]).reshape(chunks, b)
    mask = (jnp.arange(chunks * b) < n).reshape(chunks, b)

    def one(inp):
        i, xb, yb, mb = inp
        logits = logits_fn(params, xb, jax.random.fold_in(key, i))
        per = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
        return (per * mb).sum(), ((jnp.argmax(logits, -1) == yb) * mb).sum()

    losses, correct = jax.lax.map(one, (jnp.arange(chunks), xp, yp, mask))
    return losses.sum() / n, correct.sum() / n
