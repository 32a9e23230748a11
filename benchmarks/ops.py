"""Micro-benchmarks of the Numba CPU backend, measured in one run and printed as one table (medians).

  - fused elementwise chains and reductions against the same ops done one by one in numpy, 1e3 ... 1e7 elements;
  - matmul + bias + relu against numpy, with GFLOP/s;
  - compile time of a 2-layer MLP training step: cold (empty cache), from disk (a fresh process), from memory;
  - the Python work per cached training step (784-128-10 MLP, batch 128, SGD): graph build, key + cache lookup,
    launch (argument binding, output allocation), the compiled program itself.

    python benchmarks/ops.py [--quick] [--repeat N]

"picograd" columns time the compiled program call (`Program.run`); "lazy" adds building the graph and the
cache lookup, i.e. what a user pays per call (inputs wrapped with `Tensor(a, copy=False)`; the default copy of each
input adds a memcpy of it). The machine is shared: compare ratios within one run."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("PICOGRAD_CACHE_DIR", tempfile.mkdtemp(prefix="picograd-bench-"))
os.environ["PICOGRAD_BACKEND"] = "cpu"

from picograd import Tensor  # noqa: E402
from picograd.codegen import cache  # noqa: E402
from picograd.tensor import _pending  # noqa: E402


def timeit(fn: Callable[[], object], repeat: int, min_time: float = 0.02) -> float:
    """Median seconds per call over `repeat` batches, each batch long enough to be measurable."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / once))
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def program_for(t: Tensor) -> tuple[cache.Program, list[np.ndarray]]:
    """Compile the graph of t; return the program and its input arrays for direct timing."""
    prog, _, arrays, _ = cache.prepare([t.node])
    return prog, arrays


def fmt_t(s: float) -> str:
    return f"{s * 1e3:9.3f} ms" if s >= 1e-3 else f"{s * 1e6:9.1f} us"


def _case(name: str, np_fn: Callable[[], object], graph: Callable[[list[Tensor]], Tensor], arrays: list[np.ndarray],
          repeat: int, rtol: float) -> tuple:
    """Time numpy, the compiled program alone, and the whole lazy call (fresh input tensors each time, so the
    hash-consed graph is really rebuilt and re-realized rather than found realized)."""
    prog, ins = program_for(graph([Tensor(a) for a in arrays]))
    np.testing.assert_allclose(prog.run(ins)[0], np_fn(), rtol=rtol, atol=1e-6)

    def lazy() -> None:  # copy=False: the graph's work, not Tensor()'s default copy of each input array
        graph([Tensor(a, copy=False) for a in arrays]).realize()

    return name, timeit(np_fn, repeat), timeit(lambda: prog.run(ins), repeat), timeit(lazy, repeat)


def bench_elementwise(sizes: list[int], repeat: int) -> list[tuple]:
    rows = []
    rng = np.random.default_rng(0)
    half = np.float32(0.5)
    for n in sizes:
        x, w, b = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
        rows.append(_case(f"relu(x*w+b)*0.5+x  n={n:.0e}", lambda x=x, w=w, b=b: np.maximum(x * w + b, 0) * half + x,
                          lambda t: (t[0] * t[1] + t[2]).relu() * 0.5 + t[0], [x, w, b], repeat, 1e-6))
        rows.append(_case(f"sum(relu(x*w+b))   n={n:.0e}", lambda x=x, w=w, b=b: np.maximum(x * w + b, 0).sum(),
                          lambda t: (t[0] * t[1] + t[2]).relu().sum(), [x, w, b], repeat, 1e-4))
    rng = np.random.default_rng(1)
    for m, k in [(128, 10), (1000, 1000)]:
        a = rng.standard_normal((m, k)).astype(np.float32)

        def np_softmax(a: np.ndarray = a) -> np.ndarray:
            e = np.exp(a - a.max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)

        rows.append(_case(f"softmax rows {m}x{k}", np_softmax, lambda t: t[0].softmax(1), [a], repeat, 1e-5))
    return rows


def bench_matmul(repeat: int) -> list[tuple]:
    rows = []
    rng = np.random.default_rng(0)
    for m, k, n in [(128, 784, 128), (64, 800, 800), (512, 512, 512)]:
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((k, n)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        name, tn, tp, tl = _case(f"relu(x@W+b) {m}x{k}x{n}", lambda x=x, w=w, b=b: np.maximum(x @ w + b, 0),
                                 lambda t: (t[0] @ t[1] + t[2]).relu(), [x, w, b], repeat, 1e-4)
        flops = 2.0 * m * k * n
        rows.append((name, tn, tp, tl, flops / tn / 1e9, flops / tp / 1e9))
    return rows


# ---- the training step ------------------------------------------------------------------------------
STEP_SRC = """
import numpy as np
from picograd import Tensor

def make_step(batch=128, sizes=(784, 128, 10), seed=0):
    rng = np.random.default_rng(seed)
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        params += [Tensor(rng.standard_normal((a, b)).astype(np.float32) * a ** -0.5, requires_grad=True),
                   Tensor(np.zeros(b, np.float32), requires_grad=True)]
    xs = rng.standard_normal((8, batch, sizes[0])).astype(np.float32)
    ys = np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], (8, batch))]
    state = {"i": 0}

    def build():
        i = state["i"] = (state["i"] + 1) % 8
        x, onehot = Tensor(xs[i]), Tensor(ys[i])
        for p in params:
            p.grad = None
        h = x
        for j in range(0, len(params), 2):
            h = h @ params[j] + params[j + 1]
            if j + 2 < len(params):
                h = h.relu()
        loss = -(h.log_softmax(1) * onehot).sum(1).mean()
        loss.backward()
        for p in params:
            p.assign(p - 0.05 * p.grad)
        return loss

    return build, params
"""


def bench_step(repeat: int, steps: int = 300) -> dict:
    ns: dict = {}
    exec(STEP_SRC, ns)  # noqa: S102 - the step is shared with the disk-cache subprocess below
    build, params = ns["make_step"]()
    cache.reset_cache_stats(clear_memory=True)
    t0 = time.perf_counter()
    build().item()
    cold = time.perf_counter() - t0
    stats = cache.cache_stats()
    for _ in range(20):
        build().item()
    # Time the parts in place, during real steps: wrap the cache lookup and the program call.
    spans: dict[str, list[float]] = {"key": [], "run": [], "entry": []}
    # realize() looks up cache.prepare_nodes when it runs, so wrapping the module attribute catches every call
    prepare, run = cache.prepare_nodes, cache.Program.run

    def timed_prepare(todo, updates=None):  # noqa: ANN001, ANN202
        t = time.perf_counter()
        r = prepare(todo, updates)
        spans["key"].append(time.perf_counter() - t)
        return r

    def timed_run(self, arrays, sole=(), skip=(), reuse=None):  # noqa: ANN001, ANN202
        t = time.perf_counter()
        if reuse:
            reuse = {self.results[r][1]: a for r, a in reuse.items()}
        args, outs = self._args(arrays, sole, reuse)
        cache.blas_threads(self.blas_threads)
        t1 = time.perf_counter()
        self.entry(*args, cache._NO_TIMES)
        t2 = time.perf_counter()
        res = self._shaped(arrays, outs, skip)
        spans["entry"].append(t2 - t1)
        spans["run"].append(time.perf_counter() - t - (t2 - t1))
        return res

    cache.prepare_nodes, cache.Program.run = timed_prepare, timed_run
    t_build, t_realize = [], []
    try:
        for _ in range(steps):  # per step: graph build, then loss.item() (one realize of loss, grads and updates)
            t0 = time.perf_counter()
            loss = build()
            t1 = time.perf_counter()
            loss.item()
            t_build.append(t1 - t0)
            t_realize.append(time.perf_counter() - t1)
    finally:
        cache.prepare_nodes, cache.Program.run = prepare, run
    loss = build()
    nodes = [loss.node] + [t.node for t in list(_pending)]
    nodes = list({id(n): n for n in nodes if n.buffer is None}.values())
    n_nodes = len(cache.graph_key(nodes)[0][0])
    prog = cache.prepare(nodes)[0]
    loss.item()
    disk = disk_load_time()
    sched = prog.schedule
    med = statistics.median
    return {"cold": cold, "cold_stats": stats, "disk": disk, "build": med(t_build), "realize": med(t_realize),
            "key": med(spans["key"]), "launch": med(spans["run"]), "entry": med(spans["entry"]),
            "kernels": len(sched.kernels), "intermediates": len(sched.intermediates),
            "outputs": len(sched.out_buffers), "nodes": n_nodes}


def disk_load_time() -> dict:
    """Compile time in a fresh process whose cache directory already holds the step (written above)."""
    script = STEP_SRC + """
import json, time
from picograd.codegen import cache
build, params = make_step()
t0 = time.perf_counter()
build().item()
print(json.dumps({"first_step": time.perf_counter() - t0, "stats": cache.cache_stats()}))
"""
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return {"error": r.stderr[-500:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sizes up to 1e6 and fewer repeats")
    ap.add_argument("--repeat", type=int, default=None)
    args = ap.parse_args()
    repeat = args.repeat or (5 if args.quick else 15)
    sizes = [10**e for e in range(3, 7 if args.quick else 8)]
    import numba

    print(f"# picograd ops benchmark, {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, "
          f"numpy {np.__version__}, numba {numba.__version__}, median of {repeat}")
    print()
    print(f"| {'case':<36} | {'numpy':>12} | {'picograd':>12} | {'lazy':>12} | {'speedup':>8} |")
    print(f"|{'-' * 38}|{'-' * 14}|{'-' * 14}|{'-' * 14}|{'-' * 10}|")
    for name, tn, tp, tl in bench_elementwise(sizes, repeat):
        print(f"| {name:<36} | {fmt_t(tn):>12} | {fmt_t(tp):>12} | {fmt_t(tl):>12} | {tn / tp:7.2f}x |")
    for name, tn, tp, tl, gn, gp in bench_matmul(repeat):
        label = f"{name} ({gn:.0f}/{gp:.0f} GF/s)"
        print(f"| {label:<36} | {fmt_t(tn):>12} | {fmt_t(tp):>12} | {fmt_t(tl):>12} | {tn / tp:7.2f}x |")
    s = bench_step(repeat)
    print(f"\n(threading layer: {numba.threading_layer()})")
    print()
    print(f"2-layer MLP training step (784-128-10, batch 128, SGD; forward + backward + update = 1 program of "
          f"{s['kernels']} kernels, {s['intermediates']} scratch buffers, {s['outputs']} outputs, "
          f"{s['nodes']} IR nodes):")
    print()
    print(f"| {'what':<52} | {'time':>12} |")
    print(f"|{'-' * 54}|{'-' * 14}|")
    disk = s["disk"]
    rows = [
        ("first step, cold (compile with an empty cache dir)", s["cold"]),
        ("first step, fresh process, program on disk", disk.get("first_step", float("nan"))),
        ("cached step: graph build (forward, backward(), SGD)", s["build"]),
        ("cached step: loss.item() (one realize)", s["realize"]),
        ("  key + memory-cache lookup + gather inputs", s["key"]),
        ("  launch: bind arguments, recycle outputs, shape results", s["launch"]),
        ("  the compiled program (one Numba call)", s["entry"]),
        ("  the rest (attach buffers, cut assign history, .item)", s["realize"] - s["key"] - s["launch"] - s["entry"]),
        ("Python work per cached step (build + key + launch)", s["build"] + s["key"] + s["launch"]),
        ("  of which picograd.codegen + realize (key + launch)", s["key"] + s["launch"]),
    ]
    for name, t in rows:
        print(f"| {name:<52} | {fmt_t(t):>12} |")
    if "error" in disk:
        print("disk-cache subprocess failed:", disk["error"])
    else:
        print(f"\n(fresh process cache stats: {disk['stats']})")


if __name__ == "__main__":
    main()
