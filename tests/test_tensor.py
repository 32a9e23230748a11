"""The Tensor front end: constructors, seeding, axis=/dim=, dropout, dtypes (float32 default, integers stay
integer), eager mode (context manager and PICOGRAD_EAGER=1), assign and the one-program realize."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import picograd as pg
from picograd import Tensor
from picograd.realize import register_backend

pytestmark = pytest.mark.usefixtures("reference_backend")

F32 = np.dtype(np.float32)


# ---- constructors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["module", "static"])
def test_constructors(where: str) -> None:
    ns = pg if where == "module" else Tensor
    z, o = ns.zeros(2, 3), ns.ones((2, 3))
    assert z.shape == o.shape == (2, 3) and z.dtype == o.dtype == F32
    np.testing.assert_array_equal(z.numpy(), np.zeros((2, 3)))
    np.testing.assert_array_equal(o.numpy(), np.ones((2, 3)))
    f = ns.full((2, 2), 7.5)
    np.testing.assert_array_equal(f.numpy(), np.full((2, 2), 7.5, np.float32))
    assert ns.full(3, 2).shape == (3,) and ns.full(3, 2).dtype == F32
    np.testing.assert_array_equal(ns.eye(3).numpy(), np.eye(3))
    np.testing.assert_array_equal(ns.eye(2, 3).numpy(), np.eye(2, 3))
    a = ns.arange(5)
    assert a.dtype == np.int64
    np.testing.assert_array_equal(a.numpy(), np.arange(5))
    np.testing.assert_array_equal(ns.arange(1, 7, 2).numpy(), [1, 3, 5])
    fa = ns.arange(0, 1, 0.25)
    assert fa.dtype == F32
    np.testing.assert_array_equal(fa.numpy(), [0, 0.25, 0.5, 0.75])
    assert ns.arange(3, dtype=np.float32).dtype == F32
    r, n, u = ns.rand(50, 40), ns.randn(50, 40), ns.uniform(50, 40, low=-3.0, high=-2.0)
    assert r.dtype == n.dtype == u.dtype == F32 and r.shape == n.shape == u.shape == (50, 40)
    assert 0 <= r.numpy().min() and r.numpy().max() < 1
    assert -3 <= u.numpy().min() and u.numpy().max() < -2
    assert abs(n.numpy().mean()) < 0.1 and abs(n.numpy().std() - 1) < 0.1
    assert ns.zeros(2, dtype=np.float64).dtype == np.float64 and ns.ones(2, dtype=np.int32).dtype == np.int32
    assert ns.zeros(0, 3).shape == (0, 3)


@pytest.mark.parametrize("where", ["module", "static"])
def test_like_constructors(where: str) -> None:
    ns = pg if where == "module" else Tensor
    x = Tensor(np.ones((3, 2)), dtype=np.float64)
    for t in (ns.zeros_like(x), ns.ones_like(x), ns.full_like(x, 4.0), ns.rand_like(x), ns.randn_like(x),
              ns.uniform_like(x, low=5.0, high=6.0)):
        assert t.shape == (3, 2) and t.dtype == np.float64 and t.device == x.device
    np.testing.assert_array_equal(ns.full_like(x, 4.0).numpy(), np.full((3, 2), 4.0))
    np.testing.assert_array_equal(ns.zeros_like(x).numpy(), np.zeros((3, 2)))
    np.testing.assert_array_equal(ns.ones_like(x).numpy(), np.ones((3, 2)))
    assert (ns.uniform_like(x, low=5.0, high=6.0).numpy() >= 5).all()
    assert ns.zeros_like(x, dtype=np.float32).dtype == F32
    y = Tensor(np.arange(4))
    assert ns.zeros_like(y).dtype == np.int64


def test_requires_grad_flags() -> None:
    w = pg.randn(3, requires_grad=True)
    assert w.requires_grad
    assert not pg.zeros(3, requires_grad=False).requires_grad
    assert not Tensor(np.arange(3)).requires_grad  # integers are never differentiable
    assert not w.detach().requires_grad


def test_manual_seed_reproducibility() -> None:
    def draw() -> list[np.ndarray]:
        return [pg.rand(4, 3).numpy(), pg.randn(5).numpy(), pg.uniform(2, 2, low=-1.0, high=1.0).numpy(),
                pg.randn_like(pg.zeros(3)).numpy(), pg.ones(6).dropout(0.5).numpy()]

    pg.manual_seed(123)
    first = draw()
    pg.manual_seed(123)
    second = draw()
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    pg.manual_seed(124)
    third = draw()
    assert not np.array_equal(first[0], third[0]) and not np.array_equal(first[1], third[1])
    assert not np.array_equal(first[4], third[4])


# ---- dtypes ---------------------------------------------------------------------------------------
def test_float32_default() -> None:
    assert Tensor([1.0, 2.0]).dtype == F32
    assert Tensor(np.ones(3, np.float64)).dtype == F32
    assert Tensor(2.5).dtype == F32 and Tensor(2.5).shape == ()
    assert Tensor(np.ones(3), dtype=np.float64).dtype == np.float64  # explicit dtype wins
    x = Tensor([1.0, 2.0])
    exprs = [x * 0.5, 0.5 * x, x / 3, 2 / x, x + 1, x - np.float64(1.5), x**2, x**0.5, 2.0**x, x.mean(), x.sum(),
             x.softmax(), x.sigmoid(), x.tanh(), x.relu(), x.leaky_relu(), x.maximum(1), x.clip(0, 1),
             x.dropout(0.5), pg.where(x > 1, x, 0.0), np.float32(2.0) * x, np.float64(2.0) * x]
    for e in exprs:
        assert isinstance(e, Tensor) and e.dtype == F32 and e.numpy().dtype == F32, e.node
    x.requires_grad = True
    (x * 2.0).sum().backward()
    assert x.grad.dtype == F32 and x.grad.numpy().dtype == F32


def test_integer_labels_stay_integer() -> None:
    y = Tensor(np.array([0, 2, 1, 2]))
    assert y.dtype == np.int64 and not y.requires_grad
    assert Tensor(np.array([1, 2], np.uint8)).dtype == np.uint8
    assert Tensor(np.array([1, 2], np.int32)).dtype == np.int32
    assert Tensor([1, 2, 3]).dtype == np.int64
    assert (y + 1).dtype == np.int64 and (y * 2).dtype == np.int64 and (-y).dtype == np.int64
    np.testing.assert_array_equal((y + 1).numpy(), [1, 3, 2, 3])
    assert y.sum().dtype == np.int64 and y.sum().item() == 5 and isinstance(y.sum().item(), int)
    assert y.max().dtype == np.int64 and y.max().item() == 2
    logits = Tensor(np.array([[3.0, 1, 0], [0, 1, 5], [0, 2, 1], [1, 0, 0]]))
    pred = logits.argmax(-1)
    assert pred.dtype == np.int64
    np.testing.assert_array_equal(pred.numpy(), [0, 2, 1, 0])
    hits = pred == y
    assert hits.dtype == np.bool_
    assert hits.sum().dtype == np.int64 and hits.sum().item() == 3
    acc = hits.float().mean()
    assert acc.dtype == F32 and acc.item() == 0.75
    assert (y / 2).dtype == F32 and y.mean().dtype == F32 and (y * 0.5).dtype == F32
    assert (y + Tensor([0.5, 0.5, 0.5, 0.5])).dtype == F32
    for mixed in (y + np.full(4, 0.5), y + [0.5] * 4, np.full(4, 0.5) + y):  # float data is not truncated
        assert mixed.dtype == F32
        np.testing.assert_array_equal(mixed.numpy(), [0.5, 2.5, 1.5, 2.5])
    assert (Tensor([1.0, 2.0]) + np.ones(2)).dtype == F32  # float64 data meeting float32 takes float32
    assert Tensor(np.array([True, False])).dtype == np.bool_


# ---- axis= / dim= ---------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
def test_axis_and_dim_keywords(op: str) -> None:
    a = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    x = Tensor(a)
    ref = getattr(np, op if op in ("sum", "mean") else op.replace("max", "amax").replace("min", "amin"))
    for axis in (0, 1, -1, (0, 2), None):
        for keep in (False, True):
            exp = ref(a, axis=axis, keepdims=keep)
            by_axis = getattr(x, op)(axis=axis, keepdims=keep).numpy()
            by_dim = getattr(x, op)(dim=axis, keepdims=keep).numpy()
            positional = getattr(x, op)(axis, keep).numpy()
            for got in (by_axis, by_dim, positional):
                assert got.shape == np.shape(exp)
                np.testing.assert_allclose(got, exp, rtol=1e-6)


def test_axis_dim_single_axis_ops() -> None:
    a = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    x = Tensor(a)
    for op in ("softmax", "log_softmax", "argmax", "argmin"):
        f = getattr(x, op)
        np.testing.assert_array_equal(f(dim=0).numpy(), f(axis=0).numpy())
        np.testing.assert_array_equal(f(0).numpy(), f(axis=0).numpy())
        if op.startswith("soft") or op.startswith("log"):
            np.testing.assert_array_equal(f().numpy(), f(-1).numpy())  # the last axis by default
    np.testing.assert_array_equal(x.argmax(dim=0).numpy(), a.argmax(0))
    assert x.argmax().item() == a.argmax() and x.argmin().item() == a.argmin()  # no axis: the flat index, as numpy
    np.testing.assert_allclose(x.softmax(dim=0).numpy().sum(0), np.ones(4), rtol=1e-6)


def test_reductions_of_a_scalar() -> None:
    s = Tensor(3.0)
    for op in ("sum", "mean", "max", "min"):
        np.testing.assert_array_equal(getattr(s, op)().numpy(), 3.0)
        np.testing.assert_array_equal(getattr(s, op)(axis=0).numpy(), 3.0)


# ---- dropout --------------------------------------------------------------------------------------
def test_dropout_lazy_equals_eager_with_the_same_seed() -> None:
    a = np.random.default_rng(2).standard_normal((64, 33)).astype(np.float32)
    pg.manual_seed(7)
    lazy = Tensor(a).dropout(0.25).numpy()
    pg.manual_seed(7)
    with pg.eager():
        eager = Tensor(a).dropout(0.25).numpy()
    np.testing.assert_array_equal(lazy, eager)


def test_dropout_rate_and_scaling() -> None:
    n, p = 200_000, 0.3
    pg.manual_seed(11)
    out = pg.ones(n).dropout(p).numpy()
    kept = out != 0
    assert abs(kept.mean() - (1 - p)) < 0.01  # 5 sigma is 0.005
    np.testing.assert_allclose(out[kept], 1 / (1 - p), rtol=1e-6)
    assert abs(out.mean() - 1) < 0.02  # inverted dropout keeps the expectation


def test_dropout_fresh_mask_per_call_and_inference() -> None:
    x = pg.ones(1000)
    m1, m2 = x.dropout(0.5).numpy(), x.dropout(0.5).numpy()
    assert not np.array_equal(m1, m2)
    np.testing.assert_array_equal(x.dropout(0.5, training=False).numpy(), x.numpy())
    np.testing.assert_array_equal(x.dropout(0.0).numpy(), x.numpy())


def test_dropout_gradient_uses_the_same_mask() -> None:
    x = Tensor(np.ones(500, np.float32))
    y = x.dropout(0.4)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), y.numpy())  # d(mask * x / 0.6)/dx = mask / 0.6


# ---- eager mode -----------------------------------------------------------------------------------
def test_eager_context_evaluates_at_once() -> None:
    a = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
    assert not pg.is_eager()
    with pg.eager():
        assert pg.is_eager()
        x = Tensor(a)
        y = (x @ x).relu() + 1.0
        assert y.node.buffer is not None  # already computed
        with pg.eager(False):
            assert not pg.is_eager()
            z = y * 2.0
            assert z.node.buffer is None
        assert pg.is_eager()
    assert not pg.is_eager()
    lazy = ((Tensor(a) @ Tensor(a)).relu() + 1.0).numpy()
    np.testing.assert_array_equal(y.numpy(), lazy)
    np.testing.assert_array_equal(z.numpy(), 2 * lazy)


def test_eager_mode_restored_after_exception() -> None:
    with pytest.raises(ValueError):
        with pg.eager():
            Tensor([1.0, 2.0]) + Tensor([1.0, 2.0, 3.0])
    assert not pg.is_eager()


def test_eager_env_variable_in_subprocess() -> None:
    code = textwrap.dedent("""
        import numpy as np, picograd as pg
        x = pg.Tensor(np.array([1.0, 2.0, 3.0], np.float32), requires_grad=True)
        y = (x * x).sum()
        print(pg.is_eager(), y.node.buffer is not None, y.item())
        y.backward()
        print(x.grad.tolist())
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PICOGRAD_EAGER="1", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0] == "True True 14.0"
    assert lines[1] == "[2.0, 4.0, 6.0]"
    env["PICOGRAD_EAGER"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "False False 14.0"


# ---- assign and realize ---------------------------------------------------------------------------
@pytest.fixture
def counting_backend(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A backend that counts its calls (and computes with the numpy interpreter)."""
    interp = importlib.import_module("picograd.eager").evaluate  # the module: picograd.eager is the context
    calls: list[int] = []

    def backend(nodes):
        calls.append(len(nodes))
        return interp(nodes)

    register_backend("counting-test", backend)
    monkeypatch.setenv("PICOGRAD_BACKEND", "counting-test")
    return calls


def test_training_step_is_one_realize(counting_backend: list[int]) -> None:
    rng = np.random.default_rng(3)
    w = Tensor(rng.standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    b = Tensor(np.zeros(3, np.float32), requires_grad=True)
    x, y = Tensor(rng.standard_normal((8, 4)).astype(np.float32)), Tensor(rng.integers(0, 3, 8))
    losses = []
    for _ in range(3):
        logits = x @ w + b
        mask = Tensor(np.eye(3, dtype=np.float32)[y.numpy()])
        loss = -(logits.log_softmax(-1) * mask).sum() / 8
        loss.backward()
        for p in (w, b):
            p.assign(p - p.grad * 0.5)
            p.grad = None
        before = len(counting_backend)
        losses.append(loss.item())
        assert len(counting_backend) == before + 1  # loss, both grads and both updates: one program
        assert w.node.op == "buffer" and b.node.op == "buffer"  # history cut after the update
    assert losses[2] < losses[1] < losses[0]


def test_assign_is_lazy_until_realize() -> None:
    w = Tensor(np.array([1.0, 2.0], np.float32))
    w.assign(w * 3.0)
    assert w.node.buffer is None
    np.testing.assert_array_equal(w.numpy(), [3.0, 6.0])
    assert w.node.op == "buffer"
    w.assign(0.0)  # scalars broadcast
    pg.realize()
    np.testing.assert_array_equal(w.numpy(), [0.0, 0.0])


def test_assign_in_eager_mode() -> None:
    with pg.eager():
        w = Tensor(np.array([1.0, 2.0], np.float32))
        w.assign(w + 1.0)
        assert w.node.op == "buffer"
        np.testing.assert_array_equal(w.numpy(), [2.0, 3.0])
        w.assign(5.0)  # a value built from constants alone
        np.testing.assert_array_equal(w.numpy(), [5.0, 5.0])


def test_scalar_conversions_and_repr() -> None:
    x = Tensor([[1.5]])
    assert x.item() == 1.5 and float(x) == 1.5 and int(Tensor(7)) == 7 and bool(Tensor(True))
    assert Tensor([1.0, 2.0]).tolist() == [1.0, 2.0]
    assert len(Tensor([[1.0], [2.0], [3.0]])) == 3
    assert "float32" in repr(Tensor([1.0]))
    v = Tensor([1.0, 2.0]).value
    np.testing.assert_array_equal(v, [1.0, 2.0])
