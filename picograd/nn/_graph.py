"""IR-level builders for the hot paths of a training step (linear layers, ReLU, the class-index losses,
optimizer updates).

Every step rebuilds its graph in Python before the cached program runs, so that work is pure
overhead. The general Tensor ops pay for scalar lifting, dtype promotion and broadcasting checks on
every call; here the shapes are known to fit, broadcast constants are built once and kept (hash-
consing then hands back the same node), and only the Tensor that the caller sees is wrapped. The
nodes are exactly those the Tensor ops would build, so results and program keys are the same."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import tensor as _tensor
from ..ir import build as B
from ..ir.node import Buffer, Node, buffer_node

# (value, dtype, shape) -> broadcast constant node. Holding them keeps the hash-consed nodes alive, so a
# repeat build is one dict lookup. Bounded by the distinct shapes a program uses.
_consts: dict[tuple[Any, str, tuple[int, ...]], Node] = {}


def const(value: Any, dtype: np.dtype, shape: tuple[int, ...]) -> Node:
    key = (value, dtype.str, shape)
    n = _consts.get(key)
    if n is None:
        if len(_consts) > 4096:  # many shapes (e.g. a sweep): start over rather than grow without bound
            _consts.clear()
        n = _consts[key] = B.const(value, dtype, shape)
    return n


def scalar(value: float, dtype: np.dtype, device: str) -> Node:
    """A fresh 0-d buffer: a runtime scalar whose value may change every step without changing the
    program's structure (learning rate, bias corrections)."""
    arr = np.array(value, dtype=dtype)
    return buffer_node(Buffer(_tensor.to_device[device](arr), device))


def broadcast(x: Node, shape: tuple[int, ...]) -> Node:
    """numpy broadcasting of x (aligned on the trailing axes) to shape: reshape, then expand."""
    if x.shape == shape:
        return x
    return B.expand(B.reshape(x, (1,) * (len(shape) - len(x.shape)) + x.shape), shape)


def linear(x: Node, w: Node, b: Node | None) -> Node:
    """(N, in) @ (out, in).T + (out,)"""
    out = B.matmul(x, B.permute(w, (1, 0)))
    return out if b is None else B.add(out, broadcast(b, out.shape))


def relu(x: Node) -> Node:
    """where(0 < x, x, 0): the same nodes as Tensor.relu."""
    zero = const(0.0, x.dtype, x.shape)
    return B.where(B.binary("cmplt", zero, x), x, zero)


def class_mask(target: Node, num_classes: int) -> Node:
    """(N, C) bool, True where the column index equals the row's target class.

    The comparison is made in int64: a column index built in a small target dtype (uint8, int16) would
    wrap past its range, so class 3 of a uint8 target would also match column 259."""
    shape = (target.shape[0], num_classes)
    if target.dtype != np.int64:
        target = B.cast(target, np.dtype(np.int64))
    cols = B.iota(shape, 1, np.dtype(np.int64))
    return B.binary("cmpeq", cols, B.expand(B.reshape(target, (shape[0], 1)), shape))


def masked_row_sum(mask: Node, x: Node) -> Node:
    """sum over axis 1 of where(mask, x, 0): picks each row's target entry. Shape (N,)."""
    picked = B.reduce("reduce_sum", B.where(mask, x, const(0.0, x.dtype, x.shape)), (1,))
    return B.reshape(picked, (x.shape[0],))


def sub(a: Node, b: Node) -> Node:
    return B.add(a, B.neg(b))


def mean(x: Node) -> Node:
    """Mean over all axes, to shape (). The mean of no elements is NaN (0/0), as in numpy and PyTorch."""
    total = B.reshape(B.reduce("reduce_sum", x, tuple(range(len(x.shape)))), ())
    return B.mul(total, const(1.0 / x.size if x.size else float("nan"), x.dtype, ()))
