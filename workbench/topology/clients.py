"""Clients' data and the per-epoch batch plan shared by every topology.

Every topology sees the same clients: ``make_clients`` partitions one training set (IID or
Dirichlet(alpha) label skew) from one key, so two topologies built from the same key train
on exactly the same examples per client. Each client's examples are a row of global
indices padded to the largest client; ``epoch_plan`` draws every client's shuffled full
batches for one epoch inside one jitted, vmapped program and marks padded steps invalid.

Dropped remainders: a client with ``n_k`` examples takes ``n_k // B`` full batches per epoch
(as ``SplitTrainer.epoch`` does); the ``n_k % B`` left over are not processed that epoch.
So the number of samples an epoch really processes is ``p = sum_k (n_k // B) * B``; that
``p`` is what every byte and FLOP count is proportional to.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from split_workbench.data import partition_dirichlet, partition_iid

__all__ = ["Clients", "Task", "make_clients", "epoch_plan", "plan_key", "step_keys", "tree_stack", "tree_unstack", "tree_broadcast",
           "tree_weighted_mean", "tree_where", "tree_nbytes", "accuracy"]


@dataclass(frozen=True, eq=False)
class Clients:
    """``K`` clients' shares of one training set.

    Attributes:
      idx_KxN: int32 (K, n_max) global example indices per client, each row padded by
        repeating its first index (padding is never used: ``epoch_plan`` masks it).
      sizes: int (K,) examples per client.
      batch_size: B, the same on every client.
      scheme: "iid" or "dirichlet(alpha)".
    """

    idx_KxN: np.ndarray
    sizes: np.ndarray
    batch_size: int
    scheme: str

    @property
    def num_clients(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def n_max(self) -> int:
        return int(self.idx_KxN.shape[1])

    @property
    def steps(self) -> np.ndarray:
        """Full batches per client per epoch (``n_k // B``)."""
        return self.sizes // self.batch_size

    @property
    def max_steps(self) -> int:
        return int(self.n_max // self.batch_size)

    @property
    def samples(self) -> np.ndarray:
        """Samples each client processes per epoch, ``(n_k // B) * B``."""
        return self.steps * self.batch_size

    def describe(self) -> dict:
        return {"num_clients": self.num_clients, "scheme": self.scheme, "batch_size": self.batch_size,
                "examples": int(self.sizes.sum()), "samples_per_epoch": int(self.samples.sum()),
                "dropped_per_epoch": int((self.sizes - self.samples).sum()),
                "min_size": int(self.sizes.min()), "max_size": int(self.sizes.max()),
                "clients_without_a_full_batch": int((self.steps == 0).sum())}


def make_clients(labels, num_clients: int, *, key: jax.Array, batch_size: int,
                 alpha: float | None = None) -> Clients:
    """Partitions ``labels``' examples over ``num_clients`` clients: IID if ``alpha`` is None,
    else Dirichlet(alpha) label skew (``split_workbench.data.partition_dirichlet``)."""
    labels = np.asarray(labels)
    if alpha is None:
        parts, scheme = partition_iid(labels, num_clients, key=key), "iid"
    else:
        parts, scheme = partition_dirichlet(labels, num_clients, alpha, key=key), f"dirichlet({alpha:g})"
    sizes = np.array([p.size for p in parts], np.int64)
    if batch_size < 1 or (sizes // batch_size).max() < 1:
        raise ValueError(f"batch_size={batch_size} leaves every client without a full batch "
                         f"(largest client has {sizes.max()} examples); lower batch_size")
    n_max = int(sizes.max())
    idx = np.stack([np.concatenate([p, np.full(n_max - p.size, p[0] if p.size else 0)]) for p in parts])
    return Clients(idx.astype(np.int32), sizes, int(batch_size), scheme)


@partial(jax.jit, static_argnames=("batch_size",))
def _plan(idx_KxN, sizes_K, key, batch_size):
    k, n_max = idx_KxN.shape
    s = n_max // batch_size

    def one(row, n, kk):
        u = jax.random.uniform(kk, (n_max,))
        u = jnp.where(jnp.arange(n_max) < n, u, 2.0)  # padding sorts last, never reaches a full batch
        perm_SxB = jnp.argsort(u)[: s * batch_size].reshape(s, batch_size)
        return row[perm_SxB], jnp.arange(s) < n // batch_size

    return jax.vmap(one)(idx_KxN, sizes_K, jax.random.split(key, k))


def epoch_plan(clients: Clients, *, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One epoch's batches for every client: global example ids ``(K, S, B)`` and a validity
    mask ``(K, S)`` (``S`` = the largest client's step count; client k's first ``n_k // B``
    steps are valid). Each client's valid batches are a uniformly shuffled subset of its
    own examples without repetition."""
    return _plan(jnp.asarray(clients.idx_KxN), jnp.asarray(clients.sizes, jnp.int32), key,
                 batch_size=clients.batch_size)


# ---------------------------------------------------------------- pytree helpers
def tree_stack(trees):
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def tree_unstack(tree, n: int):
    return [jax.tree.map(lambda a: a[i], tree) for i in range(n)]


def tree_broadcast(tree, n: int):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), tree)


def tree_weighted_mean(tree_K, w_K):
    """``sum_k w_k tree_k / sum_k w_k`` over the leading (client) axis."""
    w = w_K / jnp.maximum(w_K.sum(), 1e-30)
    return jax.tree.map(lambda a: jnp.tensordot(w.astype(a.dtype), a, axes=1), tree_K)


def tree_where(pred, new, old):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def tree_nbytes(tree) -> int:
    """Bytes of a pytree of arrays as sent: every leaf's size times its dtype's width."""
    return int(sum(int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


@partial(jax.jit, static_argnames=("apply", "chunk"))
def _accuracy(apply, params, x, y, chunk):
    n = x.shape[0]
    c = -(-n // chunk)
    pad = c * chunk - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(c, chunk, *x.shape[1:])
    yp = jnp.concatenate([y, jnp.full((pad,), -1, y.dtype)]).reshape(c, chunk)
    hits = jax.lax.map(lambda xy: (jnp.argmax(apply(params, xy[0]), -1) == xy[1]).sum(), (xp, yp))
    return hits.sum() / n


def accuracy(apply, params, x, y, *, chunk: int = 500) -> float:
    """Test accuracy of ``apply(params, x)`` in one jitted program (``apply`` must be hashable)."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    return float(_accuracy(apply, params, x, y, min(chunk, x.shape[0])))


@dataclass(frozen=True, eq=False)
class Task:
    """The data every topology of one comparison shares: the training set (on device), the
    held-out test set, the clients' partition and the network model."""

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    clients: Clients

    @classmethod
    def build(cls, x_train, y_train, x_test, y_test, clients: Clients) -> "Task":
        return cls(jnp.asarray(x_train), jnp.asarray(y_train, jnp.int32), jnp.asarray(x_test),
                   jnp.asarray(y_test, jnp.int32), clients)


def plan_key(key: jax.Array, epoch: int) -> jax.Array:
    """The batch-plan key of ``epoch``: the same for every topology run from ``key``."""
    return jax.random.fold_in(jax.random.fold_in(key, 0), epoch)


def step_keys(key: jax.Array, epoch: int, num_clients: int) -> jax.Array:
    """Per-client keys of ``epoch`` (step ``s`` of client ``k`` uses ``fold_in(keys[k], s)``)."""
    e = jax.random.fold_in(jax.random.fold_in(key, 1), epoch)
    return jax.vmap(lambda k: jax.random.fold_in(e, k))(jnp.arange(num_clients))
