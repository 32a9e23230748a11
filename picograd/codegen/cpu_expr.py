"""The statements of a fused loop body for Numba: one line per IR node, evaluated at a loop index.

`Loop.value(node, index, conds)` returns the variable holding a node at an index (see indexing), emitting the
statements that compute it: loads through movement ops, typed constants, elementwise expressions, iota and the
counter-based RAND hash. Statements remember which loop axes they depend on, so cpu.py can hoist each one to
the outermost loop that has its variables."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import config, types
from numba.core.extending import intrinsic

from ..eager import run_node
from ..ir import ops
from ..ir.node import Node
from . import indexing as ix
from .schedule import MOVEMENT


def np_type(dt: np.dtype) -> str:
    return "np.bool_" if dt == np.bool_ else f"np.{np.dtype(dt).name}"


def short(dt: np.dtype) -> str:
    d = np.dtype(dt)
    return {"f": "f", "i": "i", "u": "u", "b": "b"}[d.kind] + ("1" if d.kind == "b" else str(8 * d.itemsize))


def node_label(n: Node, num: dict[int, str]) -> str:
    return f"{num.get(id(n), '%?')} {n.op} {short(n.dtype)}[{','.join(map(str, n.shape))}]"


@dataclass(frozen=True)
class BufRef:
    """`buf[ix]`: an element of a flat buffer (a load or a store), rendered after loop collapsing."""

    buf: str
    ix: ix.Ix

    def used(self) -> frozenset:
        return self.ix.used()


@dataclass
class Stmt:
    parts: list  # str | ix.Ix | ix.Cond | BufRef, rendered after loop collapsing
    dims: frozenset
    comment: str = ""
    acc: bool = False  # an accumulation: always in the innermost loop


@dataclass
class Val:
    text: str
    dims: frozenset
    const: np.ndarray | None = None  # the value, when it is a compile-time constant (0-d, exact dtype)


class Consts:
    """Module-level typed constants, shared by all kernels of a program."""

    def __init__(self) -> None:
        self.names: dict[tuple, str] = {}
        self.lines: list[str] = []

    def get(self, value: object, dtype: np.dtype) -> str:
        dtype = np.dtype(dtype)
        value = bool(value) if dtype.kind == "b" else float(value) if dtype.kind == "f" else int(value)
        key = (dtype.str, repr(value))
        if key not in self.names:
            name = f"C{len(self.names)}"
            if dtype.kind == "f":
                v = float(value)
                lit = repr(v) if math.isfinite(v) else f"float('{v}')"
            else:
                lit = repr(int(value)) if dtype.kind != "b" else repr(bool(value))
            self.names[key] = name
            self.lines.append(f"{name} = {np_type(dtype)}({lit})")
        return self.names[key]


def init_value(op: str, dt: np.dtype) -> object:
    if op == "reduce_sum":
        return 0
    if dt.kind == "f":
        return -math.inf
    if dt.kind == "b":
        return False
    return int(np.iinfo(dt).min)


class Loop:
    """The statements of one loop nest over `sizes`, evaluated at the loop index (see indexing)."""

    def __init__(self, prog: Any, sizes: tuple[int, ...], loads: dict[int, str]) -> None:
        # prog (cpu.ProgramRenderer) gives fresh(prefix) variable names, the shared Consts and node labels (num)
        self.p = prog
        self.sizes = sizes
        self.nd = len(sizes)
        self.loads = loads  # id(node) -> buffer name: the boundary
        self.stmts: list[Stmt] = []
        self.memo: dict[tuple, Val] = {}
        self.seed_terms: dict[str, Val] = {}

    def let(self, parts: list, dims: frozenset, comment: str = "") -> Val:
        name = self.p.fresh("v")
        self.stmts.append(Stmt([f"{name} = ", *parts], dims, comment))
        return Val(name, dims)

    def value(self, n: Node, idx: tuple, conds: tuple) -> Val:
        """The variable holding n at (idx, conds), emitting the statements that compute it (iteratively:
        graphs can be thousands of ops deep)."""
        memo = self.memo
        top = (id(n), idx, conds)
        if top in memo:
            return memo[top]
        stack = [(n, idx, conds, None)]
        while stack:
            node, i, c, deps = stack.pop()
            key = (id(node), i, c)
            if key in memo:
                continue
            if deps is None:
                deps = self._deps(node, i, c)
                missing = [d for d in deps if (id(d[0]), d[1], d[2]) not in memo]
                if missing:
                    stack.append((node, i, c, deps))
                    stack.extend((d[0], d[1], d[2], None) for d in reversed(missing))
                    continue
            memo[key] = self._compute(node, i, c, [memo[(id(d[0]), d[1], d[2])] for d in deps])
        return memo[top]

    def _deps(self, n: Node, idx: tuple, conds: tuple) -> list[tuple]:
        op = n.op
        if id(n) in self.loads or op in (ops.CONST, ops.IOTA):
            return []
        if op in MOVEMENT:
            return [(n.srcs[0], *ix.move(n, idx, conds, self.sizes))]
        if op == ops.RAND:
            return [(n.srcs[0], (), ())]
        return [(s, idx, conds) for s in n.srcs]

    def _compute(self, n: Node, idx: tuple, conds: tuple, args: list[Val]) -> Val:
        p, op = self.p, n.op
        label = node_label(n, p.num)
        buf = self.loads.get(id(n))
        if buf is not None:
            flat = ix.flat_index(idx, n.shape, self.nd)
            dims = flat.used().union(*(c.used() for c in conds))
            if conds:
                zero = p.consts.get(0, n.dtype)
                parts = [BufRef(buf, flat), " if ", *_join_conds(conds), f" else {zero}"]
            else:
                parts = [BufRef(buf, flat)]
            return self.let(parts, dims, f"load {label}")
        if op == ops.CONST:
            return Val(p.consts.get(n.arg, n.dtype), frozenset(), np.array(n.arg, dtype=n.dtype))
        if op in MOVEMENT:
            (v,) = args
            new = ix.move(n, idx, conds, self.sizes)[1][len(conds):] if op == "pad" else ()
            if new:
                zero = p.consts.get(0, n.dtype)
                dims = v.dims.union(*(c.used() for c in new))
                return self.let([f"{v.text} if ", *_join_conds(new), f" else {zero}"], dims, label)
            return v
        if op == ops.IOTA:
            e = idx[n.arg]
            return self.let([f"{np_type(n.dtype)}(", e, ")"], e.used(), label)
        if op == ops.RAND:
            return self._rand(n, idx, args[0], label)
        if op == "detach":
            return args[0]
        if op == "mul" and n.dtype.kind in "fiu":  # x * 1 is x, bit for bit (autodiff seeds gradients with ones)
            for a, b in ((args[0], args[1]), (args[1], args[0])):
                if b.const is not None and b.const == 1 and a.const is None:
                    return a
        if args and all(a.const is not None for a in args):
            # fold with the interpreter's own op, so the constant is bit-identical to what eager computes
            with np.errstate(all="ignore"):
                c = np.asarray(run_node(n, [a.const for a in args]), dtype=n.dtype)
            return Val(p.consts.get(c.item(), n.dtype), frozenset(), c)
        dims = frozenset().union(*(a.dims for a in args))
        return self.let([_expr(op, n, [a.text for a in args], p.consts)], dims, label)

    def _rand(self, n: Node, idx: tuple, seed: Val, label: str) -> Val:
        p = self.p
        sx = self.seed_terms.get(seed.text)
        if sx is None:
            sx = self.let([f"(np.uint64({seed.text}) * RAND_GOLDEN) & MASK32"], seed.dims, "rand seed term")
            self.seed_terms[seed.text] = sx
        flat = ix.flat_index(idx, n.shape, self.nd)
        dims = flat.used() | sx.dims
        x = self.let(["(np.uint64(", flat, f") + {sx.text}) & MASK32"], dims, "rand: flat index + seed")
        x = self.let([f"{x.text} ^ ({x.text} >> U16)"], dims)
        x = self.let([f"({x.text} * RAND_MUL1) & MASK32"], dims)
        x = self.let([f"{x.text} ^ ({x.text} >> U15)"], dims)
        x = self.let([f"({x.text} * RAND_MUL2) & MASK32"], dims)
        x = self.let([f"{x.text} ^ ({x.text} >> U16)"], dims)
        t = np_type(n.dtype)
        return self.let([f"{t}({x.text} >> U8) * {p.consts.get(2.0**-24, n.dtype)}"], dims, label)


def _join_conds(conds: tuple) -> list:
    parts: list = ["("]
    for i, c in enumerate(conds):
        if i:
            parts.append(" and ")
        parts.append(c)
    parts.append(")")
    return parts


_UNARY_FN = {"exp": "math.exp", "log": "math.log", "sqrt": "math.sqrt", "sin": "math.sin", "cos": "math.cos",
             "tanh": "math.tanh"}
_CMP = {"cmplt": "<", "cmple": "<=", "cmpeq": "==", "cmpne": "!="}


def _expr(op: str, n: Node, a: list[str], consts: Consts) -> str:
    e = _expr_wide(op, n, a, consts)
    dt = n.dtype
    if ops.wraps_narrow_int(op, dt):  # (a store would wrap too, but not a fused comparison: int8 100 + 100 > 0)
        return f"{np_type(dt)}({e})"
    return e


def _expr_wide(op: str, n: Node, a: list[str], consts: Consts) -> str:
    dt = n.dtype
    if op in _UNARY_FN:
        return f"{_UNARY_FN[op]}({a[0]})"
    if op == "neg":
        return f"not {a[0]}" if dt.kind == "b" else f"-{a[0]}"
    if op == "recip":
        return f"{consts.get(1, dt)} / {a[0]}"
    if op == "cast":
        if dt.kind == "b":
            return f"{a[0]} != {consts.get(0, n.srcs[0].dtype)}"
        return f"{np_type(dt)}({a[0]})"
    if op == "add":
        return f"{a[0]} or {a[1]}" if dt.kind == "b" else f"{a[0]} + {a[1]}"
    if op == "mul":
        return f"{a[0]} and {a[1]}" if dt.kind == "b" else f"{a[0]} * {a[1]}"
    if op == "div":  # floats only (ir.build): float32 / float32 stays float32 in numba, rounded as numpy's
        return f"{a[0]} / {a[1]}"
    if op == "max":
        if dt.kind == "b":
            return f"{a[0]} or {a[1]}"
        nan = f" or {a[0]} != {a[0]}" if dt.kind == "f" else ""  # np.maximum propagates NaN
        return f"{a[0]} if {a[0]} > {a[1]}{nan} else {a[1]}"
    if op == "pow":
        return f"{np_type(dt)}({a[0]} ** {a[1]})"
    if op in _CMP:
        return f"{a[0]} {_CMP[op]} {a[1]}"
    if op == "where":
        return f"{a[1]} if {a[0]} else {a[2]}"
    raise NotImplementedError(f"cpu codegen: no rule for op {op!r}")


@intrinsic
def acc_add(typingctx, acc, v):  # noqa: ARG001
    """acc + v for a float sum's accumulation: an fadd that LLVM may reassociate, so it vectorizes the reduction
    loop (partial sums in vector lanes, added together at the end) -- only this add: numba's fastmath would mark
    every operation of the function, and the fused elementwise code feeding the sum must round as numpy's does.
    Measured: sum(x * x) over 307,200 float32, 37 us as fastmath={'reassoc'} gave, 710 us without it."""
    if not (isinstance(acc, types.Float) and v == acc):
        return None  # the generated code keeps exact dtypes: a mismatch is a codegen bug, so fail to type

    def codegen(context, builder, sig, args):  # noqa: ARG001
        return builder.fadd(args[0], args[1], flags=("reassoc",))

    return acc(acc, v), codegen


def _acc_add_python(acc, v):  # noqa: ANN001, ANN202
    return acc + v  # NUMBA_DISABLE_JIT=1: intrinsics can't run as Python


if config.DISABLE_JIT:
    acc_add = _acc_add_python  # noqa: F811


def combine(op: str, dt: np.dtype, acc: str, v: str) -> str:
    if op == "reduce_sum":
        if dt.kind == "f":
            return f"acc_add({acc}, {v})"
        return f"{acc} or {v}" if dt.kind == "b" else f"{acc} + {v}"
    if dt.kind == "b":
        return f"{acc} or {v}"
    nan = f" or {v} != {v}" if dt.kind == "f" else ""
    return f"{v} if {v} > {acc}{nan} else {acc}"
