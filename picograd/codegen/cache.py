"""Compiled programs, cached in memory and on disk.

Key: the graph's structure with realized inputs numbered by position (key.py's `graph_key`), looked up in
memory first. On a miss the graph is scheduled
and rendered; the generated module is written under `$PICOGRAD_CACHE_DIR/cpu` (default ~/.cache/picograd/cpu)
as `pg_<sha256 of its source>.py`, atomically, then imported (registered in sys.modules first) so that
numba's `cache=True` keeps the machine code next to it in `__pycache__/`. The source embeds everything the
compiled code depends on beyond the graph (picograd and numba versions, codegen flags), so its content hash is
the disk key: a second process renders the same text, finds the file and loads the machine code without
compiling. A file whose content does not match its name, or numba cache files that fail to load, are
replaced and recompiled, never trusted.

Grad placeholders: the key is computed on the graph as built (backward() leaves `grad` nodes), so a cached
training step skips autodiff entirely; the program maps its inputs to the key's input positions."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..ir.node import Node
from . import compile_helper, cpu
from .in_place import in_place_pairs
from .key import graph_key, key_digest, with_updates
from .schedule import Kernel, schedule
from .threads import blas_threads

# Numba compiles ~2-4 ms per IR op; far bigger graphs run on the numpy interpreter instead (see prepare).
MAX_COMPILE_NODES = int(os.environ.get("PICOGRAD_MAX_COMPILE_NODES", "3000"))
MAX_PROGRAMS = int(os.environ.get("PICOGRAD_MAX_PROGRAMS", "512"))  # compiled programs kept in memory
_EXPAND = object()  # memory-cache marker: this structure must be keyed after autodiff (see run_graph)
_programs: dict[tuple, Any] = {}
# helper_kernels: kernels a helper process compiled (compile_helper.py)
_stats = {"memory_hits": 0, "disk_hits": 0, "misses": 0, "compile_s": 0.0, "helper_kernels": 0}


def cache_dir() -> Path:
    return Path(os.environ.get("PICOGRAD_CACHE_DIR") or Path.home() / ".cache" / "picograd")


def cache_stats() -> dict:
    """hits (memory + disk), misses (compiled from scratch), compile_s (seconds generating, compiling and
    loading programs), programs (held in memory)."""
    s = {k: v for k, v in _stats.items() if k != "warned_large"}
    s["hits"] = s["memory_hits"] + s["disk_hits"]
    s["programs"] = sum(1 for p in _programs.values() if p is not _EXPAND)
    return s


def reset_cache_stats(clear_memory: bool = False) -> None:
    _stats.update(memory_hits=0, disk_hits=0, misses=0, compile_s=0.0, helper_kernels=0)
    if clear_memory:
        _programs.clear()


# ---- programs -------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Program:
    """A compiled realize: `run(inputs)` calls one @njit entry function that runs every kernel in order."""

    key_hash: str
    schedule: Any
    source: str
    kernel_sources: dict[str, str]
    module_path: str
    args: list[str]
    entry: Any
    out_specs: list[tuple[int, np.dtype]]  # (elements, dtype) per output buffer
    results: list[tuple[bool, int, tuple[int, ...]]]  # per root: (from an input?, buffer position, shape)
    scratch: list[np.ndarray]  # arenas, allocated once and reused by every run
    input_slots: list[int] | None = None  # positions in the key's inputs (None: the same order)
    compile_s: float = 0.0
    from_cache: str | None = None  # "memory" | "disk" | None (compiled here)
    module: Any = None
    kernel_args: dict[str, list[int]] = field(default_factory=dict)  # kernel name -> positions in the arguments
    pool: list = field(default_factory=list)  # output arrays of the last run, reused once unreferenced
    # output buffer j -> input i: the program writes output j over input i's array (assigned state updated in
    # place); run() copies input i first unless the caller says nothing else holds it (`sole`)
    in_place: dict[int, int] = field(default_factory=dict)
    blas_threads: int = 0  # OpenBLAS threads while it runs (threads.blas_threads): 1 when its matmuls run in blocks

    @property
    def kernels(self) -> list[Kernel]:
        return self.schedule.kernels

    def _args(self, inputs: list[np.ndarray], sole: Collection[int] = (),
              reuse: dict[int, np.ndarray] | None = None) -> tuple[list, list[np.ndarray]]:
        ins = []
        for a in inputs:
            a = a.ravel()
            if not a.flags.writeable:
                a = a.copy()  # numba would compile another specialization for read-only arrays
            ins.append(a)
        for i in self.in_place.values():
            if i not in sole:
                ins[i] = ins[i].copy()  # someone may still read the old value: update a copy of it
        pool = self.pool
        if not pool:
            pool.extend([] for _ in self.out_specs)
        outs = []
        for j, ((n, dt), free) in enumerate(zip(self.out_specs, pool, strict=True)):
            if j in self.in_place:
                outs.append(ins[self.in_place[j]])
                continue
            if reuse and j in reuse:
                outs.append(reuse[j])
                continue
            # Recycle an earlier run's output array once nothing refers to it any more (the Buffer that held it
            # and every view of it are gone): a parameter updated each step alternates between two arrays, where
            # fresh multi-MB arrays would page-fault every step. References counted: the pool list, `a` and
            # getrefcount's own argument.
            for a in free:
                if sys.getrefcount(a) <= 3:
                    break
            else:
                a = np.empty(n, dt)
                free.append(a)
                if len(free) > 2:
                    del free[0]
            outs.append(a)
        written = [a for j, a in enumerate(outs) if j not in self.in_place] if self.in_place else outs
        return ins + written + self.scratch, outs

    def _shaped(self, inputs: list[np.ndarray], outs: list[np.ndarray], skip: Collection[int] = ()) -> list:
        if skip:
            return [None if r in skip else (inputs if from_input else outs)[j].reshape(shape)
                    for r, (from_input, j, shape) in enumerate(self.results)]
        return [(inputs if from_input else outs)[j].reshape(shape) for from_input, j, shape in self.results]

    def run(self, inputs: list[np.ndarray], sole: Collection[int] = (), skip: Collection[int] = (),
            reuse: dict[int, np.ndarray] | None = None) -> list:
        """Compute the roots from the input arrays (in the order of schedule.inputs). sole: positions of
        in-place inputs that nothing but the tensor being updated refers to, so they may be written over;
        the others are copied first. skip: roots the caller doesn't need back (None in their place). reuse:
        {root: flat array} to write those roots into (see reusable)."""
        if reuse:
            reuse = {self.results[r][1]: a for r, a in reuse.items()}
        args, outs = self._args(inputs, sole, reuse)
        blas_threads(self.blas_threads)
        self.entry(*args, _NO_TIMES)
        return self._shaped(inputs, outs, skip)

    def reusable(self, root: int, data: np.ndarray) -> np.ndarray | None:
        """The flat array under `data` (a value this program computed for `root` before, or any other) when
        run(reuse=...) may write root's next value into it: C-contiguous, of root's size and dtype. The caller
        vouches that nothing else holds the old value (picograd.jit: a gradient the step assigns anew)."""
        from_input, j, _ = self.results[root]
        if from_input or j in self.in_place:
            return None
        base = data if data.base is None else data.base
        n, dt = self.out_specs[j]
        if type(base) is not np.ndarray or base.ndim != 1 or base.size != n or base.dtype != dt:
            return None
        return base if base.flags.c_contiguous and base.flags.writeable else None

    def pooled(self, root: int, base: np.ndarray) -> int:
        """1 when `base` sits in root's output pool (a reference reusable's caller must allow for), else 0."""
        j = self.results[root][1]
        return int(bool(self.pool) and any(a is base for a in self.pool[j]))

    def run_profiled(self, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], list[float] | None]:
        """Run, timing each kernel where it runs, inside the entry (for PICOGRAD_DEBUG=2 and picograd-dump);
        no times (None) where generated code has no clock (clock.AVAILABLE)."""
        args, outs = self._args(inputs)
        blas_threads(self.blas_threads)
        stamps = np.zeros(len(self.kernels) + 1, np.int64)
        self.entry(*args, stamps)
        times = [float(d) * 1e-9 for d in np.diff(stamps)] if stamps[-1] else None
        return self._shaped(inputs, outs), times


_NO_TIMES = np.zeros(0, np.int64)  # the entry's `times` argument when not profiling


@functools.lru_cache(maxsize=1)
def _salt() -> str:
    import numba

    from .. import __version__
    from . import blas, clock, cpu_expr, fpenv

    flags = f"parallel_min={cpu.PARALLEL_MIN} block={cpu.BLOCK}"  # the rest is in the source
    # numba's cache doesn't see changes to callees in other files: the intrinsics' sources are in the key
    callees = (blas, clock, cpu_expr, fpenv)
    blas_hash = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in callees)).hexdigest()[:12]
    return f"# picograd {__version__}, numba {numba.__version__}, numpy {np.__version__}, {flags}, blas {blas_hash}\n"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        try:
            os.link(tmp, path)  # no-clobber: a file another process already wrote keeps its mtime (numba's stamp)
        except FileExistsError:
            if path.read_text() != text:
                os.replace(tmp, path)
                tmp = None
        except OSError:
            os.replace(tmp, path)
            tmp = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _purge_numba_cache(path: Path) -> None:
    pyc = path.parent / "__pycache__"
    if pyc.is_dir():
        for f in pyc.glob(path.stem + ".*"):
            try:
                f.unlink()
            except OSError:
                pass


def _load_module(source: str) -> tuple[Any, Path, bool]:
    """The generated module (imported), its path, and whether the file was written just now."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:24]
    name = f"pg_{digest}"
    path = cache_dir() / "cpu" / f"{name}.py"
    mod = sys.modules.get(name)
    if mod is not None:
        return mod, path, False
    try:
        ok = path.read_text() == source
    except (OSError, UnicodeDecodeError):
        ok = False
    if not ok:
        if path.exists():  # corrupted or truncated: its machine code can't be trusted either
            _purge_numba_cache(path)
            path.unlink()
        _write_atomic(path, source)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # before executing: numba's cache looks the module up by name
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod, path, not ok


def _signature(args: list[str], sched, rendered: cpu.Rendered) -> tuple:
    from numba import types
    from numba.np.numpy_support import from_dtype

    dts = [n.dtype for n in sched.inputs] + [n.dtype for n in sched.out_buffers if id(n) not in rendered.over]
    dts += [rendered.scratch[a][0] for a in args[len(dts):]]
    return tuple(types.Array(from_dtype(np.dtype(d)), 1, "C") for d in dts + [np.int64])  # + times


def _compile(entry: Any, sig: tuple, path: Path) -> bool:
    """Compile (or load from numba's disk cache); True when it loaded without compiling."""
    before = sum(entry.stats.cache_hits.values())
    try:
        entry.compile(sig)
    except Exception:
        # A damaged numba cache file fails to unpickle: drop it and compile afresh.
        _purge_numba_cache(path)
        entry.compile(sig)
        return False
    return sum(entry.stats.cache_hits.values()) > before


def build(roots: list[Node], inputs: list[Node], key_hash: str, updates: dict[int, Node] | None = None) -> Program:
    from . import threads

    threads.configure()  # before any parallel kernel can launch
    sched = schedule(roots, inputs)
    in_place = in_place_pairs(sched, roots, updates) if updates else {}
    rendered = cpu.render_program(sched, key_hash, {id(sched.out_buffers[j]): i for j, i in in_place.items()})
    source = _salt() + rendered.source
    mod, path, fresh = _load_module(source)
    entry = mod.program
    jit = hasattr(entry, "compile")  # False under NUMBA_DISABLE_JIT=1: plain Python
    sig = _signature(rendered.args, sched, rendered)
    if jit and fresh and compile_helper.enabled() and len(rendered.parallel_kernels) >= 2:
        par = set(rendered.parallel_kernels)
        jobs = [(name, tuple(sig[i] for i in rendered.kernel_args[name]), name in par)
                for name in rendered.called_kernels]
        _stats["helper_kernels"] += compile_helper.compile_split(mod, path, jobs)
    from_disk = _compile(entry, sig, path) if jit else False
    scratch = [np.zeros(max(size, 1), dt) for _, (dt, size) in sorted(rendered.scratch.items())]
    out_specs = [(n.size, np.dtype(n.dtype)) for n in sched.out_buffers]
    pos_in = {id(n): i for i, n in enumerate(sched.inputs)}
    pos_out = {id(n): j for j, n in enumerate(sched.out_buffers)}
    results = [(id(b) in pos_in, pos_in.get(id(b), pos_out.get(id(b))), r.shape)
               for r, b in zip(sched.outputs, sched.root_source, strict=True)]
    return Program(key_hash, sched, source, rendered.kernel_sources, str(path), rendered.args, entry, out_specs,
                   results, scratch, from_cache="disk" if from_disk else None, module=mod,
                   kernel_args=rendered.kernel_args, in_place=in_place, blas_threads=rendered.blas_threads)


def _lookup(todo: list[Node], key: tuple, inputs: list[Node], has_grad: bool,
            updates: dict[int, Node] | None = None) -> tuple[Program, bool]:
    """The program for this key, building it on a miss. Returns (program, hit)."""
    prog = _programs.get(key)
    if prog is not None:
        _stats["memory_hits"] += 1
        prog.from_cache = "memory"
        prog.compile_s = 0.0
        return prog, True
    from ..ir.autodiff import expand_grads

    t0 = time.perf_counter()
    roots = expand_grads(todo) if has_grad else todo
    slots = None
    if has_grad:
        pos = {id(n): i for i, n in enumerate(inputs)}
        used = [n for n in _realized(roots)]
        if any(id(n) not in pos for n in used):
            # autodiff met a realized node the built graph doesn't show: key this structure after expansion
            _programs[key] = _EXPAND
            raise _Reexpand(roots)
        slots = [pos[id(n)] for n in used]
        inputs = used
    prog = build(roots, inputs, key_digest(key), updates)
    prog.input_slots = slots
    prog.compile_s = time.perf_counter() - t0
    _stats["compile_s"] += prog.compile_s
    if prog.from_cache == "disk":
        _stats["disk_hits"] += 1
    else:
        _stats["misses"] += 1
    _programs[key] = prog
    if len(_programs) > MAX_PROGRAMS:  # each holds scratch arenas and recycled outputs: bound the memory
        del _programs[next(iter(_programs))]  # the oldest; if it comes back it loads from disk
    return prog, prog.from_cache == "disk"


class _Reexpand(Exception):
    def __init__(self, roots: list[Node]) -> None:
        self.roots = roots


def _realized(roots: list[Node]) -> list[Node]:
    from ..ir.node import toposort

    return [n for n in toposort(roots, stop_at_realized=True) if n.buffer is not None]


def prepare(todo: list[Node]) -> tuple[Program | None, bool, list[np.ndarray], list[Node] | None]:
    """Find or build the program for todo and gather its input arrays: (program, hit, arrays, expanded roots
    if expansion happened here). program is None for a graph too big to compile (over MAX_COMPILE_NODES
    nodes): compiling it would cost more than interpreting it many times; the caller interprets it."""
    prog, hit, inputs, expanded = prepare_nodes(todo)
    return prog, hit, [n.buffer.data for n in inputs], expanded


def prepare_nodes(todo: list[Node], updates: dict[int, Node] | None = None
                  ) -> tuple[Program | None, bool, list[Node], list[Node] | None]:
    """As prepare, with the program's input nodes (in the order run() takes their arrays) instead of arrays.
    updates: root position -> the realized node that root's value replaces (an optimizer's assign): the
    program may then compute it in place (Program.in_place)."""
    key, inputs, has_grad, opaque = graph_key(todo)
    key = with_updates(key, inputs, updates)
    if len(key[0]) > MAX_COMPILE_NODES:
        _warn_large(len(key[0]))
        return None, False, [], None
    prog = None if has_grad and opaque else _programs.get(key)
    if prog is not None and prog is not _EXPAND:  # the hot path: a cached step
        _stats["memory_hits"] += 1
        prog.from_cache, prog.compile_s = "memory", 0.0
        slots = prog.input_slots
        return prog, True, inputs if slots is None else [inputs[i] for i in slots], None
    expanded = None
    if prog is _EXPAND or (has_grad and opaque):
        from ..ir.autodiff import expand_grads

        expanded = expand_grads(todo)
        key, inputs, has_grad, _ = graph_key(expanded)
        key = with_updates(key, inputs, updates)
        todo = expanded
    try:
        prog, hit = _lookup(todo, key, inputs, has_grad, updates)
    except _Reexpand as e:
        expanded = e.roots
        key, inputs, has_grad, _ = graph_key(expanded)
        key = with_updates(key, inputs, updates)
        prog, hit = _lookup(expanded, key, inputs, has_grad, updates)
    slots = prog.input_slots
    return prog, hit, inputs if slots is None else [inputs[i] for i in slots], expanded


def _warn_large(n: int) -> None:
    if not _stats.get("warned_large"):
        _stats["warned_large"] = 1
        import warnings

        warnings.warn(f"picograd: a graph of {n} nodes is interpreted with numpy instead of compiled (limit "
                      f"PICOGRAD_MAX_COMPILE_NODES={MAX_COMPILE_NODES})", RuntimeWarning, stacklevel=4)


def run_graph(todo: list[Node]) -> list[np.ndarray]:
    """The "cpu" backend: compute todo's nodes (grad placeholders allowed) with one compiled program."""
    prog, _, arrays, _ = prepare(todo)
    if prog is None:
        from ..eager import evaluate
        from ..ir.autodiff import expand_grads

        return evaluate(expand_grads(todo))
    return prog.run(arrays)
