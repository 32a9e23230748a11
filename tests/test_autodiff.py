"""Autodiff: every op-table row against central finite differences in float64, the seed example,
grad of grad, gradient accumulation, and deep/diamond graphs that stay linear and non-recursive."""

from __future__ import annotations

import numpy as np
import pytest
from optable import ROWS, SKIPPED, OpRow, finite_differences, make_inputs, run_row

import picograd as pg
from picograd import Tensor
from picograd.ir.autodiff import expand_grads
from picograd.ir.node import toposort

pytestmark = pytest.mark.usefixtures("reference_backend")

GRAD_ROWS = [pytest.param(r, id=r.name) for r in ROWS if r.grad_inputs and r.fd] + [
    pytest.param(None, id=n, marks=pytest.mark.skip(reason=why)) for n, why in SKIPPED.items()
]


@pytest.mark.parametrize("row", GRAD_ROWS)
def test_gradient_matches_finite_differences(row: OpRow) -> None:
    arrays = make_inputs(row, dtype=np.float64)
    out, grads = run_row(row, arrays)
    if out.dtype.kind != "f":  # a comparison or an index: no gradient to check, and backward() refuses it at once
        with pytest.raises(TypeError, match="only float tensors have gradients"):
            row.fn(*[Tensor(a, dtype=a.dtype) for a in arrays]).sum().backward()
        return
    assert out.dtype == np.float64, f"{row.name}: float64 inputs gave a {out.dtype} output"
    numeric = finite_differences(row, arrays)
    for i, g, fd in zip(row.grad_inputs, grads, numeric, strict=True):
        assert g.shape == arrays[i].shape
        np.testing.assert_allclose(g, fd, rtol=row.fd_rtol, atol=row.fd_atol, err_msg=f"{row.name}: input {i}")


def test_seed_example() -> None:
    x = Tensor.eye(3)
    y = Tensor([[2.0, 0, -2.0]])
    z = y.dot(x).sum()
    z.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[2, 2, 2], [0, 0, 0], [-2, -2, -2]])
    np.testing.assert_array_equal(y.grad.numpy(), [[1, 1, 1]])
    assert x.grad.dtype == np.float32 and y.grad.dtype == np.float32


def test_seed_example_eager() -> None:
    with pg.eager():
        x = Tensor.eye(3)
        y = Tensor([[2.0, 0, -2.0]])
        y.dot(x).sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), [[2, 2, 2], [0, 0, 0], [-2, -2, -2]])
        np.testing.assert_array_equal(y.grad.numpy(), [[1, 1, 1]])


def test_backward_accumulates_and_with_seed_gradient() -> None:
    a = np.array([1.0, -2.0, 3.0], np.float32)
    x = Tensor(a)
    (x * x).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * a + 3)
    x2 = Tensor(a)
    y = x2.sin()
    g = np.array([0.5, 1.0, -1.0], np.float32)
    y.backward(Tensor(g))
    np.testing.assert_allclose(x2.grad.numpy(), g * np.cos(a), rtol=1e-6)


def test_detach_blocks_the_gradient() -> None:
    a, b = np.array([1.0, 2.0], np.float32), np.array([3.0, -4.0], np.float32)
    x, y = Tensor(a), Tensor(b)
    (x.detach() * y + x * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2 * a)  # not 2a + b
    np.testing.assert_array_equal(y.grad.numpy(), a)


def test_identity_views_keep_the_gradient_on_the_leaf() -> None:
    """Ops that return their input's node unchanged must not take the leaf away from the input."""
    a = np.array([[1.0, 2.0]], np.float32)
    for view in (lambda x: x.reshape(1, 2), lambda x: x[:], lambda x: x.sum(axis=()), lambda x: x.permute(0, 1),
                 lambda x: x.expand(1, 2), lambda x: x.flatten(0, 0)):
        x = Tensor(a, requires_grad=True)
        y = view(x)
        (y * 3.0).sum().backward()
        assert x.grad is not None, "the gradient went to the view"
        np.testing.assert_array_equal(x.grad.numpy(), np.full((1, 2), 3.0))
        assert y.grad is None or y is x


def test_requires_grad_false_gets_no_gradient() -> None:
    x = Tensor([1.0, 2.0], requires_grad=False)
    w = Tensor([3.0, 4.0])
    (x * w).sum().backward()
    assert x.grad is None
    np.testing.assert_array_equal(w.grad.numpy(), [1.0, 2.0])


def test_gradient_flows_through_realized_intermediates() -> None:
    a = np.array([0.5, -1.0], np.float32)
    x = Tensor(a)
    h = x.exp().realize()  # h now holds a buffer; its history must still be differentiated
    (h * h).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.exp(2 * a), rtol=1e-6)


def test_backward_twice_on_one_graph_accumulates() -> None:
    x = Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    loss = (x * x).sum()
    loss.backward()
    assert loss.item() == 5.0
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])
    loss.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [4.0, 8.0])


def test_grad_of_grad_eager() -> None:
    with pg.eager():
        f = lambda t: (t**3).sum()  # noqa: E731
        d2 = pg.grad(lambda t: pg.grad(f)(t).sum())(Tensor(np.array([1.0, 2.0], np.float32)))
        assert d2.node.buffer is not None
        np.testing.assert_allclose(d2.numpy(), [6.0, 12.0])


def test_grad_of_grad() -> None:
    f = lambda x: (x**3).sum()  # noqa: E731
    x = np.array([1.0, -2.0, 0.5], np.float32)
    df = pg.grad(f)
    np.testing.assert_allclose(df(Tensor(x)).numpy(), 3 * x**2, rtol=1e-6)
    d2f = pg.grad(lambda t: df(t).sum())
    np.testing.assert_allclose(d2f(Tensor(x)).numpy(), 6 * x, rtol=1e-6)
    d3f = pg.grad(lambda t: d2f(t).sum())
    np.testing.assert_allclose(d3f(Tensor(x)).numpy(), np.full(3, 6.0), rtol=1e-6)


def test_grad_of_grad_scalar_and_argnums() -> None:
    # d/dx (d/dx sin(x) * y) = -sin(x) * y ; d/dy of it = cos(x)
    f = lambda x, y: x.sin() * y  # noqa: E731
    x, y = Tensor(0.7), Tensor(1.5)
    gx, gy = pg.grad(f, argnums=(0, 1))(x, y)
    np.testing.assert_allclose(gx.numpy(), np.cos(0.7) * 1.5, rtol=1e-6)
    np.testing.assert_allclose(gy.numpy(), np.sin(0.7), rtol=1e-6)
    d2 = pg.grad(pg.grad(f))(x, y)
    np.testing.assert_allclose(d2.numpy(), -np.sin(0.7) * 1.5, rtol=1e-6)
    mixed = pg.grad(pg.grad(f), argnums=1)(x, y)
    np.testing.assert_allclose(mixed.numpy(), np.cos(0.7), rtol=1e-6)


def test_grad_of_grad_through_backward() -> None:
    """backward() on a loss built from a gradient (e.g. a gradient penalty) differentiates through it."""
    a = np.array([0.3, -1.2], np.float32)
    x = Tensor(a)
    g = pg.grad(lambda t: (t.exp() * t).sum())(x)  # (1 + x) e^x
    (g * g).sum().backward()  # d/dx [(1+x)^2 e^{2x}] = 2(1+x)e^{2x}(2+x)
    np.testing.assert_allclose(x.grad.numpy(), 2 * (1 + a) * np.exp(2 * a) * (2 + a), rtol=1e-5)


def test_gradient_of_unused_input_is_zero() -> None:
    x, y = Tensor([1.0, 2.0]), Tensor([3.0, 4.0])
    gy = pg.grad(lambda a, b: a.sum(), argnums=1)(x, y)
    np.testing.assert_array_equal(gy.numpy(), [0.0, 0.0])


def _gradient_graph_size(root: Tensor, leaf: Tensor) -> int:
    root.backward()
    (expanded,) = expand_grads([leaf.grad.node])
    return len(toposort([expanded]))


def test_long_chain_backward_is_iterative_and_linear() -> None:
    n = 10_000
    x = Tensor(np.array([0.5, -0.25], np.float32))
    y = x
    for i in range(n):
        y = y * 1.0001 if i % 2 else y + 0.001
    loss = y.sum()
    forward = len(toposort([loss.node]))
    assert forward >= n
    size = _gradient_graph_size(loss, x)
    assert size <= 4 * forward, f"gradient graph has {size} nodes for a {forward}-node forward graph"
    np.testing.assert_allclose(x.grad.numpy(), np.full(2, 1.0001 ** (n // 2)), rtol=1e-3)
    assert np.isfinite(loss.item())


def test_diamond_backward_is_linear() -> None:
    levels = 40
    a = np.array([0.3, 0.9], np.float64)
    x = Tensor(a, dtype=np.float64)
    y = x
    for _ in range(levels):
        y = y.sin() * y.cos()  # both branches reuse y: 2**40 paths, 40 levels
    loss = y.sum()
    forward = len(toposort([loss.node]))
    assert forward < 10 * levels
    size = _gradient_graph_size(loss, x)
    assert size <= 4 * forward, f"gradient graph has {size} nodes for a {forward}-node forward graph"
    # y_{k+1} = sin(2 y_k) / 2, so dy_{k+1}/dy_k = cos(2 y_k): compare with the product of the chain
    expect, v = np.ones_like(a), a.copy()
    for _ in range(levels):
        expect *= np.cos(2 * v)
        v = np.sin(2 * v) / 2
    np.testing.assert_allclose(x.grad.numpy(), expect, rtol=1e-9)
    np.testing.assert_allclose(loss.item(), v.sum(), rtol=1e-9)
