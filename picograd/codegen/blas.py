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
numbers); PICOGRAD_BLAS=openblas keeps OpenBLAS for everything.

    gemm_np(...), gemm_ldc_np(...)

are the same through picograd_sgemm_np / picograd_dgemm_np: numpy's own OpenBLAS (ILP64, from numpy's wheel),
so that programs whose matmuls are left whole to BLAS threads share numpy's thread pool instead of starting a
second one (see SHARED). Where numpy runs on another BLAS, those programs call gemm as before."""

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


def _fortran(names: tuple[str, str], int_bits: int) -> Any:
    """Codegen of one call of a Fortran-style sgemm/dgemm bound to the symbols `names` (float32, float64), with
    integers of int_bits (32: LP64, 64: ILP64); tys and args in gemm_ldc's order."""

    def emit(context, builder, tys: tuple, args: list) -> None:
        dtype = tys[0].dtype
        llty = context.get_value_type(dtype)
        iw = ir.IntType(int_bits)
        p = llty.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [_void_p, _void_p, iw.as_pointer(), iw.as_pointer(), iw.as_pointer(),
                                               p, p, iw.as_pointer(), p, iw.as_pointer(), p, p, iw.as_pointer()])
        fn = cgutils.get_or_insert_function(builder.module, fnty, names[dtype != types.float32])
        va, voffa, vta, vlda, vb, voffb, vtb, vldb, vc, voffc, vldc, vm, vn, vk = args
        intp = context.get_value_type(types.intp)

        def integer(v, ty):
            x = context.cast(builder, v, ty, types.intp)
            return cgutils.alloca_once_value(builder, builder.trunc(x, iw) if int_bits < intp.width else x)

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
        builder.call(fn, (flag(vtb, tys[6]), flag(vta, tys[2]), integer(vn, tys[12]), integer(vm, tys[11]),
                          integer(vk, tys[13]), alpha, ptr(vb, tys[4], voffb, tys[5]), integer(vldb, tys[7]),
                          ptr(va, tys[0], voffa, tys[1]), integer(vlda, tys[3]), beta, ptr(vc, tys[8], voffc, tys[9]),
                          integer(vldc, tys[10])))

    return emit


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


def _numpy_openblas() -> tuple[int, int] | None:
    """(sgemm, dgemm) of the ILP64 OpenBLAS bundled with numpy's wheel (numpy.libs/), when numpy has loaded it;
    None for a numpy built on another BLAS (MKL, Accelerate, a system library) or PICOGRAD_NUMPY_BLAS=0."""
    if os.environ.get("PICOGRAD_NUMPY_BLAS", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    import numpy

    libs = os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "lib*openblas64*.so*"))):
        if not _mapped(os.path.basename(path)):
            continue  # not the library numpy itself runs on
        try:
            lib = ctypes.CDLL(path)  # loaded already: the same handle, and the same thread pool as np.dot
        except OSError:
            continue
        for prefix, suffix in (("scipy_", "_64_"), ("", "_64_"), ("", "64_")):
            s, d = (getattr(lib, f"{prefix}{x}gemm{suffix}", None) for x in "sd")
            if s is not None and d is not None:
                return ctypes.cast(s, ctypes.c_void_p).value, ctypes.cast(d, ctypes.c_void_p).value
    return None


def _bind_shared() -> bool:
    """Bind picograd_sgemm_np / picograd_dgemm_np to numpy's own OpenBLAS; False where it isn't found."""
    found = _numpy_openblas()
    if found is None:
        return False
    binding.add_symbol("picograd_sgemm_np", found[0])
    binding.add_symbol("picograd_dgemm_np", found[1])
    return True


# Whole matmuls (programs not in blocks) call gemm_np: numpy's OpenBLAS and its thread pool rather than scipy's.
# Two OpenBLAS pools in one process fight: each one's threads spin for a while after a call. A training loop of
# the 784-128-10 MLP that also did one numpy matmul per step took 4.45 ms/step instead of 0.73, the numpy
# matmul 3.5 ms instead of ~0.1; sharing numpy's pool ends that, and numpy's build (0.3.31 here, scipy's 0.3.30)
# is as fast or faster on these products (weight gradients ~5-15%).
SHARED = _bind_shared()


def _intrinsics(emit: Any, suffix: str) -> tuple[Any, Any]:
    """(gemm, gemm_ldc) intrinsics whose calls `emit` lowers (_codegen or a _fortran call)."""

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
gemm_1, gemm_ldc_1 = _intrinsics(_fortran(("picograd_sgemm_1", "picograd_dgemm_1"), 32), "_1")
gemm_np, gemm_ldc_np = _intrinsics(_fortran(("picograd_sgemm_np", "picograd_dgemm_np"), 64), "_np")


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
    gemm = gemm_1 = gemm_np = _gemm_python  # noqa: F811
    gemm_ldc = gemm_ldc_1 = gemm_ldc_np = _gemm_ldc_python  # noqa: F811
