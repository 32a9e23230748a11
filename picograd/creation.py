"""Tensor constructors: zeros, ones, full, eye, arange, the random ones (rand, randn, uniform: host-side, seeded
by picograd.manual_seed) and their *_like forms; each also a static method of Tensor (Tensor.zeros(...))."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .tensor import FLOAT32, Tensor, _rng, check_dtype


def _shape(shape: Sequence[Any], op: str = "Tensor") -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if any(not isinstance(s, (int, np.integer)) or isinstance(s, (bool, np.bool_)) or s < 0 for s in shape):
        raise ValueError(f"{op}: expected a shape of non-negative ints, got {shape}")
    return tuple(int(s) for s in shape)


def _ctor_dtype(dtype: Any, op: str, floats_only: bool = False) -> np.dtype:
    """The constructor's dtype (float32 by default), checked before numpy sees it."""
    dt = FLOAT32 if dtype is None else check_dtype(dtype, op)
    if floats_only and dt.kind != "f":
        raise TypeError(f"{op}: random floats need a float dtype, got {dt} (as torch); cast the result instead")
    return dt


def _new(arr: np.ndarray, dtype: np.dtype, requires_grad: bool | None, device: str) -> Tensor:
    # the constructors make their arrays: nothing else holds them, no copy needed
    return Tensor(arr, dtype=dtype, requires_grad=requires_grad, device=device, copy=False)


def zeros(*shape: Any, dtype: Any = None, requires_grad: bool | None = None, device: str = "cpu") -> Tensor:
    dt = _ctor_dtype(dtype, "zeros")
    return _new(np.zeros(_shape(shape, "zeros"), dt), dt, requires_grad, device)


def ones(*shape: Any, dtype: Any = None, requires_grad: bool | None = None, device: str = "cpu") -> Tensor:
    dt = _ctor_dtype(dtype, "ones")
    return _new(np.ones(_shape(shape, "ones"), dt), dt, requires_grad, device)


def full(shape: Any, value: Any, dtype: Any = None, requires_grad: bool | None = None, device: str = "cpu") -> Tensor:
    dt = _ctor_dtype(dtype, "full")
    shape = _shape((shape,) if isinstance(shape, (tuple, list)) else (shape,), "full")
    return _new(np.full(shape, value, dt), dt, requires_grad, device)


def eye(n: int, m: int | None = None, dtype: Any = None, requires_grad: bool | None = None,
        device: str = "cpu") -> Tensor:
    dt = _ctor_dtype(dtype, "eye")
    return _new(np.eye(n, m, dtype=dt), dt, requires_grad, device)


def arange(start: Any, stop: Any = None, step: Any = 1, dtype: Any = None, requires_grad: bool | None = None,
           device: str = "cpu") -> Tensor:
    arr = np.arange(start, stop, step) if stop is not None else np.arange(start)
    if dtype is None:
        dtype = FLOAT32 if arr.dtype.kind == "f" else np.dtype(np.int64)
    else:
        dtype = check_dtype(dtype, "arange")
    return Tensor(arr, dtype=dtype, requires_grad=requires_grad, device=device, copy=False)


def rand(*shape: Any, dtype: Any = None, requires_grad: bool | None = None, device: str = "cpu") -> Tensor:
    dt = _ctor_dtype(dtype, "rand", floats_only=True)
    return _new(_rng[0].random(_shape(shape, "rand"), dtype=np.float64), dt, requires_grad, device)


def randn(*shape: Any, dtype: Any = None, requires_grad: bool | None = None, device: str = "cpu") -> Tensor:
    dt = _ctor_dtype(dtype, "randn", floats_only=True)
    return _new(_rng[0].standard_normal(_shape(shape, "randn")), dt, requires_grad, device)


def uniform(*shape: Any, low: float = 0.0, high: float = 1.0, dtype: Any = None, requires_grad: bool | None = None,
            device: str = "cpu") -> Tensor:
    dt = _ctor_dtype(dtype, "uniform", floats_only=True)
    return _new(_rng[0].uniform(low, high, _shape(shape, "uniform")), dt, requires_grad, device)


def _like(fn: Callable) -> Callable:
    def like(t: Tensor, *args: Any, dtype: Any = None, requires_grad: bool | None = None, **kw: Any) -> Tensor:
        return fn(t.shape, *args, dtype=dtype or t.dtype, requires_grad=requires_grad, device=t.device, **kw)

    like.__name__ = fn.__name__ + "_like"
    like.__doc__ = f"{fn.__name__} with the shape, dtype and device of a tensor."
    return like


zeros_like, ones_like, full_like = _like(zeros), _like(ones), _like(full)
rand_like, randn_like, uniform_like = _like(rand), _like(randn), _like(uniform)
CONSTRUCTORS = (zeros, ones, full, eye, arange, rand, randn, uniform,
                zeros_like, ones_like, full_like, rand_like, randn_like, uniform_like)
for _fn in CONSTRUCTORS:
    setattr(Tensor, _fn.__name__, staticmethod(_fn))
