"""Movement and indexing of a Tensor (reshape, permute, transpose, expand, flatten, (un)squeeze, basic
indexing and indexed assignment), as a mixin of Tensor. Each is a view in the IR (reshape, permute, expand,
slice); t[idx] = v is a where() over a padded region, so gradients reach both the value and the old tensor."""

from __future__ import annotations

from typing import Any

import numpy as np

from .ir import build as B
from .ir.node import Node
from .ir.shape import broadcast_shapes, normalize_axes, prod
from .tensor_ops import _broadcast_to, _promote, _shape_args


class ShapeOps:
    """Uses Tensor's construction (_make, _assign_value, _set_value)."""

    __slots__ = ()
    node: Node

    def reshape(self, *shape: Any) -> Any:
        return self._make(B.reshape(self.node, _shape_args(shape, "reshape")))

    view = reshape

    def permute(self, *order: Any) -> Any:
        return self._make(B.permute(self.node, _shape_args(order, "permute")))

    def transpose(self, a: int = -2, b: int = -1) -> Any:
        n = len(self.node.shape)
        if n < 2:
            if (a, b) != (-2, -1):  # the default swap is the identity here (as .T); a given axis must exist
                normalize_axes("transpose", (a,), n)
                normalize_axes("transpose", (b,), n)
            return self
        order = list(range(n))
        a, b = normalize_axes("transpose", a, n)[0], normalize_axes("transpose", b, n)[0]
        order[a], order[b] = order[b], order[a]
        return self.permute(order)

    T = property(lambda self: self.permute(tuple(reversed(range(len(self.node.shape))))))

    def expand(self, *shape: Any) -> Any:
        shape = _shape_args(shape, "expand")
        x = self.node
        new = len(shape) - len(x.shape)
        if new < 0:
            raise ValueError(f"expand: cannot expand shape {x.shape} to fewer dimensions {shape}")
        if -1 in shape[:new]:
            raise ValueError(f"expand: -1 is not allowed for the new leading dimensions in {shape} (from {x.shape})")
        if any(s < -1 for s in shape):
            raise ValueError(f"expand: negative size in {shape} (from {x.shape}; only -1, keep the size, is allowed)")
        full = tuple(x.shape[i - new] if s == -1 else s for i, s in enumerate(shape))
        return self._make(_broadcast_to(x, full))

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Any:
        s = self.node.shape
        if not s:
            return self.reshape(1)
        a, b = normalize_axes("flatten", start_dim, len(s))[0], normalize_axes("flatten", end_dim, len(s))[0]
        if a > b:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for shape {s}")
        return self.reshape(s[:a] + (prod(s[a : b + 1]),) + s[b + 1 :])

    def unsqueeze(self, axis: int) -> Any:
        s = list(self.node.shape)
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"unsqueeze: axis must be an int, got {type(axis).__name__} {axis!r}")
        axis = int(axis)
        if not -len(s) - 1 <= axis <= len(s):
            raise ValueError(f"unsqueeze: axis {axis} is out of range for a tensor with {len(s)} dimension(s)")
        axis = axis % (len(s) + 1)
        return self.reshape(s[:axis] + [1] + s[axis:])

    def squeeze(self, axis: Any = None) -> Any:
        s = self.node.shape
        axes = [i for i, d in enumerate(s) if d == 1] if axis is None else normalize_axes("squeeze", axis, len(s))
        for a in axes:
            if s[a] != 1:
                raise ValueError(f"squeeze: axis {a} of shape {s} has size {s[a]}, not 1")
        return self.reshape(tuple(d for i, d in enumerate(s) if i not in axes))

    def __getitem__(self, idx: Any) -> Any:
        """Basic indexing: ints, slices (any step), None and Ellipsis."""
        slices, out_shape = self._index("getitem", idx)
        return self._make(B.reshape(B.slice_(self.node, slices), out_shape))

    def _index(self, op: str, idx: Any) -> tuple[list[tuple[int, int, int]], tuple[int, ...]]:
        """A basic index as one normalized (start, stop, step) per axis, and the shape it gives (None adds 1)."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        shape = self.node.shape
        bad = next((i for i in idx if not isinstance(i, (int, np.integer, slice, type(None), type(Ellipsis)))
                    or isinstance(i, bool)), None)
        if bad is not None:
            what = (f"{type(bad).__name__} {bad.dtype}{list(bad.shape)}" if hasattr(bad, "shape") and
                    hasattr(bad, "dtype") else f"{type(bad).__name__} {bad!r}")
            raise TypeError(f"{op}: only ints, slices, None and ... are supported, got {what} for shape {shape} "
                            f"(no bool masks or integer-array indices: use where(mask, x, 0) or a one-hot matmul)")
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        if n_real > len(shape) or sum(1 for i in idx if i is Ellipsis) > 1:
            raise IndexError(f"{op}: too many indices {idx!r} for shape {shape}")
        if Ellipsis in idx:
            k = idx.index(Ellipsis)
            idx = idx[:k] + (slice(None),) * (len(shape) - n_real) + idx[k + 1 :]
        else:
            idx = idx + (slice(None),) * (len(shape) - n_real)
        slices, out_shape, axis = [], [], 0
        for i in idx:
            if i is None:
                out_shape.append(1)
                continue
            dim = shape[axis]
            if isinstance(i, slice):
                try:
                    s = i.indices(dim)
                except (TypeError, ValueError) as e:  # a zero step, non-integer bounds
                    raise type(e)(f"{op}: bad slice {i!r} for axis {axis} of shape {shape}: {e}") from e
                slices.append(s)
                out_shape.append(len(range(*s)))
            else:
                if not -dim <= int(i) < dim:
                    raise IndexError(f"{op}: index {i} is out of bounds for axis {axis} with size {dim}")
                j = int(i) % dim
                slices.append((j, j + 1, 1))
            axis += 1
        # an empty range as (0, 0, 1): e.g. (-1, -1, -1) would read as "from the last element" in a numpy slice
        return [(0, 0, 1) if len(range(*s)) == 0 else s for s in slices], tuple(out_shape)

    def __setitem__(self, idx: Any, value: Any) -> None:
        """t[idx] = v (basic indices, v broadcast to t[idx]), as numpy and torch: t takes the new value, which is
        where(inside idx, v, t) — so gradients flow to v inside and to t's old value outside."""
        self._check_writable("setitem")
        slices, out_shape = self._index("setitem", idx)
        v = self._assign_value(value, "setitem")  # host data on this tensor's device, in its dtype if lossless
        x = self.node
        if v.node.device is not None and x.device is not None and v.node.device != x.device:
            raise ValueError(f"setitem: value {v.node.dtype}{list(v.node.shape)} is on device {v.node.device!r}, the "
                             f"tensor {x.dtype}{list(x.shape)} on {x.device!r}; move it with .to({x.device!r})")
        if v.node.dtype != x.dtype:
            vn, _ = _promote("setitem", v.node, x)
            if vn.dtype != x.dtype:  # as t += x: the tensor's dtype stays
                raise TypeError(f"setitem: a {v.node.dtype}{list(v.node.shape)} value cannot be stored in "
                                f"{x.dtype}{list(x.shape)} without a cast (as numpy's same-kind rule)")
            v = self._make(vn)
        region = tuple(len(range(*s)) for s in slices)
        vshape = v.node.shape
        while len(vshape) > len(out_shape) and vshape[0] == 1:  # leading 1s go, as numpy's
            vshape = vshape[1:]
        if broadcast_shapes("setitem", vshape, out_shape) != out_shape:
            raise ValueError(f"setitem: value of shape {v.node.shape} cannot be broadcast to the indexed shape "
                             f"{out_shape}")
        vn = _broadcast_to(B.reshape(v.node, vshape), out_shape)
        inside = B.pad(B.const(True, np.dtype(np.bool_), region), x.shape, tuple(slices))
        new = B.where(inside, B.pad(B.reshape(vn, region), x.shape, tuple(slices)), x)
        self._set_value(self._make(new), "setitem")

