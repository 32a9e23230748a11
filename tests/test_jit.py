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
    # a new mode: two agreeing traces (no plain call first: the step ran before), then replays
    assert f.stats["replayed"] == 3
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])  # no dropout in eval(): the same output every call
    model.train()
    a, b = f(x).numpy(), f(x).numpy()
    assert not np.array_equal(a, b)  # dropout again, a fresh mask each call
    assert f.stats["replayed"] == 4  # back in train(): one trace agrees with its train() plan, which replays


def test_returned_arguments_and_state_are_this_calls() -> None:
    """A returned tensor the program doesn't compute is what the Python would return: this call's argument (not
    the traced call's), a view sharing it, or a state tensor's current value."""
    w = pg.Tensor(np.zeros(2, np.float32), requires_grad=False)

    @pg.jit
    def f(x: pg.Tensor) -> tuple:
        return x, x + 0, x.reshape(x.shape), w

    for i in range(6):
        w.assign(np.full(2, -i, np.float32))  # changed outside the step
        x = pg.Tensor(np.full(2, i, np.float32))
        a, b, c, d = f(x)
        assert a is x and d is w
        for t, want in ((a, i), (b, i), (c, i), (d, -i)):
            np.testing.assert_array_equal(t.numpy(), np.full(2, want))
    assert f.stats["replayed"] == 3


@pytest.mark.parametrize("n", [16, 1 << 18])  # 1 << 18: big enough to be written over its old array (replay.REUSE_MIN)
def test_replayed_gradients_are_bound_as_backward_binds_them(n: int) -> None:
    """Each replay binds a tensor holding the new gradient to .grad, as backward() does: a gradient kept from an
    earlier call keeps its value, and one zeroed outside the step (set to None) is set again."""
    w = pg.Tensor(np.ones(n, np.float32), requires_grad=True)
    opt = optim.SGD([w], lr=0.0)

    @pg.jit
    def step(x: pg.Tensor) -> pg.Tensor:
        opt.zero_grad()
        loss = (w * x).sum()
        loss.backward()
        opt.step()
        return loss

    held = []
    for i in range(6):
        step(pg.Tensor(np.full(n, float(i), np.float32)))
        held.append(w.grad)
    assert step.stats["replayed"] == 3
    assert [float(g.numpy()[0]) for g in held] == [0, 1, 2, 3, 4, 5]
    assert len({id(g) for g in held}) == 6

    v = pg.Tensor(np.ones(n, np.float32), requires_grad=True)
    opt2 = optim.SGD([v], lr=0.0)

    @pg.jit
    def outside(x: pg.Tensor) -> pg.Tensor:
        loss = (v * x).sum()
        loss.backward()
        opt2.step()
        return loss

    for i in range(6):
        opt2.zero_grad()
        outside(pg.Tensor(np.full(n, float(i), np.float32)))
        assert v.grad is not None and float(v.grad.numpy()[0]) == i
    assert outside.stats["replayed"] == 3
    # not zeroed now: the Python adds to the gradient, so the call is not replayed from None
    outside(pg.Tensor(np.full(n, 10.0, np.float32)))
    assert float(v.grad.numpy()[0]) == 15.0


def test_argument_gradients_are_set() -> None:
    @pg.jit
    def f(x: pg.Tensor) -> pg.Tensor:
        loss = (x * x * x).sum()
        loss.backward()
        return loss

    for i in range(5):
        x = pg.Tensor(np.full(2, float(i), np.float32), requires_grad=True)
        f(x)
        np.testing.assert_array_equal(x.grad.numpy(), np.full(2, 3.0 * i * i))
    assert f.stats["replayed"] == 2


def test_reloading_the_optimizer_advances_it_once() -> None:
    """A state tensor replaced from outside (load_state_dict) makes the call trace again; the host actions (the
    step count, Adam's bias corrections) of the abandoned replay must not run as well."""

    def run(use_jit: bool) -> tuple[int, np.ndarray]:
        w = pg.Tensor(np.ones(3, np.float32), requires_grad=True)
        opt = optim.Adam([w], lr=0.1)

        def step(x: pg.Tensor) -> pg.Tensor:
            opt.zero_grad()
            loss = (w * x).sum()
            loss.backward()
            opt.step()
            return loss

        f = pg.jit(step) if use_jit else step
        for i in range(8):
            if i == 5:
                opt.load_state_dict(opt.state_dict())
            f(pg.Tensor(np.full(3, i + 1.0, np.float32))).numpy()
        return opt.steps, w.numpy()

    steps, got = run(True)
    want = run(False)[1]
    assert steps == 8
    np.testing.assert_array_equal(got, want)


def test_jit_on_a_method_traces_per_instance() -> None:
    import gc
    import weakref

    class Scaler:
        def __init__(self, k: float) -> None:
            self.w = pg.Tensor(np.full(2, k, np.float32), requires_grad=False)

        @pg.jit
        def apply(self, x: pg.Tensor) -> pg.Tensor:
            return x * self.w

    a, b = Scaler(2.0), Scaler(3.0)
    for i in range(5):
        x = pg.Tensor(np.full(2, float(i), np.float32))
        np.testing.assert_array_equal(a.apply(x).numpy(), np.full(2, 2.0 * i))
        np.testing.assert_array_equal(b.apply(x).numpy(), np.full(2, 3.0 * i))
    assert a.apply.stats["replayed"] == 2 and b.apply.stats["replayed"] == 2
    gone = weakref.ref(a)
    del a
    gc.collect()
    assert gone() is None  # its traces don't keep it alive
    assert len(Scaler.apply._per_instance) == 1


def test_tensors_in_containers_are_arguments() -> None:
    """Tensors in a tuple, list or dict argument are keyed by shape like top-level ones: replayed, one trace, and
    no call's arguments kept alive."""
    import gc
    import weakref

    @pg.jit
    def f(pair: tuple, d: dict, scale: float) -> pg.Tensor:
        return (pair[0] + pair[1]) * d["k"] * scale

    kept = []
    for i in range(6):
        a = pg.Tensor(np.full(2, float(i), np.float32))
        out = f((a, np.ones(2, np.float32)), {"k": pg.Tensor(np.full(2, 2.0, np.float32))}, 0.5)
        np.testing.assert_array_equal(out.numpy(), np.full(2, i + 1.0))
        kept.append(weakref.ref(a))
        del a
    gc.collect()
    assert f.stats["replayed"] == 3 and len(f._entries) == 1
    assert sum(r() is not None for r in kept) <= 1  # at most the traced call's argument, held by its plan


def test_epoch_loop_finds_its_traces_again() -> None:
    """train() / eval() each epoch: after the first epoch, the first call of each mode is traced and agrees with the
    plan made for that mode before, so the next calls replay (an eval run twice per epoch replays too)."""

    def run(use_jit: bool) -> tuple[list, pg.jit | None, pg.jit | None]:
        model = _model(dropout=0.3)
        opt = optim.SGD(model.parameters(), lr=0.1)
        train_step, evaluate = _step_fn(model, opt), lambda x: model(x) * 1.0
        if use_jit:
            train_step, evaluate = pg.jit(train_step), pg.jit(evaluate)
        seen = []
        batches = _batches(5)
        for _ in range(3):
            model.train()
            seen += [train_step(pg.Tensor(x), pg.Tensor(y)).item() for x, y in batches]
            model.eval()
            seen += [evaluate(pg.Tensor(x)).numpy() for x, _ in batches[:2]]
        return seen, train_step, evaluate

    want, _, _ = run(False)
    got, train_step, evaluate = run(True)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    # epoch 1: plain, 2 traces, 2 replays; epochs 2 and 3: 1 trace, 4 replays each
    assert train_step.stats == {"plain": 1, "traced": 4, "replayed": 10}
    # epoch 1: plain, trace; epochs 2 and 3: a trace agreeing with epoch 1's, a replay
    assert evaluate.stats == {"plain": 1, "traced": 3, "replayed": 2}
