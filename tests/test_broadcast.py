"""Broadcasting, property-based: for every binary op and hypothesis-generated broadcastable shape pairs
(scalars and size-1 axes on either side), the forward result matches numpy's broadcasting and each operand's
gradient has that operand's shape and equals the finite-difference one (float64)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes
from optable import Input, OpRow, finite_differences, make_inputs, run_row

import picograd as pg

pytestmark = pytest.mark.usefixtures("reference_backend")

# name -> (picograd fn, numpy reference, value domain). max/min use the tie-free "distinct" grid.
BINARY = {
    "add": (lambda a, b: a + b, np.add, "real"),
    "sub": (lambda a, b: a - b, np.subtract, "real"),
    "mul": (lambda a, b: a * b, np.multiply, "real"),
    "div": (lambda a, b: a / b, np.divide, "nonzero"),
    "pow": (lambda a, b: a**b, np.power, "positive"),
    "maximum": (lambda a, b: a.maximum(b), np.maximum, "distinct"),
    "minimum": (lambda a, b: a.minimum(b), np.minimum, "distinct"),
}
COMPARE = {
    "lt": (lambda a, b: a < b, np.less),
    "le": (lambda a, b: a <= b, np.less_equal),
    "gt": (lambda a, b: a > b, np.greater),
    "ge": (lambda a, b: a >= b, np.greater_equal),
    "eq": (lambda a, b: a == b, np.equal),
    "ne": (lambda a, b: a != b, np.not_equal),
}
SHAPE_PAIRS = mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=3)
SETTINGS = settings(max_examples=20, deadline=None)


@pytest.mark.parametrize("name", sorted(BINARY))
@SETTINGS
@given(shapes=SHAPE_PAIRS, seed=st.integers(0, 2**16))
def test_binary_broadcast_gradients(name: str, shapes, seed: int) -> None:
    fn, ref, domain = BINARY[name]
    (sa, sb), out_shape = shapes.input_shapes, shapes.result_shape
    row = OpRow(name, fn, (Input(sa, domain), Input(sb, domain)))
    arrays = make_inputs(row, seed=seed, dtype=np.float64)
    out, grads = run_row(row, arrays)
    assert out.shape == out_shape and out.dtype == np.float64
    np.testing.assert_allclose(out, ref(*arrays), rtol=1e-12)
    numeric = finite_differences(row, arrays)
    for a, g, fd in zip(arrays, grads, numeric, strict=True):
        assert g.shape == a.shape, f"{name}{sa, sb}: gradient shape {g.shape} for an operand of shape {a.shape}"
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6, err_msg=f"{name} {sa} {sb}")


@pytest.mark.parametrize("name", sorted(BINARY))
@SETTINGS
@given(shapes=mutually_broadcastable_shapes(num_shapes=1, min_dims=0, max_dims=3, max_side=3),
       scalar=st.sampled_from([0.2, 1.7]), left=st.booleans())
def test_python_scalar_either_side(name: str, shapes, scalar: float, left: bool) -> None:
    fn, ref, domain = BINARY[name]
    left = left and name not in ("maximum", "minimum")  # methods: no Python scalar on their left
    (sa,) = shapes.input_shapes
    row = OpRow(name, (lambda a: fn(scalar, a)) if left else (lambda a: fn(a, scalar)), (Input(sa, domain),))
    arrays = make_inputs(row, seed=3, dtype=np.float64)
    out, (grad,) = run_row(row, arrays)
    expect = ref(scalar, arrays[0]) if left else ref(arrays[0], scalar)
    assert out.shape == sa and out.dtype == np.float64, f"{name}: {out.dtype}{out.shape}"  # scalars adopt the dtype
    np.testing.assert_allclose(out, expect, rtol=1e-12)
    assert grad.shape == sa
    np.testing.assert_allclose(grad, finite_differences(row, arrays)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(COMPARE))
@settings(max_examples=15, deadline=None)
@given(shapes=SHAPE_PAIRS, seed=st.integers(0, 2**16))
def test_compare_broadcast(name: str, shapes, seed: int) -> None:
    fn, ref = COMPARE[name]
    (sa, sb) = shapes.input_shapes
    row = OpRow(name, fn, (Input(sa, "small_int"), Input(sb, "small_int")))
    arrays = make_inputs(row, seed=seed)
    out, _ = run_row(row, arrays, grad=False)
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, ref(*arrays))


@settings(max_examples=20, deadline=None)
@given(shapes=mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, max_side=3),
       seed=st.integers(0, 2**16))
def test_where_broadcast_gradients(shapes, seed: int) -> None:
    sc, sa, sb = shapes.input_shapes
    row = OpRow("where", lambda c, a, b: pg.where(c, a, b), (Input(sc, "bool"), Input(sa), Input(sb)))
    arrays = make_inputs(row, seed=seed, dtype=np.float64)
    out, grads = run_row(row, arrays)
    np.testing.assert_array_equal(out, np.where(*arrays))
    for a, g, fd in zip(arrays[1:], grads, finite_differences(row, arrays), strict=True):
        assert g.shape == a.shape
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(batch=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3),
       mkn=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)), seed=st.integers(0, 2**16))
def test_matmul_broadcast_batch_gradients(batch, mkn, seed: int) -> None:
    (ba, bb), m, k, n = batch.input_shapes, *mkn
    row = OpRow("matmul", lambda a, b: a @ b, (Input(ba + (m, k)), Input(bb + (k, n))))
    arrays = make_inputs(row, seed=seed, dtype=np.float64)
    out, grads = run_row(row, arrays)
    np.testing.assert_allclose(out, np.matmul(*arrays), rtol=1e-12, atol=1e-12)
    for a, g, fd in zip(arrays, grads, finite_differences(row, arrays), strict=True):
        assert g.shape == a.shape
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6)
