"""U-shaped split learning: the client keeps the first layers and the head; labels never
leave the client (Vepakomma et al. 2018, "configurations without label sharing").

Two cuts: the client holds ``front`` (blocks up to ``cut1``) and ``head`` (blocks after
``cut2``); the server holds ``middle``. One step moves four messages:

1. client -> server: ``z1 = front(x)``          (activations at cut 1)
2. server -> client: ``z2 = middle(z1)``        (activations at cut 2)
3. client -> server: ``dz2 = d loss / d z2``    (gradient at the head's input)
4. server -> client: ``dz1 = d loss / d z1``    (gradient at cut 1)

No labels cross. With K clients the clients take turns (round-robin) and hand their
front and head to the next client directly (eta*N per hand-over). An epoch of a client is
one jitted ``lax.scan``; gradients equal ``jax.grad`` of the uncut model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from split_workbench.protocol import cross_entropy
from split_workbench.split import Half, count_params, split
from split_workbench.topology.accounting import SERVER, Ledger, NetworkModel, TopologyResult, cost_flops
from split_workbench.topology.clients import Task, accuracy, epoch_plan, plan_key, tree_nbytes

__all__ = ["UShapedModel", "u_split", "UShapedTrainer", "u_shaped"]


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


@dataclass(frozen=True, eq=False)
class UShapedTrainer:
    model: UShapedModel
    client_opt: optax.GradientTransformation
    server_opt: optax.GradientTransformation
    _jit: dict = field(default_factory=dict, repr=False)

    def messages(self, params, x, y):
        """The step's four messages and the gradients: ``(grads, (z1, z2, dz2, dz1), loss)``."""
        m = self.model
        z1, vjp_front = jax.vjp(lambda p: m.front.apply(p, x), params["front"])  # client
        z2, vjp_middle = jax.vjp(m.middle.apply, params["middle"], z1)  # server, on received z1
        loss, (g_head, dz2) = jax.value_and_grad(  # client, on received z2; labels stay here
            lambda p, z: cross_entropy(m.head.apply(p, z), y), argnums=(0, 1))(params["head"], z2)
        g_middle, dz1 = vjp_middle(dz2)  # server, on received dz2
        (g_front,) = vjp_front(dz1)  # client, on received dz1
        return {"front": g_front, "middle": g_middle, "head": g_head}, (z1, z2, dz2, dz1), loss

    def traffic(self, batch_size: int) -> dict[str, int]:
        """Bytes per step of each message, from the shapes and dtypes of the arrays sent."""
        x = jax.ShapeDtypeStruct((batch_size, *self.model.input_shape), jnp.float32)
        y = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
        _, msgs, _ = jax.eval_shape(self.messages, self.model.params, x, y)
        nb = [int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in msgs]
        return {"up_activations": nb[0], "down_activations": nb[1], "up_gradients": nb[2], "down_gradients": nb[3]}

    def init(self):
        p = self.model.params
        client = {"front": p["front"], "head": p["head"]}
        return p, self.client_opt.init(client), self.server_opt.init(p["middle"])

    def turn(self, params, oc, os_, x_all, y_all, ids_SxB, valid_S):
        """One client's epoch: a ``lax.scan`` over its valid batches (padding steps skipped)."""
        fn = self._jit.get("turn")
        if fn is None:
            fn = self._jit["turn"] = jax.jit(self._turn)
        return fn(params, oc, os_, x_all, y_all, ids_SxB, valid_S)

    def _turn(self, params, oc, os_, x_all, y_all, ids_SxB, valid_S):
        def run(carry, ids):
            params, oc, os_, n = carry
            g, _, _ = self.messages(params, x_all[ids], y_all[ids])
            client = {"front": params["front"], "head": params["head"]}
            uc, oc = self.client_opt.update({"front": g["front"], "head": g["head"]}, oc, client)
            client = optax.apply_updates(client, uc)
            us, os_ = self.server_opt.update(g["middle"], os_, params["middle"])
            return {**client, "middle": optax.apply_updates(params["middle"], us)}, oc, os_, n + 1

        def body(carry, inp):
            ids, v = inp
            return jax.lax.cond(v, lambda c: run(c, ids), lambda c: c, carry), None

        (params, oc, os_, n), _ = jax.lax.scan(body, (params, oc, os_, jnp.zeros((), jnp.int32)), (ids_SxB, valid_S))
        return params, oc, os_, n


def u_shaped(trainer: UShapedTrainer, task: Task, *, epochs: int, key: jax.Array,
             network: NetworkModel = NetworkModel()) -> TopologyResult:
    """Round-robin U-shaped split learning; client parts (front and head) handed peer to peer."""
    um, clients = trainer.model, task.clients
    k_num, b = clients.num_clients, clients.batch_size
    params, oc0, os_ = trainer.init()
    ocs = [oc0] * k_num
    t, fl = trainer.traffic(b), um.flops()
    client_fl, server_fl = fl["front_train"] + fl["head_train"], fl["middle_train"]
    step_s = float(network.client(client_fl * b) + network.server(server_fl * b)
                   + network.up(t["up_activations"]) + network.up(t["up_gradients"])
                   + network.down(t["down_activations"]) + network.down(t["down_gradients"]))
    ledger, cflops, sflops, busy, sim, history = Ledger(k_num), np.zeros(k_num), 0.0, np.zeros(k_num), 0.0, []
    for e in range(epochs):
        ids, valid = epoch_plan(clients, key=plan_key(key, e))
        for k in range(k_num):
            params, ocs[k], os_, n = trainer.turn(params, ocs[k], os_, task.x_train, task.y_train, ids[k], valid[k])
            n = int(n)
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
        history.append({"epoch": e + 1, "test_accuracy": accuracy(um.apply, params, task.x_test, task.y_test)})
    return TopologyResult("U-shaped SL", k_num, epochs, um.param_counts, ledger, cflops, sflops, sim, busy,
                          network, int(clients.samples.sum()), history, params, notes="labels never leave the client")
