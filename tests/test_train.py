"""Training end to end: a short MNIST run reaches a stated accuracy, lazy and eager runs give the same
losses step for step, checkpoints restore a trained model, and examples/train_mnist.py runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import picograd as pg
from picograd import nn, optim
from picograd.datasets import MNIST, DataLoader
from picograd.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent


def _mnist(n_train: int, n_test: int) -> tuple[np.ndarray, ...]:
    try:
        xtr, ytr = MNIST(train=True, download=False).arrays(normalize=True)
        xte, yte = MNIST(train=False, download=False).arrays(normalize=True)
    except FileNotFoundError as e:
        pytest.skip(f"MNIST not available (set PICOGRAD_DATA): {str(e).splitlines()[0]}")
    return xtr[:n_train], ytr[:n_train], xte[:n_test], yte[:n_test]


def _mlp(sizes: tuple[int, ...], dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
    return nn.Sequential(*layers)


def _step(model: nn.Module, opt: optim.Optimizer, x: np.ndarray, y: np.ndarray) -> float:
    loss = F.cross_entropy(model(pg.Tensor(x, requires_grad=False)), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    acc = float((model(pg.Tensor(x)).argmax(1).numpy() == y).mean())
    model.train()
    return acc


def test_200_steps_on_2000_samples_reach_85_percent(tmp_path) -> None:
    xtr, ytr, xte, yte = _mnist(2000, 1000)
    pg.manual_seed(0)
    model = _mlp((784, 128, 10))
    opt = optim.SGD(model.parameters(), lr=0.1)
    # Batch 128 and a 1000-image evaluation: the same programs as the example script's test below.
    loader = DataLoader((xtr, ytr), batch_size=128, shuffle=True, seed=0, drop_last=True, numpy=True)
    losses: list[float] = []
    while len(losses) < 200:
        for xb, yb in loader:
            losses.append(_step(model, opt, xb, yb))
            if len(losses) == 200:
                break
    acc = _accuracy(model, xte, yte)
    # Measured 88.0-88.9% over seeds 0-2 (held-out test images); chance is 10%.
    assert acc >= 0.85, acc
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])

    # The checkpoint restores the trained model exactly, into a fresh one with other weights.
    path = tmp_path / "mlp.npz"
    nn.save(model.state_dict(), path)
    pg.manual_seed(1)
    fresh = _mlp((784, 128, 10))
    fresh.load_state_dict(nn.load(path))
    np.testing.assert_array_equal(fresh(pg.Tensor(xte)).numpy(), model(pg.Tensor(xte)).numpy())


@pytest.mark.parametrize("dropout", [0.0, 0.5], ids=["no-dropout", "dropout"])
def test_lazy_and_eager_losses_agree_for_20_steps(dropout: float) -> None:
    # The seed's architecture (narrower, to keep CI fast) and optimizer on random data (no dataset needed).
    # The dropout masks come from the counter RNG in both modes, so with dropout on the runs agree too.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 64, 784)).astype(np.float32)
    y = (x @ rng.standard_normal((784, 10)).astype(np.float32)).argmax(-1)  # a learnable labelling
    runs = []
    for eager in (False, True):
        pg.manual_seed(0)
        with pg.eager(eager):
            model = _mlp((784, 256, 256, 10), dropout)
            opt = optim.Adam(model.parameters(), lr=1e-3)
            runs.append([_step(model, opt, x[i], y[i]) for i in range(20)])
    lazy, eager_ = np.array(runs[0]), np.array(runs[1])
    np.testing.assert_allclose(lazy, eager_, rtol=1e-4)
    if not dropout:
        assert lazy[-5:].mean() < lazy[:5].mean()  # it learns


@pytest.mark.parametrize("extra", [[], ["--no-jit"], ["--eager", "--optim", "adam", "--lr", "0.001"]],
                         ids=["lazy", "no-jit", "eager"])
def test_example_script_runs(tmp_path, extra: list[str]) -> None:
    _mnist(1, 1)  # skips without the data
    ck = tmp_path / "ck_{model}.npz"
    cmd = [sys.executable, str(ROOT / "examples" / "train_mnist.py"), "--model", "mlp", "--epochs", "1",
           "--limit", "1024", "--checkpoint", str(ck), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "epoch  1  train loss" in out.stdout and "test acc" in out.stdout, out.stdout
    if not extra:  # the MLP config is the default (README states it)
        assert "784-128-10, sgd lr 0.1 momentum 0.5, batch 128" in out.stdout, out.stdout
        assert "picograd.jit" in out.stdout, out.stdout
    state = nn.load(tmp_path / "ck_mlp.npz")
    assert sorted(state) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert state["0.weight"].shape == (128, 784) and state["0.weight"].dtype == np.float32


def test_example_script_rejects_momentum_without_sgd() -> None:
    cmd = [sys.executable, str(ROOT / "examples" / "train_mnist.py"), "--model", "mlp", "--optim", "adam",
           "--momentum", "0.9"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--momentum applies to --optim sgd only" in out.stderr, out.stderr[-2000:]


def test_benchmark_script_runs_every_picograd_trainer(tmp_path) -> None:
    _mnist(1, 1)  # skips without the data
    js = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "mnist.py"), "--models", "mlp", "--epochs", "1", "--limit",
           "1280", "--trainers", "lazy", "plain", "eager", "numpy", "floor", "--json", str(js)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(js.read_text())["mlp"]
    assert sorted(res) == ["eager", "floor", "lazy", "numpy", "plain"], out.stdout
    # same initial weights and batches: the same losses, whatever runs them
    np.testing.assert_allclose(res["lazy"]["losses"], res["plain"]["losses"], rtol=1e-6)
    np.testing.assert_allclose(res["lazy"]["losses"], res["numpy"]["losses"], rtol=1e-4)
    assert "picograd lazy" in out.stdout and "picograd no-jit" in out.stdout
    assert "BLAS floor" in out.stdout and "/floor" in out.stdout
