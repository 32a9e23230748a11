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
started its threads."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

_done = [False]


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

    if _done[0] or os.environ.get("NUMBA_THREADING_LAYER") or parallel._is_initialized:
        _done[0] = True
        return str(config.THREADING_LAYER)
    _done[0] = True
    config.THREADING_LAYER = "tbb" if sys.platform.startswith("linux") and _load_tbb() else "workqueue"
    return config.THREADING_LAYER
