"""The CUDA code generator: a scheduled graph -> numba.cuda kernels -> one program per graph structure.

The kernels come from the backend-neutral scheduler (codegen/schedule.py); cuda_render turns each into
Python source for numba.cuda; numba-cuda compiles that to PTX, which is cached on disk by content hash
and loaded with the driver (cuda_runtime). A program owns a slot table: one device pointer per buffer
(inputs, per-call outputs, and intermediates that live in a workspace allocated once per program), and
every kernel's parameter block points into it, so a run fills the table and issues one driver call per
kernel. On the CUDA simulator the same sources run through numba's simulated dispatch."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..ir.node import Node
from . import cuda_runtime as rt
from .cuda_matmul import render_matmul
from .cuda_render import SHARED_BYTES, Rendered, Target, render_elementwise, render_reduce
from .schedule import Kernel, schedule

VERSION = "cuda-1"  # bump when generated code changes meaning: salts the disk cache
HEADER = "import math\nimport numpy as np\nfrom numba import cuda\n\n"


# ---- compiling ------------------------------------------------------------------------------------------
def target() -> Target:
    split = os.environ.get("PICOGRAD_CUDA_SPLIT_K", "1") != "0"  # 0: no split-k (to measure what it gains)
    if rt.simulated():
        # PICOGRAD_CUDA_SIM_SMS=n: render for a GPU with n SMs (its blocks and matmul tiles) and simulate that,
        # slowly (256 Python threads a block), to test the launch configurations a real GPU runs.
        sms = int(os.environ.get("PICOGRAD_CUDA_SIM_SMS", "0"))
        if sms > 0:
            return Target(sim=True, sm_count=sms, gpu_launch=True, split_k=split)
        return Target(sim=True, split_k=split)
    return Target(sim=False, sm_count=rt.driver().sm_count, split_k=split)


def _cache_dir() -> str:
    base = os.environ.get("PICOGRAD_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "picograd")
    d = os.path.join(base, "cuda")
    os.makedirs(d, exist_ok=True)
    return d


def _ntype(dtype: np.dtype) -> Any:
    from numba import types

    return types.CPointer(getattr(types, "uint8" if dtype == np.bool_ else np.dtype(dtype).name))


def _exec_module(source: str, tag: str) -> dict[str, Any]:
    """Run generated source as a module (kept in sys.modules so numba can find its globals)."""
    import types as pytypes

    name = f"picograd_cuda_{tag}"
    mod = pytypes.ModuleType(name)
    mod.__file__ = f"<{name}>"
    sys.modules[name] = mod
    exec(compile(source, mod.__file__, "exec"), mod.__dict__)
    return mod.__dict__


def compile_ptx(source: str, kernels: list[Rendered], dtypes: dict[str, list[np.dtype]], cc: tuple[int, int],
                jobs: int | None = None) -> dict[str, tuple[str, str]]:
    """PTX and entry name of each kernel (no GPU needed; numba-cuda's NVVM does the work).

    dtypes: kernel name -> the dtype of each parameter buffer. numba takes ~0.5 s a kernel and a training
    step has ~20, so with several cores the kernels compile in parallel (spawned processes: a forked
    child of a process holding a CUDA context must not touch the driver)."""
    todo = [(k.name, [np.dtype(d).str for d in dtypes[k.name]]) for k in kernels]
    cpus = os.cpu_count() or 1
    # A worker costs ~2 s of interpreter and numba start-up: worth it with several cores and kernels.
    jobs = jobs or int(os.environ.get("PICOGRAD_CUDA_JOBS", 0)) or (cpus if cpus >= 4 else 1)
    jobs = min(jobs, len(todo) // 4, 32)
    if jobs > 1:
        try:
            return _compile_parallel(source, todo, cc, jobs)
        except Exception as e:  # no way to start processes here: compile in this one instead
            print(f"picograd.cuda: parallel compile failed ({type(e).__name__}: {e}); compiling serially",
                  file=sys.stderr)
    return _compile_chunk(source, todo, cc)


def _compile_parallel(source: str, todo: list[tuple[str, list[str]]], cc: tuple[int, int], jobs: int
                      ) -> dict[str, tuple[str, str]]:
    """Fresh interpreters running this module (not multiprocessing: its spawn start method re-imports the
    user's main script, which may be a training loop without a __main__ guard)."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    procs = []
    for _ in range(jobs):
        p = subprocess.Popen([sys.executable, "-m", "picograd.codegen.cuda"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        procs.append(p)
    for i, p in enumerate(procs):
        assert p.stdin is not None
        p.stdin.write(json.dumps({"source": source, "todo": todo[i::jobs], "cc": list(cc)}).encode())
        p.stdin.close()
    out: dict[str, tuple[str, str]] = {}
    for p in procs:
        assert p.stdout is not None and p.stderr is not None
        res, err = p.stdout.read(), p.stderr.read()
        if p.wait() != 0:
            raise RuntimeError(f"compile worker failed: {err.decode(errors='replace')[-2000:]}")
        out.update({k: tuple(v) for k, v in json.loads(res.decode().rsplit(_MARK, 1)[1]).items()})
    return out


_MARK = "\n@@picograd-ptx@@\n"


def _worker() -> None:
    job = json.loads(sys.stdin.read())
    res = _compile_chunk(job["source"], job["todo"], tuple(job["cc"]))
    sys.stdout.write(_MARK + json.dumps(res))


def numba_cuda_compat() -> None:
    """Call before numba-cuda compiles: numpy >= 2.5 removed np.row_stack, which numba-cuda 0.30 still registers
    (its compiler then fails with an AttributeError)."""
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack  # type: ignore[attr-defined]


def _compile_chunk(source: str, todo: list[tuple[str, list[str]]], cc: tuple[int, int]) -> dict[str, tuple[str, str]]:
    numba_cuda_compat()
    from numba import cuda

    ns = _exec_module(source, hashlib.sha256(source.encode()).hexdigest()[:16])
    out = {}
    for name, dts in todo:
        sig = tuple(_ntype(np.dtype(d)) for d in dts)
        ptx, _ = cuda.compile_ptx(ns[name], sig, cc=cc)
        entry = ptx.split(".entry", 1)[1].split("(", 1)[0].strip()
        out[name] = (ptx, entry)
    return out


def _load_ptx(source: str, kernels: list[Rendered], dtypes: dict[str, list[np.dtype]]) -> dict[str, tuple[str, str]]:
    d = rt.driver()
    key = hashlib.sha256(f"{VERSION}|{d.cc}|{_toolchain()}|{source}".encode()).hexdigest()
    path = os.path.join(_cache_dir(), key + ".json")
    try:
        with open(path) as f:
            return {k: tuple(v) for k, v in json.load(f).items()}  # type: ignore[misc]
    except (OSError, ValueError):
        pass
    got = compile_ptx(source, kernels, dtypes, d.cc)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(got, f)
    os.replace(tmp, path)  # atomic: concurrent processes never read half a file
    return got


def _toolchain() -> str:
    try:
        from importlib.metadata import version

        return version("numba-cuda")
    except Exception:
        import numba

        return numba.__version__


@dataclass
class Slot:
    shape: tuple[int, ...]
    dtype: np.dtype


class CudaProgram:
    """A compiled graph structure; run() takes the arrays of `inputs` (same order) and returns the roots'."""

    def __init__(self, roots: list[Node], inputs: list[Node], tgt: Target | None = None, build: bool = True,
                 keep_graph: bool = False) -> None:
        """build=False renders only (source, kernels, dtypes): what the PTX checks need, with no GPU.
        keep_graph: keep the schedule and each kernel's IR nodes, for PICOGRAD_DEBUG / picograd-dump to show which
        node runs in which kernel (not kept otherwise: they would pin the first run's arrays in GPU memory)."""
        self.target = tgt or target()
        slot_of: dict[int, int] = {id(n): i for i, n in enumerate(inputs)}
        slots = [Slot(n.shape, n.dtype) for n in inputs]
        self.n_in = len(inputs)
        sched = schedule(roots, inputs)
        self.schedule = sched if keep_graph else None  # (debug maps a later, structurally equal graph onto it)
        kernels = sched.kernels
        # Fresh arrays per run for the roots' data; a root that is a reshape/detach of another node (even of
        # an input) is a view of that node's buffer, with no copy.
        self.out_slots = []
        for n in sched.out_buffers:
            slot_of[id(n)] = len(slots)
            self.out_slots.append(len(slots))
            slots.append(Slot(n.shape, n.dtype))
        for k in kernels:
            for o in k.outputs:
                if id(o) not in slot_of:
                    slot_of[id(o)] = len(slots)
                    slots.append(Slot(o.shape, o.dtype))
        for src in sched.root_source:  # a root that nothing writes (should not happen) fails here, not on the GPU
            if id(src) not in slot_of:
                raise RuntimeError(f"cuda: no kernel computes {src}")
        self.results = [(slot_of[id(src)], r.shape) for src, r in zip(sched.root_source, roots, strict=True)]
        out_set = set(self.out_slots)
        rendered: list[tuple[Rendered, dict[str, int]]] = []
        for k in kernels:
            if all(o.size == 0 for o in k.outputs):
                continue
            scratch: dict[str, int] = {}  # shared by the launches one scheduled kernel becomes
            for i, r in enumerate(self._render(k, slot_of)):
                r.shape, r.nodes = k.domain, list(k.nodes) if keep_graph else []
                if i == 0:  # the work counted once, on the first of its launches
                    r.flops, r.bytes = k.flops, k.bytes
                names = {}
                for p in r.params:
                    if p.startswith("b") and p[1:].isdigit():
                        names[p] = int(p[1:])
                    else:  # a kernel's private scratch buffer (two-pass reductions)
                        if p not in scratch:
                            shape, dtype = r.workspace[p]
                            scratch[p] = len(slots)
                            slots.append(Slot(shape, np.dtype(dtype)))
                        names[p] = scratch[p]
                rendered.append((r, names))
        self.slots = slots
        self.temp_slots = [i for i in range(self.n_in, len(slots)) if i not in out_set]
        self.layout = rt.Layout([(slots[s].shape, slots[s].dtype) for s in self.out_slots])
        # One module: kernel names are unique within the program.
        seen: set[str] = set()
        for r, _ in rendered:
            if r.name in seen:
                raise RuntimeError(f"cuda: duplicate kernel name {r.name}")
            seen.add(r.name)
        for r, _ in rendered:
            _check_launch(r)
        self.source = HEADER + "\n\n".join(r.source for r, _ in rendered)
        self.kernels = [r for r, _ in rendered]
        self.dtypes = {r.name: [slots[names[p]].dtype for p in r.params] for r, names in rendered}
        self.launches = self._compile(rendered) if build else []
        self.workspace: list[rt.CudaArray] | None = None
        self._events: list[Any] | None = None  # run_profiled's CUDA events
        self.table = np.zeros(len(slots), dtype=np.uint64)
        drv = None if self.target.sim or not build else rt.driver()
        for launch in self.launches:
            launch.bind(self.table, drv)
        self.views = [(s, shape) for s, shape in self.results if shape != slots[s].shape]

    def _render(self, k: Kernel, slot_of: dict[int, int]) -> list[Rendered]:
        def named(nodes: list[Node]) -> list[tuple[Node, str]]:
            return [(o, f"b{slot_of[id(o)]}") for o in nodes]

        params = {id(n): f"b{slot_of[id(n)]}" for n in k.inputs}
        name = _ident(k.name)
        out: list[Rendered] = []
        if k.matmul is not None:
            # The tiled matmul runs the main loop (its stores) as the epilogue of each register; a
            # reduction over its output crosses tiles, so it becomes a second kernel reading the
            # matmul's buffer (which the schedule materializes anyway). An empty product (a batch of none)
            # has nothing to store, but its reductions still write their zeros; CUDA refuses a grid of 0 blocks.
            if k.matmul.size:
                out += render_matmul(name, k.matmul, named([k.matmul] + k.stores), params, self.target)
            if k.reduces:
                params2 = dict(params)
                params2[id(k.matmul)] = f"b{slot_of[id(k.matmul)]}"
                out += render_reduce(name + "_red", [], named(k.reduces), named(k.post), params2, self.target)
            return out
        if k.reduces:
            return render_reduce(name, named(k.stores), named(k.reduces), named(k.post), params, self.target)
        return [render_elementwise(name, named(k.stores), params, self.target)]

    def _compile(self, rendered: list[tuple[Rendered, dict[str, int]]]) -> list[rt.Launch]:
        launches = []
        if self.target.sim:
            from numba import cuda

            ns = _exec_module(self.source, hashlib.sha256(self.source.encode()).hexdigest()[:16])
            for r, names in rendered:
                fn = cuda.jit(ns[r.name])
                launches.append(rt.Launch(r.name, fn, r.grid, r.block, 0, [names[p] for p in r.params]))
            return launches
        ptx = _load_ptx(self.source, [r for r, _ in rendered], self.dtypes)
        d = rt.driver()
        for r, names in rendered:
            text, entry = ptx[r.name]
            module, fn = d.load_function(text, entry)
            launches.append(rt.Launch(r.name, fn, r.grid, r.block, 0, [names[p] for p in r.params], module))
        return launches

    def run(self, inputs: list[Any]) -> list[rt.CudaArray]:
        arrays = self._arrays(inputs)
        if self.target.sim:
            args = [a.flat_arg() for a in arrays]
            for launch in self.launches:
                launch.run_sim(args)
        else:
            d = rt.driver()
            for launch in self.launches:
                launch.run_gpu(d)
        return self._results(arrays)

    def _results(self, arrays: list[Any]) -> list[rt.CudaArray]:
        if self.views:
            return [arrays[s] if arrays[s].shape == shape else arrays[s].reshape(shape) for s, shape in self.results]
        return [arrays[s] for s, _ in self.results]

    def run_profiled(self, inputs: list[Any]) -> tuple[list[rt.CudaArray], list[float] | None]:
        """run(), with each kernel's seconds on the GPU (CUDA events recorded between the launches, so host overhead
        is not in it, each event's own gap is); for PICOGRAD_DEBUG=2 and picograd-dump. Waits for the GPU. No times
        (None) on the simulator, which has no clock."""
        if self.target.sim:
            return self.run(inputs), None
        arrays = self._arrays(inputs)
        d = rt.driver()
        if self._events is None:  # made once, kept for the program's life
            self._events = [d.event() for _ in range(len(self.launches) + 1)]
        events = self._events
        d.record(events[0])
        for launch, ev in zip(self.launches, events[1:], strict=True):
            launch.run_gpu(d)
            d.record(ev)
        times = [d.elapsed_ms(events[i], events[i + 1]) / 1e3 for i in range(len(self.launches))]
        return self._results(arrays), times

    def kernel_times(self, inputs: list[Any], reps: int = 20) -> list[tuple[str, float]]:
        """(kernel name, median seconds on the GPU) for each launch over `reps` runs on `inputs` (run_profiled); the
        program's updates in place happen reps times. For gpu_check and whoever tunes the templates."""
        if self.target.sim:
            raise RuntimeError("cuda: kernel times need a GPU (the simulator has no clock)")
        runs = [self.run_profiled(inputs)[1] or [] for _ in range(reps)]
        return [(launch.name, float(np.median([ts[i] for ts in runs]))) for i, launch in enumerate(self.launches)]

    def _arrays(self, inputs: list[Any]) -> list[Any]:
        """Every slot's array for one run (inputs, fresh outputs, the workspace); on a GPU, the slot table too."""
        arrays: list[Any] = list(inputs)
        host = [i for i, x in enumerate(arrays) if not isinstance(x, rt.CudaArray)]  # e.g. a jit step's scalars
        if host:
            for i, a in zip(host, rt.to_device_many([arrays[i] for i in host]), strict=True):
                arrays[i] = a
        arrays += [None] * (len(self.slots) - len(arrays))
        for s, a in zip(self.out_slots, self.layout.allocate(), strict=True):
            arrays[s] = a
        if self.workspace is None:
            self.workspace = [rt.empty(self.slots[s].shape, self.slots[s].dtype) for s in self.temp_slots]
        for s, a in zip(self.temp_slots, self.workspace, strict=True):
            arrays[s] = a
        if not self.target.sim:
            self.table[:] = [a.ptr for a in arrays]
        return arrays


def _check_launch(r: Rendered) -> None:
    """CUDA's limits on a launch, checked on the simulator too (which would run what a GPU refuses)."""
    limits = ((1, 2**31 - 1), (1, 65535), (1, 65535))
    ok = all(lo <= g <= hi for g, (lo, hi) in zip(r.grid, limits, strict=True))
    ok = ok and all(b >= 1 for b in r.block) and r.block[0] * r.block[1] * r.block[2] <= 1024 and r.block[2] <= 64
    if not ok or r.shared_bytes > SHARED_BYTES:
        raise RuntimeError(f"cuda: kernel {r.name}: launch grid {r.grid} x block {r.block} with {r.shared_bytes} bytes "
                           "of shared memory is outside CUDA's limits")


def _ident(name: str) -> str:
    s = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return s if s and not s[0].isdigit() else "k_" + s


if __name__ == "__main__":  # a compile worker (see _compile_parallel)
    _worker()
