"""Checked constructors for IR nodes: shape and dtype inference happen here, at build time.

The Tensor front end and autodiff both build graphs only through these functions, so nothing
ill-typed can reach the interpreter or a code generator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import ops
from .node import Node, make
from .shape import check_expand, check_permute, matmul_shape, normalize_axes, resolve_reshape, slice_shape

BOOL = np.dtype(np.bool_)
UINT32 = np.dtype(np.uint32)


def _fmt(n: Node) -> str:
    return f"{n.dtype}{list(n.shape)}"


def _same(op: str, *srcs: Node) -> None:
    a = srcs[0]
    for b in srcs[1:]:
        if b.shape != a.shape:
            raise ValueError(f"{op}: shapes {a.shape} and {b.shape} differ (broadcast first)")
        if b.dtype != a.dtype:
            raise TypeError(f"{op}: dtypes {a.dtype} and {b.dtype} differ ({_fmt(a)} vs {_fmt(b)})")
        if a.device and b.device and b.device != a.device:
            raise ValueError(f"{op}: operands are on different devices ({a.device} and {b.device})")


def _float(op: str, x: Node) -> None:
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: expected a floating-point tensor, got {_fmt(x)}")


def const(value: Any, dtype: np.dtype, shape: tuple[int, ...] = ()) -> Node:
    """A scalar constant broadcast to shape; constants take the device of whatever they meet."""
    dtype = np.dtype(dtype)
    v = bool(value) if dtype.kind == "b" else int(value) if dtype.kind in "iu" else float(value)
    n = make(ops.CONST, (), dtype, (), v)
    return expand(reshape(n, (1,) * len(shape)), shape) if shape else n


def iota(shape: tuple[int, ...], axis: int, dtype: np.dtype) -> Node:
    return make(ops.IOTA, (), np.dtype(dtype), tuple(shape), axis)


def rand(seed: Node, shape: tuple[int, ...], dtype: np.dtype) -> Node:
    if seed.dtype != UINT32 or seed.shape != ():
        raise TypeError(f"rand: seed must be a uint32 scalar, got {_fmt(seed)}")
    return make(ops.RAND, (seed,), np.dtype(dtype), tuple(shape))


def unary(op: str, x: Node) -> Node:
    if op not in ("neg", "detach"):
        _float(op, x)
    if op == "neg" and x.dtype.kind == "b":  # numpy refuses it too, but only when it runs
        raise TypeError(f"neg: cannot negate a bool tensor ({_fmt(x)}); cast it to a number first")
    return make(op, (x,), x.dtype, x.shape)


def cast(x: Node, dtype: np.dtype) -> Node:
    dtype = np.dtype(dtype)
    return x if x.dtype == dtype else make("cast", (x,), dtype, x.shape, dtype)


def binary(op: str, a: Node, b: Node) -> Node:
    _same(op, a, b)
    if op in ("pow", "div"):  # (div: a true division, correctly rounded as numpy's; ints are cast first)
        _float(op, a)
    return make(op, (a, b), BOOL if op in ops.COMPARE else a.dtype, a.shape)


def where(c: Node, a: Node, b: Node) -> Node:
    if c.dtype != BOOL:
        raise TypeError(f"where: condition must be bool, got {_fmt(c)}")
    if c.shape != a.shape:
        raise ValueError(f"where: condition shape {c.shape} differs from {a.shape} (broadcast first)")
    _same("where", a, b)
    devices = {n.device for n in (c, a, b) if n.device}
    if len(devices) > 1:  # (_same compares a with b only: a constant branch has no device to compare)
        raise ValueError(f"where: condition {_fmt(c)} on {c.device}, branches on {a.device} and {b.device}: "
                         "operands are on different devices")
    return make("where", (c, a, b), a.dtype, a.shape)


def reduce(op: str, x: Node, axes: Sequence[int]) -> Node:
    axes = normalize_axes(op, tuple(axes), len(x.shape))
    if not axes:
        return x
    shape = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
    if op == "reduce_max" and any(x.shape[a] == 0 for a in axes):
        raise ValueError(f"{op}: cannot take the max over an empty axis of shape {x.shape}")
    return make(op, (x,), x.dtype, shape, axes)


def reshape(x: Node, shape: Sequence[int]) -> Node:
    shape = resolve_reshape("reshape", x.shape, shape)
    if shape == x.shape:
        return x
    if x.op == "reshape":  # reshape of reshape is one reshape: keeps graphs and keys small
        x = x.srcs[0]
        if shape == x.shape:
            return x
    return make("reshape", (x,), x.dtype, shape, shape)


def permute(x: Node, order: Sequence[int]) -> Node:
    order = check_permute("permute", x.shape, order)
    if order == tuple(range(len(order))):
        return x
    return make("permute", (x,), x.dtype, tuple(x.shape[o] for o in order), order)


def expand(x: Node, shape: Sequence[int]) -> Node:
    shape = tuple(shape)
    check_expand("expand", x.shape, shape)
    return x if shape == x.shape else make("expand", (x,), x.dtype, shape, shape)


def slice_(x: Node, slices: Sequence[tuple[int, int, int]]) -> Node:
    # An empty range is canonically (0, 0, 1): slice.indices can give e.g. (-1, -1, -1), whose -1 start
    # a numpy slice or a generated loop would read as "the last element".
    slices = tuple((0, 0, 1) if len(range(*s)) == 0 else tuple(s) for s in slices)
    shape = slice_shape("slice", x.shape, slices)
    if all(s == (0, n, 1) for s, n in zip(slices, x.shape)):
        return x
    return make("slice", (x,), x.dtype, shape, slices)


def pad(x: Node, full_shape: tuple[int, ...], slices: tuple[tuple[int, int, int], ...]) -> Node:
    """The adjoint of slice: place x at `slices` inside zeros of `full_shape`."""
    if slice_shape("pad", full_shape, slices) != x.shape:
        raise ValueError(f"pad: {x.shape} does not fit slices {slices} of {full_shape}")
    return make("pad", (x,), x.dtype, tuple(full_shape), (tuple(full_shape), slices))


def matmul(a: Node, b: Node) -> Node:
    if a.dtype != b.dtype:
        raise TypeError(f"matmul: dtypes {a.dtype} and {b.dtype} differ ({_fmt(a)} @ {_fmt(b)})")
    if a.device and b.device and a.device != b.device:
        raise ValueError(f"matmul: operands are on different devices ({a.device} and {b.device})")
    _float("matmul", a)
    return make(ops.MATMUL, (a, b), a.dtype, matmul_shape("matmul", a.shape, b.shape))


def grad(root: Node, wrt: Node, seed: Node | None = None) -> Node:
    """A placeholder for d root / d wrt, expanded by ir.autodiff.expand_grads."""
    if root.dtype.kind != "f" or wrt.dtype.kind != "f":
        raise TypeError(f"grad: only float tensors are differentiable, got {_fmt(root)} w.r.t. {_fmt(wrt)}")
    if seed is None and root.shape != ():
        raise ValueError(f"grad: root must be a scalar, got shape {root.shape}; pass a seed gradient")
    if seed is not None and (seed.shape != root.shape or seed.dtype != root.dtype):
        raise ValueError(f"grad: seed gradient {_fmt(seed)} does not match root {_fmt(root)}")
    if seed is not None and seed.device and root.device and seed.device != root.device:
        raise ValueError(f"grad: seed gradient {_fmt(seed)} is on {seed.device}, the root {_fmt(root)} on "
                         f"{root.device}")
    return make(ops.GRAD, (root, wrt) if seed is None else (root, wrt, seed), wrt.dtype, wrt.shape)


# Small algebra used by autodiff and the front end.
def add(a: Node, b: Node) -> Node:
    return binary("add", a, b)


def mul(a: Node, b: Node) -> Node:
    return binary("mul", a, b)


def neg(x: Node) -> Node:
    return unary("neg", x)


def full_like(x: Node, value: Any) -> Node:
    return const(value, x.dtype, x.shape)


def swap_last(x: Node) -> Node:
    n = len(x.shape)
    return permute(x, tuple(range(n - 2)) + (n - 1, n - 2))
