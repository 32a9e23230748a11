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


# ---- 8. sigmoid: stable value and gradient ------------------------------------------------------------
def _sigmoid_and_grad(xs: list[float]) -> tuple[np.ndarray, np.ndarray]:
    x = Tensor(xs, requires_grad=True)
    y = x.sigmoid()
    y.sum().backward()
    return y.numpy(), x.grad.numpy()


SIGMOID_XS = [-100.0, -88.5, -50.0, -10.0, -1.0, 0.0, 1.0, 10.0, 50.0, 88.5, 100.0]


def _check_sigmoid(y: np.ndarray, g: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    xt = torch.tensor(SIGMOID_XS, requires_grad=True)
    yt = xt.sigmoid()
    yt.sum().backward()
    assert not np.isnan(y).any() and not np.isnan(g).any(), (y, g)
    normal = np.abs(yt.detach().numpy()) >= np.finfo(np.float32).tiny  # subnormals may flush to 0 (compiled FTZ)
    x64 = np.array(SIGMOID_XS)
    exact = np.where(x64 >= 0, 1 / (1 + np.exp(-np.abs(x64))), np.exp(-np.abs(x64)) / (1 + np.exp(-np.abs(x64))))
    np.testing.assert_allclose(y[normal], exact[normal], rtol=3e-7)  # float32 rounding: a couple of ulps
    np.testing.assert_allclose(y[normal], yt.detach().numpy()[normal], rtol=4e-7)
    assert np.all(np.abs(y[~normal]) < np.finfo(np.float32).tiny)
    # the exact gradient, not torch's: its y * (1 - y) loses digits to the rounding of 1 - y for large x (4.5417e-05
    # at 10 for 4.5396e-05, 0 at 50 for 1.93e-22)
    want = np.exp(-np.abs(x64)) / (1 + np.exp(-np.abs(x64))) ** 2
    normal = want >= np.finfo(np.float32).tiny
    np.testing.assert_allclose(g[normal], want[normal], rtol=1e-6)
    assert np.all(np.abs(g[~normal]) < np.finfo(np.float32).tiny)
    assert g[SIGMOID_XS.index(-50.0)] > 1e-22 and g[SIGMOID_XS.index(50.0)] > 1e-22  # not flushed: normal floats


@MODES
def test_sigmoid_gradient_has_no_nan_for_large_negative_inputs(eager: bool) -> None:
    with pg.eager(eager):
        _check_sigmoid(*_sigmoid_and_grad(SIGMOID_XS))
        y = Tensor([float("nan"), float("inf"), -float("inf")]).sigmoid().numpy()
        assert np.isnan(y[0]) and y[1] == 1.0 and y[2] == 0.0
        np.testing.assert_allclose(Tensor([-2, 0, 3]).sigmoid().numpy(), 1 / (1 + np.exp([2.0, 0.0, -3.0])), rtol=1e-6)


def test_sigmoid_gradient_on_the_compiled_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    _check_sigmoid(*_sigmoid_and_grad(SIGMOID_XS))


# ---- 9. clip: the gradient at a bound goes to x, as torch's ---------------------------------------------
@MODES
def test_clip_gradient_at_the_bounds(eager: bool) -> None:
    with pg.eager(eager):
        x = Tensor([-1.0, 0.0, 0.5, 1.0, 3.0], requires_grad=True)
        y = x.clamp(0.0, 1.0)
        y.sum().backward()
        np.testing.assert_array_equal(y.numpy(), [0.0, 0.0, 0.5, 1.0, 1.0])
        g = x.grad.numpy()
        np.testing.assert_array_equal(g, [0.0, 1.0, 1.0, 1.0, 0.0])
        assert not np.signbit(g).any()  # no -0.
        # tensor bounds get the gradient only where x is strictly outside them
        x = Tensor([-1.0, 0.0, 0.5, 1.0, 3.0], requires_grad=True)
        lo, hi = Tensor([0.0] * 5, requires_grad=True), Tensor([1.0] * 5, requires_grad=True)
        x.clip(lo, hi).sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), [0.0, 1.0, 1.0, 1.0, 0.0])
        np.testing.assert_array_equal(lo.grad.numpy(), [1.0, 0.0, 0.0, 0.0, 0.0])
        np.testing.assert_array_equal(hi.grad.numpy(), [0.0, 0.0, 0.0, 0.0, 1.0])
        # values as numpy: NaN passes, hi wins when lo > hi, a NaN tensor bound gives NaN, one-sided bounds
        a = np.array([float("nan"), -2.0, 0.5, 7.0], np.float32)
        np.testing.assert_array_equal(Tensor(a).clip(0.0, 1.0).numpy(), np.clip(a, 0.0, 1.0))
        np.testing.assert_array_equal(Tensor(a).clip(3.0, 1.0).numpy(), np.clip(a, 3.0, 1.0))
        np.testing.assert_array_equal(Tensor(a).clip(hi=1.0).numpy(), np.clip(a, None, 1.0))
        b = np.array([0.0, float("nan"), 0.0, 0.0], np.float32)
        np.testing.assert_array_equal(Tensor(a).clip(Tensor(b)).numpy(), np.maximum(a, b))
        assert Tensor([1, 5, 9]).clip(2.5, 6).dtype == np.float32


def test_clip_gradient_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    xs = [-2.0, 0.0, 0.3, 1.0, 1.5]
    x = Tensor(xs, requires_grad=True)
    (x.clamp(0.0, 1.0) * Tensor([1.0, 2.0, 3.0, 4.0, 5.0])).sum().backward()
    xt = torch.tensor(xs, requires_grad=True)
    (xt.clamp(0.0, 1.0) * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), xt.grad.numpy())


# ---- 10. argmax/argmin with NaN: the first NaN, as numpy ---------------------------------------------------
@MODES
def test_argmax_argmin_with_nan(eager: bool) -> None:
    nan = float("nan")
    a = np.array([[1.0, nan, 3.0, nan], [4.0, 2.0, 9.0, 0.0], [nan, 1.0, 2.0, 3.0]], np.float32)
    with pg.eager(eager):
        t = Tensor(a)
        assert t.argmax().item() == np.argmax(a) == 1
        assert t.argmin().item() == np.argmin(a) == 1
        np.testing.assert_array_equal(t.argmax(axis=1).numpy(), np.argmax(a, axis=1))
        np.testing.assert_array_equal(t.argmin(axis=1).numpy(), np.argmin(a, axis=1))
        np.testing.assert_array_equal(t.argmax(axis=0).numpy(), np.argmax(a, axis=0))
        np.testing.assert_array_equal(t.argmin(axis=0).numpy(), np.argmin(a, axis=0))
        assert Tensor([3, 1, 3]).argmax().item() == 0 and Tensor([3, 1, 1]).argmin().item() == 1


# ---- 11. in-place arithmetic ------------------------------------------------------------------------------
@MODES
def test_inplace_ops_update_the_tensor(eager: bool) -> None:
    with pg.eager(eager):
        t = Tensor([1.0, 2.0])
        alias = t
        t += 1
        t *= Tensor([2.0, 3.0])
        t -= 0.5
        t /= 2
        assert t is alias
        np.testing.assert_allclose(alias.numpy(), [1.75, 4.25])
        i = Tensor([1, 2], dtype=np.int32)
        i += 3
        np.testing.assert_array_equal(i.numpy(), [4, 5])
        assert i.dtype == np.int32
        with pytest.raises(TypeError, match="t /= x"):
            i /= 2  # as numpy: an int tensor cannot hold the float quotient
        with pytest.raises(ValueError, match="t \\+= x"):
            i += Tensor(np.ones((2, 2), np.int32))
        # a computed (non-leaf) tensor: gradients still flow through it
        x = Tensor([1.0, 2.0])
        y = x * 3.0
        y += x
        y.sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), [4.0, 4.0])


@MODES
def test_inplace_op_on_a_parameter_is_refused(eager: bool) -> None:
    from picograd import nn

    with pg.eager(eager):
        m = nn.Linear(2, 2)
        w = m.weight
        with pytest.raises(TypeError, match=r"t \+= x.*requires grad.*assign"):
            m.weight += 1
        assert m.weight is w and any(p is w for p in m.parameters())
        with pytest.raises(TypeError, match=r"t \*= x"):
            w *= 2
        before = w.numpy()
        w.assign(w + 1)  # the suggested spelling works
        np.testing.assert_allclose(w.numpy(), before + 1)


# ---- 12. dropout needs a float tensor ----------------------------------------------------------------------
@MODES
def test_dropout_on_an_integer_tensor_raises(eager: bool) -> None:
    with pg.eager(eager):
        t = Tensor(np.ones(1000, np.int64))
        with pytest.raises(TypeError, match="dropout: needs a float tensor"):
            t.dropout(0.1)
        assert t.dropout(0.1, training=False) is t  # eval: the identity, as torch


# ---- 13. mean of nothing is NaN -------------------------------------------------------------------------------
@MODES
def test_mean_of_an_empty_tensor_is_nan(eager: bool) -> None:
    with pg.eager(eager):
        assert np.isnan(Tensor(np.zeros(0, np.float32)).mean().item())
        assert np.isnan(Tensor(np.zeros(0, np.int64)).mean().item())
        r = Tensor(np.zeros((3, 0), np.float32)).mean(axis=1).numpy()
        assert r.shape == (3,) and np.isnan(r).all()
        assert Tensor(np.zeros((0, 3), np.float32)).mean(axis=1).shape == (0,)
        np.testing.assert_allclose(Tensor([1.0, 2.0]).mean().item(), 1.5)


# ---- 14. iteration ----------------------------------------------------------------------------------------------
@MODES
def test_iteration(eager: bool) -> None:
    with pg.eager(eager):
        with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
            list(Tensor(3.0))
        with pytest.raises(TypeError, match="0-d"):
            len(Tensor(3.0))
        rows = list(Tensor([[1, 2], [3, 4], [5, 6]]))
        assert len(rows) == 3 and all(r.shape == (2,) for r in rows)
        np.testing.assert_array_equal(rows[2].numpy(), [5, 6])
        assert [r.item() for r in Tensor([1.5, 2.5])] == [1.5, 2.5]
        assert list(Tensor(np.zeros((0, 2)))) == []


# ---- 15. unsupported dtypes are refused when built ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, object, np.complex64, np.str_, "M8[s]", np.longdouble])
def test_unsupported_dtypes_are_refused_at_construction_and_cast(dtype) -> None:
    with pytest.raises(TypeError, match=r"dtype .* is not supported \(supported: bool, int8"):
        Tensor([1.0], dtype=dtype)
    with pytest.raises(TypeError, match=r"cast: dtype .* is not supported"):
        Tensor([1.0]).cast(dtype)


def test_supported_dtypes_and_byte_order() -> None:
    for dt in T.SUPPORTED_DTYPES:
        assert Tensor([1], dtype=dt).dtype == dt and Tensor([1]).cast(dt).dtype == dt
    t = Tensor(np.array([1, 258], ">i4"))  # big-endian data: stored natively
    assert t.dtype == np.int32
    np.testing.assert_array_equal((t + 1).numpy(), [2, 259])
    assert Tensor(np.float16([1.5])).dtype == np.float32  # float data without a dtype: float32 as ever
    with pytest.raises(TypeError, match="cannot make a tensor from data of dtype"):
        Tensor(np.array([1 + 2j]))


# ---- 16. Python ints out of range for the tensor's dtype ------------------------------------------
@MODES
def test_out_of_range_python_ints(eager: bool) -> None:
    with pg.eager(eager):
        u8 = Tensor(np.array([0, 1, 255], np.uint8))
        i8 = Tensor(np.array([-128, 0, 127], np.int8))
        for f, match in [(lambda: i8 + 300, "add: Python integer 300 is out of bounds for int8"),
                         (lambda: u8 - (-1), "sub: Python integer -1 is out of bounds for uint8"),
                         (lambda: 300 * i8, "mul: Python integer 300"),
                         (lambda: Tensor(np.array([1], np.int64)) + 2**64, "out of bounds for int64"),
                         (lambda: i8.maximum(1000), "maximum: Python integer 1000")]:
            with pytest.raises(OverflowError, match=match):
                f()
        # comparisons give the mathematically right answer, as numpy
        a8, au = np.array([-128, 0, 127], np.int8), np.array([0, 1, 255], np.uint8)
        for v in (-1, 256, 300, -300):
            for x, a in ((u8, au), (i8, a8)):
                if np.iinfo(a.dtype).min <= v <= np.iinfo(a.dtype).max:
                    continue
                np.testing.assert_array_equal((x < v).numpy(), a < v)
                np.testing.assert_array_equal((x <= v).numpy(), a <= v)
                np.testing.assert_array_equal((x > v).numpy(), a > v)
                np.testing.assert_array_equal((x >= v).numpy(), a >= v)
                np.testing.assert_array_equal((x == v).numpy(), a == v)
                np.testing.assert_array_equal((x != v).numpy(), a != v)
                np.testing.assert_array_equal((v < x).numpy(), v < a)
        np.testing.assert_array_equal((i8 + 127).numpy(), a8 + np.int8(127))  # in range: wraps as numpy
        np.testing.assert_array_equal((u8 - 255).numpy(), au - np.uint8(255))


# ---- 17. argument checks and small semantics ------------------------------------------
@MODES
def test_shape_arguments_must_be_ints(eager: bool) -> None:
    with pg.eager(eager):
        t = Tensor(np.zeros((2, 2), np.float32))
        with pytest.raises(TypeError, match=r"permute: expected integers, got \(1.0, 0\)"):
            t.permute(1.0, 0)
        with pytest.raises(TypeError, match=r"reshape: expected integers, got \(2.5, 2\)"):
            t.reshape(2.5, 2)
        with pytest.raises(TypeError, match="expand: expected integers"):
            t.expand(2.0, 2)
        assert t.reshape(np.int64(4)).shape == (4,) and t.permute([np.int32(1), 0]).shape == (2, 2)


@MODES
def test_where_with_a_python_bool_condition(eager: bool) -> None:
    with pg.eager(eager):
        t = Tensor([1.0, 2.0])
        np.testing.assert_array_equal(pg.where(True, t, 0.0).numpy(), [1.0, 2.0])
        np.testing.assert_array_equal(pg.where(False, t, 0.0).numpy(), [0.0, 0.0])
        np.testing.assert_array_equal(pg.where(np.bool_(True), 5.0, t).numpy(), [5.0, 5.0])
        with pytest.raises(TypeError, match="where: condition must be a bool tensor"):
            pg.where(1.0, t, 0.0)


@MODES
def test_min_max_minimum_abs_on_bools(eager: bool) -> None:
    a, b = np.array([True, False, True]), np.array([False, False, True])
    with pg.eager(eager):
        x, y = Tensor(a), Tensor(b)
        assert x.min().item() == a.min() and x.max().item() == a.max()
        assert Tensor(a | True).min().item() == np.True_
        np.testing.assert_array_equal(Tensor(np.array([[True, False], [True, True]])).min(axis=1).numpy(),
                                      [False, True])
        np.testing.assert_array_equal(x.minimum(y).numpy(), np.minimum(a, b))
        np.testing.assert_array_equal(x.maximum(y).numpy(), np.maximum(a, b))
        assert x.min().dtype == np.bool_ and x.minimum(y).dtype == np.bool_
        np.testing.assert_array_equal(x.abs().numpy(), np.abs(a))
        assert x.abs().dtype == np.bool_


@MODES
def test_softmax_of_a_0d_tensor(eager: bool) -> None:
    with pg.eager(eager):
        x = Tensor(3.0, requires_grad=True)
        y = x.softmax()
        assert y.shape == () and y.item() == 1.0
        assert Tensor(3.0).softmax(0).item() == 1.0 and Tensor(3.0).log_softmax(dim=-1).item() == 0.0
        y.backward()
        assert x.grad.item() == 0.0
        with pytest.raises(ValueError, match="out of range for a 0-d tensor"):
            Tensor(3.0).softmax(1)


@MODES
def test_ragged_list_operand(eager: bool) -> None:
    with pg.eager(eager):
        with pytest.raises(ValueError, match=r"inhomogeneous shape.*Tensor\(\) needs rectangular data"):
            Tensor([1.0, 2.0]) + [[1.0, 2.0], [3.0]]
        with pytest.raises(ValueError, match=r"Tensor: cannot make a tensor from list data of inhomogeneous"):
            Tensor([[1.0, 2.0], [3.0]])
