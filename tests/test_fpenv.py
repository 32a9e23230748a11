"""Subnormal floats are flushed to zero inside compiled programs (codegen/fpenv.py), on the calling thread and
on prange worker threads, and only there: numpy afterwards, eager mode and PICOGRAD_FTZ=0 keep them."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import picograd as pg
from picograd.codegen import cache, fpenv

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="MXCSR is x86 only")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUB = np.float32(1e-39)  # subnormal in float32 (the smallest normal is 1.18e-38)


def _numpy_keeps_subnormals() -> bool:
    return bool(np.array([2e-38], np.float32)[0] * np.float32(0.01) != 0)


def test_program_flushes_and_numpy_after_does_not(monkeypatch) -> None:
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    assert fpenv.FLUSH
    x = pg.Tensor(np.array([SUB, 2e-38, 3.0], np.float32))
    y = (x * 20.0).numpy()  # DAZ: a subnormal input reads as 0 (else 2e-38, a normal number)
    z = (x * 0.01).numpy()  # FTZ: a subnormal result is stored as 0
    np.testing.assert_array_equal(y, np.array([0.0, 4e-37, 60.0], np.float32))
    np.testing.assert_array_equal(z, np.array([0.0, 0.0, 0.03], np.float32))
    assert _numpy_keeps_subnormals()  # the caller's MXCSR was restored


def test_parallel_kernels_flush_on_worker_threads(monkeypatch) -> None:
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    n = 1 << 19  # over PARALLEL_MIN: a prange loop
    x = pg.Tensor(np.full(n, 1e-37, np.float32))
    y = (x * 0.01).numpy()
    prog = [p for p in cache._programs.values() if p is not cache._EXPAND][-1]
    assert "prange(" in prog.source and "fpb = fp_enter()" in prog.source
    assert not np.any(y)  # every block, on every thread, flushed the subnormal 1e-39 to zero
    assert _numpy_keeps_subnormals()


def test_eager_mode_keeps_subnormals() -> None:
    with pg.eager():
        y = (pg.Tensor(np.array([2e-38], np.float32)) * 0.01).numpy()
    assert y[0] != 0


def test_flush_can_be_turned_off(tmp_path) -> None:
    script = (
        "import numpy as np, picograd as pg\n"
        "from picograd.codegen import cache\n"
        "y = (pg.Tensor(np.array([2e-38, 2.0], np.float32)) * 0.01).numpy()\n"
        "src = [p for p in cache._programs.values() if p is not cache._EXPAND][-1].source\n"
        "assert y[0] != 0 and 'fp_enter' not in src, (y, src)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PICOGRAD_FTZ="0", PICOGRAD_BACKEND="cpu", PICOGRAD_CACHE_DIR=str(tmp_path), PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
