"""One loop nest of a CPU kernel as lines of Python for Numba (cpu.py renders the kernels and the program
around it).

A nest is a Loop's statements (cpu_expr) over the kernel's domain, plus the reductions it accumulates. Rendering
decides, in this order: which adjacent axes merge into one loop (indexing.collapse); where the reductions
accumulate (typed scalars when the reduced loops are innermost, else the output row, vectorized); which loop
runs in parallel (prange) and how buffers are sliced inside it; then it writes each statement at the outermost
loop whose variables it uses."""

from __future__ import annotations

import re
from typing import Any

from ..ir.node import Node
from ..ir.shape import prod
from . import indexing as ix
from .cpu_expr import BufRef, Loop, Val, combine, init_value, node_label, np_type

BLOCK = 4096  # reduction chunk: partial sums of this many elements keep float32 sums accurate
CHUNK = 16384  # elements per prange iteration when a parallel loop's rows are short (see _plan_parallel)


class Nest:
    """The lines of one loop nest. chunk (axis, first, end): run only that block of the axis (named variables of
    the enclosing block loop), the axis's loop counting from 0 over buffers sliced at the block's start; the nest
    is then serial (the block loop is the parallel one).

    r is the program's renderer (cpu.ProgramRenderer): buffer names, node numbers, constants, fresh names."""

    def __init__(self, r: Any, loop: Loop, reduced_axes: set[int], reds: list[tuple[Node, Val]], parallel: bool,
                 chunk: tuple[int, str, str] | None = None) -> None:
        self.r, self.loop, self.reds, self.chunk = r, loop, reds, chunk
        self.sizes = sizes = loop.sizes
        self.reduced = tuple(d in reduced_axes for d in range(len(sizes)))
        self._group_loops()
        self._plan_chunk()
        self._plan_reductions()
        self._plan_parallel(parallel)
        self.slices: dict[str, str] = {}  # slice variable -> its definition
        self.by_depth: dict[int, list[str]] = {}  # lines per loop depth (0: before the outermost loop)
        self.index_vars: dict[str, str] = {}  # index arithmetic shared by several loads/stores is computed once
        self.lines: list[str] = []

    # ---- planning ---------------------------------------------------------------------------------------
    def _group_loops(self) -> None:
        """Merge adjacent axes that every index reads as one flat run into one loop (indexing.collapse)."""
        loop, sizes, reduced = self.loop, self.sizes, self.reduced
        used: list = []
        blocked: set = set()
        for st in loop.stmts:
            for part in st.parts:
                if isinstance(part, (ix.Cond, BufRef)):
                    part = part.e if isinstance(part, ix.Cond) else part.ix
                if isinstance(part, ix.Ix):
                    if part.affine:
                        used.append(part)
                    else:
                        blocked |= part.dims
        self.out_idx = {}
        for r, _ in self.reds:
            oidx = tuple(ix.const(0, loop.nd) if reduced[d] else ix.var(d, loop.nd, s) for d, s in enumerate(sizes))
            self.out_idx[id(r)] = ix.flat_index(oidx, r.shape, loop.nd)
            used.append(self.out_idx[id(r)])
        if self.chunk is not None and self.chunk[0] > 0:
            blocked.add(self.chunk[0])  # the split axis must head its loop: no merging into the axis before it
        self.groups = groups = ix.collapse(sizes, reduced, used, frozenset(blocked))
        self.names = ix.group_names(groups, sizes)
        self.gpos = {d: g for g, grp in enumerate(groups) for d in grp}
        self.gsize = [prod(sizes[d] for d in grp) for grp in groups]
        self.gsize_text = [str(n) for n in self.gsize]
        self.gred = [reduced[g[0]] for g in groups]
        self.ng = len(groups)

    def _depth_of(self, dims) -> int:
        """The loop depth a line using these axes goes to: inside the innermost loop of any of them."""
        return 1 + max((self.gpos[d] for d in dims if d in self.gpos), default=-1)

    def _plan_chunk(self) -> None:
        # In a block, the split axis's loop variable i{a}_l counts from 0 within the block; indices into the
        # buffers sliced at the block's start render with it (lnames). Every other index (iota, rand, a pad's
        # condition, a load that can't be sliced) reads the global i{a} = i{a}_l + first, defined where used.
        self.lnames, self.cpos, self.cvar, self.global_def = self.names, -1, "", ""
        if self.chunk is None:
            return
        ca, first, end = self.chunk
        self.cpos = self.gpos[ca]
        grp = self.groups[self.cpos]
        assert grp[0] == ca and not self.reduced[ca], "a block splits a kept loop axis that heads its loop"
        inner = prod(self.sizes[d] for d in grp[1:])
        self.cvar = cvar = f"i{ca}"
        self.lnames = {**self.names, grp[-1]: (f"{cvar}_l", 1)}
        scale = f" * {inner}" if inner != 1 else ""
        self.gsize_text[self.cpos] = f"({end} - {first}){scale}" if scale else f"{end} - {first}"
        self.global_def = f"{cvar} = {cvar}_l + {first}{scale}"

    def _plan_reductions(self) -> None:
        gred, ng = self.gred, self.ng
        # t: first loop of the innermost all-reduced run; those loops accumulate into typed scalars
        t = ng
        while t > 0 and gred[t - 1]:
            t -= 1
        self.t = t
        self.vector_mode = any(gred[:t])  # some reduced loop encloses kept ones: accumulate into the output row
        # a single large innermost reduced loop runs in blocks (partial sums)
        self.blocked_red = bool(self.reds) and t == ng - 1 and self.gsize[t] > BLOCK

    def _plan_parallel(self, parallel: bool) -> None:
        # Inside a prange body, LLVM cannot tell that an index built on the prange variable is non-negative and
        # leaves the inner loops scalar (measured 4-7x slower). So buffers are sliced at the prange variable's
        # offset there, and inner loops index the slice from 0, which vectorizes as serial code does.
        # A prange body runs per iteration of its loop, and sets the worker thread's subnormal mode on entry and
        # restores it on exit (cpu._flushing). So a parallel loop whose iterations are short (a flat elementwise
        # loop, or rows of a few elements) takes its rows in chunks of about CHUNK elements: per element, a flat
        # loop over 1e6 took 8.7 ms, against 0.3-0.7 ms in chunks; rows of 3 (500000 x 3) 4.3 ms.
        groups, gsize = self.groups, self.gsize
        self.par_outer = parallel and self.ng > 0 and not self.gred[0] and gsize[0] > 1
        # the blocked reduction runs its blocks in parallel if it is the whole nest
        self.par_blocks = parallel and self.blocked_red and self.t == 0
        row = prod(gsize[1:])
        self.par_chunks = self.par_outer and self.chunk is None and row < 1024
        self.rows_per_chunk = max(1, CHUNK // max(row, 1))
        # split (axis, outer, inner): buffers are sliced at outer (times the axis's stride) in the parallel loop
        self.split = None
        if self.par_chunks or self.par_blocks:
            v = f"i{groups[0][0]}"
            self.split = (groups[0][-1], f"{v}_o", f"{v}_i")
        elif self.par_outer and self.ng > 1:
            self.split = (groups[0][-1], f"i{groups[0][0]}", None)

    # ---- indices ----------------------------------------------------------------------------------------
    def _put(self, depth: int, text: str) -> None:
        self.by_depth.setdefault(depth, []).append(text)

    def _index_text(self, e: ix.Ix, names: dict | None = None) -> str:
        text = e.render(self.names if names is None else names)
        if " + " in text or " * " in text or "//" in text or "%" in text:
            var = self.index_vars.get(text)
            if var is None:
                var = self.index_vars[text] = self.r.fresh("j")
                # In a block the loop bound is not a constant, and LLVM no longer proves a composite index
                # non-negative: numba's negative-index wraparound then keeps the loop scalar (measured: the
                # MLP's 100K-element momentum epilogue in 2 column blocks, 140 -> 80 us). Unsigned: no wrap.
                unsigned = self.cvar and f"{self.cvar}_l" in text
                self._put(self._depth_of(e.used()), f"{var} = np.uint64({text})" if unsigned else f"{var} = {text}")
            return var
        return text

    def _ref_text(self, ref: BufRef) -> str:
        e, chunk, split, sizes = ref.ix, self.chunk, self.split, self.sizes
        if chunk is not None and e.affine and e.coefs[chunk[0]] > 0:
            c = e.coefs[chunk[0]]
            rest = ix.Ix(tuple(0 if d == chunk[0] else k for d, k in enumerate(e.coefs)), e.const)
            if ix.bounds(rest, sizes)[0] >= 0:  # as for split below: no negative index into the slice
                name = f"{ref.buf}_b{c if c != 1 else ''}"
                self.slices.setdefault(name, f"{name} = {ref.buf}[{chunk[1]}{f' * {c}' if c != 1 else ''}:]")
                return f"{name}[{self._index_text(e, self.lnames)}]"
        if split is not None and e.affine and e.coefs[split[0]] > 0:
            axis, outer, inner = split
            c = e.coefs[axis]
            rest = ix.Ix(tuple(0 if d == axis else k for d, k in enumerate(e.coefs)), e.const)
            # Only where the slice start (c * outer >= 0) and the index into it (rest >= 0) are both
            # non-negative for every element, read or not: a negative index would wrap around (a pad's
            # guarded load, a flipped axis), so those keep the plain flat index.
            if ix.bounds(rest, sizes)[0] < 0:
                return f"{ref.buf}[{self._index_text(e)}]"
            name = f"{ref.buf}_s{c if c != 1 else ''}"
            self.slices.setdefault(name, f"{name} = {ref.buf}[{outer}{f' * {c}' if c != 1 else ''}:]")
            text = rest.render(self.names)
            if inner is not None:
                term = inner if c == 1 else f"{inner} * {c}"
                text = term if text == "0" else f"{term} + {text}"
            return f"{name}[{text}]"
        return f"{ref.buf}[{self._index_text(e)}]"

    def _part_text(self, pt: Any) -> str:
        if isinstance(pt, str):
            return pt
        if isinstance(pt, BufRef):
            return self._ref_text(pt)
        return pt.render(self.names) if isinstance(pt, ix.Cond) else self._index_text(pt)

    # ---- lines ------------------------------------------------------------------------------------------
    def render(self) -> list[str]:
        r, chunk = self.r, self.chunk
        for st in self.loop.stmts:
            text = "".join(self._part_text(pt) for pt in st.parts)
            if st.comment:
                text += f"  # {st.comment}"
            self._put(self._depth_of(st.dims), text)
        pre: list[str] = []
        self.accs: list[tuple[str, str, Node, str, str]] = []  # (acc, init, reduce node, value, output element)
        for red, v in self.reds:
            buf = r.names[id(red)]
            init = r.consts.get(init_value(red.op, red.dtype), red.dtype)
            target = self._ref_text(BufRef(buf, self.out_idx[id(red)]))
            if self.vector_mode and chunk is not None:  # this block's part of the output: the reduce keeps the axis
                assert self.out_idx[id(red)] == ix.var(chunk[0], self.loop.nd, self.sizes[chunk[0]]), \
                    "block of a reduce output"
                pre.append(f"{buf}[{chunk[1]}:{chunk[2]}] = {init}  # init {node_label(red, r.num)}")
            elif self.vector_mode:
                pre.append(f"{buf}[:] = {init}  # init {node_label(red, r.num)}")
            self.accs.append((r.fresh("acc"), init, red, v.text, target))
        by_depth = self.by_depth
        if self.split is not None and self.split[2] is None:  # sliced at the prange variable: first in its body
            by_depth[1] = list(self.slices.values()) + by_depth.get(1, [])
        if chunk is not None:
            by_depth[0] = list(self.slices.values()) + by_depth.get(0, [])
            texts = [t for d, ts in by_depth.items() if d > self.cpos for t in ts] + [a[3] + a[4] for a in self.accs]
            if any(re.search(rf"\b{self.cvar}\b", t) for t in texts):
                by_depth[self.cpos + 1] = [self.global_def] + by_depth.get(self.cpos + 1, [])
        self.lines = list(pre)
        self._emit(0, "")
        return self.lines

    def _finish(self, indent: str) -> None:
        for acc, _, red, _, target in self.accs:
            val = combine(red.op, red.dtype, target, acc) if self.vector_mode else acc
            self.lines.append(f"{indent}{target} = {val}  # {node_label(red, self.r.num)}")

    def _emit(self, depth: int, indent: str) -> None:
        lines, t, ng, accs = self.lines, self.t, self.ng, self.accs
        for text in self.by_depth.get(depth, []):
            lines.append(indent + text)
        if depth == t and accs and t < ng:
            for acc, init, *_ in accs:
                lines.append(f"{indent}{acc} = {init}")
            if self.blocked_red:
                self._emit_blocks(indent)
                self._finish(indent)
                return
        if depth == 0 and self.par_chunks:
            self._emit_chunks(indent)
        elif depth < ng:
            var = f"i{self.groups[depth][0]}" + ("_l" if depth == self.cpos else "")
            rng = "prange" if depth == 0 and self.par_outer else "range"
            lines.append(f"{indent}for {var} in {rng}({self.gsize_text[depth]}):")
            self._emit(depth + 1, indent + "    ")
        elif t == ng:  # no reduced loop inside the kept ones: accumulate straight into the output
            for _, init, red, v, target in accs:
                val = combine(red.op, red.dtype, target if self.vector_mode else init, v)
                lines.append(f"{indent}{target} = {val}  # {node_label(red, self.r.num)}")
        else:
            for acc, _, red, v, _ in accs:
                lines.append(f"{indent}{acc} = {combine(red.op, red.dtype, acc, v)}  # accumulate")
        if depth == t and accs and t < ng:
            self._finish(indent)

    def _emit_chunks(self, indent: str) -> None:
        """The outer loop in prange over chunks of rows_per_chunk rows, each a serial loop over its rows."""
        var, n, k = f"i{self.groups[0][0]}", self.gsize[0], self.rows_per_chunk
        inner = indent + "    "
        self.lines.append(f"{indent}for {var}_b in prange({-(-n // k)}):")
        self.lines.append(f"{inner}{var}_o = {var}_b * {k}")
        self.lines.extend(inner + d for d in self.slices.values())
        self.lines.append(f"{inner}for {var}_i in range(min({k}, {n} - {var}_o)):")
        self.lines.append(f"{inner}    {var} = {var}_o + {var}_i")
        self._emit(1, inner + "    ")

    def _emit_blocks(self, indent: str) -> None:
        """The innermost reduced loop in blocks of BLOCK elements, each summed on its own, then combined (the
        blocks in prange, partial results in an array, when the reduction is the whole nest)."""
        lines, t, accs, par = self.lines, self.t, self.accs, self.par_blocks
        var, n = f"i{self.groups[t][0]}", self.gsize[t]
        nb = -(-n // BLOCK)
        inner = indent + "    "
        if par:
            for acc, _, red, _, _ in accs:
                lines.append(f"{indent}{acc}_part = np.empty({nb}, {np_type(red.dtype)})")
        lines.append(f"{indent}for {var}_b in {'prange' if par else 'range'}({nb}):")
        for acc, init, *_ in accs:
            lines.append(f"{inner}{acc}_b = {init}")
        lines.append(f"{inner}{var}_o = {var}_b * {BLOCK}")
        if par:
            lines.extend(inner + d for d in self.slices.values())
        lines.append(f"{inner}for {var}_i in range(min({BLOCK}, {n} - {var}_o)):")
        lines.append(f"{inner}    {var} = {var}_o + {var}_i")
        for text in self.by_depth.get(t + 1, []):
            lines.append(inner + "    " + text)
        for acc, _, red, v, _ in accs:
            lines.append(f"{inner}    {acc}_b = {combine(red.op, red.dtype, acc + '_b', v)}  # accumulate")
        for acc, _, red, _, _ in accs:
            if par:
                lines.append(f"{inner}{acc}_part[{var}_b] = {acc}_b")
            else:
                lines.append(f"{inner}{acc} = {combine(red.op, red.dtype, acc, acc + '_b')}")
        if par:
            lines.append(f"{indent}for {var}_b in range({nb}):")
            for acc, _, red, _, _ in accs:
                lines.append(f"{indent}    {acc} = {combine(red.op, red.dtype, acc, acc + '_part[' + var + '_b]')}")
