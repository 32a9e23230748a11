"""Chunked matmuls in the CPU backend (codegen/cpu_matmul.py): big 2-D matmul kernels run as row or
column blocks over our own threads, each block's gemm followed by its part of the fused epilogue. Compiled ==
eager (or numpy) for kernels that chunk, at the boundaries (blocks that don't divide the rows, fewer rows than
blocks, transposed operands, loads and iota that need the global row, reductions along and across the split)
and the generated source is checked so that these tests fail if chunking silently stops.

The thresholds are lowered so that small shapes chunk (compile time): BLOCKS_MIN_MACS = CHUNK_MIN_MACS = 1 (with no
long-contraction exception), GEMM_BLOCKS = 3 (cpu_matmul)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import picograd as pg
from picograd import Tensor, optim
from picograd.codegen import blas, cache, cpu_matmul, threads
from picograd.ir import build as B
from picograd.nn import functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKS = 3


@pytest.fixture
def chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    monkeypatch.setattr(cpu_matmul, "CHUNK_MIN_MACS", 1)
    monkeypatch.setattr(cpu_matmul, "BLOCKS_MIN_MACS", 1)
    monkeypatch.setattr(cpu_matmul, "BLOCKS_LONG_K", 1 << 30)  # long contractions too
    monkeypatch.setattr(cpu_matmul, "GEMM_BLOCKS", BLOCKS)
    monkeypatch.setattr(cache, "_programs", {})  # programs rendered under other settings must not be reused
    # scipy's OpenBLAS is pinned to one thread here, or nothing chunks (and these tests fail: they must)
    assert threads.pin_blas()


def _program() -> cache.Program:
    return [p for p in cache._programs.values() if p is not cache._EXPAND][-1]


def _blocks(prog: cache.Program) -> dict[tuple[int, ...], list[tuple[str | None, bool]]]:
    """For each matmul kernel, by its product's shape: (how it splits: 'rows' | 'columns' | 'k+rows' (blocks
    of the contraction, then of rows) | None, whether its epilogue runs inside the blocks), read from the
    generated source."""
    out: dict[tuple[int, ...], list] = {}
    for k in prog.kernels:
        if k.matmul is None:
            continue
        lines = prog.kernel_sources[k.name].splitlines()
        heads = [i for i, ln in enumerate(lines) if "for ch in prange(" in ln]
        split, fused = None, False
        if heads:
            head = heads[-1]
            split = "rows" if "blocks of rows" in lines[head] else "columns"
            if "blocks of the contraction" in lines[heads[0]]:
                split = "k+" + split
            indent = len(lines[head]) - len(lines[head].lstrip())
            body = []
            for ln in lines[head + 1:]:
                if ln.strip() and len(ln) - len(ln.lstrip()) <= indent:
                    break
                body.append(ln)
            fused = any("# store" in ln or "reduce_" in ln for ln in body)
        out.setdefault(tuple(k.matmul.shape), []).append((split, fused))
    return out


def _train(eager: bool, steps: int = 2) -> list[np.ndarray]:
    """A small MLP (dropout, cross-entropy, Adam): every matmul of forward and backward chunks, the Adam updates
    of the weights run inside their gradient's blocks, the bias gradients (sums over rows) in column blocks."""
    rng = np.random.default_rng(3)
    w1 = Tensor(rng.standard_normal((7, 5)).astype(np.float32) * 0.5, requires_grad=True)
    b1 = Tensor(rng.standard_normal(5).astype(np.float32) * 0.1, requires_grad=True)
    w2 = Tensor(rng.standard_normal((5, 13)).astype(np.float32) * 0.5, requires_grad=True)
    b2 = Tensor(rng.standard_normal(13).astype(np.float32) * 0.1, requires_grad=True)
    params = [w1, b1, w2, b2]
    opt = optim.Adam(params, lr=0.05)
    x = rng.standard_normal((10, 7)).astype(np.float32)
    y = rng.integers(0, 13, 10)
    pg.manual_seed(5)
    with pg.eager(eager):
        for _ in range(steps):
            h = (Tensor(x) @ w1 + b1).relu().dropout(0.3)
            loss = F.cross_entropy(h @ w2 + b2, Tensor(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
    return [p.numpy() for p in params]


def test_training_step_chunks_and_matches_eager(chunked) -> None:
    got = _train(eager=False)
    blocks = _blocks(_program())
    want = _train(eager=True)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    # forward: x @ w1 (10 rows >= 5 columns: row blocks, 10 rows in 3 blocks) with bias, relu and dropout
    assert ("rows", True) in blocks[(10, 5)]
    # logits: the loss's row max and row sums force row blocks although columns are more (13 > 10)
    assert blocks[(10, 13)] == [("rows", True)]
    # weight gradients with their Adam update, and the hidden gradient with the bias gradient b1 (a sum over
    # rows: only column blocks keep it inside one block, although rows are more here)
    assert ("rows", True) in blocks[(7, 5)] and ("columns", True) in blocks[(5, 13)]
    assert ("columns", True) in blocks[(10, 5)]
    assert all(split is not None for v in blocks.values() for split, _ in v), blocks


def test_forward_epilogues_and_transposes(chunked) -> None:
    rng = np.random.default_rng(0)

    def arr(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    cases = []  # (lazy result, numpy reference)
    a, b, bias = arr(11, 6), arr(6, 4), arr(4)
    # row blocks: bias + relu, a flipped load (negative stride: read at the global row), iota along the rows
    z = arr(11, 4)
    rows_iota = Tensor(B.iota((11, 4), 0, np.dtype(np.int64))).float()
    cases.append(((Tensor(a) @ Tensor(b) + Tensor(bias)).relu() + Tensor(z)[::-1] * rows_iota,
                  np.maximum(a @ b + bias, 0) + z[::-1] * np.arange(11, dtype=np.float32)[:, None]))
    # transposed operands, as stored: A^T and B^T, each with more rows and with more columns
    for m, k, n in ((9, 5, 3), (3, 5, 9)):
        at, bt = arr(k, m), arr(n, k)
        cols_iota = Tensor(B.iota((m, n), 1, np.dtype(np.int64))).float()
        cases.append((Tensor(at).T @ Tensor(bt).T * cols_iota, (at.T @ bt.T) * np.arange(n, dtype=np.float32)))
        a2, b2 = arr(m, k), arr(n, k)
        cases.append(((Tensor(a2) @ Tensor(b2).T).exp(), np.exp(a2 @ b2.T)))
        a3, b3 = arr(k, m), arr(k, n)
        cases.append((Tensor(a3).T @ Tensor(b3) - 1, a3.T @ b3 - 1))
    # fewer rows (columns) than blocks: 2 x 2 in 2 blocks, 1 x 5 in column blocks
    a4, b4, a5, b5 = arr(2, 3), arr(3, 2), arr(1, 4), arr(4, 5)
    cases.append(((Tensor(a4) @ Tensor(b4)).relu(), np.maximum(a4 @ b4, 0)))
    cases.append((Tensor(a5) @ Tensor(b5) * 2, (a5 @ b5) * 2))
    # reductions: along the rows (row blocks), across the rows (column blocks), over everything (gemm-only)
    a6, b6 = arr(4, 6), arr(6, 12)
    cases.append(((Tensor(a6) @ Tensor(b6)).max(1), (a6 @ b6).max(1)))
    a7, b7 = arr(12, 6), arr(6, 4)
    cases.append(((Tensor(a7) @ Tensor(b7)).sum(0), (a7 @ b7).sum(0)))
    a8, b8 = arr(8, 3), arr(3, 7)
    cases.append(((Tensor(a8) @ Tensor(b8)).relu().sum(), np.maximum(a8 @ b8, 0).sum()))
    # a long contraction (> 2 x rows and columns): partial products over 3 blocks of it (20 = 6 + 7 + 7), summed
    # by the row blocks; with bias + relu, with a row max, and with a sum over everything after the blocks
    a9, b9, c9 = arr(4, 20), arr(20, 3), arr(3)
    cases.append(((Tensor(a9) @ Tensor(b9) + Tensor(c9)).relu(), np.maximum(a9 @ b9 + c9, 0)))
    a10, b10 = arr(6, 40), arr(40, 5)
    cases.append(((Tensor(a10) @ Tensor(b10).T.T).max(1), (a10 @ b10).max(1)))
    a11, b11 = arr(30, 5), arr(2, 30)
    cases.append(((Tensor(a11).T @ Tensor(b11).T).sum(), (a11.T @ b11.T).sum()))
    pg.realize(*[c[0] for c in cases])
    for i, (got, want) in enumerate(cases):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5, err_msg=f"case {i}")
    blocks = _blocks(_program())
    assert blocks[(11, 4)] == [("rows", True)]
    assert blocks[(9, 3)] == [("rows", True)] * 3 and blocks[(3, 9)] == [("columns", True)] * 3
    assert blocks[(2, 2)] == [("rows", True)] and blocks[(1, 5)] == [("columns", True)]
    assert blocks[(4, 12)] == [("rows", True)]  # a row max keeps row blocks although columns are more
    assert blocks[(12, 4)] == [("columns", True)]  # a sum over rows never runs in row blocks
    assert blocks[(8, 7)] == [("rows", False)]  # a sum over both axes: only the gemm is split
    assert blocks[(4, 3)] == [("k+rows", True)] and blocks[(6, 5)] == [("k+rows", True)]
    assert blocks[(5, 2)] == [("k+rows", False)]
    src = _program().source
    assert f"for ch in prange({BLOCKS}):" in src and "for ch in prange(2):" in src  # min(blocks, rows)
    assert "i0 = i0_l + lo" in src and "i1 = i1_l + lo" in src  # the global row (column) where needed


def test_a_flip_or_transpose_of_the_product_is_not_a_step_of_its_blocks(chunked) -> None:
    # A movement op reading the product elsewhere than at its own index (a flip along the split axis, a same-shape
    # transpose) was taken as a fused step of the matmul's blocks: each block read rows (columns) that another had
    # not written yet (the scratch's old values). Also through autodiff: the gradient of a flipped operand.
    rng = np.random.default_rng(2)
    a, b, w = (rng.standard_normal(s).astype(np.float32) for s in ((12, 5), (5, 12), (12, 12)))
    p = Tensor(a) @ Tensor(b)
    flipped, transposed, cols = p[::-1], p.T, p[:, ::-1]
    tb = Tensor(b, requires_grad=True)
    ((Tensor(a) @ tb[:, ::-1]) * Tensor(w)).sum().backward()
    pg.realize(flipped, transposed, cols, tb.grad)
    want = a @ b
    np.testing.assert_allclose(flipped.numpy(), want[::-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(transposed.numpy(), want.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cols.numpy(), want[:, ::-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tb.grad.numpy(), (a.T @ w)[:, ::-1], rtol=1e-4, atol=1e-4)


def test_batched_matmul_over_threads(chunked) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 4, 5)).astype(np.float32), rng.standard_normal((3, 5, 2)).astype(np.float32)
    out = (Tensor(a) @ Tensor(b)).relu()
    out.realize()
    np.testing.assert_allclose(out.numpy(), np.maximum(a @ b, 0), rtol=1e-5, atol=1e-6)
    assert "for b in prange(3):" in _program().source


def test_default_threshold_chunks_big_matmuls_only(monkeypatch) -> None:
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    monkeypatch.setattr(cpu_matmul, "BLOCKS_MIN_MACS", 4_000_000)  # this program in blocks (default: 24M)
    monkeypatch.setattr(cpu_matmul, "BLOCKS_LONG_K", 1 << 30)  # (its big matmul's contraction is long)
    assert threads.pin_blas()
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((128, 257)).astype(np.float32), rng.standard_normal((257, 128)).astype(np.float32)
    big = (Tensor(a) @ Tensor(b)).relu()  # 4.2M multiply-adds: chunked
    small = Tensor(a[:16]) @ Tensor(b[:, :16])  # 66K: one gemm call, as before
    # a small product (20K) with a big epilogue (~8 ops x 64 x 1000 elements): chunked for the epilogue
    c, d, e = a[:64, :5], b[:5].repeat(8, 1)[:, :1000], rng.standard_normal(1000).astype(np.float32)
    heavy = (((Tensor(c) @ Tensor(d) + Tensor(e)).exp() * 0.5 + 1).log().sqrt() - 1).relu()
    pg.realize(big, small, heavy)
    np.testing.assert_allclose(big.numpy(), np.maximum(a @ b, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(small.numpy(), a[:16] @ b[:, :16], rtol=1e-4, atol=1e-4)
    want = np.maximum(np.sqrt(np.log(np.exp(c @ d + e) * 0.5 + 1)) - 1, 0)
    np.testing.assert_allclose(heavy.numpy(), want, rtol=1e-4, atol=1e-5)
    blocks = _blocks(_program())
    assert blocks[(128, 128)] == [("k+rows", True)] and blocks[(16, 16)] == [(None, False)]
    assert blocks[(64, 1000)] == [("columns", True)]


def _scipy_blas_threads() -> int:
    lib = threads._scipy_openblas()
    getter = getattr(lib, "scipy_openblas_get_num_threads", None) or lib.openblas_get_num_threads
    return int(getter())


# OpenBLAS threads a program whose matmuls are whole asks for (cache.Program.blas_threads): with numpy's pool found
# (blas.SHARED) its gemm_np calls run there and scipy's OpenBLAS stays on one thread, else all of scipy's
WHOLE = 1 if blas.SHARED else 0


def test_program_picks_blocks_or_openblas_threads(monkeypatch) -> None:
    """A program with a matmul of >= BLOCKS_MIN_MACS runs its matmuls in blocks with OpenBLAS on one thread,
    unless each such matmul has a long contraction and a light epilogue; one with only smaller matmuls and no big
    loops, or only long light ones, leaves them whole to all of OpenBLAS's threads, no prange."""
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    monkeypatch.setattr(cache, "_programs", {})
    assert threads.pin_blas()
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((64, 784)).astype(np.float32), rng.standard_normal((784, 800)).astype(np.float32)
    g = rng.standard_normal((64, 800)).astype(np.float32)
    grad_like = (Tensor(a).T @ Tensor(g)) * 0.5  # 40M multiply-adds over a contraction of 64 (a weight gradient)
    grad_like.realize()
    prog = _program()
    assert prog.blas_threads == 1 and "prange(" in prog.source and _scipy_blas_threads() == 1
    np.testing.assert_allclose(grad_like.numpy(), a.T @ g * 0.5, rtol=1e-4, atol=1e-3)
    small = (Tensor(a[:, :128]) @ Tensor(b[:128, :128])).relu()  # 1M: a program of small matmuls
    small.realize()
    prog = _program()
    assert prog.blas_threads == WHOLE and "prange(" not in prog.source
    assert _scipy_blas_threads() == (1 if blas.SHARED else threads._blas["all"])
    assert ("gemm_np(" in prog.source) == blas.SHARED  # whole matmuls run on numpy's OpenBLAS where found
    np.testing.assert_allclose(small.numpy(), np.maximum(a[:, :128] @ b[:128, :128], 0), rtol=1e-4, atol=1e-4)
    big2 = (Tensor(a).T @ Tensor(g)) * 2.0
    big2.realize()
    assert _scipy_blas_threads() == 1  # back to one thread for a program in blocks
    # 40M multiply-adds over 784 with a relu (2 ops per output element, the schedule's estimate): left whole
    long_light = (Tensor(a) @ Tensor(b)).relu()
    long_light.realize()
    prog = _program()
    assert prog.blas_threads == WHOLE and "prange(" not in prog.source
    assert _scipy_blas_threads() == (1 if blas.SHARED else threads._blas["all"])
    np.testing.assert_allclose(long_light.numpy(), np.maximum(a @ b, 0), rtol=1e-4, atol=1e-3)
    # 26M over 256 with ~6 ops per element (over 1/64 per multiply-add): in blocks
    c, d = rng.standard_normal((256, 256)).astype(np.float32), rng.standard_normal((256, 400)).astype(np.float32)
    long_heavy = (((Tensor(c) @ Tensor(d)) * 0.01).exp() * 0.5 + 1).log().sqrt()
    long_heavy.realize()
    prog = _program()
    assert cpu_matmul.BLOCKS_LONG_K == 256 and prog.blas_threads == 1 and "prange(" in prog.source
    np.testing.assert_allclose(long_heavy.numpy(), np.sqrt(np.log(np.exp(c @ d * 0.01) * 0.5 + 1)), rtol=1e-4,
                               atol=1e-5)


def test_numpy_blas_keeps_its_threads() -> None:
    """Only scipy's OpenBLAS (what generated gemm calls) is pinned: numpy's own, for users' np.dot, is not."""
    before = _numpy_blas_threads()
    assert threads.pin_blas()
    assert _numpy_blas_threads() == before


def _numpy_blas_threads() -> int | None:
    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    for path in libs.glob("libscipy_openblas64_*.so*"):
        lib = ctypes.CDLL(str(path))
        getter = getattr(lib, "scipy_openblas_get_num_threads64_", None)
        if getter is not None:
            return int(getter())
    pytest.skip("numpy has no bundled scipy-openblas64 here")


def test_chunked_source_runs_without_jit(tmp_path) -> None:
    """NUMBA_DISABLE_JIT=1 runs the generated blocks as plain Python (gemm_ldc's and gemm_1's numpy fallbacks
    included)."""
    script = textwrap.dedent("""
        import numpy as np, picograd as pg
        from picograd import Tensor
        rng = np.random.default_rng(1)
        a, b, c = (rng.standard_normal(s).astype(np.float32) for s in ((7, 5), (5, 3), (3, 5)))
        r = (Tensor(a) @ Tensor(b)).relu()
        s = (Tensor(a).T @ Tensor(a)).sum(0)
        t = Tensor(c) @ Tensor(a).T
        d, e = rng.standard_normal((160, 300)).astype(np.float32), rng.standard_normal((300, 40)).astype(np.float32)
        u = Tensor(d) @ Tensor(e)  # a long contraction: gemm_1 (its numpy fallback here)
        pg.realize(r, s, t, u)
        np.testing.assert_allclose(r.numpy(), np.maximum(a @ b, 0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s.numpy(), (a.T @ a).sum(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(t.numpy(), c @ a.T, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(u.numpy(), d @ e, rtol=1e-4, atol=1e-4)
        from picograd.codegen import cache
        src = [p for p in cache._programs.values() if p is not cache._EXPAND][-1].source
        assert "blocks of rows" in src and "gemm_ldc(" in src and "gemm_1(" in src, src
        print("ok")
    """)
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", PICOGRAD_BACKEND="cpu", PICOGRAD_CACHE_DIR=str(tmp_path),
               PICOGRAD_CHUNK_MIN_MACS="1", PICOGRAD_BLOCKS_MIN_MACS="1", PICOGRAD_GEMM_BLOCKS="2", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
