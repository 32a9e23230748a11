"""Seeing what the compiler did: `PICOGRAD_DEBUG` levels, `dump()`, and the capture behind `picograd-dump`.

The realize contract (realize.py calls this after every realize; any dict key may be missing):

    event = {
        "roots": list[Node],        # what the backend computed (grad placeholders already expanded);
                                    #   they may hold their buffers already
        "program": Program | None,  # the compiled program, None for the numpy interpreter
        "hit": bool,                # found in a cache (memory or disk) instead of generated
        "compile_s": float,         # seconds spent generating/compiling/loading (0.0 on a memory hit)
        "run_s": float,             # seconds running the program
        "kernel_s": list[float],    # optional: per-kernel seconds, when realize ran program.run_profiled
        "backend": str,             # optional: the backend's name
    }

realize.py either appends `on_realize` to `realize.hooks` (done here at import when that list exists) or
calls it directly; both are safe, an event is handled once. `enabled()` is a cheap test for whether anyone
listens, and `wants_profile()` tells realize to call `program.run_profiled(inputs)` instead of `run`, so
DEBUG=2 and a capture get per-kernel times without running anything twice.

Levels (tinygrad style): 1 = one line per realize; 2 = also one line per kernel; 3 = also the IR;
4 = also the generated source. Lines go to stderr, so they never mix with a script's own output."""

from __future__ import annotations

import hashlib
import os
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from .ir.node import Node
from .ir.printer import GraphView, correspondence, format_graph, to_dot

_captures: list[Capture] = []
_count = [0]  # realizes seen, to number the DEBUG lines


def level() -> int:
    """The PICOGRAD_DEBUG level, read each time so tests and notebooks can change it at run time."""
    v = os.environ.get("PICOGRAD_DEBUG", "")
    try:
        return int(v) if v else 0
    except ValueError:
        return 1  # PICOGRAD_DEBUG=yes: the first level rather than a crash inside realize


def enabled() -> bool:
    return bool(_captures) or level() > 0


def wants_profile() -> bool:
    return any(c.profile for c in _captures) or level() >= 2


# ---- reading a Program (duck-typed: the numpy interpreter has none, the CPU and CUDA backends do) --------------
@dataclass
class KernelInfo:
    name: str
    kind: str
    shape: tuple[int, ...]
    flops: float
    bytes: float
    nodes: list[Node]
    source: str


def kernel_infos(program: Any, roots: list[Node] | None = None) -> list[KernelInfo]:
    """The program's kernels; with roots, their nodes are mapped onto that graph (see printer.correspondence)."""
    if program is None:
        return []
    sources = getattr(program, "kernel_sources", None) or {}
    compiled_roots = getattr(getattr(program, "schedule", None), "outputs", None)
    node_map = None
    if roots is not None and compiled_roots is not None and list(compiled_roots) != list(roots):
        node_map = correspondence(compiled_roots, roots)
    out = []
    for i, k in enumerate(getattr(program, "kernels", None) or []):
        name = str(getattr(k, "name", f"k{i}"))
        src = getattr(k, "source", None) or (sources.get(name, "") if isinstance(sources, dict) else "")
        out.append(KernelInfo(name, str(getattr(k, "kind", "?")), tuple(getattr(k, "shape", ()) or ()),
                              float(getattr(k, "flops", 0) or 0), float(getattr(k, "bytes", 0) or 0),
                              _mapped(getattr(k, "nodes", []) or [], node_map), src or ""))
    return out


def _mapped(nodes: list[Node], node_map: dict[int, Node] | None) -> list[Node]:
    return list(nodes) if node_map is None else [node_map.get(id(n), n) for n in nodes]


def kernel_map(kernels: list[KernelInfo], first_only: bool = False) -> dict[int, str]:
    """id(node) -> kernel name. A node recomputed in several kernels lists them all ("k1,k3"), or only the
    first with first_only (a DOT node lives in one cluster)."""
    out: dict[int, str] = {}
    for k in kernels:
        for n in k.nodes:
            if id(n) not in out:
                out[id(n)] = k.name
            elif not first_only and k.name not in out[id(n)].split(","):
                out[id(n)] += "," + k.name
    return out


def kernel_caption(k: KernelInfo, seconds: float | None = None) -> str:
    cap = k.name if k.kind in k.name else f"{k.name} ({k.kind})"  # the scheduler's names often say the kind
    return cap if seconds is None else f"{cap}  {seconds * 1e3:.3f} ms"


def rate(amount: float, seconds: float | None, unit: float) -> float | None:
    return amount / seconds / unit if seconds and amount else None


def kernel_line(k: KernelInfo, seconds: float | None, width: int = 10) -> str:
    t = f"{seconds * 1e3:9.3f} ms" if seconds is not None else "        - ms"
    gf, gb = rate(k.flops, seconds, 1e9), rate(k.bytes, seconds, 1e9)
    gfs = f"{gf:8.2f} GFLOP/s" if gf is not None else "       - GFLOP/s"
    gbs = f"{gb:8.2f} GB/s" if gb is not None else "       - GB/s"
    shape = f"[{','.join(map(str, k.shape))}]"
    return f"  {k.name:<{width}} {k.kind:<11} {shape:<14} {t} {gfs} {gbs}"


def program_key(program: Any, roots: list[Node], ir_text: str | None = None) -> str:
    """A short stable id: the program's own key hash, else a hash of the IR text (same graph, same text)."""
    h = getattr(program, "key_hash", None)
    if h:
        return str(h)
    text = ir_text if ir_text is not None else format_graph(roots)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


# ---- the realize hook ---------------------------------------------------------------------------------------------
def on_realize(event: dict) -> None:
    if event.get("_debug_seen"):
        return
    event["_debug_seen"] = True
    lvl = level()
    if lvl <= 0 and not _captures:
        return
    _count[0] += 1
    if lvl > 0:
        print_event(event, lvl, sys.stderr)
    for cap in list(_captures):
        cap.record(event)


def print_event(event: dict, lvl: int, out: TextIO) -> None:
    roots, program = list(event.get("roots") or []), event.get("program")
    kernels = kernel_infos(program, roots)
    ir = format_graph(roots, kernel_map(kernels) if kernels else None) if lvl >= 3 or program is None else None
    key = program_key(program, roots, ir)
    backend = event.get("backend") or ("numpy" if program is None else "compiled")
    if program is None:
        what = f"{backend}, {len(roots)} outputs, no kernels"
        status = ""
    else:
        src = getattr(program, "from_cache", None)
        status = f", {'hit' if event.get('hit') else 'miss'}" + (f" ({src})" if src and event.get("hit") else "")
        what = f"{backend}, {len(kernels)} kernels"
    compile_s, run_ms = event.get("compile_s", 0.0), event.get("run_s", 0.0) * 1e3
    print(f"[picograd] realize {_count[0]}: program {key} ({what}){status}, compile {compile_s:.3f} s, "
          f"run {run_ms:.3f} ms", file=out)
    if lvl >= 2:
        ks = event.get("kernel_s") or [None] * len(kernels)
        width = max((len(k.name) for k in kernels), default=10)
        for k, s in zip(kernels, ks, strict=False):
            print(kernel_line(k, s, width), file=out)
    if lvl >= 3:
        print(ir, end="", file=out)
    if lvl >= 4 and program is not None:
        print(getattr(program, "source", "") or "# (the backend gave no source)", file=out)


# ---- capture: what picograd-dump records -------------------------------------------------------------------------
@dataclass
class ProgramRecord:
    """One distinct program seen under a capture, with everything the report shows."""

    index: int
    key: str
    backend: str
    ir: str
    view: GraphView  # the numbering of `ir`, kept to draw the DOT with the same names once timings are known
    kernels: list[KernelInfo]
    source: str
    n_nodes: int
    calls: int = 0
    hits: int = 0
    compile_s: list[float] = field(default_factory=list)
    run_s: list[float] = field(default_factory=list)
    kernel_s: list[list[float]] = field(default_factory=list)
    from_cache: list[str] = field(default_factory=list)

    # The first call of a program compiles (the program, and under profiling each kernel function on its own),
    # so medians leave it out whenever a later call exists.
    def kernel_median(self, i: int) -> float | None:
        vals = [row[i] for row in self.kernel_s[1:] or self.kernel_s if i < len(row)]
        return statistics.median(vals) if vals else None

    def run_median(self) -> float | None:
        vals = self.run_s[1:] or self.run_s
        return statistics.median(vals) if vals else None

    def timing_note(self) -> str:
        n = len(self.kernel_s) or len(self.run_s)
        if self.backend == "numpy":  # the interpreter compiles nothing: every call counts (run_median keeps 2..n)
            return "a single call" if n <= 1 else f"median of calls 2..{n}"
        if n <= 1:
            return "a single call: its times include JIT compilation; run more steps for steady numbers"
        return f"median of calls 2..{n} (the first one compiles)"

    def dot(self) -> str:
        """DOT with one cluster per kernel, captioned with the kernel's median time when it was profiled."""
        labels = {k.name: kernel_caption(k, self.kernel_median(i)) for i, k in enumerate(self.kernels)}
        kernel_of = kernel_map(self.kernels, first_only=True) if self.kernels else None
        title = f"program {self.index} ({self.key})"
        urls = {k.name: f"#p{self.index}-{k.name}" for k in self.kernels}
        return to_dot(self.view.roots, kernel_of, labels, title=title, view=self.view, kernel_urls=urls)


class Capture:
    """`with picograd.debug.Capture() as cap:` records every distinct program realized inside, in order of first
    appearance, with its IR, DOT, kernels, source and timings (all calls, so medians can be taken)."""

    def __init__(self, profile: bool = True) -> None:
        # profile: ask realize for per-kernel times (clock readings inside the compiled entry: no extra compile)
        self.profile = profile
        self.programs: list[ProgramRecord] = []
        self._by_key: dict[str, ProgramRecord] = {}
        self.realizes = 0

    def __enter__(self) -> Capture:
        _captures.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self in _captures:
            _captures.remove(self)

    def record(self, event: dict) -> None:
        self.realizes += 1
        roots, program = list(event.get("roots") or []), event.get("program")
        ir = None if getattr(program, "key_hash", None) else format_graph(roots)
        key = program_key(program, roots, ir)
        rec = self._by_key.get(key)
        if rec is None:
            rec = self._new_record(key, roots, program, event)
            self._by_key[key] = rec
            self.programs.append(rec)
        rec.calls += 1
        rec.hits += bool(event.get("hit"))
        rec.compile_s.append(float(event.get("compile_s", 0.0)))
        rec.run_s.append(float(event.get("run_s", 0.0)))
        if event.get("kernel_s"):
            rec.kernel_s.append([float(s) for s in event["kernel_s"]])
        src = getattr(program, "from_cache", None)
        rec.from_cache.append(str(src) if src else "compiled" if program is not None else "-")

    def _new_record(self, key: str, roots: list[Node], program: Any, event: dict) -> ProgramRecord:
        # Numbered now, not at exit: later realizes attach buffers to more nodes and would change the view.
        kernels = kernel_infos(program, roots)
        view = GraphView(roots)
        title = f"program {len(self.programs)} ({key})"
        ir = format_graph(roots, kernel_map(kernels) if kernels else None, title=title, view=view)
        backend = event.get("backend") or ("numpy" if program is None else "compiled")
        return ProgramRecord(len(self.programs), key, backend, ir, view, kernels,
                             getattr(program, "source", "") or "", len(view.body))


# ---- dump(): the graph a realize of these tensors would run ----------------------------------------------------
def dump(*tensors: Any, pending: bool = True, expand: bool = True, kernels: bool | None = None) -> str:
    """The lazy graph behind `tensors` as jaxpr-like text (see ir.printer.format_graph).

    pending: include what the next realize() would compute with them (tracked gradients, optimizer assigns).
    expand: show the backward pass as the VJP graph that gets compiled, not as `grad` placeholders.
    kernels: annotate each node with the kernel the scheduler puts it in (None: when the active backend compiles;
    True: always, e.g. to see the fusion plan while running on the numpy interpreter)."""
    from . import tensor as T  # the front end sits above this module; imported late to keep the layering

    bad = [t for t in tensors if not isinstance(t, Node) and not isinstance(getattr(t, "node", None), Node)]
    if bad:
        raise TypeError(f"dump: expected Tensors (or IR nodes), got {type(bad[0]).__name__} {bad[0]!r:.60}")
    roots = [t.node if hasattr(t, "node") else t for t in tensors]
    if pending:
        roots += [t.node for t in list(T._pending) if all(t.node is not r for r in roots)]
    if expand:
        from .ir.autodiff import expand_grads

        roots = expand_grads(roots)
    kernel_of = None
    if kernels or (kernels is None and _compiling_backend()):
        kernel_of = _schedule_map(roots)
        if kernel_of is None and kernels:
            raise RuntimeError("dump: kernels=True needs picograd.codegen.schedule, which is not available")
    return format_graph(roots, kernel_of)


def _compiling_backend() -> bool:
    from .realize import backend_name

    return backend_name() != "numpy"


def _schedule_map(roots: list[Node]) -> dict[int, str] | None:
    """The scheduler's plan for these roots (what a compiling backend would run), as id(node) -> kernel."""
    try:
        from .codegen.schedule import schedule
    except ImportError:
        return None
    todo = [r for r in roots if r.buffer is None]
    return kernel_map(kernel_infos(schedule(todo))) if todo else {}


def _register() -> None:
    from . import realize

    hooks = getattr(realize, "hooks", None)
    if isinstance(hooks, list) and on_realize not in hooks:
        hooks.append(on_realize)


_register()
__all__ = ["Capture", "ProgramRecord", "KernelInfo", "dump", "enabled", "level", "on_realize", "wants_profile",
           "print_event"]
