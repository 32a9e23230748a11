"""Text and DOT views of a lazy graph, for people reading what the compiler was given.

The text form is jaxpr-like and diff-friendly: no memory addresses, binders numbered by a deterministic
topological order, so the same graph always prints the same text. Realized nodes are the program's inputs
(`in0`, `in1`, ... numbered as `structural_key` numbers them). Scalar constants and their broadcasts
(reshape/expand of a const) print inline as literals: they cost nothing in a kernel, and spelling them out
would triple the length of every `x * 0.5`.

Kernel assignment comes from the caller (`kernel_of`: id(node) -> kernel name) so this module never imports
the code generators."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

import numpy as np

from .node import Node

PHASES = ("forward", "backward", "update")
# Fill colours of the DOT view; html_report draws its legend from the same table.
PHASE_COLOURS = {"forward": "#cfe2ff", "backward": "#ffd8a8", "update": "#c3f0c8", "input": "#e9ecef"}
_SHORT = {"float16": "f16", "float32": "f32", "float64": "f64", "bool": "bool"}
_VIEW_OPS = ("reshape", "expand")


def dtype_str(dt: np.dtype) -> str:
    """f32, i64, u8, bool, ...: numpy's name shortened the way jaxpr does."""
    name = np.dtype(dt).name
    if name in _SHORT:
        return _SHORT[name]
    for long, short in (("uint", "u"), ("int", "i"), ("float", "f"), ("complex", "c")):
        if name.startswith(long):
            return short + name[len(long):]
    return name


def type_str(n: Node) -> str:
    return f"{dtype_str(n.dtype)}[{','.join(str(s) for s in n.shape)}]"


def _slice_str(s: tuple[int, int, int], size: int | None = None) -> str:
    start, stop, step = s
    if step == 1 and start == 0 and size is not None and stop == size:
        return ":"
    if step < 0 and stop < 0:
        # Stored as stop -1 ("past index 0"), but in Python's syntax 2:-1:-1 would read as an empty slice
        return f"{start}::{step}"
    txt = f"{start}:{stop}"
    return txt if step == 1 else f"{txt}:{step}"


def arg_str(n: Node) -> str:
    """The op's static argument, compact ('' when the binder's type already says it all)."""
    op, arg = n.op, n.arg
    if op in ("reduce_sum", "reduce_max"):
        return "axes=" + ",".join(str(a) for a in arg)
    if op == "permute":
        return ",".join(str(a) for a in arg)
    if op == "slice":
        return ", ".join(_slice_str(s, d) for s, d in zip(arg, n.srcs[0].shape, strict=True))
    if op == "pad":
        full, slices = arg
        return ", ".join(_slice_str(s, d) for s, d in zip(slices, full, strict=True))
    if op == "iota":
        return f"axis={arg}"
    return ""  # reshape, expand, cast: the output type is the argument


def literal_of(n: Node) -> str | None:
    """The literal text of a broadcast scalar constant, or None if n is not one."""
    while n.op in _VIEW_OPS and n.buffer is None:
        n = n.srcs[0]
    if n.op != "const" or n.buffer is not None:
        return None
    v = n.arg
    if n.dtype.kind == "f" and not isinstance(v, bool):
        # The value the program computes with: 1e40 is inf in f32, 16777217 is 16777216. numpy's str is the
        # shortest text that reads back as that value.
        with np.errstate(over="ignore"):  # the overflow to inf is what the program does too
            txt = str(n.dtype.type(v))
    else:
        txt = repr(v)
    return txt if n.dtype == np.float32 or isinstance(v, bool) else f"{txt}:{dtype_str(n.dtype)}"


class GraphView:
    """The numbering shared by the text and DOT forms: inputs, body nodes in print order, literals.

    Body order is a topological order that keeps each phase together where the graph allows it (forward,
    then backward, then update), ties broken by the plain toposort position, so it is deterministic."""

    def __init__(self, roots: Sequence[Node]) -> None:
        self.roots = list(roots)
        topo = walk(self.roots)
        computed = {id(r) for r in self.roots if r.op != "buffer"}
        self.inputs = [n for n in topo if n.buffer is not None and id(n) not in computed]
        self.literals = {id(n): lit for n in topo if n.buffer is None and (lit := literal_of(n)) is not None}
        body = [n for n in topo if (n.buffer is None or id(n) in computed) and id(n) not in self.literals]
        self.body = _phase_order(body)
        self.name: dict[int, str] = {id(n): f"in{i}" for i, n in enumerate(self.inputs)}
        self.name.update((id(n), f"%{i}") for i, n in enumerate(self.body))
        self.users: dict[int, int] = {}
        for n in self.body:
            for s in n.srcs:
                self.users[id(s)] = self.users.get(id(s), 0) + 1
        self.outputs = {id(r): i for i, r in reversed(list(enumerate(self.roots)))}

    def operand(self, s: Node) -> str:
        return self.literals.get(id(s)) or self.name[id(s)]

    def rhs(self, n: Node) -> str:
        """`op[arg] operands` of a body node."""
        a = arg_str(n)
        head = f"{n.op}[{a}]" if a else n.op
        return " ".join([head] + [self.operand(s) for s in n.srcs])

    def note(self, n: Node, kernel: str | None = None) -> str:
        k = self.users.get(id(n), 0)
        parts = [f"{k} user" + ("" if k == 1 else "s")]
        if id(n) in self.outputs:
            # every position: dump(a + 1, a + 1) hash-conses both outputs into one node
            parts.append(",".join(f"out{i}" for i, r in enumerate(self.roots) if r is n))
        if kernel:
            parts.append(kernel)
        return "  ".join(parts)


def walk(roots: Sequence[Node]) -> list[Node]:
    """Post-order DFS like node.toposort(stop_at_realized=True), except that a realized root is walked
    through: a hook looks at a program after its outputs got their buffers, and still wants its body.
    Inputs come out in the order structural_key numbers them."""
    through = {id(r) for r in roots}
    order: list[Node] = []
    state: dict[int, bool] = {}  # id -> finished
    for root in roots:
        stack = [root]
        while stack:
            n = stack.pop()
            done = state.get(id(n))
            if done:
                continue
            if done is False:
                state[id(n)] = True
                order.append(n)
                continue
            state[id(n)] = False
            stack.append(n)
            if n.buffer is not None and (n.op == "buffer" or id(n) not in through):
                continue
            stack.extend(s for s in reversed(n.srcs) if not state.get(id(s)))
    return order


def correspondence(a_roots: Sequence[Node], b_roots: Sequence[Node]) -> dict[int, Node] | None:
    """id(node of graph a) -> the node at the same place in graph b, when both have the same structure (as two
    steps of a training loop do: a cached program's kernels refer to the graph it was compiled from, and this
    maps them onto the graph being run now). None when the structures differ."""
    a, b = walk(a_roots), walk(b_roots)
    if len(a) != len(b):
        return None
    for x, y in zip(a, b, strict=True):
        if x.op != y.op or x.shape != y.shape or x.dtype != y.dtype or (x.op != "buffer" and x.arg != y.arg):
            return None
    return {id(x): y for x, y in zip(a, b, strict=True)}


def _phase_rank(n: Node) -> int:
    return PHASES.index(n.tag) if n.tag in PHASES else len(PHASES)


def _phase_order(body: list[Node]) -> list[Node]:
    pos = {id(n): i for i, n in enumerate(body)}
    indeg = {id(n): 0 for n in body}
    users: dict[int, list[Node]] = {id(n): [] for n in body}
    for n in body:
        for s in set(map(id, n.srcs)):
            if s in pos:
                indeg[id(n)] += 1
                users[s].append(n)
    heap = [(_phase_rank(n), pos[id(n)]) for n in body if indeg[id(n)] == 0]
    heapq.heapify(heap)
    out: list[Node] = []
    while heap:
        _, i = heapq.heappop(heap)
        n = body[i]
        out.append(n)
        for u in users[id(n)]:
            indeg[id(u)] -= 1
            if indeg[id(u)] == 0:
                heapq.heappush(heap, (_phase_rank(u), pos[id(u)]))
    return out


def _kernel_label(kernel_of: Mapping[int, str] | None, n: Node) -> str | None:
    return None if kernel_of is None else kernel_of.get(id(n))


def format_graph(roots: Sequence[Node], kernel_of: Mapping[int, str] | None = None, title: str | None = None,
                 view: GraphView | None = None) -> str:
    """The graph as text: a header, the inputs, one binder per node under phase headers, the outputs.

    `%12:f32[128,10] = add %10 %11    # 2 users  out0  k3` reads: node 12, its type, its op and operands;
    two nodes use it, it is output 0, and kernel k3 computes it (when kernel_of is given; a node recomputed in
    several kernels has their names joined by commas)."""
    v = view or GraphView(roots)
    rows: list[tuple[str, str]] = []  # (code, comment); comments are aligned at the end
    lines: list[str] = []
    head = f"{len(v.inputs)} inputs, {len(v.body)} nodes, {len(v.roots)} outputs"
    if kernel_of is not None:
        kernels = {k for n in v.body if id(n) in kernel_of for k in kernel_of[id(n)].split(",")}
        head += f", {len(kernels)} kernels"
    lines.append(f"# {title}: {head}" if title else f"# {head}")
    if v.literals:
        lines.append("# literals are scalar constants broadcast to the operand's shape")
    rows.append(("inputs:", ""))
    for n in v.inputs:
        what = "" if n.op == "buffer" else f"  realized {n.op}"
        rows.append((f"  {v.name[id(n)]}:{type_str(n)}", v.note(n) + what))
    current = None
    for n in v.body:
        if n.tag != current:
            current = n.tag
            rows.append((f"{current}:", ""))
        rows.append((f"  {v.name[id(n)]}:{type_str(n)} = {v.rhs(n)}", v.note(n, _kernel_label(kernel_of, n))))
    rows.append(("outputs: " + " ".join(v.operand(r) for r in v.roots), ""))
    width = min(72, max((len(code) for code, c in rows if c), default=0))
    for code, comment in rows:
        lines.append(f"{code.ljust(width)}  # {comment}" if comment else code)
    return "\n".join(lines) + "\n"


def _dot_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def to_dot(
    roots: Sequence[Node],
    kernel_of: Mapping[int, str] | None = None,
    kernel_labels: Mapping[str, str] | None = None,
    title: str | None = None,
    view: GraphView | None = None,
    kernel_urls: Mapping[str, str] | None = None,
) -> str:
    """The graph in Graphviz DOT: one box per node coloured by phase, inputs grey, one cluster per kernel.

    kernel_labels maps a kernel name to the caption of its cluster (kind, shape, time); clusters are emitted
    in order of first appearance so the picture is stable. Literals are folded into their users' labels.
    view: a GraphView made earlier of the same roots (keeps the numbering of a text dump made with it).
    kernel_urls: a link per kernel cluster (the HTML report points each at that kernel's source)."""
    v = view or GraphView(roots)
    ids = {id(n): f"in{i}" for i, n in enumerate(v.inputs)}
    ids.update((id(n), f"n{i}") for i, n in enumerate(v.body))
    out = ["digraph picograd {"]
    graph_label = f', label="{_dot_escape(title)}", labelloc=t, fontsize=14' if title else ""
    out.append(f'  graph [rankdir=TB, nodesep=0.25, ranksep=0.35, fontname="Helvetica"{graph_label}];')
    out.append('  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, penwidth=0.8];')
    out.append('  edge [color="#555555", arrowsize=0.6];')

    def node_stmt(n: Node) -> str:
        name = v.name[id(n)]
        if n.buffer is not None:
            top, fill, extra = name, PHASE_COLOURS["input"], ", shape=ellipse"
        else:
            lits = [v.literals[id(s)] for s in n.srcs if id(s) in v.literals]
            a = arg_str(n)
            top = " ".join([name, f"{n.op}[{a}]" if a else n.op] + lits)
            fill, extra = PHASE_COLOURS.get(n.tag, "#ffffff"), ""
        if id(n) in v.outputs:
            extra += ", penwidth=2.2"
        label = _dot_escape(top) + "\\n" + _dot_escape(type_str(n))  # \n: DOT's centred line break
        # The tooltip (shown on hover in the SVG) is the node's whole line of the text dump.
        tip = f"{name}:{type_str(n)}" if n.buffer is not None else f"{name}:{type_str(n)} = {v.rhs(n)}  ({n.tag})"
        return f'"{ids[id(n)]}" [label="{label}", fillcolor="{fill}", tooltip="{_dot_escape(tip)}"{extra}];'

    for n in v.inputs:
        out.append("  " + node_stmt(n))
    clusters: dict[str, list[Node]] = {}
    loose: list[Node] = []
    for n in v.body:
        k = _kernel_label(kernel_of, n)
        (clusters.setdefault(k, []) if k else loose).append(n)
    for ci, (k, members) in enumerate(clusters.items()):
        caption = (kernel_labels or {}).get(k, k)
        out.append(f"  subgraph cluster_{ci} {{")
        out.append(f'    label="{_dot_escape(caption)}"; fontsize=10; style="rounded,dashed"; color="#6c757d";')
        if kernel_urls and k in kernel_urls:
            out.append(f'    URL="{_dot_escape(kernel_urls[k])}"; tooltip="{_dot_escape(caption)}";')
        out.extend("    " + node_stmt(n) for n in members)
        out.append("  }")
    out.extend("  " + node_stmt(n) for n in loose)
    for n in v.body:
        for s in n.srcs:
            if id(s) in ids:
                out.append(f'  "{ids[id(s)]}" -> "{ids[id(n)]}";')
    out.append("}")
    return "\n".join(out) + "\n"
