"""The Numba CPU backend: every op-table row, forward and backward, compiled == eager; no float64 in float32
programs; the generated source is plain Python (NUMBA_DISABLE_JIT=1 gives the same results); the large-shape
code paths (prange, blocked and parallel reductions) agree with numpy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from optable import ROWS, SKIPPED, OpRow, make_inputs, run_row

import picograd as pg
from picograd import Tensor
from picograd.codegen import cache, cpu

ROW_PARAMS = [pytest.param(r, id=r.name) for r in ROWS] + [
    pytest.param(None, id=n, marks=pytest.mark.skip(reason=why)) for n, why in SKIPPED.items()
]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_same(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float, what: str) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    if actual.dtype.kind == "f":
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=what)


@pytest.mark.parametrize("row", ROW_PARAMS)
def test_row_compiled_matches_eager(row: OpRow) -> None:
    arrays = make_inputs(row)
    before = cache.cache_stats()
    out, grads = run_row(row, arrays, mode="lazy", backend="cpu")
    after = cache.cache_stats()
    assert after["hits"] + after["misses"] > before["hits"] + before["misses"], "no compiled program ran"
    eout, egrads = run_row(row, arrays, mode="eager")
    assert_same(out, eout, row.rtol, row.atol, f"{row.name} output")
    for i, (g, e) in enumerate(zip(grads, egrads, strict=True)):
        assert_same(g, e, row.rtol, row.atol, f"{row.name} grad {i}")


def _float32_program() -> cache.Program:
    """A float32 graph touching every kind of node: matmul, reductions, transcendental ops, pow, casts,
    iota, rand (dropout), pads and slices, compares and where."""
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((6, 5)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((5, 4)).astype(np.float32), requires_grad=True)
    y = (x @ w).tanh().dropout(0.25)
    z = (y.exp() + 1).log() * y.sigmoid() + ((x.abs() + 1) ** 1.5)[:, :4] + x.sqrt().clip(0, 1).sum(1, keepdims=True)
    z = z[:, ::2].max(1) + (y.argmax(1).float() * 0.5) + x[1:4].mean()
    loss = z.softmax(0).sum() + z.mean()
    loss.backward()
    pg.realize(loss, x.grad, w.grad)
    return [p for p in cache._programs.values() if p is not cache._EXPAND][-1]


def test_no_float64_in_float32_programs(monkeypatch) -> None:
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    prog = _float32_program()
    assert "float64" not in prog.source and "0.5)" in prog.source  # constants are typed globals
    overloads = list(prog.entry.overloads.values())
    assert overloads
    for cres in overloads:
        assert "float64" not in str(cres.signature), cres.signature
        # every variable of the typed function, temporaries included
        leaks = {k: str(t) for k, t in cres.type_annotation.typemap.items() if "float64" in str(t)}
        assert not leaks, leaks


def test_generated_source_is_valid_python_without_jit(tmp_path) -> None:
    """NUMBA_DISABLE_JIT=1 runs the very same generated module as plain Python/numpy: same results."""
    script = textwrap.dedent("""
        import numpy as np, picograd as pg
        from picograd import Tensor
        rng = np.random.default_rng(1)
        def run(eager):
            with pg.eager(eager):
                x = Tensor(rng.standard_normal((4, 6)).astype(np.float32), requires_grad=True)
                w = Tensor(rng.standard_normal((6, 3)).astype(np.float32), requires_grad=True)
                h = (x @ w).relu()
                z = (h.log_softmax(1)[:, ::-1] * 2).sum() + x[1:3, ::2].exp().max() + x.T.reshape(3, 8).mean()
                z = z + h.dropout(0.5).sum()
                z.backward()
                pg.realize(z, x.grad, w.grad)
                return [z.numpy(), x.grad.numpy(), w.grad.numpy()]
        state = rng.bit_generator.state
        pg.manual_seed(3); lazy = run(False)
        rng.bit_generator.state = state
        pg.manual_seed(3); eager = run(True)
        for a, b in zip(lazy, eager):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        from picograd.codegen import cache
        assert cache.cache_stats()["misses"] >= 1
        print("ok")
    """)
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", PICOGRAD_BACKEND="cpu", PICOGRAD_CACHE_DIR=str(tmp_path),
               PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def test_parallel_loops_over_short_rows_run_in_chunks(monkeypatch) -> None:
    # A prange iteration per element (or per row of a few elements) paid the worker's subnormal-mode switch each
    # time (8.7 ms for 1e6 elements): those loops take chunks of rows. Shapes with a partial last chunk.
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    rng = np.random.default_rng(1)
    a = rng.standard_normal(cpu.PARALLEL_MIN + cpu.CHUNK // 2 + 5).astype(np.float32)
    m = rng.standard_normal((cpu.PARALLEL_MIN // 7 + 3 * (cpu.CHUNK // 7) + 11, 7)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    x, y, c = Tensor(a), Tensor(m), Tensor(b)
    flat = (x * 0.5 + 1).relu()
    rows = (y + c).relu()
    sums = (y * y).sum(1)
    pg.realize(flat, rows, sums)
    prog = [p for p in cache._programs.values() if p is not cache._EXPAND][-1]
    assert prog.source.count("_b in prange(") >= 2, prog.source  # the flat loop; the rows (one kernel or two)
    np.testing.assert_array_equal(flat.numpy(), np.maximum(a * np.float32(0.5) + np.float32(1), 0))
    np.testing.assert_array_equal(rows.numpy(), np.maximum(m + b, 0))
    np.testing.assert_allclose(sums.numpy(), (m * m).sum(1), rtol=1e-6)


def test_large_shapes_take_the_parallel_and_blocked_paths(monkeypatch) -> None:
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    n = cpu.PARALLEL_MIN * 2
    rng = np.random.default_rng(0)
    a = rng.standard_normal(n).astype(np.float32)
    m = rng.standard_normal((512, 600)).astype(np.float32)
    x, y = Tensor(a), Tensor(m)
    full = (x * 0.5 + 1).relu().sum()  # one parallel blocked reduction over all elements
    rows = (y * y).sum(1)  # prange over rows, scalar accumulators
    cols = y.max(0)  # outer reduction: accumulate into the output row
    ew = (y.exp() * 0.25).T  # a large elementwise loop with prange
    small = x[:10].sum()
    pg.realize(full, rows, cols, ew, small)
    prog = [p for p in cache._programs.values() if p is not cache._EXPAND][-1]
    assert "prange(" in prog.source and "parallel=True" in prog.source
    np.testing.assert_allclose(full.numpy(), np.maximum(a * np.float32(0.5) + 1, 0).sum(dtype=np.float64),
                               rtol=1e-5)
    np.testing.assert_allclose(rows.numpy(), (m * m).sum(1), rtol=1e-5)
    np.testing.assert_array_equal(cols.numpy(), m.max(0))
    np.testing.assert_allclose(ew.numpy(), (np.exp(m) * np.float32(0.25)).T, rtol=1e-6)
    np.testing.assert_allclose(small.numpy(), a[:10].sum(), rtol=1e-5)


def test_reductions_keep_nan_and_inf(monkeypatch) -> None:
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    a = np.array([[1.0, np.nan, 3.0], [np.inf, 2.0, -1.0], [-np.inf, -np.inf, 0.0]], np.float32)
    x = Tensor(a)
    outs = [x.max(1), x.sum(0), x.maximum(0.5), x.min(0)]
    pg.realize(*outs)
    with pg.eager():
        ex = Tensor(a)
        want = [ex.max(1), ex.sum(0), ex.maximum(0.5), ex.min(0)]
    for o, w in zip(outs, want, strict=True):
        np.testing.assert_array_equal(o.numpy(), w.numpy())


def test_views_of_inputs_and_duplicate_roots(monkeypatch) -> None:
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    x = Tensor(a)
    r = x.reshape(4, 3)  # a view of an input: no kernel at all
    s = x.sum(1)  # a reduction's output returned through its reshape
    pg.realize(r, s, r)
    np.testing.assert_array_equal(r.numpy(), a.reshape(4, 3))
    np.testing.assert_array_equal(s.numpy(), a.sum(1))


def test_batched_and_transposed_matmuls(monkeypatch) -> None:
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4, 5)).astype(np.float32)
    b = rng.standard_normal((3, 5, 2)).astype(np.float32)
    ta, tb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    out = (ta @ tb).relu()
    (out * 2).sum().backward()
    pg.realize(out, ta.grad, tb.grad)
    with pg.eager():
        ea, eb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
        eo = (ea @ eb).relu()
        (eo * 2).sum().backward()
    for got, want in [(out, eo), (ta.grad, ea.grad), (tb.grad, eb.grad)]:
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_profiled_run_matches_run(monkeypatch) -> None:
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    x = Tensor(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32))
    y = (x @ x.T).relu().sum(0).exp()
    y.realize()
    prog = [p for p in cache._programs.values() if p is not cache._EXPAND][-1]
    outs, secs = prog.run_profiled([x.numpy()])
    assert len(secs) == len(prog.kernels) and all(s >= 0 for s in secs)
    np.testing.assert_allclose(outs[0], y.numpy(), rtol=1e-6)
    assert set(prog.kernel_sources) == {k.name for k in prog.kernels}
    for k in prog.kernels:
        assert f"def {k.name}(" in prog.kernel_sources[k.name] and k.name in prog.source
