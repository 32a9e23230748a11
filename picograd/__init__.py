"""picograd: lazy tensors compiled, forward and backward together, to Numba kernels."""

from . import cuda, datasets, nn, optim  # cuda: registers device="cuda" (cheap: numba loads on first use)
from .codegen.cache import cache_stats  # compile cache: hits, misses, compile seconds
from .creation import (
    arange,
    eye,
    full,
    full_like,
    ones,
    ones_like,
    rand,
    rand_like,
    randn,
    randn_like,
    uniform,
    uniform_like,
    zeros,
    zeros_like,
)
from .debug import dump  # also registers the PICOGRAD_DEBUG / picograd-dump realize hook
from .jit import jit  # trace a training step once, then replay its compiled program
from .tensor import Tensor, eager, grad, is_eager, manual_seed, realize, where

__version__ = "0.1.0"
__all__ = [
    "Tensor", "arange", "eager", "eye", "full", "full_like", "grad", "is_eager", "manual_seed", "ones",
    "ones_like", "rand", "rand_like", "randn", "randn_like", "realize", "uniform", "uniform_like", "where",
    "zeros", "zeros_like", "datasets", "nn", "optim", "dump", "cuda", "cache_stats", "jit",
]
