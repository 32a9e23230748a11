"""Immutable, hash-consed IR nodes.

Building the same expression twice returns the same Node object, which gives common-subexpression
elimination for free and lets a realized value be found again from its structure. Nodes are kept in a
weak table, so a graph disappears when no Tensor refers to it any more.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from . import ops
from .shape import prod


class Buffer:
    """Realized data. Immutable by convention: an update makes a new Buffer, so every lazy graph that
    read the old one stays valid (no version counters, no read-after-write hazards)."""

    __slots__ = ("data", "device", "leaf", "owner", "node", "__weakref__")

    def __init__(self, data: Any, device: str = "cpu") -> None:
        self.data = data
        self.device = device
        self.leaf: weakref.ref | None = None  # the leaf Tensor that owns it, for backward()
        # The first Tensor that held it as its value, whatever its requires_grad: picograd.jit replays a step
        # by reading such tensors' current values instead of the buffers it saw when it traced.
        self.owner: weakref.ref | None = None
        self.node: weakref.ref | None = None  # its leaf node (buffer_node), which is unique per Buffer

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        return f"Buffer({self.data.dtype}{list(self.data.shape)}, {self.device})"


class Node:
    __slots__ = ("op", "srcs", "dtype", "shape", "arg", "device", "buffer", "tag", "__weakref__")

    op: str
    srcs: tuple[Node, ...]
    dtype: np.dtype
    shape: tuple[int, ...]
    arg: Any
    device: str | None
    buffer: Buffer | None  # set once realized; later realizes read it instead of recomputing
    tag: str  # "forward" | "backward" | "update": which phase first built it (for dumps)

    def __repr__(self) -> str:
        return f"Node({self.op}, {self.dtype}{list(self.shape)}, arg={self.arg!r}, srcs={len(self.srcs)})"

    @property
    def size(self) -> int:
        return prod(self.shape)


_table: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_refs = _table.data  # the raw key -> weak reference dict: one lookup on the hot path instead of three
_phase = ["forward"]


class phase:
    """Context manager naming the phase that the nodes built inside it belong to."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        _phase.append(self.name)

    def __exit__(self, *exc: object) -> None:
        _phase.pop()


def make(op: str, srcs: tuple[Node, ...], dtype: np.dtype, shape: tuple[int, ...], arg: Any = None) -> Node:
    """Return the unique node for this structure (no checks: use ir.build for checked construction)."""
    key = (op, srcs, dtype, shape, arg)
    if op == ops.CONST and type(arg) is float and arg == 0 and math.copysign(1.0, arg) < 0:
        # -0.0 == 0.0 (and hashes alike), so without this x * -0.0 found the node of x * 0.0 and lost the sign
        key = (op, srcs, dtype, shape, arg, "-0.0")
    r = _refs.get(key)
    if r is not None:
        n = r()
        if n is not None:
            return n
    n = Node.__new__(Node)
    n.op, n.srcs, n.dtype, n.shape, n.arg = op, srcs, dtype, shape, arg
    # Constants and iotas have no device of their own (None): they take that of what they meet.
    n.device = arg.device if op == ops.BUFFER else next((s.device for s in srcs if s.device), None)
    n.buffer = arg if op == ops.BUFFER else None
    n.tag = _phase[-1]
    _table[key] = n
    return n


def buffer_node(buf: Buffer) -> Node:
    """The leaf node holding buf, one per Buffer. Kept on the Buffer (weakly) rather than in the hash-consing
    table: that is a third of the cost, and a replayed step (picograd.jit) makes a dozen of these."""
    r = buf.node
    if r is not None and (n := r()) is not None:
        return n
    data = buf.data
    n = Node.__new__(Node)
    n.op, n.srcs, n.dtype, n.shape, n.arg = ops.BUFFER, (), np.dtype(data.dtype), tuple(data.shape), buf
    n.device, n.buffer, n.tag = buf.device, buf, _phase[-1]
    buf.node = weakref.ref(n)
    return n


def toposort(roots: Iterable[Node], stop_at_realized: bool = False,
             srcs_of: Callable[[Node], Sequence[Node]] | None = None) -> list[Node]:
    """Iterative post-order DFS (deep graphs would overflow Python's recursion limit).

    srcs_of: the sources of a node to walk into (default: all of them), to visit part of a graph only.

    With stop_at_realized, nodes that already hold a buffer are leaves: their sources are not visited,
    except below the root of an unexpanded grad node, whose whole graph is needed to differentiate it;
    those nodes come after the rest, which keeps the order topological for every computed node."""
    order: list[Node] = []
    seen: set[Node] = set()
    _dfs(roots, stop_at_realized, order, seen, srcs_of)
    if stop_at_realized:
        grad_roots = [n.srcs[0] for n in order if n.op == ops.GRAD and n.buffer is None]
        if grad_roots:
            for n in toposort(grad_roots):
                if n not in seen:
                    seen.add(n)
                    order.append(n)
    return order


def _dfs(roots: Iterable[Node], stop: bool, order: list[Node], seen: set[Node],
         srcs_of: Callable[[Node], Sequence[Node]] | None = None) -> None:
    opened: set[Node] = set()
    for root in roots:
        stack = [root]
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            if n in opened:  # second visit: every source is done
                seen.add(n)
                order.append(n)
                continue
            opened.add(n)
            stack.append(n)
            if stop and n.buffer is not None:
                continue
            srcs = n.srcs if srcs_of is None else srcs_of(n)
            for k in range(len(srcs) - 1, -1, -1):
                if srcs[k] not in seen:
                    stack.append(srcs[k])


def structural_key(roots: list[Node]) -> tuple[tuple, list[Node]]:
    """The graph's structure with realized inputs numbered by position: the compile cache key.

    Returns (key, inputs): the same structure over other data gives the same key; another shape,
    dtype or op gives another. inputs are the realized nodes in the order the key numbers them."""
    order = toposort(roots, stop_at_realized=True)
    index: dict[int, int] = {}
    inputs: list[Node] = []
    rows = []
    for i, n in enumerate(order):
        index[id(n)] = i
        if n.buffer is not None:
            rows.append(("in", len(inputs), n.dtype.str, n.shape, n.device))
            inputs.append(n)
        else:
            arg = repr(n.arg) if n.op == ops.CONST else n.arg  # tells -0.0 from 0.0
            rows.append((n.op, tuple(index[id(s)] for s in n.srcs), n.dtype.str, n.shape, arg))
    outs = tuple(index[id(r)] for r in roots)
    return (tuple(rows), outs), inputs
