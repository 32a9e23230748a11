"""A nanosecond clock for generated code: `now_ns()` reads CLOCK_MONOTONIC (clock_gettime, resolved by name
when the machine code loads, like blas.py's gemm helper), so the entry function can time each of its kernels
in place (cpu.py's `times` argument; cache.Program.run_profiled). Timing kernels one by one from Python instead
compiled each a second time and misjudged the blocked ones, whose cost depends on what ran before them."""

from __future__ import annotations

import sys
import time

from llvmlite import ir
from numba import config, types
from numba.core import cgutils
from numba.core.extending import intrinsic

_CLOCK_MONOTONIC = 6 if sys.platform == "darwin" else 1
AVAILABLE = sys.platform != "win32"  # no clock_gettime there: programs are then rendered without timing


@intrinsic
def now_ns(typingctx):  # noqa: ARG001
    def codegen(context, builder, sig, args):  # noqa: ARG001
        i64 = ir.IntType(64)
        ts = cgutils.alloca_once(builder, ir.LiteralStructType([i64, i64]))  # struct timespec
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), [ir.IntType(32), ts.type]), "clock_gettime")
        builder.call(fn, [ir.Constant(ir.IntType(32), _CLOCK_MONOTONIC), ts])
        sec = builder.load(cgutils.gep_inbounds(builder, ts, 0, 0))
        nsec = builder.load(cgutils.gep_inbounds(builder, ts, 0, 1))
        return builder.add(builder.mul(sec, ir.Constant(i64, 1_000_000_000)), nsec)

    return types.int64(), codegen


if config.DISABLE_JIT:
    now_ns = time.monotonic_ns  # noqa: F811
