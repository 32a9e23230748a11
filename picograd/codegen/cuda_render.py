"""Kernel templates for numba.cuda: grid-stride elementwise loops and reductions (a thread per output, a
shared-memory tree per output, or two passes over a split axis); the tiled matmul is in cuda_matmul.
Launch configurations are chosen here from the (static) shapes.

Each template returns `Rendered` kernels: Python source of one `def` whose parameters are flat buffers
(pointers on a GPU, 1-D arrays on the simulator), the parameter list as slot names, and the launch
configuration. Scalar code comes from cuda_expr.Emitter."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..ir.node import Node
from .cuda_expr import Emitter, lit, lowest, np_name


@dataclass
class Target:
    """What the templates need to know about the device."""

    sim: bool  # kernels run on numba's CUDA simulator: plain Python, so numpy's scalar math
    sm_count: int = 132
    gpu_launch: bool = False  # on the simulator, a GPU's launch configurations (blocks, tiles) instead of tiny ones
    split_k: bool = True  # a long matmul with too few output tiles to fill the GPU splits k (cuda_matmul)

    @property
    def small(self) -> bool:
        """The simulator's tiny launch configurations: 32-thread blocks, 8x8 matmul tiles, few blocks."""
        return self.sim and not self.gpu_launch

    @property
    def block(self) -> int:  # threads per block of elementwise and per-output reductions
        return 32 if self.small else 256

    @property
    def max_blocks(self) -> int:  # grid-stride loops cap the grid: enough blocks to fill every SM
        return 4 if self.small else self.sm_count * 8

    def stride_blocks(self, n: int) -> int:
        """Blocks of `block` threads for a grid-stride loop over n items: one item a thread, up to max_blocks."""
        return max(1, min(cdiv(n, self.block), self.max_blocks))

    @property
    def max_grid_yz(self) -> int:
        """The most blocks along a grid's y and z (CUDA's limit; the simulator's is tiny so that its tests run
        the loops that go past it)."""
        return 2 if self.small else 65535


@dataclass
class Rendered:
    name: str
    source: str
    params: list[str]  # buffer names in parameter order (the program maps them to slots)
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    workspace: dict[str, tuple[tuple[int, ...], np.dtype]] = field(default_factory=dict)  # scratch buffers
    shared_bytes: int = 0  # static shared memory the kernel declares
    # For the inspection tools (PICOGRAD_DEBUG, picograd-dump), from the scheduled kernel it launches: its domain,
    # work, and IR nodes (these only while they listen: CudaProgram keeps no graph otherwise)
    shape: tuple[int, ...] = ()
    flops: int = 0
    bytes: int = 0
    nodes: list = field(default_factory=list)

    @property
    def kind(self) -> str:  # for the inspection tools: "elementwise", "reduce", "matmul" (names are k<i>_<kind>_...)
        parts = self.name.split("_")
        return parts[1] if len(parts) > 1 and parts[0][:1] == "k" else "?"


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def store(e: Emitter, name: str, flat: str, v: str, n: Node) -> None:
    e.line(f"{name}[{flat}] = " + (f"np.uint8(1) if {v} else np.uint8(0)" if n.dtype == np.bool_ else v))


def kernel_source(name: str, params: list[str], e: Emitter, prologue: list[str] | None = None) -> str:
    head = [f"def {name}({', '.join(params)}):"] + ["    " + p for p in (prologue or [])]
    return "\n".join(head + e.lines) + "\n"


# ---- elementwise ----------------------------------------------------------------------------------
def render_elementwise(name: str, outputs: list[tuple[Node, str]], params: dict[int, str], target: Target
                       ) -> Rendered:
    """One grid-stride loop over the outputs' common size; each output is stored at its own flat index."""
    shape = outputs[0][0].shape
    size = _size(shape)
    if any(_size(o.shape) != size for o, _ in outputs):
        shapes = [o.shape for o, _ in outputs]
        raise NotImplementedError(f"cuda {name}: elementwise outputs of different sizes {shapes}")
    e = Emitter(params, target.sim)
    e.line("i = cuda.grid(1)")
    e.line("step = cuda.gridsize(1)")
    e.line(f"while i < {size}:")
    e.push()
    for o, out in outputs:
        idx = e.decompose("i", o.shape)
        store(e, out, "i", e.val(o, idx), o)
    e.line("i += step")
    e.pop()
    blocks = target.stride_blocks(size)
    names = param_list(params, outputs)
    return Rendered(name, kernel_source(name, names, e), names, (blocks, 1, 1), (target.block, 1, 1))


def param_list(params: dict[int, str], outputs: list[tuple[Node, str]]) -> list[str]:
    seen = [o for _, o in outputs]
    return seen + [p for p in dict.fromkeys(params.values()) if p not in seen]


# ---- reductions -----------------------------------------------------------------------------------
def _combine(op: str, dtype: np.dtype, acc: str, x: str) -> str:
    if op == "reduce_sum":
        return f"({acc} or {x})" if dtype == np.bool_ else f"({acc} + {x})"
    return f"({x} if ({x} > {acc} or {x} != {x}) else {acc})"  # NaN-propagating max


def _init(op: str, dtype: np.dtype) -> str:
    return lit(0, dtype) if op == "reduce_sum" else lowest(dtype)


def reduce_mode(n_out: int, r: int, target: Target) -> str:
    """thread: a thread loops over a whole reduced row (short rows, or outputs enough to fill the GPU);
    tree: a block per output and a shared-memory tree; split: two passes, for few long rows."""
    forced = os.environ.get("PICOGRAD_CUDA_REDUCE")
    if forced in ("thread", "tree", "split"):
        return forced
    if r <= 64 or n_out >= 32 * target.block * (2 if target.small else target.sm_count):
        return "thread"
    if n_out < (2 if target.small else target.sm_count) and r >= (256 if target.small else 65536):
        return "split"
    return "tree"


def render_reduce(name: str, stores: list[tuple[Node, str]], reduces: list[tuple[Node, str]],
                  post: list[tuple[Node, str]], params: dict[int, str], target: Target) -> list[Rendered]:
    """The schedule's reduce loop nest: over the domain (the reductions' common source shape), store
    `stores` and accumulate `reduces` (all over the same axes); then, per output position, store the
    reductions and run the `post` epilogue. Every domain position is visited exactly once, so the
    stores ride along in the accumulation loop."""
    nodes = [n for n, _ in reduces]
    src_shape, axes = nodes[0].srcs[0].shape, nodes[0].arg
    if any(r.srcs[0].shape != src_shape or r.arg != axes for r in nodes):
        raise NotImplementedError(f"cuda {name}: reductions of different shapes/axes in one kernel")
    out_shape = nodes[0].shape
    red_shape = tuple(src_shape[a] for a in axes)
    n_out, r = _size(out_shape), _size(red_shape)
    mode = reduce_mode(n_out, r, target)
    job = _ReduceJob(name, stores, reduces, post, params, target, src_shape, out_shape, red_shape, axes)
    block = 0 if mode == "thread" else _tree_block(job)
    if block == 0:
        return [_reduce_thread(job)]
    return _reduce_blocks(job, mode, block)


SHARED_BYTES = 48 * 1024  # static shared memory a block may declare (more needs an opt-in at launch)


def _tree_block(job: _ReduceJob) -> int:
    """Threads per block of a tree reduction: 256 (fewer for short rows), halved until a shared array per
    reduction fits in SHARED_BYTES (sibling reductions fuse: sixty sums of one shape are one kernel); 0 when
    even 32 threads do not fit, and each output gets a thread instead."""
    r = _size(job.red_shape)
    block = 32 if job.target.small else 256
    while block > 32 and block // 2 >= r:
        block //= 2
    per_thread = _shared_per_thread(job.nodes)
    while block > 32 and block * per_thread > SHARED_BYTES:
        block //= 2
    return block if block * per_thread <= SHARED_BYTES else 0


def _shared_per_thread(nodes: list[Node]) -> int:
    return sum(np.dtype(np_name(n.dtype)).itemsize for n in nodes)


@dataclass
class _ReduceJob:
    name: str
    stores: list[tuple[Node, str]]
    reduces: list[tuple[Node, str]]
    post: list[tuple[Node, str]]
    params: dict[int, str]
    target: Target
    domain: tuple[int, ...]
    out_shape: tuple[int, ...]
    red_shape: tuple[int, ...]
    axes: tuple[int, ...]

    @property
    def nodes(self) -> list[Node]:
        return [n for n, _ in self.reduces]

    def names(self) -> list[str]:
        return param_list(self.params, self.stores + self.reduces + self.post)


def _full_index(oidx: tuple[str, ...], ridx: tuple[str, ...], axes: tuple[int, ...]) -> tuple[str, ...]:
    full, it = list(oidx), iter(ridx)
    for a in axes:
        full[a] = next(it)
    return tuple(full)


def _accumulate(e: Emitter, job: _ReduceJob, accs: list[str], oidx: tuple[str, ...], rvar: str) -> None:
    ridx = e.decompose(rvar, job.red_shape)
    full = _full_index(oidx, ridx, job.axes)
    if job.stores:
        flat = e.linear(full, job.domain)
        for o, out in job.stores:  # the schedule lets shapes differ by size-1 axes: same flat position
            store(e, out, flat, e.val(o, full if o.shape == job.domain else e.decompose(flat, o.shape)), o)
    for n, acc in zip(job.nodes, accs, strict=False):
        x = e.val(n.srcs[0], full)
        e.line(f"{acc} = {_combine(n.op, n.dtype, acc, x)}")


def _epilogue(e: Emitter, job: _ReduceJob, accs: list[str], flat: str, oidx: tuple[str, ...]) -> None:
    for (n, out), acc in zip(job.reduces, accs, strict=False):
        e.values[id(n)] = acc
        store(e, out, flat, acc, n)
    for o, out in job.post:
        store(e, out, flat, e.val(o, oidx if o.shape == job.out_shape else e.decompose(flat, o.shape)), o)
    for n in job.nodes:
        del e.values[id(n)]


def _reduce_thread(job: _ReduceJob) -> Rendered:
    n_out, r, target = _size(job.out_shape), _size(job.red_shape), job.target
    e = Emitter(job.params, target.sim)
    e.line("o = cuda.grid(1)")
    e.line("step = cuda.gridsize(1)")
    e.line(f"while o < {n_out}:")
    e.push()
    oidx = e.decompose("o", job.out_shape)
    accs = [e.fresh("acc") for _ in job.nodes]
    for n, acc in zip(job.nodes, accs, strict=False):
        e.line(f"{acc} = {_init(n.op, n.dtype)}")
    e.line(f"for r in range({r}):")
    e.push()
    _accumulate(e, job, accs, oidx, "r")
    e.pop()
    _epilogue(e, job, accs, "o", oidx)
    e.line("o += step")
    e.pop()
    blocks = target.stride_blocks(n_out)
    names = job.names()
    return Rendered(job.name, kernel_source(job.name, names, e), names, (blocks, 1, 1), (target.block, 1, 1))


def _tree(e: Emitter, reduces: list[Node], accs: list[str], shared: list[str], block: int) -> None:
    """Block-wide reduction of each acc through shared memory; thread 0 ends with the results."""
    for acc, sm in zip(accs, shared, strict=False):
        e.line(f"{sm}[tid] = {acc}")
    e.line("cuda.syncthreads()")
    e.line(f"s = {block // 2}")
    e.line("while s > 0:")
    e.push()
    e.line("if tid < s:")
    e.push()
    for n, sm in zip(reduces, shared, strict=False):
        e.line(f"{sm}[tid] = {_combine(n.op, n.dtype, f'{sm}[tid]', f'{sm}[tid + s]')}")
    e.pop()
    e.line("cuda.syncthreads()")
    e.line("s //= 2")
    e.pop()


def _reduce_blocks(job: _ReduceJob, mode: str, block: int) -> list[Rendered]:
    """A block of `block` threads (_tree_block) per output, or per part of one in the split mode."""
    n_out, r, target, name, nodes = _size(job.out_shape), _size(job.red_shape), job.target, job.name, job.nodes
    split = 1
    if mode == "split":
        split = max(2, min(cdiv(r, block * 4), (8 if target.small else 4 * target.sm_count) // max(n_out, 1)))
    chunk = cdiv(r, split)
    prologue = [f"sm{k} = cuda.shared.array({block}, np.{np_name(n.dtype)})" for k, n in enumerate(nodes)]
    smem = block * _shared_per_thread(nodes)
    shared = [f"sm{k}" for k in range(len(nodes))]
    partial = [f"part{k}" for k in range(len(nodes))]

    # pass 1 (or the only pass): block b reduces row b // split over its chunk
    e = Emitter(job.params, target.sim)
    e.line("tid = cuda.threadIdx.x")
    e.line("b = cuda.blockIdx.x")
    e.line(f"while b < {n_out * split}:")
    e.push()
    if split > 1:
        e.line(f"o = b // {split}")
        e.line(f"lo = (b % {split}) * {chunk}")
        e.line(f"hi = lo + {chunk} if lo + {chunk} < {r} else {r}")  # (no min(): see cuda_expr.clamp)
    else:
        e.line("o = b")
        e.line("lo = 0")
        e.line(f"hi = {r}")
    oidx = e.decompose("o", job.out_shape)
    accs = [e.fresh("acc") for _ in nodes]
    for n, acc in zip(nodes, accs, strict=False):
        e.line(f"{acc} = {_init(n.op, n.dtype)}")
    e.line("r = lo + tid")
    e.line("while r < hi:")
    e.push()
    _accumulate(e, job, accs, oidx, "r")
    e.line(f"r += {block}")
    e.pop()
    _tree(e, nodes, accs, shared, block)
    e.line("if tid == 0:")
    e.push()
    if split > 1:
        for sm, part in zip(shared, partial, strict=False):
            e.line(f"{part}[b] = {sm}[0]")
    else:
        for acc, sm in zip(accs, shared, strict=False):
            e.line(f"{acc} = {sm}[0]")
        _epilogue(e, job, accs, "o", oidx)
    e.pop()
    e.line("cuda.syncthreads()")  # the shared arrays are reused by the next row
    e.line("b += cuda.gridDim.x")
    e.pop()
    grid = (max(1, min(n_out * split, 65535)), 1, 1)
    if split == 1:
        names = job.names()
        return [Rendered(name, kernel_source(name, names, e, prologue), names, grid, (block, 1, 1), shared_bytes=smem)]
    work = {p: ((n_out * split,), n.dtype) for p, n in zip(partial, nodes, strict=False)}
    names1 = param_list(job.params, job.stores) + partial
    first = Rendered(name + "_p1", kernel_source(name + "_p1", names1, e, prologue), names1, grid, (block, 1, 1), work,
                     shared_bytes=smem)

    # pass 2: a thread per output combines its `split` partials, then runs the epilogue
    e2 = Emitter(job.params, target.sim)
    e2.line("o = cuda.grid(1)")
    e2.line("step = cuda.gridsize(1)")
    e2.line(f"while o < {n_out}:")
    e2.push()
    oidx2 = e2.decompose("o", job.out_shape)
    accs2 = [e2.fresh("acc") for _ in nodes]
    for n, acc in zip(nodes, accs2, strict=False):
        e2.line(f"{acc} = {_init(n.op, n.dtype)}")
    e2.line(f"for r in range({split}):")
    e2.push()
    for n, acc, part in zip(nodes, accs2, partial, strict=False):
        e2.line(f"{acc} = {_combine(n.op, n.dtype, acc, f'{part}[o * {split} + r]')}")
    e2.pop()
    _epilogue(e2, job, accs2, "o", oidx2)
    e2.line("o += step")
    e2.pop()
    names2 = param_list(job.params, job.reduces + job.post) + partial
    blocks = target.stride_blocks(n_out)
    second = Rendered(name + "_p2", kernel_source(name + "_p2", names2, e2), names2, (blocks, 1, 1),
                      (target.block, 1, 1), work)
    return [first, second]
