"""Vertical split learning: M clients hold different features of the same examples.

Client m holds the m-th vertical strip of every image (M = 2: left and right halves) and
a bottom model of its own; the server holds the top model and the labels (Vepakomma et
al. 2018, "vertically partitioned data"). One step: every client sends its smash
``z_m = bottom(params_m, x[..., strip m, :])``; the server concatenates them along the
feature axis, runs the top model and the loss, and sends each client the gradient of its
own slice. The M bottoms have the same architecture, so they run as ONE vmapped program
over clients (their parameters stacked); an epoch is one jitted ``lax.scan``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from split_workbench.data.base import shuffled_batches
from split_workbench.models.base import Sequential, flatten, relu
from split_workbench.protocol import cross_entropy
from split_workbench.split import Half, count_params, split
from split_workbench.topology.accounting import SERVER, Ledger, NetworkModel, TopologyResult, cost_flops
from split_workbench.topology.clients import accuracy

__all__ = ["VerticalModel", "make_vertical", "VerticalTrainer", "vertical", "strips"]


def _identity(z):  # a module-level block (hashable graphdef) after the cut
    return z


def strips(x_BxHxWxC: jax.Array, num_clients: int) -> jax.Array:
    """The clients' views of a batch: ``(M, B, H, W/M, C)`` vertical strips."""
    b, h, w, c = x_BxHxWxC.shape
    if w % num_clients:
        raise ValueError(f"image width {w} is not divisible by {num_clients} clients")
    return x_BxHxWxC.reshape(b, h, num_clients, w // num_clients, c).transpose(2, 0, 1, 3, 4)


@dataclass(frozen=True, eq=False)
class VerticalModel:
    bottom: object  # Half: one client's bottom model
    top: object  # Half: the server's top model
    params: dict  # {"clients": stacked (M, ...), "server": ...}
    num_clients: int
    input_shape: tuple[int, ...]
    smash_size: int  # q per client

    def apply(self, params: dict, x: jax.Array) -> jax.Array:
        z_MxBxQ = jax.vmap(self.bottom.apply)(params["clients"], strips(x, self.num_clients))
        return self.top.apply(params["server"], jnp.concatenate(list(z_MxBxQ), axis=-1))

    @property
    def param_counts(self) -> dict[str, int]:
        return {"client": count_params(self.params["clients"]) // self.num_clients,
                "server": count_params(self.params["server"])}


def make_vertical(input_shape, num_classes: int, *, key: jax.Array, num_clients: int = 2,
                  hidden: int = 128, top_hidden: int = 128) -> VerticalModel:
    """Bottom: flatten-Linear(hidden)-ReLU per client; top: Linear(top_hidden)-ReLU-Linear."""
    h, w, c = input_shape
    if w % num_clients:
        raise ValueError(f"image width {w} is not divisible by {num_clients} clients")
    strip = (h, w // num_clients, c)

    def bottom(k):
        return Sequential([("flatten", flatten), ("fc", nnx.Linear(int(np.prod(strip)), hidden, rngs=nnx.Rngs(params=k))),
                           ("relu", relu), ("identity", _identity)], input_shape=strip)

    keys = jax.random.split(key, num_clients + 1)
    halves = [split(bottom(keys[m]), "relu") for m in range(num_clients)]
    rngs = nnx.Rngs(params=keys[-1])
    top = Sequential([("fc", nnx.Linear(num_clients * hidden, top_hidden, rngs=rngs)), ("relu", relu),
                      ("out", nnx.Linear(top_hidden, num_classes, rngs=rngs))], input_shape=(num_clients * hidden,))
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[hv.params["client"] for hv in halves])
    server_module = Sequential(top.blocks())
    graphdef, server_params = nnx.split(server_module, nnx.Param)
    return VerticalModel(halves[0].client, Half(graphdef, server_module.names),
                         {"clients": stacked, "server": server_params}, num_clients, tuple(input_shape), hidden)


@dataclass(frozen=True, eq=False)
class VerticalTrainer:
    model: VerticalModel
    client_opt: optax.GradientTransformation
    server_opt: optax.GradientTransformation
    _jit: dict = field(default_factory=dict, repr=False)

    def messages(self, params, x, y):
        """``(grads, (z_MxBxQ sent up, dz_MxBxQ sent down), loss)`` for one batch."""
        m = self.model
        z, vjp = jax.vjp(lambda p: jax.vmap(m.bottom.apply)(p, strips(x, m.num_clients)), params["clients"])
        loss, (g_s, dz) = jax.value_and_grad(
            lambda p, z: cross_entropy(m.top.apply(p, jnp.concatenate(list(z), axis=-1)), y), argnums=(0, 1)
        )(params["server"], z)
        (g_c,) = vjp(dz)
        return {"clients": g_c, "server": g_s}, (z, dz), loss

    def traffic(self, batch_size: int) -> tuple[int, int]:
        """Bytes per client per step: (smash up, gradient down), from the sent arrays' shapes."""
        x = jax.ShapeDtypeStruct((batch_size, *self.model.input_shape), jnp.float32)
        y = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
        _, (z, dz), _ = jax.eval_shape(self.messages, self.model.params, x, y)
        per = lambda a: int(np.prod(a.shape[1:])) * np.dtype(a.dtype).itemsize  # noqa: E731  one client's slice
        return per(z), per(dz)

    def epoch(self, params, opt_state, x_all, y_all, *, key, batch_size: int):
        fn = self._jit.get(batch_size)
        if fn is None:
            fn = self._jit[batch_size] = jax.jit(lambda *a: self._epoch(*a, batch_size))
        return fn(params, opt_state, x_all, y_all, key)

    def _epoch(self, params, opt_state, x_all, y_all, key, batch_size):
        ids_SxB = shuffled_batches(x_all.shape[0], batch_size, key=key)

        def body(carry, ids):
            params, (oc, os_) = carry
            g, _, loss = self.messages(params, x_all[ids], y_all[ids])
            uc, oc = jax.vmap(self.client_opt.update)(g["clients"], oc, params["clients"])
            us, os_ = self.server_opt.update(g["server"], os_, params["server"])
            params = {"clients": optax.apply_updates(params["clients"], uc),
                      "server": optax.apply_updates(params["server"], us)}
            return (params, (oc, os_)), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), ids_SxB)
        return params, opt_state, ids_SxB.shape[0]

    def init(self):
        p = self.model.params
        return p, (jax.vmap(self.client_opt.init)(p["clients"]), self.server_opt.init(p["server"]))


def vertical(trainer: VerticalTrainer, x_train, y_train, x_test, y_test, *, epochs: int, batch_size: int,
             key: jax.Array, network: NetworkModel = NetworkModel()) -> TopologyResult:
    """Trains vertical split learning for ``epochs``; every client sees every example (its strip)."""
    vm = trainer.model
    m_num = vm.num_clients
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train, jnp.int32)
    params, opt_state = trainer.init()
    up, down = trainer.traffic(batch_size)
    strip = (vm.input_shape[0], vm.input_shape[1] // m_num, vm.input_shape[2])
    one_client = jax.tree.map(lambda a: a[0], vm.params["clients"])
    x1 = jnp.zeros((1, *strip))
    c_fl = cost_flops(lambda p, x, dz: jax.vjp(lambda p: vm.bottom.apply(p, x), p)[1](dz), one_client, x1,
                      jnp.zeros((1, vm.smash_size)))
    s_fl = cost_flops(lambda p, z: jax.value_and_grad(
        lambda p, z: -jax.nn.log_softmax(vm.top.apply(p, z))[:, 0].mean(), argnums=(0, 1))(p, z),
        vm.params["server"], jnp.zeros((1, m_num * vm.smash_size)))
    ledger, cflops, sflops, sim, history = Ledger(m_num), np.zeros(m_num), 0.0, 0.0, []
    everyone = np.arange(m_num)
    for e in range(epochs):
        params, opt_state, steps = trainer.epoch(params, opt_state, x_train, y_train,
                                                 key=jax.random.fold_in(key, e), batch_size=batch_size)
        ledger.move(everyone, SERVER, "activations", up * steps)
        ledger.move(SERVER, everyone, "gradients", down * steps)
        cflops += c_fl * steps * batch_size
        sflops += s_fl * steps * batch_size
        sim += steps * float(network.client(c_fl * batch_size) + network.up(up) + network.down(down)
                             + network.server(s_fl * batch_size))
        history.append({"epoch": e + 1, "test_accuracy": accuracy(vm.apply, params, x_test, jnp.asarray(y_test))})
    busy = cflops / network.client_flops_per_s
    return TopologyResult("Vertical SL", m_num, epochs, vm.param_counts, ledger, cflops, sflops, sim, busy, network,
                          (x_train.shape[0] // batch_size) * batch_size, history, params,
                          notes="features split in vertical strips; labels on the server; the forward FLOPs of "
                                "the bottom are counted in its vjp program")
