"""Fusion decisions of the scheduler, in the style of tinygrad's check_schedule: kernel and buffer counts for
known graphs. Scheduling needs no compiler, so these tests are fast and run without Numba."""

from __future__ import annotations

import numpy as np
import pytest

import picograd as pg
from picograd import Tensor
from picograd.codegen import indexing as ix
from picograd.codegen.schedule import Schedule, schedule
from picograd.ir.autodiff import expand_grads
from picograd.tensor import _pending


def sched_of(*tensors: Tensor, pending: bool = False) -> Schedule:
    roots = [t.node for t in tensors] + ([t.node for t in _pending] if pending else [])
    roots = expand_grads(list({id(r): r for r in roots}.values()))
    return schedule(roots)


def kinds(s: Schedule) -> list[str]:
    return [k.kind for k in s.kernels]


def rand(*shape: int, seed: int = 0, grad: bool | None = None) -> Tensor:
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), requires_grad=grad)


def test_elementwise_chain_is_one_kernel():
    x, y = rand(64, 32), rand(64, 32, seed=1)
    z = x
    for i in range(10):
        z = (z * y + 0.5).tanh() if i % 2 else z.exp() - y
    s = sched_of(z)
    assert kinds(s) == ["elementwise"]
    assert s.intermediates == []  # nothing but the output touches memory
    assert len(s.kernels[0].nodes) >= 10


def test_broadcast_and_movement_are_index_arithmetic():
    x, b = rand(8, 16), rand(16, seed=1)
    z = (x.T * 2).T + b  # permutes and a broadcast: still one loop, no copies
    assert kinds(sched_of(z)) == ["elementwise"]
    z = x[1:7:2, ::-1].reshape(3, 4, 4).permute(2, 0, 1) + 1
    assert kinds(sched_of(z)) == ["elementwise"]


def test_matmul_bias_relu_is_one_kernel_with_epilogue():
    x, w, b = rand(32, 64), rand(64, 16, seed=1), rand(16, seed=2)
    s = sched_of((x @ w + b).relu())
    assert kinds(s) == ["matmul"]
    k = s.kernels[0]
    assert [n.op for n in k.stores] == ["where"] and s.intermediates == [k.matmul]


def test_reduce_fuses_its_producers_and_epilogue():
    x = rand(16, 32)
    s = sched_of(((x * 2).exp() + 1).sum(1).log())  # producer chain, reduction, then log of the result
    assert kinds(s) == ["reduce"]
    assert [n.op for n in s.kernels[0].post] == ["log"]


def test_softmax_kernels():
    x = rand(16, 10)
    s = sched_of(x.softmax(1))
    # max, then exp + sum in one loop (exp stored for the division), then the division
    assert len(s.kernels) == 3, [k.name for k in s.kernels]


def test_sibling_outputs_share_a_loop():
    g, m, v = rand(50, 40), rand(50, 40, seed=1), rand(50, 40, seed=2)
    m2 = m * 0.9 + g * 0.1
    v2 = v * 0.999 + g * g * 0.001
    p2 = m2 / (v2.sqrt() + 1e-8)
    s = sched_of(m2, v2, p2)
    assert kinds(s) == ["elementwise"]
    assert len(s.kernels[0].stores) == 3 and s.intermediates == []


def test_transposed_matmul_needs_no_copy():
    # grad of W in x @ W.T is (g.T @ x): computed directly, not as a transpose of x.T @ g
    x, w, y = rand(8, 5, grad=True), rand(3, 5, seed=1, grad=True), rand(8, 3, seed=2)
    (x @ w.T * y).sum().backward()
    s = sched_of(w.grad)
    # one kernel materializes the upstream gradient (y, the matmul's operand); the product is written
    # straight into w.grad's buffer, transposed: no elementwise kernel over w's shape
    assert kinds(s) == ["elementwise", "matmul"], [k.name for k in s.kernels]
    assert s.kernels[1].matmul is s.outputs[0] and s.kernels[0].domain == (8, 3)


def mlp_step(batch: int = 32) -> list[Tensor]:
    """A 2-layer MLP training step written with plain tensor ops: forward, cross-entropy, backward, SGD."""
    rng = np.random.default_rng(0)
    params = [Tensor(rng.standard_normal(s).astype(np.float32) * 0.1, requires_grad=True)
              for s in [(784, 64), (64,), (64, 10), (10,)]]
    w1, b1, w2, b2 = params
    x = Tensor(rng.standard_normal((batch, 784)).astype(np.float32))
    onehot = Tensor(np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)])
    logits = (x @ w1 + b1).relu() @ w2 + b2
    loss = -(logits.log_softmax(1) * onehot).sum(1).mean()
    loss.backward()
    for p in params:
        p.assign(p - 0.1 * p.grad)
    return [loss, *params]  # the caller keeps the parameters alive: pending assigns are held weakly


def test_mlp_training_step_kernel_and_buffer_counts():
    _pending.clear()
    loss, *params = mlp_step()
    s = sched_of(loss, pending=True)
    names = [k.name for k in s.kernels]
    # forward: x@W1 (+b1, relu in the epilogue); h@W2 (+b2, row max in the epilogue); exp + its row sum;
    # the two row sums that read that sum (log-softmax * one-hot, and the backward's); the mean;
    # backward: dlogits (+ db2 and the b2 update); g@W2.T (relu mask, db1, b1 update in the epilogue);
    # dW1 (+ W1 update), dW2 (+ W2 update), both computed transposed straight into the update loop.
    assert len(s.kernels) == 9, names
    assert [k.kind for k in s.kernels].count("matmul") == 5  # 2 forward, 3 backward (no dx)
    assert len(s.out_buffers) == 9  # the loss, 4 gradients (tracked leaves keep them) and 4 new parameters
    assert len(s.intermediates) == 12, [(n.op, n.shape) for n in s.intermediates]
    _pending.clear()


def test_mlp_with_gradients_kept():
    _pending.clear()
    rng = np.random.default_rng(0)
    w1 = Tensor(rng.standard_normal((20, 8)).astype(np.float32), requires_grad=True)
    x = Tensor(rng.standard_normal((4, 20)).astype(np.float32))
    loss = (x @ w1).relu().sum()
    loss.backward()
    s = sched_of(loss, pending=True)  # the gradient of a tracked leaf is an output of the same program
    assert len(s.outputs) == 2 and s.kernels[-1].matmul is s.outputs[1]
    _pending.clear()


# ---- index arithmetic -----------------------------------------------------------------------------------
def test_reshape_index_stays_affine_for_merges():
    idx, _ = ix.identity((4, 6))
    (flat,) = ix.reshape_index(idx, (4, 6), (24,), (4, 6))
    assert flat.affine and flat.render() == "i0 * 6 + i1"
    idx, _ = ix.identity((24,))
    a, b = ix.reshape_index(idx, (24,), (4, 6), (24,))
    assert not a.affine and a.render() == "((i0) // 6)" and b.render() == "((i0) % 6)"


@pytest.mark.parametrize("new,old", [((2, 3, 4), (6, 4)), ((6, 4), (2, 12)), ((1, 24), (4, 1, 6)), ((4, 6), (3, 8))])
def test_reshape_index_matches_numpy(new, old):
    sizes = new
    idx, _ = ix.identity(new)
    exprs = [e.render() for e in ix.reshape_index(idx, new, old, sizes)]
    src = np.arange(int(np.prod(old))).reshape(old)
    want = src.reshape(new)
    for pos in np.ndindex(*new):
        env = {f"i{d}": p for d, p in enumerate(pos)}
        got = src[tuple(eval(e, {}, env) for e in exprs)]  # noqa: S307 - our own generated index text
        assert got == want[pos]


def test_collapse_merges_contiguous_axes_only():
    idx, _ = ix.identity((4, 5, 6))
    flat = ix.flat_index(idx, (4, 5, 6), 3)
    assert ix.collapse((4, 5, 6), (False,) * 3, [flat]) == [(0, 1, 2)]
    bcast = ix.flat_index((idx[0], ix.const(0, 3), idx[2]), (4, 1, 6), 3)  # a broadcast along axis 1
    assert ix.collapse((4, 5, 6), (False,) * 3, [flat, bcast]) == [(0,), (1,), (2,)]
    assert ix.collapse((4, 5, 6), (False, True, True), [flat]) == [(0,), (1, 2)]


def test_schedule_is_backend_neutral():
    import sys

    mods = [m for m in sys.modules if m == "numba" or m.startswith("numba.")]
    before = set(mods)
    sched_of((rand(4, 4) @ rand(4, 4, seed=1)).relu().sum())
    assert {m for m in sys.modules if m == "numba" or m.startswith("numba.")} == before


def test_lazy_default_is_unaffected_by_scheduling():
    x = rand(3, 4)
    s1, s2 = sched_of(x.exp().sum(0)), sched_of(x.exp().sum(0))
    assert [k.name for k in s1.kernels] == [k.name for k in s2.kernels]
    np.testing.assert_allclose(x.exp().sum(0).numpy(), np.exp(x.numpy()).sum(0), rtol=1e-6)
    pg.realize()


def test_ready_kernels_run_smallest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Among kernels whose inputs are ready, the one touching the fewest bytes runs first (a small kernel left
    behind big ones finds its inputs evicted); dependencies always come first. PICOGRAD_SMALL_FIRST=0's order
    is the order kernels were made in."""
    from picograd.codegen import schedule as sched_mod

    a, b, c = rand(256, 256), rand(256, 256, seed=1), rand(8, 8, seed=2)
    big = (a @ b).relu()
    after = big @ b  # reads big: must come after it
    small = (c.exp() * 3.0).sum()  # independent and small

    def positions() -> list[int]:
        s = sched_of(big, after, small)
        assert [k.index for k in s.kernels] == list(range(len(s.kernels)))
        assert all(k.name.startswith(f"k{k.index}_") for k in s.kernels)
        return [s.kernel_of[id(sched_mod.view_base(t.node))].index for t in (small, big, after)]

    p_small, p_big, p_after = positions()
    assert p_small < p_big < p_after
    monkeypatch.setattr(sched_mod, "SMALL_FIRST", False)
    p_small, p_big, p_after = positions()
    assert p_big < p_after < p_small
