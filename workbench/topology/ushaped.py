"""U-shaped split learning: the client keeps the first layers and the head; labels never
leave the client (Vepakomma et al. 2018, "configurations without label sharing").

Two cuts: the client holds ``front`` (blocks up to ``cut1``) and ``head`` (blocks after
``cut2``); the server holds ``middle``. One step moves four messages:

1. client -> server: ``z1 = front(x)``          (activations at cut 1)
2. server -> client: ``z2 = middle(z1)``        (activations at cut 2)
3. client -> server: ``dz2 = d loss / d z2``    (gradient at the head's input)
4. server -> client: ``dz1 = d loss / d z1``    (gradient at cut 1)

No labels cross. Every message crosses a wire (``UShapedTrainer.wire`` at cut 1,
``wire2`` at cut 2), whose transforms are the defenses; bytes are counted as sent. With K
clients the clients take turns (round-robin) and hand their front and head to the next
client directly (eta*N per hand-over). An epoch of a client is one jitted ``lax.scan``;
with identity wires the gradients equal ``jax.grad`` of the uncut model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from split_workbench.protocol import cross_entropy
from split_workbench.split import Half, count_params, split
from split_workbench.topology.accounting import SERVER, Ledger, NetworkModel, TopologyResult, cost_flops
from split_workbench.topology.clients import Task, accuracy, epoch_plan, plan_key, step_keys, tree_nbytes
from split_workbench.transforms import LossTerm
from split_workbench.wire import Wire, WireState

__all__ = ["UShapedModel", "u_split", "UShapedTrainer", "UExchange", "u_shaped", "run_u_shaped"]


@dataclass(frozen=True, eq=False)
class UShapedModel:
    front: Half
    middle: Half
    head: Half
    params: dict  # {"front", "middle", "head"}
    input_shape: tuple[int, ...]
    cut1_shape: tuple[int, ...]
    cut2_shape: tuple[int, ...]

    def apply(self, params: dict, x: jax.Array) -> jax.Array:
        return self.head.apply(params["head"], self.middle.apply(params["middle"], self.front.apply(params["front"], x)))

    @property
    def param_counts(self) -> dict[str, int]:
        p = self.params
        return {"client": count_params(p["front"]) + count_params(p["head"]), "server": count_params(p["middle"])}

    def flops(self) -> dict[str, float]:
        """Per-example training FLOPs of each part (XLA cost analysis, batch of 1)."""
        x = jnp.zeros((1, *self.input_shape))
        z1, z2 = jnp.zeros((1, *self.cut1_shape)), jnp.zeros((1, *self.cut2_shape))
        p = self.params

        def front(p, x, dz1):
            z, vjp = jax.vjp(lambda p: self.front.apply(p, x), p)
            return z, vjp(dz1)

        def middle(p, z1, dz2):
            z, vjp = jax.vjp(self.middle.apply, p, z1)
            return z, vjp(dz2)

        def head(p, z2):
            return jax.value_and_grad(lambda p, z: -jax.nn.log_softmax(self.head.apply(p, z))[:, 0].mean(),
                                      argnums=(0, 1))(p, z2)

        return {"front_train": cost_flops(front, p["front"], x, z1),
                "middle_train": cost_flops(middle, p["middle"], z1, z2),
                "head_train": cost_flops(head, p["head"], z2)}


def u_split(model, cut1: str, cut2: str) -> UShapedModel:
    """Cuts ``model`` (a zoo ``Sequential``) after block ``cut1`` and after block ``cut2``."""
    outer = split(model, cut1)
    rest = nnx.merge(outer.server.graphdef, outer.params["server"])
    if cut2 not in rest.names[:-1]:
        raise ValueError(f"cut2 {cut2!r} must name a block after cut1 {cut1!r} and before the last block; "
                         f"valid: {rest.names[:-1]}")
    inner = split(rest, cut2, input_shape=outer.smash_shape)
    return UShapedModel(outer.client, inner.client, inner.server,
                        {"front": outer.params["client"], "middle": inner.params["client"],
                         "head": inner.params["server"]},
                        outer.input_shape, outer.smash_shape, inner.smash_shape)


class UExchange(NamedTuple):
    """One U-shaped step: the gradients, the four messages as received, the metrics and the
    wires' new states."""

    grads: dict  # {"front", "middle", "head"}
    messages: tuple  # (z1 received by the server, z2 received by the client, dz2 received by the server,
    #                  dz1 received by the client)
    loss: jax.Array
    accuracy: jax.Array
    client_reg: jax.Array
    wire_state: tuple  # (cut 1's WireState, cut 2's WireState)


@dataclass(frozen=True, eq=False)
class UShapedTrainer:
    """Trains a ``UShapedModel``; every message crosses a wire.

    Attributes:
      model: the U-shaped split.
      client_opt: the client's optimizer (front and head); server_opt: the server's (middle).
      wire: cut 1: ``forward`` carries ``z1`` (client -> server), ``backward`` carries ``dz1``
        (server -> client), ``inference`` the deployed client's ``z1``.
      wire2: cut 2: ``forward`` carries ``z2`` (server -> client), ``backward`` carries
        ``dz2`` (client -> server; the client holds the labels, so label-dependent
        transforms such as Marvell work here).
      loss_terms: the client's regularisers on ``(x, z1)`` (e.g. NoPeek).
    """

    model: UShapedModel
    client_opt: optax.GradientTransformation
    server_opt: optax.GradientTransformation
    wire: Wire = field(default_factory=Wire)
    wire2: Wire = field(default_factory=Wire)
    loss_terms: tuple[LossTerm, ...] = ()

    def init_wire(self) -> tuple[WireState, WireState]:
        m = self.model
        z1, z2 = jnp.zeros((1, *m.cut1_shape)), jnp.zeros((1, *m.cut2_shape))
        return self.wire.init(z1, z1), self.wire2.init(z2, z2)

    def exchange(self, params, wire_state, x, y, *, key: jax.Array) -> UExchange:
        """One step's four messages through the two wires, and the gradients of the three parts.

        With identity wires and no loss terms the gradients equal ``jax.grad`` of the uncut model.
        """
        m = self.model
        k1, k2, k3, k4 = jax.random.split(key, 4)
        ws1, ws2 = wire_state
        z1, vjp_front = jax.vjp(lambda p: m.front.apply(p, x), params["front"])  # client
        z1_in, ws1 = self.wire.send_forward(z1, ws1, key=k1)
        z2, vjp_middle = jax.vjp(m.middle.apply, params["middle"], z1_in)  # server, on received z1
        z2_in, ws2 = self.wire2.send_forward(z2, ws2, key=k2)

        def head_loss(p, z):  # client, on received z2; labels stay here
            logits = m.head.apply(p, z)
            return cross_entropy(logits, y), logits

        (loss, logits), (g_head, dz2) = jax.value_and_grad(head_loss, argnums=(0, 1), has_aux=True)(params["head"],
                                                                                                     z2_in)
        dz2_in, ws2 = self.wire2.send_backward(dz2, ws2, key=k3, labels=y)
        g_middle, dz1 = vjp_middle(dz2_in)  # server, on received dz2
        dz1_in, ws1 = self.wire.send_backward(dz1, ws1, key=k4)
        cotangent, reg = dz1_in, jnp.zeros((), jnp.float32)
        if self.loss_terms:
            reg, g_reg = jax.value_and_grad(lambda z: sum(t.weight * t.fn(x, z) for t in self.loss_terms))(z1)
            cotangent = dz1_in + g_reg
        (g_front,) = vjp_front(cotangent)  # client, on received dz1
        acc = (jnp.argmax(logits, -1) == y).mean()
        return UExchange({"front": g_front, "middle": g_middle, "head": g_head}, (z1_in, z2_in, dz2_in, dz1_in),
                         loss, acc, reg, (ws1, ws2))

    def messages(self, params, x, y):
        """The step's four messages without the wires' transforms, and the gradients:
        ``(grads, (z1, z2, dz2, dz1), loss)``."""
        bare = UShapedTrainer(self.model, self.client_opt, self.server_opt)
        ex = bare.exchange(params, bare.init_wire(), x, y, key=jax.random.key(0))  # identity wires draw nothing
        return ex.grads, ex.messages, ex.loss

    def traffic(self, batch_size: int) -> dict[str, int]:
        """Bytes per step of each message as sent (after a compressing transform, its encoding)."""
        m = self.model
        t1 = self.wire.traffic(batch_size, m.cut1_shape, jnp.float32)
        t2 = self.wire2.traffic(batch_size, m.cut2_shape, jnp.float32)
        return {"up_activations": t1.forward, "down_activations": t2.forward, "up_gradients": t2.backward,
                "down_gradients": t1.backward}

    def init(self):
        p = self.model.params
        client = {"front": p["front"], "head": p["head"]}
        return p, self.client_opt.init(client), self.server_opt.init(p["middle"])

    def turn(self, params, oc, os_, wire_state, x_all, y_all, ids_SxB, valid_S, *, key: jax.Array):
        """One client's epoch: a ``lax.scan`` over its valid batches (padding steps skipped);
        step ``s`` uses ``fold_in(key, s)``. Returns ``(params, client opt state, server opt
        state, wire state, steps run, (loss, accuracy, client_reg) summed over them)``."""
        return _turn_jit(self, params, oc, os_, wire_state, x_all, y_all, ids_SxB, valid_S, key)


def _turn(trainer: UShapedTrainer, params, oc, os_, ws, x_all, y_all, ids_SxB, valid_S, key):
    def run(carry, s, ids):
        params, oc, os_, ws, n, sums = carry
        ex = trainer.exchange(params, ws, x_all[ids], y_all[ids], key=jax.random.fold_in(key, s))
        g = ex.grads
        client = {"front": params["front"], "head": params["head"]}
        uc, oc = trainer.client_opt.update({"front": g["front"], "head": g["head"]}, oc, client)
        client = optax.apply_updates(client, uc)
        us, os_ = trainer.server_opt.update(g["middle"], os_, params["middle"])
        sums = sums + jnp.stack([ex.loss, ex.accuracy, ex.client_reg])
        return {**client, "middle": optax.apply_updates(params["middle"], us)}, oc, os_, ex.wire_state, n + 1, sums

    def body(carry, inp):
        s, ids, v = inp
        return jax.lax.cond(v, lambda c: run(c, s, ids), lambda c: c, carry), None

    carry0 = (params, oc, os_, ws, jnp.zeros((), jnp.int32), jnp.zeros(3, jnp.float32))
    carry, _ = jax.lax.scan(body, carry0, (jnp.arange(ids_SxB.shape[0]), ids_SxB, valid_S))
    return carry


# The trainer is static (hashed by identity): jax.jit's own cache holds one program per trainer.
_turn_jit = jax.jit(_turn, static_argnums=0)


def u_shaped(trainer: UShapedTrainer, task: Task, *, epochs: int, key: jax.Array,
             network: NetworkModel = NetworkModel()) -> TopologyResult:
    """Round-robin U-shaped split learning; client parts (front and head) handed peer to peer."""
    return run_u_shaped(trainer, task, epochs=epochs, key=key, network=network)[0]


def run_u_shaped(trainer: UShapedTrainer, task: Task, *, epochs: int, key: jax.Array,
                 network: NetworkModel = NetworkModel()):
    """``u_shaped``, also returning the final ``(params, client opt state of client 0, server
    opt state, wire state, steps run)``; each history entry also holds ``steps``,
    ``train_loss``, ``train_accuracy`` and ``client_reg``. Client k's step s uses
    ``fold_in(step_keys(key, epoch, K)[k], s)``."""
    um, clients = trainer.model, task.clients
    k_num, b = clients.num_clients, clients.batch_size
    params, oc0, os_ = trainer.init()
    ws = trainer.init_wire()
    ocs = [oc0] * k_num
    t, fl = trainer.traffic(b), um.flops()
    client_fl, server_fl = fl["front_train"] + fl["head_train"], fl["middle_train"]
    step_s = float(network.client(client_fl * b) + network.server(server_fl * b)
                   + network.up(t["up_activations"]) + network.up(t["up_gradients"])
                   + network.down(t["down_activations"]) + network.down(t["down_gradients"]))
    ledger, cflops, sflops, busy, sim, history = Ledger(k_num), np.zeros(k_num), 0.0, np.zeros(k_num), 0.0, []
    total = 0
    for e in range(epochs):
        ids, valid = epoch_plan(clients, key=plan_key(key, e))
        keys = step_keys(key, e, k_num)
        sums, steps = np.zeros(3), 0
        for k in range(k_num):
            params, ocs[k], os_, ws, n, s = trainer.turn(params, ocs[k], os_, ws, task.x_train, task.y_train, ids[k],
                                                         valid[k], key=keys[k])
            n = int(n)
            sums, steps = sums + np.asarray(s), steps + n
            ledger.move(k, SERVER, "activations", t["up_activations"] * n)
            ledger.move(SERVER, k, "activations", t["down_activations"] * n)
            ledger.move(k, SERVER, "gradients", t["up_gradients"] * n)
            ledger.move(SERVER, k, "gradients", t["down_gradients"] * n)
            cflops[k] += client_fl * n * b
            sflops += server_fl * n * b
            busy[k] += float(network.client(client_fl * n * b))
            sim += step_s * n
            if k_num > 1:
                nb = tree_nbytes({"front": params["front"], "head": params["head"]})
                ledger.move(k, (k + 1) % k_num, "weights", nb)
                sim += network.latency_s + nb / min(network.up_bytes_per_s, network.down_bytes_per_s)
        total += steps
        history.append({"epoch": e + 1, "test_accuracy": accuracy(um.apply, params, task.x_test, task.y_test),
                        "steps": steps, "train_loss": float(sums[0]) / max(steps, 1),
                        "train_accuracy": float(sums[1]) / max(steps, 1), "client_reg": float(sums[2]) / max(steps, 1)})
    result = TopologyResult("U-shaped SL", k_num, epochs, um.param_counts, ledger, cflops, sflops, sim, busy,
                            network, int(clients.samples.sum()), history, params, notes="labels never leave the client")
    return result, (params, ocs[0], os_, ws, total)
