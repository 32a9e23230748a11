"""The "cuda" device: `Tensor(..., device="cuda")`, `.to("cuda")`, `picograd.cuda.is_available()`.

Importing this module is cheap (numba is not imported): it registers the host->device transfer in
`picograd.tensor.to_device` and the "cuda" backend in `picograd.realize`, both of which load numba-cuda
and the driver only when first used. Realized cuda tensors hold a `CudaArray` (device memory, or a numpy
array on the CUDA simulator); parameters, optimizer state and gradients stay on the device across
steps, and only `.numpy()` / `.item()` copy back.

Programs are compiled once per graph structure (`ir.node.structural_key`) per process, and their PTX
is cached on disk under $PICOGRAD_CACHE_DIR/cuda (default ~/.cache/picograd/cuda)."""

from __future__ import annotations

import functools
import importlib.util
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .codegen import cuda_runtime as rt
from .codegen.cuda_runtime import CudaArray, CudaUnavailable
from .ir.node import Node
from .realize import _listening, register_backend, report
from .tensor import to_device

__all__ = ["CudaArray", "CudaUnavailable", "is_available", "synchronize", "device_name", "stats", "clear_cache"]

_programs: dict[Any, Any] = {}
_stats = {"compiles": 0, "hits": 0, "runs": 0}


@functools.cache
def _installed(module: str) -> bool:
    # Cached: every upload checks, and a find_spec walks sys.path (~40 us, a fifth of a GPU training step's host time)
    return importlib.util.find_spec(module) is not None


def _numba_cuda_present() -> bool:
    return _installed("numba_cuda")


def _require() -> None:
    """Raise CudaUnavailable with the reason device='cuda' cannot work here."""
    if rt.simulated():
        if not _installed("numba"):
            raise CudaUnavailable(f"device='cuda' on the CUDA simulator needs numba; {rt.INSTALL_HINT}")
        return
    if not _numba_cuda_present():
        raise CudaUnavailable(f"device='cuda' needs the numba-cuda package, which is not installed; {rt.INSTALL_HINT}")
    rt.driver()


def is_available() -> bool:
    """True when device='cuda' works here: numba-cuda and a GPU with its driver (or the simulator)."""
    try:
        _require()
        return True
    except Exception:
        return False


def device_name() -> str:
    _require()
    return "CUDA simulator" if rt.simulated() else rt.driver().name


def synchronize() -> None:
    """Wait for every queued kernel (timing; .numpy()/.item() synchronize by themselves)."""
    rt.synchronize()


def stats() -> dict[str, int]:
    """Programs compiled / found in the in-memory cache / runs, since the process started."""
    return dict(_stats)


def clear_cache() -> None:
    """Forget compiled programs (the on-disk PTX cache stays)."""
    _programs.clear()


def _to_device(arr: np.ndarray) -> CudaArray:
    _require()
    return rt.to_device(arr)


def _check_input(n: Node) -> None:
    if not isinstance(n.buffer.data, CudaArray) and n.buffer.device != "cuda":
        raise ValueError(f"cuda: a {n.buffer.device} tensor {n.dtype}{list(n.shape)} is an input of a cuda program; "
                         "move it with .to('cuda') first")


def _run(prog: Any, arrays: list[Any]) -> list[CudaArray]:
    _stats["runs"] += 1
    # A host array here is a jit step's host scalar, or a cuda tensor's result computed on the host in eager
    # mode: the program copies them over (the small ones in one go).
    if _listening()[1]:  # PICOGRAD_DEBUG=2 / picograd-dump: per-kernel GPU times, as the CPU programs give
        outs, kernel_s = prog.run_profiled(arrays)
        if kernel_s is not None:
            report(kernel_s=kernel_s)
        return outs
    return prog.run(arrays)


_EXPAND = object()  # this structure must be keyed after autodiff (a realized node hides part of the graph)


def run_nodes(todo: list[Node]) -> list[CudaArray]:
    """The "cuda" backend: compute the nodes (one program) and return device arrays."""
    run, inputs = prepare_nodes(todo)
    return run([n.buffer.data for n in inputs])


def prepare_nodes(todo: list[Node]) -> tuple[Callable[[list[Any]], list[CudaArray]], list[Node]]:
    """(run, inputs): the program computing todo, as a function of its input nodes' data (for picograd.jit).

    Like the "cpu" backend, the cache key is taken on the graph as built, grad placeholders included, so
    a cached training step skips autodiff; the program records which of the key's inputs it reads."""
    from .codegen.key import graph_key
    from .ir.autodiff import expand_grads

    _require()
    key, inputs, has_grad, opaque = graph_key(todo)
    if has_grad and (opaque or _programs.get(key) is _EXPAND):
        todo = expand_grads(todo)
        key, inputs, has_grad, _ = graph_key(todo)
    entry = _programs.get(key)
    hit, t0 = entry is not None, time.perf_counter()
    if entry is None:
        entry, inputs = _build(todo, key, inputs, has_grad)
        _stats["compiles"] += 1
    else:
        _stats["hits"] += 1
    run, slots = entry
    # what PICOGRAD_DEBUG and picograd-dump show: the program's kernels and source, hit or compile time
    report(program=run.args[0], hit=hit, compile_s=0.0 if hit else time.perf_counter() - t0)
    used = [inputs[i] for i in slots]
    for n in used:
        _check_input(n)
    return run, used


def _build(todo: list[Node], key: Any, inputs: list[Node], has_grad: bool
           ) -> tuple[tuple[Any, list[int]], list[Node]]:
    from .codegen.cuda import CudaProgram
    from .codegen.key import graph_key
    from .ir.autodiff import expand_grads
    from .ir.node import toposort

    roots = expand_grads(todo) if has_grad else todo
    pos = {id(n): i for i, n in enumerate(inputs)}
    used = [n for n in toposort(roots, stop_at_realized=True) if n.buffer is not None]
    if any(id(n) not in pos for n in used):  # autodiff read a realized node's history: key after expansion
        _programs[key] = _EXPAND
        key, inputs, _, _ = graph_key(roots)
        pos = {id(n): i for i, n in enumerate(inputs)}
    # One runner per program, so a replay can tell (by identity) that it still runs the program it traced.
    # While PICOGRAD_DEBUG or picograd-dump listen, the program keeps its graph so they can tell which IR node runs
    # in which kernel (without it they showed "0 kernels" and an unannotated graph).
    prog = CudaProgram(roots, used, keep_graph=_listening()[0])
    entry = (functools.partial(_run, prog), [pos[id(n)] for n in used])
    _programs[key] = entry
    return entry, inputs


run_nodes.expands_grads = True  # type: ignore[attr-defined]
run_nodes.prepare = prepare_nodes  # type: ignore[attr-defined]
to_device["cuda"] = _to_device
register_backend("cuda", run_nodes)
