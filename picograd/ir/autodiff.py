"""Reverse-mode autodiff as a graph transform: each primitive's vector-Jacobian product is written
as more IR nodes, so forward, backward and the optimizer update fuse into one program, and the
gradient graph can itself be differentiated (grad of grad)."""

from __future__ import annotations

from collections.abc import Callable

from . import build as B
from . import ops
from .node import Node, make, phase, toposort

# Each rule maps (node, its output gradient g) to one gradient per source (None: no gradient).
VJP = Callable[[Node, Node], tuple["Node | None", ...]]


def _zero(x: Node) -> Node:
    return B.full_like(x, 0)


def _max_vjp(n: Node, g: Node) -> tuple[Node, Node]:
    a, b = n.srcs
    half = B.mul(g, B.full_like(g, 0.5))  # ties split the gradient evenly, as torch.maximum does
    ga = B.where(B.binary("cmplt", b, a), g, B.where(B.binary("cmpeq", a, b), half, _zero(g)))
    gb = B.where(B.binary("cmplt", a, b), g, B.where(B.binary("cmpeq", a, b), half, _zero(g)))
    return ga, gb


def _reduce_max_vjp(n: Node, g: Node) -> tuple[Node]:
    (x,) = n.srcs
    mask = B.cast(B.binary("cmpeq", x, B.expand(n, x.shape)), x.dtype)
    count = B.reduce("reduce_sum", mask, n.arg)  # ties share the gradient evenly
    return (B.mul(mask, B.expand(B.binary("div", g, count), x.shape)),)


def _div_vjp(n: Node, g: Node) -> tuple[Node, Node]:
    """d (a/b) / da = 1/b, d (a/b) / db = -a/b**2 = -(g/b) * (a/b): g/b is shared, and n is a/b."""
    ga = B.binary("div", g, n.srcs[1])
    return ga, B.neg(B.mul(ga, n))


def _expand_vjp(n: Node, g: Node) -> tuple[Node]:
    x = n.srcs[0]
    return (B.reduce("reduce_sum", g, [i for i, (a, b) in enumerate(zip(x.shape, n.shape)) if a != b]),)


def _pow_vjp(n: Node, g: Node) -> tuple[Node, Node]:
    """d a**b / da = b * a**(b-1) and d a**b / db = a**b * log(a), with torch's values where these are 0 * inf:
    0 where b == 0 (x**0 is constant; b * a**(b-1) is 0 * inf = nan at a = 0), and d/db 0 where a == 0 and
    b >= 0 (a**b is 0 or 1 there, log(a) is -inf). So x**x has gradient 0 at 0, as in torch."""
    a, b = n.srcs
    zero = _zero(n)
    da = B.where(B.binary("cmpeq", b, zero), zero, B.mul(b, B.binary("pow", a, B.add(b, B.full_like(b, -1)))))
    db = B.mul(n, B.unary("log", a))
    db = B.where(B.binary("cmpeq", a, zero), B.where(B.binary("cmple", zero, b), zero, db), db)
    return B.mul(g, da), B.mul(g, db)


def _inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(order)
    for i, o in enumerate(order):
        inv[o] = i
    return tuple(inv)


RULES: dict[str, VJP] = {
    "add": lambda n, g: (g, g),
    "mul": lambda n, g: (B.mul(g, n.srcs[1]), B.mul(g, n.srcs[0])),
    "div": _div_vjp,
    "max": _max_vjp,
    "pow": _pow_vjp,
    "neg": lambda n, g: (B.neg(g),),
    "exp": lambda n, g: (B.mul(g, n),),
    "log": lambda n, g: (B.binary("div", g, n.srcs[0]),),
    "sqrt": lambda n, g: (B.binary("div", g, B.mul(n, B.full_like(n, 2))),),
    "sin": lambda n, g: (B.mul(g, B.unary("cos", n.srcs[0])),),
    "cos": lambda n, g: (B.neg(B.mul(g, B.unary("sin", n.srcs[0]))),),
    "recip": lambda n, g: (B.neg(B.mul(g, B.mul(n, n))),),
    "tanh": lambda n, g: (B.mul(g, B.add(B.full_like(n, 1), B.neg(B.mul(n, n)))),),
    "cast": lambda n, g: (B.cast(g, n.srcs[0].dtype) if n.srcs[0].dtype.kind == "f" else None,),
    "detach": lambda n, g: (None,),
    "where": lambda n, g: (None, B.where(n.srcs[0], g, _zero(g)), B.where(n.srcs[0], _zero(g), g)),
    "reduce_sum": lambda n, g: (B.expand(g, n.srcs[0].shape),),
    "reduce_max": _reduce_max_vjp,
    "reshape": lambda n, g: (B.reshape(g, n.srcs[0].shape),),
    "permute": lambda n, g: (B.permute(g, _inverse(n.arg)),),
    "expand": _expand_vjp,
    "slice": lambda n, g: (B.pad(g, n.srcs[0].shape, n.arg),),
    "pad": lambda n, g: (B.slice_(g, n.arg[1]),),
    "matmul": lambda n, g: (B.matmul(g, B.swap_last(n.srcs[1])), B.matmul(B.swap_last(n.srcs[0]), g)),
}
NO_GRAD = {"cmplt", "cmple", "cmpeq", "cmpne", "buffer", "const", "iota", "rand"}


def expand_grads(roots: list[Node], full: bool = False) -> list[Node]:
    """Replace every unexpanded grad node under roots by its VJP graph (the IR → IR autodiff pass).

    All grad nodes sharing a (root, seed) are expanded by one reverse walk, so a training step's
    parameter gradients cost one backward pass. Graphs without grad nodes are returned unchanged.
    With full, realized nodes are looked through too (differentiating needs the whole graph)."""
    order = toposort(roots, stop_at_realized=not full)
    if not any(n.op == ops.GRAD and (full or n.buffer is None) for n in order):
        return roots
    new: dict[int, Node] = {}
    done: dict[int, Node] = {}  # grad node id -> its expansion
    for n in order:
        if n.buffer is not None and not full:
            continue
        if n.op == ops.GRAD:
            if id(n) not in done:
                _expand_group(n, order, done)
            new[id(n)] = done[id(n)]
            continue
        srcs = tuple(new.get(id(s), s) for s in n.srcs)
        if srcs != n.srcs:
            m = make(n.op, srcs, n.dtype, n.shape, n.arg)
            if m.tag == "forward":
                m.tag = n.tag
            new[id(n)] = m
    return [new.get(id(r), r) for r in roots]


def _expand_group(g: Node, order: list[Node], done: dict[int, Node]) -> None:
    root, seed = g.srcs[0], (g.srcs[2] if len(g.srcs) > 2 else None)
    group = [n for n in order if n.op == ops.GRAD and n.srcs[0] is root
             and (n.srcs[2] if len(n.srcs) > 2 else None) is seed]
    grads = gradients(root, [n.srcs[1] for n in group], seed)
    with phase("backward"):
        for n, gr in zip(group, grads):
            done[id(n)] = gr if gr is not None else B.full_like(n.srcs[1], 0)


def gradients(root: Node, wrt: list[Node], seed: Node | None = None) -> list[Node | None]:
    """d root / d wrt[i] as new IR nodes (None where root does not depend on wrt[i]).

    Walks the graph once in reverse topological order, summing contributions per node, so the
    gradient graph stays linear in the size of the forward graph even on diamond-shaped graphs."""
    if seed is None:
        if root.shape != ():
            raise ValueError(f"gradients: root must be a scalar, got shape {root.shape}; pass a seed gradient")
        seed = B.full_like(root, 1)
    elif seed.shape != root.shape:
        raise ValueError(f"gradients: seed gradient shape {seed.shape} differs from root shape {root.shape}")
    (root,) = expand_grads([root], full=True)  # grad of grad: differentiate the inner gradient's graph
    if seed is not None:
        (seed,) = expand_grads([seed])
    order = toposort([root])
    # Only nodes on a path from some wrt to root need a gradient.
    targets = {id(w) for w in wrt}
    needed: set[int] = set()
    for n in order:
        if id(n) in targets or any(id(s) in needed for s in n.srcs):
            needed.add(id(n))
    grads: dict[int, Node] = {id(root): seed}
    with phase("backward"):
        for n in reversed(order):
            g = grads.pop(id(n), None) if id(n) not in targets else grads.get(id(n))
            if g is None or not n.srcs or n.op in NO_GRAD:
                continue
            rule = RULES.get(n.op)
            if rule is None:
                raise NotImplementedError(f"autodiff: no gradient rule for op {n.op!r}")
            for s, gs in zip(n.srcs, rule(n, g)):
                if gs is None or id(s) not in needed:
                    continue
                prev = grads.get(id(s))
                grads[id(s)] = gs if prev is None else B.add(prev, gs)
    return [grads.get(id(w)) for w in wrt]
