"""Whether nothing but its tensor holds a value, told from CPython reference counts: then a jit replay may write
the value's successor over it (picograd's Buffers are otherwise never modified). Counts are compared exactly
with ones calibrated on this interpreter, so a difference either way means "copy"."""

from __future__ import annotations

import sys

import numpy as np

from .ir.node import Buffer, buffer_node
from .tensor import Tensor


def ref_counts(t: Tensor) -> tuple[int, ...] | None:
    """References to t's value at each level (its node, Buffer, array, the array's base); None for a value
    that can't be written over (not a realized CPU array, or a view of a view)."""
    node = t.node
    buf = node.buffer
    if buf is None or node.op != "buffer" or type(buf.data) is not np.ndarray:
        return None
    data = buf.data
    base = data.base
    if base is None:
        return sys.getrefcount(node), sys.getrefcount(buf), sys.getrefcount(data), -1
    if type(base) is not np.ndarray or base.base is not None:
        return None
    return sys.getrefcount(node), sys.getrefcount(buf), sys.getrefcount(data), sys.getrefcount(base)


def calibrate() -> tuple[tuple[int, ...] | None, ...]:
    """ref_counts of values that only their tensor holds, plain and as a view, measured on this
    interpreter (reference counting details differ between Python versions)."""
    counts = []
    for view in (False, True):
        t = Tensor(np.zeros(1, np.float32), requires_grad=False)
        t.node = buffer_node(Buffer(np.zeros(2, np.float32).reshape(1, 2) if view else np.zeros(2, np.float32)))
        counts.append(ref_counts(t))
    return tuple(counts)


_SOLE: list[tuple[tuple[int, ...] | None, ...]] = []


def sole_counts() -> tuple[tuple[int, ...] | None, ...]:
    """calibrate's counts (plain, view), measured once per process."""
    if not _SOLE:
        _SOLE.append(calibrate())
    return _SOLE[0]


def grad_refs(owner: Tensor) -> int:
    """References to the Tensor object that is owner.grad (the caller must hold none)."""
    g = owner.grad
    return sys.getrefcount(g)


_SOLE_GRAD: list[int] = []


def sole_grad() -> int:
    """grad_refs of a gradient that nothing but its tensor's .grad holds, measured once per process."""
    if not _SOLE_GRAD:
        owner = Tensor(np.zeros(1, np.float32), requires_grad=False)
        owner.grad = Tensor(np.zeros(1, np.float32), requires_grad=False)
        _SOLE_GRAD.append(grad_refs(owner))
    return _SOLE_GRAD[0]


def sole_value(t: Tensor) -> bool:
    """True when nothing but t holds its current value: no lazy graph reads it, no other tensor, array or
    view shares it. Then writing t's new value over it is invisible (picograd's Buffers are otherwise never
    modified). Counts are compared exactly with calibrated ones: a difference either way means "copy"."""
    counts = ref_counts(t)
    return counts is not None and counts in sole_counts()
