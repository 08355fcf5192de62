"""Splitting a training set across clients: IID and label-skewed Dirichlet partitions.

Both return a list of ``num_clients`` sorted numpy index arrays (int64) that are pairwise
disjoint and together cover every example exactly once. The same key gives the same
partition.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from split_workbench.data.base import _static_int, check_key

__all__ = ["partition_iid", "partition_dirichlet", "label_entropy"]


def _check_labels(labels, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size == 0:
        raise ValueError(f"{where}: labels is empty")
    return labels


def _numpy_rng(key, where: str) -> np.random.Generator:
    """A numpy Generator seeded deterministically from a jax key (for host-side loops)."""
    seed = np.asarray(jax.random.bits(check_key(key, where), (4,), jnp.uint32))
    return np.random.default_rng(seed)


def partition_iid(labels, num_clients: int, *, key) -> list[np.ndarray]:
    """Shuffle all examples by ``key`` and deal them into ``num_clients`` near-equal parts
    (sizes differ by at most one). ``labels`` is only used for its length."""
    labels = _check_labels(labels, "partition_iid")
    num_clients = _static_int(num_clients, "num_clients", "partition_iid", 1)
    n = labels.shape[0]
    if n < num_clients:
        raise ValueError(f"partition_iid: {n} examples cannot give each of {num_clients} clients one")
    perm = np.asarray(jax.random.permutation(check_key(key, "partition_iid"), n)).astype(np.int64)
    return [np.sort(part) for part in np.array_split(perm, num_clients)]


def partition_dirichlet(labels, num_clients: int, alpha: float, *, key, min_size: int = 1,
                        max_tries: int = 1000) -> list[np.ndarray]:
    """Label-skewed partition, Dirichlet over clients per class.

    The scheme commonly attributed to Hsu et al. 2019 (arXiv:1909.06335) and used as in
    Yurochkin et al. 2019 / NIID-Bench: for every class c, draw client proportions
    ``p_c ~ Dirichlet(alpha * 1_K)`` over the ``K = num_clients`` clients, shuffle the
    examples of class c and cut them at the cumulative proportions. Small ``alpha`` (e.g.
    0.05) gives each client few classes; large ``alpha`` (e.g. 100) is close to IID. The
    whole draw is repeated until every client has at least ``min_size`` examples, up to
    ``max_tries`` times (then a ValueError says to raise alpha or lower min_size).

    Randomness: a numpy Generator seeded from ``jax.random.bits(key)``, so it is fully
    determined by ``key``.
    """
    where = "partition_dirichlet"
    labels = _check_labels(labels, where)
    num_clients = _static_int(num_clients, "num_clients", where, 1)
    min_size = _static_int(min_size, "min_size", where, 0)
    max_tries = _static_int(max_tries, "max_tries", where, 1)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: alpha must be a positive number, got {type(alpha).__name__}")
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"{where}: alpha must be finite and > 0, got {alpha}")
    n = labels.shape[0]
    if n < num_clients * min_size:
        raise ValueError(f"{where}: {n} examples cannot give {num_clients} clients min_size={min_size} each")
    rng = _numpy_rng(key, where)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = (np.cumsum(p)[:-1] * idx.size).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        out = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(o.size for o in out) >= min_size:
            return out
    raise ValueError(f"{where}: no draw in {max_tries} tries gave every client >= {min_size} examples "
                     f"(n={n}, num_clients={num_clients}, alpha={alpha}); raise alpha or lower min_size")


def label_entropy(labels, parts: list[np.ndarray], num_classes: int | None = None) -> np.ndarray:
    """Entropy (nats) of each client's label distribution: ~log(num_classes) when IID, 0 when
    a client holds a single class. Useful to report how skewed a partition is."""
    labels = _check_labels(labels, "label_entropy")
    k = int(labels.max()) + 1 if num_classes is None else num_classes
    out = []
    for idx in parts:
        counts = np.bincount(labels[np.asarray(idx, dtype=np.int64)], minlength=k).astype(np.float64)
        p = counts[counts > 0] / max(counts.sum(), 1.0)
        out.append(float(-(p * np.log(p)).sum()))
    return np.asarray(out)
