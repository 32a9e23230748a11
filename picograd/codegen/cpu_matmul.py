"""Matmuls in the CPU backend's generated code: one BLAS gemm call on the flat buffers (blas.py), or, for big
2-D products, blocks over our own threads (prange), each block's gemm followed by its part of the fused
epilogue while it is in cache (cpu.ProgramRenderer.nest renders that part, given the block's range).

scipy's OpenBLAS, which gemm reaches, is made single-threaded for that (threads.pin_blas): its own 2 threads
keep spinning after each call and fight any prange loop that follows for the 2 cores. Without the pin nothing
is split and matmul epilogues stay serial, as before."""

from __future__ import annotations

import os
from typing import Any

from numba.core import config as numba_config

from ..ir.node import Node
from . import blas
from .cpu_expr import node_label, np_type
from .schedule import Kernel, contracted, matmul_operands
from .threads import pin_blas

# Matmuls of at least this many multiply-adds run in blocks over our threads once OpenBLAS is single-threaded.
# Measured (2 cores, single-threaded sgemm vs 2 blocks in prange, medians): 0.5M MACs 15-20 us vs 22-28 (blocks
# lose), 2.1M 54-63 vs 48-68 (even), 4.2M 112 vs 75, 12.8M 290 vs 180 (2-thread OpenBLAS: 175).
CHUNK_MIN_MACS = int(os.environ.get("PICOGRAD_CHUNK_MIN_MACS", 1 << 22))
# ... or whose epilogue that can run in the blocks has at least this many arithmetic ops (schedule's estimate).
# Measured (2 cores, medians of a whole step's kernels): 64x10x800 with a 51200-element relu-backward + bias-
# gradient + Adam epilogue (estimate 1.0M) 141-169 -> 105-116 us in 2 blocks; 128x10x128 with a 16384-element
# one (98K) 24 -> 43 us and 10x64x800 with an 8000-element Adam update (112K) 93-100 -> 72-98 us: not worth it.
CHUNK_MIN_EPILOGUE = int(os.environ.get("PICOGRAD_CHUNK_MIN_EPILOGUE", 1 << 18))
# Blocks per chunked matmul; 0: numba's thread count. More blocks than threads measured slower (seed step, 2
# threads: 2 blocks 5.72 ms, 4 blocks 5.89, 8 blocks 6.60).
GEMM_BLOCKS = int(os.environ.get("PICOGRAD_GEMM_BLOCKS", 0))


# Programs with a matmul of at least this many multiply-adds (or with parallel loops of their own) run big matmuls
# in blocks over our threads, OpenBLAS on one thread; the others leave each matmul whole to OpenBLAS's own
# threads, with no prange loop to fight them. Measured (2 cores, training loop, alternating runs, ms/step): the
# small MLP (12.8M-MAC matmuls) 0.77 whole vs 0.84 in blocks; the seed's model (40M) 7.7 whole vs 6.1 in blocks.
BLOCKS_MIN_MACS = int(os.environ.get("PICOGRAD_BLOCKS_MIN_MACS", 24_000_000))
# ... unless each such matmul has a long contraction (at least BLOCKS_LONG_K) and an epilogue under 1/64 op per
# multiply-add: then OpenBLAS's threads do as well and the program has no parallel kernel to compile. The seed's
# model evaluated in batches of 1000 (784x800 and 800x800 products, bias + relu): first call 3.7-4.3 s -> 1.1 s,
# then 16-27 -> 14-15 ms. A training step's weight gradients (contraction = the batch, an optimizer epilogue)
# keep their blocks.
BLOCKS_LONG_K = 256


# In a program in blocks, a product with a long contraction (and no thin side) calls blas.gemm_1: Intel MKL's
# sequential gemm where MKL is installed, else OpenBLAS as the others. Measured in the seed model's training
# step (in-entry kernel times, 2 threads, kernels in 2 blocks): 64x784x800 729 -> 554 us, 64x800x800 638 -> 483,
# its transposed-operand twin 688 -> 441; but MKL was slower on the short-contraction weight gradients
# (800x64x784 with its Adam epilogue 963 -> 1153 us, 800x64x800 1031 -> 1144) and on 64x800x10 (21 -> 50 us).
ONE_THREAD_MIN_K, ONE_THREAD_MIN_SIDE = 256, 32


def use_blocks(kernels: list[Kernel], parallel_min: int) -> bool:
    """Whether a program splits its big matmuls over our threads (OpenBLAS pinned to one thread, see chunk_plan)
    rather than leaving them to OpenBLAS's threads (threads.blas_threads, set per program run)."""
    if not pin_blas():
        return False
    for k in kernels:
        if k.matmul is not None:
            kk = contracted(k.matmul)
            macs = _prod(k.matmul.shape) * kk
            if macs >= BLOCKS_MIN_MACS and (kk < BLOCKS_LONG_K or 64 * (k.flops - 2 * macs) >= macs):
                return True
        elif _prod(k.domain) >= parallel_min:
            return True  # a prange loop: OpenBLAS threads still spinning after a gemm would slow it down
        if k.post and _prod(k.out_shape) >= parallel_min:
            return True
    return False


def chunk_plan(k: Kernel) -> tuple[int, bool, bool] | None:
    """How a big 2-D matmul kernel runs in blocks over our threads: (axis, fused, ksplit), axis 0 for row
    blocks of the output, 1 for column blocks; fused when the epilogue runs inside each block on its rows or
    columns (else only the gemm is split and the epilogue loop follows, as unchunked kernels have it);
    ksplit: the gemm is split along the contraction instead, into partial products that the row blocks sum
    before their epilogue (for a long contraction, where row or column blocks would each repack a big
    operand: 128x784x128, OpenBLAS's 2 threads 170-180 us, 2 row blocks 195-205, 2 contraction blocks
    185-190, with a bias + relu epilogue). The block count (GEMM_BLOCKS, else numba's thread count) is fixed
    when the program is rendered. None: one gemm call, as before (OpenBLAS not pinned, small, batched or empty).

    Blocks never alias: block c writes only its rows (columns) of the product and of every epilogue
    output, whose index along the split axis is the product's; a reduction along the split axis would
    combine blocks, so it forces the other axis (a row max/sum: row blocks; a bias gradient, a sum over
    rows: column blocks); a reduction over both axes keeps the epilogue out of the blocks. The post loop
    (after the reductions) always runs after all blocks."""
    n = k.matmul
    if n is None or len(n.shape) != 2 or not pin_blas():
        return None
    m, nn = n.shape
    kk = contracted(n)
    macs = m * nn * kk
    if macs == 0:
        return None
    # Each block re-reads (and OpenBLAS repacks) the whole other operand: split the longer side of the
    # output. Measured medians, 2 cores, us: 64x784x800 single 1100, 2 row blocks 840, 2 column blocks
    # 590 (OpenBLAS's 2 threads 580); 800x64x800 (A transposed) single 820, rows 450, columns 575.
    axis, fused = (0 if m >= nn else 1), True
    if k.reduces:
        need = {(1,): 0, (0,): 1}.get(tuple(k.axes))
        fused = need is not None and n.shape[need] > 1
        axis = need if fused else axis
    # worth it for a big product, or a big epilogue that can run in the blocks (the schedule's estimate of
    # its arithmetic: ops per element times elements)
    if macs < CHUNK_MIN_MACS and not (fused and k.flops - 2 * macs >= CHUNK_MIN_EPILOGUE):
        return None
    if n.shape[axis] < 2:
        return None  # a 1 x n product has no rows to split (n x 1 too)
    return axis, fused, axis == 0 and kk > 2 * max(m, nn)


def gemm_lines(r: Any, n: Node, chunk: int | None = None, ksplit: bool = False) -> list[str]:
    """BLAS gemm straight on the flat buffers (see blas.py): operands are read as stored, transposed or not.
    r: the cpu.ProgramRenderer (buffer names, node numbers for comments, typed constants). chunk: the output
    axis to split into blocks over our threads (see chunk_plan); the lines then open the block loop
    `for ch in prange(blocks)`, with the block's range along that axis in lo:hi. ksplit (with chunk 0): a first
    block loop computes partial products over parts of the contraction, the row block loop opened then sums
    them."""
    mm, opa, opb = matmul_operands(n)
    out = r.names[id(n)]
    a, b = mm.srcs
    note = " (computed transposed)" if mm is not n else ""
    lines = [f"# {node_label(n, r.num)} = {node_label(a, r.num)} @ {node_label(b, r.num)}{note}"]
    m, nn = n.shape[-2], n.shape[-1]
    k = a.shape[-1]
    if 0 in n.shape:
        return lines
    if k == 0:
        return lines + [f"{out}[:] = {r.consts.get(0, n.dtype)}"]
    (ba, _, ta), (bb, _, tb) = opa, opb
    lda, ldb = (m if ta else k), (k if tb else nn)
    na, nb = r.names[id(ba)], r.names[id(bb)]
    args = f"{na}, {{oa}}, {int(ta)}, {lda}, {nb}, {{ob}}, {int(tb)}, {ldb}, {{c}}, {{oc}}, {{mnk}}"
    if r.blocks:
        one = "_1" if k >= ONE_THREAD_MIN_K and min(m, nn) >= ONE_THREAD_MIN_SIDE else ""
    else:  # whole, on BLAS's threads: numpy's pool where we found it (blas.SHARED)
        one = "_np" if blas.SHARED else ""
    if chunk is not None:
        ext = (m, nn)[chunk]
        # A block count fixed in the source (numba.get_num_threads() in @njit code can't be cached to disk)
        nch = min(GEMM_BLOCKS or max(1, numba_config.NUMBA_NUM_THREADS), ext)
        if ksplit and min(nch, k) > 1:
            return lines + _ksplit_lines(r, n, min(nch, k), nch, args, lda, ldb)
        lines += [f"for ch in prange({nch}):  # blocks of {'rows' if chunk == 0 else 'columns'}",
                  f"    lo = ch * {ext} // {nch}",
                  f"    hi = (ch + 1) * {ext} // {nch}"]
        if chunk == 0:  # rows lo:hi of op(A) and of C
            oa = "lo" if ta else f"lo * {lda}"
            call = args.format(oa=oa, ob=0, c=out, oc=f"lo * {nn}", mnk=f"hi - lo, {nn}, {k}")
            return lines + [f"    gemm{one}({call})"]
        ob = f"lo * {ldb}" if tb else "lo"  # columns lo:hi of op(B) and of C, whose row stride stays nn
        call = args.format(oa=0, ob=ob, c=out, oc=f"lo, {nn}", mnk=f"{m}, hi - lo, {k}")
        return lines + [f"    gemm_ldc{one}({call})"]
    if len(n.shape) == 2:
        return lines + [f"gemm{one}({args.format(oa=0, ob=0, c=out, oc=0, mnk=f'{m}, {nn}, {k}')})"]
    # batches are independent gemms: over our threads when big (OpenBLAS pinned to one thread has no others)
    rng = "prange" if r.blocks and _prod(n.shape) * k >= CHUNK_MIN_MACS else "range"
    call = args.format(oa=f"b * {m * k}", ob=f"b * {k * nn}", c=out, oc=f"b * {m * nn}", mnk=f"{m}, {nn}, {k}")
    return lines + [f"for b in {rng}({n.shape[0]}):", f"    gemm{'' if r.blocks else one}({call})"]


def _ksplit_lines(r: Any, n: Node, nk: int, nch: int, args: str, lda: int, ldb: int) -> list[str]:
    """Contraction blocks: block 0 writes the product, block c > 0 its partial product to part[c-1]; then
    row blocks, each adding the partial products into its rows of the product (the epilogue follows)."""
    (_, (_, _, ta), (_, _, tb)), out = matmul_operands(n), r.names[id(n)]
    m, nn = n.shape
    k = contracted(n)
    mn = m * nn
    oa = f"lo * {lda}" if ta else "lo"  # columns lo:hi of op(A), rows lo:hi of op(B)
    ob = "lo" if tb else f"lo * {ldb}"
    first = args.format(oa=oa, ob=ob, c=out, oc=0, mnk=f"{m}, {nn}, hi - lo")
    rest = args.format(oa=oa, ob=ob, c="part", oc=f"(ch - 1) * {mn}", mnk=f"{m}, {nn}, hi - lo")
    # sliced at the block's rows: an index built on the prange variable would keep the loop scalar
    views = [f"    part{c} = part[{f'{(c - 1) * mn} + ' if c > 1 else ''}lo * {nn}:]" for c in range(1, nk)]
    parts = " + ".join(f"part{c}[j]" for c in range(1, nk))
    return [f"part = np.empty({(nk - 1) * mn}, {np_type(n.dtype)})  # partial products of blocks 1..",
            f"for ch in prange({nk}):  # blocks of the contraction",
            f"    lo = ch * {k} // {nk}",
            f"    hi = (ch + 1) * {k} // {nk}",
            "    if ch == 0:",
            f"        gemm({first})",
            "    else:",
            f"        gemm({rest})",
            f"for ch in prange({nch}):  # blocks of rows",
            f"    lo = ch * {m} // {nch}",
            f"    hi = (ch + 1) * {m} // {nch}",
            f"    {out}_rows = {out}[lo * {nn}:]", *views,
            f"    for j in range((hi - lo) * {nn}):",
            f"        {out}_rows[j] = {out}_rows[j] + {parts}"]


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= x
    return n
