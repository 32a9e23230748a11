"""picograd.optim: each optimizer's first steps equal a hand-written numpy reference (lazy and
eager); the update is realized in the same program as forward and backward, and a changing learning
rate or step count leaves that program's structure (its cache key) unchanged."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import picograd as pg
from picograd import nn, optim
from picograd.eager import evaluate
from picograd.ir.node import structural_key
from picograd.nn import functional as F
from picograd.realize import register_backend

RNG = np.random.default_rng(0)
W0 = RNG.standard_normal((3, 4)).astype(np.float32)
TARGET = RNG.standard_normal((3, 4)).astype(np.float32)
LRS = [0.1, 0.1, 0.05, 0.02]  # the rate changes mid-run: a runtime scalar


def _grad(w: np.ndarray) -> np.ndarray:
    return np.tanh(w) - TARGET  # gradient of the loss below


def _loss(w: pg.Tensor) -> pg.Tensor:
    # d/dw of log(cosh(w)) is tanh(w): a non-quadratic loss, so later steps see new gradients.
    return ((w.exp() + (-w).exp()) * 0.5).log().sum() - (w * pg.Tensor(TARGET)).sum()


def sgd_ref(lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False) -> Iterator[np.ndarray]:
    w, buf = W0.copy(), None
    for lr_t in LRS:
        g = _grad(w)
        if weight_decay:
            g = g + np.float32(weight_decay) * w
        if momentum:
            buf = g.copy() if buf is None else np.float32(momentum) * buf + np.float32(1 - dampening) * g
            g = g + np.float32(momentum) * buf if nesterov else buf
        w = w - np.float32(lr_t) * g
        yield w


def adam_ref(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False) -> Iterator[np.ndarray]:
    w = W0.copy()
    m, v = np.zeros_like(w), np.zeros_like(w)
    b1, b2 = betas
    for t, lr_t in enumerate(LRS, 1):
        g = _grad(w)
        if weight_decay and not decoupled:
            g = g + np.float32(weight_decay) * w
        if weight_decay and decoupled:
            w = w * np.float32(1 - lr_t * weight_decay)
        m = np.float32(b1) * m + np.float32(1 - b1) * g
        v = np.float32(b2) * v + np.float32(1 - b2) * g * g
        denom = np.sqrt(v) / np.float32(np.sqrt(1 - b2**t)) + np.float32(eps)
        w = w - np.float32(lr_t / (1 - b1**t)) * m / denom
        yield w


CASES = [
    ("SGD", dict(), sgd_ref),
    ("SGD", dict(momentum=0.9), sgd_ref),
    ("SGD", dict(momentum=0.8, dampening=0.3, weight_decay=0.01), sgd_ref),
    ("SGD", dict(momentum=0.9, nesterov=True, weight_decay=0.1), sgd_ref),
    ("Adam", dict(), adam_ref),
    ("Adam", dict(betas=(0.8, 0.9), eps=1e-3, weight_decay=0.1), adam_ref),
    ("AdamW", dict(), lambda lr, **kw: adam_ref(lr, weight_decay=1e-2, decoupled=True, **kw)),
    ("AdamW", dict(weight_decay=0.5), lambda lr, **kw: adam_ref(lr, decoupled=True, **kw)),
]


@pytest.mark.parametrize("eager", [False, True], ids=["lazy", "eager"])
@pytest.mark.parametrize("name, kw, ref", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_first_steps_match_numpy_reference(name, kw, ref, eager: bool) -> None:
    with pg.eager(eager):
        w = pg.Tensor(W0, requires_grad=True)
        opt = getattr(optim, name)([w], lr=LRS[0], **kw)
        for lr_t, want in zip(LRS, ref(LRS[0], **kw), strict=True):
            opt.lr = lr_t
            loss = _loss(w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            np.testing.assert_allclose(w.numpy(), want, rtol=1e-5, atol=1e-6)


def test_matches_torch_optimizers() -> None:
    torch = pytest.importorskip("torch")
    for name, kw, _ in CASES:
        w = pg.Tensor(W0, requires_grad=True)
        tw = torch.tensor(W0, requires_grad=True)
        opt, topt = getattr(optim, name)([w], lr=0.1, **kw), getattr(torch.optim, name)([tw], lr=0.1, **kw)
        for _ in range(4):
            loss = _loss(w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            tl = torch.log(torch.cosh(tw)).sum() - (tw * torch.tensor(TARGET)).sum()
            topt.zero_grad()
            tl.backward()
            topt.step()
        np.testing.assert_allclose(w.numpy(), tw.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=f"{name} {kw}")


@pytest.fixture
def programs(monkeypatch) -> list[tuple]:
    """Each realize's (structural key, number of inputs), run by the numpy interpreter."""
    seen: list[tuple] = []

    def record(nodes):
        key, inputs = structural_key(nodes)
        seen.append((key, len(inputs)))
        return evaluate(nodes)

    register_backend("recording", record)
    monkeypatch.setenv("PICOGRAD_BACKEND", "recording")
    return seen


@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1),
    lambda ps: optim.Adam(ps, lr=1e-2),
    lambda ps: optim.AdamW(ps, lr=1e-2),
], ids=["sgd", "adam", "adamw"])
def test_one_program_per_step_with_a_stable_key(programs, make_opt) -> None:
    pg.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.2), nn.Linear(5, 3))
    opt = make_opt(model.parameters())
    x, y = RNG.standard_normal((4, 6)).astype(np.float32), np.array([0, 2, 1, 2])
    for step in range(5):
        opt.lr = 0.1 / (step + 1)  # new lr and bias corrections each step: values, not structure
        loss = F.cross_entropy(model(pg.Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        assert len(programs) == step + 1  # loss, gradients and every update: one realize
        assert all(p.node.op == "buffer" for p in model.parameters())  # history cut: no growth
    assert len({key for key, _ in programs}) == 1  # step 1 included: the same program every step


def test_params_without_grad_are_skipped_and_zero_grad_clears() -> None:
    a, b = pg.Tensor(W0, requires_grad=True), pg.Tensor(W0, requires_grad=True)
    opt = optim.Adam([a, b], lr=0.1)
    (a * a).sum().backward()
    opt.step()
    pg.realize()
    assert not np.allclose(a.numpy(), W0)
    np.testing.assert_array_equal(b.numpy(), W0)
    assert a.grad is not None
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_param_groups_have_their_own_learning_rate() -> None:
    a, b = pg.Tensor(W0, requires_grad=True), pg.Tensor(W0, requires_grad=True)
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    (a.sum() + b.sum()).backward()
    opt.step()
    pg.realize()
    np.testing.assert_allclose(a.numpy(), W0 - 0.1, rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), W0 - 0.5, rtol=1e-6)


def test_state_dict_resumes_exactly(tmp_path) -> None:
    def run(opt, w, steps):
        for _ in range(steps):
            loss = _loss(w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()

    w = pg.Tensor(W0, requires_grad=True)
    opt = optim.Adam([w], lr=0.05)
    run(opt, w, 2)
    path = tmp_path / "opt.npz"
    nn.save({**opt.state_dict(), "w": w.numpy()}, path)
    run(opt, w, 2)
    ck = nn.load(path)
    w2 = pg.Tensor(ck.pop("w"), requires_grad=True)
    opt2 = optim.Adam([w2], lr=1.0)
    opt2.load_state_dict(ck)
    assert opt2.steps == 2 and opt2.lr == 0.05
    run(opt2, w2, 2)
    np.testing.assert_array_equal(w2.numpy(), w.numpy())


@pytest.mark.parametrize("call, exc, match", [
    (lambda: optim.SGD([], lr=0.1), ValueError, "SGD: got an empty parameter list"),
    (lambda: optim.SGD([pg.Tensor(W0)], lr=0.1), ValueError, "requires_grad=True"),
    (lambda: optim.SGD([pg.Tensor(np.arange(3))], lr=0.1), TypeError, "float Tensors, got int64"),
    (lambda: optim.SGD([pg.Tensor(W0, requires_grad=True)], lr=-1.0), ValueError, "invalid learning rate -1.0"),
    (lambda: optim.SGD([pg.Tensor(W0, requires_grad=True)], nesterov=True), ValueError, "nesterov"),
    (lambda: optim.Adam([pg.Tensor(W0, requires_grad=True)], betas=(0.9, 1.0)), ValueError, "betas"),
])
def test_bad_arguments(call, exc, match) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_update_nodes_are_tagged_update_and_float32() -> None:
    w = pg.Tensor(W0, requires_grad=True)
    opt = optim.Adam([w])
    _loss(w).backward()
    opt.step()
    assert w.node.tag == "update" and w.node.dtype == np.float32


# ---- per-parameter step counts (torch keeps state["step"] and the momentum buffer per parameter) ----------
LATE = [
    ("Adam", dict(lr=0.1)),
    ("AdamW", dict(lr=0.1, weight_decay=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.5)),
]


def _late_run(opt, a, b, steps: int, late: int) -> None:
    """steps updates; b gets a gradient only from step `late` on (1-based), a at every step."""
    for i in range(1, steps + 1):
        loss = _loss(a) + ((b * b).sum() if i >= late else 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()


@pytest.mark.parametrize("eager", [False, True], ids=["lazy", "eager"])
@pytest.mark.parametrize("name, kw", LATE, ids=[c[0] for c in LATE])
def test_a_parameter_first_updated_late_counts_its_own_steps(name, kw, eager: bool) -> None:
    # b's first update is its step 1 (Adam's bias corrections, SGD's undamped first momentum step), whatever
    # the optimizer's count: b ends where 3 updates of b alone take it.
    b0 = np.full(3, 2.0, np.float32)
    with pg.eager(eager):
        a, b = pg.Tensor(W0, requires_grad=True), pg.Tensor(b0, requires_grad=True)
        opt = getattr(optim, name)([a, b], **kw)
        _late_run(opt, a, b, 5, late=3)
        alone = pg.Tensor(b0, requires_grad=True)
        opt_alone = getattr(optim, name)([alone], **kw)
        for _ in range(3):
            opt_alone.zero_grad()
            (alone * alone).sum().backward()
            opt_alone.step()
            pg.realize()
    np.testing.assert_allclose(b.numpy(), alone.numpy(), rtol=1e-6)
    assert opt.param_steps == {id(a): 5, id(b): 3} and opt.steps == 5


def test_a_parameter_first_updated_late_matches_hand_computed_values() -> None:
    # b = 2, gradient 2b, b's two updates are its steps 1 and 2.
    b0 = np.full(3, 2.0, np.float32)
    a, b = pg.Tensor(W0, requires_grad=True), pg.Tensor(b0, requires_grad=True)
    opt = optim.SGD([a, b], lr=0.1, momentum=0.9, dampening=0.5)
    _late_run(opt, a, b, 3, late=2)
    # step 1: buf = g = 4 (undamped), b = 2 - 0.4 = 1.6; step 2: buf = 0.9*4 + 0.5*3.2 = 5.2, b = 1.08
    np.testing.assert_allclose(b.numpy(), 1.08, rtol=1e-6)
    a, b = pg.Tensor(W0, requires_grad=True), pg.Tensor(b0, requires_grad=True)
    opt = optim.Adam([a, b], lr=0.1)
    _late_run(opt, a, b, 3, late=2)
    w = b0.astype(np.float64)
    m = v = 0.0
    for t in (1, 2):
        g = 2 * w
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        w = w - 0.1 / (1 - 0.9**t) * m / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(b.numpy(), w, rtol=1e-6)  # ~1.800 (1.858 with the optimizer's count)


@pytest.mark.parametrize("name, kw", LATE, ids=[c[0] for c in LATE])
def test_a_parameter_first_updated_late_matches_torch(name, kw) -> None:
    torch = pytest.importorskip("torch")
    b0 = np.full(3, 2.0, np.float32)
    a, b = pg.Tensor(W0, requires_grad=True), pg.Tensor(b0, requires_grad=True)
    opt = getattr(optim, name)([a, b], **kw)
    _late_run(opt, a, b, 5, late=3)
    ta, tb = torch.tensor(W0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    topt = getattr(torch.optim, name)([ta, tb], **kw)
    for i in range(1, 6):
        tl = torch.log(torch.cosh(ta)).sum() - (ta * torch.tensor(TARGET)).sum()
        if i >= 3:
            tl = tl + (tb * tb).sum()
        topt.zero_grad()
        tl.backward()
        topt.step()
    np.testing.assert_allclose(a.numpy(), ta.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.numpy(), tb.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, kw", LATE, ids=[c[0] for c in LATE])
def test_uneven_step_counts_replay_under_jit(name, kw) -> None:
    # b joins after 2 steps of a alone, so a and b have their own host scalars; replays must advance both
    # counts and recompute both sets of scalars exactly as running the Python does.
    def run(use_jit: bool) -> tuple[list[np.ndarray], Any]:
        a, b = pg.Tensor(W0, requires_grad=True), pg.Tensor(np.full(3, 2.0, np.float32), requires_grad=True)
        opt = getattr(optim, name)([a, b], **kw)
        _late_run(opt, a, b, 2, late=99)

        def step(x: pg.Tensor) -> pg.Tensor:
            opt.zero_grad()
            loss = _loss(a) + (b * b * x).sum()
            loss.backward()
            opt.step()
            return loss

        fn = pg.jit(step) if use_jit else step
        for i in range(6):
            fn(pg.Tensor(np.full(3, 1.0 + 0.1 * i, np.float32))).item()
        assert opt.param_steps == {id(a): 8, id(b): 6}
        return [a.numpy(), b.numpy()], fn

    want, _ = run(False)
    got, fn = run(True)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert fn.stats["replayed"] == 3
    host = [line for line in fn.describe().splitlines() if "host scalar" in line]
    names = {line.split()[-1] for line in host}
    assert names and len(host) == 2 * len(names)  # each scalar twice: one per step count


def test_normal_training_makes_one_set_of_host_scalars() -> None:
    # Every parameter updated every step: one step count, so one scalar per name, as before per-parameter counts.
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    opt = optim.Adam(model.parameters(), lr=1e-2)

    @pg.jit
    def step(x: pg.Tensor, y: pg.Tensor) -> pg.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(4):
        step(pg.Tensor(RNG.standard_normal((5, 4)).astype(np.float32)), pg.Tensor(np.array([0, 1, 1, 0, 1])))
    host = sorted(line.split()[-1] for line in step.describe().splitlines() if "host scalar" in line)
    assert host == ["Adam.inv_sqrt_bc2", "Adam.neg_step_size"]


def test_state_dict_keeps_per_parameter_steps() -> None:
    b0 = np.full(3, 2.0, np.float32)
    a, b = pg.Tensor(W0, requires_grad=True), pg.Tensor(b0, requires_grad=True)
    opt = optim.Adam([a, b], lr=0.1)
    _late_run(opt, a, b, 3, late=3)
    sd = opt.state_dict()
    assert int(sd["steps"]) == 3 and int(sd["param0.step"]) == 3 and int(sd["param1.step"]) == 1
    a2, b2 = pg.Tensor(a.numpy(), requires_grad=True), pg.Tensor(b.numpy(), requires_grad=True)
    opt2 = optim.Adam([a2, b2], lr=0.1)
    opt2.load_state_dict(sd)
    assert opt2.param_steps == {id(a2): 3, id(b2): 1}
    _late_run(opt, a, b, 2, late=1)
    _late_run(opt2, a2, b2, 2, late=1)
    np.testing.assert_array_equal(a2.numpy(), a.numpy())
    np.testing.assert_array_equal(b2.numpy(), b.numpy())
    # A checkpoint without per-parameter counts (older picograd): a parameter with state gets the global count.
    old = {k: v for k, v in sd.items() if not k.endswith(".step")}
    opt3 = optim.Adam([a2, b2], lr=0.1)
    opt3.load_state_dict(old)
    assert opt3.param_steps == {id(a2): 3, id(b2): 3}


# ---- regressions ----------------------------------------------------------------------------------
def test_a_parameter_in_two_groups_is_refused() -> None:
    a = pg.Tensor(np.zeros(2, np.float32), requires_grad=True)
    b = pg.Tensor(np.zeros(2, np.float32), requires_grad=True)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [a, b]}, {"params": [a], "lr": 0.5}], lr=0.1)
    with pytest.raises(ValueError, match="appears more than once"):
        optim.Adam([a, b, a])
    with pytest.raises(ValueError, match="appears more than once"):
        optim.SGD([{"params": [b, b]}], lr=0.1)
    opt = optim.SGD([a], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})
    opt.add_param_group({"params": [b], "lr": 0.5})
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["momentum"] == 0.0
    a.grad = pg.Tensor(np.ones(2, np.float32))
    b.grad = pg.Tensor(np.ones(2, np.float32))
    opt.step()
    pg.realize(a, b)
    np.testing.assert_allclose(a.numpy(), [-0.1, -0.1])
    np.testing.assert_allclose(b.numpy(), [-0.5, -0.5])


@pytest.mark.parametrize("mode", ["lazy", "eager", "jit"])
def test_a_frozen_parameter_is_skipped_then_trained_once_unfrozen(mode: str) -> None:
    """torch's freezing pattern: an optimizer over all of model.parameters(), some set requires_grad=False. Those
    get no gradient, so steps skip them; unfrozen, they train again (and only they count their own steps)."""
    pg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    first = model[0].weight
    first.requires_grad = False
    opt = optim.Adam(model.parameters(), lr=0.1)
    x = pg.Tensor(np.linspace(-1, 1, 20, dtype=np.float32).reshape(5, 4))
    y = pg.Tensor(np.array([0, 1, 1, 0, 1]))

    def step() -> pg.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    run = pg.jit(step) if mode == "jit" else step
    frozen = first.numpy().copy()
    last = model[2].weight.numpy().copy()
    with pg.eager() if mode == "eager" else contextlib.nullcontext():
        for _ in range(4):
            run()
        np.testing.assert_array_equal(first.numpy(), frozen)
        assert first.grad is None and id(first) not in opt.param_steps
        assert not np.array_equal(model[2].weight.numpy(), last)
        first.requires_grad = True
        for _ in range(2):
            run()
    assert not np.array_equal(first.numpy(), frozen)
    assert opt.param_steps[id(first)] == 2 and opt.param_steps[id(model[2].weight)] == 6
