"""The two parties of a split-learning step and the messages they exchange.

One training step (``SplitTrainer.compute_grads``):

1. the client computes the smash ``z`` on its private batch;
2. the wire carries ``z`` to the server (the client's forward transforms: its defenses);
3. the **server party** receives the smash and the labels and decides what to compute and
   what to send back: a ``ServerReply`` with the gradients for its own (task) model, the
   cut gradient it sends, the loss and logits it reports, and its new party state;
4. the wire carries the cut gradient back (the server's backward transforms);
5. the **client party** inspects what it received (``ClientStrategy.inspect``) and may stop
   training, e.g. a detector that recognises a hijacking server (before step 1 it may also
   choose what it sends, ``ClientStrategy.send``: a probe batch with altered labels whose
   update it does not apply, as SplitGuard does);
6. the client backpropagates the cut gradient it received.

Each party carries its own state inside ``SplitState.parties`` (``{"client": ..., "server":
...}``): extra models, their optimizer states, a detector's running statistics. A party
state is any pytree; the protocol threads it through the jitted step untouched.

The honest server (``HonestServer``) computes the task loss on the received smash and
returns its true gradient; the honest client (``HonestClient``) accepts whatever comes
back. Both are the defaults. A strategy that departs from the honest protocol sets
``active = True``: a run with an active party never reuses a model trained without it.

A new server strategy is one class with ``init`` and ``respond`` (and, to be reachable from
a spec, one ``SERVERS.register`` call); nothing in the protocol changes. See
``tests/fixtures/malicious_server.py`` for a server that returns the gradient of a
different loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from split_workbench.registry import Registry
from split_workbench.split import SplitModel

__all__ = ["ServerReply", "ServerStrategy", "ClientStrategy", "HonestServer", "HonestClient", "SERVERS", "CLIENTS",
           "build_server", "build_client", "needs_data", "bind_data", "task_reply"]

Loss = Callable[[jax.Array, jax.Array], jax.Array]


class ServerReply(NamedTuple):
    """What the server party computed on one received batch.

    Attributes:
      grads: gradients for the server half of the split model (its optimizer applies them).
      cut_grads: the gradient it sends back to the client, (B, *smash_shape), before the wire.
      loss: the task loss it reports (a scalar).
      logits: its task predictions on the batch, (B, num_classes), for the reported accuracy.
      state: its new party state.
    """

    grads: Any
    cut_grads: jax.Array
    loss: jax.Array
    logits: jax.Array
    state: Any


@runtime_checkable
class ServerStrategy(Protocol):
    """A server party. ``respond`` must be pure and jittable (it runs inside ``lax.scan``)."""

    name: str
    active: bool

    def init(self, model: SplitModel, *, key: jax.Array) -> Any:
        """The party's initial state (a pytree; ``()`` for none)."""

    def respond(self, model: SplitModel, loss: Loss, params: Any, state: Any, smash: jax.Array, labels: jax.Array,
                *, key: jax.Array) -> ServerReply:
        """The reply to one received batch: ``params`` are the server half's parameters."""


@runtime_checkable
class ClientStrategy(Protocol):
    """A client party. ``inspect`` must be pure and jittable."""

    name: str
    active: bool
    can_stop: bool  # whether ``inspect`` may ask to stop (the step then masks the update)
    alters_batches: bool  # whether ``send`` is called (it may replace the batch, or mark it a probe)

    def init(self, model: SplitModel, *, key: jax.Array) -> Any:
        """The party's initial state (a pytree; ``()`` for none)."""

    def send(self, state: Any, x: jax.Array, y: jax.Array, *, key: jax.Array, step: jax.Array
             ) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
        """The batch the client sends instead of ``(x, y)`` (same shapes), its new state, and
        whether it applies the resulting update to its own half (False: a probe batch; the
        server, which cannot tell, trains on it either way). Called only if ``alters_batches``."""

    def inspect(self, state: Any, smash: jax.Array, cut_grads: jax.Array, labels: jax.Array, *,
                step: jax.Array, grads: Any) -> tuple[Any, jax.Array]:
        """Looks at the smash it sent, the cut gradient it received and ``grads``, the gradient
        of its own parameters that this cut gradient induces (before its own loss terms or
        privatizer: what a detector reads off its first layer); returns its new state and
        whether to stop training (a boolean scalar). Once stopped, no update is applied,
        including this step's."""


def needs_data(party) -> str | None:
    """Which data a party holds besides the messages: ``"aux"`` (a server's public set, the
    attacker's auxiliary data), ``"private"`` (a client's own training set, e.g. to calibrate a
    detector), or None. A party that needs data declares it with a ``data`` attribute and
    returns a copy of itself holding the data from ``bind(x, y)``; ``bind`` checks the data
    (shape, size) and raises ``ValueError`` naming what is wrong. The runner binds parties
    before training."""
    return getattr(party, "data", None)


def bind_data(party, x, y):
    """``party.bind(x, y)`` when the party needs data (``needs_data``), else the party itself."""
    if needs_data(party) is None:
        return party
    if not hasattr(party, "bind"):
        raise TypeError(f"{party!r} declares data={party.data!r} but has no bind(x, y)")
    return party.bind(x, y)


def task_reply(model: SplitModel, loss: Loss, params, smash, labels, state=()) -> ServerReply:
    """The honest computation: the task loss on the received smash, its gradients for the
    server parameters and at the cut."""
    def server_loss(ps, z_in):
        logits = model.server.apply(ps, z_in)
        return loss(logits, labels), logits

    (value, logits), (g_server, dz) = jax.value_and_grad(server_loss, argnums=(0, 1), has_aux=True)(params, smash)
    return ServerReply(g_server, dz, value, logits, state)


@dataclass(frozen=True)
class HonestServer:
    """Computes the task loss and returns its true gradient at the cut (the protocol)."""

    name: str = "honest"
    active: bool = False

    def init(self, model: SplitModel, *, key: jax.Array):
        return ()

    def respond(self, model, loss, params, state, smash, labels, *, key) -> ServerReply:
        return task_reply(model, loss, params, smash, labels, state)


@dataclass(frozen=True)
class HonestClient:
    """Accepts every cut gradient it receives."""

    name: str = "honest"
    active: bool = False
    can_stop: bool = False
    alters_batches: bool = False

    def init(self, model: SplitModel, *, key: jax.Array):
        return ()

    def send(self, state, x, y, *, key, step):
        return state, x, y, jnp.ones((), bool)

    def inspect(self, state, smash, cut_grads, labels, *, step, grads):
        return state, jnp.zeros((), bool)


SERVERS = Registry("server")
CLIENTS = Registry("client")


@SERVERS.register("honest")
def _honest_server() -> HonestServer:
    return HonestServer()


@CLIENTS.register("honest")
def _honest_client() -> HonestClient:
    return HonestClient()


def build_server(spec: str | ServerStrategy) -> ServerStrategy:
    """A server strategy from its spec string (``"honest"``, a registered name with
    arguments) or an instance, checked against ``ServerStrategy``."""
    s = SERVERS.build(spec) if isinstance(spec, str) else spec
    if not isinstance(s, ServerStrategy):
        raise TypeError(f"{s!r} is not a server strategy: it needs name, active, init(model, key=) and "
                        "respond(model, loss, params, state, smash, labels, key=)")
    return s


def build_client(spec: str | ClientStrategy) -> ClientStrategy:
    """A client strategy from its spec string or an instance, checked against ``ClientStrategy``."""
    c = CLIENTS.build(spec) if isinstance(spec, str) else spec
    if not isinstance(c, ClientStrategy):
        raise TypeError(f"{c!r} is not a client strategy: it needs name, active, can_stop, alters_batches, "
                        "init(model, key=), send(state, x, y, key=, step=) and inspect(state, smash, cut_grads, "
                        "labels, step=)")
    return c
