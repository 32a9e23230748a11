"""The tiled matmul template for numba.cuda: shared-memory tiles, a register tile per thread, the schedule's
elementwise consumers fused into the epilogue, and split-k for long products with few output tiles.

Split-k, because of the shape a small-batch training step has: a batch-64 layer's product (64 x 800
outputs, k = 784) is only 100 tiles, fewer blocks than an H100 has SMs, and each block walks 49 k-steps one
after the other, waiting on global memory at each. Splitting k into S ranges runs S times the blocks for
1/S of the steps each. A block stores its partial tile in a scratch buffer; a second, elementwise kernel adds
the S partials in a fixed order (the result does not depend on scheduling) and runs the epilogue."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ..ir.node import Node
from .cuda_expr import Emitter, clamp, lit, np_name
from .cuda_render import Rendered, Target, cdiv, kernel_source, param_list, store

# (TM, TN, TK, RM, RN): a block computes a TM x TN tile, each thread an RM x RN register tile.
_MM_CONFIGS = ((64, 64, 16, 4, 4), (32, 64, 16, 2, 4), (32, 32, 16, 2, 2), (16, 32, 16, 1, 2))
_MM_SIM = (8, 8, 4, 2, 2)
MIN_STEPS = 4  # k-steps per split at least: the partials (S x the output) stay small next to the operands
MAX_SPLITS = 32


def matmul_config(m: int, n: int, batch: int, target: Target) -> tuple[int, int, int, int, int]:
    """The biggest tile that still gives every SM a block; small problems fall to the smallest tile."""
    if target.small:
        return _MM_SIM
    for cfg in _MM_CONFIGS:
        if cdiv(m, cfg[0]) * cdiv(n, cfg[1]) * batch >= target.sm_count:
            return cfg
    return _MM_CONFIGS[-1]


def split_k(blocks: int, steps: int, target: Target) -> tuple[int, int]:
    """(splits, k-steps per split) for a product of `blocks` output tiles and `steps` k-steps: no split when
    the tiles already give every SM a block; else enough splits for about four blocks per SM."""
    fill = 4 if target.small else target.sm_count  # the simulator's tiny grids: split its long products too
    if not target.split_k or blocks >= fill or steps < 2 * MIN_STEPS:
        return 1, steps
    s = min(cdiv(4 * fill, blocks), steps // MIN_STEPS, MAX_SPLITS)
    per = cdiv(steps, s)
    return cdiv(steps, per), per


def _last_contiguous(x: Node) -> bool:
    """Whether consecutive positions along a matmul operand's last axis are (probably) adjacent in memory;
    picks which way the tile loads walk so a warp's reads coalesce. A guess from the movement chain;
    correctness never depends on it."""
    flips = 0
    while x.op in ("permute", "expand", "reshape", "detach", "cast", "neg"):
        if x.op == "permute" and x.arg[-1] != len(x.arg) - 1:
            flips += 1
        x = x.srcs[0]
    return flips % 2 == 0


def render_matmul(name: str, top: Node, outputs: list[tuple[Node, str]], params: dict[int, str], target: Target
                  ) -> list[Rendered]:
    """top: the schedule's k.matmul, a matmul or the swap of its last two axes (then each register is stored
    transposed: one kernel instead of a matmul and a copy). One kernel, or two when k is split."""
    mm = top.srcs[0] if top.op == "permute" else top
    transposed = mm is not top
    a, b = mm.srcs
    batched = len(mm.shape) == 3
    nb = mm.shape[0] if batched else 1
    m, n = mm.shape[-2:]
    k = a.shape[-1]
    tm, tn, tk, rm, rn = matmul_config(m, n, nb, target)
    # A thread owns rows `rt + i * nrt` and columns `ct + j * nct` of the tile. threadIdx.x (consecutive lanes
    # of a warp) runs along the axis that is contiguous in the output: columns, or rows when the result is
    # stored transposed (a weight gradient), so the epilogue's loads and stores coalesce either way.
    nrt, nct = tm // rm, tn // rn
    rt, ct = ("cuda.threadIdx.x", "cuda.threadIdx.y") if transposed else ("cuda.threadIdx.y", "cuda.threadIdx.x")
    threads = nrt * nct
    # Past CUDA's 65535 blocks along y (rows) or z (batch), a block loops over several row tiles / matrices.
    row_tiles, col_tiles, loops = cdiv(m, tm), cdiv(n, tn), []
    gy, gz = min(row_tiles, target.max_grid_yz), min(nb, target.max_grid_yz)
    splits, per = split_k(col_tiles * gy * gz, cdiv(k, tk), target)
    total = nb * m * n
    e = Emitter(params, target.sim)
    e.line(f"rt = {rt}")
    e.line(f"ct = {ct}")
    e.line(f"t = cuda.threadIdx.y * {nrt if transposed else nct} + cuda.threadIdx.x")
    if splits > 1:  # blockIdx.x = split * col_tiles + column tile
        e.line(f"sk = cuda.blockIdx.x // {col_tiles}")
        e.line(f"bj = (cuda.blockIdx.x - sk * {col_tiles}) * {tn}")
        e.line(f"kb = sk * {per * tk}")
        e.line(f"ke = kb + {per * tk} if kb + {per * tk} < {k} else {k}")  # (no min(): see cuda_expr.clamp)
        k_range = f"range(kb, ke, {tk})"
    else:
        e.line(f"bj = cuda.blockIdx.x * {tn}")
        k_range = f"range(0, {k}, {tk})"
    e.line("bz = cuda.blockIdx.z")
    if gz < nb:
        e.line(f"while bz < {nb}:")
        e.push()
        loops.append("bz += cuda.gridDim.z")
    if gy < row_tiles:
        e.line("by = cuda.blockIdx.y")
        e.line(f"while by < {row_tiles}:")
        e.push()
        e.line(f"bi = by * {tm}")
        loops.append("by += cuda.gridDim.y")
    else:
        e.line(f"bi = cuda.blockIdx.y * {tm}")
    acc = [[f"c{i}_{j}" for j in range(rn)] for i in range(rm)]
    for row in acc:
        for c in row:
            e.line(f"{c} = {lit(0, mm.dtype)}")
    e.line(f"for k0 in {k_range}:")
    e.push()

    def tile(x: Node, rows: int, cols: int, smem: str, a_side: bool) -> None:
        # Element ee of the tile: walk along the operand's last axis (k of A, n of B) first when it is
        # contiguous in memory, else along the other one.
        contiguous = _last_contiguous(x)
        for l_ in range(cdiv(rows * cols, threads)):
            ee = f"(t + {l_ * threads})"
            inner, outer = (cols, rows) if contiguous else (rows, cols)
            if a_side:  # As[kk, ii] <- A[bi + ii, k0 + kk]
                ii, kk = (f"{ee} // {inner}", f"{ee} % {inner}") if contiguous else (f"{ee} % {inner}",
                                                                                      f"{ee} // {inner}")
                gi, gk = e.tmp(f"bi + {ii}", "g"), e.tmp(f"k0 + {kk}", "g")
                cond, idx, dst = f"{gi} < {m} and {gk} < {k}", (gi, gk), f"{smem}[{kk}, {ii}]"
            else:  # Bs[kk, jj] <- B[k0 + kk, bj + jj]
                kk, jj = (f"{ee} // {inner}", f"{ee} % {inner}") if contiguous else (f"{ee} % {inner}",
                                                                                      f"{ee} // {inner}")
                gk, gj = e.tmp(f"k0 + {kk}", "g"), e.tmp(f"bj + {jj}", "g")
                cond, idx, dst = f"{gk} < {k} and {gj} < {n}", (gk, gj), f"{smem}[{kk}, {jj}]"
            if rows * cols % threads:
                cond = f"{ee} < {rows * cols} and " + cond
            full = ("bz",) + idx if batched else idx
            e.line(f"if {cond}:")
            e.push()
            e.line(f"{dst} = {e.val(x, full)}")
            e.pop()
            if rows * cols % threads:
                e.line(f"elif {ee} < {rows * cols}:")
            else:
                e.line("else:")
            e.push()
            e.line(f"{dst} = {lit(0, mm.dtype)}")
            e.pop()

    tile(a, tm, tk, "As", True)
    tile(b, tk, tn, "Bs", False)
    e.line("cuda.syncthreads()")
    e.line(f"for kk in range({tk}):")
    e.push()
    for i in range(rm):
        e.line(f"ra{i} = As[kk, rt + {i * nrt}]")
    for j in range(rn):
        e.line(f"rb{j} = Bs[kk, ct + {j * nct}]")
    for i in range(rm):
        for j in range(rn):
            e.line(f"{acc[i][j]} += ra{i} * rb{j}")
    e.pop()
    e.line("cuda.syncthreads()")
    e.pop()
    # Each register's place in the output (top's layout): an in-bounds test where the tile overhangs the
    # edge, the flat index, and the multi-index (at a clamped, always valid position for the fused loads).
    edge_m, edge_n = m % tm != 0, n % tn != 0
    ii_, jj_, cols = (1, 0, m) if transposed else (0, 1, n)
    places: list[tuple[str, str, tuple[str, ...], str]] = []
    for i in range(rm):
        for j in range(rn):
            gi = e.tmp(f"bi + rt + {i * nrt}", "gi")
            gj = e.tmp(f"bj + ct + {j * nct}", "gj")
            ok = " and ".join(([f"{gi} < {m}"] if edge_m else []) + ([f"{gj} < {n}"] if edge_n else []))
            clamped = splits == 1  # a partial store is only made in bounds; the fused loads read everywhere
            ci = e.tmp(clamp(gi, 0, m - 1, low=False), "gi") if edge_m and clamped else gi
            cj = e.tmp(clamp(gj, 0, n - 1, low=False), "gj") if edge_n and clamped else gj
            pos = (ci, cj)
            ii, jj = pos[ii_], pos[jj_]
            flat = e.tmp(f"bz * {m * n} + {ii} * {cols} + {jj}" if batched else f"{ii} * {cols} + {jj}", "f")
            places.append((ok, flat, ("bz", ii, jj) if batched else (ii, jj), acc[i][j]))
    if splits > 1:
        for ok, flat, _, c in places:
            with _guarded(e, ok):
                e.line(f"part[sk * {total} + {flat}] = {c}")
    else:
        _epilogue(e, mm, top, outputs, places)
    for step in reversed(loops):
        e.line(step)
        e.pop()
    t = np_name(mm.dtype)
    # One padding column: the tile loads write the tiles down their columns when the operand's k axis is the
    # contiguous one, and a row length of 16/32/64 words would put a warp's writes in the same few banks.
    prologue = [f"As = cuda.shared.array(({tk}, {tm + 1}), np.{t})",
                f"Bs = cuda.shared.array(({tk}, {tn + 1}), np.{t})"]
    grid = (col_tiles * splits, gy, gz)
    block = (nrt, nct, 1) if transposed else (nct, nrt, 1)
    smem = tk * (tm + 1 + tn + 1) * np.dtype(t).itemsize
    if splits == 1:
        names = param_list(params, outputs)
        return [Rendered(name, kernel_source(name, names, e, prologue), names, grid, block, shared_bytes=smem)]
    work = {"part": ((splits * total,), mm.dtype)}
    names = param_list(params, []) + ["part"]
    first = Rendered(name, kernel_source(name, names, e, prologue), names, grid, block, work, shared_bytes=smem)
    return [first, _render_sum(name + "_sum", mm, top, outputs, params, target, splits, total, work)]


@contextmanager
def _guarded(e: Emitter, ok: str) -> Iterator[None]:
    """Lines emitted inside go under `if ok:` (a register's in-bounds test; none where the tile fits)."""
    if ok:
        e.line(f"if {ok}:")
        e.push()
    yield
    if ok:
        e.pop()


def _epilogue(e: Emitter, mm: Node, top: Node, outputs: list[tuple[Node, str]],
              places: list[tuple[str, str, tuple[str, ...], str]]) -> None:
    """The fused consumers of each register, in two phases: every register's values first (loads at a
    clamped, always valid index), then all the stores. numba cannot mark the buffers noalias, so a load
    emitted after a store waits for it; this way a thread's loads (Adam's moments and weights, say) are all
    in flight at once, and a load that is the same for every register (a host scalar) is made once."""
    stores = []
    for ok, flat, idx, c in places:
        e.set_flat(idx, top.shape, flat)
        e.values[id(mm)] = e.values[id(top)] = c
        vals = []
        for o, out in outputs:
            oidx = idx if o.shape == top.shape else e.decompose(flat, o.shape)
            vals.append((out, e.tmp(e.val(o, oidx), "v"), o))  # a load becomes a variable here, in phase 1
        e.values.pop(id(mm), None)
        e.values.pop(id(top), None)
        stores.append((ok, flat, vals))
    for ok, flat, vals in stores:
        with _guarded(e, ok):
            for out, v, o in vals:
                store(e, out, flat, v, o)


def _render_sum(name: str, mm: Node, top: Node, outputs: list[tuple[Node, str]], params: dict[int, str],
                target: Target, splits: int, total: int, work: dict) -> Rendered:
    """Split-k's second kernel: a grid-stride loop over the output adding the partials, then the epilogue."""
    e = Emitter(params, target.sim)
    e.line("i = cuda.grid(1)")
    e.line("step = cuda.gridsize(1)")
    e.line(f"while i < {total}:")
    e.push()
    idx = e.decompose("i", top.shape)
    e.line("acc = part[i]")
    e.line(f"for s in range(1, {splits}):")
    e.push()
    e.line(f"acc += part[s * {total} + i]")
    e.pop()
    _epilogue(e, mm, top, outputs, [("", "i", idx, "acc")])
    e.line("i += step")
    e.pop()
    names = param_list(params, outputs) + ["part"]
    return Rendered(name, kernel_source(name, names, e), names, (target.stride_blocks(total), 1, 1),
                    (target.block, 1, 1), work)
