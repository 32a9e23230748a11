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

is the same with C's row stride ldc given: cpu.py's column blocks of a chunked matmul write C[:, c0:c1].

    gemm_1(...), gemm_ldc_1(...)

are the same through the symbols picograd_sgemm_1 / picograd_dgemm_1, bound when this module is imported (so
cached machine code works in any process) to Intel MKL's sequential gemm where MKL is installed (`pip install
-e '.[mkl]'`), else to scipy's OpenBLAS. Programs whose matmuls run in blocks on our threads, one single-threaded
gemm per block, call them for products with a long contraction, where MKL is faster (cpu_matmul.py has the
numbers); PICOGRAD_BLAS=openblas keeps OpenBLAS for everything."""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from typing import Any

from llvmlite import binding, ir
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


def _codegen_one_thread(context, builder, tys: tuple, args: list) -> None:
    """One call of the Fortran-style sgemm/dgemm bound to picograd_xgemm_1 (see _bind_one_thread); tys and args
    in gemm_ldc's order."""
    dtype = tys[0].dtype
    llty = context.get_value_type(dtype)
    i32 = ir.IntType(32)
    p = llty.as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [_void_p, _void_p, i32.as_pointer(), i32.as_pointer(), i32.as_pointer(),
                                           p, p, i32.as_pointer(), p, i32.as_pointer(), p, p, i32.as_pointer()])
    name = "picograd_sgemm_1" if dtype == types.float32 else "picograd_dgemm_1"
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    va, voffa, vta, vlda, vb, voffb, vtb, vldb, vc, voffc, vldc, vm, vn, vk = args
    intp = context.get_value_type(types.intp)

    def int32(v, ty):
        return cgutils.alloca_once_value(builder, builder.trunc(context.cast(builder, v, ty, types.intp), i32))

    def ptr(arr, aty, off, offty):
        data = context.make_array(aty)(context, builder, arr).data
        return builder.gep(data, [context.cast(builder, off, offty, types.intp)])

    def flag(v, ty):
        is_t = builder.icmp_signed("!=", context.cast(builder, v, ty, types.intp), ir.Constant(intp, 0))
        return cgutils.alloca_once_value(builder, builder.select(is_t, ir.Constant(_char, ord("t")),
                                                                 ir.Constant(_char, ord("n"))))

    alpha = cgutils.alloca_once_value(builder, ir.Constant(llty, 1.0))
    beta = cgutils.alloca_once_value(builder, ir.Constant(llty, 0.0))
    # row-major C = op(A) op(B) is column-major C.T = op(B).T op(A).T: B first, as in _codegen
    builder.call(fn, (flag(vtb, tys[6]), flag(vta, tys[2]), int32(vn, tys[12]), int32(vm, tys[11]),
                      int32(vk, tys[13]), alpha, ptr(vb, tys[4], voffb, tys[5]), int32(vldb, tys[7]),
                      ptr(va, tys[0], voffa, tys[1]), int32(vlda, tys[3]), beta, ptr(vc, tys[8], voffc, tys[9]),
                      int32(vldc, tys[10])))


def _mkl_sequential() -> tuple[str, int, int] | None:
    """(path, sgemm, dgemm) of Intel MKL's runtime library switched to its sequential layer, or None where it
    isn't installed (the `mkl` wheel puts libmkl_rt in <prefix>/lib; PICOGRAD_MKL_LIB names another)."""
    if not sys.platform.startswith("linux"):
        return None
    asked = os.environ.get("PICOGRAD_BLAS", "").lower() == "mkl"
    if not asked and not _intel_cpu():
        return None  # measured on Intel only; MKL's speed elsewhere is its vendor's business (PICOGRAD_BLAS=mkl)
    if not asked and _mapped("libmkl_rt"):
        return None  # someone else's MKL (numpy built on it): switching it to sequential would slow their matmuls
    paths = [os.environ["PICOGRAD_MKL_LIB"]] if os.environ.get("PICOGRAD_MKL_LIB") else []
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        paths += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")), reverse=True)
    for path in paths:
        try:
            lib = ctypes.CDLL(path)  # RTLD_LOCAL: its sgemm_ etc. must not stand in for other libraries' BLAS
            lib.MKL_Set_Threading_Layer.argtypes, lib.MKL_Set_Threading_Layer.restype = [ctypes.c_int], ctypes.c_int
            # MKL_THREADING_SEQUENTIAL, before MKL's first call: our threads run the blocks, MKL none of its own
            if lib.MKL_Set_Threading_Layer(1) != 1:
                continue
            return path, ctypes.cast(lib.sgemm_, ctypes.c_void_p).value, ctypes.cast(lib.dgemm_, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


def _mapped(name: str) -> bool:
    """Whether a library whose file name contains `name` is loaded in this process already."""
    try:
        with open("/proc/self/maps") as f:
            return any(name in line for line in f)
    except OSError:
        return False


def _intel_cpu() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "GenuineIntel" in f.read(4096)
    except OSError:
        return False


def _bind_one_thread() -> str:
    """Bind picograd_sgemm_1 / picograd_dgemm_1; returns which library: "mkl" or "openblas" (scipy's)."""
    from numba.core.extending import get_cython_function_address

    found = None if os.environ.get("PICOGRAD_BLAS", "").lower() == "openblas" else _mkl_sequential()
    if found is not None:
        _, s, d = found
        which = "mkl"
    else:
        s = get_cython_function_address("scipy.linalg.cython_blas", "sgemm")
        d = get_cython_function_address("scipy.linalg.cython_blas", "dgemm")
        which = "openblas"
    binding.add_symbol("picograd_sgemm_1", s)
    binding.add_symbol("picograd_dgemm_1", d)
    return which


ONE_THREAD = _bind_one_thread()  # the library behind gemm_1 in this process


def _intrinsics(emit: Any, suffix: str) -> tuple[Any, Any]:
    """(gemm, gemm_ldc) intrinsics whose calls `emit` lowers (_codegen or _codegen_one_thread)."""

    def gemm(typingctx, a, offa, ta, lda, b, offb, tb, ldb, c, offc, m, n, k):  # noqa: ARG001
        sig = _typing(a, b, c, (a, offa, ta, lda, b, offb, tb, ldb, c, offc, m, n, k))
        if sig is None:
            return None

        def codegen(context, builder, sig, args):
            # ldc = n: C's rows are contiguous
            tys, vals = sig.args, list(args)
            emit(context, builder, tys[:10] + (tys[11],) + tys[10:], vals[:10] + [vals[11]] + vals[10:])
            return context.get_dummy_value()

        return sig, codegen

    def gemm_ldc(typingctx, a, offa, ta, lda, b, offb, tb, ldb, c, offc, ldc, m, n, k):  # noqa: ARG001
        sig = _typing(a, b, c, (a, offa, ta, lda, b, offb, tb, ldb, c, offc, ldc, m, n, k))
        if sig is None:
            return None

        def codegen(context, builder, sig, args):
            emit(context, builder, sig.args, list(args))
            return context.get_dummy_value()

        return sig, codegen

    for f in (gemm, gemm_ldc):
        f.__name__ = f.__qualname__ = f.__name__ + suffix
    return intrinsic(gemm), intrinsic(gemm_ldc)


gemm, gemm_ldc = _intrinsics(_codegen, "")
gemm_1, gemm_ldc_1 = _intrinsics(_codegen_one_thread, "_1")


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
    gemm = gemm_1 = _gemm_python  # noqa: F811
    gemm_ldc = gemm_ldc_1 = _gemm_ldc_python  # noqa: F811
