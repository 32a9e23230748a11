"""Regression tests for Tensor front-end bugs: gradients of tensors with a pending assign, assign keeping the
tensor's identity and device, Tensor(ndarray) copying, integer reductions and powers, argmax/argmin without an
axis, and numpy/format interop. Each runs lazily and eagerly where both apply (eager is the reference)."""

from __future__ import annotations

import numpy as np
import pytest

import picograd as pg
from picograd import Tensor, optim
from picograd import tensor as T

pytestmark = pytest.mark.usefixtures("reference_backend")
MODES = pytest.mark.parametrize("eager", [False, True], ids=["lazy", "eager"])


# ---- 1. a tensor with a pending assign is still differentiated -------------------------------------
def _train_without_realizing(make_opt) -> tuple[np.ndarray, np.ndarray]:
    w = Tensor([0.0, 3.0], requires_grad=True)
    opt = make_opt([w])
    for _ in range(5):
        opt.zero_grad()
        ((w - 1.0) ** 2).sum().backward()
        opt.step()  # no .item() per step: the updates stay pending, each step's loss reads the last one
    return w.numpy(), w.grad.numpy()


@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.SGD(ps, lr=0.1),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: optim.Adam(ps, lr=0.1),
], ids=["sgd", "momentum", "adam"])
def test_training_without_a_realize_per_step_keeps_training(make_opt) -> None:
    w, g = _train_without_realizing(make_opt)
    with pg.eager():
        w_ref, g_ref = _train_without_realizing(make_opt)
    assert abs(w_ref[0] - 0.0) > 0.3  # the reference did train
    np.testing.assert_allclose(w, w_ref, rtol=1e-6)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6)


def test_sgd_without_realize_matches_the_closed_form() -> None:
    w = Tensor([0.0], requires_grad=True)
    opt = optim.SGD([w], lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        ((w - 1.0) ** 2).sum().backward()
        opt.step()
    np.testing.assert_allclose(w.numpy(), [1 - 0.8**5], rtol=1e-6)  # w <- w - 0.2 (w - 1)
    np.testing.assert_allclose(w.grad.numpy(), [-2 * 0.8**4], rtol=1e-6)


@MODES
def test_manual_assign_then_backward_differentiates_the_new_value(eager: bool) -> None:
    with pg.eager(eager):
        w = Tensor([2.0, -1.0], requires_grad=True)
        (w * w).sum().backward()
        w.assign(w - 0.1 * w.grad)  # pending in lazy mode
        w.grad = None
        (w * w * w).sum().backward()  # d/dw of w^3 at the new value 0.8 * w
        assert w.grad is not None
        np.testing.assert_allclose(w.grad.numpy(), 3 * (0.8 * np.array([2.0, -1.0])) ** 2, rtol=1e-6)


@MODES
def test_tensors_assigned_the_same_pending_value_get_their_own_gradients(eager: bool) -> None:
    with pg.eager(eager):
        x = Tensor([1.0, 2.0])
        b, c = Tensor([0.0, 0.0], requires_grad=True), Tensor([0.0, 0.0], requires_grad=True)
        b.assign(x * 2.0)
        c.assign(x * 2.0)  # the same value, built twice (hash-consed to one node)
        (b * 3.0 + c * 5.0).sum().backward()
        np.testing.assert_array_equal(b.grad.numpy(), [3.0, 3.0])
        np.testing.assert_array_equal(c.grad.numpy(), [5.0, 5.0])
        np.testing.assert_array_equal(b.numpy(), [2.0, 4.0])


def test_pending_assign_leaf_on_the_compiled_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    w, g = _train_without_realizing(lambda ps: optim.SGD(ps, lr=0.1, momentum=0.5))
    monkeypatch.setenv("PICOGRAD_BACKEND", "numpy")
    w_ref, g_ref = _train_without_realizing(lambda ps: optim.SGD(ps, lr=0.1, momentum=0.5))
    np.testing.assert_allclose(w, w_ref, rtol=1e-5)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5)


# ---- 2. assign gives the tensor its own value and identity ------------------------------------------
@MODES
def test_assign_from_a_realized_tensor_keeps_gradients_apart(eager: bool) -> None:
    with pg.eager(eager):
        a = Tensor([1.0, 2.0], requires_grad=True)
        b = Tensor([0.0, 0.0], requires_grad=True)
        b.assign(a)
        pg.realize()
        (a * 3.0).sum().backward()
        (b * 5.0).sum().backward()
        np.testing.assert_array_equal(a.grad.numpy(), [3.0, 3.0])
        np.testing.assert_array_equal(b.grad.numpy(), [5.0, 5.0])
        np.testing.assert_array_equal(b.numpy(), [1.0, 2.0])
        assert b.node is not a.node and b.node.buffer is not a.node.buffer


@MODES
def test_assign_from_an_array_makes_the_tensor_its_buffers_owner(eager: bool) -> None:
    # picograd.jit reads a Buffer's owner's current value at each replay; a dead temporary as owner made it a
    # constant frozen at the trace
    with pg.eager(eager):
        w = Tensor(np.zeros(3, np.float32), requires_grad=True)
        w.assign(np.ones(3, np.float32))
        pg.realize()
        assert w.node.buffer.owner() is w and w.node.buffer.leaf() is w
        np.testing.assert_array_equal(w.numpy(), np.ones(3))
        (w * 2.0).sum().backward()
        np.testing.assert_array_equal(w.grad.numpy(), [2.0, 2.0, 2.0])


# ---- 3. Tensor(ndarray) copies -------------------------------------------------------------------------
@MODES
def test_tensor_from_an_array_does_not_see_later_writes(eager: bool) -> None:
    with pg.eager(eager):
        buf = np.zeros(3, np.float32)
        outs = []
        for i in range(3):
            buf[:] = i
            outs.append(Tensor(buf) * 2.0)
        np.testing.assert_array_equal(np.stack([o.numpy() for o in outs]), [[0] * 3, [2] * 3, [4] * 3])
        x = np.arange(4)
        t = Tensor(x)
        y = t + x  # an array lifted by an op is copied too
        x[0] = 100  # integers too
        assert t.tolist() == [0, 1, 2, 3] and y.tolist() == [0, 2, 4, 6]


def test_copy_false_shares_memory() -> None:
    a = np.zeros(3, np.float32)
    t = Tensor(a, copy=False)
    assert np.shares_memory(t.node.buffer.data, a)
    assert not np.shares_memory(Tensor(a).node.buffer.data, a)


# ---- 4. assign checks the device -------------------------------------------------------------------
@pytest.fixture
def fake_device(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(T.to_device, "fake", lambda a: a.copy())
    return "fake"


def test_assign_refuses_a_value_on_another_device(fake_device: str) -> None:
    w = Tensor(np.zeros(3, np.float32), device=fake_device)
    with pytest.raises(ValueError, match=r"^assign: value float32\[3\] is on device 'cpu', the tensor float32\[3\] "
                                         r"on 'fake'"):
        w.assign(Tensor(np.ones(3, np.float32)))
    assert w.device == fake_device
    c = Tensor(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="assign: .* on device 'fake'.* on 'cpu'"):
        c.assign(w)


def test_assign_moves_host_data_and_constants_to_the_tensors_device(fake_device: str) -> None:
    w = Tensor(np.zeros(3, np.float32), device=fake_device)
    w.assign(np.ones(3, np.float32))
    assert w.device == fake_device and w.node.buffer.device == fake_device
    np.testing.assert_array_equal(w.node.buffer.data, np.ones(3))
    w.assign(2.0)  # a value computed from constants alone
    assert w.device == fake_device
    np.testing.assert_array_equal(w.node.buffer.data, [2.0, 2.0, 2.0])


# ---- 5. integer sums accumulate in 64 bits ------------------------------------------------------------
@MODES
@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                   np.uint32, np.uint64])
def test_integer_sums_follow_numpy(eager: bool, dtype) -> None:
    a = np.array([[200, 100, 255], [1, 0, 127]]).astype(dtype)
    with pg.eager(eager):
        t = Tensor(a)
        for axis in (None, 0, 1):
            got, want = t.sum(axis=axis).numpy(), np.sum(a, axis=axis)
            assert got.dtype == want.dtype, (dtype, axis)
            np.testing.assert_array_equal(got, want)
        assert t.mean().dtype == np.float32
        np.testing.assert_allclose(t.mean().item(), np.mean(a), rtol=1e-6)


# ---- 6. argmax/argmin without an axis, integer min ---------------------------------------------------
@MODES
def test_argmax_argmin_without_axis_index_the_flattened_tensor(eager: bool) -> None:
    a = np.array([[1.0, 5.0, 2.0], [7.0, -3.0, 7.0]], np.float32)
    with pg.eager(eager):
        t = Tensor(a)
        assert t.argmax().shape == () and t.argmax().item() == np.argmax(a) == 3
        assert t.argmin().item() == np.argmin(a) == 4
        np.testing.assert_array_equal(t.argmax(axis=1).numpy(), np.argmax(a, axis=1))
        np.testing.assert_array_equal(t.argmin(dim=0).numpy(), np.argmin(a, axis=0))
        assert Tensor(np.float32(2.0)).argmax().item() == 0


@MODES
@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64])
def test_integer_min_at_the_ends_of_the_range(eager: bool, dtype) -> None:
    info = np.iinfo(dtype)
    a = np.array([[info.max, 0, 1], [info.min, 5, info.max]], dtype)
    with pg.eager(eager):
        t = Tensor(a)
        assert t.min().item() == a.min() and t.min().dtype == dtype
        np.testing.assert_array_equal(t.min(axis=1).numpy(), a.min(axis=1))
        np.testing.assert_array_equal(t.argmin(axis=1).numpy(), a.argmin(axis=1))
        np.testing.assert_array_equal(t.clip(1, 3).numpy(), a.clip(1, 3))
        np.testing.assert_array_equal(t.minimum(3).numpy(), np.minimum(a, 3))
        np.testing.assert_array_equal(t.minimum(Tensor(a[::-1].copy())).numpy(), np.minimum(a, a[::-1]))
        np.testing.assert_array_equal(t.clip(hi=3).numpy(), a.clip(None, 3))


# ---- 7. smaller ones ----------------------------------------------------------------------------------
@MODES
def test_integer_relu_and_powers_keep_the_dtype(eager: bool) -> None:
    a = np.array([-3, 0, 2, 5], np.int32)
    with pg.eager(eager):
        t = Tensor(a)
        assert t.relu().dtype == np.int32
        np.testing.assert_array_equal(t.relu().numpy(), np.maximum(a, 0))
        for k in (0, 1, 2, 3, 5, np.int64(4)):
            r = t**k
            assert r.dtype == np.int32, k
            np.testing.assert_array_equal(r.numpy(), a**k)
        assert (Tensor([1.5]) ** 3).dtype == np.float32


@MODES
def test_numpy_array_protocol(eager: bool) -> None:
    with pg.eager(eager):
        t = Tensor([[1.0, 2.0]]) * 2.0
        arr = np.array(t)
        assert arr.dtype == np.float32 and arr.shape == (1, 2)
        np.testing.assert_array_equal(arr, [[2.0, 4.0]])
        assert np.asarray(t, dtype=np.float64).dtype == np.float64
        with pytest.raises(ValueError, match="copy=False"):
            np.array(t, copy=False)
        assert isinstance(np.float32(1.0) * t, Tensor)  # numpy operands on the left still defer to Tensor


def test_format() -> None:
    assert f"{Tensor([[1.23456]]):.2f}" == "1.23"
    assert f"{Tensor(3):>4d}" == "   3"
    t = Tensor([1.0, 2.0])
    assert f"{t}" == str(t) and format(Tensor(1.5), "") == str(Tensor(1.5))
    with pytest.raises(ValueError):
        f"{t:.2f}"


def test_grad_argnums_out_of_range() -> None:
    df = pg.grad(lambda x: (x * x).sum(), argnums=2)
    with pytest.raises(ValueError, match=r"^grad: argnums 2 is out of range for a function called with 1 arg"):
        df(Tensor([1.0]))
    np.testing.assert_array_equal(pg.grad(lambda x, y: (x * y).sum(), argnums=-1)(Tensor([2.0]), Tensor([3.0]))
                                  .numpy(), [2.0])
