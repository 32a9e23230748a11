"""Scalar code for the CUDA kernels: the value of an IR node at a symbolic index, as Python source for
numba.cuda (or the CUDA simulator).

Every kernel reads its inputs as flat C-contiguous buffers; movement ops (reshape, permute, expand,
slice, pad) never move data, they only rewrite the index expression on the way down to a load. The
emitter memoizes (node, index) pairs per loop scope, so diamonds in the graph are computed once and a
value computed inside a loop body is never reused after it.

float32 stays float32: every literal is emitted as a typed numpy scalar (a bare `0.5` or `1` would
make numba compute in float64 / int64, see DESIGN.md), and the RAND hash runs in explicit uint64."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..ir import ops
from ..ir.node import Node

_MATH = ("exp", "log", "sqrt", "sin", "cos", "tanh")
_CMP = {"cmplt": "<", "cmple": "<=", "cmpeq": "==", "cmpne": "!="}


def np_name(dtype: np.dtype) -> str:
    """The numpy scalar type used for a dtype in generated code (bool is stored as uint8)."""
    return "uint8" if dtype == np.bool_ else np.dtype(dtype).name


def lit(value: Any, dtype: np.dtype) -> str:
    """A literal of exactly this dtype."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return "True" if value else "False"
    if dtype.kind == "f":
        v = float(value)
        if math.isnan(v):
            return f"np.{dtype.name}(math.nan)"
        if math.isinf(v):
            return f"np.{dtype.name}({'-' if v < 0 else ''}math.inf)"
        return f"np.{dtype.name}({v!r})"
    return f"np.{dtype.name}({int(value)})"


def c_strides(shape: tuple[int, ...]) -> list[int]:
    out, acc = [1] * len(shape), 1
    for d in range(len(shape) - 1, -1, -1):
        out[d] = acc
        acc *= shape[d]
    return out


def clamp(x: str, lo: int, hi: int, low: bool = True) -> str:
    """x limited to [lo, hi] (or to hi only), as a select: numba's builtin CUDA target compiles min()/max() as
    device functions, which needs a GPU to know the compute capability (compile_ptx fails without one)."""
    upper = f"({hi} if {x} > {hi} else {x})"
    return f"({lo} if {x} < {lo} else {upper})" if low else upper


def lowest(dtype: np.dtype) -> str:
    """The identity of max for a dtype."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return lit(-math.inf, dtype)
    if dtype.kind == "b":
        return "False"
    return lit(np.iinfo(dtype).min, dtype)


class Emitter:
    """Accumulates the lines of one kernel body and renders node values at symbolic indices.

    params: node id -> name of the flat buffer parameter it is loaded from (kernel inputs).
    values: node id -> variable already holding the node's value at the current index (an
    accumulator, a matmul result) - used for epilogues."""

    def __init__(self, params: dict[int, str], sim: bool) -> None:
        self.params = params
        self.values: dict[int, str] = {}
        self.sim = sim
        self.lines: list[str] = []
        self.indent = 1
        self.scopes: list[dict[Any, str]] = [{}]
        self.n = 0
        self.flats: dict[tuple, str] = {}  # (idx, shape) -> known flat index, per scope via key check

    # ---- plumbing -------------------------------------------------------------------------------
    def line(self, s: str) -> None:
        self.lines.append("    " * self.indent + s)

    def fresh(self, prefix: str = "t") -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def _find(self, key: Any) -> str | None:
        for scope in reversed(self.scopes):
            if key in scope:
                return scope[key]
        return None

    def tmp(self, expr: str, prefix: str = "t") -> str:
        """Bind expr to a fresh variable (once per scope chain); trivial expressions stay inline."""
        if expr.isidentifier() or _is_number(expr):
            return expr
        got = self._find(("e", expr))
        if got is not None:
            return got
        v = self.fresh(prefix)
        self.line(f"{v} = {expr}")
        self.scopes[-1][("e", expr)] = v
        return v

    def push(self) -> None:
        """Enter a loop body or branch: what is computed inside stays inside."""
        self.scopes.append({})
        self.indent += 1

    def pop(self) -> None:
        self.scopes.pop()
        self.indent -= 1

    def set_flat(self, idx: tuple[str, ...], shape: tuple[int, ...], flat: str) -> None:
        self.scopes[-1][("flat", idx, shape)] = flat

    # ---- index arithmetic -------------------------------------------------------------------------
    def decompose(self, flat: str, shape: tuple[int, ...]) -> tuple[str, ...]:
        """Multi-index of a flat C-order position; size-1 axes are the literal 0."""
        strides = c_strides(shape)
        live = [d for d, s in enumerate(shape) if s != 1]
        out = ["0"] * len(shape)
        for j, d in enumerate(live):
            e = flat
            if j > 0:
                e = f"({e} % {strides[d] * shape[d]})"
            if strides[d] != 1:
                e = f"({e} // {strides[d]})"
            out[d] = self.tmp(e, "i")
        idx = tuple(out)
        self.set_flat(idx, shape, flat)
        return idx

    def linear(self, idx: tuple[str, ...], shape: tuple[int, ...]) -> str:
        got = self._find(("flat", idx, shape))
        if got is not None:
            return got
        terms = []
        for d, (e, s) in enumerate(zip(idx, shape, strict=False)):
            if s == 1 or e == "0":
                continue
            st = c_strides(shape)[d]
            terms.append(e if st == 1 else f"{e} * {st}")
        if not terms:
            return "0"
        flat = self.tmp(" + ".join(terms), "f") if len(terms) > 1 else terms[0]
        self.set_flat(idx, shape, flat)
        return flat

    def src_index(self, n: Node, idx: tuple[str, ...]) -> tuple[str, ...]:
        """Index into n.srcs[0] for a movement node n read at idx."""
        src = n.srcs[0]
        if n.op == "reshape":
            a = [(d, s) for d, s in enumerate(n.shape) if s != 1]
            b = [(d, s) for d, s in enumerate(src.shape) if s != 1]
            if [s for _, s in a] == [s for _, s in b]:  # only size-1 axes added or removed
                out = ["0"] * len(src.shape)
                for (da, _), (db, _) in zip(a, b, strict=False):
                    out[db] = idx[da]
                return tuple(out)
            return self.decompose(self.linear(idx, n.shape), src.shape)
        if n.op == "permute":
            out = ["0"] * len(src.shape)
            for d, o in enumerate(n.arg):
                out[o] = idx[d]
            return tuple(out)
        if n.op == "expand":
            return tuple("0" if s == 1 else e for e, s in zip(idx, src.shape, strict=False))
        if n.op == "slice":
            out = []
            for e, (start, _, step) in zip(idx, n.arg, strict=False):
                if e == "0":
                    out.append(str(start))
                elif step == 1:
                    out.append(e if start == 0 else f"({e} + {start})")
                else:
                    out.append(f"({start} + {e} * {step})")
            return tuple(out)
        raise AssertionError(n.op)

    # ---- values ---------------------------------------------------------------------------------
    def load(self, name: str, n: Node, idx: tuple[str, ...]) -> str:
        v = f"{name}[{self.linear(idx, n.shape)}]"
        return f"({v} != 0)" if n.dtype == np.bool_ else v

    def val(self, n: Node, idx: tuple[str, ...]) -> str:
        """A variable or literal holding n's value at idx (emitting the code that computes it)."""
        if id(n) in self.values:
            return self.values[id(n)]
        if n.op == ops.CONST:
            return lit(n.arg, n.dtype)
        key = ("v", id(n), idx)
        got = self._find(key)
        if got is not None:
            return got
        expr = self._expr(n, idx)
        v = self.tmp(expr, "v") if not (expr.isidentifier() or _is_number(expr)) else expr
        self.scopes[-1][key] = v
        return v

    def _expr(self, n: Node, idx: tuple[str, ...]) -> str:
        e = self._expr_wide(n, idx)
        if ops.wraps_narrow_int(n.op, n.dtype):
            return f"np.{n.dtype.name}({e})"
        return e

    def _expr_wide(self, n: Node, idx: tuple[str, ...]) -> str:
        op, dt = n.op, n.dtype
        if id(n) in self.params:
            return self.load(self.params[id(n)], n, idx)
        if op in ops.MOVEMENT and op != "pad":
            return self.val(n.srcs[0], self.src_index(n, idx))
        if op == "pad":
            return self._pad(n, idx)
        if op == ops.IOTA:
            return f"np.{np_name(dt)}({idx[n.arg]})" if dt != np.bool_ else f"({idx[n.arg]} != 0)"
        if op == ops.RAND:
            return self._rand(n, idx)
        if op == "detach":
            return self.val(n.srcs[0], idx)
        if op == "cast":
            return self._cast(self.val(n.srcs[0], idx), n.srcs[0].dtype, dt)
        if op in ops.UNARY:
            x = self.val(n.srcs[0], idx)
            if op == "neg":
                return f"(not {x})" if dt == np.bool_ else f"(-{x})"
            if op == "recip":
                return f"({lit(1, dt)} / {x})"
            # The simulator runs plain Python, where math.log(0) raises; numpy's scalar functions
            # give inf/nan like the GPU does.
            return f"{'np' if self.sim else 'math'}.{op}({x})"
        if op in ops.BINARY:
            a, b = self.val(n.srcs[0], idx), self.val(n.srcs[1], idx)
            if op == "add":
                return f"({a} or {b})" if dt == np.bool_ else f"({a} + {b})"
            if op == "mul":
                return f"({a} and {b})" if dt == np.bool_ else f"({a} * {b})"
            if op == "div":  # floats only (ir.build); div.rn: correctly rounded, as numpy's
                return f"({a} / {b})"
            if op == "max":  # NaN-propagating like np.maximum
                return f"({a} if ({a} >= {b} or {a} != {a}) else {b})"
            if op == "pow":
                return f"({a} ** {b})"
            return f"({a} {_CMP[op]} {b})"
        if op == "where":
            c, a, b = (self.val(s, idx) for s in n.srcs)
            return f"({a} if {c} else {b})"
        raise NotImplementedError(f"cuda codegen: op {op!r} ({dt}{list(n.shape)}) cannot be computed inline here")

    def _cast(self, x: str, src: np.dtype, dst: np.dtype) -> str:
        if dst == np.bool_:
            return x if src == np.bool_ else f"({x} != {lit(0, src)})"
        if src == np.bool_:
            return f"({lit(1, dst)} if {x} else {lit(0, dst)})"
        return f"np.{dst.name}({x})"

    def _pad(self, n: Node, idx: tuple[str, ...]) -> str:
        src = n.srcs[0]
        _, slices = n.arg
        conds, sidx = [], []
        for e, (start, _, step), size, full in zip(idx, slices, src.shape, n.shape, strict=False):
            if size == 0:
                return lit(0, n.dtype)
            if step == 1:
                q = e if start == 0 else self.tmp(f"({e} - {start})", "i")
                if size != full:  # an axis copied whole needs no test
                    conds.append(f"0 <= {q} < {size}")
            else:
                d = self.tmp(f"({e} - {start})", "i")
                q = self.tmp(f"({d} // {step})", "i")
                conds.append(f"{d} % {step} == 0 and 0 <= {q} < {size}")
            # Out-of-range positions read a clamped (valid) index, then the select drops the value.
            sidx.append(self.tmp(clamp(q, 0, size - 1), "i") if size > 1 else "0")
        v = self.val(src, tuple(sidx))
        if not conds:
            return v
        ok = self.tmp(" and ".join(f"({c})" for c in conds), "ok")
        return f"({v} if {ok} else {lit(0, n.dtype)})"

    def _rand(self, n: Node, idx: tuple[str, ...]) -> str:
        seed = n.srcs[0]
        s = self.val(seed, ())
        u = "np.uint64"
        m = f"{u}({ops.MASK32})"
        x = self.tmp(f"({u}({self.linear(idx, n.shape)}) + (({u}({s}) * {u}({ops.RAND_GOLDEN})) & {m})) & {m}", "r")
        x = self.tmp(f"{x} ^ ({x} >> {u}(16))", "r")
        x = self.tmp(f"({x} * {u}({ops.RAND_MUL1})) & {m}", "r")
        x = self.tmp(f"{x} ^ ({x} >> {u}(15))", "r")
        x = self.tmp(f"({x} * {u}({ops.RAND_MUL2})) & {m}", "r")
        x = self.tmp(f"{x} ^ ({x} >> {u}(16))", "r")
        return f"(np.{n.dtype.name}({x} >> {u}(8)) * {lit(2.0**-24, n.dtype)})"


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
