"""What every topology run measures: bytes per party, FLOPs per party, simulated wall time.

Bytes are counted from what the protocol moved: a per-step message is counted as its
array's shape times its dtype's width (``SplitTrainer.traffic``, i.e. the wire's byte
accounting, after any compressing transform), once per step the jitted epoch really
executed; a weight transfer is counted as the ``tree_nbytes`` of the pytree that was
handed over. ``Ledger`` books each transfer once as sent (by its source) and once as
received (by its destination); totals sum what was sent.

FLOPs come from XLA's cost analysis of the compiled per-example programs
(``SplitModel.flops``, ``whole_train_flops``) times the samples each party processed.

Simulated wall time uses ``NetworkModel``: every client has its own link (bandwidth up and
down, one latency per message), so parallel clients do not share bandwidth; the server
has one compute rate shared by everything it processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["NetworkModel", "Ledger", "KINDS", "cost_flops", "whole_train_flops", "TopologyResult"]

KINDS = ("activations", "gradients", "labels", "weights")
SERVER = -1


@dataclass(frozen=True)
class NetworkModel:
    """A simple network and compute model for simulated wall time.

    Attributes:
      up_bytes_per_s: each client's uplink (client -> server or peer), bytes/s.
      down_bytes_per_s: each client's downlink, bytes/s.
      latency_s: one-way latency added once per message.
      client_flops_per_s: sustained compute of one client.
      server_flops_per_s: sustained compute of the server (shared across the clients it serves).
    """

    up_bytes_per_s: float = 10e6 / 8  # 10 Mbit/s
    down_bytes_per_s: float = 50e6 / 8  # 50 Mbit/s
    latency_s: float = 0.02
    client_flops_per_s: float = 1e9
    server_flops_per_s: float = 1e11

    def __post_init__(self):
        for name in ("up_bytes_per_s", "down_bytes_per_s", "client_flops_per_s", "server_flops_per_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"NetworkModel.{name} must be > 0, got {getattr(self, name)}")
        if self.latency_s < 0:
            raise ValueError(f"NetworkModel.latency_s must be >= 0, got {self.latency_s}")

    def up(self, nbytes) -> np.ndarray:
        return np.where(np.asarray(nbytes) > 0, self.latency_s + np.asarray(nbytes) / self.up_bytes_per_s, 0.0)

    def down(self, nbytes) -> np.ndarray:
        return np.where(np.asarray(nbytes) > 0, self.latency_s + np.asarray(nbytes) / self.down_bytes_per_s, 0.0)

    def client(self, flops) -> np.ndarray:
        return np.asarray(flops) / self.client_flops_per_s

    def server(self, flops) -> np.ndarray:
        return np.asarray(flops) / self.server_flops_per_s

    def as_dict(self) -> dict:
        return {"up_bytes_per_s": self.up_bytes_per_s, "down_bytes_per_s": self.down_bytes_per_s,
                "latency_s": self.latency_s, "client_flops_per_s": self.client_flops_per_s,
                "server_flops_per_s": self.server_flops_per_s}


@dataclass
class Ledger:
    """Bytes sent and received per party and kind; parties are clients ``0..K-1`` and the
    server (index ``-1``). Integer (int64) counts, exact."""

    num_clients: int
    sent: np.ndarray = field(init=False)
    received: np.ndarray = field(init=False)

    def __post_init__(self):
        self.sent = np.zeros((self.num_clients + 1, len(KINDS)), np.int64)
        self.received = np.zeros_like(self.sent)

    def move(self, src, dst, kind: str, nbytes) -> None:
        """Books ``nbytes`` of ``kind`` from ``src`` to ``dst`` (ints or arrays of clients,
        ``-1`` the server; arrays broadcast)."""
        j = KINDS.index(kind)
        src, dst, nbytes = np.broadcast_arrays(np.asarray(src), np.asarray(dst), np.asarray(nbytes, np.int64))
        np.add.at(self.sent[:, j], src.ravel(), nbytes.ravel())
        np.add.at(self.received[:, j], dst.ravel(), nbytes.ravel())

    def client_sent(self) -> np.ndarray:
        return self.sent[:-1].sum(1)

    def client_received(self) -> np.ndarray:
        return self.received[:-1].sum(1)

    def total(self, kind: str | None = None) -> int:
        return int(self.sent.sum() if kind is None else self.sent[:, KINDS.index(kind)].sum())

    def summary(self, epochs: int = 1) -> dict:
        """Totals and per-client figures, divided by ``epochs`` (per-epoch averages)."""
        per_client = (self.client_sent() + self.client_received()) / epochs
        return {
            "total_bytes": self.total() / epochs,
            "by_kind": {k: self.total(k) / epochs for k in KINDS},
            "per_client_sent_mean": float(self.client_sent().mean() / epochs),
            "per_client_received_mean": float(self.client_received().mean() / epochs),
            "per_client_mean": float(per_client.mean()),
            "per_client_max": float(per_client.max()),
            "server_sent": int(self.sent[-1].sum()) / epochs,
            "server_received": int(self.received[-1].sum()) / epochs,
        }


def cost_flops(fn, *args) -> float:
    """FLOPs of ``jax.jit(fn)(*args)`` by XLA's cost analysis of the compiled program."""
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float((analysis or {}).get("flops", float("nan")))


def whole_train_flops(apply, params, input_shape) -> float:
    """Per-example FLOPs of one training step of the whole model (forward, loss, gradient of
    the parameters; the same loss ``SplitModel.flops`` uses), batch of 1."""
    x = jnp.zeros((1, *input_shape), jnp.float32)

    def train(p, x):
        return jax.value_and_grad(lambda p: -jax.nn.log_softmax(apply(p, x))[:, 0].mean())(p)

    return cost_flops(train, params, x)


@dataclass
class TopologyResult:
    """One topology's run: accounting (per epoch), accuracy after each epoch, final params."""

    name: str
    num_clients: int
    epochs: int
    params_per_party: dict  # {"client": int, "server": int} parameters each party holds
    ledger: Ledger
    client_flops: np.ndarray  # (K,) FLOPs per client over the whole run
    server_flops: float
    sim_seconds: float  # simulated wall time of the whole run under ``network``
    client_busy_seconds: np.ndarray  # (K,) simulated compute time per client
    network: NetworkModel
    samples_per_epoch: int
    history: list = field(default_factory=list)  # [{"epoch", "test_accuracy", ...}]
    params: object = None
    notes: str = ""

    def summary(self) -> dict:
        e = self.epochs
        return {
            "topology": self.name, "num_clients": self.num_clients, "epochs": e,
            "params_per_party": self.params_per_party, "samples_per_epoch": self.samples_per_epoch,
            "bytes_per_epoch": self.ledger.summary(e),
            "client_flops_per_epoch_mean": float(self.client_flops.mean() / e),
            "client_flops_per_epoch_max": float(self.client_flops.max() / e),
            "server_flops_per_epoch": self.server_flops / e,
            "client_compute_seconds_per_epoch_mean": float(self.client_busy_seconds.mean() / e),
            "sim_seconds_per_epoch": self.sim_seconds / e,
            "test_accuracy": self.history[-1]["test_accuracy"] if self.history else None,
            "history": self.history, "notes": self.notes,
        }
