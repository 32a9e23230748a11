"""Peer implementations for the MNIST benchmark: hand-written numpy, PyTorch eager, and jax.jit.

Every peer has the same signature and result dict (see train_numpy), starts from the same
initial weights (drawn with numpy from `seed`) and visits batches in the same order, so loss
curves are comparable across peers and with picograd.

Models: "mlp" = 784-128-10 ReLU trained with SGD (lr 0.1, momentum 0.5); "seed" = 784-800-800-10 ReLU
with Dropout(0.5) after each hidden layer, trained with Adam (lr 1e-3). Both use LogSoftmax + NLL (mean over
batch). Incomplete last batches are dropped so every step has the same shape (jax would recompile otherwise).
Every peer's SGD has PyTorch's momentum form: buf = mu*buf + g (buf = g on the first step), p -= lr*buf.
The "mlp" defaults assume standardized inputs (MNIST.arrays(normalize=True)), as the issue's target
(>= 97.5% after 5 epochs at batch 128) does: plain SGD at lr 0.1 stops at ~97.2-97.5% there, momentum 0.5
(the classic pytorch/examples MNIST setting) gets past it.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

MODELS: dict[str, dict[str, Any]] = {
    "mlp": {"sizes": (784, 128, 10), "optim": "sgd", "lr": 0.1, "momentum": 0.5, "dropout": 0.0},
    "seed": {"sizes": (784, 800, 800, 10), "optim": "adam", "lr": 1e-3, "momentum": 0.0, "dropout": 0.5},
}
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
N_LOSSES = 20  # how many leading step losses each peer reports


def model_config(model: str, optim: str | None, lr: float | None, dropout: float | None) -> tuple:
    """(layer sizes, optim, lr, dropout) with the model's defaults filled in for None."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {sorted(MODELS)}")
    cfg = MODELS[model]
    optim = optim or cfg["optim"]
    if optim not in ("sgd", "adam"):
        raise ValueError(f"unknown optim {optim!r}; choose 'sgd' or 'adam'")
    return (
        cfg["sizes"],
        optim,
        float(cfg["lr"] if lr is None else lr),
        float(cfg["dropout"] if dropout is None else dropout),
    )


def sgd_momentum(model: str, optim: str, momentum: float | None = None) -> float:
    """The SGD momentum a peer uses: the model's default for None; 0 for Adam, which has none."""
    mu = float(MODELS[model]["momentum"] if momentum is None else momentum)
    if optim != "sgd":
        if momentum:
            raise ValueError(f"momentum={momentum} applies to SGD only, not {optim!r}")
        return 0.0
    if mu < 0:
        raise ValueError(f"momentum must be >= 0, got {mu}")
    return mu


def init_params(sizes: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """[W0, b0, W1, b1, ...] float32, W of shape (in, out); torch.nn.Linear's default
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) init, but drawn by numpy so all peers start equal."""
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        bound = 1.0 / np.sqrt(fan_in)
        params.append(rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32))
        params.append(rng.uniform(-bound, bound, fan_out).astype(np.float32))
    return params


def batch_orders(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """(steps, batch_size) int64 indices of one epoch's full batches, shuffled reproducibly per (seed, epoch)."""
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training samples")
    perm = np.random.default_rng((seed, epoch)).permutation(n)
    return perm[: steps * batch_size].reshape(steps, batch_size)


def timed_epochs(
    epochs: int,
    batches: Callable[[int], Iterable[Any]],
    step: Callable[[Any], Any],
    sync: Callable[[], None] = lambda: None,
) -> tuple[list[float], float, int, list[Any]]:
    """The timing loop every trainer shares. Per epoch: `batches(ep)` (made before the clock starts), then
    `step(batch)` for each; `sync()` waits for queued device work and is called before the clock starts, after the
    first step (whose time, compile included, is `first_step`) and before each epoch's time is taken. Returns
    (epoch_times, first_step, steps per epoch, the first N_LOSSES non-None step results)."""
    losses: list[Any] = []
    epoch_times, first_step, steps = [], 0.0, 0
    for ep in range(epochs):
        todo = batches(ep)
        sync()
        t0 = time.perf_counter()
        steps = 0
        for batch in todo:
            loss = step(batch)
            if ep == 0 and steps == 0:
                sync()
                first_step = time.perf_counter() - t0
            if loss is not None and len(losses) < N_LOSSES:
                losses.append(loss)
            steps += 1
        sync()
        epoch_times.append(time.perf_counter() - t0)
    return epoch_times, first_step, steps, losses


def _summarize(epoch_times: list[float], first_step: float, steps: int, losses: list[float], acc: float) -> dict:
    # Epoch 0's per-step time excludes its first step, which carries compile / warm-up cost.
    per_step = [(epoch_times[0] - first_step) / max(steps - 1, 1)] + [t / steps for t in epoch_times[1:]]
    ms = statistics.median(per_step) * 1e3
    return {
        "ms_per_step": ms,
        "s_per_epoch": epoch_times,
        "compile_s": max(0.0, first_step - ms / 1e3),
        "test_acc": acc,
        "losses": losses[:N_LOSSES],
    }


# ---- numpy --------------------------------------------------------------------------------------


def train_numpy(
    model: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float | None = None,
    momentum: float | None = None,
    optim: str | None = None,
    seed: int = 0,
    dropout: float | None = None,
    device: str = "cpu",
) -> dict:
    """Train with a hand-written float32 forward/backward and in-place SGD (with momentum)/Adam updates.

    Returns {"ms_per_step": median over epochs, "s_per_epoch": [...], "compile_s": first-step extra
    time, "test_acc": float, "losses": first 20 step losses}.
    """
    if device != "cpu":
        raise ValueError("the numpy peer only runs on cpu")
    sizes, optim, lr, p = model_config(model, optim, lr, dropout)
    mu = sgd_momentum(model, optim, momentum)
    params = init_params(sizes, seed)
    x_train = np.ascontiguousarray(x_train, dtype=np.float32)
    y_train = np.asarray(y_train, dtype=np.int64)
    grads = [np.empty_like(q) for q in params]
    rng = np.random.default_rng(seed + 1)
    f32 = np.float32
    keep_scale = f32(1.0 / (1.0 - p)) if p > 0 else f32(1)
    inv_b = f32(1.0 / batch_size)
    rows = np.arange(batch_size)
    # Zero-initialized, so mu*buf + g gives buf = g on the first step exactly, as PyTorch's first step does.
    bufs = [np.zeros_like(q) for q in params] if mu else []
    if optim == "adam":
        m = [np.zeros_like(q) for q in params]
        v = [np.zeros_like(q) for q in params]
        tmp = [np.empty_like(q) for q in params]
        b1, b2 = ADAM_BETAS
    t = 0

    def step(xb: np.ndarray, yb: np.ndarray) -> float:
        nonlocal t
        acts = [xb]  # inputs of each Linear layer
        h = xb
        n_layers = len(params) // 2
        for i in range(n_layers):
            h = h @ params[2 * i]
            h += params[2 * i + 1]
            if i < n_layers - 1:
                np.maximum(h, 0, out=h)
                if p > 0:
                    h *= rng.random(h.shape, dtype=np.float32) >= f32(p)
                    h *= keep_scale
                acts.append(h)
        # log-softmax + NLL; grad wrt logits is (softmax - onehot) / B
        h -= h.max(axis=1, keepdims=True)
        e = np.exp(h)
        s = e.sum(axis=1, keepdims=True)
        loss = float(np.log(s[:, 0]).mean() - h[rows, yb].mean())
        e /= s
        e[rows, yb] -= 1
        e *= inv_b
        d = e
        for i in reversed(range(n_layers)):
            np.matmul(acts[i].T, d, out=grads[2 * i])
            d.sum(axis=0, out=grads[2 * i + 1])
            if i > 0:
                d = d @ params[2 * i].T
                # acts[i] > 0 exactly where both ReLU and the dropout mask let the unit through.
                d *= acts[i] > 0
                if p > 0:
                    d *= keep_scale
        t += 1
        if optim == "sgd" and mu:
            for q, g, buf in zip(params, grads, bufs, strict=True):
                buf *= f32(mu)
                buf += g
                np.multiply(buf, f32(lr), out=g)  # g is scratch from here on
                q -= g
        elif optim == "sgd":
            for q, g in zip(params, grads, strict=True):
                g *= f32(lr)
                q -= g
        else:
            bc1, bc2 = 1 - b1**t, 1 - b2**t
            step_size, inv_sqrt_bc2 = f32(lr / bc1), f32(1 / np.sqrt(bc2))
            for q, g, mq, vq, tq in zip(params, grads, m, v, tmp, strict=True):
                mq *= f32(b1)
                mq += f32(1 - b1) * g
                vq *= f32(b2)
                np.multiply(g, g, out=g)
                g *= f32(1 - b2)
                vq += g
                # torch's formula: p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
                np.sqrt(vq, out=tq)
                tq *= inv_sqrt_bc2
                tq += f32(ADAM_EPS)
                np.divide(mq, tq, out=tq)
                tq *= step_size
                q -= tq
        return loss

    def predict(x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, dtype=np.float32)
        for i in range(len(params) // 2):
            h = h @ params[2 * i] + params[2 * i + 1]
            if i < len(params) // 2 - 1:
                np.maximum(h, 0, out=h)
        return h.argmax(axis=1)

    epoch_times, first_step, steps, losses = timed_epochs(
        epochs,
        lambda ep: batch_orders(len(x_train), batch_size, seed, ep),
        lambda idx: step(x_train[idx], y_train[idx]),
    )
    acc = float(np.mean(np.concatenate([predict(x_test[i : i + 1000]) for i in range(0, len(x_test), 1000)]) == y_test))
    return _summarize(epoch_times, first_step, steps, losses, acc)


# ---- torch --------------------------------------------------------------------------------------


def train_torch(
    model: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float | None = None,
    momentum: float | None = None,
    optim: str | None = None,
    seed: int = 0,
    dropout: float | None = None,
    device: str = "cpu",
) -> dict:
    """PyTorch eager, float32, torch.optim.SGD/Adam, all CPU threads. Raises ImportError without torch."""
    import torch
    import torch.nn.functional as F

    sizes, optim, lr, p = model_config(model, optim, lr, dropout)
    mu = sgd_momentum(model, optim, momentum)
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(seed)
    dev = torch.device(device)
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    layers = []
    init = init_params(sizes, seed)
    for w, b in zip(init[0::2], init[1::2], strict=True):
        lin = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
    mods: list[torch.nn.Module] = []
    for i, lin in enumerate(layers):
        mods.append(lin)
        if i < len(layers) - 1:
            mods.append(torch.nn.ReLU())
            if p > 0:
                mods.append(torch.nn.Dropout(p))
    net = torch.nn.Sequential(*mods).to(dev)
    if optim == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=mu)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    xt = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)).to(dev)
    yt = torch.from_numpy(np.asarray(y_train, dtype=np.int64)).to(dev)

    def one(i: Any) -> Any:
        loss = F.nll_loss(F.log_softmax(net(xt[i]), dim=1), yt[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()  # .item() here would sync every step on cuda

    net.train()
    epoch_times, first_step, steps, losses = timed_epochs(
        epochs, lambda ep: torch.from_numpy(batch_orders(len(x_train), batch_size, seed, ep)).to(dev), one, sync
    )
    net.eval()
    with torch.no_grad():
        pred = net(torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32)).to(dev)).argmax(1).cpu().numpy()
    acc = float(np.mean(pred == np.asarray(y_test)))
    return _summarize(epoch_times, first_step, steps, [float(v) for v in losses], acc)


# ---- jax ----------------------------------------------------------------------------------------


def train_jax(
    model: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float | None = None,
    momentum: float | None = None,
    optim: str | None = None,
    seed: int = 0,
    dropout: float | None = None,
    device: str = "cpu",
) -> dict:
    """A jax.jit-compiled train step (gather, forward, grad, SGD/Adam by hand), params donated.
    Raises ImportError without jax. device: "cpu" or "cuda"/"gpu"."""
    import jax
    import jax.numpy as jnp

    sizes, optim, lr, p = model_config(model, optim, lr, dropout)
    mu = sgd_momentum(model, optim, momentum)
    dev = jax.devices("gpu" if device in ("cuda", "gpu") else device)[0]
    put = lambda a: jax.device_put(a, dev)
    params = [put(q) for q in init_params(sizes, seed)]
    zeros = lambda: [put(np.zeros_like(q)) for q in params]
    # SGD's state is the momentum buffers (zeros, so the first step's buf is g exactly); Adam's is (m, v, t).
    state: tuple = (zeros(), zeros(), put(np.int32(0))) if optim == "adam" else (zeros(),) if mu else ()
    xt = put(np.ascontiguousarray(x_train, dtype=np.float32))
    yt = put(np.asarray(y_train, dtype=np.int32))
    n_layers = len(params) // 2
    b1, b2 = ADAM_BETAS

    def forward(ps: list, x: Any, key: Any | None) -> Any:
        for i in range(n_layers):
            x = x @ ps[2 * i] + ps[2 * i + 1]
            if i < n_layers - 1:
                x = jax.nn.relu(x)
                if p > 0 and key is not None:
                    keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1 - p, x.shape)
                    x = jnp.where(keep, x / (1 - p), 0.0)
        return x

    def loss_fn(ps: list, x: Any, y: Any, key: Any) -> Any:
        logp = jax.nn.log_softmax(forward(ps, x, key), axis=1)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def train_step(ps: list, st: tuple, x_all: Any, y_all: Any, order: Any, b: Any, key: Any) -> tuple:
        # Gathering inside the jit keeps the whole step one dispatch with no host->device copy.
        idx = jax.lax.dynamic_index_in_dim(order, b, keepdims=False)
        loss, g = jax.value_and_grad(loss_fn)(ps, x_all[idx], y_all[idx], jax.random.fold_in(key, b))
        if optim == "sgd" and mu:
            bufs = [mu * bq + gq for bq, gq in zip(st[0], g, strict=True)]
            return [q - lr * bq for q, bq in zip(ps, bufs, strict=True)], (bufs,), loss
        if optim == "sgd":
            ps = [q - lr * gq for q, gq in zip(ps, g, strict=True)]
            return ps, st, loss
        m, v, t = st
        t = t + 1
        m = [b1 * mq + (1 - b1) * gq for mq, gq in zip(m, g, strict=True)]
        v = [b2 * vq + (1 - b2) * gq * gq for vq, gq in zip(v, g, strict=True)]
        bc1 = 1 - b1 ** t.astype(jnp.float32)
        bc2 = 1 - b2 ** t.astype(jnp.float32)
        ps = [q - (lr / bc1) * mq / (jnp.sqrt(vq / bc2) + ADAM_EPS) for q, mq, vq in zip(ps, m, v, strict=True)]
        return ps, (m, v, t), loss

    step = jax.jit(train_step, donate_argnums=(0, 1))
    predict = jax.jit(lambda ps, x: jnp.argmax(forward(ps, x, None), axis=1))
    base_key = jax.random.PRNGKey(seed)

    def batches(ep: int) -> Iterable[tuple]:
        order = put(batch_orders(len(x_train), batch_size, seed, ep).astype(np.int32))
        key = jax.random.fold_in(base_key, ep)
        return [(order, b, key) for b in range(len(order))]

    def one(batch: tuple) -> Any:
        nonlocal params, state
        params, state, loss = step(params, state, xt, yt, *batch)
        return loss  # kept on device; converting would sync every step

    epoch_times, first_step, steps, losses = timed_epochs(epochs, batches, one, lambda: jax.block_until_ready(params))
    pred = np.asarray(predict(params, put(np.ascontiguousarray(x_test, dtype=np.float32))))
    acc = float(np.mean(pred == np.asarray(y_test)))
    return _summarize(epoch_times, first_step, steps, [float(v) for v in losses], acc)


# ---- the floor -----------------------------------------------------------------------------------


def train_floor(
    model: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """Not a trainer: the part of a step no trainer following this benchmark's protocol avoids. Per step it
    gathers the batch from the training arrays, as every trainer here does, and runs the step's matrix products
    with numpy's BLAS into preallocated outputs: each layer's forward product and weight gradient and, but for
    the first layer's, its input gradient; nothing else (no activations, loss, optimizer or framework). Its
    ms/step is the "BLAS floor" the issue's targets were set against, measured in the same run as the trainers,
    so a busy machine moves both. It learns nothing: test_acc is NaN."""
    del x_test, y_test, lr  # same signature as the peers
    if device != "cpu":
        raise ValueError("the floor is measured on cpu only")
    sizes = MODELS[model]["sizes"]
    x_train = np.ascontiguousarray(x_train, dtype=np.float32)
    y_train = np.asarray(y_train, dtype=np.int64)
    rng = np.random.default_rng(seed)
    pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
    ws = [rng.standard_normal(shape, dtype=np.float32) for shape in pairs]
    gs = [rng.standard_normal((batch_size, fan_out), dtype=np.float32) for _, fan_out in pairs]  # output grads
    hs = [np.empty((batch_size, fan_out), np.float32) for _, fan_out in pairs]  # forward products
    dws = [np.empty(shape, np.float32) for shape in pairs]
    dhs = [np.empty((batch_size, fan_in), np.float32) for fan_in, _ in pairs]

    def step(x: np.ndarray) -> None:
        h = x
        for w, out in zip(ws, hs, strict=True):
            np.matmul(h, w, out=out)
            h = out
        for i in range(len(ws)):
            np.matmul((x if i == 0 else hs[i - 1]).T, gs[i], out=dws[i])
            if i > 0:
                np.matmul(gs[i], ws[i].T, out=dhs[i])

    def one(idx: np.ndarray) -> None:
        x, _ = x_train[idx], y_train[idx]
        step(x)

    epoch_times, first_step, steps, _ = timed_epochs(
        epochs, lambda ep: batch_orders(len(x_train), batch_size, seed, ep), one
    )
    return _summarize(epoch_times, first_step, steps, [], float("nan"))


PEERS: dict[str, Callable[..., dict]] = {"numpy": train_numpy, "torch": train_torch, "jax": train_jax}
FLOOR = train_floor  # benchmarks/mnist.py's "floor" row


def available_peers() -> list[str]:
    """Names of peers whose framework is importable (checked without importing it)."""
    return ["numpy"] + [name for name in ("torch", "jax") if importlib.util.find_spec(name) is not None]


if __name__ == "__main__":
    # Smoke run: 1 epoch of each available peer on the mlp model.
    import argparse
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from picograd.datasets import MNIST

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mlp", choices=sorted(MODELS))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--peers", nargs="*", default=None)
    args = ap.parse_args()
    xtr, ytr = MNIST(train=True).arrays(normalize=True)
    xte, yte = MNIST(train=False).arrays(normalize=True)
    for name in args.peers or available_peers():
        kw = dict(epochs=args.epochs, batch_size=args.batch_size, seed=0, device=args.device)
        r = PEERS[name](args.model, xtr, ytr, xte, yte, **kw)
        print(
            f"{name:6s} {r['ms_per_step']:7.3f} ms/step  compile {r['compile_s']:.3f}s  "
            f"epochs {[round(s, 2) for s in r['s_per_epoch']]}s  acc {r['test_acc']:.4f}  "
            f"loss0 {r['losses'][0]:.4f} loss19 {r['losses'][-1]:.4f}",
            flush=True,
        )
