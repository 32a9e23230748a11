"""The primitive op set. Every Tensor op lowers to these; eager, autodiff, printer and codegen each
handle exactly this set, so adding a primitive means touching each of them once."""

from __future__ import annotations

import numpy as np

# Leaves: a realized buffer, a scalar constant, the index along an axis, and counter-based random bits.
BUFFER = "buffer"  # arg: the Buffer holding the data
CONST = "const"  # arg: a Python scalar; shape () - broadcast with EXPAND
IOTA = "iota"  # arg: axis; value = index along that axis (one-hot, masks)
RAND = "rand"  # srcs: (seed: uint32 scalar,); uniform [0, 1) from a hash of (seed, flat index)

UNARY = ("neg", "exp", "log", "sqrt", "sin", "cos", "recip", "tanh", "cast", "detach")
BINARY = ("add", "mul", "div", "max", "pow", "cmplt", "cmple", "cmpeq", "cmpne")  # div: floats only
COMPARE = ("cmplt", "cmple", "cmpeq", "cmpne")
TERNARY = ("where",)  # srcs: (cond: bool, a, b)
REDUCE = ("reduce_sum", "reduce_max")  # arg: sorted axes; keeps reduced axes as size 1
MOVEMENT = ("reshape", "permute", "expand", "slice", "pad")


def wraps_narrow_int(op: str, dtype: np.dtype) -> bool:
    """Whether generated code must wrap op's result to its dtype: numba computes int8..uint32 in 64 bits while
    numpy wraps them at their width, and a comparison fused after the op would see the unwrapped value."""
    return op in ("add", "mul", "neg") and dtype.kind in "iu" and dtype.itemsize < 8
MATMUL = "matmul"  # (M,K)@(K,N) or batched (B,M,K)@(B,K,N)
# d root / d wrt, not yet expanded: srcs (root, wrt) or (root, wrt, seed). realize() expands it into the VJP
# graph (ir.autodiff.expand_grads) only when it must compile, so a cached training step never builds its
# backward graph in Python.
GRAD = "grad"

LEAVES = (BUFFER, CONST, IOTA, RAND)
ELEMENTWISE = UNARY + BINARY + TERNARY
ALL = LEAVES + ELEMENTWISE + REDUCE + MOVEMENT + (MATMUL, GRAD)

# Exact spec of RAND, shared by the numpy interpreter and every code generator so lazy == eager
# even with dropout: a 32-bit "lowbias32" hash of (flat index + seed * golden ratio).
RAND_GOLDEN = 0x9E3779B9
RAND_MUL1 = 0x7FEB352D
RAND_MUL2 = 0x846CA68B
MASK32 = 0xFFFFFFFF
