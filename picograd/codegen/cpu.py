"""Render a Schedule as one Python module for Numba: a kernel function per kernel plus one entry function
`program` that runs every kernel in order, so a realize is a single Python -> Numba call.

Shape of the generated code (read one with PICOGRAD_DEBUG=4):
  - every buffer is passed flat (1-D, C order) and indexed with affine integer expressions in which the
    shapes are constants, so LLVM sees contiguous inner loops it can vectorize; adjacent loop axes that
    every index reads as one flat run are merged into a single loop (indexing.collapse);
  - one line per IR node, commented with the node it computes (`# %12 add f32[128,10]`); lines are hoisted
    to the outermost loop whose variables they use;
  - constants are module globals of their exact dtype (np.float32(0.5)): no float64 leaks from literals;
  - reductions accumulate in a typed scalar when the reduced axes are innermost (blocked in chunks of
    BLOCK for accuracy and, when large, in parallel), else into the output row, vectorized;
  - no fastmath: every operation rounds as numpy's does, so results equal eager mode's, NaN, inf and signed
    zeros included. The one exception is the add that accumulates a float sum (cpu_expr.acc_add): it alone
    may be reassociated, which lets LLVM vectorize the reduction loop (partial sums in vector lanes), so sums
    differ from numpy's in rounding only, as numpy's pairwise sums differ from a sequential loop;
  - matmuls call BLAS gemm on the flat buffers (blas.py), transposed or not, then run their fused epilogue;
    big 2-D ones are split into row or column blocks over our own threads, each block's epilogue right after
    its gemm while it is in cache (cpu_matmul.py; scipy's OpenBLAS is made single-threaded for that,
    threads.pin_blas);
  - kernels with at least PARALLEL_MIN elements are separate @njit(parallel=True) functions using prange;
    the rest are inlined into `program`, which stays serial (parallel=True compiles 3-4x slower) — except in a
    program with two or more parallel kernels where the compile helper runs (compile_helper.py): there every
    kernel is a function of its own, so both processes can share the compiling and the entry, compiled last,
    is only the calls.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from ..ir import ops
from ..ir.node import Node
from ..ir.printer import GraphView
from . import blas, compile_helper
from . import indexing as ix
from .clock import AVAILABLE as CLOCK
from .cpu_expr import BufRef, Consts, Loop, Stmt, Val, combine, init_value, node_label, np_type, short
from .cpu_matmul import chunk_plan, gemm_lines, use_blocks
from .fpenv import FLUSH
from .schedule import Kernel, Schedule

PARALLEL_MIN = int(os.environ.get("PICOGRAD_PARALLEL_MIN", 1 << 17))  # elements; smaller loops stay serial
PARALLEL_AFTER_GEMM = False  # prange in matmul epilogues while OpenBLAS runs its own threads (see kernel)
BLOCK = 4096  # reduction chunk: partial sums of this many elements keep float32 sums accurate
CHUNK = 16384  # elements per prange iteration when a parallel loop's rows are short (see par_chunks)
# No fastmath flags (see the module docstring): numba applies them to every operation of a function, and
# {'reassoc', 'nsz'}, used before, let LLVM rewrite fused elementwise code -- x - x became 0 at x = inf,
# exp(log(x)) became x at x < 0, (a + b) - b became a.
HEADER = "njit(cache=True, error_model='numpy', no_cfunc_wrapper=True{par})"


@dataclass
class KernelCode:
    kernel: Kernel
    body: list[str]  # unindented lines of the kernel's body
    parallel: bool
    buffers: list[str] = field(default_factory=list)  # scratch views it uses


class ProgramRenderer:
    def __init__(self, sched: Schedule, names: dict[int, str], num: dict[int, str], blocks: bool = False) -> None:
        self.s = sched
        self.names = names  # id(node) -> buffer variable name
        self.num = num  # id(node) -> number for comments
        self.blocks = blocks  # big matmuls run in blocks over our threads (cpu_matmul.use_blocks)
        self.consts = Consts()
        self.counter = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    # ---- one kernel ---------------------------------------------------------------------------------
    def kernel(self, k: Kernel) -> KernelCode:
        lines: list[str] = []
        size = int(np.prod(k.domain, dtype=np.int64)) if k.domain else 1
        # While OpenBLAS runs 2 threads, not right after a gemm: its threads keep spinning for a while after
        # each call, and a prange loop then fights them for the 2 cores (measured: Adam epilogue of 800x800,
        # 0.9 ms serial, 1.7 ms in parallel after the gemm, 0.54 ms in parallel standalone). Pinned to one
        # thread (threads.pin_blas), it leaves nothing spinning.
        parallel = size >= PARALLEL_MIN and (k.matmul is None or PARALLEL_AFTER_GEMM or self.blocks)
        plan = chunk_plan(k) if self.blocks else None
        chunk = None  # (axis, first, end) of the block the epilogue runs on, when it runs inside the blocks
        if plan is not None:
            lines += gemm_lines(self, k.matmul, plan[0], plan[2])
            if plan[1]:
                chunk = (plan[0], "lo", "hi")
        elif k.matmul is not None:
            lines += gemm_lines(self, k.matmul)
        loads = {id(i): self.names[id(i)] for i in k.inputs}
        if k.matmul is not None:
            loads[id(k.matmul)] = self.names[id(k.matmul)]
        if k.stores or k.reduces:
            loop, idx = self.stores(k.domain, loads, k.stores)
            reds = []
            for r in k.reduces:
                v = loop.value(r.srcs[0], idx, ())
                reds.append((r, v))
            body = self.nest(loop, k, reds, parallel and chunk is None, chunk)
            lines += ["    " + ln for ln in body] if chunk is not None else body
        if k.post:
            ploads = dict(loads)
            for r in k.reduces:
                ploads[id(r)] = self.names[id(r)]
            loop, _ = self.stores(k.out_shape, ploads, k.post)
            lines += self.nest(loop, None, [], _prod(k.out_shape) >= PARALLEL_MIN)
        return KernelCode(k, lines, any("prange(" in ln for ln in lines))

    def stores(self, domain: tuple[int, ...], loads: dict[int, str], nodes: list[Node]) -> tuple[Loop, tuple]:
        """A loop over domain storing each node's value at its flat position (the kernel's main loop and its
        post loop after the reductions share this)."""
        loop = Loop(self, domain, loads)
        idx, _ = ix.identity(domain)
        for s in nodes:
            v = loop.value(s, _index_for(idx, domain, s.shape), ())
            flat = ix.flat_index(idx, domain, loop.nd)
            loop.stmts.append(Stmt([BufRef(self.names[id(s)], flat), f" = {v.text}"], v.dims | flat.used(),
                                   f"store {node_label(s, self.num)}"))
        return loop, idx

    # ---- loop nests ---------------------------------------------------------------------------------
    def nest(self, loop: Loop, k: Kernel | None, reds: list[tuple[Node, Val]], parallel: bool,
             chunk: tuple[int, str, str] | None = None) -> list[str]:
        """The loop nest's lines. chunk (axis, first, end): run only that block of the axis (named variables
        of the enclosing block loop), the axis's loop counting from 0 over buffers sliced at the block's start;
        the nest is then serial (the block loop is the parallel one)."""
        sizes = loop.sizes
        axes = set(k.axes) if k is not None and reds else set()
        reduced = tuple(d in axes for d in range(len(sizes)))
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
        out_idx = {}
        for r, _ in reds:
            oidx = tuple(ix.const(0, loop.nd) if reduced[d] else ix.var(d, loop.nd, s) for d, s in enumerate(sizes))
            out_idx[id(r)] = ix.flat_index(oidx, r.shape, loop.nd)
            used.append(out_idx[id(r)])
        if chunk is not None and chunk[0] > 0:
            blocked.add(chunk[0])  # the split axis must head its loop: no merging into the axis before it
        groups = ix.collapse(sizes, reduced, used, frozenset(blocked))
        names = ix.group_names(groups, sizes)
        gpos = {d: g for g, grp in enumerate(groups) for d in grp}
        depth_of = lambda dims: 1 + max((gpos[d] for d in dims if d in gpos), default=-1)  # noqa: E731
        gsize = [_prod(sizes[d] for d in grp) for grp in groups]
        gsize_text = [str(n) for n in gsize]
        # In a block, the split axis's loop variable i{a}_l counts from 0 within the block; indices into the
        # buffers sliced at the block's start render with it (lnames). Every other index (iota, rand, a pad's
        # condition, a load that can't be sliced) reads the global i{a} = i{a}_l + first, defined where used.
        lnames, cpos, cvar = names, -1, ""
        if chunk is not None:
            ca, first, end = chunk
            cpos = gpos[ca]
            grp = groups[cpos]
            assert grp[0] == ca and not reduced[ca], "a block splits a kept loop axis that heads its loop"
            inner = _prod(sizes[d] for d in grp[1:])
            cvar = f"i{ca}"
            lnames = {**names, grp[-1]: (f"{cvar}_l", 1)}
            scale = f" * {inner}" if inner != 1 else ""
            gsize_text[cpos] = f"({end} - {first}){scale}" if scale else f"{end} - {first}"
            global_def = f"{cvar} = {cvar}_l + {first}{scale}"
        gred = [reduced[g[0]] for g in groups]
        ng = len(groups)
        # t: first loop of the innermost all-reduced run; those loops accumulate into typed scalars
        t = ng
        while t > 0 and gred[t - 1]:
            t -= 1
        vector_mode = any(gred[:t])  # some reduced loop encloses kept ones: accumulate into the output row
        par_outer = parallel and ng > 0 and not gred[0] and gsize[0] > 1
        # a single large innermost reduced loop runs in blocks (partial sums); in parallel if it is the whole nest
        blocked_red = bool(reds) and t == ng - 1 and gsize[t] > BLOCK
        par_blocks = parallel and blocked_red and t == 0
        # Inside a prange body, LLVM cannot tell that an index built on the prange variable is non-negative and
        # leaves the inner loops scalar (measured 4-7x slower). So buffers are sliced at the prange variable's
        # offset there, and inner loops index the slice from 0, which vectorizes as serial code does.
        # A prange body runs per iteration of its loop, and sets the worker thread's subnormal mode on entry and
        # restores it on exit (_flushing). So a parallel loop whose iterations are short (a flat elementwise
        # loop, or rows of a few elements) takes its rows in chunks of about CHUNK elements: per element, a flat
        # loop over 1e6 took 8.7 ms, against 0.3-0.7 ms in chunks; rows of 3 (500000 x 3) 4.3 ms.
        row = _prod(gsize[1:])
        par_chunks = par_outer and chunk is None and row < 1024
        rows_per_chunk = max(1, CHUNK // max(row, 1))
        split = None
        if par_chunks:
            v = f"i{groups[0][0]}"
            split = (groups[0][-1], f"{v}_o", f"{v}_i")
        elif par_outer and ng > 1:
            split = (groups[0][-1], f"i{groups[0][0]}", None)
        elif par_blocks:
            v = f"i{groups[0][0]}"
            split = (groups[0][-1], f"{v}_o", f"{v}_i")
        slices: dict[str, str] = {}  # slice variable -> its definition
        by_depth: dict[int, list[str]] = {}

        def put(depth: int, text: str) -> None:
            by_depth.setdefault(depth, []).append(text)

        index_vars: dict[str, str] = {}  # index arithmetic shared by several loads/stores is computed once

        def index_text(e: ix.Ix, names=names) -> str:
            text = e.render(names)
            if " + " in text or " * " in text or "//" in text or "%" in text:
                var = index_vars.get(text)
                if var is None:
                    var = index_vars[text] = self.fresh("j")
                    # In a block the loop bound is not a constant, and LLVM no longer proves a composite index
                    # non-negative: numba's negative-index wraparound then keeps the loop scalar (measured: the
                    # MLP's 100K-element momentum epilogue in 2 column blocks, 140 -> 80 us). Unsigned: no wrap.
                    put(depth_of(e.used()), f"{var} = np.uint64({text})" if cvar and f"{cvar}_l" in text
                        else f"{var} = {text}")
                return var
            return text

        def ref_text(ref: BufRef) -> str:
            e = ref.ix
            if chunk is not None and e.affine and e.coefs[chunk[0]] > 0:
                c = e.coefs[chunk[0]]
                rest = ix.Ix(tuple(0 if d == chunk[0] else k for d, k in enumerate(e.coefs)), e.const)
                if ix.bounds(rest, sizes)[0] >= 0:  # as for split below: no negative index into the slice
                    name = f"{ref.buf}_b{c if c != 1 else ''}"
                    slices.setdefault(name, f"{name} = {ref.buf}[{chunk[1]}{f' * {c}' if c != 1 else ''}:]")
                    return f"{name}[{index_text(e, lnames)}]"
            if split is not None and e.affine and e.coefs[split[0]] > 0:
                axis, outer, inner = split
                c = e.coefs[axis]
                rest = ix.Ix(tuple(0 if d == axis else k for d, k in enumerate(e.coefs)), e.const)
                # Only where the slice start (c * outer >= 0) and the index into it (rest >= 0) are both
                # non-negative for every element, read or not: a negative index would wrap around (a pad's
                # guarded load, a flipped axis), so those keep the plain flat index.
                if ix.bounds(rest, sizes)[0] < 0:
                    return f"{ref.buf}[{index_text(e)}]"
                name = f"{ref.buf}_s{c if c != 1 else ''}"
                slices.setdefault(name, f"{name} = {ref.buf}[{outer}{f' * {c}' if c != 1 else ''}:]")
                text = rest.render(names)
                if inner is not None:
                    term = inner if c == 1 else f"{inner} * {c}"
                    text = term if text == "0" else f"{term} + {text}"
                return f"{name}[{text}]"
            return f"{ref.buf}[{index_text(e)}]"

        def part_text(pt) -> str:
            if isinstance(pt, str):
                return pt
            if isinstance(pt, BufRef):
                return ref_text(pt)
            return pt.render(names) if isinstance(pt, ix.Cond) else index_text(pt)

        for st in loop.stmts:
            text = "".join(part_text(pt) for pt in st.parts)
            if st.comment:
                text += f"  # {st.comment}"
            put(depth_of(st.dims), text)
        pre: list[str] = []
        accs: list[tuple[str, str, Node, str, str]] = []  # (acc, init, reduce node, value, output element)
        for r, v in reds:
            buf = self.names[id(r)]
            init = self.consts.get(init_value(r.op, r.dtype), r.dtype)
            target = ref_text(BufRef(buf, out_idx[id(r)]))
            if vector_mode and chunk is not None:  # this block's part of the output: the reduce keeps the axis
                assert out_idx[id(r)] == ix.var(chunk[0], loop.nd, sizes[chunk[0]]), "block of a reduce output"
                pre.append(f"{buf}[{chunk[1]}:{chunk[2]}] = {init}  # init {node_label(r, self.num)}")
            elif vector_mode:
                pre.append(f"{buf}[:] = {init}  # init {node_label(r, self.num)}")
            accs.append((self.fresh("acc"), init, r, v.text, target))
        if split is not None and split[2] is None:  # sliced at the prange variable: first thing in its body
            by_depth[1] = list(slices.values()) + by_depth.get(1, [])
        if chunk is not None:
            by_depth[0] = list(slices.values()) + by_depth.get(0, [])
            texts = [t for d, ts in by_depth.items() if d > cpos for t in ts] + [a[3] + a[4] for a in accs]
            if any(re.search(rf"\b{cvar}\b", t) for t in texts):
                by_depth[cpos + 1] = [global_def] + by_depth.get(cpos + 1, [])
        lines = list(pre)

        def finish(indent: str) -> None:
            for acc, _, r, _, target in accs:
                val = combine(r.op, r.dtype, target, acc) if vector_mode else acc
                lines.append(f"{indent}{target} = {val}  # {node_label(r, self.num)}")

        def emit(depth: int, indent: str) -> None:
            for text in by_depth.get(depth, []):
                lines.append(indent + text)
            if depth == t and accs and t < ng:
                for acc, init, *_ in accs:
                    lines.append(f"{indent}{acc} = {init}")
                if blocked_red:
                    emit_blocks(indent)
                    finish(indent)
                    return
            if depth == 0 and par_chunks:
                emit_chunks(indent)
            elif depth < ng:
                var = f"i{groups[depth][0]}" + ("_l" if depth == cpos else "")
                rng = "prange" if depth == 0 and par_outer else "range"
                lines.append(f"{indent}for {var} in {rng}({gsize_text[depth]}):")
                emit(depth + 1, indent + "    ")
            elif t == ng:  # no reduced loop inside the kept ones: accumulate straight into the output
                for _, init, r, v, target in accs:
                    val = combine(r.op, r.dtype, target if vector_mode else init, v)
                    lines.append(f"{indent}{target} = {val}  # {node_label(r, self.num)}")
            else:
                for acc, _, r, v, _ in accs:
                    lines.append(f"{indent}{acc} = {combine(r.op, r.dtype, acc, v)}  # accumulate")
            if depth == t and accs and t < ng:
                finish(indent)

        def emit_chunks(indent: str) -> None:
            var, n, k = f"i{groups[0][0]}", gsize[0], rows_per_chunk
            inner = indent + "    "
            lines.append(f"{indent}for {var}_b in prange({-(-n // k)}):")
            lines.append(f"{inner}{var}_o = {var}_b * {k}")
            lines.extend(inner + d for d in slices.values())
            lines.append(f"{inner}for {var}_i in range(min({k}, {n} - {var}_o)):")
            lines.append(f"{inner}    {var} = {var}_o + {var}_i")
            emit(1, inner + "    ")

        def emit_blocks(indent: str) -> None:
            var, n = f"i{groups[t][0]}", gsize[t]
            nb = -(-n // BLOCK)
            inner = indent + "    "
            if par_blocks:
                for acc, _, r, _, _ in accs:
                    lines.append(f"{indent}{acc}_part = np.empty({nb}, {np_type(r.dtype)})")
            lines.append(f"{indent}for {var}_b in {'prange' if par_blocks else 'range'}({nb}):")
            for acc, init, *_ in accs:
                lines.append(f"{inner}{acc}_b = {init}")
            lines.append(f"{inner}{var}_o = {var}_b * {BLOCK}")
            if par_blocks:
                lines.extend(inner + d for d in slices.values())
            lines.append(f"{inner}for {var}_i in range(min({BLOCK}, {n} - {var}_o)):")
            lines.append(f"{inner}    {var} = {var}_o + {var}_i")
            for text in by_depth.get(t + 1, []):
                lines.append(inner + "    " + text)
            for acc, _, r, v, _ in accs:
                lines.append(f"{inner}    {acc}_b = {combine(r.op, r.dtype, acc + '_b', v)}  # accumulate")
            for acc, _, r, _, _ in accs:
                if par_blocks:
                    lines.append(f"{inner}{acc}_part[{var}_b] = {acc}_b")
                else:
                    lines.append(f"{inner}{acc} = {combine(r.op, r.dtype, acc, acc + '_b')}")
            if par_blocks:
                lines.append(f"{indent}for {var}_b in range({nb}):")
                for acc, _, r, _, _ in accs:
                    lines.append(f"{indent}    {acc} = {combine(r.op, r.dtype, acc, acc + '_part[' + var + '_b]')}")

        emit(0, "")
        return lines


def _index_for(idx: tuple, domain: tuple[int, ...], shape: tuple[int, ...]) -> tuple:
    """The loop index as an index of a node whose shape differs from the domain only by size-1 axes."""
    return idx if shape == domain else ix.reshape_index(idx, domain, shape, domain)


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= x
    return n


def _gemm_import(body: str) -> str:
    """The gemm intrinsics the kernels call (blas.py: gemm_1 and gemm_ldc_1 for long products in blocks, gemm_np
    and gemm_ldc_np for whole ones on numpy's OpenBLAS)."""
    names = [n for n in ("gemm", "gemm_ldc", "gemm_1", "gemm_ldc_1", "gemm_np", "gemm_ldc_np") if f"{n}(" in body]
    names = names or ["gemm"]
    return f"from picograd.codegen.blas import {', '.join(names)}  # noqa: F401"


# ---- the whole program ----------------------------------------------------------------------------------
@dataclass
class Rendered:
    source: str
    kernel_sources: dict[str, str]  # kernel name -> its function's source
    args: list[str]  # the entry's parameters, in order
    scratch: dict[str, tuple[np.dtype, int]]  # arena name -> (dtype, elements)
    parallel_kernels: list[str]  # the kernels that use prange (separate parallel=True functions)
    called_kernels: list[str] = field(default_factory=list)  # every kernel the entry calls rather than inlines
    kernel_args: dict[str, list[int]] = field(default_factory=dict)  # kernel -> positions of its arguments in args
    blas_threads: int = 0  # OpenBLAS threads while it runs: 1 when matmuls run in blocks, 0 for all
    over: dict[int, int] = field(default_factory=dict)  # id(output buffer node) -> input written over (no out arg)


def _flushing(body: list[str]) -> list[str]:
    """A function body (lines indented by 4) that runs with subnormals flushed to zero (fpenv.py): set on entry
    and restored at the end, and likewise inside each prange loop, whose iterations run on worker threads with
    their own MXCSR. Nothing when FLUSH is off. Generated bodies have no early return."""
    if not FLUSH or not body or body == ["    pass"]:
        return body
    out = ["    fpm = fp_enter()  # subnormals flushed to zero (fpenv.py)"]
    stack: list[int] = []  # indentation of the prange loops whose bodies are open
    for ln in body:
        ind = len(ln) - len(ln.lstrip())
        while stack and ln.strip() and ind <= stack[-1]:
            out.append(" " * (stack.pop() + 4) + "fp_exit(fpb)")
        out.append(ln)
        if re.match(r"\s*for \w+ in prange\(", ln):
            stack.append(ind)
            out.append(" " * (ind + 4) + "fpb = fp_enter()")
    while stack:
        out.append(" " * (stack.pop() + 4) + "fp_exit(fpb)")
    return out + ["    fp_exit(fpm)"]


def plan_scratch(sched: Schedule) -> tuple[dict[int, tuple[str, int, int]], dict[str, tuple[np.dtype, int]]]:
    """Give every intermediate buffer a slice of one arena per dtype; buffers whose lifetimes (producer kernel
    to last reader) don't overlap share memory. Returns id(node) -> (arena, offset, size), arena sizes."""
    last: dict[int, int] = {}
    for k in sched.kernels:
        for i in k.inputs:
            last[id(i)] = k.index
    slots: dict[int, tuple[str, int, int]] = {}
    placed: dict[str, list[tuple[int, int, int, int]]] = {}  # arena -> (offset, size, start, end)
    arenas: dict[str, tuple[np.dtype, int]] = {}
    for n in sched.intermediates:
        k = sched.kernel_of[id(n)].index
        start, end = k, max(k, last.get(id(n), k))
        arena = f"s_{short(n.dtype)}"
        size = n.size
        live = sorted((p for p in placed.get(arena, []) if not (p[3] < start or end < p[2])), key=lambda p: p[0])
        off = 0
        for p_off, p_size, _, _ in live:
            if off + size <= p_off:
                break
            off = max(off, -(-(p_off + p_size) // 16) * 16)  # 64-byte aligned for float32
        placed.setdefault(arena, []).append((off, size, start, end))
        slots[id(n)] = (arena, off, size)
        total = arenas.get(arena, (n.dtype, 0))[1]
        arenas[arena] = (np.dtype(n.dtype), max(total, off + size))
    return slots, arenas


def render_program(sched: Schedule, title: str = "", over: dict[int, int] | None = None) -> Rendered:
    """over: id(output buffer node) -> position of the input whose array it is written into (an in-place
    update, see in_place.writable_in_place): its stores go to that input's parameter, and it has none of its
    own. Writing through the same name matters: given two parameters that alias, LLVM's vectorized loops
    check for overlap at run time and fall back to scalar code (an Adam update 2x slower)."""
    over = over or {}
    # Comments name nodes as picograd.dump / PICOGRAD_DEBUG=3 print this graph (%12; inputs by their argument).
    num = {**GraphView(sched.outputs).name, **{id(n): f"in{i}" for i, n in enumerate(sched.inputs)}}
    names: dict[int, str] = {}
    for i, n in enumerate(sched.inputs):
        names[id(n)] = f"in{i}"
    for j, n in enumerate(sched.out_buffers):
        names[id(n)] = f"in{over[id(n)]}" if id(n) in over else f"out{j}"
    slots, arenas = plan_scratch(sched)
    views: dict[int, str] = {}
    for t, n in enumerate(sched.intermediates):
        names[id(n)] = f"t{t}"
        arena, off, size = slots[id(n)]
        views[id(n)] = f"t{t} = {arena}[{off}:{off + size}]"
    args = [f"in{i}" for i in range(len(sched.inputs))]
    args += [f"out{j}" for j, n in enumerate(sched.out_buffers) if id(n) not in over]
    args += sorted(arenas)
    sig = ", ".join(args)
    blocks = use_blocks(sched.kernels, PARALLEL_MIN)
    r = ProgramRenderer(sched, names, num, blocks)
    codes = [r.kernel(k) for k in sched.kernels]
    # Where two processes will compile a new program (compile_helper.py), serial kernels are called too: inlined,
    # they would all compile with the entry, after everything else (the seed's step: 2.4 s of ~7.5)
    split = sum(c.parallel for c in codes) >= 2 and compile_helper.enabled()
    kernel_sources: dict[str, str] = {}
    funcs: list[str] = []
    # `times`: an int64 array of len(kernels) + 1 to fill with clock readings around each kernel
    # (Program.run_profiled), or an empty one; a branch per kernel, nothing else, when not timing
    entry = [f"@{HEADER.format(par='')}", f"def program({sig}, times):", "    timed = times.size > 0"]
    declared: set[int] = set()
    kernel_args: dict[str, list[int]] = {}
    for c in codes:
        k = c.kernel
        used = [n for n in k.inputs + k.outputs if id(n) in views]
        # a kernel function takes only the buffers it touches: each array argument costs compile time (unboxing)
        touched = {slots[id(n)][0] if id(n) in views else names[id(n)] for n in k.inputs + k.outputs}
        params = [a for a in args if a in touched]
        kernel_args[k.name] = [args.index(a) for a in params]
        head = [f"    {views[id(n)]}" for n in used]
        desc = ", ".join(node_label(o, num) for o in k.outputs)
        fn = [f"@{HEADER.format(par=', parallel=True' if c.parallel else '')}", f"def {k.name}({', '.join(params)}):",
              f'    """{k.kind} over [{",".join(map(str, k.domain))}] -> {desc}"""', *head]
        fn += _flushing(["    " + ln for ln in c.body]) or ["    pass"]
        src = "\n".join(fn)
        kernel_sources[k.name] = src
        funcs.append(src)
        entry.append(f"    # ---- {k.name}: {desc}")
        entry += ["    if timed:", f"        times[{k.index}] = now_ns()"] if CLOCK else []
        if c.parallel or split:
            entry.append(f"    {k.name}({', '.join(params)})")
            continue
        for n in used:
            if id(n) not in declared:
                declared.add(id(n))
                entry.append(f"    {views[id(n)]}")
        entry += ["    " + ln for ln in c.body]
    entry += ["    if timed:", f"        times[{len(codes)}] = now_ns()"] if CLOCK else ["    pass"]
    entry[2:] = _flushing(entry[2:])
    body = "\n".join(funcs)
    header = [f'"""picograd program {title}: {len(sched.kernels)} kernels (generated; edits are overwritten)."""',
              "import math", "", "import numpy as np",
              "from numba import njit, prange  # noqa: F401", "",
              _gemm_import(body),
              "from picograd.codegen.cpu_expr import acc_add  # noqa: F401",
              *(["from picograd.codegen.clock import now_ns  # noqa: F401"] if CLOCK else []),
              *(["from picograd.codegen.fpenv import fp_enter, fp_exit  # noqa: F401"] if FLUSH else []),
              "",
              f"RAND_GOLDEN = np.uint64({ops.RAND_GOLDEN})", f"RAND_MUL1 = np.uint64({ops.RAND_MUL1})",
              f"RAND_MUL2 = np.uint64({ops.RAND_MUL2})", f"MASK32 = np.uint64({ops.MASK32})",
              "U8, U15, U16 = np.uint64(8), np.uint64(15), np.uint64(16)", *r.consts.lines, ""]
    source = "\n".join(header) + "\n\n" + "\n\n\n".join(funcs + ["\n".join(entry)]) + "\n"
    return Rendered(source, kernel_sources, args, arenas, [c.kernel.name for c in codes if c.parallel],
                    [c.kernel.name for c in codes if c.parallel or split], kernel_args,
                    # whole matmuls on numpy's pool leave scipy's pinned to one thread (threads.blas_threads)
                    blas_threads=1 if blocks or blas.SHARED else 0, over=dict(over))
