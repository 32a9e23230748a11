"""The memory cache's key: a graph's structure with realized inputs numbered by position (a faster walk than
ir.node.structural_key with the same meaning), hashed for names and reports by `key_digest`."""

from __future__ import annotations

import hashlib

from ..ir import ops
from ..ir.node import Node


def graph_key(roots: list[Node]) -> tuple[tuple, list[Node], bool, bool]:
    """(key, inputs, has_grad, opaque): the structure of the graph computing roots, realized nodes as numbered
    inputs. has_grad: it holds unexpanded grad placeholders; opaque: it also holds a realized node with
    sources, below which autodiff may need to look, so the key after expansion must be used instead.

    This runs on every realize, so it is written for speed: a recursive post-order walk (nodes hash by
    identity), with an iterative walk of the same order for graphs deeper than Python's recursion limit."""
    try:
        return _key_recursive(roots)
    except RecursionError:
        return _key_iterative(roots)


def _key_recursive(roots: list[Node]) -> tuple[tuple, list[Node], bool, bool]:
    index: dict[Node, int] = {}
    rows: list[tuple] = []
    inputs: list[Node] = []
    flags = [False, False]
    grad, const = ops.GRAD, ops.CONST

    def visit(n: Node) -> int:
        i = index.get(n)
        if i is not None:
            return i
        if n.buffer is not None:
            i = index[n] = len(rows)
            rows.append((len(inputs), n.dtype, n.shape))
            inputs.append(n)
            if n.srcs:
                flags[1] = True
            return i
        srcs = n.srcs
        if len(srcs) == 1:
            s: tuple = (visit(srcs[0]),)
        elif len(srcs) == 2:
            s = (visit(srcs[0]), visit(srcs[1]))
        else:
            s = tuple([visit(x) for x in srcs])
        i = index[n] = len(rows)
        op = n.op
        if op == grad:
            flags[0] = True
        # repr tells -0.0 from 0.0 (equal, so one cached program would serve both with the first one's sign)
        rows.append((op, s, n.dtype, n.shape, n.arg if op != const else repr(n.arg)))
        return i

    try:
        outs = tuple([visit(r) for r in roots])
    finally:
        visit = None  # noqa: F841 - the closure refers to itself: break the cycle, or it keeps the graph alive
    return (tuple(rows), outs), inputs, flags[0], flags[1]


def _key_iterative(roots: list[Node]) -> tuple[tuple, list[Node], bool, bool]:
    index: dict[Node, int] = {}
    rows: list[tuple] = []
    inputs: list[Node] = []
    has_grad = opaque = False
    for root in roots:
        stack = [root]
        while stack:
            n = stack[-1]
            if n in index:
                stack.pop()
                continue
            if n.buffer is not None:
                stack.pop()
                index[n] = len(rows)
                rows.append((len(inputs), n.dtype, n.shape))
                inputs.append(n)
                opaque = opaque or bool(n.srcs)
                continue
            srcs = n.srcs
            todo = [s for s in srcs if s not in index]
            if todo:
                todo.reverse()
                stack.extend(todo)
                continue
            stack.pop()
            index[n] = len(rows)
            if n.op == ops.GRAD:
                has_grad = True
            arg = n.arg if n.op != ops.CONST else repr(n.arg)
            rows.append((n.op, tuple([index[s] for s in srcs]), n.dtype, n.shape, arg))
    return (tuple(rows), tuple([index[r] for r in roots])), inputs, has_grad, opaque


def key_digest(key: tuple) -> str:
    return hashlib.sha1(repr(key).encode()).hexdigest()[:12]


def with_updates(key: tuple, inputs: list[Node], updates: dict[int, Node] | None) -> tuple:
    """The key of a program that may compute some roots in place (see build): which root replaces which input
    is part of its structure."""
    if not updates:
        return key
    pos = {id(n): i for i, n in enumerate(inputs)}
    return key + (tuple(sorted((r, pos[id(old)]) for r, old in updates.items() if id(old) in pos)),)
