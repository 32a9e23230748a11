"""The generated code's gemm intrinsics (codegen/blas.py): gemm / gemm_ldc through numba's helper (scipy's
OpenBLAS), gemm_1 / gemm_ldc_1 through the sequential gemm bound at import (Intel MKL where installed, else
OpenBLAS), gemm_np / gemm_ldc_np through numpy's own OpenBLAS, and which one a program calls (in blocks:
cpu_matmul.ONE_THREAD_MIN_K; whole: numpy's where found)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import picograd as pg
from picograd import Tensor
from picograd.codegen import blas, cache, cpu_matmul, threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [(7, 5, 3, 0, 0), (64, 40, 300, 0, 1), (33, 17, 9, 1, 0), (5, 70, 260, 1, 1), (1, 1, 1, 0, 0)]


def _operands(m: int, n: int, k: int, ta: int, tb: int, dtype: type) -> tuple:
    rng = np.random.default_rng(m * 100 + n + k)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b, (a.T if ta else a) @ (b.T if tb else b)


def _check_gemm_1(dtype: type, suffix: str = "_1") -> None:
    """blas.gemm{suffix} and gemm_ldc{suffix} against numpy: offsets, transposes, a row stride for C."""
    from numba import njit

    gemm, gemm_ldc = getattr(blas, f"gemm{suffix}"), getattr(blas, f"gemm_ldc{suffix}")

    @njit
    def call(a, ta, lda, b, tb, ldb, c, m, n, k):  # noqa: ANN001, ANN202
        gemm(a, 3, ta, lda, b, 0, tb, ldb, c, 2, m, n, k)

    @njit
    def call_ldc(a, ta, lda, b, tb, ldb, c, ldc, m, n, k):  # noqa: ANN001, ANN202
        gemm_ldc(a, 0, ta, lda, b, 0, tb, ldb, c, 1, ldc, m, n, k)

    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for m, n, k, ta, tb in CASES:
        a, b, want = _operands(m, n, k, ta, tb, dtype)
        fa = np.concatenate([np.full(3, np.nan, dtype), a.ravel()])  # an offset, and NaN if it is ignored
        c = np.full(m * n + 2, -7, dtype)
        call(fa, ta, a.shape[1], b.ravel(), tb, b.shape[1], c, m, n, k)
        np.testing.assert_allclose(c[2:].reshape(m, n), want, **tol)
        assert (c[:2] == -7).all()
        wide = np.full(m * (n + 4) + 1, -7, dtype)  # C as the first n columns of an (m, n + 4) matrix
        call_ldc(a.ravel(), ta, a.shape[1], b.ravel(), tb, b.shape[1], wide, n + 4, m, n, k)
        got = wide[1:].reshape(m, n + 4)
        np.testing.assert_allclose(got[:, :n], want, **tol)
        assert (got[:, n:] == -7).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_1_matches_numpy(dtype: type) -> None:
    _check_gemm_1(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_np_matches_numpy(dtype: type) -> None:
    """gemm_np: numpy's own OpenBLAS (64-bit integers) where numpy's wheel bundles it, else not bound."""
    if not blas.SHARED:
        pytest.skip("numpy here does not run on its bundled OpenBLAS: whole matmuls keep scipy's (blas.gemm)")
    _check_gemm_1(dtype, "_np")


def test_whole_programs_share_numpys_blas_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """A program whose matmuls are left whole (not in blocks) calls gemm_np where numpy's OpenBLAS was found, so
    it runs on numpy's thread pool and leaves scipy's pinned to one thread; the result matches numpy."""
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    monkeypatch.setattr(cache, "_programs", {})
    rng = np.random.default_rng(5)
    x = rng.standard_normal((32, 100)).astype(np.float32)
    w = Tensor(rng.standard_normal((100, 20)).astype(np.float32), requires_grad=True)
    y = (Tensor(x) @ w).relu()
    y.sum().backward()
    pg.realize(y, w.grad)
    prog = [p for p in cache._programs.values() if p is not cache._EXPAND][-1]
    calls = {ln.strip().split("(")[0] for ln in prog.source.splitlines() if ln.strip().startswith("gemm")}
    if blas.SHARED:
        assert calls == {"gemm_np"} and prog.blas_threads == 1
    else:
        assert calls == {"gemm"} and prog.blas_threads == 0
    np.testing.assert_allclose(y.numpy(), np.maximum(x @ w.numpy(), 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w.grad.numpy(), x.T @ (x @ w.numpy() > 0), rtol=1e-4, atol=1e-4)


def test_numpy_blas_can_be_turned_off() -> None:
    """PICOGRAD_NUMPY_BLAS=0 (checked in a fresh process): whole matmuls call scipy's OpenBLAS as before."""
    script = "from picograd.codegen import blas\nprint(blas.SHARED)"
    env = dict(os.environ, PICOGRAD_NUMPY_BLAS="0", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False"


def test_openblas_when_asked_and_mkl_found_when_installed() -> None:
    """PICOGRAD_BLAS=openblas binds scipy's OpenBLAS (checked in a fresh process); with the `mkl` wheel
    installed on an Intel CPU, this process found MKL's library."""
    script = ("import json, numpy as np, test_blas as t\n"
              "from picograd.codegen import blas\n"
              "t._check_gemm_1(np.float32)\n"
              "print(json.dumps(blas.ONE_THREAD))")
    env = dict(os.environ, PICOGRAD_BLAS="openblas", PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == "openblas"
    installed = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
    if installed and blas._intel_cpu() and os.environ.get("PICOGRAD_BLAS", "").lower() != "openblas":
        assert blas.ONE_THREAD == "mkl"
    elif not installed:
        assert blas.ONE_THREAD == "openblas"


def test_blocked_program_calls_the_sequential_gemm_for_long_products(monkeypatch: pytest.MonkeyPatch) -> None:
    """In blocks, the forward product (contraction 784) calls gemm_1 and the weight gradient (contraction 64,
    the batch) and the thin 64x800x10 product keep OpenBLAS; the step matches numpy."""
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    monkeypatch.setattr(cache, "_programs", {})
    assert threads.pin_blas()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 784)).astype(np.float32)
    w = Tensor(rng.standard_normal((784, 800)).astype(np.float32) * 0.05, requires_grad=True)
    v = Tensor(rng.standard_normal((800, 10)).astype(np.float32) * 0.05, requires_grad=True)
    h = (Tensor(x) @ w).relu()
    out = h @ v
    out.sum().backward()
    pg.realize(out, w.grad)
    prog = [p for p in cache._programs.values() if p is not cache._EXPAND][-1]
    assert prog.blas_threads == 1  # in blocks
    calls = {ln.strip().split("(")[0] for ln in prog.source.splitlines() if ln.strip().startswith("gemm")}
    long_calls = [ln for ln in prog.source.splitlines() if "gemm_1(" in ln or "gemm_ldc_1(" in ln]
    assert calls & {"gemm_1", "gemm_ldc_1"} and calls & {"gemm", "gemm_ldc"}
    assert all(", 784)" in ln for ln in long_calls)  # only the forward product has a long contraction
    assert cpu_matmul.ONE_THREAD_MIN_K == 256
    hv = np.maximum(x @ w.numpy(), 0)
    np.testing.assert_allclose(out.numpy(), hv @ v.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(w.grad.numpy(), x.T @ ((hv > 0) * v.numpy().sum(1)), rtol=1e-4, atol=1e-3)


def test_mkl_left_alone_when_another_library_loaded_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process whose numpy already runs on MKL keeps MKL's threading: picograd then uses OpenBLAS for gemm_1
    (unless PICOGRAD_BLAS=mkl), and finds /proc/self/maps readable for the check."""
    assert blas._mapped("python") or blas._mapped("libpython") or not os.path.exists("/proc/self/maps")
    assert not blas._mapped("no-such-library-here")
    monkeypatch.setattr(blas, "_mapped", lambda name: name == "libmkl_rt")
    monkeypatch.setattr(blas, "_intel_cpu", lambda: True)
    monkeypatch.delenv("PICOGRAD_BLAS", raising=False)
    assert blas._mkl_sequential() is None
