"""Tensor operations, as a mixin of Tensor: each lowers to IR primitives through ir.build.

Broadcasting, scalar lifting and dtype promotion happen here, so the IR only ever sees operands of
equal shape and dtype."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .ir import build as B
from .ir.node import Node
from .ir.shape import broadcast_shapes, normalize_axes, prod

FLOAT32 = np.dtype(np.float32)


def _promote(op: str, a: Node, b: Node) -> tuple[Node, Node]:
    """bool < int < float: the lower kind is cast up. Two floats (or two ints) of different width
    are an error rather than a silent float64 promotion."""
    if a.dtype == b.dtype:
        return a, b
    rank = {"b": 0, "i": 1, "u": 1, "f": 2}
    ra, rb = rank[a.dtype.kind], rank[b.dtype.kind]
    if ra == rb:
        raise TypeError(f"{op}: dtypes {a.dtype} and {b.dtype} differ ({a.dtype}{list(a.shape)} vs "
                        f"{b.dtype}{list(b.shape)}); cast one explicitly")
    return (B.cast(a, b.dtype), b) if ra < rb else (a, B.cast(b, a.dtype))


def _broadcast_to(x: Node, shape: tuple[int, ...]) -> Node:
    if x.shape == shape:
        return x
    x = B.reshape(x, (1,) * (len(shape) - len(x.shape)) + x.shape)
    return B.expand(x, shape)


def _shape_args(shape: Sequence[Any], op: str = "reshape") -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    bad = [s for s in shape if not isinstance(s, (int, np.integer)) or isinstance(s, (bool, np.bool_))]
    if bad:
        raise TypeError(f"{op}: expected integers, got {tuple(shape)!r} ({type(bad[0]).__name__} {bad[0]!r})")
    return tuple(int(s) for s in shape)


_COMPARE = {"cmplt": lambda a, b: a < b, "cmple": lambda a, b: a <= b, "cmpeq": lambda a, b: a == b,
            "cmpne": lambda a, b: a != b}


def _int_scalar_out_of_range(x: Any, dt: np.dtype) -> bool:
    """x is a Python (or numpy) integer that the integer dtype dt cannot hold."""
    if not isinstance(x, (int, np.integer)) or isinstance(x, (bool, np.bool_)) or dt.kind not in "iu":
        return False
    info = np.iinfo(dt)
    return not info.min <= int(x) <= info.max


class TensorOps:
    __slots__ = ()
    node: Node

    # Subclasses provide construction from a node (which realizes at once in eager mode).
    @staticmethod
    def _make(node: Node) -> Any:
        raise NotImplementedError

    def _lift(self, x: Any, op: str | None = None) -> Any:
        raise NotImplementedError

    # ---- elementwise ------------------------------------------------------------------------------
    def _binary(self, op: str, other: Any, reverse: bool = False, name: str | None = None) -> Any:
        """name: the user-facing op that errors report (a - b is built as a + (-b), a > b as b < a)."""
        if op in _COMPARE and self.node.dtype.kind in "iub":
            dt = self.node.dtype if self.node.dtype.kind != "b" else np.dtype(np.int64)
            if _int_scalar_out_of_range(other, dt):
                # as numpy: a comparison with an integer the dtype cannot hold has the mathematically right
                # answer, which is the same for every value of the tensor (0 stands for any of them)
                a, b = (other, 0) if reverse else (0, other)
                return self._full(bool(_COMPARE[op](int(a), int(b))), np.dtype(np.bool_))
        o = self._lift(other, name or op)
        a, b = (o.node, self.node) if reverse else (self.node, o.node)
        a, b = _promote(name or op, a, b)
        shape = broadcast_shapes(name or op, a.shape, b.shape)
        return self._make(B.binary(op, _broadcast_to(a, shape), _broadcast_to(b, shape)))

    def _unary(self, op: str) -> Any:
        x = self.node
        if x.dtype.kind != "f" and op != "neg":
            x = B.cast(x, FLOAT32)
        return self._make(B.unary(op, x))

    def __add__(self, o: Any) -> Any:
        return self._binary("add", o)

    def __radd__(self, o: Any) -> Any:
        return self._binary("add", o, True)

    def __mul__(self, o: Any) -> Any:
        return self._binary("mul", o)

    def __rmul__(self, o: Any) -> Any:
        return self._binary("mul", o, True)

    def __neg__(self) -> Any:
        return self._unary("neg")

    def __sub__(self, o: Any) -> Any:
        return self._sub(self._lift(o, "sub"), False)

    def __rsub__(self, o: Any) -> Any:
        return self._sub(self._lift(o, "sub"), True)

    def _sub(self, o: Any, reverse: bool) -> Any:
        """a - b as a + (-b), after promotion: a bool operand meeting a number is that number's type first (1 - mask
        is an int, as numpy's), and only bool - bool is refused (numpy refuses it too)."""
        a, b = (o, self) if reverse else (self, o)
        if a.node.dtype.kind == "b" and b.node.dtype.kind == "b":
            raise TypeError(f"sub: cannot subtract bool tensors ({a.node.dtype}{list(a.node.shape)} - {b.node.dtype}"
                            f"{list(b.node.shape)}); use logical ops (a != b) or cast to a number first")
        an, bn = _promote("sub", a.node, b.node)
        a = a if an is a.node else self._make(an)
        b = b if bn is b.node else self._make(bn)
        return a._binary("add", -b, name="sub")

    def __truediv__(self, o: Any) -> Any:
        o = self._lift(o, "div")
        if self.node.dtype.kind != "f" and o.node.dtype.kind != "f":
            return self.float() / o.float()
        return self._binary("div", o)

    def __rtruediv__(self, o: Any) -> Any:
        return self._lift(o, "div") / self

    def __pow__(self, o: Any) -> Any:
        kind = self.node.dtype.kind
        if kind in "iub" and isinstance(o, (int, np.integer)) and not isinstance(o, (bool, np.bool_)):
            if o < 0:  # numpy and torch refuse it too: the result is not an integer
                raise ValueError(f"pow: integers to negative integer powers are not allowed ({self.node.dtype}"
                                 f"{list(self.node.shape)} ** {o}); cast the tensor to float first")
            # a bool base counts as 0/1 in int64, as torch's (numpy's int8 would wrap at 2**7)
            base = self if kind != "b" else self._make(B.cast(self.node, np.dtype(np.int64)))
            return base._int_pow(int(o))
        if kind != "f" and isinstance(o, (float, np.floating)):
            return self.float() ** o  # a float exponent gives a float result, also for o == 2 (torch: float32)
        if isinstance(o, (int, float)) and not isinstance(o, bool):
            if o == 2:  # the common square: exact, and its gradient needs no pow
                return self * self
            if o == 1:
                return self
            if o == 0.5:
                return self.sqrt()
            if o == -1:
                return self.reciprocal()
        return self._binary("pow", self._int_pow_check(self._lift(o, "pow"), False))

    def _int_pow(self, k: int) -> Any:
        """An integer tensor to a non-negative integer power, in its own dtype (wrapping as numpy does): the IR's
        pow is float only, so square-and-multiply, which is exact."""
        out, base = None, self
        while True:
            if k & 1:
                out = base if out is None else out * base
            k >>= 1
            if not k:
                break
            base = base * base
        return out if out is not None else self._full(1, self.node.dtype)

    def _full(self, value: Any, dtype: np.dtype) -> Any:
        """A result that is one value whatever the tensor holds, with its shape and on its device: an IR constant
        has no device, so on a GPU it is made on the host and moved there (as a constant, it reads nothing:
        no gradient flows through it on either device)."""
        if self.node.device in (None, "cpu"):
            return self._make(B.const(value, dtype, self.node.shape))
        return type(self)(np.full(self.node.shape, value, dtype), dtype=dtype, requires_grad=False,
                          device=self.node.device, copy=False)

    def __rpow__(self, o: Any) -> Any:
        return self._binary("pow", self._int_pow_check(self._lift(o, "pow"), True), True)

    def _int_pow_check(self, o: Any, reverse: bool) -> Any:
        """o, unless the power would be integer ** integer tensor: the IR's pow is float only, and only a scalar
        exponent has the exact square-and-multiply form."""
        if self.node.dtype.kind != "f" and o.node.dtype.kind != "f":
            a, b = (o.node, self.node) if reverse else (self.node, o.node)
            raise TypeError(f"pow: integer powers with an integer tensor exponent are not supported ({a.dtype}"
                            f"{list(a.shape)} ** {b.dtype}{list(b.shape)}); cast the base to float first")
        return o

    def exp(self) -> Any:
        return self._unary("exp")

    def log(self) -> Any:
        return self._unary("log")

    def sqrt(self) -> Any:
        return self._unary("sqrt")

    def sin(self) -> Any:
        return self._unary("sin")

    def cos(self) -> Any:
        return self._unary("cos")

    def tanh(self) -> Any:
        return self._unary("tanh")

    def reciprocal(self) -> Any:
        return self._unary("recip")

    def sigmoid(self) -> Any:
        """Stable in value and gradient: with e = exp(-|x|) (never overflows), 1 / (1 + e) for x >= 0 and
        e / (1 + e) below. (1 / (1 + exp(-x)) alone has gradient 0 * inf = NaN below about -88.)"""
        x = self if self.node.dtype.kind == "f" else self.float()
        pos = x >= 0
        e = x._where(pos, -x, x).exp()
        r = (e + 1.0).reciprocal()
        return x._where(pos, r, e * r)

    def relu(self) -> Any:
        return self.where_positive(self, 0)  # the int 0 takes the tensor's dtype: an integer relu stays integer

    def leaky_relu(self, negative_slope: float = 0.01) -> Any:
        return self.where_positive(self, self * negative_slope)

    def where_positive(self, a: Any, b: Any) -> Any:
        return self._where(self > 0, a, b)

    def abs(self) -> Any:
        if self.node.dtype.kind == "b":
            return self  # (numpy's abs of a bool array is itself)
        if self.node.dtype.kind != "f":
            return self._where(self < 0, -self, self)
        # Gradient sign(x), as torch's: 0 at +-0 (where(x < 0, -x, x) alone takes the x branch there: 1); the
        # value is np.abs's, +0 at -0; NaN passes through detached.
        return self._where(self < 0, -self, self._where(self > 0, self, self._where(self == self, 0.0, self.detach())))

    def _where(self, cond: Any, a: Any, b: Any) -> Any:
        if isinstance(cond, (bool, np.bool_)):
            c = self._make(B.const(bool(cond), np.dtype(np.bool_)))
        else:
            c = self._lift(cond, "where")
        a, b = self._lift(a, "where"), self._lift(b, "where")
        if c.node.dtype.kind != "b":
            raise TypeError(f"where: condition must be a bool tensor, got {c.node.dtype}{list(c.node.shape)}")
        an, bn = _promote("where", a.node, b.node)
        shape = broadcast_shapes("where", broadcast_shapes("where", c.node.shape, an.shape), bn.shape)
        return self._make(B.where(*(_broadcast_to(n, shape) for n in (c.node, an, bn))))

    def maximum(self, o: Any) -> Any:
        return self._binary("max", o, name="maximum")

    def minimum(self, o: Any) -> Any:
        o = self._lift(o, "minimum")
        a, b = _promote("minimum", self.node, o.node)
        if a.dtype.kind == "f":
            return -((-self._make(a))._binary("max", -self._make(b), name="minimum"))
        fa, back = self._make(a)._reverse_order()
        fb, _ = self._make(b)._reverse_order()
        return back(fa._binary("max", fb, name="minimum"))

    def _reverse_order(self) -> tuple[Any, Any]:
        """An order-reversing map of this tensor, and its inverse, exact for every dtype, so that min is max of
        the map: negation for floats. Integer negation overflows (-(-128) is -128 in int8, -1 is 255 in uint8),
        so narrower integers are negated in int64, and 64-bit ones take the bitwise not ~x = -x + ~0 (exact in
        wrapping arithmetic, which 64-bit integers have in numpy and in compiled code)."""
        dt = self.node.dtype
        if dt.kind == "f":
            return -self, lambda r: -r
        if dt.kind == "b":  # logical not
            return self == False, lambda r: r == False  # noqa: E712
        if dt.itemsize < 8:
            wide = self._make(B.cast(self.node, np.dtype(np.int64)))
            return -wide, lambda r: self._make(B.cast((-r).node, dt))
        ones = self._make(B.const(np.iinfo(dt).max if dt.kind == "u" else -1, dt))  # all bits set

        def bitwise_not(x: Any) -> Any:
            return -x + ones

        return bitwise_not(self), bitwise_not

    def clip(self, lo: Any = None, hi: Any = None) -> Any:
        """min(max(x, lo), hi), as numpy and torch (hi wins where lo > hi). The gradient goes to x where
        lo <= x <= hi (at a bound too, as torch's) and to a tensor bound only where x is strictly outside it."""
        out = self
        if lo is not None:
            lo = self._lift(lo, "clip")
            # errors name the op a bound amounts to, as when clip was built from them: max(x, lo), min(x, hi)
            _promote("maximum", out.node, lo.node)
            broadcast_shapes("maximum", out.node.shape, lo.node.shape)
            out = out._where(out < lo, lo, out)
            if lo.node.dtype.kind == "f" and not (lo.node.op == "const" and lo.node.arg == lo.node.arg):
                out = out._where(lo != lo, lo, out)  # a NaN bound gives NaN, as in numpy and torch
        if hi is not None:
            hi = self._lift(hi, "clip")
            _promote("minimum", out.node, hi.node)
            broadcast_shapes("minimum", out.node.shape, hi.node.shape)
            out = out._where(hi < out, hi, out)
            if hi.node.dtype.kind == "f" and not (hi.node.op == "const" and hi.node.arg == hi.node.arg):
                out = out._where(hi != hi, hi, out)
        return out

    clamp = clip

    # ---- comparisons (bool results, no gradient) --------------------------------------------------
    def __lt__(self, o: Any) -> Any:
        return self._binary("cmplt", o, name="lt")

    def __le__(self, o: Any) -> Any:
        return self._binary("cmple", o, name="le")

    def __gt__(self, o: Any) -> Any:
        return self._binary("cmplt", o, True, name="gt")

    def __ge__(self, o: Any) -> Any:
        return self._binary("cmple", o, True, name="ge")

    def __eq__(self, o: Any) -> Any:  # type: ignore[override]
        if o is None:  # t == None is False and t != None True (Python's identity fallback), as torch's
            return NotImplemented
        return self._binary("cmpeq", o, name="eq")

    def __ne__(self, o: Any) -> Any:  # type: ignore[override]
        if o is None:
            return NotImplemented
        return self._binary("cmpne", o, name="ne")

    # ---- reductions -------------------------------------------------------------------------------
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

    # ---- movement ---------------------------------------------------------------------------------
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

    # ---- matmul -----------------------------------------------------------------------------------
    def matmul(self, other: Any) -> Any:
        o = self._lift(other, "matmul")
        a, b = self.node, o.node
        if not a.shape or not b.shape:
            raise ValueError(f"matmul: both operands need at least one dimension, got {a.shape} and {b.shape}")
        if a.dtype != b.dtype:
            a, b = _promote("matmul", a, b)
        a2 = B.reshape(a, (1,) + a.shape) if len(a.shape) == 1 else a
        b2 = B.reshape(b, b.shape + (1,)) if len(b.shape) == 1 else b
        if a2.shape[-1] != b2.shape[-2]:
            raise ValueError(
                f"matmul: shapes {a.shape} and {b.shape} are not aligned ({a2.shape[-1]} != {b2.shape[-2]})"
            )
        batch = broadcast_shapes("matmul", a2.shape[:-2], b2.shape[:-2])
        m, k, n = a2.shape[-2], a2.shape[-1], b2.shape[-1]
        if batch:
            nb = prod(batch)
            a3 = B.reshape(_broadcast_to(a2, batch + (m, k)), (nb, m, k))
            b3 = B.reshape(_broadcast_to(b2, batch + (k, n)), (nb, k, n))
            out = B.reshape(B.matmul(a3, b3), batch + (m, n))
        else:
            out = B.matmul(a2, b2)
        final = batch + ((m,) if len(a.shape) > 1 else ()) + ((n,) if len(b.shape) > 1 else ())
        return self._make(B.reshape(out, final))

    __matmul__ = matmul
    dot = matmul

    def __rmatmul__(self, other: Any) -> Any:
        return self._lift(other, "matmul").matmul(self)

    # ---- random -----------------------------------------------------------------------------------
    def dropout(self, p: float = 0.5, training: bool = True) -> Any:
        """Zero each element with probability p and scale the rest by 1/(1-p); p = 1 zeroes everything, as in
        torch (x * 0: NaN and inf inputs give NaN there too)."""
        p = check_dropout_p("dropout", p)
        if not training:
            return self
        if self.node.dtype.kind != "f":
            raise TypeError(f"dropout: needs a float tensor, got {self.node.dtype}{list(self.node.shape)}; "
                            "cast it first (.float())")
        if p == 0.0:
            return self
        if p == 1.0:
            return self * 0.0
        keep = self._make(B.rand(self._dropout_seed(), self.node.shape, self.node.dtype)) >= p
        return self._where(keep, self * (1.0 / (1.0 - p)), 0.0)

    def _dropout_seed(self) -> Node:
        raise NotImplementedError

    def _check_writable(self, name: str) -> None:
        raise NotImplementedError

    def _assign_value(self, value: Any, op: str = "assign") -> Any:
        raise NotImplementedError

    def _set_value(self, v: Any, name: str) -> None:
        raise NotImplementedError

    def float(self) -> Any:
        raise NotImplementedError


def check_dropout_p(op: str, p: Any) -> float:
    """Dropout's probability (Tensor.dropout, F.dropout, nn.Dropout) as a float in [0, 1]."""
    # bool is an int subclass: Dropout(True) is a mistake, not p = 1
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"{op}: p must be a number in [0, 1], got {type(p).__name__} {p!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: p must be in [0, 1], got {p}")
    return float(p)
