"""picograd.jit: a replayed step gives exactly what running its Python gives, and refuses (with a warning,
still correct) the steps it cannot replay."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import picograd as pg
from picograd import nn, optim
from picograd.nn import functional as F

SIZES = (20, 16, 5)


def _model(dropout: float = 0.0) -> nn.Sequential:
    pg.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(SIZES[0], SIZES[1]), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(SIZES[1], SIZES[2]))


def _batches(n: int, batch: int = 8, seed: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((batch, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[2], batch)) for _ in range(n)
    ]


def _step_fn(model: nn.Module, opt: optim.Optimizer):  # noqa: ANN202
    """The usual training step: zero_grad, forward, backward, update; returns the loss."""

    def step(x: pg.Tensor, y: pg.Tensor) -> pg.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def _train(make_opt, steps: int, use_jit: bool, dropout: float = 0.0, hook=None, batch: int = 8):  # noqa: ANN001
    model = _model(dropout)
    opt = make_opt(model.parameters())
    step = _step_fn(model, opt)
    fn = pg.jit(step) if use_jit else step
    losses = []
    for i, (x, y) in enumerate(_batches(steps, batch)):
        if hook is not None:
            hook(i, model, opt)
        loss = fn(pg.Tensor(x), pg.Tensor(y))
        losses.append(loss.item())
    params = [p.numpy() for p in model.parameters()]
    grads = [p.grad.numpy() for p in model.parameters()]
    return losses, params, grads, fn


OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.1),
    "sgd_momentum": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.5, dampening=0.1, weight_decay=1e-3),
    "adam": lambda ps: optim.Adam(ps, lr=1e-2),
    "adamw": lambda ps: optim.AdamW(ps, lr=1e-2),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_replay_equals_running_the_python(name: str, dropout: float) -> None:
    want = _train(OPTIMIZERS[name], 8, False, dropout)
    got = _train(OPTIMIZERS[name], 8, True, dropout)
    np.testing.assert_array_equal(got[0], want[0])  # the same program on the same inputs: bit for bit
    for g, w in zip(got[1] + got[2], want[1] + want[2], strict=True):
        np.testing.assert_array_equal(g, w)
    assert got[3].stats == {"plain": 1, "traced": 2, "replayed": 5}


def test_learning_rate_and_loaded_weights_are_seen_by_replays() -> None:
    def hook(i: int, model: nn.Module, opt: optim.Optimizer) -> None:
        if i == 5:
            opt.lr = 0.01  # a runtime scalar: the replay reads the optimizer's current value
        if i == 6:
            opt.param_groups[0]["lr"] = 0.05
        if i == 7:  # replaced from outside the step: the replay must read the new values
            model.load_state_dict({k: v * 0.5 for k, v in model.state_dict().items()})

    want = _train(OPTIMIZERS["adam"], 10, False, hook=hook)
    got = _train(OPTIMIZERS["adam"], 10, True, hook=hook)
    np.testing.assert_array_equal(got[0], want[0])
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_array_equal(g, w)
    assert got[3].stats["replayed"] == 7


def test_new_argument_shapes_trace_again() -> None:
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    step = pg.jit(_step_fn(model, opt))

    for batch in (8, 8, 8, 8, 3, 3, 3, 3, 8):
        x, y = _batches(1, batch)[0]
        step(x, y)  # numpy arguments are fine too
    assert step.stats == {"plain": 2, "traced": 4, "replayed": 3}
    step.reset()
    step(*_batches(1, 8)[0])
    assert step.stats["plain"] == 3


def test_returns_structures_realized() -> None:
    w = pg.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)

    @pg.jit
    def f(x: pg.Tensor, scale: float) -> tuple:
        y = (x @ w.T) * scale
        return y, {"sum": y.sum()}, "tag"

    for i in range(5):
        x = np.full((4, 3), i, np.float32)
        y, d, tag = f(pg.Tensor(x), 2.0)
        assert y.node.buffer is not None and d["sum"].node.buffer is not None and tag == "tag"
        np.testing.assert_allclose(y.numpy(), 2.0 * x @ w.numpy().T)
        np.testing.assert_allclose(d["sum"].item(), (2.0 * x @ w.numpy().T).sum())
    assert f.stats["replayed"] == 2


def test_realizing_inside_is_not_replayed() -> None:
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    seen = []

    @pg.jit
    def step(x: pg.Tensor, y: pg.Tensor) -> pg.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        seen.append(loss.item())  # realizes inside: the Python must run every time
        return loss

    with pytest.warns(RuntimeWarning, match="realized 2 times"):
        for x, y in _batches(6):
            step(pg.Tensor(x), pg.Tensor(y))
    assert len(seen) == 6 and step.stats["replayed"] == 0
    want = _train(lambda ps: optim.SGD(ps, lr=0.1), 6, False)
    np.testing.assert_allclose(seen, want[0], rtol=1e-6)


def test_data_made_inside_that_changes_is_not_frozen() -> None:
    rng = np.random.default_rng(0)
    w = pg.Tensor(np.ones((3,), np.float32), requires_grad=False)
    outs = []

    @pg.jit
    def f(x: pg.Tensor) -> pg.Tensor:
        noise = pg.Tensor(rng.standard_normal(3).astype(np.float32))  # different every call
        return x * w + noise

    with pytest.warns(RuntimeWarning, match="changes between calls"):
        for _ in range(6):
            x = np.ones(3, np.float32)
            outs.append(f(pg.Tensor(x)).numpy())
    assert f.stats["replayed"] == 0
    assert len({tuple(o) for o in outs}) == 6  # every call saw fresh noise

    const = pg.Tensor(np.full(3, 2.0, np.float32))

    @pg.jit
    def g(x: pg.Tensor) -> pg.Tensor:
        return x * pg.Tensor(np.full(3, 2.0, np.float32)) + const  # made inside, but the same every call

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(6):
            np.testing.assert_array_equal(g(pg.Tensor(np.full(3, i, np.float32))).numpy(), np.full(3, 2.0 * i + 2))
    assert g.stats["replayed"] == 3


def test_accumulating_gradients_is_not_replayed() -> None:
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.1)

    @pg.jit
    def step(x: pg.Tensor, y: pg.Tensor) -> pg.Tensor:
        loss = F.cross_entropy(model(x), y)
        loss.backward()  # no zero_grad(): .grad grows from the last call's tensor
        opt.step()
        return loss

    losses = []
    with pytest.warns(RuntimeWarning, match="zero_grad"):
        for x, y in _batches(6):
            losses.append(step(pg.Tensor(x), pg.Tensor(y)).item())
    assert step.stats["replayed"] == 0
    model2 = _model()
    opt2 = optim.SGD(model2.parameters(), lr=0.1)
    for (x, y), got in zip(_batches(6), losses, strict=True):
        loss = F.cross_entropy(model2(pg.Tensor(x)), pg.Tensor(y))
        loss.backward()
        opt2.step()
        assert loss.item() == got


def test_eager_mode_runs_plainly() -> None:
    w = pg.Tensor(np.ones(3, np.float32))
    f = pg.jit(lambda x: x * w)
    with pg.eager():
        for i in range(5):
            np.testing.assert_array_equal(f(pg.Tensor(np.full(3, i, np.float32))).numpy(), np.full(3, i))
    assert f.stats == {"plain": 5, "traced": 0, "replayed": 0}


def test_unhashable_static_argument_is_a_clear_error() -> None:
    f = pg.jit(lambda x, opts: x)
    with pytest.raises(TypeError, match="picograd.jit: arguments must be"):
        f(pg.Tensor(np.ones(2, np.float32)), {"a": 1})


def test_describe_names_each_input() -> None:
    model = _model(dropout=0.2)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    step = pg.jit(_step_fn(model, opt))

    assert step.describe() == "(not called yet)"
    for x, y in _batches(4):
        step(pg.Tensor(x), pg.Tensor(y))
    text = step.describe()
    assert "replaying" in text and "host effects per call: Adam.step" in text
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("in")]
    kinds = [ln.split(": ", 1)[1] for ln in lines]
    assert sum(k.startswith("argument tensor") for k in kinds) == 2
    assert sum("dropout.seed" in k for k in kinds) == 1
    # 4 parameters + 2 Adam moments each are read as state
    assert sum(k.startswith("current value") for k in kinds) == 12
    assert sum(k.endswith("updated in place") for k in kinds) == 12  # written over when nothing else holds them


def test_train_eval_switch_traces_again() -> None:
    """Dropout on in train(), off in eval(): a trace must never be replayed across the switch."""
    model = _model(dropout=0.5)
    f = pg.jit(lambda x: model(x) * 1.0)
    x = _batches(1)[0][0]
    for _ in range(4):
        f(x)
    assert f.stats["replayed"] == 1
    model.eval()
    outs = [f(x).numpy() for _ in range(4)]  # numpy arguments: a fresh input tensor each call
    assert f.stats["replayed"] == 2
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])  # no dropout in eval(): the same output every call
    model.train()
    a, b = f(x).numpy(), f(x).numpy()
    assert not np.array_equal(a, b)  # dropout again, a fresh mask each call
