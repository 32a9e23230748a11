"""MNIST training benchmark: picograd (lazy with picograd.jit, lazy without it, eager) against the peers in
benchmarks/peers.py (hand-written numpy, PyTorch eager and jax.jit when installed), side by side in one run.

Every trainer starts from the same initial weights, visits the same batches in the same order and
reports the same numbers: ms/step (median over epochs; the first step, which carries compilation,
is left out), s/epoch, compile time (first step minus a median step), the ratio to the fastest peer
and test accuracy. The "BLAS floor" row (benchmarks/peers.py train_floor) is no trainer: each step only gathers
the batch and runs the step's matrix products with numpy's BLAS, the floor under any trainer here; "/floor" is
each trainer's ratio to it. Models: "mlp" = 784-128-10, SGD lr 0.1 momentum 0.5, batch 128; "seed" = 784-800-800-10 with
Dropout(0.5), Adam lr 1e-3, batch 64.

    PICOGRAD_DATA=/path/to/data python benchmarks/mnist.py                    # both models, 3 epochs
    python benchmarks/mnist.py --models mlp --epochs 5 --trainers lazy numpy torch
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import peers  # noqa: E402

import picograd as pg  # noqa: E402
from picograd import nn, optim  # noqa: E402
from picograd.datasets import MNIST  # noqa: E402
from picograd.nn import functional as F  # noqa: E402
from picograd.realize import backend_name  # noqa: E402

# The configurations, with the input scaling each trains best with (as in examples/train_mnist.py):
# standardized for SGD on the MLP, [0, 1] for the seed's model. SGD's momentum (0.5 for "mlp") comes from
# peers.MODELS, so picograd and every peer use the same one.
CONFIGS = {
    "mlp": dict(lr=0.1, batch_size=128, normalize=True),
    "seed": dict(lr=1e-3, batch_size=64, normalize=False),
}
PEERS = ("numpy", "torch", "jax")
TRAINERS = ("lazy", "plain", "eager") + PEERS + ("floor",)
LABELS = {"lazy": "picograd lazy", "plain": "picograd no-jit", "eager": "picograd eager", "floor": "BLAS floor"}


def train_picograd(model: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                   *, epochs: int = 1, batch_size: int = 128, lr: float | None = None, optim_name: str | None = None,
                   seed: int = 0, dropout: float | None = None, device: str = "cpu", eager: bool = False,
                   use_jit: bool = True) -> dict:
    """picograd with nn/optim, same protocol and result dict as the peers, plus (without jit) "build_ms": the
    median Python time per step spent building the step's graph (everything before pg.realize(loss)).
    use_jit: the step is a picograd.jit function, as in examples/train_mnist.py; else the plain lazy loop."""
    sizes, opt_kind, lr, p = peers.model_config(model, optim_name, lr, dropout)
    pg.manual_seed(seed)
    init = peers.init_params(sizes, seed)
    layers: list[nn.Module] = []
    for i, (w, b) in enumerate(zip(init[0::2], init[1::2], strict=True)):
        lin = nn.Linear(*w.shape)
        lin.load_state_dict({"weight": w.T, "bias": b})  # peers draw W as (in, out); Linear keeps (out, in)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers += [nn.ReLU()] + ([nn.Dropout(p)] if p > 0 else [])
    net = nn.Sequential(*layers)
    net.to(device)
    if opt_kind == "sgd":
        opt: optim.Optimizer = optim.SGD(net.parameters(), lr=lr, momentum=peers.sgd_momentum(model, opt_kind))
    else:
        opt = optim.Adam(net.parameters(), lr=lr, betas=peers.ADAM_BETAS, eps=peers.ADAM_EPS)
    x_train = np.ascontiguousarray(x_train, dtype=np.float32)

    def step(x: pg.Tensor, y: pg.Tensor) -> pg.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss

    step_fn = pg.jit(step) if use_jit and not eager else step
    build: list[float] = []

    def one(idx: np.ndarray) -> pg.Tensor:
        tb = time.perf_counter()
        # copy=False: the gathered batch is a fresh array nothing else holds (Tensor() copies by default)
        loss = step_fn(pg.Tensor(x_train[idx], requires_grad=False, device=device, copy=False),
                       pg.Tensor(y_train[idx], requires_grad=False, device=device, copy=False))
        build.append(time.perf_counter() - tb)
        # Without jit this runs forward, backward and update: one program. The loss stays a tensor (on a GPU,
        # .item() every step would wait for the GPU each time; the torch and jax peers don't either).
        pg.realize(loss)
        return loss

    sync = pg.cuda.synchronize if device.startswith("cuda") else lambda: None
    with pg.eager() if eager else contextlib.nullcontext():
        epoch_times, first_step, steps, losses = peers.timed_epochs(
            epochs, lambda ep: peers.batch_orders(len(x_train), batch_size, seed, ep), one, sync
        )
        losses = [t.item() for t in losses]
        net.eval()
        pred = np.concatenate([net(pg.Tensor(x_test[i : i + 1000], device=device)).argmax(1).numpy()
                               for i in range(0, len(x_test), 1000)])
    acc = float(np.mean(pred == y_test))
    res = peers._summarize(epoch_times, first_step, steps, losses, acc)
    if step_fn is step:  # with jit the call also runs the program: only the plain loop has a build time to show
        res["build_ms"] = statistics.median(build[1:] or build) * 1e3
    return res


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds used by the whole machine, by this process) so far; None where /proc/stat is missing."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK"), time.process_time()


def _others_cores(before: tuple[float, float] | None, after: tuple[float, float] | None, wall: float) -> float:
    """Average number of cores that other processes kept busy during a run (0 when it can't be told)."""
    if before is None or after is None or wall <= 0:
        return 0.0
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / wall)


def run_model(model: str, trainers: list[str], data: tuple, epochs: int, seed: int, device: str,
              rounds: int = 1) -> dict:
    """Each trainer's result; with rounds > 1 the trainers run round-robin (the order rotated each round) and
    ms/step is the median of the rounds' medians, so a burst of load from other jobs hits one round, not one
    trainer. Compile time comes from round 1 (later rounds find picograd's programs cached)."""
    runs: dict[str, list[dict]] = {}
    for k in range(rounds):
        order = trainers[k % len(trainers):] + trainers[: k % len(trainers)]
        if rounds > 1:
            print(f" round {k + 1} of {rounds}", flush=True)
        for name, r in _run_once(model, order, data, epochs, seed, device).items():
            runs.setdefault(name, []).append(r)
    results = {}
    for name in trainers:
        if name not in runs:
            continue
        rs = runs[name]
        r = dict(rs[0])
        ms = [x["ms_per_step"] for x in rs]
        # s/epoch over every round's epochs but the very first (it carries the compile)
        epochs_s = [t for x in rs for t in x["s_per_epoch"]][1:] if rounds > 1 else r["s_per_epoch"]
        r.update(ms_per_step=statistics.median(ms), rounds_ms=ms, round_spread=max(ms) / min(ms), s_per_epoch=epochs_s,
                 others_cores=statistics.median(x["others_cores"] for x in rs),
                 epoch_spread=statistics.median(x["epoch_spread"] for x in rs))
        results[name] = r
    return results


def _run_once(model: str, trainers: list[str], data: tuple, epochs: int, seed: int, device: str) -> dict:
    cfg = CONFIGS[model]
    results: dict[str, dict] = {}
    for name in trainers:
        cpu0 = _cpu_seconds()
        kw = dict(epochs=epochs, batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed, device=device)
        t = time.perf_counter()
        try:
            if name == "floor":
                r = peers.FLOOR(model, *data, **kw)
            elif name in LABELS:
                r = train_picograd(model, *data, eager=name == "eager", use_jit=name == "lazy", **kw)
            else:
                r = peers.PEERS[name](model, *data, **kw)
        except Exception as e:  # one trainer failing (e.g. a peer without this device) must not end the run
            print(f"  {name}: failed, left out ({type(e).__name__}: {str(e).splitlines()[0][:200]})", flush=True)
            continue
        wall = time.perf_counter() - t
        per_epoch = r["s_per_epoch"][1:] or r["s_per_epoch"]
        r.update(wall_s=wall, others_cores=_others_cores(cpu0, _cpu_seconds(), wall),
                 epoch_spread=max(per_epoch) / min(per_epoch))
        results[name] = r
        print(f"  {name}: {r['ms_per_step']:.3f} ms/step, test acc {_acc(r)} "
              f"({r['wall_s']:.1f} s)", flush=True)
    return results


def _acc(r: dict) -> str:
    """Test accuracy as printed; "-" for the floor row, which learns nothing (NaN)."""
    return "-" if np.isnan(r["test_acc"]) else f"{100 * r['test_acc']:.2f}%"


def report(model: str, results: dict[str, dict], epochs: int, rounds: int = 1) -> list[str]:
    """Print the table; return the warnings about a busy machine."""
    cfg = CONFIGS[model]
    sizes, opt_kind, _, p = peers.model_config(model, None, cfg["lr"], None)
    peer_ms = [r["ms_per_step"] for n, r in results.items() if n in PEERS]
    fastest = min(peer_ms) if peer_ms else None
    floor = results["floor"]["ms_per_step"] if "floor" in results else None
    mom = peers.sgd_momentum(model, opt_kind)
    print(f"\n{model}: {'-'.join(map(str, sizes))}, {opt_kind} lr {cfg['lr']}"
          f"{f' momentum {mom}' if mom else ''}, batch {cfg['batch_size']}, "
          f"dropout {p}, {epochs} epoch(s); medians over epochs"
          + (f", then over {rounds} rounds (spread: slowest / fastest round)" if rounds > 1 else ""))
    print(f"{'trainer':16s} {'ms/step':>8s} {'s/epoch':>8s} {'compile s':>10s} {'/fastest peer':>14s} "
          f"{'/floor':>7s} {'test acc':>9s} {'build ms':>9s}" + (f" {'spread':>7s}" if rounds > 1 else ""))
    warnings = []
    for name, r in results.items():
        label = LABELS.get(name, name)
        ratio = f"{r['ms_per_step'] / fastest:.2f}x" if fastest and name != "floor" else "-"
        over = f"{r['ms_per_step'] / floor:.2f}x" if floor and name != "floor" else "-"
        build = f"{r['build_ms']:.3f}" if "build_ms" in r else ""
        busy = r["others_cores"] > 0.2 or r["epoch_spread"] > 1.3
        spread = f" {r['round_spread']:6.2f}x" if rounds > 1 else ""
        print(f"{label:16s} {r['ms_per_step']:8.3f} {statistics.median(r['s_per_epoch']):8.2f} "
              f"{r['compile_s']:10.2f} {ratio:>14s} {over:>7s} {_acc(r):>9s} {build:>9s}{spread}"
              f"{'  *' if busy else ''}")
        if busy:
            warnings.append(f"{model}/{label}: other processes kept {r['others_cores']:.2f} of {os.cpu_count()} "
                            f"cores busy; epoch times spread x{r['epoch_spread']:.2f}")
    if "lazy" in results and "eager" in results:
        a, b = np.array(results["lazy"]["losses"]), np.array(results["eager"]["losses"])
        print(f"lazy vs eager, first {len(a)} step losses: max relative difference "
              f"{np.max(np.abs(a - b) / np.abs(b)):.2e}")
    return warnings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=sorted(CONFIGS), default=["mlp", "seed"])
    ap.add_argument("--trainers", nargs="+", choices=TRAINERS, default=list(TRAINERS))
    ap.add_argument("--epochs", type=int, default=3, help="per trainer; ms/step is the median over epochs")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the trainers round-robin this many times; ms/step is the median over rounds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", help="MNIST folder (default: $PICOGRAD_DATA/mnist)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--limit", type=int, help="train on the first N samples only (quick runs)")
    ap.add_argument("--json", help="also write all results to this file")
    args = ap.parse_args(argv)

    root = args.data and (str(Path(args.data) / "mnist") if (Path(args.data) / "mnist").is_dir() else args.data)
    train_set, test_set = MNIST(root, train=True), MNIST(root, train=False)
    available = set(peers.available_peers())
    trainers = [t for t in args.trainers if t not in PEERS or t in available]
    missing = [t for t in args.trainers if t not in trainers]
    from picograd.codegen.blas import ONE_THREAD

    print(f"picograd {pg.__version__}, backend {backend_name()}, device {args.device}, "
          f"{os.cpu_count()} CPUs, blocked long products on {ONE_THREAD}; trainers {trainers}"
          + (f" (not installed: {missing})" if missing else ""))
    all_results, warnings = {}, []
    for model in args.models:
        norm = CONFIGS[model]["normalize"]
        (x_train, y_train), test = train_set.arrays(normalize=norm), test_set.arrays(normalize=norm)
        data = (x_train[: args.limit], y_train[: args.limit], *test)  # limit None: everything
        print(f"\n== {model} (inputs {'standardized' if norm else 'in [0, 1]'})", flush=True)
        all_results[model] = run_model(model, trainers, data, args.epochs, args.seed, args.device, args.rounds)
    for model in args.models:
        warnings += report(model, all_results[model], args.epochs, args.rounds)
    if warnings:
        print("\nWARNING: the machine looked busy during some runs (marked *); their timings are unreliable:")
        print("\n".join("  " + w for w in warnings))
    if args.json:
        Path(args.json).write_text(json.dumps(all_results, indent=1))


if __name__ == "__main__":
    main()
