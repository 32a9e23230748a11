"""The IR: hash-consing, structural keys (inputs numbered by position), toposort and build-time checks."""

from __future__ import annotations

import numpy as np
import pytest

import picograd as pg
from picograd import Tensor
from picograd.ir import build as B
from picograd.ir import ops
from picograd.ir.node import Buffer, buffer_node, structural_key, toposort

pytestmark = pytest.mark.usefixtures("reference_backend")

F32 = np.dtype(np.float32)


def data(*shape: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def expr(x: Tensor, w: Tensor) -> Tensor:
    return ((x @ w).relu() * 0.5 + 1.0).log_softmax(-1).sum()


# ---- hash-consing ---------------------------------------------------------------------------------
def test_same_expression_twice_is_the_same_node() -> None:
    x, w = Tensor(data(2, 3)), Tensor(data(3, 4))
    assert expr(x, w).node is expr(x, w).node
    assert (x.exp() + 1.0).node is (x.exp() + 1.0).node
    assert x[::-1, 1:].node is x[::-1, 1:].node


def test_different_expressions_are_different_nodes() -> None:
    x = Tensor(data(2, 3))
    assert (x + 1.0).node is not (x + 2.0).node
    assert x.exp().node is not x.log().node
    assert x.sum(0).node is not x.sum(1).node
    assert Tensor(data(2, 3)).node is not x.node  # buffers are distinct even with equal data
    assert B.const(1, np.dtype(np.int64)) is not B.const(1.0, F32)


def test_make_dedups_leaves_and_movement() -> None:
    assert B.const(2.0, F32) is B.const(2.0, F32)
    assert B.iota((2, 3), 1, np.dtype(np.int64)) is B.iota((2, 3), 1, np.dtype(np.int64))
    x = Tensor(data(2, 3)).node
    assert B.reshape(B.reshape(x, (3, 2)), (6,)) is B.reshape(x, (6,))  # reshape of reshape is one reshape
    assert B.reshape(B.reshape(x, (6,)), (2, 3)) is x
    assert B.permute(x, (0, 1)) is x and B.expand(x, (2, 3)) is x and B.slice_(x, ((0, 2, 1), (0, 3, 1))) is x


def test_buffer_node_per_buffer() -> None:
    buf = Buffer(data(3))
    assert buffer_node(buf) is buffer_node(buf)
    n = buffer_node(buf)
    assert n.op == ops.BUFFER and n.buffer is buf and n.shape == (3,) and n.dtype == F32


def test_shared_subexpressions_are_computed_once() -> None:
    x = Tensor(data(2, 3))
    a = x.exp()
    b = x.exp() * x.exp() + x.exp()
    order = toposort([b.node])
    assert sum(n is a.node for n in order) == 1
    assert sum(n.op == "exp" for n in order) == 1


# ---- structural keys ------------------------------------------------------------------------------
def key_of(t: Tensor) -> tuple:
    return structural_key([t.node])[0]


def test_key_ignores_data_and_numbers_inputs_by_position() -> None:
    x1, w1 = Tensor(data(2, 3, seed=1)), Tensor(data(3, 4, seed=2))
    x2, w2 = Tensor(data(2, 3, seed=3)), Tensor(data(3, 4, seed=4))
    (k1, in1), (k2, in2) = structural_key([expr(x1, w1).node]), structural_key([expr(x2, w2).node])
    assert k1 == k2
    assert [n.buffer for n in in1] == [x1.node.buffer, w1.node.buffer]
    assert [n.buffer for n in in2] == [x2.node.buffer, w2.node.buffer]
    hash(k1)  # usable as a dict key


def test_key_changes_with_shape_dtype_op_constant_and_wiring() -> None:
    x, w = Tensor(data(2, 3)), Tensor(data(3, 4))
    base = key_of(expr(x, w))
    assert key_of(expr(Tensor(data(5, 3)), w)) != base  # another shape
    x64, w64 = Tensor(data(2, 3), dtype=np.float64), Tensor(data(3, 4), dtype=np.float64)
    assert key_of(expr(x64, w64)) != base  # another dtype
    assert key_of(((x @ w).sigmoid() * 0.5 + 1.0).log_softmax(-1).sum()) != base  # another op
    assert key_of(((x @ w).relu() * 0.25 + 1.0).log_softmax(-1).sum()) != base  # another constant
    assert key_of((x @ w).log_softmax(0).sum()) != key_of((x @ w).log_softmax(1).sum())  # another arg
    a, b = Tensor(data(3, 3, seed=1)), Tensor(data(3, 3, seed=2))
    assert key_of(a @ b - b) != key_of(a @ b - a)  # same ops and inputs, other wiring
    assert key_of(a @ b - b) == key_of(b @ a - a)  # ... and the same wiring over swapped data


def test_key_of_multiple_roots_and_shared_input() -> None:
    x = Tensor(data(4))
    k_two, inputs = structural_key([x.exp().node, (x * 2.0).node])
    assert len(inputs) == 1
    y = Tensor(data(4, seed=9))
    assert structural_key([y.exp().node, (y * 2.0).node])[0] == k_two
    assert structural_key([(y * 2.0).node, y.exp().node])[0] != k_two  # output order matters
    z = Tensor(data(4, seed=10))
    assert structural_key([x.exp().node, (z * 2.0).node])[0] != k_two  # two inputs, not one


def test_training_step_key_is_stable_across_steps() -> None:
    """A step (forward, backward, SGD update) on new data and updated weights has the same key."""
    w = Tensor(data(3, 2, seed=5), requires_grad=True)
    keys = []
    for step in range(3):
        x = Tensor(data(4, 3, seed=step))
        loss = (x @ w).relu().sum()
        loss.backward()
        w.assign(w - w.grad * 0.1)
        keys.append(structural_key([loss.node, w.node])[0])
        pg.realize(loss)
        w.grad = None
    assert keys[0] == keys[1] == keys[2]


def test_key_unchanged_by_eager_use_of_the_same_constants() -> None:
    """Eager mode must not attach buffers to hash-consed constants that later lazy graphs share."""
    shape = (3, 7)  # a shape no other test uses, so the constants are fresh here
    k_before = key_of(Tensor(data(*shape)) * 3.25 + 0.125)
    with pg.eager():
        kept = Tensor(data(*shape)) * 3.25 + 0.125  # alive, so its constants stay in the node table
    k_after = key_of(Tensor(data(*shape)) * 3.25 + 0.125)
    assert k_after == k_before
    assert B.const(3.25, F32).buffer is None
    np.testing.assert_allclose(kept.numpy(), kept.node.buffer.data)


def test_realized_intermediate_becomes_an_input() -> None:
    x = Tensor(data(2, 3))
    h = x.exp()
    k_lazy = key_of(h.sum())
    h.realize()
    k, inputs = structural_key([h.sum().node])
    assert k != k_lazy and inputs == [h.node]


# ---- toposort -------------------------------------------------------------------------------------
def test_toposort_orders_sources_first_and_stops_at_realized() -> None:
    x = Tensor(data(2, 3))
    y = (x.exp() + x.sin()).sum()
    order = toposort([y.node])
    pos = {id(n): i for i, n in enumerate(order)}
    assert len(pos) == len(order)
    for n in order:
        assert all(pos[id(s)] < pos[id(n)] for s in n.srcs)
    e = x.exp().realize()
    order2 = toposort([(e + 1.0).node], stop_at_realized=True)
    assert x.node not in order2 and e.node in order2


def test_toposort_deep_chain_no_recursion() -> None:
    x = Tensor(data(3))
    y = x
    for _ in range(20_000):
        y = -y
    order = toposort([y.node])
    assert len(order) == 20_001 and order[0] is x.node and order[-1] is y.node
    np.testing.assert_allclose(y.numpy(), x.numpy())


# ---- checked constructors -------------------------------------------------------------------------
def test_build_checks() -> None:
    x = Tensor(data(2, 3)).node
    with pytest.raises(ValueError, match=r"add: shapes \(2, 3\) and \(3,\) differ"):
        B.binary("add", x, Tensor(data(3)).node)
    with pytest.raises(TypeError, match="mul: dtypes float32 and float64 differ"):
        B.binary("mul", x, Tensor(data(2, 3), dtype=np.float64).node)
    with pytest.raises(TypeError, match="where: condition must be bool"):
        B.where(x, x, x)
    with pytest.raises(TypeError, match="exp: expected a floating-point tensor"):
        B.unary("exp", Tensor(np.arange(3)).node)
    with pytest.raises(ValueError, match=r"expand: cannot expand shape \(2, 3\) to \(4, 3\)"):
        B.expand(x, (4, 3))
    with pytest.raises(ValueError, match="permute"):
        B.permute(x, (0, 0))
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(2, 3\) are not aligned"):
        B.matmul(x, x)
    with pytest.raises(TypeError, match="rand: seed must be a uint32 scalar"):
        B.rand(x, (2,), F32)
    with pytest.raises(ValueError, match="reduce_max: cannot take the max over an empty axis"):
        B.reduce("reduce_max", Tensor(np.zeros((0, 2), np.float32)).node, (0,))


def test_node_metadata() -> None:
    x = Tensor(data(2, 3))
    with pg.eager(False):
        y = x.sum(axis=1, keepdims=True)
    assert y.node.op == "reduce_sum" and y.node.arg == (1,) and y.node.shape == (2, 1) and y.node.dtype == F32
    assert y.node.tag == "forward" and y.node.device == "cpu"
    c = B.const(1.0, F32)
    assert c.device is None and c.shape == () and c.arg == 1.0
