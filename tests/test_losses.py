"""Losses (picograd.nn.functional): values and gradients against numpy formulas and central finite
differences, every reduction, lazy == eager, numerical stability, error messages, and PyTorch when
it is installed. Semantic checks (finite differences, PyTorch) use conftest's reference_backend; the
compiled path runs one program (value and gradient) per loss and reduction."""

from __future__ import annotations

import numpy as np
import pytest

import picograd as pg
from picograd import nn
from picograd.nn import functional as F

RNG = np.random.default_rng(0)
N, C = 6, 5
LOGITS = RNG.standard_normal((N, C))
TARGETS = RNG.integers(0, C, N)
PROBS = RNG.dirichlet(np.ones(C), N)
WEIGHT = RNG.uniform(0.5, 2.0, C)
P01 = RNG.uniform(0.05, 0.95, (N, C))
T01 = (RNG.random((N, C)) > 0.5).astype(np.float64)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _reduce(v: np.ndarray, reduction: str) -> np.ndarray:
    return {"mean": v.mean(), "sum": v.sum(), "none": v}[reduction]


# name -> (picograd loss of one differentiable input x, numpy reference of x, x's value)
def _cases(reduction: str) -> dict:
    r = reduction
    rows = np.arange(N)
    w_rows = WEIGHT[TARGETS]
    wmean = (lambda v: (v * w_rows).sum() / w_rows.sum()) if r == "mean" else (lambda v: _reduce(v * w_rows, r))
    return {
        "nll": (lambda x: F.nll_loss(x, TARGETS, reduction=r), lambda x: _reduce(-x[rows, TARGETS], r), LOGITS),
        "nll_weight": (lambda x: F.nll_loss(x, TARGETS, weight=pg.Tensor(WEIGHT, dtype=x.dtype), reduction=r),
                       lambda x: wmean(-x[rows, TARGETS]), LOGITS),
        "cross_entropy": (lambda x: F.cross_entropy(x, TARGETS, reduction=r),
                          lambda x: _reduce(-_log_softmax(x)[rows, TARGETS], r), LOGITS),
        "cross_entropy_weight": (lambda x: F.cross_entropy(x, TARGETS, weight=pg.Tensor(WEIGHT, dtype=x.dtype),
                                                           reduction=r),
                                 lambda x: wmean(-_log_softmax(x)[rows, TARGETS]), LOGITS),
        "cross_entropy_probs": (lambda x: F.cross_entropy(x, PROBS, reduction=r),
                                lambda x: _reduce(-(PROBS * _log_softmax(x)).sum(1), r), LOGITS),
        "mse": (lambda x: F.mse_loss(x, PROBS, reduction=r), lambda x: _reduce((x - PROBS) ** 2, r), LOGITS),
        "bce": (lambda x: F.binary_cross_entropy(x, T01, reduction=r),
                lambda x: _reduce(-(T01 * np.log(x) + (1 - T01) * np.log(1 - x)), r), P01),
        "bce_logits": (lambda x: F.binary_cross_entropy_with_logits(x, P01, reduction=r),
                       lambda x: _reduce(-(P01 * np.log(_sig(x)) + (1 - P01) * np.log(1 - _sig(x))), r), 3 * LOGITS),
        "bce_logits_pos_weight": (
            lambda x: F.binary_cross_entropy_with_logits(x, P01, reduction=r, pos_weight=pg.Tensor(WEIGHT, x.dtype)),
            lambda x: _reduce(-(WEIGHT * P01 * np.log(_sig(x)) + (1 - P01) * np.log(1 - _sig(x))), r), 3 * LOGITS),
    }


def _sig(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


CASES = sorted(_cases("mean"))


def _value_and_grad(fn, x0: np.ndarray, proj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # A random projection makes reduction="none" a scalar too; value and gradient realize as one program.
    x = pg.Tensor(x0, requires_grad=True)
    out = fn(x)
    (out * pg.Tensor(proj.astype(np.float32))).sum().backward()
    pg.realize(out, x.grad)
    return out.numpy(), x.grad.numpy()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", CASES)
def test_lazy_equals_eager_and_reference(name: str, reduction: str) -> None:
    fn, ref, x0 = _cases(reduction)[name]
    x0 = x0.astype(np.float32)
    want = ref(x0.astype(np.float64))
    proj = RNG.standard_normal(np.shape(want))
    value, grad = _value_and_grad(fn, x0, proj)
    with pg.eager():
        e_value, e_grad = _value_and_grad(fn, x0, proj)
    assert value.dtype == np.float32 and value.shape == np.shape(want)
    np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value, e_value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, e_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("name", CASES)
def test_gradient_matches_finite_differences(reference_backend, name: str, reduction: str) -> None:
    fn, ref, x0 = _cases(reduction)[name]
    proj = RNG.standard_normal(np.shape(ref(x0)))
    x = pg.Tensor(x0, dtype=np.float64, requires_grad=True)
    (fn(x) * pg.Tensor(proj, dtype=np.float64)).sum().backward()
    got = x.grad.numpy()
    eps, num = 1e-6, np.zeros_like(x0)
    for i in np.ndindex(x0.shape):
        d = np.zeros_like(x0)
        d[i] = eps
        num[i] = ((ref(x0 + d) * proj).sum() - (ref(x0 - d) * proj).sum()) / (2 * eps)
    np.testing.assert_allclose(got, num, rtol=1e-5, atol=1e-7)


def test_cross_entropy_equals_log_softmax_then_nll(reference_backend) -> None:
    x = pg.Tensor(LOGITS.astype(np.float32))
    np.testing.assert_allclose(F.cross_entropy(x, TARGETS).numpy(), F.nll_loss(F.log_softmax(x, 1), TARGETS).numpy(),
                               rtol=1e-6)


def test_cross_entropy_is_stable_for_huge_logits() -> None:
    big = np.array([[1e4, 0.0, -1e4], [-5e3, 5e3, 0.0]], np.float32)
    x = pg.Tensor(big, requires_grad=True)
    loss = F.cross_entropy(x, np.array([1, 1]))
    loss.backward()
    # Row 0 misses its target by 1e4 (loss 1e4); row 1 hits it (loss ~0): mean 5e3, finite gradient.
    np.testing.assert_allclose(loss.item(), 5e3, rtol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), [[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]], atol=1e-6)


def test_bce_clamps_the_log_like_pytorch() -> None:
    p = pg.Tensor(np.array([0.0, 1.0, 0.5], np.float32))
    out = F.binary_cross_entropy(p, np.array([1.0, 0.0, 1.0], np.float32), reduction="none").numpy()
    np.testing.assert_allclose(out, [100.0, 100.0, np.log(2)], rtol=1e-6)


@pytest.mark.parametrize("eager", [False, True], ids=["lazy", "eager"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_gradient_is_finite_where_the_log_is_clamped(eager: bool, dtype) -> None:
    # p = 0 or 1 (and subnormal p, where 1/p overflows): the clamp's zero gradient must not meet log's inf.
    tiny = np.finfo(dtype).smallest_subnormal
    p0 = np.array([0.0, 1.0, 0.0, 1.0, tiny, 1e-3, 0.5], dtype)
    t = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], dtype)
    with pg.eager(eager):
        p = pg.Tensor(p0, requires_grad=True)
        out = F.binary_cross_entropy(p, t, reduction="none")
        out.sum().backward()
        value, grad = out.numpy(), p.grad.numpy()
    # Clamped terms: loss 100 and gradient 0; the others: -log(p) or -log(1-p) and their true derivatives.
    np.testing.assert_allclose(value, [100, 100, 0, 0, min(-np.log(np.float64(tiny)), 100), -np.log(1e-3), np.log(2)],
                               rtol=1e-5)
    np.testing.assert_allclose(grad, [0, 0, 1, -1, 0, -1e3, -2], rtol=1e-5)


def test_bce_through_a_saturated_sigmoid_has_a_finite_gradient() -> None:
    # sigmoid(20) == 1.0 in float32: log(1 - p) is clamped, and its gradient used to be 0 * inf = NaN.
    x0, t = np.array([20.0, 0.5], np.float32), np.array([1.0, 0.0], np.float32)
    for eager in (False, True):
        with pg.eager(eager):
            x = pg.Tensor(x0, requires_grad=True)
            F.binary_cross_entropy(x.sigmoid(), t).backward()
            # d/dx of mean(-t log s(x) - (1-t) log(1-s(x))) = (s(x) - t) / 2
            np.testing.assert_allclose(x.grad.numpy(), (1 / (1 + np.exp(-x0.astype(np.float64))) - t) / 2,
                                       rtol=1e-5, atol=1e-7)


def test_bce_at_the_clamp_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    x0, t = np.array([20.0, 0.5, -20.0, 3.0], np.float32), np.array([1.0, 0.0, 0.0, 1.0], np.float32)
    x = pg.Tensor(x0, requires_grad=True)
    loss = F.binary_cross_entropy(x.sigmoid(), t)
    loss.backward()
    tx = torch.tensor(x0, requires_grad=True)
    tl = torch.nn.functional.binary_cross_entropy(tx.sigmoid(), torch.tensor(t))
    tl.backward()
    np.testing.assert_allclose(loss.item(), tl.item(), rtol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-5, atol=1e-7)
    # p exactly 0 or 1 with the target on the clamped side: both give loss 100 and a finite gradient
    # (torch's own backward formula gives +-1e12 there; ours the clamp's 0).
    p = pg.Tensor(np.array([0.0, 1.0], np.float32), requires_grad=True)
    F.binary_cross_entropy(p, np.array([1.0, 0.0], np.float32), reduction="sum").backward()
    assert np.isfinite(p.grad.numpy()).all()


def test_bce_with_logits_is_stable_for_large_logits() -> None:
    x = np.array([-100.0, -30.0, 0.0, 30.0, 100.0], np.float32)
    t = np.array([1.0, 0.0, 1.0, 1.0, 0.0], np.float32)
    out = F.binary_cross_entropy_with_logits(pg.Tensor(x), t, reduction="none").numpy()
    want = np.logaddexp(0, x) - x * t  # exact softplus(x) - x*t, in float64
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_loss_modules_match_functional(reference_backend) -> None:
    x = pg.Tensor(LOGITS.astype(np.float32))
    w = pg.Tensor(WEIGHT.astype(np.float32))
    pairs = [
        (nn.CrossEntropyLoss(weight=w)(x, TARGETS), F.cross_entropy(x, TARGETS, weight=w)),
        (nn.NLLLoss(reduction="sum")(x, TARGETS), F.nll_loss(x, TARGETS, reduction="sum")),
        (nn.MSELoss(reduction="none")(x, PROBS), F.mse_loss(x, PROBS, reduction="none")),
        (nn.BCELoss()(pg.Tensor(P01.astype(np.float32)), T01), F.binary_cross_entropy(pg.Tensor(P01), T01)),
        (nn.BCEWithLogitsLoss(pos_weight=w)(x, P01), F.binary_cross_entropy_with_logits(x, P01, pos_weight=w)),
    ]
    for a, b in pairs:
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_targets_may_be_tensors_and_int32(reference_backend) -> None:
    x = pg.Tensor(LOGITS.astype(np.float32))
    a = F.cross_entropy(x, pg.Tensor(TARGETS.astype(np.int32)))
    np.testing.assert_allclose(a.numpy(), F.cross_entropy(x, TARGETS).numpy(), rtol=1e-6)


@pytest.mark.parametrize("eager", [False, True], ids=["lazy", "eager"])
@pytest.mark.parametrize("make", [np.array, lambda v: pg.Tensor(np.array(v))], ids=["numpy", "tensor"])
@pytest.mark.parametrize("bad", [5, 3, -1, -100])
@pytest.mark.parametrize("op", ["cross_entropy", "nll_loss", "one_hot"])
def test_out_of_range_class_targets_raise(op: str, bad: int, make, eager: bool) -> None:
    # Unchecked, an out-of-range class matches no column of the one-hot mask: a zero row, a missing loss term.
    with pg.eager(eager):
        target = make([0, bad])
        call = {"cross_entropy": lambda: F.cross_entropy(pg.zeros((2, 3)), target),
                "nll_loss": lambda: F.nll_loss(pg.zeros((2, 3)), target),
                "one_hot": lambda: F.one_hot(target, 3)}[op]
        with pytest.raises(ValueError) as e:
            call()
    msg = str(e.value)
    assert msg.startswith(f"{op}:") and "3 classes" in msg and f"target {bad} " in msg, msg
    assert ("ignore_index" in msg) == (bad == -100)


def test_class_targets_of_a_lazy_tensor_are_not_realized_to_check() -> None:
    # Checking would realize (a host sync per step); in range, it computes as before.
    t = pg.Tensor(np.array([0, 1])) + 1
    assert t.node.op != "buffer"
    out = F.one_hot(t, 3)
    assert t.node.op != "buffer"
    np.testing.assert_array_equal(out.numpy(), np.eye(3, dtype=np.float32)[[1, 2]])


def test_class_target_check_is_cheap() -> None:
    # The check runs whenever a step's Python does (not in picograd.jit replays): microseconds for a batch.
    import timeit

    from picograd.nn.functional import _check_classes

    y = np.random.default_rng(0).integers(0, 10, 64)
    per_call = min(timeit.repeat(lambda: _check_classes("cross_entropy", y, 10), number=200, repeat=5)) / 200
    assert per_call < 50e-6, per_call


def test_one_hot() -> None:
    out = F.one_hot(np.array([2, 0, 1]), 4).numpy()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.eye(4, dtype=np.float32)[[2, 0, 1]])


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda x: F.cross_entropy(x, TARGETS, reduction="avg"), ValueError, ["cross_entropy", "reduction", "avg"]),
        (lambda x: F.nll_loss(x, TARGETS.astype(np.float32)), TypeError, ["nll_loss", "integers", "float32"]),
        (lambda x: F.nll_loss(x, TARGETS[:3]), ValueError, ["nll_loss", "(6,)", "(3,)"]),
        (lambda x: F.cross_entropy(x[0], TARGETS[:1]), ValueError, ["cross_entropy", "(N, C)", "[5]"]),
        (lambda x: F.cross_entropy(x, PROBS[:, :3]), ValueError, ["cross_entropy", "(6, 3)", "(6, 5)"]),
        (lambda x: F.cross_entropy(x, TARGETS, weight=pg.ones(3)), ValueError, ["weight", "(5,)", "(3,)"]),
        (lambda x: F.mse_loss(x, PROBS[:2]), ValueError, ["mse_loss", "(2, 5)", "(6, 5)"]),
        (lambda x: F.nll_loss(LOGITS, TARGETS), TypeError, ["nll_loss", "Tensor", "ndarray"]),
    ],
)
def test_bad_input_raises_a_clear_error(call, exc, words) -> None:
    with pytest.raises(exc) as e:
        call(pg.Tensor(LOGITS.astype(np.float32)))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_matches_torch(reference_backend) -> None:
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    x = LOGITS.astype(np.float32)
    tx, ty, tw = torch.tensor(x), torch.tensor(TARGETS), torch.tensor(WEIGHT.astype(np.float32))
    tp, t01 = torch.tensor(PROBS.astype(np.float32)), torch.tensor(T01.astype(np.float32))
    px = pg.Tensor(x)
    pw = pg.Tensor(WEIGHT.astype(np.float32))
    for red in ("mean", "sum", "none"):
        pairs = [
            (F.cross_entropy(px, TARGETS, weight=pw, reduction=red),
             tf.cross_entropy(tx, ty, weight=tw, reduction=red)),
            (F.cross_entropy(px, PROBS, reduction=red), tf.cross_entropy(tx, tp, reduction=red)),
            (F.nll_loss(px, TARGETS, reduction=red), tf.nll_loss(tx, ty, reduction=red)),
            (F.binary_cross_entropy_with_logits(px, T01, pos_weight=pw, reduction=red),
             tf.binary_cross_entropy_with_logits(tx, t01, pos_weight=tw, reduction=red)),
            (F.binary_cross_entropy(pg.Tensor(P01), T01, reduction=red),
             tf.binary_cross_entropy(torch.tensor(P01.astype(np.float32)), t01, reduction=red)),
        ]
        for a, b in pairs:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


# ---- regressions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("eager", [False, True], ids=["lazy", "eager"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32])
def test_small_int_targets_with_more_classes_than_the_dtype_holds(dtype, eager: bool) -> None:
    # The column index used to be built in the target's dtype, where it wraps: class 3 of a uint8 target
    # also matched column 259.
    c = {1: 300, 2: 70000}.get(np.dtype(dtype).itemsize, 300)  # past the dtype's wrap-around
    x = -np.arange(c, dtype=np.float32)[None]
    with pg.eager(eager):
        oh = F.one_hot(np.array([3], dtype), c).numpy()
        nll = F.nll_loss(pg.Tensor(x), np.array([3], dtype)).item()
        nll_t = F.nll_loss(pg.Tensor(x), pg.Tensor(np.array([3], dtype))).item()
        ce = F.cross_entropy(pg.Tensor(np.zeros((1, c), np.float32)), np.array([3], dtype)).item()
    assert oh.shape == (1, c) and oh.sum() == 1 and oh[0, 3] == 1
    assert nll == 3.0 and nll_t == 3.0
    np.testing.assert_allclose(ce, np.log(c), rtol=1e-5)
    with pytest.raises(ValueError, match="out of range for 100 classes"):  # the range check is unaffected
        F.nll_loss(pg.Tensor(x[:, :100]), np.array([120], dtype))


@pytest.mark.parametrize("eager", [False, True], ids=["lazy", "eager"])
def test_mse_of_an_int_input_and_a_float_target_promotes_like_torch(eager: bool) -> None:
    with pg.eager(eager):
        assert F.mse_loss(pg.Tensor(np.array([1, 2])), np.array([1.5, 2.5])).item() == 0.25
        assert F.mse_loss(pg.Tensor(np.array([1, 2])), pg.Tensor(np.array([1.5, 2.5]))).item() == 0.25
        # a float input with an int target casts the (exact) target, as before
        assert F.mse_loss(pg.Tensor(np.array([1.0, 2.0])), np.array([1, 3])).item() == 0.5
    torch = pytest.importorskip("torch")
    assert torch.nn.functional.mse_loss(torch.tensor([1, 2]), torch.tensor([1.5, 2.5])).item() == 0.25


@pytest.mark.parametrize("call", [
    lambda: F.binary_cross_entropy(pg.Tensor(np.array([0, 1])), np.array([0.5, 0.5])),
    lambda: F.binary_cross_entropy_with_logits(pg.Tensor(np.array([0, 1])), np.array([0.5, 0.5])),
    lambda: nn.BCEWithLogitsLoss()(pg.Tensor(np.array([0, 1])), np.array([1, 0])),
])
def test_bce_of_an_integer_input_raises_clearly(call) -> None:
    with pytest.raises(TypeError, match=r"binary_cross_entropy.*float.*int64"):
        call()


def test_bce_rejects_probabilities_outside_0_1() -> None:
    with pytest.raises(ValueError, match=r"binary_cross_entropy: input .* between 0 and 1"):
        F.binary_cross_entropy(pg.Tensor(np.array([0.5, 1.5], np.float32)), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"binary_cross_entropy: input .* between 0 and 1"):
        nn.BCELoss()(pg.Tensor(np.array([-0.1, 0.5], np.float32)), np.array([1.0, 0.0]))


@pytest.mark.parametrize("eager", [False, True], ids=["lazy", "eager"])
def test_weights_may_be_lists_arrays_or_float64(eager: bool) -> None:
    x = LOGITS.astype(np.float32)
    w32 = WEIGHT.astype(np.float32)
    with pg.eager(eager):
        ref = F.cross_entropy(pg.Tensor(x), TARGETS, weight=pg.Tensor(w32)).item()
        for w in (WEIGHT, list(WEIGHT), pg.Tensor(WEIGHT, dtype=np.float64)):
            np.testing.assert_allclose(F.cross_entropy(pg.Tensor(x), TARGETS, weight=w).item(), ref, rtol=1e-6)
            np.testing.assert_allclose(nn.CrossEntropyLoss(weight=w)(pg.Tensor(x), TARGETS).item(), ref, rtol=1e-6)
        ref_nll = F.nll_loss(pg.Tensor(x), TARGETS, weight=pg.Tensor(w32)).item()
        np.testing.assert_allclose(nn.NLLLoss(weight=WEIGHT)(pg.Tensor(x), TARGETS).item(), ref_nll, rtol=1e-6)
        ref_pw = F.binary_cross_entropy_with_logits(pg.Tensor(x), T01, pos_weight=pg.Tensor(w32)).item()
        for pw in (WEIGHT, list(WEIGHT)):
            got = nn.BCEWithLogitsLoss(pos_weight=pw)(pg.Tensor(x), T01).item()
            np.testing.assert_allclose(got, ref_pw, rtol=1e-6)
    with pytest.raises(ValueError, match=r"cross_entropy: weight must .*\(5,\)"):
        F.cross_entropy(pg.Tensor(x), TARGETS, weight=[1.0, 2.0])
    with pytest.raises(TypeError, match=r"pos_weight"):
        F.binary_cross_entropy_with_logits(pg.Tensor(x), T01, pos_weight="big")


@pytest.mark.parametrize("eager", [False, True], ids=["lazy", "eager"])
def test_mean_of_an_empty_batch_is_nan_like_torch(eager: bool) -> None:
    x = pg.Tensor(np.zeros((0, 3), np.float32))
    t = np.zeros(0, np.int64)
    with pg.eager(eager), np.errstate(invalid="ignore", divide="ignore"):
        vals = [F.cross_entropy(x, t).item(), F.nll_loss(x, t).item(),
                F.mse_loss(pg.Tensor(np.zeros(0, np.float32)), np.zeros(0)).item()]
        assert F.cross_entropy(x, t, reduction="sum").item() == 0.0
    assert all(np.isnan(v) for v in vals), vals
