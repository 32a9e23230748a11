"""Tensor arithmetic (elementwise ops, comparisons, powers, matmul, dropout), as a mixin of Tensor: each lowers
to IR primitives through ir.build. Reductions are in tensor_reduce, movement and indexing in tensor_shape.

Broadcasting, scalar lifting and dtype promotion happen here, so the IR only ever sees operands of
equal shape and dtype."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .ir import build as B
from .ir.node import Node
from .ir.shape import broadcast_shapes, prod

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
