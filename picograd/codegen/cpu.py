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
from ..ir.shape import prod
from . import blas, compile_helper
from . import indexing as ix
from .clock import AVAILABLE as CLOCK
from .cpu_expr import BufRef, Consts, Loop, Stmt, Val, node_label, short
from .cpu_matmul import chunk_plan, gemm_lines, use_blocks
from .cpu_nest import BLOCK, CHUNK, Nest  # noqa: F401  (BLOCK, CHUNK: read by cache.py and tests as cpu.*)
from .fpenv import FLUSH
from .schedule import Kernel, Schedule

PARALLEL_MIN = int(os.environ.get("PICOGRAD_PARALLEL_MIN", 1 << 17))  # elements; smaller loops stay serial
PARALLEL_AFTER_GEMM = False  # prange in matmul epilogues while OpenBLAS runs its own threads (see kernel)
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
            lines += self.nest(loop, None, [], prod(k.out_shape) >= PARALLEL_MIN)
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
        """The loop nest's lines (cpu_nest.Nest; chunk: run one block of an axis, see there)."""
        reduced_axes = set(k.axes) if k is not None and reds else set()
        return Nest(self, loop, reduced_axes, reds, parallel, chunk).render()


def _index_for(idx: tuple, domain: tuple[int, ...], shape: tuple[int, ...]) -> tuple:
    """The loop index as an index of a node whose shape differs from the domain only by size-1 axes."""
    return idx if shape == domain else ix.reshape_index(idx, domain, shape, domain)


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
