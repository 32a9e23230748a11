"""Edge cases of the Tensor front end against numpy/torch semantics, lazily and eagerly: signed zero constants,
which leaves get gradients, integer and bool powers and subtraction, reductions over empty or 0-d axes, backward's
gradient argument, assign and setitem, writes to views, and build-time errors that name the op."""

from __future__ import annotations

import re

import numpy as np
import pytest

import picograd as pg
from picograd import Tensor, optim

pytestmark = pytest.mark.usefixtures("reference_backend")
MODES = pytest.mark.parametrize("eager", [False, True], ids=["lazy", "eager"])
F32 = np.float32


# ---- constants: -0.0 is not 0.0 ----------------------------------------------------------------------
@MODES
def test_negative_zero_constants_keep_their_sign(eager: bool) -> None:
    # hash-consing found the node of the 0.0 constant for -0.0 (equal and hashing alike)
    with pg.eager(eager):
        x = Tensor([-0.0, 1.0])
        a, b = x * 0.0, x * -0.0  # both alive: the table is weak
        np.testing.assert_array_equal(np.signbit(a.numpy()), np.signbit(np.array([-0.0, 1.0], F32) * 0.0))
        np.testing.assert_array_equal(np.signbit(b.numpy()), np.signbit(np.array([-0.0, 1.0], F32) * -0.0))
        c, d = Tensor([-0.0]) + 0.0, Tensor([-0.0]) + -0.0
        assert not np.signbit(c.numpy()[0]) and np.signbit(d.numpy()[0])


# ---- gradients reach only leaves on a differentiable path ------------------------------------------------------
@MODES
def test_leaf_used_only_through_non_differentiable_ops_gets_no_gradient(eager: bool) -> None:
    with pg.eager(eager):
        x = Tensor([1.0, 2.0], requires_grad=True)
        y = Tensor([1.0, -2.0], requires_grad=True)
        (x.detach() * y + (x > 1.5).float() + x.cast(np.int32).float() + x.argmax().float()).sum().backward()
        assert x.grad is None  # as torch: it was zeros
        np.testing.assert_array_equal(y.grad.numpy(), [1.0, 2.0])


@MODES
def test_optimizer_leaves_a_parameter_used_only_detached_alone(eager: bool) -> None:
    # a zero gradient made weight decay and momentum move a parameter the loss never differentiated
    with pg.eager(eager):
        w = Tensor([1.0, 2.0], requires_grad=True)
        b = Tensor([0.5], requires_grad=True)
        opt = optim.SGD([w, b], lr=0.1, momentum=0.9, weight_decay=0.1)
        for _ in range(2):
            opt.zero_grad()
            ((w.detach() * b).sum() ** 2).backward()
            opt.step()
        np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])
        assert b.numpy()[0] != 0.5


@MODES
def test_detaching_a_value_that_is_also_pending_assigned_does_not_make_a_leaf(eager: bool) -> None:
    # v.detach() was hash-consed to the node of w's pending assign, so backward() took it for w
    with pg.eager(eager):
        w = Tensor([0.0, 0.0], requires_grad=True)
        v = Tensor([1.0, 2.0]) * 2.0
        before = v.detach()
        w.assign(v)
        after = v.detach()
        (after * 3.0 + before).sum().backward()
        assert w.grad is None
        np.testing.assert_array_equal(w.numpy(), [2.0, 4.0])
        after += 1.0  # not a view of w either
        np.testing.assert_array_equal(after.numpy(), [3.0, 5.0])


# ---- powers ---------------------------------------------------------------------------------------------------
@MODES
def test_integer_and_bool_powers(eager: bool) -> None:
    a = np.array([4, 9, -3], np.int64)
    with pg.eager(eager):
        t = Tensor(a)
        for e in (2.0, 1.0, 3.0, np.float32(2.0)):  # a float exponent gives a float result (torch: float32)
            r = t**e
            assert r.dtype == np.float32, e
            np.testing.assert_array_equal(r.numpy(), a.astype(F32) ** F32(e))
        with pytest.raises(ValueError, match=r"^pow: integers to negative integer powers are not allowed "
                                             r"\(int64\[3\] \*\* -1\)"):
            t**-1
        m = Tensor([True, False])
        assert (m**2).dtype == np.int64 and (m**3).tolist() == [1, 0]  # torch's: 0/1 in int64
        with pytest.raises(TypeError, match=r"^pow: integer powers with an integer tensor exponent are not "
                                            r"supported \(int64\[3\] \*\* int64\[3\]\)"):
            t**t
        with pytest.raises(TypeError, match=r"^pow: integer powers with an integer tensor exponent"):
            2**t
        np.testing.assert_array_equal((2.0**t).numpy(), 2.0 ** a.astype(F32))  # a float base is fine
        np.testing.assert_array_equal((t ** Tensor([0.5, 0.5, 2.0])).numpy(), a.astype(F32) ** [0.5, 0.5, 2.0])


# ---- subtraction with bools ------------------------------------------------------------------------------------
@MODES
def test_subtraction_with_bool_operands(eager: bool) -> None:
    m = np.array([True, False])
    with pg.eager(eager):
        for got, want in (((1 - Tensor(m)), 1 - m), ((Tensor(m) - 1), m - 1), ((Tensor(m) - 0.5), m - F32(0.5)),
                          ((Tensor(np.array([3, 4], np.int32)) - Tensor(m)), np.array([3, 4], np.int32) - m)):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got.numpy(), want)
        with pytest.raises(TypeError, match=r"^sub: cannot subtract bool tensors \(bool\[2\] - bool\[2\]\)"):
            Tensor(m) - Tensor(m)
        with pytest.raises(ValueError, match=r"^sub: shapes \(2,\) and \(3,\) cannot be broadcast"):
            Tensor(m) - Tensor([1, 2, 3])


# ---- reductions: empty and 0-d ---------------------------------------------------------------------------------
@MODES
def test_max_like_reductions_of_nothing_name_the_op(eager: bool) -> None:
    with pg.eager(eager):
        e = Tensor(np.zeros((2, 0), F32))
        for fn, op in ((lambda: e.max(), "max"), (lambda: e.min(axis=1), "min"), (lambda: e.argmax(), "argmax"),
                       (lambda: e.argmin(dim=-1), "argmin")):
            with pytest.raises(ValueError, match=rf"^{op}: cannot reduce over axis \d of size 0 \(shape \(2, 0\)\)"):
                fn()
        assert e.max(axis=0).shape == (0,) and e.sum().item() == 0.0  # a non-empty axis, and a sum: fine
        assert e.softmax(-1).shape == (2, 0) and e.log_softmax(dim=1).shape == (2, 0)  # as torch
        assert Tensor(np.zeros((2, 0), np.int64)).softmax(-1).dtype == np.float32


@MODES
def test_axis_arguments_of_0d_tensors(eager: bool) -> None:
    with pg.eager(eager):
        s = Tensor(np.float32(3.0))
        for ax in (0, -1):  # torch's rule for 0-d tensors
            assert s.sum(ax).item() == 3.0 and s.max(axis=ax).item() == 3.0
            assert s.argmax(ax).item() == 0 and s.argmin(dim=ax).item() == 0
        with pytest.raises(ValueError, match=r"^sum: axis 1 is out of range for a tensor with 0 dim"):
            s.sum(1)
        with pytest.raises(ValueError, match=r"^argmax: axis 1 is out of range for a 0-d tensor"):
            s.argmax(1)
        v = Tensor([1.0, 2.0])
        assert v.transpose().shape == (2,) and v.transpose(0, -1).shape == (2,)
        with pytest.raises(ValueError, match=r"^transpose: axis 5 is out of range for a tensor with 1 dim"):
            v.transpose(0, 5)


# ---- backward's gradient argument ------------------------------------------------------------------------------
@MODES
def test_backward_gradient_argument(eager: bool) -> None:
    with pg.eager(eager):
        x = Tensor([1.0, 2.0], requires_grad=True)
        (x * 2.0).backward([1, 10])  # host ints: the tensor's dtype, like a Python scalar operand
        np.testing.assert_array_equal(x.grad.numpy(), [2.0, 20.0])
        x.grad = None
        (x * 3.0)[1:].backward()  # one element: no gradient needed, as torch
        np.testing.assert_array_equal(x.grad.numpy(), [0.0, 3.0])
        with pytest.raises(TypeError, match=r"^backward: gradient float64\[2\] has another dtype than the tensor "
                                            r"float32\[2\]"):
            (x * 2.0).backward(Tensor([1.0, 1.0], dtype=np.float64))
        with pytest.raises(ValueError, match=r"^backward: called on a non-scalar tensor of shape \(2,\)"):
            (x * 2.0).backward()


# ---- assign, requires_grad -------------------------------------------------------------------------------------
@MODES
def test_assign_converts_host_data_that_fits(eager: bool) -> None:
    with pg.eager(eager):
        w = Tensor(np.zeros(3, F32))
        w.assign([1, 2, 3])  # as w.assign(1) does for a Python int
        assert w.dtype == np.float32 and w.tolist() == [1.0, 2.0, 3.0]
        i = Tensor(np.zeros(3, np.int32))
        i.assign(np.array([1, -2, 3], np.int64))  # values that fit
        assert i.dtype == np.int32 and i.tolist() == [1, -2, 3]
        with pytest.raises(ValueError, match=r"^assign: value int64\[3\] does not match int32\[3\]"):
            i.assign(np.array([1, 2, 2**40]))
        with pytest.raises(ValueError, match=r"^assign: value float32\[3\] does not match int32\[3\]"):
            i.assign([0.5, 1.0, 2.0])


def test_requires_grad_on_an_integer_tensor_raises() -> None:
    with pytest.raises(TypeError, match=r"^Tensor: only float tensors can require gradients, .*int64\[2\]"):
        Tensor([1, 2], requires_grad=True)
    t = Tensor([True])
    with pytest.raises(TypeError, match=r"^requires_grad: only float tensors can require gradients, .*bool\[1\]"):
        t.requires_grad = True
    assert Tensor([1, 2], requires_grad=False).grad is None


# ---- setitem ---------------------------------------------------------------------------------------------------
SETITEM_CASES = [
    (1, 5.0), (-1, [1.0, 2.0, 3.0, 4.0]), ((slice(None), slice(None, None, -2)), 9.0),
    ((slice(None), 1), np.array([7.0, 8.0, 9.0], F32)), ((Ellipsis, 0), 1), ((None, 0), 3.0), (slice(3, 1), 1.0),
    (slice(-5, None, -1), 1.0), (0, np.ones((1, 4), F32)), ((1, 2), -1.0), (0, np.array([1, 2, 3, 4])),
]


@MODES
@pytest.mark.parametrize("idx, value", SETITEM_CASES, ids=[str(i) for i in range(len(SETITEM_CASES))])
def test_setitem_matches_numpy(eager: bool, idx, value) -> None:
    a = np.arange(12, dtype=F32).reshape(3, 4)
    with pg.eager(eager):
        t = Tensor(a)
        t[idx] = value
        a[idx] = value
        assert t.dtype == np.float32
        np.testing.assert_array_equal(t.numpy(), a)


@MODES
def test_setitem_dtypes_errors_and_gradients(eager: bool) -> None:
    with pg.eager(eager):
        i = Tensor(np.arange(6))
        i[1:5:2] = 100
        assert i.tolist() == [0, 100, 2, 100, 4, 5]
        with pytest.raises(TypeError, match=r"^setitem: a float32\[\] value cannot be stored in int64\[6\]"):
            i[0] = 1.5
        t = Tensor(np.zeros((3, 4), F32))
        with pytest.raises(ValueError, match=r"^setitem: shapes \(3,\) and \(4,\) cannot be broadcast"):
            t[0] = np.ones(3, F32)
        with pytest.raises(IndexError, match=r"^setitem: index 5 is out of bounds for axis 0 with size 3"):
            t[5] = 1.0
        with pytest.raises(TypeError, match=r"^setitem: in-place op on a tensor that requires grad"):
            Tensor(np.zeros(3, F32), requires_grad=True)[0] = 1.0
        # on a computed tensor: the new value inside, the old one outside, each with its gradient
        x = Tensor(np.arange(4, dtype=F32), requires_grad=True)
        v = Tensor(np.array([10.0, 20.0], F32), requires_grad=True)
        y = x * 2.0
        y[1:3] = v * 3.0
        (y * Tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
        np.testing.assert_array_equal(y.numpy(), [0.0, 30.0, 60.0, 6.0])
        np.testing.assert_array_equal(x.grad.numpy(), [2.0, 0.0, 0.0, 8.0])
        np.testing.assert_array_equal(v.grad.numpy(), [6.0, 9.0])


def test_setitem_on_the_compiled_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    t = Tensor(np.arange(12, dtype=F32).reshape(3, 4))
    t[:, ::-2] = Tensor([7.0, 8.0])
    i = Tensor(np.arange(6))
    i[1:5:2] = 100
    want = np.arange(12, dtype=F32).reshape(3, 4)
    want[:, ::-2] = [7.0, 8.0]
    np.testing.assert_array_equal(t.numpy(), want)
    assert i.tolist() == [0, 100, 2, 100, 4, 5]


def test_setitem_moves_host_data_to_the_tensors_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from picograd import tensor as T
    from picograd.ir.node import toposort

    monkeypatch.setitem(T.to_device, "fake", lambda a: a.copy())
    t = Tensor(np.zeros((2, 3), F32), device="fake")
    with pytest.raises(ValueError, match=r"^setitem: value float32\[3\] is on device 'cpu', the tensor float32\[2, 3\] "
                                         r"on 'fake'; move it with .to\('fake'\)"):
        t[0] = Tensor([1.0, 2.0, 3.0])
    t[0] = [1, 2, 3]  # host data: moved (and made float32), as assign does
    t[1, 1:] = 5.0  # a constant takes the device of what it meets
    assert t.device == "fake"
    assert {n.buffer.device for n in toposort([t.node]) if n.op == "buffer"} == {"fake"}


# ---- writes to views ---------------------------------------------------------------------------------------------
@MODES
def test_writes_to_a_view_of_another_tensor_are_refused(eager: bool) -> None:
    # they silently left the viewed tensor as it was (numpy and torch write through)
    with pg.eager(eager):
        x = Tensor(np.zeros((2, 3), F32))
        row = x[0]
        with pytest.raises(TypeError, match=r"^assign: this float32\[3\] tensor is a view \(slice\) of another "
                                            r"float32\[2, 3\] tensor; picograd tensors never share memory"):
            row.assign(np.ones(3, F32))
        with pytest.raises(TypeError, match=r"^t \+= x: this float32\[3\] tensor is a view"):
            row += 1.0
        with pytest.raises(TypeError, match=r"^setitem: this float32\[3, 2\] tensor is a view \(permute\)"):
            x.T[0] = 1.0
        with pytest.raises(TypeError, match=r"view \(alias\)"):
            x[:].assign(np.ones((2, 3), F32))
        np.testing.assert_array_equal(x.numpy(), np.zeros((2, 3)))
        x[0] = 1.0  # the spelling that works
        np.testing.assert_array_equal(x.numpy(), [[1.0] * 3, [0.0] * 3])
        tmp = (x * 2.0)[0]  # a view of a temporary nobody else holds: fine
        tmp += 1.0
        np.testing.assert_array_equal(tmp.numpy(), [3.0] * 3)


# ---- build-time errors that name the op --------------------------------------------------------------------------
def _t(*shape: int) -> Tensor:
    return Tensor(np.ones(shape, F32))


ERRORS = [
    ("add_str", lambda: _t(2) + "abc", TypeError,
     r"^add: cannot combine a float32\[2\] tensor with str 'abc' \(data of dtype <U3\)"),
    ("mul_none", lambda: _t(2) * None, TypeError, r"^mul: cannot combine a float32\[2\] tensor with NoneType None"),
    ("where_complex", lambda: pg.where(_t(2) > 0, _t(2), [1j, 2j]), TypeError, r"^where: cannot combine .*complex128"),
    ("getitem_mask", lambda: _t(2, 3)[np.ones((2, 3), bool)], TypeError,
     r"^getitem: only ints, slices, None and \.\.\. are supported, got ndarray bool\[2, 3\] for shape \(2, 3\) "
     r"\(no bool masks"),
    ("getitem_tensor", lambda: _t(2, 3)[Tensor([0, 1])], TypeError, r"^getitem: .* got Tensor int64\[2\]"),
    ("getitem_step0", lambda: _t(2, 3)[:, ::0], ValueError,
     r"^getitem: bad slice slice\(None, None, 0\) for axis 1 of shape \(2, 3\): slice step cannot be zero"),
    ("getitem_float_slice", lambda: _t(2, 3)[0.5:], TypeError, r"^getitem: bad slice slice\(0.5, None, None\)"),
    ("bool_ambiguous", lambda: bool(_t(2)), ValueError, r"^bool: the truth value of a tensor of shape \(2,\) is ambig"),
    ("expand_negative", lambda: _t(3, 1).expand(-2, 4), ValueError, r"^expand: negative size in \(-2, 4\)"),
    ("unsqueeze_float", lambda: _t(2).unsqueeze(0.5), TypeError, r"^unsqueeze: axis must be an int, got float 0.5"),
    ("int_neg_power", lambda: Tensor([1, 2]) ** -2, ValueError, r"^pow: integers to negative integer powers"),
    ("max_empty", lambda: Tensor(np.zeros(0, F32)).max(), ValueError, r"^max: cannot reduce over axis 0 of size 0"),
    ("float_huge_int", lambda: _t(2) + 10**400, OverflowError,
     r"^add: Python integer 1000.*\.\.\. is too large for float32 \(the float32\[2\] tensor it meets\)"),
    # constructors: random floats of an integer dtype were all zeros; dtypes and shapes checked before numpy
    ("rand_int", lambda: pg.rand(3, dtype=np.int32), TypeError, r"^rand: random floats need a float dtype, got int32"),
    ("randn_like_int", lambda: pg.randn_like(Tensor([1, 2])), TypeError, r"^randn: random floats need a float dtype"),
    ("uniform_bool", lambda: pg.uniform(2, dtype=bool), TypeError, r"^uniform: random floats need a float dtype"),
    ("zeros_dtype", lambda: pg.zeros(2, dtype="nonsense"), TypeError, r"^zeros: 'nonsense' is not a dtype"),
    ("full_shape", lambda: pg.full((2, -1), 1.0), ValueError, r"^full: expected a shape of non-negative ints"),
    ("ones_bool_shape", lambda: pg.ones(True), ValueError, r"^ones: expected a shape of non-negative ints, got \(True"),
]


@pytest.mark.parametrize("thunk, exc, pattern", [pytest.param(*c[1:], id=c[0]) for c in ERRORS])
def test_error_names_the_op(thunk, exc, pattern: str) -> None:
    with pytest.raises(exc) as info:
        thunk()
    assert re.search(pattern, str(info.value)), f"message {str(info.value)!r} does not match {pattern!r}"


def test_errors_come_before_any_realize(monkeypatch: pytest.MonkeyPatch) -> None:
    import picograd.tensor as tensor_module

    monkeypatch.setattr(tensor_module, "realize_nodes", lambda *a, **k: pytest.fail("a backend ran before the error"))
    for _, thunk, exc, _ in ERRORS:
        with pytest.raises(exc):
            thunk()


def test_comparing_with_none_is_identity() -> None:
    t = Tensor([1.0])
    assert (t == None) is False and (t != None) is True  # noqa: E711 - the operators are the point
    assert t in [None, t]
