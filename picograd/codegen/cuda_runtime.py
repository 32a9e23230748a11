"""The CUDA runtime under the "cuda" backend: device memory, transfers, module loading and launches.

Two modes, fixed at first use:
  * a real GPU, driven through the CUDA driver API of `cuda.bindings` (a dependency of numba-cuda).
    numba-cuda is only the compiler (Python source -> PTX); loading and launching are done here so a
    launch is one driver call with a prepacked parameter block (numba's own dispatch costs tens of
    microseconds of argument marshalling per launch, which would dominate a small training step);
  * the numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set before numba is imported): device memory is
    a numpy array and kernels run through numba's simulated dispatch. CI tests run here.

Kernels always take flat, C-contiguous buffers (pointers on the GPU, 1-D arrays in the simulator), so
one generated source serves both."""

from __future__ import annotations

import ctypes
import os
import weakref
from typing import Any

import numpy as np

from ..ir.shape import prod

INSTALL_HINT = "install the optional extra: pip install -e '.[cuda]' (it brings numba-cuda[cu13])"


class CudaUnavailable(RuntimeError):
    """device='cuda' was asked for but numba-cuda, the driver or a GPU is missing."""


def simulated() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


# ---- the driver -----------------------------------------------------------------------------------
class _Driver:
    """The few CUDA driver calls the backend needs, with errors turned into exceptions."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import driver as cu  # cuda-bindings >= 12.6
        except ImportError:
            try:
                from cuda import cuda as cu  # older cuda-python layout
            except ImportError as e:
                raise CudaUnavailable(f"device='cuda' needs numba-cuda and its CUDA bindings: {INSTALL_HINT}") from e
        self.cu = cu
        try:  # the bindings load libcuda here: without an NVIDIA driver this raises their own loader error
            res = cu.cuInit(0)
        except Exception as e:
            raise CudaUnavailable(f"device='cuda': the CUDA driver library could not be loaded ({e}); is an NVIDIA "
                                  "driver installed?") from e
        self._check(res, "cuInit (is an NVIDIA driver installed?)")
        n = self._check(cu.cuDeviceGetCount(), "cuDeviceGetCount")
        if n < 1:
            raise CudaUnavailable("device='cuda': the CUDA driver sees no GPU")
        self.device = self._check(cu.cuDeviceGet(0), "cuDeviceGet")
        # The primary context is the one numba, CuPy and PyTorch share, so arrays interoperate.
        self.context = self._check(cu.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")
        self._check(cu.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
        attr = cu.CUdevice_attribute
        self.cc = (self.attribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                   self.attribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR))
        self.sm_count = self.attribute(attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        self.pools = bool(self.attribute(attr.CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED))
        self.pool_keeps = self.pools and self._keep_freed_blocks()
        self.name = self._check(cu.cuDeviceGetName(128, self.device), "cuDeviceGetName")
        self.name = self.name.split(b"\0", 1)[0].decode()
        self.stream = cu.CUstream(0)  # the legacy default stream: every call below is ordered on it
        self.params_by_address = True  # kernel parameters as a void** address (see Launch.run_gpu)
        self._ok = cu.CUresult.CUDA_SUCCESS

    def _keep_freed_blocks(self) -> bool:
        """Let the default pool keep what it frees. Its release threshold is 0 by default: at every synchronize
        (each .item() of a training loop) it hands freed blocks back to the OS, so the next step's outputs are
        fresh OS allocations again. Only an optimization: False where the driver refuses (gpu_check prints it)."""
        cu = self.cu
        try:
            pool = self._check(cu.cuDeviceGetDefaultMemPool(self.device), "cuDeviceGetDefaultMemPool")
            self._check(cu.cuMemPoolSetAttribute(pool, cu.CUmemPool_attribute.CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                                                 cu.cuuint64_t(2**64 - 1)), "cuMemPoolSetAttribute")
            return True
        except Exception:
            return False

    def _check(self, res: Any, what: str) -> Any:
        err, *rest = res if isinstance(res, tuple) else (res,)
        if err != self.cu.CUresult.CUDA_SUCCESS:
            _, msg = self.cu.cuGetErrorString(err)
            raise RuntimeError(f"cuda: {what} failed: {err!r} {msg.decode() if msg else ''}")
        return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)

    def attribute(self, a: Any) -> int:
        return int(self._check(self.cu.cuDeviceGetAttribute(a, self.device), f"cuDeviceGetAttribute({a})"))

    # Stream-ordered allocation from the device's pool: no implicit device-wide sync on free, and a
    # reused block costs about a microsecond.
    def alloc(self, nbytes: int) -> int:
        if self.pools:
            return int(self._check(self.cu.cuMemAllocAsync(nbytes, self.stream), f"cuMemAllocAsync({nbytes})"))
        return int(self._check(self.cu.cuMemAlloc(nbytes), f"cuMemAlloc({nbytes})"))

    def free(self, ptr: int) -> None:
        if self.pools:
            self.cu.cuMemFreeAsync(ptr, self.stream)
        else:
            self.cu.cuMemFree(ptr)

    def htod(self, dst: int, src: np.ndarray) -> None:
        # Asynchronous on the stream: from pageable memory the driver stages `src` before returning (so the
        # caller may drop it at once) and does not wait for queued kernels, as the synchronous copy does.
        self._check(self.cu.cuMemcpyHtoDAsync(dst, src.ctypes.data, src.nbytes, self.stream), "cuMemcpyHtoDAsync")

    def dtoh(self, dst: np.ndarray, src: int) -> None:
        self._check(self.cu.cuMemcpyDtoH(dst.ctypes.data, src, dst.nbytes), "cuMemcpyDtoH")

    def dtod(self, dst: int, src: int, nbytes: int) -> None:
        self._check(self.cu.cuMemcpyDtoDAsync(dst, src, nbytes, self.stream), "cuMemcpyDtoDAsync")

    def memset0(self, dst: int, nbytes: int) -> None:
        self._check(self.cu.cuMemsetD8Async(dst, 0, nbytes, self.stream), "cuMemsetD8Async")

    def synchronize(self) -> None:
        self._check(self.cu.cuCtxSynchronize(), "cuCtxSynchronize")

    # Events time the GPU's own work (CudaProgram.kernel_times).
    def event(self) -> Any:
        return self._check(self.cu.cuEventCreate(0), "cuEventCreate")

    def record(self, event: Any) -> None:
        self._check(self.cu.cuEventRecord(event, self.stream), "cuEventRecord")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._check(self.cu.cuEventSynchronize(end), "cuEventSynchronize")
        return float(self._check(self.cu.cuEventElapsedTime(start, end), "cuEventElapsedTime"))

    def load_function(self, ptx: str, name: str) -> Any:
        image = ptx.encode() + b"\0"
        try:
            module = self._check(self.cu.cuModuleLoadData(image), "cuModuleLoadData")
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n(the PTX came from numba-cuda's NVVM; a PTX version newer than the driver "
                               "supports means NVVM is newer than the driver: install a matching cuda toolkit)") from e
        return module, self._check(self.cu.cuModuleGetFunction(module, name.encode()), f"cuModuleGetFunction({name})")

    def launch(self, fn: Any, grid: tuple[int, int, int], block: tuple[int, int, int], shmem: int, params: int) -> None:
        err = self.cu.cuLaunchKernel(fn, grid[0], grid[1], grid[2], block[0], block[1], block[2], shmem,
                                     self.stream, params, 0)
        if err[0] != self._ok:
            self._check(err, "cuLaunchKernel")


_driver: list[_Driver | None] = []
_why_not: list[str] = []  # why the first attempt failed, repeated by later ones


def driver() -> _Driver:
    """The process's driver handle, created on first use (raises CudaUnavailable without a GPU)."""
    if not _driver:
        try:
            _driver.append(_Driver())
        except Exception as e:
            _driver.append(None)
            _why_not.append(str(e).removeprefix("device='cuda': "))
            raise
    d = _driver[0]
    if d is None:
        why = _why_not[0] if _why_not else "an earlier attempt failed"
        raise CudaUnavailable(f"device='cuda': no usable CUDA GPU ({why}); {INSTALL_HINT}")
    return d


# ---- device arrays --------------------------------------------------------------------------------
class _Allocation:
    """One device allocation; freed (stream-ordered) when the last array viewing it goes away."""

    __slots__ = ("ptr", "nbytes", "__weakref__")

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ptr = driver().alloc(nbytes) if nbytes else 0
        if self.ptr:
            weakref.finalize(self, _free, self.ptr)


def _free(ptr: int) -> None:
    d = _driver[0] if _driver else None
    if d is not None:
        try:
            d.free(ptr)
        except Exception:  # interpreter shutdown: the context may already be gone
            pass


class CudaArray:
    """A C-contiguous array in GPU memory (on the simulator: a numpy array standing in for it).

    Immutable by convention, like the Buffer that holds it. Exposes __cuda_array_interface__ so numba,
    CuPy and PyTorch can read it without a copy; np.asarray() copies it to the host."""

    __slots__ = ("shape", "dtype", "ptr", "owner", "host")

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, ptr: int = 0, owner: Any = None,
                 host: np.ndarray | None = None) -> None:
        self.shape, self.dtype, self.ptr, self.owner, self.host = shape, dtype, ptr, owner, host

    @property
    def size(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def copy_to_host(self) -> np.ndarray:
        if self.host is not None:
            return self.host.copy()
        out = np.empty(self.shape, self.dtype)
        if out.nbytes:
            driver().dtoh(out, self.ptr)
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self.copy_to_host()
        return a if dtype is None else a.astype(dtype)

    def reshape(self, shape: tuple[int, ...]) -> CudaArray:
        """A view with another shape (same size; the data stays where it is)."""
        host = None if self.host is None else self.host.reshape(shape)
        return CudaArray(tuple(shape), self.dtype, self.ptr, self.owner if self.owner is not None else self, host)

    def flat_arg(self) -> Any:
        """What a kernel parameter gets: the pointer, or on the simulator a flat numpy view (bool as
        uint8, the type generated kernels use for it)."""
        if self.host is None:
            return self.ptr
        v = self.host.reshape(-1)
        return v.view(np.uint8) if v.dtype == np.bool_ else v

    @property
    def __cuda_array_interface__(self) -> dict:
        if self.host is not None:
            raise AttributeError("__cuda_array_interface__: not available on the CUDA simulator")
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "version": 3,
                "strides": None, "stream": None}

    def __repr__(self) -> str:
        return f"CudaArray({self.dtype}{list(self.shape)})"


def empty(shape: tuple[int, ...], dtype: np.dtype) -> CudaArray:
    dtype = np.dtype(dtype)
    if simulated():
        # Garbage, as cuMemAlloc gives (NaN for floats, -1 or the max for ints): zeros would hide a kernel that
        # leaves part of its output unwritten.
        host = np.empty(shape, dtype)
        host.reshape(-1).view(np.uint8)[:] = 1 if dtype == np.bool_ else 0xFF
        return CudaArray(shape, dtype, host=host)
    n = prod(shape) * dtype.itemsize
    a = _Allocation(n)
    return CudaArray(shape, dtype, a.ptr, a)


SMALL = 4096  # bytes: arrays up to this size share their own block (Layout) / one upload (to_device_many)


class Layout:
    """Where each of a program's outputs lives: several arrays carved out of one allocation (one driver
    call per program run, not one per output), computed once per program.

    Small outputs (a loss, a counter) get a separate block so a user keeping one of them alive does not
    pin the megabytes of parameters produced with it."""

    def __init__(self, specs: list[tuple[tuple[int, ...], np.dtype]]) -> None:
        self.specs = [(tuple(s), np.dtype(d)) for s, d in specs]
        sizes = [prod(s) * d.itemsize for s, d in self.specs]
        self.blocks: list[int] = []  # bytes per allocation
        self.place: list[tuple[int, int]] = [(0, 0)] * len(specs)  # (block, offset) per output
        for small in (True, False):
            idx = [i for i, n in enumerate(sizes) if (n <= SMALL) == small]
            if not idx:
                continue
            total = 0
            for i in idx:
                self.place[i] = (len(self.blocks), total)
                total += (sizes[i] + 255) // 256 * 256  # 256-byte alignment, as cudaMalloc gives
            self.blocks.append(total)

    def allocate(self) -> list[CudaArray]:
        if simulated():
            return [empty(s, d) for s, d in self.specs]
        blocks = [_Allocation(n) for n in self.blocks]
        out = []
        for (shape, dtype), (b, off) in zip(self.specs, self.place, strict=True):
            blk = blocks[b]
            out.append(CudaArray(shape, dtype, blk.ptr + off, blk))
        return out


def to_device(arr: np.ndarray) -> CudaArray:
    """Host -> device copy (the only way data enters the GPU besides programs' outputs)."""
    if isinstance(arr, CudaArray):
        return arr
    arr = np.require(np.asarray(arr), requirements="C")
    if simulated():
        return CudaArray(arr.shape, arr.dtype, host=arr.copy())
    out = empty(arr.shape, arr.dtype)
    if arr.nbytes:
        driver().htod(out.ptr, arr)
    return out


def to_device_many(arrs: list[np.ndarray]) -> list[CudaArray]:
    """Several host arrays to the device; the small ones (a step's host scalars, its labels) packed into one
    allocation and one copy: each driver call costs microseconds, as much as the copy of a small array."""
    arrs = [np.require(np.asarray(a), requirements="C") for a in arrs]
    small = [i for i, a in enumerate(arrs) if a.nbytes <= SMALL]
    if simulated() or len(small) < 2:
        return [to_device(a) for a in arrs]
    layout = Layout([(arrs[i].shape, arrs[i].dtype) for i in small])  # all small: one block
    staging = np.empty(layout.blocks[0], np.uint8)
    for i, (_, off) in zip(small, layout.place, strict=True):
        staging[off : off + arrs[i].nbytes] = arrs[i].reshape(-1).view(np.uint8)
    views = layout.allocate()
    driver().htod(views[0].owner.ptr, staging)
    out: list[Any] = [None] * len(arrs)
    for i, v in zip(small, views, strict=True):
        out[i] = v
    return [a if a is not None else to_device(arrs[i]) for i, a in enumerate(out)]


def synchronize() -> None:
    if not simulated() and _driver and _driver[0] is not None:
        _driver[0].synchronize()


# ---- kernels ----------------------------------------------------------------------------------------
class Launch:
    """A kernel ready to launch with a fixed configuration over a program's slot table.

    On a GPU its parameter block (void*[n]) points straight into the program's slot table (one uint64
    device pointer per buffer), so after the table is filled a launch is a single driver call."""

    __slots__ = ("name", "fn", "grid", "block", "shmem", "slots", "params", "module", "args")

    def __init__(self, name: str, fn: Any, grid: tuple[int, int, int], block: tuple[int, int, int], shmem: int,
                 slots: list[int], module: Any = None) -> None:
        self.name, self.fn, self.grid, self.block, self.shmem, self.slots = name, fn, grid, block, shmem, slots
        self.module = module
        self.params: Any = None
        self.args: tuple = ()

    def bind(self, table: np.ndarray, d: _Driver | None = None) -> None:
        base = table.ctypes.data
        self.params = np.array([base + 8 * s for s in self.slots], dtype=np.uint64)
        if d is not None:  # the whole argument list of cuLaunchKernel, fixed for the program's life
            self.args = (self.fn, *self.grid, *self.block, self.shmem, d.stream, self.params.ctypes.data, 0)

    def run_gpu(self, d: _Driver) -> None:
        if d.params_by_address:
            try:
                err = d.cu.cuLaunchKernel(*self.args)[0]
                if err != d._ok:
                    d._check((err,), f"cuLaunchKernel({self.name})")
                return
            except TypeError:  # a cuda-bindings that takes no void** address: pass the values instead
                d.params_by_address = False
        vals = tuple(ctypes.c_uint64.from_address(int(a)).value for a in self.params)
        d.launch(self.fn, self.grid, self.block, self.shmem, (vals, (ctypes.c_void_p,) * len(vals)))

    def run_sim(self, args: list[Any]) -> None:
        self.fn[self.grid, self.block](*[args[s] for s in self.slots])

