"""The numpy interpreter of the IR op set: eager mode runs it node by node, lazy mode's reference
backend runs it over a whole graph, and the tests use it as the oracle for compiled code."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .ir import ops
from .ir.autodiff import expand_grads
from .ir.node import Buffer, Node, toposort


def rand_uniform(seed: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The RAND primitive's exact definition (see ir/ops.py), in wrapping uint32 arithmetic."""
    m = np.uint64(ops.MASK32)
    n = int(np.prod(shape, dtype=np.int64))
    x = (np.arange(n, dtype=np.uint64) + np.uint64((int(seed) * ops.RAND_GOLDEN) & ops.MASK32)) & m
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(ops.RAND_MUL1)) & m
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(ops.RAND_MUL2)) & m
    x ^= x >> np.uint64(16)
    return ((x >> np.uint64(8)).astype(dtype) * dtype.type(2.0**-24)).reshape(shape)


def np_slice(s: tuple[int, int, int]) -> slice:
    """A normalized (start, stop, step) as a numpy slice (stop -1 with a negative step means 'past 0')."""
    start, stop, step = s
    return slice(start, None if step < 0 and stop < 0 else stop, step)


def _iota(n: Node) -> np.ndarray:
    shape = [1] * len(n.shape)
    shape[n.arg] = n.shape[n.arg]
    return np.broadcast_to(np.arange(n.shape[n.arg], dtype=n.dtype).reshape(shape), n.shape)


def _pad(x: np.ndarray, n: Node) -> np.ndarray:
    full, slices = n.arg
    out = np.zeros(full, dtype=x.dtype)
    out[tuple(np_slice(s) for s in slices)] = x
    return out


def _recip(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.reciprocal(x)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.true_divide(a, b)


def _log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.power(a, b)


_UNARY: dict[str, Callable] = {
    "neg": np.negative,
    "exp": np.exp,
    "log": _log,
    "sqrt": np.sqrt,
    "sin": np.sin,
    "cos": np.cos,
    "recip": _recip,
    "tanh": np.tanh,
    "detach": lambda x: x,
}
_BINARY: dict[str, Callable] = {
    "add": np.add,
    "mul": np.multiply,
    "div": _div,
    "max": np.maximum,
    "pow": _pow,
    "cmplt": np.less,
    "cmple": np.less_equal,
    "cmpeq": np.equal,
    "cmpne": np.not_equal,
}


def run_node(n: Node, v: list[np.ndarray]) -> np.ndarray:
    """Evaluate one node from its sources' values. Results keep the node's dtype exactly."""
    op = n.op
    if op == ops.CONST:
        return np.array(n.arg, dtype=n.dtype)
    if op == ops.IOTA:
        return _iota(n)
    if op == ops.RAND:
        return rand_uniform(int(v[0]), n.shape, n.dtype)
    if op in _UNARY:
        return _UNARY[op](v[0])
    if op == "cast":
        return v[0].astype(n.dtype)
    if op in _BINARY:
        return _BINARY[op](v[0], v[1])
    if op == "where":
        return np.where(v[0], v[1], v[2])
    if op == "reduce_sum":
        return np.sum(v[0], axis=n.arg, keepdims=True, dtype=n.dtype)
    if op == "reduce_max":
        return np.max(v[0], axis=n.arg, keepdims=True)
    if op == "reshape":
        return np.reshape(v[0], n.shape)
    if op == "permute":
        return np.transpose(v[0], n.arg)
    if op == "expand":
        return np.broadcast_to(v[0], n.shape)
    if op == "slice":
        return v[0][tuple(np_slice(s) for s in n.arg)]
    if op == "pad":
        return _pad(v[0], n)
    if op == ops.MATMUL:
        return np.matmul(v[0], v[1])
    raise NotImplementedError(f"eager: no rule for op {op!r}")


def evaluate(roots: list[Node]) -> list[np.ndarray]:
    """Evaluate roots, reading realized nodes' buffers and computing everything else."""
    vals: dict[int, np.ndarray] = {}
    roots = expand_grads(roots)
    for n in toposort(roots, stop_at_realized=True):
        if n.buffer is not None:
            vals[id(n)] = np.asarray(n.buffer.data)
        else:
            out = run_node(n, [vals[id(s)] for s in n.srcs])
            vals[id(n)] = np.asarray(out, dtype=n.dtype).reshape(n.shape)
    return [vals[id(r)] for r in roots]


def realize_now(n: Node, force: bool = False) -> None:
    """Eager mode: give a freshly built node its value at once (its sources are realized already).

    Nodes computed from constants alone stay unrealized unless forced: they are hash-consed, so the same
    node sits in every later lazy graph using that constant, where a buffer would turn it into a program
    input (another cache key, a host array on another device)."""
    if n.buffer is None and (force or any(m.buffer is not None for m in toposort([n], stop_at_realized=True))):
        (val,) = evaluate([n])
        n.buffer = Buffer(np.require(val, requirements='C'), n.device or "cpu")
