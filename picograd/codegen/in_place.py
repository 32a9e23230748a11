"""Which assigned values a CPU program may compute over the arrays they replace (picograd.jit's in-place
updates of parameters and optimizer state): a question about a finished schedule, asked before rendering it
(cache.build passes the pairs to cpu.render_program, which then stores through the input's name)."""

from __future__ import annotations

from ..ir import ops
from ..ir.node import Node
from .schedule import REDUCE, Schedule, matmul_operands, view_base


def in_place_pairs(sched: Schedule, roots: list[Node], updates: dict[int, Node]) -> dict[int, int]:
    """{output buffer j: input i} for the updates (root position -> the realized node it replaces) that the
    program can compute over the old value (writable_in_place)."""
    pos_in = {id(n): i for i, n in enumerate(sched.inputs)}
    pos_out = {id(n): j for j, n in enumerate(sched.out_buffers)}
    pairs: dict[int, int] = {}
    for r, old in sorted(updates.items()):
        out = view_base(roots[r])
        i, j = pos_in.get(id(old)), pos_out.get(id(out))
        if i is None or j is None or j in pairs or i in pairs.values():
            continue
        if writable_in_place(sched, old, out):
            pairs[j] = i
    return pairs


def writable_in_place(sched: Schedule, inp: Node, out: Node) -> bool:
    """Whether the program may write root buffer `out` into the array of its input `inp` (an optimizer
    state updated in place instead of into a fresh array: half the memory traffic of an Adam update, see
    picograd.jit). True when no read of inp can see the new values: kernels after out's kernel don't read
    inp; inside it, inp is not a matmul operand and is read only at the loop's own index (elementwise ops of
    its shape, no movement op on any path), by the loop that writes out or by the main loop before a post
    loop writes it; no root is a view of inp. Whether anything outside the program still holds inp's old
    value is the caller's question."""
    k = sched.kernel_of.get(id(out))
    if k is None or inp.shape != out.shape or inp.dtype != out.dtype or any(b is inp for b in sched.root_source):
        return False
    in_post = any(o is out for o in k.post)
    if not in_post and not any(o is out for o in k.stores):
        return False  # a matmul or reduction output is written before (or while) its sources are read
    if k.matmul is not None and any(op[0] is inp for op in matmul_operands(k.matmul)[1:]):
        return False  # blocks of the product still read it while earlier blocks run their epilogues
    if any(x is inp for later in sched.kernels[k.index + 1 :] for x in later.inputs + later.nodes):
        return False
    # nodes computed in the post loop: the post outputs' trees down to the reductions (main-loop values)
    post: set[int] = set()
    stack = list(k.post)
    reduced = {id(r) for r in k.reduces}
    members = {id(n) for n in k.nodes}
    while stack:
        n = stack.pop()
        if id(n) in post or id(n) in reduced or id(n) not in members:
            continue
        post.add(id(n))
        stack.extend(n.srcs)
    depends = {id(inp)}
    for n in k.nodes:
        if n is inp or (in_post and id(n) not in post) or not any(id(s) in depends for s in n.srcs):
            continue  # (with out in the post loop, every main-loop read is over before it writes)
        if n.op not in ops.ELEMENTWISE and n.op not in REDUCE:
            return False  # a movement op or a matmul reads it at another index
        if any(s is inp for s in n.srcs):
            if n.shape != inp.shape and n.op not in REDUCE:
                return False
            if id(n) in post and not in_post:
                return False  # read after the main loop has written out
        depends.add(id(n))
    return True
