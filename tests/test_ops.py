"""Every row of the op table: lazy (the default backend, forward and backward realized as one program) equals
eager (numpy, op by op) in float32, and outputs keep the promised dtypes (float32 by default). The property
tests of indexing and reductions use the numpy interpreter (each example is a new graph structure)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optable import LOSS_NAMES, ROWS, SKIPPED, OpRow, make_inputs, run_row

import picograd as pg
from picograd import Tensor

PARAMS = [pytest.param(r, id=r.name) for r in ROWS] + [
    pytest.param(None, id=n, marks=pytest.mark.skip(reason=why)) for n, why in SKIPPED.items()
]


def assert_same(actual: np.ndarray, expected: np.ndarray, row: OpRow, what: str) -> None:
    assert actual.shape == expected.shape, f"{row.name} {what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{row.name} {what}: dtype {actual.dtype} != {expected.dtype}"
    if actual.dtype.kind == "f":
        np.testing.assert_allclose(actual, expected, rtol=row.rtol, atol=row.atol, err_msg=f"{row.name} {what}")
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=f"{row.name} {what}")


@pytest.mark.parametrize("row", PARAMS)
def test_lazy_matches_eager(row: OpRow) -> None:
    arrays = make_inputs(row)
    lazy_out, lazy_grads = run_row(row, arrays, mode="lazy")
    eager_out, eager_grads = run_row(row, arrays, mode="eager")
    assert_same(lazy_out, eager_out, row, "output")
    assert len(lazy_grads) == len(eager_grads)
    for i, (gl, ge) in enumerate(zip(lazy_grads, eager_grads, strict=True)):
        assert_same(gl, ge, row, f"grad of input {row.grad_inputs[i]}")


@pytest.mark.parametrize("row", PARAMS)
def test_dtypes_and_grad_shapes(row: OpRow) -> None:
    arrays = make_inputs(row)
    out, grads = run_row(row, arrays)
    kinds = {a.dtype.kind for a in arrays}
    if out.dtype.kind == "f":
        # float32 end to end: no float64 leaks from Python scalars or constants
        assert out.dtype == np.float32, f"{row.name}: output {out.dtype}"
    elif "f" not in kinds:
        assert out.dtype.kind in "iub", f"{row.name}: integer/bool inputs gave {out.dtype}"
    for i, g in zip(row.grad_inputs, grads, strict=True):
        assert g.shape == arrays[i].shape and g.dtype == arrays[i].dtype, f"{row.name}: grad {i} {g.dtype}{g.shape}"
        assert np.all(np.isfinite(g)), f"{row.name}: non-finite gradient for input {i}"


def test_table_covers_the_promised_ops() -> None:
    names = {r.name for r in ROWS} | set(SKIPPED)
    promised = [
        "add", "sub", "mul", "div", "pow", "neg", "exp", "log", "sqrt", "sin", "cos", "relu", "leaky_relu",
        "sigmoid", "tanh", "softmax", "log_softmax", "dropout", "dot_1d", "matmul_2d", "matmul_batched",
        "matmul_bcast_batch", "sum", "mean", "max", "min", "reshape", "transpose", "permute", "expand",
        "flatten", "squeeze", "unsqueeze", "getitem_int", "getitem_neg_step", "getitem_none", "getitem_ellipsis",
        "lt", "le", "gt", "ge", "eq", "ne", "where", "maximum", "minimum", "clip", "abs", "argmax", *LOSS_NAMES,
    ]
    assert not [p for p in promised if p not in names]
    assert {r.name for r in ROWS if "scalar_left" in r.name}, "scalars on the left side are covered"


def test_dropout_row_is_random_but_reproducible() -> None:
    from optable import ROWS_BY_NAME

    row = ROWS_BY_NAME["dropout"]
    arrays = make_inputs(row)
    out1, _ = run_row(row, arrays)
    out2, _ = run_row(row, arrays)  # run_row reseeds: same mask
    np.testing.assert_array_equal(out1, out2)
    dropped = out1 == 0
    assert dropped.any() and not dropped.all()
    np.testing.assert_allclose(out1[~dropped], arrays[0][~dropped] / 0.7, rtol=1e-6)


@st.composite
def basic_index(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple]:
    """A shape and a basic index for it: ints (negative too), slices with any step, None and one Ellipsis."""
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    parts: list = []
    for d in shape:
        kind = draw(st.sampled_from(["int", "slice", "slice", "full"]))
        if kind == "int":
            parts.append(draw(st.integers(-d, d - 1)))
        elif kind == "slice":
            bound = st.none() | st.integers(-d - 2, d + 2)
            step = draw(st.none() | st.integers(-3, 3).filter(bool))
            parts.append(slice(draw(bound), draw(bound), step))
        else:
            parts.append(slice(None))
    for _ in range(draw(st.integers(0, 2))):
        parts.insert(draw(st.integers(0, len(parts))), None)
    if draw(st.booleans()):  # replace a run of full slices (possibly empty) by an Ellipsis
        k = draw(st.integers(0, len(parts)))
        j = k
        while j < len(parts) and parts[j] == slice(None):
            j += 1
        parts[k:j] = [Ellipsis]
    return shape, tuple(parts)


@pytest.mark.usefixtures("reference_backend")
@settings(max_examples=60, deadline=None)
@given(case=basic_index(), lazy=st.booleans())
def test_basic_indexing_matches_numpy(case: tuple[tuple[int, ...], tuple], lazy: bool) -> None:
    shape, idx = case
    a = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    expect = a[idx]
    w = np.random.default_rng(0).standard_normal(expect.shape).astype(np.float32)
    with pg.eager(not lazy):
        x = Tensor(a)
        y = x[idx]
        assert y.shape == expect.shape
        (y * Tensor(w)).sum().backward()
        np.testing.assert_array_equal(y.numpy(), expect)
        grad = np.zeros_like(a)
        grad[idx] = w  # basic indexing never repeats an element
        np.testing.assert_array_equal(x.grad.numpy(), grad)


@pytest.mark.usefixtures("reference_backend")
@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), data=st.data())
def test_reductions_match_numpy(shape: tuple[int, ...], data: st.DataObject) -> None:
    axes = data.draw(st.none() | st.lists(st.integers(0, max(len(shape) - 1, 0)), unique=True, max_size=len(shape))
                     .map(tuple), label="axes")
    keep = data.draw(st.booleans(), label="keepdims")
    op = data.draw(st.sampled_from(["sum", "mean", "max", "min"]), label="op")
    n = int(np.prod(shape))
    a = (np.random.default_rng(n).permutation(n).reshape(shape) * 0.5 - 1).astype(np.float32)  # no ties
    ref = {"sum": np.sum, "mean": np.mean, "max": np.amax, "min": np.amin}[op]
    expect = ref(a, axis=axes, keepdims=keep)
    x = Tensor(a)
    y = getattr(x, op)(axis=axes, keepdims=keep)
    assert y.shape == np.shape(expect) and y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), expect, rtol=1e-6)
    y.sum().backward()
    assert x.grad.shape == shape
    if op in ("max", "min"):  # one-hot at each extreme: the grads sum to the number of outputs
        assert x.grad.numpy().sum() == np.size(expect)
