"""The benchmark's peers (benchmarks/peers.py) train the model picograd trains: the hand-written numpy peer's
SGD with momentum follows picograd's optim.SGD (PyTorch's form) step for step, and so do the torch and jax
peers where installed. A tiny random problem, no dataset needed."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import picograd as pg
from picograd import nn, optim
from picograd.nn import functional as F

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import peers  # noqa: E402

BATCH, STEPS = 32, 8


def _problem() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH * STEPS + 5, 784), dtype=np.float32)  # +5: the dropped partial batch
    y = (x @ rng.standard_normal((784, 10), dtype=np.float32)).argmax(1)  # a learnable labelling
    return x, y, x[:64], y[:64]


def _picograd_losses(momentum: float, x: np.ndarray, y: np.ndarray) -> list[float]:
    """784-128-10 from the peers' initial weights, trained by picograd's SGD on the peers' batch order."""
    sizes = peers.MODELS["mlp"]["sizes"]
    init = peers.init_params(sizes, seed=0)
    first, second = nn.Linear(784, 128), nn.Linear(128, 10)
    first.load_state_dict({"weight": init[0].T, "bias": init[1]})  # peers draw W as (in, out)
    second.load_state_dict({"weight": init[2].T, "bias": init[3]})
    model = nn.Sequential(first, nn.ReLU(), second)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    losses = []
    for idx in peers.batch_orders(len(x), BATCH, seed=0, epoch=0):
        loss = F.cross_entropy(model(pg.Tensor(x[idx], requires_grad=False)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _peer_losses(name: str, momentum: float | None) -> np.ndarray:
    r = peers.PEERS[name]("mlp", *_problem(), epochs=1, batch_size=BATCH, lr=0.1, momentum=momentum, seed=0)
    return np.array(r["losses"])


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_numpy_peer_sgd_matches_picograd(momentum: float) -> None:
    x, y, _, _ = _problem()
    with pg.eager():  # the update rule is what is compared; eager mode skips compiling a program
        ours = _picograd_losses(momentum, x, y)
    theirs = _peer_losses("numpy", momentum)
    assert len(theirs) == STEPS
    # Each loss after the first is computed from the weights the previous updates produced.
    np.testing.assert_allclose(theirs, ours, rtol=1e-5)


def test_momentum_changes_the_run_from_the_second_update_on() -> None:
    # Both forms take buf = g on the first step, so the first two losses agree; after that momentum shows.
    # This is what makes the comparison above sensitive to the momentum update.
    plain, heavy = _peer_losses("numpy", 0.0), _peer_losses("numpy", 0.5)
    np.testing.assert_allclose(plain[:2], heavy[:2], rtol=1e-6)
    assert np.max(np.abs(plain[2:] - heavy[2:]) / plain[2:]) > 1e-3


def test_mlp_defaults_are_the_issue_config() -> None:
    # 784-128-10, SGD lr 0.1 with momentum 0.5 (README, examples/train_mnist.py); Adam takes no momentum.
    assert peers.model_config("mlp", None, None, None) == ((784, 128, 10), "sgd", 0.1, 0.0)
    assert peers.sgd_momentum("mlp", "sgd") == 0.5
    assert peers.sgd_momentum("mlp", "adam") == 0.0
    with pytest.raises(ValueError, match="SGD only"):
        peers.sgd_momentum("mlp", "adam", 0.9)


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_framework_peers_match_the_numpy_peer(name: str) -> None:
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")
    np.testing.assert_allclose(_peer_losses(name, None), _peer_losses("numpy", None), rtol=1e-5)


@pytest.mark.parametrize("model", ["mlp", "seed"])
def test_floor_times_the_gather_and_matmuls_only(model: str) -> None:
    # benchmarks/mnist.py's "BLAS floor" row: a step is the batch gather plus the model's matmuls, nothing learnt
    x, y, xt, yt = _problem()
    r = peers.FLOOR(model, x, y, xt, yt, epochs=2, batch_size=BATCH, seed=0)
    assert len(r["s_per_epoch"]) == 2 and r["ms_per_step"] > 0
    assert np.isnan(r["test_acc"]) and r["losses"] == []
    with pytest.raises(ValueError, match="cpu only"):
        peers.FLOOR(model, x, y, xt, yt, device="cuda")


def test_timed_epochs_times_only_the_steps_and_syncs_around_them() -> None:
    # The loop every trainer shares: batch lists are made off the clock; sync brackets the first step and each epoch.
    events: list[str] = []

    def batches(ep: int) -> list[int]:
        events.append(f"batches{ep}")
        time.sleep(0.05)  # preparing an epoch's order must not count as step time
        return list(range(3))

    def step(b: int) -> float | None:
        events.append(f"step{b}")
        return None if b == 1 else float(b)

    times, first, steps, losses = peers.timed_epochs(2, batches, step, lambda: events.append("sync"))
    assert steps == 3 and len(times) == 2 and all(t < 0.04 for t in times) and 0 <= first <= times[0]
    assert losses == [0.0, 2.0, 0.0, 2.0]  # None results are not losses
    epoch = ["sync", "step0", "step1", "step2", "sync"]
    assert events == ["batches0", "sync", "step0", "sync", "step1", "step2", "sync", "batches1", *epoch]
