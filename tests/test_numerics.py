"""Floating-point semantics at the edges: compiled CPU code rounds every operation as numpy does (no fastmath
rewrites, so lazy results equal eager ones bit for bit, NaN and signed zeros included), its float sums are still
vectorized (only their accumulating add may be reassociated, cpu_expr.acc_add) and keep NaN and inf, and
gradients at the edges of their domains (pow and abs at 0) take torch's values."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import picograd as pg
from picograd import Tensor
from picograd.codegen import cache, cpu

INF, NAN = math.inf, math.nan


@pytest.fixture
def cpu_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")


def _run(fn, arrays: list[np.ndarray], eager: bool) -> list[np.ndarray]:
    """fn's value and the gradients of its sum with respect to each input."""
    with pg.eager(eager):
        ts = [Tensor(a, requires_grad=True) for a in arrays]
        out = fn(*ts)
        out.sum().backward()
        return [out.numpy()] + [t.grad.numpy() for t in ts]


def assert_identical(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Same values, NaN in the same places, and the same sign on zeros (assert_array_equal has -0 == 0)."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    np.testing.assert_array_equal(got, want, err_msg=what)
    zero = want == 0  # NaN's sign bit is not part of numpy's semantics
    np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(want[zero]), err_msg=f"{what}: signs of zeros")


def _f32(*xs: float) -> np.ndarray:
    return np.array(xs, np.float32)


# Each one was rewritten by LLVM under fastmath {'reassoc', 'nsz'} (the flags cpu.py used to compile with).
IEEE_CASES = [
    ("exp_log_is_nan_below_0", lambda x: x.log().exp(), [_f32(-1, 2, 0, INF, NAN)]),
    ("x_minus_x_is_nan_at_inf", lambda x: x - x, [_f32(INF, 1, -INF, NAN, -0.0)]),
    ("recip_of_x_minus_x", lambda x: 1.0 / (x - x), [_f32(INF, 1, -2)]),
    ("a_plus_b_minus_b_rounds", lambda a, b: (a + b) - b, [_f32(1, 3, 0.5), _f32(1e8, 1e8, 1)]),
    ("x_plus_0_is_plus_0_at_minus_0", lambda x: x + 0.0, [_f32(-0.0, 0.0, 1)]),
    ("0_minus_x_is_plus_0_at_0", lambda x: 0.0 - x, [_f32(0.0, -0.0, 1)]),
    ("x_times_0_is_nan_at_inf", lambda x: x * 0.0, [_f32(INF, -INF, NAN, -1)]),
]


@pytest.mark.parametrize(("name", "fn", "arrays"), IEEE_CASES, ids=[c[0] for c in IEEE_CASES])
def test_compiled_code_rounds_as_numpy(cpu_backend, name, fn, arrays) -> None:
    with np.errstate(all="ignore"):
        lazy, eager = _run(fn, arrays, False), _run(fn, arrays, True)
    for k, (g, w) in enumerate(zip(lazy, eager, strict=True)):
        assert_identical(g, w, f"{name}: {'value' if k == 0 else f'gradient {k - 1}'}")


def _last_program() -> cache.Program:
    return [p for p in cache._programs.values() if p is not cache._EXPAND][-1]


def test_sums_vectorize_without_fastmath(cpu_backend) -> None:
    x = Tensor(np.ones((3, 2000), np.float32))
    y = (x * x).sum(1)
    y.realize()
    prog = _last_program()
    assert "fastmath" not in prog.source and "acc_add(" in prog.source
    try:
        llvm = "\n".join(prog.entry.inspect_llvm().values())
    except Exception:  # noqa: BLE001 - loaded from numba's disk cache: no IR to look at
        pytest.skip("the program came from numba's cache")
    assert re.search(r"fadd reassoc <\d+ x float>", llvm), "the sum's loop was not vectorized"
    np.testing.assert_array_equal(y.numpy(), [2000, 2000, 2000])


def _reduce_inputs(rows: int, n: int) -> np.ndarray:
    """Rows of random values with NaN, inf and -inf at chosen positions: first, last, both infinities in one row
    (sum NaN), and a row that is all -inf (max -inf)."""
    a = np.random.default_rng(n).standard_normal((rows, n)).astype(np.float32)
    a[0, 0] = NAN
    a[1, n - 1] = NAN
    a[2, 3], a[2, n - 2] = INF, -INF
    a[3, n // 2] = INF
    a[4, :] = -INF
    a[5, 1] = -INF
    return a


@pytest.mark.parametrize(("n", "parallel_min", "block"), [
    (5, None, None),  # shorter than a vector
    (1001, None, None),  # vectorized, with a remainder
    (1001, 16, None),  # prange over rows
    (1001, 16, 100),  # whole sums in blocks of 100 under prange
    (1001, None, 100),  # blocks of 100, serial
])
def test_vectorized_reductions_keep_nan_and_inf(cpu_backend, monkeypatch, n, parallel_min, block) -> None:
    saved = dict(cache._programs)
    if parallel_min is not None:
        monkeypatch.setattr(cpu, "PARALLEL_MIN", parallel_min)
    if block is not None:
        monkeypatch.setattr(cpu, "BLOCK", block)
    cache._programs.clear()  # the memory cache is keyed by graph, not by these settings
    try:
        a = _reduce_inputs(8, n)
        x = Tensor(a)
        outs = [x.sum(1), x.max(1), x.min(1), (x * 2.0 + 1.0).sum(1), x[6:].sum(), x[6:].max()]
        pg.realize(*outs)
        src = _last_program().source
    finally:
        cache._programs.clear()
        cache._programs.update(saved)
    assert ("prange(" in src) == (parallel_min is not None)
    with np.errstate(all="ignore"), pg.eager():
        e = Tensor(a)
        want = [e.sum(1), e.max(1), e.min(1), (e * 2.0 + 1.0).sum(1), e[6:].sum(), e[6:].max()]
    for k, (o, w) in enumerate(zip(outs, want, strict=True)):
        o, w = o.numpy(), w.numpy()
        np.testing.assert_array_equal(np.isnan(o), np.isnan(w), err_msg=f"output {k}: NaN positions")
        np.testing.assert_allclose(o, w, rtol=1e-5, atol=1e-4, err_msg=f"output {k}")  # inf matches exactly


# Gradients at 0 as torch 2 computes them (pow_backward / pow_backward_exponent): d/da a**b is 0 where b == 0,
# d/db a**b is 0 where a == 0 and b >= 0; elsewhere the plain formulas, inf and NaN included.
X = _f32(0.0, -0.0, 2.0, -1.0)
POW_CASES = [
    ("x**0", lambda x: x ** 0, [0, 0, 0, 0]),
    ("x**0.0", lambda x: x ** 0.0, [0, 0, 0, 0]),
    ("x**x", lambda x: x ** x, [0, 0, 6.7725887, NAN]),
    ("x**2.5", lambda x: x ** 2.5, [0, 0, 7.071068, NAN]),
    ("x**-1.5", lambda x: x ** -1.5, [-INF, -INF, -0.26516503, NAN]),
    ("2**x", lambda x: 2.0 ** x, [0.6931472, 0.6931472, 2.7725887, 0.3465736]),
    ("0**x", lambda x: pg.zeros(4) ** x, [0, 0, 0, -INF]),
]


@pytest.mark.parametrize(("name", "fn", "want"), POW_CASES, ids=[c[0] for c in POW_CASES])
def test_pow_gradients_at_0_follow_torch(cpu_backend, name, fn, want) -> None:
    with np.errstate(all="ignore"):
        lazy, eager = _run(fn, [X], False), _run(fn, [X], True)
    np.testing.assert_allclose(eager[1], _f32(*want), rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(lazy[1], eager[1], rtol=1e-6, err_msg=name)  # NaN and inf in the same places
    np.testing.assert_allclose(lazy[0], eager[0], rtol=1e-6, err_msg=name)


def test_pow_of_two_tensors_gradients_at_0_follow_torch(cpu_backend) -> None:
    a, b = _f32(0, 0, 0, 2, NAN), _f32(0, 1, -1, 0, 0)
    with np.errstate(all="ignore"):
        lazy, eager = _run(lambda x, y: x ** y, [a, b], False), _run(lambda x, y: x ** y, [a, b], True)
    for got in (lazy, eager):
        np.testing.assert_allclose(got[1], _f32(0, 1, -INF, 0, 0), rtol=1e-6)
        np.testing.assert_allclose(got[2], _f32(0, 0, -INF, 0.6931472, NAN), rtol=1e-6)


def test_abs_gradient_at_0_is_0_as_in_torch(cpu_backend) -> None:
    x = _f32(0.0, -0.0, 2.0, -1.0, INF, NAN)
    with np.errstate(all="ignore"):
        lazy, eager = _run(lambda t: t.abs(), [x], False), _run(lambda t: t.abs(), [x], True)
    for got in (lazy, eager):
        assert_identical(got[0], np.abs(x), "abs")
        np.testing.assert_array_equal(got[1], _f32(0, 0, 1, -1, 1, 0), err_msg="abs gradient")  # as torch's


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32])
def test_small_integers_wrap_inside_fused_code(cpu_backend, dtype) -> None:
    # numba computes them in 64 bits: a comparison fused after an add/mul/neg saw the unwrapped value
    info = np.iinfo(dtype)
    a = np.array([info.max, info.max // 2 + 1, info.min, 3, 0], dtype)
    with np.errstate(all="ignore"):
        want = [(a + a) > 5, (a * a) < 7, (-a) > 0, (a + a) * a]
    for eager in (False, True):
        with pg.eager(eager):
            t = Tensor(a)
            got = [(t + t) > 5, (t * t) < 7, (-t) > 0, (t + t) * t]
            pg.realize(*got)
            for k, (g, w) in enumerate(zip(got, want, strict=True)):
                assert_identical(g.numpy(), w, f"value {k}, eager={eager}")


@pytest.mark.parametrize("eager", [False, True], ids=["compiled", "eager"])
def test_division_is_correctly_rounded_as_numpy(cpu_backend, eager: bool) -> None:
    """a / b is a true division (the `div` primitive), not a * (1 / b): that was 1 ulp off numpy for about a
    quarter of float32 quotients, and gave inf or NaN for a divisor whose reciprocal overflows: only subnormals
    do (1e-39), which compiled code flushes to zero (fpenv, as JAX on the CPU), so that case is eager's alone."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal(4096).astype(np.float32)
    b = (rng.standard_normal(4096) * 10.0 ** rng.integers(-5, 5, 4096)).astype(np.float32)
    a[:1], b[:1] = _f32(10), _f32(3)
    if eager:
        a[1:3], b[1:3] = _f32(1e-30, 0), _f32(1e-39, 1e-39)
    with pg.eager(eager):
        got = (Tensor(a) / Tensor(b)).numpy()
        mean = Tensor(_f32(10, 0, 0)).mean().item()
        scalar = (Tensor(a) / 3.0).numpy()
    with np.errstate(all="ignore"):
        assert_identical(got, a / b, "tensor / tensor")
    assert_identical(scalar, a / np.float32(3), "tensor / 3.0")
    assert mean == np.float32(10) / np.float32(3) == np.mean(_f32(10, 0, 0))


def test_division_gradients_match_torch(cpu_backend) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 64)).astype(np.float32)
    got = _run(lambda x, y: x / y, [a, b], eager=False)
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a, b))
    (ta / tb).sum().backward()
    for g, w in zip(got, [(ta / tb).detach().numpy(), ta.grad.numpy(), tb.grad.numpy()], strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=0)
