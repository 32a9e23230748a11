"""Datasets and batching: IDX parsing, MNIST / Fashion-MNIST with verified downloads, DataLoader.

Only numpy and the standard library are needed here; picograd.tensor is imported lazily by
DataLoader so the data layer can be used (and tested) on its own.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import numbers
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ChecksumError",
    "DataLoader",
    "DatasetNotFoundError",
    "FashionMNIST",
    "MNIST",
    "file_md5",
    "read_idx",
    "verify_md5",
]

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/ "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


class DatasetNotFoundError(FileNotFoundError):
    """The dataset files are neither on disk nor downloadable."""


class ChecksumError(ValueError):
    """A downloaded file does not have the expected md5."""


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or raw) into a native-endian, writable numpy array.

    Raises ValueError naming the file for a bad gzip stream, bad magic, unknown type code, or a
    payload whose size doesn't match the header's dimensions.
    """
    path = Path(path)
    raw = path.read_bytes()
    # Sniff the gzip magic rather than trusting the suffix: people gunzip files without renaming.
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from e
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path}: bad IDX magic {raw[:4].hex()} (expected 0000 then type code and ndim); "
            "not an IDX file, or a corrupt one"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x} (known: {known})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header} for ndim={ndim})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    # Python ints: a corrupt header's dims can multiply past int64 (numpy's product would wrap negative).
    expected = math.prod(dims) * dtype.itemsize
    actual = len(raw) - header
    if expected > max(actual, 1 << 40):
        raise ValueError(
            f"{path}: corrupt IDX header: dims {dims} x {dtype.itemsize} bytes would need {expected} bytes, "
            f"but the file holds {actual} after the header"
        )
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: payload {what}: dims {dims} x {dtype.itemsize} bytes need {expected} bytes, found {actual}"
        )
    # astype copies, which both makes the result writable and converts to native byte order.
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def file_md5(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_md5(path: str | os.PathLike[str], expected: str) -> bool:
    """True iff the file's md5 equals `expected` (case-insensitive hex)."""
    return file_md5(path) == expected.lower()


def _progress(total: int | None, desc: str) -> Any:
    """A tqdm bar if tqdm is installed, else a minimal stderr line with the same update/close API."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)
    except ImportError:
        return _StderrProgress(total, desc)


class _StderrProgress:
    def __init__(self, total: int | None, desc: str) -> None:
        self.total, self.desc, self.n = total, desc, 0

    def update(self, k: int) -> None:
        self.n += k
        pct = f" {100 * self.n / self.total:5.1f}%" if self.total else ""
        sys.stderr.write(f"\r{self.desc}: {self.n / 2**20:.1f} MiB{pct}")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


def _download(url: str, dest: Path, md5: str | None, timeout: float = 30.0) -> None:
    """Fetch url to dest atomically: a temp file in dest's folder, md5-checked, then os.replace.

    An interrupted or corrupt download therefore never leaves a file with the final name.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    req = urllib.request.Request(url, headers={"User-Agent": "picograd"})
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            bar = _progress(int(length) if length else None, dest.name)
            try:
                while block := resp.read(1 << 16):
                    out.write(block)
                    bar.update(len(block))
            finally:
                bar.close()
        if md5 is not None and not verify_md5(tmp, md5):
            raise ChecksumError(f"{url}: md5 mismatch (expected {md5}, got {file_md5(tmp)}); file discarded")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class MNIST:
    """The MNIST digits: `.images` uint8 (N, 28, 28), `.labels` int64 (N,).

    Files are looked up in `root` if given, else `$PICOGRAD_DATA/<name>/`, else
    `~/.cache/picograd/<name>/`. Each of the 4 standard files may be gzipped (`*.gz`) or raw.
    Missing files are downloaded (md5-verified) into the first search folder when download=True.
    """

    name = "mnist"
    mirrors: tuple[str, ...] = (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    )
    # md5 of the .gz files as published.
    md5s: dict[str, str] = {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    # Pixel statistics of the training set (after /255), for standardization.
    mean: float = 0.1307
    std: float = 0.3081
    num_classes: int = 10
    extra_dirs: tuple[str, ...] = ()

    files = {
        True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def __init__(self, root: str | os.PathLike[str] | None = None, train: bool = True, download: bool = True) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.train = bool(train)
        paths = [self._locate(base, download) for base in self.files[self.train]]
        images, labels = (read_idx(p) for p in paths)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f"{paths[0]}: expected uint8 N x 28 x 28 images, got {images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"{paths[1]}: expected {len(images)} labels, got shape {labels.shape}")
        # Float labels would be truncated by astype, and a class outside 0..9 only fails (or silently matches no
        # column) far away in the loss: a corrupt labels file is reported here, naming it.
        if labels.dtype.kind not in "iu":
            raise ValueError(f"{paths[1]}: expected integer class labels, got {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)]
            raise ValueError(f"{paths[1]}: labels must be classes 0..{self.num_classes - 1}, found {bad.size} "
                             f"outside (e.g. {int(bad[0])})")
        self.images: np.ndarray = images
        self.labels: np.ndarray = labels.astype(np.int64)

    @classmethod
    def search_dirs(cls, root: str | os.PathLike[str] | None = None) -> list[Path]:
        """Folders searched, in order; the first is where downloads go."""
        if root is not None:
            return [Path(root).expanduser()]
        dirs = []
        if env := os.environ.get("PICOGRAD_DATA"):
            dirs.append(Path(env).expanduser() / cls.name)
        dirs.append(Path.home() / ".cache" / "picograd" / cls.name)
        dirs.extend(Path(d) for d in cls.extra_dirs)
        return dirs

    def _locate(self, base: str, download: bool) -> Path:
        dirs = self.search_dirs(self.root)
        for d in dirs:
            for fname in (base + ".gz", base):
                if (d / fname).is_file():
                    return d / fname
        if not download:
            raise DatasetNotFoundError(self._missing_message(base, dirs, "download=False"))
        gz = base + ".gz"
        errors = []
        for mirror in self.mirrors:
            try:
                _download(mirror + gz, dirs[0] / gz, self.md5s.get(gz))
                return dirs[0] / gz
            except ChecksumError:
                # A wrong file is not a transient network problem: say so rather than "offline".
                raise
            except (urllib.error.URLError, OSError, ValueError) as e:
                errors.append(f"{mirror}{gz}: {e}")
        raise DatasetNotFoundError(self._missing_message(base, dirs, "download failed:\n    " + "\n    ".join(errors)))

    def _missing_message(self, base: str, dirs: list[Path], why: str) -> str:
        all_files = [f for pair in self.files.values() for f in pair]
        return (
            f"{type(self).__name__}: could not find {base}(.gz) and {why}.\n"
            f"  The dataset consists of 4 files (gzipped .gz or raw): {', '.join(all_files)}.\n"
            f"  Folders searched: {', '.join(str(d) for d in dirs)}.\n"
            f"  To supply them, put the files in a folder and pass root=<folder>, or set "
            f"PICOGRAD_DATA=<dir> with the files in <dir>/{self.name}/; "
            f"sources: {', '.join(self.mirrors)}"
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: Any) -> tuple[np.ndarray, Any]:
        """(image uint8 28x28, label) for an int; batched arrays for a slice or index array."""
        return self.images[i], self.labels[i]

    def arrays(self, normalize: bool = False, flatten: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(x float32, y int64). x is scaled to [0, 1], or standardized with the dataset's
        mean/std when normalize=True; shape (N, 784) when flatten else (N, 28, 28)."""
        x = self.images.astype(np.float32)
        x *= np.float32(1 / 255)
        if normalize:
            x -= np.float32(self.mean)
            x *= np.float32(1 / self.std)
        if flatten:
            x = x.reshape(len(x), -1)
        return x, self.labels

    def data(self, normalize: bool = False, flatten: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Alias of arrays()."""
        return self.arrays(normalize=normalize, flatten=flatten)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={'train' if self.train else 'test'}, n={len(self)})"


class FashionMNIST(MNIST):
    """Zalando's Fashion-MNIST: same format and API as MNIST."""

    name = "fashion-mnist"
    mirrors = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    md5s = {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    mean = 0.2860
    std = 0.3530
    # Where Debian's `dataset-fashion-mnist` package installs the files (re-gzipped there, so
    # their .gz md5s differ from upstream; we only check md5s of our own downloads).
    extra_dirs = ("/usr/share/datasets/fashion-mnist",)


class DataLoader:
    """Mini-batches over a dataset (anything with `.arrays()`) or a tuple of equal-length arrays.

    Yields tuples of picograd Tensors (requires_grad=False), or numpy arrays with numpy=True.
    Floating arrays are converted once to contiguous float32; each batch is one slice (in order)
    or one gather (shuffled), so there is no per-sample Python work.

    Shuffling draws a fresh permutation per epoch from default_rng((seed, epoch)): orders differ
    between epochs but the sequence is reproducible run to run. With seed=None it is random.

    Tensor batches never share memory with the dataset's arrays: an in-order batch (a slice, i.e. a
    view) is copied into its Tensor, so later in-place writes to the arrays don't reach a batch that is
    still lazy; a shuffled batch is a fresh gather and is used without a further copy. With numpy=True
    the batches are plain numpy, and in-order ones are views of the (prepared) arrays, as numpy slices
    are: copy them if the arrays will be written to while a batch is in use.
    """

    def __init__(
        self,
        data: Any,
        batch_size: int = 64,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
        numpy: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
            raise TypeError(f"DataLoader: batch_size must be a positive int, got {type(batch_size).__name__} "
                            f"{batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        # Checked now, not at the first shuffled epoch: int("a") there, and int(1.5) silently seeding with 1.
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise TypeError(f"DataLoader: seed must be None or a non-negative int, got {type(seed).__name__} "
                            f"{seed!r}")
        if hasattr(data, "arrays"):
            arrays: Sequence[Any] = data.arrays()
        elif isinstance(data, np.ndarray):
            arrays = (data,)
        elif isinstance(data, (Mapping, str, bytes)):
            raise TypeError(f"DataLoader: data must be a dataset with .arrays(), an array or a tuple of arrays, "
                            f"got a {type(data).__name__}")
        elif isinstance(data, list) and data and all(isinstance(e, tuple) for e in data):
            # torch's list-of-samples [(x0, y0), (x1, y1), ...] would be read as arrays x0-and-y0, x1-and-y1: the
            # batches come out transposed, silently when the samples are scalars
            raise TypeError(f"DataLoader: got a list of {len(data)} tuples, which looks like a list of samples; "
                            "pass one array per field instead, e.g. (xs, ys) = (np.stack([x for x, _ in samples]), "
                            "np.array([y for _, y in samples]))")
        else:
            try:
                arrays = tuple(data)
            except TypeError as e:
                raise TypeError(f"DataLoader: data must be a dataset with .arrays(), an array or a tuple of arrays, "
                                f"got a {type(data).__name__}") from e
        self.arrays = tuple(self._prepare(a, numpy) for a in arrays)
        if not self.arrays:
            raise ValueError("DataLoader needs at least one array")
        lengths = {len(a) for a in self.arrays}
        if len(lengths) != 1:
            raise ValueError(f"DataLoader arrays differ in length: {[len(a) for a in self.arrays]}")
        self.n = lengths.pop()
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), seed
        self.drop_last, self.numpy = bool(drop_last), bool(numpy)
        self.epoch = 0

    @staticmethod
    def _prepare(a: Any, numpy: bool = False) -> np.ndarray:
        a = np.asarray(a)
        if a.ndim == 0:
            raise ValueError("DataLoader arrays need a leading batch axis")
        if not numpy and a.dtype.kind not in "biuf":
            # said here, not as a Tensor error at the first batch
            raise TypeError(f"DataLoader: an array of dtype {a.dtype} {a.shape} cannot become Tensor batches "
                            "(numeric arrays only; numpy=True yields numpy batches of any dtype)")
        if np.issubdtype(a.dtype, np.floating):
            return np.ascontiguousarray(a, dtype=np.float32)
        return np.ascontiguousarray(a)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch counter (e.g. when resuming) so the next shuffle order matches that epoch."""
        self.epoch = int(epoch)

    def _order(self) -> np.ndarray | None:
        if not self.shuffle:
            return None
        seq = None if self.seed is None else (int(self.seed), self.epoch)
        return np.random.default_rng(seq).permutation(self.n)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        order = self._order()
        self.epoch += 1
        wrap: Any
        if self.numpy:
            wrap = None
        else:
            from picograd.tensor import Tensor

            def wrap(a: np.ndarray) -> Any:
                # A fresh gathered batch (np.take) is ours alone: no copy. A slice is a view of the arrays the
                # caller may still write to, and a lazy batch reads its buffer only when realized: copy it.
                return Tensor(a, requires_grad=False, copy=a.base is not None)

        bs = self.batch_size
        for b in range(len(self)):
            lo, hi = b * bs, min((b + 1) * bs, self.n)
            if order is None:
                batch = tuple(a[lo:hi] for a in self.arrays)
            else:
                idx = order[lo:hi]
                batch = tuple(np.take(a, idx, axis=0) for a in self.arrays)
            yield batch if wrap is None else tuple(wrap(a) for a in batch)
