"""Vertical split learning: M clients hold different features of the same examples.

Client m holds the m-th vertical strip of every image (M = 2: left and right halves) and
a bottom model of its own; the server holds the top model and the labels (Vepakomma et
al. 2018, "vertically partitioned data"). One step: every client sends its smash
``z_m = bottom(params_m, x[..., strip m, :])``; the server joins them
(``VerticalModel.join``: side by side, or summed), runs the top model and the loss, and sends each client the gradient of its
own slice. Each party's smash and the gradient it receives cross its own wire
(``VerticalTrainer.wire``: the same transforms, the party's own state and randomness).
The M bottoms have the same architecture, so they run as ONE vmapped program over clients
(their parameters stacked); an epoch is one jitted ``lax.scan``. ``make_vertical`` builds
dense bottoms and top; ``vertical_split`` cuts a zoo model for strips (the spec path).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

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
from split_workbench.topology.clients import accuracy, tree_broadcast
from split_workbench.transforms import LossTerm
from split_workbench.wire import Wire, WireState

__all__ = ["VerticalModel", "make_vertical", "vertical_split", "VerticalTrainer", "VExchange", "vertical",
           "run_vertical", "strips", "JOINS"]


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
    """M bottoms (one architecture, stacked parameters) and the server's top.

    ``join`` combines the parties' smashes ``z_MxBx...`` into the top's input: ``"concat"``
    along ``concat_axis`` of each smash (-1: features; for image smashes (B, H, W, C),
    -2 puts the strips' smashes side by side as the whole image's would be), or ``"sum"``.
    """

    bottom: object  # Half: one client's bottom model
    top: object  # Half: the server's top model
    params: dict  # {"clients": stacked (M, ...), "server": ...}
    num_clients: int
    input_shape: tuple[int, ...]
    smash_size: int  # q per client (elements of one example's smash)
    join: str = "concat"
    concat_axis: int = -1
    smash_shape: tuple[int, ...] | None = None  # one example's smash per client; None: (smash_size,)

    def __post_init__(self):
        if self.join not in JOINS:
            raise ValueError(f"join must be one of {JOINS}, got {self.join!r}")

    @property
    def party_smash_shape(self) -> tuple[int, ...]:
        return (self.smash_size,) if self.smash_shape is None else tuple(self.smash_shape)

    @property
    def strip_shape(self) -> tuple[int, ...]:
        h, w, c = self.input_shape
        return (h, w // self.num_clients, c)

    def joined(self, z_MxB: jax.Array) -> jax.Array:
        """The top's input from the parties' smashes (M, B, ...)."""
        if self.join == "sum":
            return z_MxB.sum(0)
        return jnp.concatenate(list(z_MxB), axis=self.concat_axis)

    def side_by_side(self, z_MxB: jax.Array) -> jax.Array:
        """The parties' smashes as one array, side by side along ``concat_axis`` (B, ...):
        how the server holds what it received, whatever the join."""
        return jnp.concatenate(list(z_MxB), axis=self.concat_axis)

    def parties_of(self, z_B: jax.Array) -> jax.Array:
        """``side_by_side``'s inverse: (M, B, *party_smash_shape)."""
        return jnp.stack(jnp.split(z_B, self.num_clients, axis=self.concat_axis))

    def smashes(self, clients_params, x: jax.Array) -> jax.Array:
        """Every party's smash of its strip of ``x``: (M, B, *party_smash_shape)."""
        return jax.vmap(self.bottom.apply)(clients_params, strips(x, self.num_clients))

    def apply(self, params: dict, x: jax.Array) -> jax.Array:
        return self.top.apply(params["server"], self.joined(self.smashes(params["clients"], x)))

    @property
    def param_counts(self) -> dict[str, int]:
        return {"client": count_params(self.params["clients"]) // self.num_clients,
                "server": count_params(self.params["server"])}


JOINS = ("concat", "sum")


def vertical_split(make: Callable[..., object], cut: str, input_shape, *, num_clients: int, key: jax.Array,
                   join: str = "concat") -> VerticalModel:
    """A vertical split of a zoo-style model: each party's bottom is ``make(key=, input_shape=strip)``
    cut at ``cut`` (its client half, on its vertical strip), the server's top is the server
    half of ``make(key=, input_shape=input_shape)`` cut at ``cut``. Party m's bottom is
    initialised from ``fold_in(key, m)``, the top from ``fold_in(key, num_clients)``.

    Raises ValueError when the strips do not fit: the joined smashes must have the shape
    the top takes (``"concat"`` for image smashes whose width scales with the input's, as
    after convolutions; ``"sum"`` for smashes whose shape does not depend on the width, as
    after a dense layer).
    """
    h, w, c = input_shape
    if num_clients < 2:
        raise ValueError(f"vertical split learning needs at least 2 parties, got {num_clients}")
    if w % num_clients:
        raise ValueError(f"image width {w} is not divisible by {num_clients} parties")
    if join not in JOINS:
        raise ValueError(f"join must be one of {JOINS}, got {join!r}")
    strip = (h, w // num_clients, c)
    halves = [split(make(key=jax.random.fold_in(key, m), input_shape=strip), cut) for m in range(num_clients)]
    whole = split(make(key=jax.random.fold_in(key, num_clients), input_shape=tuple(input_shape)), cut)
    party, need = tuple(halves[0].smash_shape), tuple(whole.smash_shape)
    if join == "sum":
        got = party
    elif len(party) == 3:
        got = (party[0], party[1] * num_clients, party[2])
    else:
        got = (*party[:-1], party[-1] * num_clients)
    if got != need:
        raise ValueError(f"the {num_clients} parties' smashes {party} joined by {join!r} give {got}, but the server "
                         f"half after cut {cut!r} takes {need}; use join='sum' for smashes whose shape does not depend "
                         "on the image width (after a dense layer), join='concat' for convolutional smashes")
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[hv.params["client"] for hv in halves])
    return VerticalModel(halves[0].client, whole.server, {"clients": stacked, "server": whole.params["server"]},
                         num_clients, tuple(input_shape), int(np.prod(party)), join,
                         -2 if len(party) == 3 else -1, party)


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


class VExchange(NamedTuple):
    """One vertical step: the gradients, the messages as received (the server's ``z`` (M, B,
    ...), the parties' ``dz`` (M, B, ...)), the metrics and the parties' wire states."""

    grads: dict
    messages: tuple
    loss: jax.Array
    accuracy: jax.Array
    client_reg: jax.Array
    wire_state: WireState  # stacked over parties


@dataclass(frozen=True, eq=False)
class VerticalTrainer:
    """Trains a ``VerticalModel``; every party's smash and cut gradient crosses the wire.

    Attributes:
      wire: each party's own wire (same transforms, its own state and randomness):
        ``forward`` on its smash, ``backward`` on the gradient the server sends it (the
        server holds the labels), ``inference`` on a deployed party's smash.
      loss_terms: each party's regularisers on ``(its strip, its smash)``.
    """

    model: VerticalModel
    client_opt: optax.GradientTransformation
    server_opt: optax.GradientTransformation
    wire: Wire = field(default_factory=Wire)
    loss_terms: tuple[LossTerm, ...] = ()

    def init_wire(self) -> WireState:
        m = self.model
        z = jnp.zeros((1, *m.party_smash_shape))
        return tree_broadcast(self.wire.init(z, z), m.num_clients)

    def exchange(self, params, wire_state, x, y, *, key: jax.Array) -> VExchange:
        """One step: party m sends its smash through its wire (key ``fold_in(key_fwd, m)``),
        the server replies to each with the gradient of its slice through the backward wire."""
        m = self.model
        k_fwd, k_bwd = jax.random.split(key)
        parties = jnp.arange(m.num_clients)
        x_M = strips(x, m.num_clients)
        z, vjp = jax.vjp(lambda p: jax.vmap(m.bottom.apply)(p, x_M), params["clients"])
        z_in, wire_state = jax.vmap(lambda zi, ws, i: self.wire.send_forward(zi, ws, key=jax.random.fold_in(k_fwd, i))
                                    )(z, wire_state, parties)

        def top_loss(p, z):
            logits = m.top.apply(p, m.joined(z))
            return cross_entropy(logits, y), logits

        (loss, logits), (g_s, dz) = jax.value_and_grad(top_loss, argnums=(0, 1), has_aux=True)(params["server"], z_in)
        dz_in, wire_state = jax.vmap(lambda g, ws, i: self.wire.send_backward(g, ws, key=jax.random.fold_in(k_bwd, i),
                                                                              labels=y))(dz, wire_state, parties)
        cotangent, reg = dz_in, jnp.zeros((), jnp.float32)
        if self.loss_terms:
            def client_reg(z_M):
                per = jax.vmap(lambda xi, zi: sum(t.weight * t.fn(xi, zi) for t in self.loss_terms))(x_M, z_M)
                return per.sum()
            reg, g_reg = jax.value_and_grad(client_reg)(z)
            cotangent = dz_in + g_reg
        (g_c,) = vjp(cotangent)
        acc = (jnp.argmax(logits, -1) == y).mean()
        return VExchange({"clients": g_c, "server": g_s}, (z_in, dz_in), loss, acc, reg, wire_state)

    def messages(self, params, x, y):
        """``(grads, (z_MxBxQ sent up, dz_MxBxQ sent down), loss)`` for one batch, without the
        wire's transforms."""
        bare = VerticalTrainer(self.model, self.client_opt, self.server_opt)
        ex = bare.exchange(params, bare.init_wire(), x, y, key=jax.random.key(0))  # identity wires draw nothing
        return ex.grads, ex.messages, ex.loss

    def traffic(self, batch_size: int) -> tuple[int, int]:
        """Bytes per client per step: (smash up, gradient down), as sent (after a compressing
        transform, its encoding)."""
        t = self.wire.traffic(batch_size, self.model.party_smash_shape, jnp.float32)
        return t.forward, t.backward

    def epoch(self, params, opt_state, wire_state, x_all, y_all, *, key, batch_size: int):
        """One epoch over shuffled batches (``shuffled_batches(key=key)``), as one jitted scan;
        step i uses ``fold_in(fold_in(key, 1), i)``. Returns ``(params, opt_state, wire_state,
        steps, (loss, accuracy, client_reg) summed over the steps)``."""
        return _epoch_jit(self, params, opt_state, wire_state, x_all, y_all, key, batch_size)

    def init(self):
        p = self.model.params
        return p, (jax.vmap(self.client_opt.init)(p["clients"]), self.server_opt.init(p["server"]))


def _epoch(trainer: VerticalTrainer, params, opt_state, wire_state, x_all, y_all, key, batch_size):
    ids_SxB = shuffled_batches(x_all.shape[0], batch_size, key=key)
    k_steps = jax.random.fold_in(key, 1)

    def body(carry, inp):
        params, (oc, os_), ws = carry
        i, ids = inp
        ex = trainer.exchange(params, ws, x_all[ids], y_all[ids], key=jax.random.fold_in(k_steps, i))
        g = ex.grads
        uc, oc = jax.vmap(trainer.client_opt.update)(g["clients"], oc, params["clients"])
        us, os_ = trainer.server_opt.update(g["server"], os_, params["server"])
        params = {"clients": optax.apply_updates(params["clients"], uc),
                  "server": optax.apply_updates(params["server"], us)}
        return (params, (oc, os_), ex.wire_state), jnp.stack([ex.loss, ex.accuracy, ex.client_reg])

    (params, opt_state, wire_state), sums = jax.lax.scan(body, (params, opt_state, wire_state),
                                                          (jnp.arange(ids_SxB.shape[0]), ids_SxB))
    return params, opt_state, wire_state, ids_SxB.shape[0], sums.sum(0)


# The trainer and batch size are static: jax.jit's own cache holds one program per pair.
_epoch_jit = jax.jit(_epoch, static_argnums=(0, 7))


def vertical(trainer: VerticalTrainer, x_train, y_train, x_test, y_test, *, epochs: int, batch_size: int,
             key: jax.Array, network: NetworkModel = NetworkModel()) -> TopologyResult:
    """Trains vertical split learning for ``epochs``; every client sees every example (its strip)."""
    return run_vertical(trainer, x_train, y_train, x_test, y_test, epochs=epochs, batch_size=batch_size, key=key,
                        network=network)[0]


def run_vertical(trainer: VerticalTrainer, x_train, y_train, x_test, y_test, *, epochs: int, batch_size: int,
                 key: jax.Array, network: NetworkModel = NetworkModel()):
    """``vertical``, also returning the final ``(params, opt_state, wire_state, steps run)``;
    each history entry also holds ``steps``, ``train_loss``, ``train_accuracy``, ``client_reg``.
    Epoch e uses ``fold_in(key, e)``."""
    vm = trainer.model
    m_num = vm.num_clients
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train, jnp.int32)
    params, opt_state = trainer.init()
    wire_state = trainer.init_wire()
    up, down = trainer.traffic(batch_size)
    one_client = jax.tree.map(lambda a: a[0], vm.params["clients"])
    x1 = jnp.zeros((1, *vm.strip_shape))
    c_fl = cost_flops(lambda p, x, dz: jax.vjp(lambda p: vm.bottom.apply(p, x), p)[1](dz), one_client, x1,
                      jnp.zeros((1, *vm.party_smash_shape)))
    z1 = vm.joined(jnp.zeros((m_num, 1, *vm.party_smash_shape)))
    s_fl = cost_flops(lambda p, z: jax.value_and_grad(
        lambda p, z: -jax.nn.log_softmax(vm.top.apply(p, z))[:, 0].mean(), argnums=(0, 1))(p, z),
        vm.params["server"], z1)
    ledger, cflops, sflops, sim, history = Ledger(m_num), np.zeros(m_num), 0.0, 0.0, []
    everyone = np.arange(m_num)
    total = 0
    for e in range(epochs):
        params, opt_state, wire_state, steps, sums = trainer.epoch(params, opt_state, wire_state, x_train, y_train,
                                                                   key=jax.random.fold_in(key, e),
                                                                   batch_size=batch_size)
        steps = int(steps)
        total += steps
        ledger.move(everyone, SERVER, "activations", up * steps)
        ledger.move(SERVER, everyone, "gradients", down * steps)
        cflops += c_fl * steps * batch_size
        sflops += s_fl * steps * batch_size
        sim += steps * float(network.client(c_fl * batch_size) + network.up(up) + network.down(down)
                             + network.server(s_fl * batch_size))
        sums = np.asarray(sums) / max(steps, 1)
        history.append({"epoch": e + 1, "test_accuracy": accuracy(vm.apply, params, x_test, jnp.asarray(y_test)),
                        "steps": steps, "train_loss": float(sums[0]), "train_accuracy": float(sums[1]),
                        "client_reg": float(sums[2])})
    busy = cflops / network.client_flops_per_s
    result = TopologyResult("Vertical SL", m_num, epochs, vm.param_counts, ledger, cflops, sflops, sim, busy, network,
                            (x_train.shape[0] // batch_size) * batch_size, history, params,
                            notes="features split in vertical strips; labels on the server; the forward FLOPs of "
                                  "the bottom are counted in its vjp program")
    return result, (params, opt_state, wire_state, total)
