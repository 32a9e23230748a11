"""realize(): turn lazy graphs into buffers.

One call gathers the requested nodes plus every pending update (optimizer assigns, gradients of
parameters) and hands them to a backend as ONE program, so a training step is one compiled call.

Backends: "cpu" (default: the Numba code generator in picograd.codegen, one compiled program per graph
structure, cached in memory and on disk), "numpy" (the reference interpreter), and whatever registers
itself, e.g. "cuda" (picograd.cuda). Nodes on a device other than "cpu" go to the backend named after the
device; the rest to $PICOGRAD_BACKEND (default "cpu").

A registered backend is fn(roots: list[Node]) -> list of arrays, one per root; it never sees grad
placeholders (autodiff runs here first). It may call `report(program=..., hit=..., compile_s=...)` while it
runs to fill in the event that `hooks` receive. The "cpu" backend takes a faster path: it keys its cache on
the graph as built, so a cached training step skips autodiff altogether.

A backend with `fn.prepare(roots) -> (run, input_nodes)` can also be replayed by picograd.jit: `run(arrays)`
computes the roots from the input nodes' data, without the graph."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import eager
from .ir.autodiff import expand_grads
from .ir.node import Buffer, Node

Backend = Callable[[list[Node]], list[np.ndarray]]
_backends: dict[str, Backend] = {"numpy": eager.evaluate}
# Called after every realize with {"roots", "program", "hit", "compile_s", "run_s", "backend", and "kernel_s"
# when profiled}; picograd.debug registers its PICOGRAD_DEBUG / picograd-dump handler here (contract in debug.py).
hooks: list[Callable[[dict], None]] = []
_report: dict[str, Any] = {}


def register_backend(name: str, fn: Backend) -> None:
    _backends[name] = fn


def backend_name() -> str:
    return os.environ.get("PICOGRAD_BACKEND", "cpu")


def report(**info: Any) -> None:
    """For backends: details of the current realize (program, hit, compile_s) for the hooks' event."""
    _report.update(info)


def _cpu_backend(roots: list[Node]) -> list[np.ndarray]:
    from .codegen.cache import run_graph

    return run_graph(roots)


_backends["cpu"] = _cpu_backend


def _listening() -> tuple[bool, bool]:
    """(someone wants events, the debug tool wants per-kernel times)."""
    if not hooks:
        return False, False
    dbg = _debug_module()
    if dbg is None:
        return True, False
    if any(h is not dbg.on_realize for h in hooks) or dbg.enabled():
        return True, dbg.wants_profile()
    return False, False


def _debug_module() -> Any:
    import sys

    return sys.modules.get("picograd.debug")


def realize_nodes(nodes: list[Node], capture: dict | None = None,
                  over: list[tuple[Node, Node]] | None = None) -> None:
    """Compute every node without a buffer and attach the result to it.

    capture (for picograd.jit): filled with "todo" (the nodes computed, in output order), "run" (a function
    from the input arrays to the outputs, or None where the backend cannot be replayed) and "inputs" (the
    nodes whose buffers' data `run` takes, in order).
    over: (node, realized node it replaces) pairs the CPU backend may compute in place (cache.Program)."""
    todo = list({id(n): n for n in nodes if n.buffer is None}.values())
    if capture is not None:
        capture.update(todo=todo, run=None, inputs=[])
    if not todo:
        return
    # One program per device: a realize may gather nodes of several (pg.realize(cpu_t, cuda_t), or a cuda
    # tensor's .numpy() while a CPU model's update is pending). Sending them all to the device's backend made it
    # refuse the CPU inputs, or compute a graph that reads none on the GPU and leave a CudaArray in a CPU tensor.
    # Nodes without a device (constants alone) are computed on the host, as they are in a realize of their own.
    groups: dict[str | None, list[Node]] = {}
    for n in todo:
        groups.setdefault(n.device if n.device not in (None, "cpu") else None, []).append(n)
    if len(groups) > 1:  # (picograd.jit cannot replay this: capture's run stays None and the step runs plainly)
        for group in groups.values():
            realize_nodes(group, over=over)
        return
    (device,) = groups
    name = device if device is not None else backend_name()
    if name not in _backends:
        raise ValueError(f"realize: unknown backend {name!r} (known: {sorted(_backends)})")
    listen, profile = _listening()
    event: dict[str, Any] | None = None
    if name == "cpu" and _backends["cpu"] is _cpu_backend:
        from .codegen.cache import prepare_nodes

        updates = None
        if over:
            at = {id(n): i for i, n in enumerate(todo)}
            updates = {at[id(n)]: old for n, old in over if id(n) in at}
        prog, hit, inputs, expanded = prepare_nodes(todo, updates)
        arrays = [n.buffer.data for n in inputs]
        if capture is not None and prog is not None:
            capture.update(run=prog.run, inputs=inputs)
        t0 = time.perf_counter()
        if prog is None:  # too big to compile: interpret it
            expanded = expand_grads(todo)
            outs, kernel_s = eager.evaluate(expanded), None
        elif profile:
            outs, kernel_s = prog.run_profiled(arrays)
        else:
            outs, kernel_s = prog.run(arrays), None
        if listen:
            event = {"roots": expanded if expanded is not None else expand_grads(todo), "program": prog, "hit": hit,
                     "compile_s": prog.compile_s if prog is not None else 0.0, "run_s": time.perf_counter() - t0,
                     "backend": name if prog is not None else "numpy"}
            if kernel_s is not None:
                event["kernel_s"] = kernel_s
    else:
        # Backends never see grad placeholders: autodiff (IR -> IR) runs here, before scheduling; unless
        # they key their cache on the graph as built and expand only on a miss (fn.expands_grads, "cuda").
        fn = _backends[name]
        roots = todo if getattr(fn, "expands_grads", False) else expand_grads(todo)
        _report.clear()
        t0 = time.perf_counter()
        if capture is not None and hasattr(fn, "prepare"):  # a backend that can be replayed: see capture
            run, inputs = fn.prepare(roots)
            capture.update(run=run, inputs=inputs)
            outs = run([n.buffer.data for n in inputs])
        else:
            outs = fn(roots)
        if listen:
            event = {"roots": expand_grads(roots), "program": None, "hit": False, "compile_s": 0.0,
                     "run_s": time.perf_counter() - t0, "backend": name, **_report}
    if event is not None:
        for hook in hooks:
            hook(event)
    for n, out in zip(todo, outs, strict=True):
        n.buffer = Buffer(out, n.device or "cpu")
