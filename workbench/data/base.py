"""The :class:`Dataset` type, subsets, the attacker's auxiliary split and shuffled batching.

Conventions: images are host numpy float32 NHWC in [0, 1], labels int32 in
``[0, num_classes)``. Every random function takes a keyword-only jax PRNG ``key``; the same
key always gives the same result.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Dataset", "subset", "split_indices", "split_aux", "shuffled_batches", "check_key"]


def check_key(key, where: str) -> jax.Array:
    """Raise a clear error unless ``key`` is a single jax PRNG key (typed or raw uint32[2])."""
    if key is None:
        raise TypeError(f"{where}: key is required, pass a jax PRNG key, e.g. key=jax.random.key(0)")
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != ():
            raise ValueError(f"{where}: expected a single PRNG key, got a key array of shape {shape}")
        return key
    if dtype == np.uint32 and shape == (2,):  # legacy raw key from jax.random.PRNGKey
        return key
    raise TypeError(f"{where}: key must be a jax PRNG key (jax.random.key(seed)), got {type(key).__name__}"
                    + (f" {dtype} {shape}" if dtype is not None else ""))


def _static_int(value, name: str, where: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{where}: {name} must be a Python int (static under jit), "
                        f"got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """An image classification dataset held on the host.

    ``x_*``: float32 (N, H, W, C) in [0, 1]; ``y_*``: int32 (N,) in ``[0, num_classes)``;
    ``source``: where it was read from. The arrays are stored as read-only views.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        where = f"Dataset {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Dataset name must be a non-empty string, got {self.name!r}")
        num_classes = _static_int(self.num_classes, "num_classes", where, 1)
        shape = None
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
                raise TypeError(f"{where}: x_{split} and y_{split} must be numpy arrays (use np.asarray)")
            if x.dtype != np.float32 or x.ndim != 4:
                raise ValueError(f"{where}: x_{split} must be float32 NHWC, got {x.dtype} {x.shape}")
            if y.dtype != np.int32 or y.shape != (x.shape[0],):
                raise ValueError(f"{where}: y_{split} must be int32 of shape ({x.shape[0]},), "
                                 f"got {y.dtype} {y.shape}")
            if shape is not None and x.shape[1:] != shape:
                raise ValueError(f"{where}: x_train is {shape} per image but x_test is {x.shape[1:]}")
            shape = x.shape[1:]
            if x.size and not (x.min() >= 0.0 and x.max() <= 1.0):  # also catches NaN
                raise ValueError(f"{where}: x_{split} values must lie in [0, 1]")
            if y.size and (y.min() < 0 or y.max() >= num_classes):
                raise ValueError(f"{where}: y_{split} labels must lie in [0, {num_classes})")
            for field_name, arr in ((f"x_{split}", x), (f"y_{split}", y)):
                view = arr.view()
                view.flags.writeable = False
                object.__setattr__(self, field_name, view)
        object.__setattr__(self, "num_classes", num_classes)
        if self.class_names is not None:
            names = tuple(self.class_names)
            if len(names) != num_classes or not all(isinstance(n, str) for n in names):
                raise ValueError(f"{where}: class_names must be {num_classes} strings, got {names!r}")
            object.__setattr__(self, "class_names", names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={self.num_train}, test={self.num_test}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes}, source={self.source!r})")


def _check_indices(idx, n: int, what: str) -> np.ndarray:
    idx = np.asarray(idx)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise ValueError(f"subset: {what} must be a 1-D integer index array, got {idx.dtype} {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"subset: {what} out of range for {n} examples (min {idx.min()}, max {idx.max()})")
    return idx.astype(np.intp)


def subset(ds: Dataset, train_idx=None, test_idx=None, *, name: str | None = None) -> Dataset:
    """A new Dataset keeping ``ds.x_train[train_idx]`` / ``ds.x_test[test_idx]`` (None keeps all)."""
    if not isinstance(ds, Dataset):
        raise TypeError(f"subset: expected a Dataset, got {type(ds).__name__}")
    tr = None if train_idx is None else _check_indices(train_idx, ds.num_train, "train_idx")
    te = None if test_idx is None else _check_indices(test_idx, ds.num_test, "test_idx")
    return Dataset(
        name=name or ds.name,
        x_train=ds.x_train if tr is None else ds.x_train[tr],
        y_train=ds.y_train if tr is None else ds.y_train[tr],
        x_test=ds.x_test if te is None else ds.x_test[te],
        y_test=ds.y_test if te is None else ds.y_test[te],
        num_classes=ds.num_classes, class_names=ds.class_names, source=ds.source,
    )


def split_indices(n: int, aux_size: int, *, key) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (private, aux) index arrays, aux a uniformly random
    ``aux_size``-subset chosen by ``key``; both returned sorted, disjoint, covering ``range(n)``."""
    n = _static_int(n, "n", "split_indices", 2)
    aux_size = _static_int(aux_size, "aux_size", "split_indices", 1)
    if aux_size >= n:
        raise ValueError(f"split_indices: aux_size must be < n (the private set cannot be empty), "
                         f"got aux_size={aux_size}, n={n}")
    perm = np.asarray(jax.random.permutation(check_key(key, "split_indices"), n))
    aux, private = np.sort(perm[:aux_size]), np.sort(perm[aux_size:])
    assert not np.intersect1d(aux, private).size and aux.size + private.size == n
    return private, aux


def split_aux(ds: Dataset, *, aux_size: int, key) -> tuple[Dataset, Dataset]:
    """Carve the attacker's auxiliary data out of the training set.

    Convention: ``aux_size`` training examples, chosen uniformly at random by ``key``, become
    the attacker's ``aux`` training data; the remaining training examples are the victim's
    ``private`` training data (the two are disjoint; order within each follows the original
    order). Both keep the full original test set, which is used only for evaluation.
    Returns ``(private, aux)``, named ``"<name>/private"`` and ``"<name>/aux"``.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"split_aux: expected a Dataset, got {type(ds).__name__}")
    if isinstance(aux_size, int) and not isinstance(aux_size, bool) and aux_size >= ds.num_train:
        raise ValueError(f"split_aux: aux_size={aux_size} must be < the {ds.num_train} training examples "
                         f"of {ds.name!r}")
    private_idx, aux_idx = split_indices(ds.num_train, aux_size, key=key)
    private = subset(ds, private_idx, name=f"{ds.name}/private")
    aux = subset(ds, aux_idx, name=f"{ds.name}/aux")
    return private, aux


def shuffled_batches(n: int, batch_size: int, *, key) -> jax.Array:
    """Example indices for one epoch: int32 array of shape (n // batch_size, batch_size).

    A permutation of ``range(n)`` drawn from ``key``, cut into batches; the last
    ``n % batch_size`` examples of the permutation are dropped so every batch is full
    (a different key drops different examples). Pure jnp: usable inside ``jax.jit`` with
    ``n`` and ``batch_size`` static Python ints (``key`` may be traced).
    """
    n = _static_int(n, "n", "shuffled_batches", 1)
    batch_size = _static_int(batch_size, "batch_size", "shuffled_batches", 1)
    if batch_size > n:
        raise ValueError(f"shuffled_batches: batch_size={batch_size} is larger than n={n}; no full batch")
    steps = n // batch_size
    perm = jax.random.permutation(check_key(key, "shuffled_batches"), n)
    return perm[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)
