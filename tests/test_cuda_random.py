"""Random graphs on device="cuda" under numba's CUDA simulator: tests/test_codegen_random.py's recipes (with
wide=True: sizes that straddle the simulator's 8x8x4 matmul tiles and 32-thread blocks, size-1 and empty
axes, int/bool dtypes, casts, comparisons, argmax, softmax, dropout, pow, batched matmuls), their values and
the gradients of a random weighting of them against eager numpy. Modes (MODES): each reduction template (the
renderer's choice, and "thread", "tree" and "two-pass" forced through PICOGRAD_CUDA_REDUCE), and "gpu", the
launch configurations of a real GPU (PICOGRAD_CUDA_SIM_SMS) simulated. Every launch is checked against CUDA's
limits, and simulated device memory starts as garbage, so what only a GPU would refuse or expose fails here.

The simulator must be on before numba is imported, so the graphs run in a subprocess: this file run as a
script (started in the background when collection ends, like tests/cuda_sim_worker.py). Each mode's graphs
are realized together, one program: the simulator's cost is per kernel launch far more than per element.

Long hunts: PICOGRAD_CUDA_RANDOM_GRAPHS=n runs n graphs per mode (in programs of BATCH graphs, printing
progress and failures), PICOGRAD_CUDA_RANDOM_SEED another draw, PICOGRAD_CUDA_RANDOM_MODES=auto,tree some
modes, PICOGRAD_RANDOM_ELEMENTS bigger inputs, PICOGRAD_CUDA_SIM_SMS=n every mode on an n-SM GPU's launches:

    NUMBA_ENABLE_CUDASIM=1 PICOGRAD_CUDA_RANDOM_GRAPHS=500 python tests/test_cuda_random.py

and without the simulator, `python tests/test_cuda_random.py --ptx` compiles graphs for sm_90 with numba-cuda's
NVVM (see check_ptx).

"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
# Graphs per mode in CI (~35 s of simulator on one core). A mode is a reduction template ("auto" lets the
# renderer choose; "thread" is its choice for short rows, most of these graphs, so it gets fewer of its own), or
# "gpu": launch configurations rendered for a 3-SM GPU (256-thread blocks, 16..64-wide matmul tiles; slow).
MODES = {"auto": 40, "thread": 16, "tree": 24, "split": 24, "gpu": 8}
BATCH = 48  # graphs per program in long runs


def _job() -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONWARNINGS="ignore")
    return [sys.executable, os.path.abspath(__file__)], env


BACKGROUND = {"sim_random": _job()}


def test_random_graphs_on_the_cuda_simulator(background: Any) -> None:
    import importlib.util

    import pytest

    if importlib.util.find_spec("numba") is None:
        pytest.skip("numba is not installed")
    p = background.result("sim_random", *BACKGROUND["sim_random"])
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("CUDA_RANDOM ")]
    if not lines:
        pytest.fail(f"the simulator worker crashed (rc={p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    res = json.loads(lines[-1].split(" ", 1)[1])
    assert not res["failures"], "\n\n".join(res["failures"][:5])
    assert res["graphs"] >= sum(MODES.values()) // 2, res  # (hypothesis may stop early, out of distinct recipes)


# ---- the worker ----------------------------------------------------------------------------------------
def collect(n: int, seed: int) -> list[dict]:
    """n recipes drawn deterministically (no shrinking: a failing recipe is reported as drawn)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from test_codegen_random import recipes

    out: list[dict] = []

    @hseed(seed)
    @settings(max_examples=n, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck),
              deadline=None)
    @given(recipes(wide=True))
    def draw(r: dict) -> None:
        out.append(r)

    draw()
    return out


def compare(recipe: dict, got: list[Any]) -> None:
    """got (device tensors, realized) against the eager replay of the recipe."""
    import numpy as np
    from test_codegen_random import replay

    want = replay(recipe, eager=True)
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.device == "cuda", f"value {k} is on {g.device}"
        a, b = g.numpy(), w.numpy()
        assert a.shape == b.shape and a.dtype == b.dtype, f"value {k}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        # float32 sums in another order (tiles, trees): an element that cancels down from big terms keeps their
        # absolute error, so atol scales with the largest value of the array
        scale = float(np.abs(b[np.isfinite(b)]).max(initial=1.0)) if b.dtype.kind == "f" else 1.0
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * max(1.0, scale), err_msg=f"value {k}")


def run_batch(batch: list[dict], mode: str) -> list[str]:
    """Failures (recipe and error) of a batch realized as one program; a program that fails to build or run
    is retried graph by graph to say which graph breaks it."""
    from test_codegen_random import replay

    import picograd as pg
    import picograd.cuda as pcuda

    os.environ["PICOGRAD_CUDA_REDUCE"] = "" if mode in ("auto", "gpu") else mode
    sms = os.environ.get("PICOGRAD_CUDA_SIM_SMS")  # (set for a whole run: every mode renders for that GPU)
    if mode == "gpu" and not sms:
        os.environ["PICOGRAD_CUDA_SIM_SMS"] = "3"
    pcuda.clear_cache()  # programs are cached by graph, not by template
    try:
        lazy = [replay(r, eager=False, device="cuda") for r in batch]
        pg.realize(*[t for ts in lazy for t in ts])
    except Exception:
        if len(batch) == 1:
            return [f"[{mode}] {batch[0]!r}\n{traceback.format_exc(limit=-6)}"]
        return [f for r in batch for f in run_batch([r], mode)]
    finally:
        if sms is None:
            os.environ.pop("PICOGRAD_CUDA_SIM_SMS", None)
    fails = []
    for r, got in zip(batch, lazy, strict=True):
        try:
            compare(r, got)
        except Exception as e:
            fails.append(f"[{mode}] {r!r}\n{type(e).__name__}: {str(e)[:2000]}")
    if mode == "auto" and not fails:
        fails += _rerun(batch)
    return fails


def _rerun(batch: list[dict]) -> list[str]:
    """The same graphs with other data: the cached program runs again, over the workspace its first run left
    (stale values now, not the first run's NaNs)."""
    from test_codegen_random import replay

    import picograd as pg
    import picograd.cuda as pcuda

    again = [dict(r, seed=r["seed"] + 1) for r in batch]
    compiles = pcuda.stats()["compiles"]
    lazy = [replay(r, eager=False, device="cuda") for r in again]
    pg.realize(*[t for ts in lazy for t in ts])
    fails = [] if pcuda.stats()["compiles"] == compiles else ["[rerun] the same graphs compiled again"]
    for r, got in zip(again, lazy, strict=True):
        try:
            compare(r, got)
        except Exception as e:
            fails.append(f"[rerun] {r!r}\n{type(e).__name__}: {str(e)[:2000]}")
    return fails


def check_ptx(n: int, seed: int) -> list[str]:
    """Without the simulator: render n graphs for sm_90 (a GPU's launch configurations) and compile them to
    PTX with numba-cuda's NVVM, which types the code as the GPU will (the simulator runs plain Python): no
    typing error, and no float64 instruction beyond libdevice's sin/cos slow path (a literal leaking into
    float32 code). Needs numba-cuda[cu13]; slow (a second a kernel): for long hunts."""
    from numba import cuda, types
    from test_codegen_random import replay
    from test_cuda import _cos, _f64_ops, _render_captured, _sin

    import picograd as pg
    from picograd.codegen.cuda import compile_ptx

    libdevice = {fn: _f64_ops(cuda.compile_ptx(k, (types.CPointer(types.float32),) * 2, cc=(9, 0))[0])
                 for fn, k in (("sin", _sin), ("cos", _cos))}
    fails = []
    for r in collect(n, seed):
        try:
            prog = _render_captured(lambda r=r: pg.realize(*replay(r, eager=False)))
        except IndexError:  # nothing left to compute (the outputs are inputs)
            continue
        try:
            ptx = compile_ptx(prog.source, prog.kernels, prog.dtypes, (9, 0), jobs=1)
        except Exception as e:
            fails.append(f"[ptx] {r!r}\n{type(e).__name__}: {str(e)[:2000]}")
            continue
        for k in prog.kernels:
            allowed = set().union(*[ops for fn, ops in libdevice.items() if f"math.{fn}(" in k.source])
            leaked = _f64_ops(ptx[k.name][0]) - allowed
            if leaked:
                fails.append(f"[ptx] {r!r}\n{k.name}: float64 {sorted(leaked)}\n{k.source}")
        print(f"ptx: {len(fails)} failures", file=sys.stderr, flush=True)
    return fails


def main() -> None:
    sys.path.insert(0, HERE)
    if "--ptx" in sys.argv:
        fails = check_ptx(int(os.environ.get("PICOGRAD_CUDA_RANDOM_GRAPHS", "8")),
                          int(os.environ.get("PICOGRAD_CUDA_RANDOM_SEED", "0")))
        for f in fails:
            print("FAIL " + f.replace("\n", "\n     "), file=sys.stderr)
        print("CUDA_RANDOM " + json.dumps({"failures": fails}))
        return
    long_run = "PICOGRAD_CUDA_RANDOM_GRAPHS" in os.environ
    seed = int(os.environ.get("PICOGRAD_CUDA_RANDOM_SEED", "0"))
    modes = os.environ.get("PICOGRAD_CUDA_RANDOM_MODES", ",".join(MODES)).split(",")
    os.environ["PICOGRAD_BACKEND"] = "cuda"
    import picograd.cuda  # noqa: F401 - registers the device

    t0, fails, graphs = time.time(), [], 0
    for k, mode in enumerate(modes):
        n = int(os.environ["PICOGRAD_CUDA_RANDOM_GRAPHS"]) if long_run else MODES[mode]
        recipes = collect(n, seed * len(MODES) + k)  # other graphs for each mode
        size = BATCH if long_run else max(1, len(recipes))  # CI: one program per mode
        for i in range(0, len(recipes), size):
            batch = recipes[i : i + size]
            got = run_batch(batch, mode)
            fails += got
            graphs += len(batch)
            if long_run:
                print(f"{mode} {graphs} graphs, {len(fails)} failures, {time.time() - t0:.0f} s", file=sys.stderr,
                      flush=True)
                for f in got:
                    print("FAIL " + f.replace("\n", "\n     "), file=sys.stderr, flush=True)
    print(f"{graphs} graphs, {len(fails)} failures, {time.time() - t0:.1f} s", file=sys.stderr)
    print("CUDA_RANDOM " + json.dumps({"graphs": graphs, "failures": fails, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
