"""picograd's host-side time per CUDA training step, measured without a GPU.

A GPU training step costs the GPU's time or the host's, whichever is longer (the host queues kernels ahead).
The host's share is Python: uploading the batch, replaying the `pg.jit` step (binding new parameter buffers),
allocating outputs and issuing one driver call per kernel. This script runs that path for real against a
driver whose calls return at once (kernels are rendered for an H100 but not compiled or run, so the numbers
are meaningless for the GPU's share and the values computed are garbage), so the host's share can be measured
and tuned on any machine. It is a diagnostic, not a comparison: the real step, against PyTorch on the same
GPU, is `benchmarks/mnist.py --device cuda` (run by `benchmarks/gpu_check.sh`). A real driver call adds ~1-3 us
to each call counted here.

    python benchmarks/cuda_host.py                     # both models, 2000 steps each
    python benchmarks/cuda_host.py --models seed --steps 500 --profile
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import peers  # noqa: E402

import picograd as pg  # noqa: E402
from picograd import nn, optim  # noqa: E402
from picograd.codegen import cuda as cuda_codegen  # noqa: E402
from picograd.codegen import cuda_runtime as rt  # noqa: E402
from picograd.nn import functional as F  # noqa: E402

CONFIGS = {"mlp": 128, "seed": 64}  # batch sizes, as benchmarks/mnist.py trains them
TARGET_US = 5.0 / (10 * 60000 / 64) * 1e6  # the GPU issue's target: the seed model, 10 epochs in 5 s


class _Bindings:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def cuLaunchKernel(self, *args: Any) -> tuple[int]:  # noqa: N802 - the driver API's name
        self.counts["launch"] += 1
        return (0,)


class NullDriver:
    """rt._Driver's interface; every call returns at once and is counted. Memory is addresses only."""

    cc, sm_count, pools, pool_keeps, name = (9, 0), 132, True, True, "no GPU (null driver)"
    stream, params_by_address, _ok = 0, True, 0

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(("launch", "alloc", "free", "htod", "dtoh"), 0)
        self.cu = _Bindings(self.counts)
        self._next = itertools.count(1 << 20, 1 << 20)

    def alloc(self, nbytes: int) -> int:
        self.counts["alloc"] += 1
        return next(self._next)

    def free(self, ptr: int) -> None:
        self.counts["free"] += 1

    def htod(self, dst: int, src: np.ndarray) -> None:
        self.counts["htod"] += 1

    def dtoh(self, dst: np.ndarray, src: int) -> None:
        self.counts["dtoh"] += 1
        dst[...] = 0

    def dtod(self, dst: int, src: int, nbytes: int) -> None:
        pass

    def memset0(self, dst: int, nbytes: int) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def load_function(self, ptx: str, name: str) -> tuple[None, str]:
        return None, name

    def event(self) -> int:
        return 0

    def record(self, event: int) -> None:
        pass

    def elapsed_ms(self, start: int, end: int) -> float:
        return 0.0


def install() -> NullDriver:
    """Route picograd's CUDA backend to a NullDriver (for this process: there is no undoing it)."""
    d = NullDriver()
    rt.simulated = lambda: False
    rt._driver[:] = [d]
    cuda_codegen._load_ptx = lambda source, kernels, dtypes: {r.name: ("", r.name) for r in kernels}
    import picograd.cuda as pcuda

    if not pcuda._numba_cuda_present():  # nothing here needs it: the kernels are not compiled
        pcuda._numba_cuda_present = lambda: True
    return d


def measure(model: str, steps: int, d: NullDriver, rounds: int = 5) -> dict:
    sizes, opt_kind, lr, p = peers.model_config(model, None, None, None)
    pg.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers += [nn.ReLU()] + ([nn.Dropout(p)] if p > 0 else [])
    net = nn.Sequential(*layers).to("cuda")
    if opt_kind == "sgd":
        opt: optim.Optimizer = optim.SGD(net.parameters(), lr=lr, momentum=peers.sgd_momentum(model, opt_kind))
    else:
        opt = optim.Adam(net.parameters(), lr=lr)
    batch = CONFIGS[model]
    rng = np.random.default_rng(0)
    x_all = rng.random((4096, sizes[0]), dtype=np.float32)
    y_all = rng.integers(0, sizes[-1], 4096)

    @pg.jit
    def step(x: pg.Tensor, y: pg.Tensor) -> pg.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss

    def one() -> None:  # as benchmarks/mnist.py's "lazy" trainer: gather on the host, upload, step
        idx = rng.integers(0, len(x_all), batch)
        loss = step(pg.Tensor(x_all[idx], device="cuda", copy=False), pg.Tensor(y_all[idx], device="cuda", copy=False))
        pg.realize(loss)

    for _ in range(20):  # trace, compile (render only), settle
        one()
    per_round = max(1, steps // rounds)
    before = dict(d.counts)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(per_round):
            one()
        times.append((time.perf_counter() - t) / per_round)
    calls = {k: (d.counts[k] - before[k]) / (per_round * rounds) for k in d.counts}
    return {"us": 1e6 * statistics.median(times), "rounds": [1e6 * t for t in times], "calls": calls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["seed", "mlp"], choices=sorted(CONFIGS))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--profile", action="store_true", help="cProfile the seed model's steps (top 25 by own time)")
    args = ap.parse_args()
    d = install()
    print("picograd CUDA host time per training step (pg.jit; null driver: no GPU, kernels not run)")
    print(f"{'model':6s} {'batch':>5s} {'host us/step':>12s} {'rounds (us)':>28s}  driver calls per step")
    for model in args.models:
        r = measure(model, args.steps, d)
        calls = ", ".join(f"{k} {v:g}" for k, v in r["calls"].items() if v)
        rounds = " ".join(f"{t:.0f}" for t in r["rounds"])
        print(f"{model:6s} {CONFIGS[model]:5d} {r['us']:12.1f} {rounds:>28s}  {calls}")
    print(f"(the GPU issue's target for the seed model, 10 epochs in 5 s, is {TARGET_US:.0f} us/step in all)")
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        measure("seed", args.steps, d, rounds=1)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
