"""Reductions of a Tensor (sum, mean, max, min, argmax, argmin, softmax, log_softmax), as a mixin of Tensor.

Integer and bool sums accumulate in 64 bits as numpy's do; max-like reductions refuse empty axes (they have no
identity); softmax-like ops take one axis (axis= or dim=, the last by default)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .ir import build as B
from .ir.node import Node
from .ir.shape import normalize_axes, prod


class ReduceOps:
    """Uses Tensor's construction (_make) and elementwise ops (tensor_ops.TensorOps)."""

    __slots__ = ()
    node: Node

    def _axes(self, op: str, axis: Any, dim: Any) -> tuple[int, ...]:
        if axis is not None and dim is not None:
            raise TypeError(f"{op}: pass axis= or dim=, not both")
        return normalize_axes(op, axis if dim is None else dim, len(self.node.shape))

    def _one_axis(self, op: str, axis: Any, dim: Any) -> int:
        """The single axis of softmax-like ops: axis= or dim=, the last axis when neither is given."""
        axes = self._axes(op, -1 if axis is None and dim is None else axis, dim)
        if len(axes) != 1:
            raise ValueError(f"{op}: expected one axis, got {axis if dim is None else dim} for shape {self.node.shape}")
        return axes[0]

    def _scalar_axis(self, op: str, axis: Any, dim: Any) -> Any:
        """self (0-d), after checking that the axis given to a softmax-like op is one a 0-d tensor has (-1 or 0,
        as torch)."""
        if axis is not None and dim is not None:
            raise TypeError(f"{op}: pass axis= or dim=, not both")
        a = axis if dim is None else dim
        if a is not None and a not in (-1, 0):
            raise ValueError(f"{op}: axis {a} is out of range for a 0-d tensor (use -1 or 0)")
        return self

    def _reduce(self, op: str, axes: tuple[int, ...], keepdims: bool) -> Any:
        x = self.node
        if op == "reduce_sum" and x.dtype.kind in "biu":
            # numpy's accumulator: bool and signed ints sum to int64, unsigned to uint64 (a uint8 sum of
            # [200, 100, 255] is 555, not 43)
            x = B.cast(x, np.dtype(np.uint64 if x.dtype.kind == "u" else np.int64))
        r = B.reduce(op, x, axes)
        if not keepdims:
            r = B.reshape(r, tuple(s for i, s in enumerate(x.shape) if i not in axes))
        return self._make(r)

    def sum(self, axis: Any = None, keepdims: bool = False, dim: Any = None) -> Any:
        return self._reduce("reduce_sum", self._axes("sum", axis, dim), keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False, dim: Any = None) -> Any:
        axes = self._axes("mean", axis, dim)
        x = self if self.node.dtype.kind == "f" else self.float()
        n = prod(self.node.shape[a] for a in axes)
        # the mean of no elements is 0/0 = NaN, as in numpy and torch
        return x._reduce("reduce_sum", axes, keepdims) / float(n)  # divided, as numpy's mean is

    def max(self, axis: Any = None, keepdims: bool = False, dim: Any = None) -> Any:
        return self._reduce("reduce_max", self._nonempty_axes("max", axis, dim), keepdims)

    def min(self, axis: Any = None, keepdims: bool = False, dim: Any = None) -> Any:
        axes = self._nonempty_axes("min", axis, dim)
        flipped, back = self._reverse_order()
        return back(flipped.max(axes, keepdims))

    def _nonempty_axes(self, op: str, axis: Any, dim: Any) -> tuple[int, ...]:
        """The axes of a max-like reduction, which has no identity: over an empty axis it is an error (numpy's
        too; torch's also for argmax), named after the op the user called."""
        axes = self._axes(op, axis, dim)
        empty = [a for a in axes if self.node.shape[a] == 0]
        if empty:
            raise ValueError(f"{op}: cannot reduce over axis {empty[0]} of size 0 (shape {self.node.shape}): "
                             f"{op} of an empty sequence has no value")
        return axes

    def argmax(self, axis: int | None = None, dim: int | None = None) -> Any:
        """Index of the first maximum along one axis, or into the flattened tensor when no axis is given (as
        numpy and torch do). int64, no gradient."""
        return self._arg("argmax", axis, dim)

    def argmin(self, axis: int | None = None, dim: int | None = None) -> Any:
        """Index of the first minimum, as argmax."""
        return self._arg("argmin", axis, dim)

    def _arg(self, op: str, axis: Any, dim: Any) -> Any:
        x = self.detach()
        if not x.node.shape:  # one element along axis 0 or -1, as torch's
            x, ax = x._scalar_axis(op, axis, dim).reshape(1), 0
        elif axis is None and dim is None:
            self._nonempty_axes(op, None, None)
            x, ax = x.reshape(prod(x.node.shape)), 0
        else:
            ax = x._one_axis(op, axis, dim)
            x._nonempty_axes(op, ax, None)
        n = x.node.shape[ax]
        idx = self._make(B.iota(x.node.shape, ax, np.dtype(np.int64)))
        best = x.max(ax, keepdims=True) if op == "argmax" else x.min(ax, keepdims=True)
        hit = x == best
        if x.node.dtype.kind == "f":  # a NaN is the extreme, as in numpy and torch: then the first NaN hits
            hit = best._where(best == best, hit, x != x)
        # the smallest index that hits; indices are non-negative, so min by negation cannot overflow
        return -(-hit._where(hit, idx, n)).max(ax)

    def softmax(self, axis: int | None = None, dim: int | None = None) -> Any:
        if not self.node.shape:  # as torch: a 0-d tensor is one element along axis -1 or 0
            return self._scalar_axis("softmax", axis, dim).reshape(1).softmax(0).reshape(())
        ax = self._one_axis("softmax", axis, dim)
        if self.node.shape[ax] == 0:  # nothing to normalize (torch returns the empty tensor; its max would raise)
            return self if self.node.dtype.kind == "f" else self.float()
        e = (self - self.detach().max(ax, keepdims=True)).exp()
        return e / e.sum(ax, keepdims=True)

    def log_softmax(self, axis: int | None = None, dim: int | None = None) -> Any:
        if not self.node.shape:
            return self._scalar_axis("log_softmax", axis, dim).reshape(1).log_softmax(0).reshape(())
        ax = self._one_axis("log_softmax", axis, dim)
        if self.node.shape[ax] == 0:
            return self if self.node.dtype.kind == "f" else self.float()
        z = self - self.detach().max(ax, keepdims=True)
        return z - z.exp().sum(ax, keepdims=True).log()

