"""A direct BLAS gemm call for generated Numba code.

`np.dot(a, b, out)` inside @njit reaches the same BLAS, but every call site drags in numba's generic dot
(layout checks, copies for odd layouts): ~0.3-0.5 s of compile time per call site and layout combination.
`gemm` is an intrinsic that emits one call to numba's own `numba_xxgemm` helper (which calls scipy's
cython_blas sgemm/dgemm, the very function np.dot uses), so a matmul costs no more to compile than a loop
and the machine code caches to disk like the rest (the helper is resolved by symbol name at load time).

    gemm(a, offa, ta, lda, b, offb, tb, ldb, c, offc, m, n, k)

computes, on flat row-major buffers, C[m, n] = op(A)[m, k] @ op(B)[k, n] with C at c[offc:] (row stride n),
A at a[offa:] with row stride lda (op(A) = A if ta == 0 else A.T: A is stored (m, k), or (k, m) when ta),
likewise B. Row-major C = A @ B is column-major C.T = B.T @ A.T, hence the swapped call below.

    gemm_ldc(a, offa, ta, lda, b, offb, tb, ldb, c, offc, ldc, m, n, k)

is the same with C's row stride ldc given: cpu.py's column blocks of a chunked matmul write C[:, c0:c1]."""

from __future__ import annotations

from llvmlite import ir
from numba import config, types
from numba.core import cgutils
from numba.core.extending import intrinsic
from numba.np.linalg import check_blas_return, ensure_blas, get_blas_kind

_char = ir.IntType(8)
_void_p = ir.IntType(8).as_pointer()


def _typing(a, b, c, argtys: tuple):
    if not all(isinstance(x, types.Array) and x.ndim == 1 for x in (a, b, c)):
        return None
    if not (a.dtype == b.dtype == c.dtype) or a.dtype not in (types.float32, types.float64):
        return None
    ensure_blas()
    return types.void(*argtys)


def _codegen(context, builder, tys: tuple, args: list) -> None:
    """One numba_xxgemm call; tys and args in gemm_ldc's order (a, offa, ta, lda, b, offb, tb, ldb, c, offc, ldc,
    m, n, k)."""
    intp = context.get_value_type(types.intp)
    fnty = ir.FunctionType(ir.IntType(32), [_char, _char, _char, intp, intp, intp, _void_p, _void_p, intp,
                                            _void_p, intp, _void_p, _void_p, intp])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
    va, voffa, vta, vlda, vb, voffb, vtb, vldb, vc, voffc, vldc, vm, vn, vk = args

    def cast(v, ty):
        return context.cast(builder, v, ty, types.intp)

    def ptr(arr, aty, off, offty):
        data = context.make_array(aty)(context, builder, arr).data
        return builder.bitcast(builder.gep(data, [cast(off, offty)]), _void_p)

    def flag(v, ty):
        is_t = builder.icmp_signed("!=", cast(v, ty), ir.Constant(intp, 0))
        return builder.select(is_t, ir.Constant(_char, ord("t")), ir.Constant(_char, ord("n")))

    dtype = tys[0].dtype
    llty = context.get_value_type(dtype)
    alpha = cgutils.alloca_once_value(builder, ir.Constant(llty, 1.0))
    beta = cgutils.alloca_once_value(builder, ir.Constant(llty, 0.0))
    kind = ir.Constant(_char, ord(get_blas_kind(dtype)))
    res = builder.call(fn, (kind, flag(vtb, tys[6]), flag(vta, tys[2]),
                            cast(vn, tys[12]), cast(vm, tys[11]), cast(vk, tys[13]),
                            builder.bitcast(alpha, _void_p), ptr(vb, tys[4], voffb, tys[5]), cast(vldb, tys[7]),
                            ptr(va, tys[0], voffa, tys[1]), cast(vlda, tys[3]), builder.bitcast(beta, _void_p),
                            ptr(vc, tys[8], voffc, tys[9]), cast(vldc, tys[10])))
    check_blas_return(context, builder, res)


@intrinsic
def gemm(typingctx, a, offa, ta, lda, b, offb, tb, ldb, c, offc, m, n, k):  # noqa: ARG001
    sig = _typing(a, b, c, (a, offa, ta, lda, b, offb, tb, ldb, c, offc, m, n, k))
    if sig is None:
        return None

    def codegen(context, builder, sig, args):
        # ldc = n: C's rows are contiguous
        tys, vals = sig.args, list(args)
        _codegen(context, builder, tys[:10] + (tys[11],) + tys[10:], vals[:10] + [vals[11]] + vals[10:])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def gemm_ldc(typingctx, a, offa, ta, lda, b, offb, tb, ldb, c, offc, ldc, m, n, k):  # noqa: ARG001
    sig = _typing(a, b, c, (a, offa, ta, lda, b, offb, tb, ldb, c, offc, ldc, m, n, k))
    if sig is None:
        return None

    def codegen(context, builder, sig, args):
        _codegen(context, builder, sig.args, list(args))
        return context.get_dummy_value()

    return sig, codegen


def _gemm_ldc_python(a, offa, ta, lda, b, offb, tb, ldb, c, offc, ldc, m, n, k) -> None:
    """The same contract in numpy, for NUMBA_DISABLE_JIT=1 (the generated module then runs as plain Python)."""
    from numpy.lib.stride_tricks import as_strided

    def view(x, off, rows, cols, ld):
        return as_strided(x[off:], (rows, cols), (ld * x.itemsize, x.itemsize))

    av = view(a, offa, k, m, lda).T if ta else view(a, offa, m, k, lda)
    bv = view(b, offb, n, k, ldb).T if tb else view(b, offb, k, n, ldb)
    view(c, offc, m, n, ldc)[...] = av @ bv


def _gemm_python(a, offa, ta, lda, b, offb, tb, ldb, c, offc, m, n, k) -> None:
    _gemm_ldc_python(a, offa, ta, lda, b, offb, tb, ldb, c, offc, n, m, n, k)


if config.DISABLE_JIT:
    gemm = _gemm_python  # noqa: F811
    gemm_ldc = _gemm_ldc_python  # noqa: F811
