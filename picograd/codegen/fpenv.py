"""Denormal floats flushed to zero while generated code runs (x86: MXCSR's FTZ and DAZ bits).

Why: Adam's moment estimates of units that stopped receiving gradient (dead ReLUs, dropout) decay by 0.9 per
step into the subnormal range after ~800 steps, and every vector instruction touching a subnormal then takes a
microcode assist. Measured on the seed's MNIST model: ~100K subnormal state values after 2,000 steps, and the
step 30% slower from then on. Deep-learning runtimes (XLA, oneDNN) flush them for the same reason; the values
lost are below 1.2e-38.

MXCSR is per thread, so the entry function and every prange block body set the bits on entry and restore the
caller's value on exit: numpy and other code on the same threads keep IEEE subnormals.

    old = fp_enter()      # returns the previous MXCSR
    ...
    fp_exit(old)

cpu.py emits these only on x86-64 and when PICOGRAD_FTZ is not "0" (FLUSH); the choice is part of the
generated source, hence of the cache key."""

from __future__ import annotations

import os
import platform

from llvmlite import ir
from numba import config, types
from numba.core import cgutils
from numba.core.extending import intrinsic

FLUSH = os.environ.get("PICOGRAD_FTZ", "1") != "0" and platform.machine().lower() in ("x86_64", "amd64")
_FTZ_DAZ = 0x8040  # flush-to-zero (bit 15) | denormals-are-zero (bit 6)
_i32 = ir.IntType(32)


def _mxcsr(builder: ir.IRBuilder, op: str, slot: ir.Value) -> None:
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()]),
                                        f"llvm.x86.sse.{op}")
    builder.call(fn, [builder.bitcast(slot, ir.IntType(8).as_pointer())])


@intrinsic
def fp_enter(typingctx):  # noqa: ARG001
    def codegen(context, builder, sig, args):  # noqa: ARG001
        slot = cgutils.alloca_once(builder, _i32)
        _mxcsr(builder, "stmxcsr", slot)
        old = builder.load(slot)
        builder.store(builder.or_(old, ir.Constant(_i32, _FTZ_DAZ)), slot)
        _mxcsr(builder, "ldmxcsr", slot)
        return old

    return types.uint32(), codegen


@intrinsic
def fp_exit(typingctx, old):  # noqa: ARG001
    def codegen(context, builder, sig, args):  # noqa: ARG001
        slot = cgutils.alloca_once(builder, _i32)
        builder.store(args[0], slot)
        _mxcsr(builder, "ldmxcsr", slot)
        return context.get_dummy_value()

    return types.void(types.uint32), codegen


def _enter_python() -> int:
    return 0  # NUMBA_DISABLE_JIT=1: plain Python leaves the floating-point environment alone


def _exit_python(old: int) -> None:  # noqa: ARG001
    return None


if config.DISABLE_JIT:
    fp_enter = _enter_python  # noqa: F811
    fp_exit = _exit_python  # noqa: F811
