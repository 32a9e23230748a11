"""The IR printer: golden text of a fixed graph, stability, kernel annotation and a DOT that parses.

Regenerate the golden file after an intended format change with PICOGRAD_REGEN_GOLDEN=1 (the test then skips,
so a regeneration never passes silently); CI never sets it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from picograd.ir import build as B
from picograd.ir.autodiff import gradients
from picograd.ir.node import Buffer, buffer_node, phase
from picograd.ir.printer import GraphView, format_graph, to_dot

GOLDEN = Path(__file__).parent / "golden"


def small_step(batch: int = 4):
    """A fixed graph touching most printer paths: matmul, broadcast bias, relu, slice, permute, cast, iota,
    rand, reduce_max/reduce_sum, its backward (pad from slice), and an SGD-like update."""
    rng = np.random.default_rng(0)
    x = buffer_node(Buffer(rng.standard_normal((batch, 3)).astype(np.float32)))
    w = buffer_node(Buffer(rng.standard_normal((3, 5)).astype(np.float32)))
    b = buffer_node(Buffer(np.zeros(5, np.float32)))
    seed = buffer_node(Buffer(np.array(7, np.uint32)))
    f32 = np.dtype(np.float32)
    h = B.add(B.matmul(x, w), B.expand(B.reshape(b, (1, 5)), (batch, 5)))
    h = B.binary("max", h, B.const(0.0, f32, h.shape))
    keep = B.cast(B.binary("cmplt", B.rand(seed, h.shape, f32), B.const(0.9, f32, h.shape)), f32)
    h = B.mul(h, keep)
    part = B.slice_(h, ((0, batch, 1), (1, 5, 2)))  # columns 1 and 3
    t = B.permute(part, (1, 0))
    onehot = B.cast(B.binary("cmpeq", B.iota((2, batch), 0, np.int64), B.const(1, np.int64, (2, batch))), f32)
    m = B.reduce("reduce_max", B.mul(t, onehot), (0,))
    loss = B.reshape(B.reduce("reduce_sum", m, (0, 1)), ())
    gw, gb = gradients(loss, [w, b])
    with phase("update"):
        lr = B.const(0.1, f32, w.shape)
        new_w = B.unary("detach", B.add(w, B.neg(B.mul(gw, lr))))
    return [loss, gb, new_w]


def test_golden_small_graph():
    text = format_graph(small_step(), title="small step")
    path = GOLDEN / "printer_small.txt"
    if os.environ.get("PICOGRAD_REGEN_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        pytest.skip(f"regenerated {path}")
    assert text == path.read_text(), "printer output changed; if intended, rerun with PICOGRAD_REGEN_GOLDEN=1"


def test_same_graph_same_text_other_shape_other_text():
    a, b = format_graph(small_step()), format_graph(small_step())  # fresh buffers, other node objects
    assert a == b
    assert not re.search(r"0x[0-9a-f]{6,}", a), "no memory addresses in a dump"
    assert format_graph(small_step(batch=6)) != a


def test_sections_binders_users_and_literals():
    text = format_graph(small_step())
    lines = text.splitlines()
    heads = [ln for ln in lines if re.fullmatch(r"[a-z]+:", ln)]
    assert heads == ["inputs:", "forward:", "backward:", "update:"]
    assert [ln.split(":")[0].strip() for ln in lines if ln.startswith("  in")] == ["in0", "in1", "in2", "in3"]
    binders = [int(m.group(1)) for ln in lines if (m := re.match(r"  %(\d+):", ln))]
    assert binders == list(range(len(binders)))
    # Every operand is defined above its use.
    defined = {f"in{i}" for i in range(4)}
    for ln in lines:
        if m := re.match(r"  (%\d+):\S+ = (.*?)\s+#", ln):
            for tok in m.group(2).split()[1:]:
                if tok.startswith(("%", "in")):
                    assert tok in defined, ln
            defined.add(m.group(1))
    assert re.search(r"= mul %\d+ 0\.1 ", text), "a broadcast constant prints as a literal"
    assert "slice[:, 1:5:2]" in text and "pad[:, 1:5:2]" in text and "reduce_max[axes=0]" in text
    assert "rand in3" in text and "iota[axis=0]" in text and "permute[1,0]" in text
    assert lines[-1].startswith("outputs: %")
    out_ids = lines[-1].split()[1:]
    for i, name in enumerate(out_ids):
        assert re.search(rf"^  {re.escape(name)}:.*out{i}\b", text, re.M)


def test_user_counts():
    x = buffer_node(Buffer(np.ones((2, 2), np.float32)))
    y = B.mul(x, x)
    z = B.add(y, B.unary("exp", y))
    text = format_graph([z])
    assert re.search(r"in0:f32\[2,2\]\s+# 2 users", text)
    assert re.search(r"%0:f32\[2,2\] = mul in0 in0\s+# 2 users", text)
    assert re.search(r"%2:f32\[2,2\] = add %0 %1\s+# 0 users  out0", text)


def test_kernel_annotation():
    roots = small_step()
    v = GraphView(roots)
    kernel_of = {id(n): f"k{i // 4}" for i, n in enumerate(v.body)}
    text = format_graph(roots, kernel_of)
    n_kernels = len(set(kernel_of.values()))
    assert f"{n_kernels} kernels" in text.splitlines()[0]
    for i in range(len(v.body)):
        assert re.search(rf"^  %{i}:.*  k{i // 4}$", text, re.M)


def test_realized_roots_are_walked_through():
    """A hook sees the program after its outputs got buffers; the dump must still show its body."""
    x = buffer_node(Buffer(np.ones((2, 3), np.float32)))
    y = B.unary("exp", B.mul(x, x))
    before = format_graph([y])
    y.buffer = Buffer(np.exp(np.ones((2, 3), np.float32)))
    assert format_graph([y]) == before
    z = B.add(y, y)  # now y is an input of a later program
    assert re.search(r"^  in0:f32\[2,3\] +# 2 users  realized exp$", format_graph([z]), re.M)


# ---- DOT ---------------------------------------------------------------------------------------------------------
_TOKEN = re.compile(r'\s*(?:(->|--)|([{}\[\];=,])|"((?:[^"\\]|\\.)*)"|([A-Za-z_0-9.#%:]+))')


def parse_dot(text: str) -> dict:
    """A small recursive-descent parser for the DOT subset Graphviz accepts in our output: graph/node/edge
    attribute statements, node statements, edge chains and nested subgraphs. Raises on anything malformed."""
    toks, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"bad DOT near {text[pos:pos + 40]!r}")
        toks.append(next(g for g in m.groups() if g is not None) if m.group(3) is None else ("str", m.group(3)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    i = 0

    def peek():
        return toks[i] if i < len(toks) else None

    def take(expect=None):
        nonlocal i
        t = toks[i]
        if expect is not None and t != expect:
            raise ValueError(f"expected {expect!r}, got {t!r}")
        i += 1
        return t

    def ident():
        t = take()
        if isinstance(t, tuple):
            return t[1]
        if t in ("{", "}", "[", "]", ";", "=", ",", "->"):
            raise ValueError(f"expected an id, got {t!r}")
        return t

    def attrs():
        out = {}
        while peek() == "[":
            take("[")
            while peek() != "]":
                k = ident()
                take("=")
                out[k] = ident()
                if peek() in (",", ";"):
                    take()
            take("]")
        return out

    g = {"nodes": {}, "edges": [], "clusters": {}}

    def stmts(cluster):
        take("{")
        while peek() != "}":
            t = peek()
            if t == "subgraph":
                take()
                name = ident()
                members: list[str] = []
                if name.startswith("cluster"):
                    g["clusters"][name] = members
                stmts(members)
            elif t in ("graph", "node", "edge"):
                take()
                attrs()
            else:
                a = ident()
                if peek() == "=":
                    take()
                    ident()
                elif peek() == "->":
                    chain = [a]
                    while peek() == "->":
                        take()
                        chain.append(ident())
                    attrs()
                    g["edges"].extend(zip(chain, chain[1:], strict=False))
                else:
                    if a in g["nodes"]:
                        raise ValueError(f"node {a} declared twice")
                    g["nodes"][a] = attrs()
                    if cluster is not None:
                        cluster.append(a)
            if peek() == ";":
                take()
        take("}")

    take("digraph")
    if peek() != "{":
        ident()
    stmts(None)
    if i != len(toks):
        raise ValueError("trailing tokens after the graph")
    return g


def test_dot_parses_with_one_cluster_per_kernel():
    roots = small_step()
    v = GraphView(roots)
    kernel_of = {id(n): f"k{i // 5}" for i, n in enumerate(v.body)}
    labels = {k: f"{k} elementwise" for k in set(kernel_of.values())}
    dot = to_dot(roots, kernel_of, labels, title='step "1"')
    g = parse_dot(dot)
    assert len(g["clusters"]) == len(set(kernel_of.values()))
    assert sorted(sum(g["clusters"].values(), [])) == sorted(f"n{i}" for i in range(len(v.body)))
    assert len(g["nodes"]) == len(v.inputs) + len(v.body)
    assert all(a in g["nodes"] and b in g["nodes"] for a, b in g["edges"])
    assert len(g["edges"]) == sum(1 for n in v.body for s in n.srcs if id(s) not in v.literals)
    # Phases get distinct fill colours.
    fills = {g["nodes"][f"n{i}"]["fillcolor"] for i, n in enumerate(v.body) if n.tag == "forward"}
    assert len(fills) == 1
    other = {g["nodes"][f"n{i}"]["fillcolor"] for i, n in enumerate(v.body) if n.tag != "forward"}
    assert len(other) == 2 and not other & fills


def test_dot_without_kernels_has_no_clusters_and_parses():
    g = parse_dot(to_dot(small_step()))
    assert g["clusters"] == {} and len(g["nodes"]) > 10


def test_parse_dot_rejects_malformed():
    with pytest.raises(ValueError):
        parse_dot('digraph { "a" -> ; }')
    with pytest.raises(ValueError):
        parse_dot('digraph { "a" [label="x"; }')


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_graphviz_renders_it(tmp_path):
    roots = small_step()
    v = GraphView(roots)
    kernel_of = {id(n): f"k{i // 5}" for i, n in enumerate(v.body)}
    (tmp_path / "g.dot").write_text(to_dot(roots, kernel_of))
    r = subprocess.run(["dot", "-Tsvg", str(tmp_path / "g.dot")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "<svg" in r.stdout and r.stdout.count('class="cluster"') == len(set(kernel_of.values()))
