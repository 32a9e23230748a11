"""Bad input raises at build time (before any realize), with the promised exception type and a message that
names the user-facing op and the shapes or dtypes involved."""

from __future__ import annotations

import re

import numpy as np
import pytest

import picograd as pg
from picograd import Tensor
from picograd.nn import functional as F


def t(*shape: int, dtype=np.float32) -> Tensor:
    return Tensor(np.ones(shape), dtype=dtype)


pytestmark = pytest.mark.usefixtures("reference_backend")

F64 = np.float64

# (id, thunk, exception, regex the message must match). Thunks only build graphs: nothing is realized.
CASES = [
    # mismatched shapes, named by the op the user wrote
    ("add_shapes", lambda: t(2, 3) + t(4, 5), ValueError, r"^add: shapes \(2, 3\) and \(4, 5\) cannot be broadcast"),
    ("sub_shapes", lambda: t(2, 3) - t(4, 5), ValueError, r"^sub: shapes \(2, 3\) and \(4, 5\)"),
    ("rsub_shapes", lambda: np.ones((4, 5), np.float32) - t(2, 3), ValueError, r"^sub: shapes \(4, 5\) and \(2, 3\)"),
    ("mul_shapes", lambda: t(3) * t(4), ValueError, r"^mul: shapes \(3,\) and \(4,\)"),
    ("div_shapes", lambda: t(2, 3) / t(2), ValueError, r"^div: shapes \(2, 3\) and \(2,\)"),
    ("pow_shapes", lambda: t(2, 3) ** t(3, 2), ValueError, r"^pow: shapes \(2, 3\) and \(3, 2\)"),
    ("maximum_shapes", lambda: t(2, 3).maximum(t(4)), ValueError, r"^maximum: shapes \(2, 3\) and \(4,\)"),
    ("minimum_shapes", lambda: t(2, 3).minimum(t(4)), ValueError, r"^minimum: shapes"),
    ("clip_shapes", lambda: t(2, 3).clip(t(4)), ValueError, r"^maximum: shapes \(2, 3\) and \(4,\)"),
    ("lt_shapes", lambda: t(2, 3) < t(4), ValueError, r"^lt: shapes \(2, 3\) and \(4,\)"),
    ("gt_shapes", lambda: t(2, 3) > t(4), ValueError, r"^gt: shapes \(4,\) and \(2, 3\)"),
    ("eq_shapes", lambda: t(2, 3) == t(4), ValueError, r"^eq: shapes"),
    ("where_shapes", lambda: pg.where(t(2, 3) > 0, t(2, 3), t(4)), ValueError, r"^where: shapes \(2, 3\) and \(4,\)"),
    ("matmul_shapes", lambda: t(2, 3) @ t(2, 3), ValueError, r"^matmul: shapes \(2, 3\) and \(2, 3\) are not aligned"),
    ("matmul_1d", lambda: t(3).dot(t(4)), ValueError, r"^matmul: shapes \(3,\) and \(4,\) are not aligned"),
    ("matmul_0d", lambda: Tensor(1.0) @ t(2, 3), ValueError, r"^matmul: both operands need at least one dimension"),
    ("matmul_batch", lambda: t(2, 2, 3) @ t(3, 3, 2), ValueError, r"^matmul: shapes \(2,\) and \(3,\) cannot"),
    ("assign_shape", lambda: t(2, 3).assign(t(3, 2)), ValueError, r"^assign: shapes \(3, 2\) and \(2, 3\)"),
    # mismatched dtypes
    ("add_dtypes", lambda: t(2, 3) + t(2, 3, dtype=F64), TypeError, r"^add: dtypes float32 and float64 differ"),
    ("sub_dtypes", lambda: t(2, 3) - t(2, 3, dtype=F64), TypeError,
     r"^sub: dtypes float32 and float64 .*float32\[2, 3\]"),
    ("div_dtypes", lambda: t(2) / t(2, dtype=F64), TypeError, r"^div: dtypes float32 and float64"),
    ("matmul_dtypes", lambda: t(2, 3) @ t(3, 3, dtype=F64), TypeError, r"^matmul: dtypes float32 and float64"),
    ("neg_bool", lambda: -(t(2) > 0), TypeError, r"^neg: cannot negate a bool tensor \(bool\[2\]\)"),
    ("int_widths", lambda: t(3, dtype=np.int32) + t(3, dtype=np.int64), TypeError, r"^add: dtypes int32 and int64"),
    ("where_cond_dtype", lambda: pg.where(t(2, 3), t(2, 3), t(2, 3)), TypeError,
     r"^where: condition must be a bool tensor, got float32\[2, 3\]"),
    ("assign_dtype", lambda: t(2, 3).assign(t(2, 3, dtype=F64)), ValueError,
     r"^assign: value float64\[2, 3\] does not match float32\[2, 3\]"),
    ("backward_int", lambda: t(2, dtype=np.int64).sum().backward(), TypeError, r"^backward: .*dtype int64"),
    # bad axes
    ("sum_axis", lambda: t(2, 3).sum(axis=2), ValueError, r"^sum: axis 2 is out of range for a tensor with 2 dim"),
    ("sum_neg_axis", lambda: t(2, 3).sum(-3), ValueError, r"^sum: axis -3 is out of range"),
    ("sum_axis_tuple", lambda: t(2, 3).sum(axis=(0, 5)), ValueError, r"^sum: axis 5 is out of range"),
    ("sum_repeated", lambda: t(2, 3).sum(axis=(1, -1)), ValueError, r"^sum: axis 1 repeated"),
    ("sum_float_axis", lambda: t(2, 3).sum(axis=1.0), TypeError, r"^sum: axis must be an int"),
    ("sum_axis_and_dim", lambda: t(2, 3).sum(axis=0, dim=1), TypeError, r"^sum: pass axis= or dim=, not both"),
    ("mean_dim", lambda: t(2, 3).mean(dim=5), ValueError, r"^mean: axis 5 is out of range"),
    ("max_axis", lambda: t(2, 3).max(axis=2), ValueError, r"^max: axis 2 is out of range"),
    ("min_axis", lambda: t(2, 3).min(axis=3), ValueError, r"^min: axis 3 is out of range"),
    ("softmax_axis", lambda: t(2, 3).softmax(2), ValueError, r"^softmax: axis 2 is out of range"),
    ("log_softmax_dim", lambda: t(2, 3).log_softmax(dim=-3), ValueError, r"^log_softmax: axis -3 is out of range"),
    ("softmax_two_axes", lambda: t(2, 3).softmax((0, 1)), ValueError, r"^softmax: expected one axis"),
    ("argmax_axis", lambda: t(2, 3).argmax(axis=4), ValueError, r"^argmax: axis 4 is out of range"),
    ("transpose_axis", lambda: t(2, 3).transpose(0, 2), ValueError, r"^transpose: axis 2 is out of range"),
    ("flatten_axis", lambda: t(2, 3).flatten(3), ValueError, r"^flatten: axis 3 is out of range"),
    ("squeeze_axis", lambda: t(2, 3).squeeze(3), ValueError, r"^squeeze: axis 3 is out of range"),
    ("squeeze_not_one", lambda: t(2, 3).squeeze(0), ValueError, r"^squeeze: axis 0 of shape \(2, 3\) has size 2"),
    ("unsqueeze_axis", lambda: t(2, 3).unsqueeze(4), ValueError, r"^unsqueeze: axis 4 is out of range"),
    ("unsqueeze_neg_axis", lambda: t(2, 3).unsqueeze(-4), ValueError, r"^unsqueeze: axis -4 is out of range"),
    # movement
    ("reshape_size", lambda: t(2, 3).reshape(4), ValueError, r"^reshape: cannot reshape \(2, 3\) \(6 elements\)"),
    ("reshape_two_minus1", lambda: t(2, 3).reshape(-1, -1), ValueError, r"^reshape: only one dimension can be -1"),
    ("reshape_infer", lambda: t(2, 3).reshape(4, -1), ValueError, r"^reshape: cannot reshape \(2, 3\)"),
    ("permute_repeat", lambda: t(2, 3).permute(0, 0), ValueError, r"^permute: \(0, 0\) is not a permutation"),
    ("permute_len", lambda: t(2, 3).permute(0, 1, 2), ValueError, r"^permute: .* of shape \(2, 3\)"),
    ("expand_size", lambda: t(2, 3).expand(4, 3), ValueError, r"^expand: cannot expand shape \(2, 3\) to \(4, 3\)"),
    ("expand_fewer", lambda: t(2, 3).expand(3), ValueError, r"^expand: cannot expand shape \(2, 3\) to fewer"),
    ("expand_new_minus1", lambda: t(3).expand(-1, 3), ValueError, r"^expand: -1 is not allowed for the new leading"),
    ("flatten_order", lambda: t(2, 3, 4).flatten(2, 0), ValueError, r"^flatten: start_dim 2 comes after end_dim 0"),
    ("getitem_bounds", lambda: t(2, 3)[2], IndexError, r"^getitem: index 2 is out of bounds for axis 0 with size 2"),
    ("getitem_neg_bounds", lambda: t(2, 3)[0, -4], IndexError, r"^getitem: index -4 is out of bounds for axis 1"),
    ("getitem_too_many", lambda: t(2, 3)[0, 0, 0], IndexError, r"^getitem: too many indices .* for shape \(2, 3\)"),
    ("getitem_two_ellipses", lambda: t(2, 3)[..., ...], IndexError, r"^getitem: too many indices"),
    ("getitem_list", lambda: t(2, 3)[[0, 1]], TypeError, r"^getitem: only ints, slices, None and \.\.\. are supported"),
    ("getitem_float", lambda: t(2, 3)[0.5], TypeError, r"^getitem: only ints"),
    ("getitem_bool", lambda: t(2, 3)[True], TypeError, r"^getitem: only ints"),
    # scalars out of non-scalars, backward without a gradient
    ("backward_nonscalar", lambda: t(2, 3).backward(), ValueError,
     r"^backward: called on a non-scalar tensor of shape \(2, 3\) without a gradient"),
    ("backward_seed_shape", lambda: t(2, 3).backward(t(3)), ValueError,
     r"^backward: gradient shape \(3,\) differs from tensor shape \(2, 3\)"),
    ("item_nonscalar", lambda: t(2, 3).item(), ValueError, r"^item: only a one-element tensor .* shape \(2, 3\)"),
    ("float_nonscalar", lambda: float(t(2)), ValueError, r"^item: .* shape \(2,\)"),
    ("grad_nonscalar", lambda: pg.grad(lambda x: x * 2)(t(2, 3)), ValueError,
     r"^grad: the function must return a scalar Tensor, got \(2, 3\)"),
    ("len_0d", lambda: len(Tensor(1.0)), TypeError, r"0-d"),
    # constructors and arguments
    ("dropout_p", lambda: t(2).dropout(1.5), ValueError, r"^dropout: p must be in \[0, 1\], got 1.5"),
    ("dropout_neg_p", lambda: t(2).dropout(-0.1), ValueError, r"^dropout: p must be in"),
    ("where_no_tensor", lambda: pg.where(True, 1.0, 2.0), TypeError, r"^where: at least one argument must be a Tensor"),
    ("unknown_device", lambda: Tensor([1.0], device="tpu"), ValueError, r"^Tensor: unknown device 'tpu'"),
    ("string_data", lambda: Tensor(["a"]), TypeError, r"^Tensor: cannot make a tensor from data of dtype <U1"),
    ("negative_shape", lambda: pg.zeros(-1, 2), ValueError, r"expected a shape of non-negative ints, got \(-1, 2\)"),
    ("float_shape", lambda: pg.ones(2.5), ValueError, r"expected a shape of non-negative ints"),
    # losses
    ("nll_target_shape", lambda: F.nll_loss(t(2, 3), Tensor([0, 1, 2])), ValueError, r"^nll_loss: .*\(2, 3\)"),
    ("mse_shapes", lambda: F.mse_loss(t(2, 3), t(4, 5)), ValueError, r"^mse_loss: .*\(4, 5\).*\(2, 3\)"),
    ("cross_entropy_probs", lambda: F.cross_entropy(t(2, 3), Tensor([0.5, 1.0])), TypeError,
     r"^cross_entropy: class targets must be integers, got float32\[2\].*\(2, 3\)"),
    ("cross_entropy_prob_shape", lambda: F.cross_entropy(t(2, 3), t(2, 4)), ValueError, r"^cross_entropy: "),
]


@pytest.mark.parametrize("thunk, exc, pattern", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_error(thunk, exc, pattern: str) -> None:
    with pytest.raises(exc) as info:
        thunk()
    assert re.search(pattern, str(info.value)), f"message {str(info.value)!r} does not match {pattern!r}"


def test_errors_raise_before_any_realize(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build time means no backend runs: with realizing made to fail loudly, each error still comes."""
    import picograd.tensor as tensor_module

    monkeypatch.setattr(tensor_module, "realize_nodes", lambda nodes: pytest.fail("a backend ran before the error"))
    x = t(2, 3) * 2.0 + 1.0  # pending lazy graph
    for _, thunk, exc, _ in CASES:
        with pytest.raises(exc):
            thunk()
    with pytest.raises(ValueError, match="sum: axis 2"):
        x.sum(axis=2)


def test_unknown_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PICOGRAD_BACKEND", "no-such-backend")
    with pytest.raises(ValueError, match="realize: unknown backend 'no-such-backend'"):
        (t(2) * 3.0).numpy()
