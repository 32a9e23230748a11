"""In-place state updates under picograd.jit: the program writes a parameter's (or optimizer state's) new value
over its old array when nothing else can see the old one, and over a copy otherwise. Every test here would
see a wrong number if an update were done in place when it must not be."""

from __future__ import annotations

import numpy as np
import pytest
from test_jit import _step_fn  # the usual training step

import picograd as pg
from picograd import nn, optim
from picograd.codegen.in_place import writable_in_place
from picograd.codegen.schedule import schedule
from picograd.ir import build as B
from picograd.ir.node import Buffer, buffer_node
from picograd.refcount import calibrate


def _address(t: pg.Tensor) -> int:
    return t.node.buffer.data.__array_interface__["data"][0]


def _mlp_step(opt_name: str = "adam"):  # noqa: ANN202
    pg.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = (
        optim.Adam(model.parameters(), lr=1e-2)
        if opt_name == "adam"
        else optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    )

    step = pg.jit(_step_fn(model, opt))
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((8, 12)).astype(np.float32), rng.integers(0, 4, 8)) for _ in range(12)]
    return model, opt, step, batches


def test_calibration_found_both_layouts() -> None:
    plain, view = calibrate()
    assert plain is not None and view is not None and plain != view


@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
def test_replays_update_parameters_in_their_own_arrays(opt_name: str) -> None:
    model, opt, step, batches = _mlp_step(opt_name)
    for x, y in batches[:4]:
        step(x, y)
    addresses = [_address(p) for p in model.parameters()]
    for x, y in batches[4:8]:
        step(x, y)
    assert step.stats["replayed"] == 5
    assert [_address(p) for p in model.parameters()] == addresses
    plan = next(iter(step._entries.values())).plan
    # every parameter and every state tensor (Adam: m and v; SGD: the momentum buffer) is updated in place
    assert len(plan.donations) == 3 * 4 if opt_name == "adam" else 2 * 4


def test_a_lazy_graph_on_the_old_weight_keeps_its_value() -> None:
    model, opt, step, batches = _mlp_step()
    for x, y in batches[:5]:
        step(x, y)
    w = model[0].weight
    before = w.numpy()
    pending = w * 2.0  # lazy: reads the weight as it is now
    step(*batches[5])
    np.testing.assert_array_equal(pending.numpy(), before * 2.0)
    assert not np.array_equal(w.numpy(), before)


def test_a_user_array_the_parameter_was_made_from_is_not_written() -> None:
    # the calls before replays update a copy: the parameter starts out as the caller's own array
    model, opt, step, batches = _mlp_step("sgd")
    mine = np.ones((16, 12), np.float32)
    model[0].weight = pg.Tensor(mine, requires_grad=True)  # shares `mine` (float32, contiguous: no copy)
    opt.param_groups[0]["params"][0] = model[0].weight
    step.reset()
    for x, y in batches[:8]:
        step(x, y)
    assert step.stats["replayed"] >= 5
    np.testing.assert_array_equal(mine, np.ones((16, 12), np.float32))
    assert not np.array_equal(model[0].weight.numpy(), mine)


def test_returned_views_of_state_survive_later_steps() -> None:
    pg.manual_seed(0)
    w = pg.Tensor(np.arange(6, dtype=np.float32), requires_grad=False)

    @pg.jit
    def bump(x: pg.Tensor) -> tuple[pg.Tensor, pg.Tensor]:
        w.assign(w + x)
        return w.reshape(2, 3), (w * 1.0).sum()

    kept = []
    for i in range(8):
        view, _ = bump(np.full(6, float(i), np.float32))
        kept.append((view, view.numpy().copy()))
    assert bump.stats["replayed"] == 5
    for view, value in kept:
        np.testing.assert_array_equal(view.numpy(), value)
    np.testing.assert_array_equal(w.numpy(), np.arange(6) + sum(range(8)))


@pytest.mark.parametrize(
    "update",
    [
        lambda w: w + w.T,  # reads the old value at the transposed index
        lambda w: w * 0.5 + w.sum(0, keepdims=True),  # reads the whole old value in a reduction
        lambda w: w[::-1] - w,  # reads it flipped
        lambda w: w @ w,  # a matmul of the old value
        lambda w: (w * 0.5).tanh() - w.max() * 0.1,  # a reduction read and a same-index read
    ],
    ids=["transpose", "column_sums", "flip", "matmul", "max"],
)
def test_updates_reading_the_old_value_elsewhere_stay_correct(update) -> None:  # noqa: ANN001
    rng = np.random.default_rng(3)
    start = (rng.standard_normal((5, 5)) * 0.1).astype(np.float32)
    w = pg.Tensor(start.copy(), requires_grad=False)

    @pg.jit
    def step(x: pg.Tensor) -> pg.Tensor:
        w.assign(update(w) + x)
        return (w * 1.0).sum()

    with pg.eager():
        ref = pg.Tensor(start.copy(), requires_grad=False)
    for i in range(7):
        x = np.full((5, 5), 0.01 * i, np.float32)
        step(x)
        with pg.eager():
            ref = pg.Tensor(update(ref).numpy() + x, requires_grad=False)
        np.testing.assert_allclose(w.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    assert step.stats["replayed"] == 4


def test_schedule_refuses_reads_after_the_update() -> None:
    a = buffer_node(Buffer(np.ones((4, 4), np.float32)))
    new = B.add(a, B.full_like(a, 1.0))
    later = B.reduce("reduce_sum", B.mul(new, B.permute(a, (1, 0))), (0, 1))  # reads a transposed
    sched = schedule([new, later], [a])
    assert not writable_in_place(sched, a, new)
    same_index = schedule([B.mul(a, B.full_like(a, 2.0))], [a])
    assert writable_in_place(same_index, a, same_index.out_buffers[0])


def test_plain_realize_keeps_fresh_arrays() -> None:
    model, opt, step, batches = _mlp_step()
    plain = step.fn
    addresses = [_address(p) for p in model.parameters()]
    plain(*map(pg.Tensor, batches[0]))
    pg.realize()
    assert all(a != b for a, b in zip(addresses, [_address(p) for p in model.parameters()], strict=True))


def test_two_tensors_assigned_one_value_both_follow() -> None:
    a = pg.Tensor(np.zeros(4, np.float32), requires_grad=False)
    b = pg.Tensor(np.zeros(4, np.float32), requires_grad=False)

    @pg.jit
    def step(x: pg.Tensor) -> pg.Tensor:
        new = a + x
        a.assign(new)
        b.assign(new)
        return (new * 1.0).sum()

    for i in range(7):
        step(np.full(4, 1.0, np.float32))
        np.testing.assert_array_equal(a.numpy(), np.full(4, i + 1.0))
        np.testing.assert_array_equal(b.numpy(), np.full(4, i + 1.0))
    assert step.stats["replayed"] == 4


@pytest.fixture
def reuse_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every gradient, however small, is written over its previous array (replay.REUSE_MIN: big ones only)."""
    import importlib

    monkeypatch.setattr(importlib.import_module("picograd.replay"), "REUSE_MIN", 0)


def test_replays_write_gradients_into_their_previous_arrays(reuse_all: None) -> None:
    """A gradient the step assigns anew (after zero_grad) is written over its previous array when nothing else
    holds it, instead of alternating between two arrays; the values are the eager ones."""
    model, opt, step, batches = _mlp_step()
    for x, y in batches[:5]:
        step(x, y)
    before = [_address(p.grad) for p in model.parameters()]
    for x, y in batches[5:8]:
        step(x, y)
    assert step.stats["replayed"] == 5
    assert [_address(p.grad) for p in model.parameters()] == before
    ref_model, ref_opt, _, _ = _mlp_step()
    with pg.eager():
        for x, y in batches[:8]:
            _step_fn(ref_model, ref_opt)(pg.Tensor(x), pg.Tensor(y))
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("hold", ["graph", "detached"])
def test_a_gradient_held_elsewhere_keeps_its_value(hold: str, reuse_all: None) -> None:
    """Keeping the old gradient (a lazy graph reading it, or a detached Tensor sharing its value) makes the next
    step write the new one elsewhere."""
    model, opt, step, batches = _mlp_step()
    for x, y in batches[:5]:
        step(x, y)
    w = model[0].weight
    value = np.array(w.grad.numpy(), copy=True)
    kept = w.grad * 1.0 if hold == "graph" else w.grad.detach()
    step(*batches[5])
    assert step.stats["replayed"] == 3
    np.testing.assert_array_equal(kept.numpy(), value)
    assert not np.array_equal(w.grad.numpy(), value)


def test_small_gradients_keep_alternating() -> None:
    """Below replay.REUSE_MIN elements gradients are not checked for reuse: the check would cost more than it saves."""
    model, opt, step, batches = _mlp_step()
    for x, y in batches[:5]:
        step(x, y)
    assert next(iter(step._entries.values())).plan.fresh == []
