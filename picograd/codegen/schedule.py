"""Fusion: partition a lazy graph into kernels. Backend-neutral: the Numba CPU and CUDA renderers share it.

Kernel data structure
---------------------
A Kernel is at most one matmul followed by one loop nest over an iteration domain, then an optional
loop over the reduced shape:

    [matmul]   k.matmul = A @ B                    (kind "matmul"; BLAS on the CPU). Operands are views of
                                                   materialized buffers: see `matmul_operands`. k.matmul may
                                                   also be swap_last(A @ B), computed as swap(B) @ swap(A).
    loop over k.domain (C order), at index i:
        k.stores   elementwise nodes of shape k.domain (up to size-1 axes), computed at i, written out
        k.reduces  reduce nodes whose source has shape k.domain, all over the same k.axes; the source is
                   computed at i and accumulated into the output at i with the k.axes zeroed
    loop over k.out_shape (the domain with k.axes set to 1), after the reductions are complete:
        k.post     elementwise nodes of shape k.out_shape, up to size-1 axes (a reduction's epilogue: mean's
                   scaling, a bias gradient's SGD update)

For a matmul kernel the domain is the matmul's output shape and the loop is its epilogue (bias, activation,
the ReLU mask of the backward pass, even an optimizer update of the weight whose gradient it computes).

How a node is computed inside a loop: its source tree is inlined down to the boundary, which is
  - `k.inputs`: program inputs and outputs of earlier kernels, loaded from their buffers through whatever
    movement ops lie between (reshape/permute/expand/slice/pad become index arithmetic, never copies);
  - in the main loop, `k.matmul` (its output buffer); in the post loop, the nodes of `k.reduces`.
Everything else on the way (elementwise ops, movement ops, const, iota, rand, and "local" nodes: values
shared by several outputs of the same loop, read at the same index, so they never touch memory) is computed
in place. The scheduler guarantees that an output of the same loop is only ever read at the loop's own
index, so the renderer may compute each (node, index) once per iteration.

`k.outputs` are all nodes the kernel writes to buffers (matmul, stores, reduces, post), `k.nodes` every
IR node computed inside it (a cheap node shared by two kernels is recomputed in each, so it appears in both).
Buffers: `Schedule.outputs` are the requested roots; a root that is a reshape/detach of another node is a
view of that node's buffer (`Schedule.root_source`), or of a program input. `Schedule.out_buffers` (the
distinct computed root sources) get fresh arrays per run; `Schedule.intermediates` are the other
materialized nodes (scratch, allocated once per program and reused).

Fusion rules
------------
Materialized ("R") nodes: roots, reductions, matmuls and the operands a matmul cannot read as a view; plus
elementwise nodes that the inlined trees of two or more R nodes share, unless they are cheap to recompute
(a few arithmetic ops, no transcendental). Then, in topological order, each R node joins the first kernel it
can join, preferring the kernel that produces what it reads (producer-consumer fusion: matmul epilogues,
reductions fused into the loop that computes their input) and otherwise a sibling over the same domain
(e.g. the three outputs of an Adam update share one loop). It may join kernel k only if everything it reads
is produced before k, or by k in an earlier phase or at the same loop index. Shared values whose readers all
ended up in their own loop become locals: no buffer at all.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass, field

from ..ir import ops
from ..ir.node import Node, toposort
from ..ir.shape import prod

MOVEMENT = frozenset(ops.MOVEMENT)
REDUCE = frozenset(ops.REDUCE)
# Values worth a buffer when shared: recomputing them per reader would cost more than a load.
EXPENSIVE = frozenset(("exp", "log", "sqrt", "sin", "cos", "tanh", "pow", "recip", "div", ops.RAND))
FREE = MOVEMENT | {ops.CONST, ops.IOTA, "cast", "detach"}
RECOMPUTE_LIMIT = 4  # a shared node is recomputed in each reader when its inlined tree has at most this many ops
_INF = 1 << 30
# Order ready kernels smallest first (_small_first); PICOGRAD_SMALL_FIRST=0 keeps the order they were made in.
SMALL_FIRST = os.environ.get("PICOGRAD_SMALL_FIRST", "1") != "0"


@dataclass(eq=False)
class Kernel:
    name: str
    kind: str  # "elementwise" | "reduce" | "matmul"
    domain: tuple[int, ...]  # the main loop's iteration shape
    axes: tuple[int, ...] = ()  # reduced axes of the domain (empty without reductions)
    matmul: Node | None = None
    stores: list[Node] = field(default_factory=list)
    reduces: list[Node] = field(default_factory=list)
    post: list[Node] = field(default_factory=list)
    inputs: list[Node] = field(default_factory=list)  # materialized nodes read, produced elsewhere
    nodes: list[Node] = field(default_factory=list)  # every IR node computed inside, topological order
    flops: int = 0
    bytes: int = 0
    index: int = 0  # position in the schedule

    @property
    def shape(self) -> tuple[int, ...]:
        return self.domain

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(1 if i in self.axes else s for i, s in enumerate(self.domain))

    @property
    def outputs(self) -> list[Node]:
        return ([self.matmul] if self.matmul is not None else []) + self.stores + self.reduces + self.post

    def __repr__(self) -> str:
        return f"Kernel({self.name}, outputs={len(self.outputs)}, inputs={len(self.inputs)})"


@dataclass(eq=False)
class Schedule:
    kernels: list[Kernel]
    outputs: list[Node]  # the roots, in the order asked for
    inputs: list[Node]  # realized nodes read by the program, numbered by position
    intermediates: list[Node]  # materialized non-root nodes (scratch buffers)
    kernel_of: dict[int, Kernel]  # id(node) -> the kernel that writes it (materialized nodes only)
    # For each root, the node whose buffer holds its data: the root itself, or, for a root that is a reshape
    # or detach of another node, that node (a view, no copy kernel); it may be a program input.
    root_source: list[Node] = field(default_factory=list)
    out_buffers: list[Node] = field(default_factory=list)  # distinct computed root sources: fresh arrays per run

    @property
    def buffers(self) -> list[Node]:
        return self.out_buffers + self.intermediates

    def __repr__(self) -> str:
        return f"Schedule({len(self.kernels)} kernels, {len(self.intermediates)} intermediate buffers)"


def _is_swap(n: Node) -> bool:
    k = len(n.shape)
    return n.op == "permute" and k >= 2 and n.arg == tuple(range(k - 2)) + (k - 1, k - 2)


def matmul_operand(x: Node) -> tuple[Node, tuple[int, ...] | None, bool]:
    """How a matmul reads operand x: (base, reshape, transposed), meaning x == swap_last(base.reshape(shape))
    when transposed else base.reshape(shape); shape None means no reshape. The base must be materialized;
    every renderer can view a contiguous base that way without a copy (numpy: reshape and .T)."""
    transposed = False
    while _is_swap(x):
        transposed, x = not transposed, x.srcs[0]
    shape = None
    if x.op == "reshape":
        shape, x = x.shape, x.srcs[0]
    return x, shape, transposed


def matmul_operands(n: Node) -> tuple[Node, tuple, tuple]:
    """For a kernel's `matmul` node n: (the matmul op itself, operand A, operand B) with n == A @ B, each
    operand as matmul_operand gives it. n may also be swap_last(matmul(a, b)), computed directly as
    swap(b) @ swap(a) so a transposed product (a weight gradient) needs no transposing copy."""
    if n.op == ops.MATMUL:
        return n, matmul_operand(n.srcs[0]), matmul_operand(n.srcs[1])
    m = n.srcs[0]
    (ab, ash, at), (bb, bsh, bt) = matmul_operand(m.srcs[0]), matmul_operand(m.srcs[1])
    return m, (bb, bsh, not bt), (ab, ash, not at)


def _squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(s for s in shape if s != 1)


def _unit_reshape(n: Node) -> bool:
    """A reshape that only adds or drops size-1 axes keeps the flat index: reads through it stay 'identity'."""
    return n.op == "reshape" and _squeeze(n.shape) == _squeeze(n.srcs[0].shape)


def view_base(n: Node) -> Node:
    """The node whose contiguous buffer n's data is, looking through reshape and detach (n itself if neither)."""
    while n.op in ("reshape", "detach") and n.buffer is None:
        n = n.srcs[0]
    return n


def _reads(n: Node, start: list[Node], is_boundary) -> tuple[dict[int, list], list[Node]]:
    """Walk the inlined tree from `start` (n's sources, or a reduce's input) down to the boundary.

    Returns ({id(d): [d, identity]} for every boundary node d read, identity meaning "read at the loop index"
    on every path), and the inlined nodes (unordered). When n is itself a movement op (a flip, a transpose, a
    pad), its sources are read elsewhere than at its loop index: a kernel whose blocks each compute their own
    rows (a matmul in blocks) must not take it as a fused step (it read rows another block had not written)."""
    reads: dict[int, list] = {}
    seen: dict[int, bool] = {}  # id -> visited at identity (a False visit covers both)
    inner: dict[int, Node] = {}
    first = n.op in REDUCE or n.op not in MOVEMENT or _unit_reshape(n)
    stack = [(s, first) for s in start]
    while stack:
        x, ident = stack.pop()
        if is_boundary(x):
            r = reads.get(id(x))
            if r is None:
                reads[id(x)] = [x, ident]
            else:
                r[1] = r[1] and ident
            continue
        prev = seen.get(id(x))
        if prev is not None and (prev is False or prev == ident):
            continue
        seen[id(x)] = ident
        inner[id(x)] = x
        src_ident = ident and (x.op not in MOVEMENT or _unit_reshape(x))
        for s in x.srcs:
            stack.append((s, src_ident))
    return reads, list(inner.values())


def _costs(order: list[Node], R: set[int]) -> dict[int, int]:
    """Ops in each node's inlined tree (recounting shared subtrees), stopping at realized or R nodes."""
    cost: dict[int, int] = {}
    for n in order:
        if n.buffer is not None or id(n) in R:
            cost[id(n)] = 0
            continue
        c = sum(cost[id(s)] for s in n.srcs)
        if n.op in EXPENSIVE and prod(n.shape) > 1:  # (one value, e.g. a mean's 1/n: computed once per kernel)
            c = _INF
        elif n.op not in FREE:
            c += 1
        cost[id(n)] = min(c, _INF)
    return cost


class _Builder:
    def __init__(self, roots: list[Node], inputs: list[Node] | None) -> None:
        self.roots = roots
        self.order = toposort(roots, stop_at_realized=True)
        if inputs is None:
            inputs = [n for n in self.order if n.buffer is not None]
        self.inputs = inputs
        self.R: set[int] = set()
        self.kernels: list[Kernel] = []
        self.pos: dict[int, int] = {}  # id(R node) -> kernel index
        self.phase: dict[int, str] = {}  # id(R node) -> "matmul" | "loop" | "reduce" | "post"
        self.readers: dict[int, list[tuple[Node, int, str]]] = {}  # id(d) -> [(reader, kernel idx, phase)]
        self.trees: dict[int, list[Node]] = {}  # id(R node) -> inlined nodes
        self.tmatmul: set[int] = set()  # swap_last(matmul) nodes computed as one transposed matmul

    # ---- which nodes get buffers ------------------------------------------------------------------
    def choose_materialized(self) -> None:
        R = self.R
        consumers: dict[int, list[Node]] = {}
        for n in self.order:
            if n.buffer is not None:
                continue
            for s in n.srcs:
                lst = consumers.setdefault(id(s), [])
                if not any(c is n for c in lst):
                    lst.append(n)
            if n.op in REDUCE or n.op == ops.MATMUL:
                R.add(id(n))
        for r in self.roots:
            base = view_base(r)
            if base.buffer is None:
                R.add(id(base))
        root_bases = {id(view_base(r)) for r in self.roots}
        for n in self.order:
            if n.op == ops.MATMUL and n.buffer is None:
                for s in n.srcs:
                    base = matmul_operand(s)[0]
                    if base.buffer is None:
                        R.add(id(base))
            m = n.srcs[0] if _is_swap(n) and n.buffer is None else None
            if (m is not None and m.op == ops.MATMUL and m.buffer is None and id(m) not in root_bases
                    and len(consumers.get(id(m), ())) == 1):
                R.discard(id(m))  # only read transposed: compute the transposed product instead
                R.add(id(n))
                self.tmatmul.add(id(n))
        cost = _costs(self.order, R)
        MANY = -1
        owner: dict[int, int] = {}
        for n in reversed(self.order):
            if n.buffer is not None or id(n) in R:
                continue
            os_ = {id(c) if id(c) in R else owner[id(c)] for c in consumers.get(id(n), ())}
            if len(os_) == 1 and MANY not in os_:
                owner[id(n)] = next(iter(os_))
            elif cost[id(n)] > RECOMPUTE_LIMIT and n.op not in FREE:
                R.add(id(n))  # shared and costly: materialize (it may still end up a local)
            else:
                owner[id(n)] = MANY  # shared but cheap (or a view): each reader recomputes it

    # ---- grouping into kernels ----------------------------------------------------------------------
    def boundary(self, x: Node) -> bool:
        return x.buffer is not None or id(x) in self.R

    def can_join(self, k: Kernel, phase: str, reads: dict[int, list]) -> bool:
        allowed = {"loop": ("matmul", "loop"), "reduce": ("matmul", "loop"), "post": ("reduce", "post")}[phase]
        for d, ident in reads.values():
            p = self.pos.get(id(d), -1)
            if p < k.index:
                continue
            if p > k.index or not ident or self.phase[id(d)] not in allowed:
                return False
        return True

    def candidates(self, r: Node) -> list[tuple[Kernel, str]]:
        out = []
        for k in self.kernels:
            if r.op in REDUCE:
                if k.domain == r.srcs[0].shape and (not k.reduces or k.axes == r.arg):
                    out.append((k, "reduce"))
                continue
            if _squeeze(k.domain) == _squeeze(r.shape):
                out.append((k, "loop"))
            if k.reduces and _squeeze(k.out_shape) == _squeeze(r.shape):
                out.append((k, "post"))
        return out

    def place(self, r: Node) -> None:
        if r.op == ops.MATMUL or id(r) in self.tmatmul:
            m = r if r.op == ops.MATMUL else r.srcs[0]
            start = [matmul_operand(s)[0] for s in m.srcs]
            reads = {id(b): [b, False] for b in start}
            tree = [] if m is r else [m]  # the operands' view ops, computed as views inside the kernel
            for s, b in zip(m.srcs, start, strict=True):
                while s is not b:
                    tree.append(s)
                    s = s.srcs[0]
            k = self.new_kernel("matmul", r.shape)
            k.matmul, phase = r, "matmul"
        else:
            start = [r.srcs[0]] if r.op in REDUCE else list(r.srcs)
            reads, tree = _reads(r, start, self.boundary)
            best, best_score = None, -1
            rin = set(reads)
            for k, phase in self.candidates(r):
                if not self.can_join(k, phase, reads):
                    continue
                produces = any(self.pos.get(d, -1) == k.index for d in rin)
                shares = any(id(i) in rin for i in k.inputs)
                score = 2 * produces + shares
                if score > best_score or (score == best_score and produces):
                    best, best_score, best_phase = k, score, phase
            if best is None:
                phase = "reduce" if r.op in REDUCE else "loop"
                best = self.new_kernel("reduce" if r.op in REDUCE else "elementwise", start[0].shape if r.op in REDUCE
                                       else r.shape)
            else:
                phase = best_phase
            k = best
            if phase == "reduce":
                k.axes, k.kind = r.arg, ("matmul" if k.matmul is not None else "reduce")
                k.reduces.append(r)
            elif phase == "post":
                k.post.append(r)
            else:
                k.stores.append(r)
        self.pos[id(r)] = k.index
        self.phase[id(r)] = phase
        self.trees[id(r)] = tree
        for d, _ in reads.values():
            self.readers.setdefault(id(d), []).append((r, k.index, phase))
        for d, _ in reads.values():
            if self.pos.get(id(d), -1) != k.index and not any(i is d for i in k.inputs):
                k.inputs.append(d)

    def new_kernel(self, kind: str, domain: tuple[int, ...]) -> Kernel:
        k = Kernel(name="", kind=kind, domain=tuple(domain), index=len(self.kernels))
        self.kernels.append(k)
        return k

    # ---- after grouping ---------------------------------------------------------------------------
    def find_locals(self) -> set[int]:
        """Shared values read only inside their own loop, at its index: they need no buffer."""
        roots = {id(view_base(r)) for r in self.roots}
        local = set()
        for k in self.kernels:
            for lst, ph in ((k.stores, "loop"), (k.post, "post")):
                keep = []
                same = ("loop", "reduce") if ph == "loop" else ("post",)
                for d in lst:
                    rd = self.readers.get(id(d), [])
                    if id(d) not in roots and rd and all(ki == k.index and p in same for _, ki, p in rd):
                        local.add(id(d))
                    else:
                        keep.append(d)
                lst[:] = keep
        return local

    def finish(self, local: set[int]) -> Schedule:
        kernel_of: dict[int, Kernel] = {}
        for k in self.kernels:
            for o in k.outputs:
                kernel_of[id(o)] = k
        position = {id(n): i for i, n in enumerate(self.order)}
        members: list[dict[int, Node]] = [{} for _ in self.kernels]
        for r in self.order:
            ki = self.pos.get(id(r)) if id(r) in self.R else None
            if ki is not None:
                members[ki][id(r)] = r
                for t in self.trees[id(r)]:
                    members[ki][id(t)] = t
        for k in self.kernels:
            k.nodes = sorted(members[k.index].values(), key=lambda n: position[id(n)])
            k.inputs = [i for i in k.inputs if id(i) not in local]
            _estimate(k)
        if SMALL_FIRST:
            self.kernels = _small_first(self.kernels, kernel_of)
        for i, k in enumerate(self.kernels):
            k.index = i
            dims = "x".join(map(str, k.domain)) or "scalar"
            if k.matmul is not None:
                dims = "x".join(map(str, k.matmul.shape[:-1] + (contracted(k.matmul),) + k.matmul.shape[-1:]))
            ops_ = "_".join(sorted({r.op.replace("reduce_", "") for r in k.reduces})) if k.reduces else ""
            k.name = f"k{k.index}_{k.kind}" + (f"_{ops_}" if ops_ and k.kind == "reduce" else "") + f"_{dims}"
        roots = list(self.roots)
        sources = [view_base(r) for r in roots]
        outs: dict[int, Node] = {id(b): b for b in sources if b.buffer is None}
        inter = [n for n in self.order if id(n) in kernel_of and id(n) not in outs]
        return Schedule(self.kernels, roots, self.inputs, inter, kernel_of, sources, list(outs.values()))


def _small_first(kernels: list[Kernel], kernel_of: dict[int, Kernel]) -> list[Kernel]:
    """The kernels in an order that respects their data dependencies, taking among those ready the one that
    touches the fewest bytes first (ties: the order they were made in). Why: a small kernel left until after
    the big ones finds its inputs evicted by their traffic; the seed model's 800->10 weight gradient with its
    Adam update ran last, behind two kernels streaming ~15 MB each: 81-83 us, and 26 us right after the
    loss gradient that it reads."""
    deps = {id(k): {id(kernel_of[id(i)]) for i in k.inputs if id(i) in kernel_of} - {id(k)} for k in kernels}
    users: dict[int, list[Kernel]] = {}
    for k in kernels:
        for d in deps[id(k)]:
            users.setdefault(d, []).append(k)
    waiting = {id(k): len(deps[id(k)]) for k in kernels}
    ready = [(k.bytes, k.index, k) for k in kernels if not waiting[id(k)]]
    heapq.heapify(ready)
    order = []
    while ready:
        _, _, k = heapq.heappop(ready)
        order.append(k)
        for u in users.get(id(k), []):
            waiting[id(u)] -= 1
            if not waiting[id(u)]:
                heapq.heappush(ready, (u.bytes, u.index, u))
    assert len(order) == len(kernels), "kernel dependencies form a cycle"
    return order


def contracted(n: Node) -> int:
    """A matmul node's contraction length (its product may be stored transposed)."""
    m = matmul_operands(n)[0]
    return m.srcs[0].shape[-1]


def _itemsize(n: Node) -> int:
    return n.dtype.itemsize


def _estimate(k: Kernel) -> None:
    """Rough work estimates for reports: flops counts arithmetic per element, bytes the buffer traffic."""
    size = 1
    for s in k.domain:
        size *= s
    arith = sum(1 for n in k.nodes if n.op not in FREE and n.op not in (ops.BUFFER, ops.MATMUL))
    flops = arith * size
    if k.matmul is not None:
        flops += 2 * contracted(k.matmul) * size
    k.flops = flops
    k.bytes = sum(n.size * _itemsize(n) for n in k.inputs) + sum(n.size * _itemsize(n) for n in k.outputs)


def schedule(roots: list[Node], inputs: list[Node] | None = None) -> Schedule:
    """Partition the graph that computes `roots` into kernels, in execution order.

    inputs: the program's realized inputs in the order the caller numbers them (default: toposort order)."""
    seen: set[int] = set()
    uniq = []
    for r in roots:
        if id(r) not in seen:
            seen.add(id(r))
            uniq.append(r)
    b = _Builder(uniq, inputs)
    b.choose_materialized()
    for n in b.order:
        if id(n) in b.R and n.buffer is None:
            b.place(n)
    local = b.find_locals()
    sched = b.finish(local)
    sched.outputs = list(roots)  # one per root as given, duplicates included
    sched.root_source = [view_base(r) for r in roots]
    return sched
