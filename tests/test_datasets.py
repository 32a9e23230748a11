"""Tests for picograd.datasets: IDX parsing, md5 checks, download/offline behaviour, real MNIST, DataLoader."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from picograd import datasets
from picograd.datasets import (
    MNIST,
    ChecksumError,
    DataLoader,
    DatasetNotFoundError,
    file_md5,
    read_idx,
    verify_md5,
)

ALL_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def idx_bytes(a: np.ndarray) -> bytes:
    header = bytes([0, 0, _CODES[a.dtype], a.ndim]) + np.array(a.shape, dtype=">u4").tobytes()
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, a: np.ndarray, gz: bool | None = None) -> Path:
    data = idx_bytes(a)
    path.write_bytes(gzip.compress(data) if (gz if gz is not None else path.suffix == ".gz") else data)
    return path


def fake_dataset_files(folder: Path, n: int = 3, gz: bool = True) -> dict[str, bytes]:
    """Write the 4 files of a tiny MNIST-shaped dataset; returns {filename: bytes written}."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for base in ALL_FILES:
        a = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) if "images" in base else np.arange(n, dtype=np.uint8)
        name = base + (".gz" if gz else "")
        write_idx(folder / name, a, gz=gz)
        out[name] = (folder / name).read_bytes()
    return out


# ---- read_idx ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz", "gz-without-suffix"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_read_idx_roundtrip(tmp_path: Path, name: str, dtype: type) -> None:
    a = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype) if dtype != np.uint8 else np.arange(24, dtype=dtype)
    write_idx(tmp_path / name, a, gz=name != "a.idx")
    b = read_idx(tmp_path / name)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    assert b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    b[...] = 0  # result must be writable


def test_read_idx_bad_magic(tmp_path: Path) -> None:
    p = tmp_path / "bad.idx"
    p.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match=r"bad\.idx.*magic"):
        read_idx(p)


def test_read_idx_bad_type_code(tmp_path: Path) -> None:
    p = tmp_path / "code.idx"
    p.write_bytes(bytes([0, 0, 0x07, 1]) + (1).to_bytes(4, "big") + b"\x00")
    with pytest.raises(ValueError, match=r"code\.idx.*type code 0x07"):
        read_idx(p)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated_payload(tmp_path: Path, gz: bool) -> None:
    data = idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10]
    p = tmp_path / "trunc.idx"
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(ValueError, match=r"trunc\.idx.*truncated.*\(4, 28, 28\)"):
        read_idx(p)


def test_read_idx_trailing_bytes_and_short_header(tmp_path: Path) -> None:
    p = tmp_path / "long.idx"
    p.write_bytes(idx_bytes(np.zeros(3, np.uint8)) + b"xx")
    with pytest.raises(ValueError, match="trailing"):
        read_idx(p)
    p.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(ValueError, match="header"):
        read_idx(p)


def test_read_idx_truncated_gzip(tmp_path: Path) -> None:
    blob = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    p = tmp_path / "cut.gz"
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"cut\.gz.*gzip"):
        read_idx(p)


# ---- md5 and download -------------------------------------------------------------------------


def test_md5(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(b"picograd" * 1000)
    good = hashlib.md5(b"picograd" * 1000).hexdigest()
    assert file_md5(p) == good
    assert verify_md5(p, good) and verify_md5(p, good.upper())
    assert not verify_md5(p, "0" * 32)


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def serve(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes], good_host: str = "good") -> list[str]:
    """Patch urlopen: URLs on good_host get `files`, all others fail as if offline. Returns URLs asked."""
    asked: list[str] = []

    def urlopen(req: urllib.request.Request, timeout: float | None = None) -> FakeResponse:
        url = req.full_url
        asked.append(url)
        if f"//{good_host}/" in url:
            return FakeResponse(files[url.rsplit("/", 1)[1]])
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return asked


def test_download_falls_back_across_mirrors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = fake_dataset_files(tmp_path / "src")

    class Tiny(MNIST):
        mirrors = ("http://bad/", "http://good/")
        md5s = {k: hashlib.md5(v).hexdigest() for k, v in files.items()}

    asked = serve(monkeypatch, files)
    ds = Tiny(root=tmp_path / "dl", train=False)
    assert ds.images.shape == (3, 28, 28) and ds.labels.dtype == np.int64
    assert asked == [
        f"http://{h}/t10k-{k}-idx{d}-ubyte.gz" for k, d in (("images", 3), ("labels", 1)) for h in ("bad", "good")
    ]
    assert sorted(os.listdir(tmp_path / "dl")) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_download_md5_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = fake_dataset_files(tmp_path / "src")

    class Tiny(MNIST):
        mirrors = ("http://good/",)

    serve(monkeypatch, files)
    with pytest.raises(ChecksumError, match=r"md5 mismatch.*expected f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        Tiny(root=tmp_path / "dl")
    assert os.listdir(tmp_path / "dl") == []  # no partial or bad file left behind


def test_offline_error_names_files_and_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve(monkeypatch, {}, good_host="nowhere")
    monkeypatch.setenv("PICOGRAD_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetNotFoundError) as exc:
        MNIST()
    msg = str(exc.value)
    for name in ALL_FILES:
        assert name in msg
    assert str(tmp_path / "data" / "mnist") in msg and str(tmp_path / "home" / ".cache" / "picograd" / "mnist") in msg
    assert "root=" in msg and "PICOGRAD_DATA" in msg and "network unreachable" in msg


def test_no_download_does_not_touch_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = serve(monkeypatch, {})
    with pytest.raises(DatasetNotFoundError, match="download=False"):
        MNIST(root=tmp_path, download=False)
    assert asked == []


def test_finds_raw_files_in_root(tmp_path: Path) -> None:
    fake_dataset_files(tmp_path, n=5, gz=False)
    ds = MNIST(root=tmp_path, download=False)
    assert len(ds) == 5 and ds[2][1] == 2 and ds[2][0].shape == (28, 28)
    x, y = ds.arrays()
    assert x.shape == (5, 784) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert ds.arrays(flatten=False)[0].shape == (5, 28, 28)


def test_datasets_module_has_no_hardcoded_shared_path() -> None:
    assert "shared/data" not in Path(datasets.__file__).read_text()


# ---- real MNIST (needs PICOGRAD_DATA) ---------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_train() -> MNIST:
    root = os.environ.get("PICOGRAD_DATA")
    if not root:
        pytest.skip("PICOGRAD_DATA is unset: point it at a folder with mnist/ inside to test the real data")
    if not (Path(root) / "mnist").is_dir():
        pytest.skip(f"PICOGRAD_DATA={root} has no mnist/ folder")
    return MNIST(train=True, download=False)


def test_real_mnist_train(mnist_train: MNIST) -> None:
    ds = mnist_train
    assert ds.images.shape == (60000, 28, 28) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (60000,) and ds.labels.dtype == np.int64
    assert ds.labels.min() == 0 and ds.labels.max() == 9
    assert ds.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    x, y = ds.arrays(normalize=True)
    assert x.shape == (60000, 784) and x.dtype == np.float32
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3


def test_real_mnist_test(mnist_train: MNIST) -> None:
    ds = MNIST(train=False, download=False)
    assert ds.images.shape == (10000, 28, 28) and ds.labels[:3].tolist() == [7, 2, 1]
    assert np.bincount(ds.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist_loader(mnist_train: MNIST) -> None:
    dl = DataLoader(mnist_train, batch_size=128, shuffle=True, seed=0, numpy=True)
    assert len(dl) == 469
    sizes = [len(xb) for xb, _ in dl]
    assert sizes[-1] == 60000 - 468 * 128 and sum(sizes) == 60000


# ---- DataLoader -------------------------------------------------------------------------------


def small_arrays(n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n * 2, dtype=np.float64).reshape(n, 2), np.arange(n)


def test_loader_batch_counts_and_drop_last() -> None:
    x, y = small_arrays(10)
    dl = DataLoader((x, y), batch_size=3, numpy=True)
    batches = list(dl)
    assert len(dl) == 4 and [len(b[0]) for b in batches] == [3, 3, 3, 1]
    assert batches[0][0].dtype == np.float32 and batches[0][1].dtype == y.dtype
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    dl = DataLoader((x, y), batch_size=3, drop_last=True, numpy=True)
    assert len(dl) == 3 and [len(b[0]) for b in dl] == [3, 3, 3]
    assert len(DataLoader((x, y), batch_size=5, drop_last=True)) == 2
    assert len(DataLoader((x, y), batch_size=20, drop_last=True)) == 0


def test_loader_shuffle_reproducible() -> None:
    x, y = small_arrays(50)

    def epochs(seed: int | None, k: int = 2) -> list[np.ndarray]:
        dl = DataLoader((x, y), batch_size=8, shuffle=True, seed=seed, numpy=True)
        return [np.concatenate([yb for _, yb in dl]) for _ in range(k)]

    a, b = epochs(0), epochs(0)
    for ea, eb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ea, eb)
        assert sorted(ea.tolist()) == list(range(50))
    assert not np.array_equal(a[0], a[1]), "epoch orders should differ"
    assert not np.array_equal(a[0], epochs(1)[0]), "seeds should differ"
    # features stay aligned with labels after shuffling
    for xb, yb in DataLoader((x, y), batch_size=8, shuffle=True, seed=3, numpy=True):
        np.testing.assert_array_equal(xb, x[yb])


def test_loader_set_epoch_resumes_order() -> None:
    x, y = small_arrays(20)
    dl = DataLoader((x, y), batch_size=4, shuffle=True, seed=7, numpy=True)
    list(dl)
    second = [yb.tolist() for _, yb in dl]
    dl2 = DataLoader((x, y), batch_size=4, shuffle=True, seed=7, numpy=True)
    dl2.set_epoch(1)
    assert [yb.tolist() for _, yb in dl2] == second


def test_loader_validates_inputs() -> None:
    with pytest.raises(ValueError, match="length"):
        DataLoader((np.zeros(3), np.zeros(4)))
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader((np.zeros(3),), batch_size=0)


def test_loader_yields_tensors_by_default() -> None:
    tensor_mod = pytest.importorskip("picograd.tensor", reason="picograd.tensor not available yet")
    x, y = small_arrays(6)
    xb, yb = next(iter(DataLoader((x, y), batch_size=4)))
    assert isinstance(xb, tensor_mod.Tensor) and isinstance(yb, tensor_mod.Tensor)
    assert not getattr(xb, "requires_grad", False)


# ---- regressions ----------------------------------------------------------------------------------
def test_loader_batches_do_not_see_later_writes_to_the_dataset() -> None:
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    y = np.arange(4)
    for shuffle in (False, True):
        xs, ys = x.copy(), y.copy()
        it = iter(DataLoader((xs, ys), batch_size=2, shuffle=shuffle, seed=0))
        bx, by = next(it)
        want_x, want_y = bx.numpy().copy(), by.numpy().copy()  # a realized copy is safe either way
        it = iter(DataLoader((xs, ys), batch_size=2, shuffle=shuffle, seed=0))
        bx, by = next(it)
        lazy = bx * 2.0
        xs[:] = 7
        ys[:] = 9
        np.testing.assert_array_equal(bx.numpy(), want_x)
        np.testing.assert_array_equal(by.numpy(), want_y)
        np.testing.assert_array_equal(lazy.numpy(), want_x * 2)


def test_read_idx_huge_dims_is_a_corrupt_header(tmp_path: Path) -> None:
    p = tmp_path / "huge.idx"
    p.write_bytes(bytes([0, 0, 0x0D, 3]) + (0xFFFFFFFF).to_bytes(4, "big") * 3 + b"\0" * 16)
    with pytest.raises(ValueError, match=r"corrupt IDX header") as e:
        read_idx(p)
    assert "-" not in str(e.value).split("need")[-1].split("bytes")[0]


@pytest.mark.parametrize("bs, exc", [(2.5, TypeError), ("3", TypeError), (0, ValueError), (-1, ValueError),
                                     (True, TypeError), (None, TypeError)])
def test_loader_batch_size_must_be_a_positive_int(bs, exc) -> None:
    with pytest.raises(exc, match="batch_size"):
        DataLoader(np.zeros(4), batch_size=bs)


def test_loader_accepts_numpy_int_batch_size() -> None:
    assert len(DataLoader(np.zeros(5), batch_size=np.int64(2))) == 3
