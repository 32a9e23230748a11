"""Random graphs through the compiled path: hypothesis draws DAGs of broadcasts, reductions, movement ops
(permute, reshape, expand, slices with any step, the pads their gradients make), matmuls and elementwise
chains; their values and the gradients of a random weighting of them, compiled, must equal eager numpy.

Several graphs share one realize (one program per example), so a CI run checks >= 200 graphs while compiling
a quarter as many programs. PICOGRAD_RANDOM_GRAPHS sets the number of graphs (e.g. 2000 for a long run),
PICOGRAD_PARALLEL_EXAMPLES the examples of the variant that renders every kernel as a parallel one.
recipes(wide=True) draws wider graphs (sizes, dtypes, more ops) for the CUDA fuzzer, tests/test_cuda_random.py."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import picograd as pg
from picograd import Tensor
from picograd.codegen import cache

GRAPHS = int(os.environ.get("PICOGRAD_RANDOM_GRAPHS", "200"))
PER_EXAMPLE = 4
CHECKED = {"graphs": 0}

UNARY = ["neg", "exp_tanh", "log1p_abs", "sqrt_abs", "sin", "cos", "tanh", "relu", "sigmoid", "recip"]
BINARY = ["add", "sub", "mul", "maximum", "minimum", "where_gt", "div"]
OPS = UNARY + BINARY + ["sum", "max", "mean", "permute", "reshape", "expand", "slice", "matmul", "flip"]
# recipes(wide=True), for backends whose bugs hide in sizes and dtypes (the CUDA fuzzer: tests/test_cuda_random.py):
# dimensions that straddle tiles and thread blocks (or are empty), integer and bool inputs, and these ops too.
WIDE_DIMS = (0, 1, 1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17, 31, 33, 40, 65, 100, 130)  # 130: split-k at GPU tiles
WIDE_DTYPES = ("float32",) * 5 + ("int32", "int8", "uint8", "int64", "bool")
WIDE_OPS = ["cast", "cmp", "argmax", "softmax", "dropout", "matmul2", "int_pow", "abs", "clip", "pow", "min"]
WIDE_CHOICES = OPS + WIDE_OPS + ["matmul2"] * 3 + ["sum", "max"]  # matmuls need operands that line up: more tries
WIDE_ELEMENTS = int(os.environ.get("PICOGRAD_RANDOM_ELEMENTS", "600"))  # per input: the CUDA simulator is slow


def _wide_base(draw, rank: int) -> tuple[int, ...]:
    """A shape over WIDE_DIMS with at most WIDE_ELEMENTS elements (the biggest axes shrink to fit)."""
    dims = [draw(st.sampled_from(WIDE_DIMS)) for _ in range(rank)]
    while int(np.prod(dims)) > WIDE_ELEMENTS:
        k = int(np.argmax(dims))
        dims[k] = max(1, dims[k] // 2)
    return tuple(dims)


def _dummy(shape: tuple[int, ...], dtype: str) -> Tensor:
    return Tensor(np.zeros(shape, dtype), dtype=dtype)


@st.composite
def recipes(draw, wide: bool = False) -> dict:
    """A graph as data (replayable lazily and eagerly): input shapes, then steps over earlier values.

    wide=True: see WIDE_DIMS; each step is also applied eagerly to zeros of the right shape and dtype, which
    gives its result's shape and dtype and drops the steps picograd refuses (a max over an empty axis, a
    matmul of ints)."""
    rank = draw(st.integers(1, 3))
    base = _wide_base(draw, rank) if wide else tuple(draw(st.integers(1, 5)) for _ in range(rank))
    shapes = [base] + [tuple(1 if draw(st.booleans()) else s for s in base) for _ in range(draw(st.integers(0, 2)))]
    dtypes = [draw(st.sampled_from(WIDE_DTYPES)) for _ in shapes] if wide else ["float32"] * len(shapes)
    steps = []
    avail = [s for s in shapes]
    with pg.eager(True):
        dummies = [_dummy(s, d) for s, d in zip(shapes, dtypes, strict=True)] if wide else []
    for _ in range(draw(st.integers(1, 10 if wide else 7))):
        op = draw(st.sampled_from(WIDE_CHOICES if wide else OPS))
        i = draw(st.integers(0, len(avail) - 1))
        shape = avail[i]
        arg: object = None
        if op in BINARY:
            j = draw(st.integers(0, len(avail) - 1))
            try:
                out = np.broadcast_shapes(shape, avail[j])
            except ValueError:
                continue
            arg = j
        elif op in ("sum", "max", "mean"):
            if not shape:
                continue
            axes = tuple(sorted(draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))))
            keep = draw(st.booleans())
            arg = (axes, keep)
            out = tuple(1 if a in axes else s for a, s in enumerate(shape)) if keep else tuple(
                s for a, s in enumerate(shape) if a not in axes)
        elif op == "permute":
            arg = tuple(draw(st.permutations(range(len(shape)))))
            out = tuple(shape[p] for p in arg)
        elif op == "reshape":
            n = int(np.prod(shape))
            divs = [d for d in range(1, n + 1) if n % d == 0] or [1]  # (n == 0: wide shapes may be empty)
            d = draw(st.sampled_from(divs))
            arg = draw(st.sampled_from([(n,), (d, n // d), (n // d, 1, d)]))
            out = arg
        elif op == "expand":
            if not shape:
                continue
            arg = tuple(draw(st.integers(2, 3)) if s == 1 else s for s in shape)
            out = arg
        elif op in ("slice", "flip"):
            if not shape:
                continue
            ax = draw(st.integers(0, len(shape) - 1))
            n = shape[ax]
            if op == "flip":
                sl = (ax, None, None, -1)
            else:
                start = draw(st.integers(-n, n - 1) if n else st.just(0))
                stop = draw(st.one_of(st.none(), st.integers(-n, n)))
                step = draw(st.sampled_from([1, 2, 3, -1, -2]))
                sl = (ax, start, stop, step)
            arg = sl
            out = list(shape)
            out[ax] = len(range(*slice(*sl[1:]).indices(n)))
            out = tuple(out)
            if 0 in out and not wide:
                continue
        elif op == "matmul":
            if len(shape) != 2:
                continue
            arg = draw(st.booleans())  # x @ x.T or x.T @ x
            out = (shape[0], shape[0]) if arg else (shape[1], shape[1])
        elif op in WIDE_OPS:
            arg = _wide_arg(draw, op, shape, avail)
            if arg is None:
                continue
            out = shape  # (the dummy run below gives the real one)
        else:
            out = shape
        if wide:
            try:
                with pg.eager(True), np.errstate(all="ignore"):
                    d = apply(op, dummies[i], arg, dummies)
            except (TypeError, ValueError):
                continue
            dummies.append(d)
            out = d.shape
        steps.append((op, i, arg))
        avail.append(out)
    recipe = {"shapes": shapes, "steps": steps, "n_out": draw(st.integers(1, 3)), "seed": draw(st.integers(0, 2**16))}
    if wide:
        recipe["dtypes"] = dtypes
    return recipe


def _wide_arg(draw, op: str, shape: tuple[int, ...], avail: list[tuple[int, ...]]) -> object:
    """The argument of a WIDE_OPS step on a value of this shape (None: not applicable)."""
    if op == "cast":
        return draw(st.sampled_from(["float32", "int32", "int8", "uint8", "int64", "bool"]))
    if op == "cmp":
        j = draw(st.integers(0, len(avail) - 1))
        return (j, draw(st.sampled_from(["lt", "le", "eq", "ne"])))
    if op in ("argmax", "softmax"):
        return draw(st.integers(0, len(shape) - 1)) if shape else None
    if op == "dropout":
        return draw(st.sampled_from([0.25, 0.5]))
    if op == "matmul2":  # x @ y or x @ swap(y) for any y that lines up: batched, vectors, tile edges
        fits = [(j, False) for j, s in enumerate(avail) if shape and s and s[0 if len(s) == 1 else -2] == shape[-1]]
        fits += [(j, True) for j, s in enumerate(avail) if shape and len(s) >= 2 and s[-1] == shape[-1]]
        return draw(st.sampled_from(fits)) if fits else None
    if op == "pow":
        return draw(st.integers(0, len(avail) - 1))
    if op == "min":
        return tuple(sorted(draw(st.sets(st.integers(0, len(shape) - 1), min_size=1)))) if shape else None
    if op == "int_pow":  # (0 too: x ** 0 is all ones, but still on x's device)
        return draw(st.integers(0, 3))
    if op == "clip":
        return draw(st.sampled_from([(-0.5, 0.5), (0, None), (None, 1)]))
    return 0  # abs


def apply(op: str, x: Tensor, arg: object, vals: list[Tensor]) -> Tensor:
    if op in WIDE_OPS:
        return _apply_wide(op, x, arg, vals)
    if op == "neg":
        return -x
    if op == "exp_tanh":
        return x.tanh().exp()
    if op == "log1p_abs":
        return (x.abs() + 1).log()
    if op == "sqrt_abs":
        return (x.abs() + 0.5).sqrt()
    if op in ("sin", "cos", "tanh", "relu", "sigmoid"):
        return getattr(x, op)()
    if op == "recip":
        return 1.0 / (x.abs() + 1)
    if op in BINARY:
        y = vals[arg]
        if op == "add":
            return x + y
        if op == "sub":
            return x - y
        if op == "mul":
            return x * y
        if op == "maximum":
            return x.maximum(y)
        if op == "minimum":
            return x.minimum(y)
        if op == "where_gt":
            return pg.where(x > y, x, y * 0.5)
        return x / (y.abs() + 1)
    if op in ("sum", "max", "mean"):
        axes, keep = arg
        return getattr(x, op)(axis=axes, keepdims=keep)
    if op == "permute":
        return x.permute(*arg) if arg else x
    if op == "reshape":
        return x.reshape(*arg)
    if op == "expand":
        return x.expand(*arg)
    if op in ("slice", "flip"):
        ax, start, stop, step = arg
        idx = [slice(None)] * len(x.shape)
        idx[ax] = slice(start, stop, step)
        return x[tuple(idx)]
    if op == "matmul":
        return x @ x.T if arg else x.T @ x
    raise AssertionError(op)


def _apply_wide(op: str, x: Tensor, arg: object, vals: list[Tensor]) -> Tensor:
    if op == "cast":
        if x.dtype.kind == "f" and arg not in ("float32", "bool"):  # bounded first: float -> int out of range is UB
            x = (x.tanh() * 6).abs() if arg == "uint8" else x.tanh() * 6
        return x.cast(arg)
    if op == "cmp":
        j, how = arg
        y = vals[j]
        return {"lt": x < y, "le": x <= y, "eq": x == y, "ne": x != y}[how]
    if op == "argmax":
        return x.argmax(axis=arg)
    if op == "softmax":
        return x.softmax(axis=arg)
    if op == "dropout":
        return x.dropout(arg)
    if op == "matmul2":
        j, swap = arg
        return x @ (vals[j].transpose() if swap else vals[j])
    if op == "int_pow":
        return x ** int(arg) if x.dtype.kind in "iu" else x * x * x
    if op == "clip":
        return x.clip(*arg)
    if op == "pow":  # a positive base, a bounded exponent
        return (x.abs() + 0.5) ** vals[arg].tanh()
    if op == "min":
        return x.min(axis=arg)
    return x.abs()


def _inputs(recipe: dict, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for s, dt in zip(recipe["shapes"], recipe.get("dtypes", ["float32"] * len(recipe["shapes"])), strict=True):
        if dt == "float32":
            out.append(rng.standard_normal(s).astype(np.float32))
        elif dt == "bool":
            out.append(rng.random(s) < 0.5)
        else:
            out.append(rng.integers(0 if dt == "uint8" else -5, 6, s).astype(dt))
    return out


def replay(recipe: dict, eager: bool, device: str = "cpu") -> list[Tensor]:
    """Build the graph, weight the last n_out values randomly, differentiate; return values and gradients
    (of the float inputs; integer and bool ones have none)."""
    rng = np.random.default_rng(recipe["seed"])
    arrays = _inputs(recipe, rng)
    if "dtypes" in recipe:
        pg.manual_seed(recipe["seed"])  # dropout's masks: the same in both replays
    with pg.eager(eager), np.errstate(all="ignore"):
        ins = [Tensor(a, requires_grad=a.dtype.kind == "f", device=device) for a in arrays]
        vals = list(ins)
        for op, i, arg in recipe["steps"]:
            vals.append(apply(op, vals[i], arg, vals))
        outs = vals[-recipe["n_out"]:]
        total = None
        for o in outs:
            w = Tensor(rng.standard_normal(o.shape).astype(np.float32), device=device)
            term = (o * w).sum()
            total = term if total is None else total + term
        wrt = [t for t in ins if t.dtype.kind == "f"]
        if total.requires_grad:
            total.backward()
        return outs + [t.grad if t.grad is not None else pg.zeros(*t.shape, device=device) for t in wrt]


@settings(max_examples=max(1, -(-GRAPHS // PER_EXAMPLE)), suppress_health_check=list(HealthCheck), deadline=None)
@given(st.lists(recipes(), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
def test_random_graphs_compiled_match_eager(monkeypatch_env, batch) -> None:
    lazy = [replay(r, eager=False) for r in batch]
    before = cache.cache_stats()
    pg.realize(*[t for ts in lazy for t in ts])  # every graph of the example in one program
    after = cache.cache_stats()
    assert after["hits"] + after["misses"] == before["hits"] + before["misses"] + 1
    for recipe, got in zip(batch, lazy, strict=True):
        want = replay(recipe, eager=True)
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=2e-4, atol=2e-5,
                                       err_msg=f"value {k} of {recipe}")
        CHECKED["graphs"] += 1


@settings(max_examples=int(os.environ.get("PICOGRAD_PARALLEL_EXAMPLES", "6")), suppress_health_check=list(HealthCheck),
          deadline=None)
@given(st.lists(recipes(), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
def test_random_graphs_through_parallel_kernels(monkeypatch_env, batch) -> None:
    """The same check with every kernel of over 16 elements rendered as a parallel (prange) kernel, so the
    sliced buffers and blocked parallel reductions of large shapes are exercised on small ones."""
    from picograd.codegen import cpu

    old, saved = cpu.PARALLEL_MIN, dict(cache._programs)
    cpu.PARALLEL_MIN = 16
    cache._programs.clear()  # the memory cache is keyed by graph, not by this setting
    try:
        lazy = [replay(r, eager=False) for r in batch]
        pg.realize(*[t for ts in lazy for t in ts])
    finally:
        cpu.PARALLEL_MIN = old
        cache._programs.clear()
        cache._programs.update(saved)
    for recipe, got in zip(batch, lazy, strict=True):
        want = replay(recipe, eager=True)
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=2e-4, atol=2e-5, err_msg=f"value {k} of {recipe}")


def test_enough_random_graphs_were_checked() -> None:
    if CHECKED["graphs"] == 0:
        import pytest

        pytest.skip("run together with test_random_graphs_compiled_match_eager")
    assert CHECKED["graphs"] >= GRAPHS


import pytest  # noqa: E402


@pytest.fixture
def monkeypatch_env():
    """The cpu backend for the whole example (hypothesis reuses function-scoped fixtures across examples)."""
    old = os.environ.get("PICOGRAD_BACKEND")
    os.environ["PICOGRAD_BACKEND"] = "cpu"
    yield
    if old is None:
        os.environ.pop("PICOGRAD_BACKEND", None)
    else:
        os.environ["PICOGRAD_BACKEND"] = old
