"""Which threading layer runs the prange loops of parallel kernels.

Measured on this project's shared 2-vCPU machines (median of 50 calls of one elementwise prange loop):

    layer       empty launch   1e5 elements   1e7 elements
    omp         3100 us        3400 us        13.6 ms       (OpenMP threads sleep; waking them costs ~3 ms)
    workqueue     30 us          81 us        10.4 ms
    tbb            3 us          38 us        11.9 ms

so numba's default choice (TBB if importable, else OpenMP) lands on OpenMP unless libtbb is on the loader
path. `configure()` prefers TBB when the `tbb` package is installed (its libtbb.so.12 lives in the
environment's lib/, which the loader does not search, so it is loaded here first), else the built-in workqueue
layer, never OpenMP. An explicit NUMBA_THREADING_LAYER is respected, and nothing changes once numba has
started its threads.

`pin_blas()` makes the OpenBLAS that generated code's gemm reaches (scipy's, through numba's xxgemm helper and
scipy.linalg.cython_blas) single-threaded, so that cpu.py can split big matmuls into row or column blocks run
by our own prange threads, each block's epilogue right after its gemm. With 2 OpenBLAS threads, those threads
keep spinning after every call and a prange loop that follows fights them for the 2 cores (an 800x800 Adam
epilogue: 0.54 ms standalone in parallel, 1.7 ms right after a gemm). Only scipy's bundled library is touched:
numpy's own OpenBLAS (np.dot in user code) keeps its threads. Set PICOGRAD_CHUNK_GEMM=0 to leave it alone (then
cpu.py chunks nothing and matmul epilogues stay serial, as before)."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

_done = [False]
_pinned: list[bool] = []  # [result] once pin_blas has run


def _load_tbb() -> bool:
    for lib in (Path(sys.prefix) / "lib" / "libtbb.so.12", Path(sys.base_prefix) / "lib" / "libtbb.so.12"):
        if lib.exists():
            try:
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                continue
    try:
        ctypes.CDLL("libtbb.so.12", mode=ctypes.RTLD_GLOBAL)
        return True
    except OSError:
        return False


def configure() -> str:
    """Pick the threading layer before the first parallel kernel launches; returns the layer asked for."""
    from numba.core import config
    from numba.np.ufunc import parallel

    pin_blas()
    if _done[0] or os.environ.get("NUMBA_THREADING_LAYER") or parallel._is_initialized:
        _done[0] = True
        return str(config.THREADING_LAYER)
    _done[0] = True
    config.THREADING_LAYER = "tbb" if sys.platform.startswith("linux") and _load_tbb() else "workqueue"
    return config.THREADING_LAYER


def _scipy_openblas() -> ctypes.CDLL | None:
    """scipy's bundled OpenBLAS (the one scipy.linalg.cython_blas calls), loaded already by that import; None when
    scipy has no bundled OpenBLAS (a system BLAS may be shared with numpy, which must keep its threads)."""
    try:
        import scipy
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library; numba's gemm helper calls it)
    except ImportError:
        return None
    libs = Path(scipy.__file__).resolve().parent.parent / "scipy.libs"
    for path in sorted(libs.glob("libscipy_openblas*.so*")) + sorted(libs.glob("libopenblas*.so*")):
        if "64_" in path.name:  # the ILP64 build is numpy's flavour, not what cython_blas links
            continue
        try:
            return ctypes.CDLL(str(path))  # the already loaded library: dlopen returns its handle
        except OSError:
            continue
    return None


def _prime_gemm() -> None:
    """Resolve the BLAS pointers numba's xxgemm helper caches: its first call takes the GIL to import them, which
    would deadlock in a prange worker while the main thread holds the GIL. One 1x1x1 call per dtype here does it."""
    from numba import _helperlib

    proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char, ctypes.c_char, ctypes.c_char, ctypes.c_ssize_t,
                             ctypes.c_ssize_t, ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ssize_t,
                             ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ssize_t)
    xxgemm = proto(_helperlib.c_helpers["xxgemm"])
    for kind, ct in ((b"s", ctypes.c_float), (b"d", ctypes.c_double)):
        one, zero, a, b, c = ct(1), ct(0), ct(1), ct(1), ct(0)
        ref = ctypes.addressof
        if xxgemm(kind, b"n", b"n", 1, 1, 1, ref(one), ref(a), 1, ref(b), 1, ref(zero), ref(c), 1) != 0:
            raise OSError("numba_xxgemm failed")


_blas: dict = {}  # "set": the thread-count setter, "all": OpenBLAS's own count, "now": the count set last


def blas_threads(n: int) -> None:
    """Run scipy's OpenBLAS on n threads from now on (0: as many as it started with). A program whose matmuls
    are left whole to OpenBLAS asks for them all, one that splits them over our threads for one (cache.Program
    calls this before each run; only a change costs a call)."""
    if _blas.get("now") != n and "set" in _blas:
        _blas["set"](n or _blas["all"])
        _blas["now"] = n


def pin_blas() -> bool:
    """Make scipy's OpenBLAS single-threaded, once per process; True when it is (cpu.py then splits big matmuls
    over its own threads). False, leaving everything as it was, when the library or its symbol isn't found."""
    if _pinned:
        return _pinned[0]
    ok = False
    lib = None if os.environ.get("PICOGRAD_CHUNK_GEMM", "1") == "0" else _scipy_openblas()
    if lib is not None:
        for prefix in ("scipy_openblas", "openblas"):
            setter = getattr(lib, f"{prefix}_set_num_threads", None)
            if setter is None:
                continue
            getter = getattr(lib, f"{prefix}_get_num_threads", None)
            try:
                _prime_gemm()
                setter.argtypes, setter.restype = [ctypes.c_int], None
                if getter is not None:
                    getter.argtypes, getter.restype = [], ctypes.c_int
                    _blas["all"] = max(1, getter())
                setter(1)
                ok = getter is None or getter() == 1
                if ok and getter is not None:
                    _blas.update(set=setter, now=1)
            except (OSError, KeyError, AttributeError):
                ok = False
            break
    _pinned.append(ok)
    return ok
