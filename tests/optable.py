"""The op table: one plain record per user-facing op (in the spirit of PyTorch's OpInfo).

Adding an op means adding a row. A row is data: a name, a function of Tensors, the specs of its inputs
(shape, dtype, value domain, whether differentiable) and tolerances. The tests run every row lazily and
eagerly (float32), against central finite differences (float64) and against torch when it is importable;
other test files (e.g. the compiled backends') import ROWS and `run_row` and do the same with their backend.

Value domains keep finite differences honest: "positive" for log/sqrt/pow bases, "nonzero" keeps values
away from the kinks of relu/abs and the pole of 1/x, "distinct" draws every element of a row's inputs
from one shuffled grid (spacing 0.25, never closer than 0.1 to 0, +-0.5 or +-1), so max/min/argmax/clip have
no ties and no element sits near a clip bound.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

import picograd as pg
from picograd import Tensor

SAME = "same"  # torch_fn sentinel: the row's own function also works on torch tensors


@dataclass(frozen=True)
class Input:
    shape: tuple[int, ...]
    domain: str = "real"  # real | positive | nonzero | distinct | small_int | labels | bool
    grad: bool = True  # differentiable input (ignored for integer and bool inputs)
    high: int = 3  # labels are drawn from [0, high)

    @property
    def is_float(self) -> bool:
        return self.domain not in ("labels", "bool")


@dataclass(frozen=True)
class OpRow:
    name: str
    fn: Callable[..., Any]
    inputs: tuple[Input, ...]
    torch_fn: Callable[..., Any] | str | None = SAME  # None: no torch equivalent (e.g. dropout's RNG)
    rtol: float = 1e-5  # lazy vs eager and vs torch, float32
    atol: float = 1e-6
    fd_rtol: float = 1e-5  # analytic vs finite differences, float64
    fd_atol: float = 1e-6
    fd: bool = True  # False where finite differences cannot see the rule (detach is the identity numerically)

    @property
    def grad_inputs(self) -> list[int]:
        return [i for i, s in enumerate(self.inputs) if s.grad and s.is_float]

    def torch(self) -> Callable[..., Any] | None:
        return self.fn if self.torch_fn == SAME else self.torch_fn  # type: ignore[return-value]


# ---- inputs -------------------------------------------------------------------------------------
def make_inputs(row: OpRow, seed: int = 0, dtype: Any = np.float32) -> list[np.ndarray]:
    """Deterministic input arrays for a row; float inputs in `dtype`."""
    rng = np.random.default_rng(seed)
    n_distinct = sum(int(np.prod(s.shape)) for s in row.inputs if s.domain == "distinct")
    k = np.arange(n_distinct) - n_distinct // 2
    grid = list(rng.permutation(0.1 + 0.25 * k))
    out = []
    for s in row.inputs:
        if s.domain == "real":
            a = rng.standard_normal(s.shape)
        elif s.domain == "positive":
            a = rng.uniform(0.5, 2.0, s.shape)
        elif s.domain == "nonzero":
            a = rng.choice([-1.0, 1.0], s.shape) * rng.uniform(0.3, 2.0, s.shape)
        elif s.domain == "distinct":
            n = int(np.prod(s.shape))
            a = np.array(grid[:n], dtype=np.float64).reshape(s.shape)
            grid = grid[n:]
        elif s.domain == "small_int":
            a = rng.integers(-1, 2, s.shape).astype(np.float64)
        elif s.domain == "labels":
            out.append(rng.integers(0, s.high, s.shape).astype(np.int64))
            continue
        elif s.domain == "bool":
            out.append(rng.random(s.shape) < 0.5)
            continue
        else:
            raise ValueError(f"unknown domain {s.domain!r} in row {row.name}")
        out.append(np.asarray(a, dtype=dtype))
    return out


def output_weights(shape: tuple[int, ...], dtype: Any, seed: int = 1) -> np.ndarray:
    """Random cotangent: gradients are of sum(f(x) * w), which checks every output element."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---- running a row ------------------------------------------------------------------------------
@contextlib.contextmanager
def _backend(name: str | None) -> Iterator[None]:
    if name is None:
        yield
        return
    old = os.environ.get("PICOGRAD_BACKEND")
    os.environ["PICOGRAD_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["PICOGRAD_BACKEND"]
        else:
            os.environ["PICOGRAD_BACKEND"] = old


def run_row(row: OpRow, arrays: list[np.ndarray], mode: str = "lazy", backend: str | None = None,
            grad: bool = True, weight_seed: int = 1, device: str = "cpu") -> tuple[np.ndarray, list[np.ndarray]]:
    """Run a row's forward and (if grad and the output is float) backward; one realize in lazy mode.

    mode: "lazy" (build the graph, realize with `backend`, default PICOGRAD_BACKEND) or "eager"
    (`with picograd.eager()`); device: where the inputs live. Returns (output, [gradient of sum(out * w)
    for each of row.grad_inputs]) as numpy arrays."""
    if mode not in ("lazy", "eager"):
        raise ValueError(f"mode must be 'lazy' or 'eager', got {mode!r}")
    pg.manual_seed(0)  # dropout rows: the same mask in every mode
    with _backend(backend), pg.eager(mode == "eager"):
        ts = [Tensor(a, dtype=a.dtype, requires_grad=s.is_float and s.grad, device=device)
              for a, s in zip(arrays, row.inputs, strict=True)]
        out = row.fn(*ts)
        wrt = [ts[i] for i in row.grad_inputs]
        if grad and wrt and out.dtype.kind == "f":
            w = output_weights(out.shape, out.dtype, weight_seed)
            (out * Tensor(w, dtype=w.dtype, device=device)).sum().backward()
        pg.realize(out, *[t.grad for t in wrt if t.grad is not None])
        grads = [t.grad.numpy() if t.grad is not None else np.zeros_like(t.numpy()) for t in wrt] if grad else []
        return out.numpy(), grads


def finite_differences(row: OpRow, arrays: list[np.ndarray], eps: float = 1e-6,
                       weight_seed: int = 1) -> list[np.ndarray]:
    """Central differences of sum(f(x) * w) for each of row.grad_inputs (run eagerly; use float64)."""
    arrays = [a.copy() for a in arrays]

    def loss() -> float:
        out, _ = run_row(row, arrays, mode="eager", grad=False)
        return float(np.sum(out * output_weights(out.shape, out.dtype, weight_seed)))

    grads = []
    for i in row.grad_inputs:
        a = arrays[i]
        g = np.zeros_like(a)
        flat, gflat = a.reshape(-1), g.reshape(-1)
        for j in range(flat.size):
            x0 = flat[j]
            flat[j] = x0 + eps
            hi = loss()
            flat[j] = x0 - eps
            lo = loss()
            flat[j] = x0
            gflat[j] = (hi - lo) / (2 * eps)
        grads.append(g)
    return grads


# ---- the table ----------------------------------------------------------------------------------
def R(name: str, fn: Callable[..., Any], *inputs: Input | tuple[int, ...], **kw: Any) -> OpRow:
    return OpRow(name, fn, tuple(s if isinstance(s, Input) else Input(s) for s in inputs), **kw)


def P(*shape: int) -> Input:
    return Input(shape, "positive")


def NZ(*shape: int) -> Input:
    return Input(shape, "nonzero")


def D(*shape: int) -> Input:
    return Input(shape, "distinct")


def SI(*shape: int) -> Input:
    return Input(shape, "small_int")


def _torch() -> Any:
    import torch

    return torch


def _torch_F() -> Any:
    return _torch().nn.functional


def _t_max(axis: int, keep: bool = False) -> Callable[[Any], Any]:
    return lambda a: a.max(axis, keepdim=keep).values


def _t_min(axis: int) -> Callable[[Any], Any]:
    return lambda a: a.min(axis).values


ROWS: list[OpRow] = [
    # arithmetic, with broadcasting and Python scalars on either side
    R("add", lambda a, b: a + b, (3, 4), (4,)),
    R("add_bcast_both", lambda a, b: a + b, (3, 1), (1, 4)),
    R("add_scalar_right", lambda a: a + 1.5, (2, 3)),
    R("add_scalar_left", lambda a: 1.5 + a, (2, 3)),
    R("sub", lambda a, b: a - b, (2, 1, 3), (4, 3)),
    R("sub_scalar_right", lambda a: a - 0.5, (2, 3)),
    R("sub_scalar_left", lambda a: 0.5 - a, (2, 3)),
    R("mul", lambda a, b: a * b, (2, 3), (2, 3)),
    R("mul_bcast", lambda a, b: a * b, (3, 1), (4,)),
    R("mul_scalar_left", lambda a: 2.5 * a, (2, 3)),
    R("div", lambda a, b: a / b, (2, 3), NZ(3)),
    R("div_scalar_right", lambda a: a / 4.0, (2, 3)),
    R("div_scalar_left", lambda a: 2.0 / a, NZ(2, 3)),
    R("pow", lambda a, b: a**b, P(2, 3), (2, 3)),
    R("pow_bcast", lambda a, b: a**b, P(2, 3), (3,)),
    R("pow_scalar_2", lambda a: a**2, (2, 3)),
    R("pow_scalar_3", lambda a: a**3, (2, 3)),
    R("pow_scalar_half", lambda a: a**0.5, P(2, 3)),
    R("pow_scalar_neg1", lambda a: a**-1, NZ(2, 3)),
    R("pow_scalar_1_5", lambda a: a**1.5, P(2, 3)),
    R("pow_scalar_left", lambda a: 2.0**a, (2, 3)),
    R("neg", lambda a: -a, (2, 3)),
    R("detach", lambda a, b: a.detach() * b + a, (2, 3), (2, 3), fd=False),
    # elementwise functions
    R("exp", lambda a: a.exp(), (2, 3)),
    R("log", lambda a: a.log(), P(2, 3)),
    R("sqrt", lambda a: a.sqrt(), P(2, 3)),
    R("sin", lambda a: a.sin(), (2, 3)),
    R("cos", lambda a: a.cos(), (2, 3)),
    R("tanh", lambda a: a.tanh(), (2, 3)),
    R("sigmoid", lambda a: a.sigmoid(), (2, 3)),
    R("reciprocal", lambda a: a.reciprocal(), NZ(2, 3)),
    R("relu", lambda a: a.relu(), NZ(3, 4)),
    R("leaky_relu", lambda a: a.leaky_relu(0.1), NZ(3, 4),
      torch_fn=lambda a: _torch_F().leaky_relu(a, 0.1)),
    R("leaky_relu_default", lambda a: a.leaky_relu(), NZ(3, 4), torch_fn=lambda a: _torch_F().leaky_relu(a)),
    R("abs", lambda a: a.abs(), NZ(3, 4)),
    R("softmax", lambda a: a.softmax(-1), (3, 4)),
    R("softmax_dim0", lambda a: a.softmax(dim=0), (3, 4)),
    R("log_softmax", lambda a: a.log_softmax(-1), (3, 4)),
    R("log_softmax_axis1", lambda a: a.log_softmax(axis=1), (2, 3, 4)),
    R("dropout", lambda a: a.dropout(0.3), (4, 5), torch_fn=None),
    # matmul family: 1-D, 2-D, batched, broadcast batch
    R("dot_1d", lambda a, b: a.dot(b), (4,), (4,)),
    R("dot_2d", lambda a, b: a.dot(b), (2, 3), (3, 4), torch_fn=lambda a, b: a @ b),
    R("matmul_2d", lambda a, b: a @ b, (2, 3), (3, 4)),
    R("matmul_method", lambda a, b: a.matmul(b), (3, 2), (2, 2)),
    R("matmul_mat_vec", lambda a, b: a @ b, (2, 3), (3,)),
    R("matmul_vec_mat", lambda a, b: a @ b, (3,), (3, 4)),
    R("matmul_batched", lambda a, b: a @ b, (2, 3, 4), (2, 4, 2)),
    R("matmul_batch_2d", lambda a, b: a @ b, (2, 3, 4), (4, 2)),
    R("matmul_bcast_batch", lambda a, b: a @ b, (2, 1, 2, 3), (3, 3, 2)),
    R("matmul_vec_batched", lambda a, b: a @ b, (3,), (2, 3, 2)),
    # reductions
    R("sum", lambda a: a.sum(), (2, 3)),
    R("sum_axis0", lambda a: a.sum(axis=0), (2, 3)),
    R("sum_axes_keepdims", lambda a: a.sum(axis=(0, 2), keepdims=True), (2, 3, 4)),
    R("sum_dim_neg", lambda a: a.sum(dim=-1), (2, 3, 4)),
    R("mean", lambda a: a.mean(), (2, 3)),
    R("mean_axis1_keepdims", lambda a: a.mean(axis=1, keepdims=True), (2, 3)),
    R("mean_dims", lambda a: a.mean(dim=(0, 1)), (2, 3, 4)),
    R("max", lambda a: a.max(), D(3, 4)),
    R("max_axis1", lambda a: a.max(axis=1), D(3, 4), torch_fn=_t_max(1)),
    R("max_axis0_keepdims", lambda a: a.max(axis=0, keepdims=True), D(3, 4), torch_fn=_t_max(0, True)),
    R("min", lambda a: a.min(), D(3, 4)),
    R("min_dim0", lambda a: a.min(dim=0), D(3, 4), torch_fn=_t_min(0)),
    # movement
    R("reshape", lambda a: a.reshape(4, 6), (2, 3, 4)),
    R("reshape_tuple_infer", lambda a: a.reshape((3, -1)), (2, 3, 4)),
    R("view", lambda a: a.view(-1), (2, 3)),
    R("transpose", lambda a: a.transpose(0, 1), (2, 3)),
    R("transpose_3d", lambda a: a.transpose(0, 2), (2, 3, 4)),
    R("T", lambda a: a.T, (2, 3)),
    R("permute", lambda a: a.permute(2, 0, 1), (2, 3, 4)),
    R("expand", lambda a: a.expand(2, 3, 4), (3, 1)),
    R("expand_minus1", lambda a: a.expand(4, -1), (1, 3)),
    R("flatten", lambda a: a.flatten(), (2, 3, 4)),
    R("flatten_start1", lambda a: a.flatten(1), (2, 3, 4)),
    R("squeeze", lambda a: a.squeeze(), (1, 3, 1)),
    R("squeeze_axis", lambda a: a.squeeze(0), (1, 3, 1)),
    R("unsqueeze", lambda a: a.unsqueeze(1), (2, 3)),
    R("unsqueeze_neg", lambda a: a.unsqueeze(-1), (2, 3)),
    # basic indexing
    R("getitem_int", lambda a: a[1], (3, 4)),
    R("getitem_neg_ints", lambda a: a[-1, 2], (3, 4)),
    R("getitem_slices", lambda a: a[::2, 1:3], (3, 4)),
    R("getitem_neg_step", lambda a: a[::-1, ::-2], (3, 4), torch_fn=lambda a: a.flip(0).flip(1)[:, ::2]),
    R("getitem_neg_step_start", lambda a: a[2:0:-1], (4, 2), torch_fn=lambda a: a[1:3].flip(0)),
    R("getitem_none", lambda a: a[None, :, 1], (3, 4)),
    R("getitem_ellipsis", lambda a: a[..., 1], (2, 3, 4)),
    R("getitem_ellipsis_mid", lambda a: a[1, ..., 1:], (2, 3, 4)),
    R("getitem_empty", lambda a: a[3:1], (4, 2)),
    R("getitem_neg_step_empty", lambda a: a[-5::-1], (4, 2), torch_fn=lambda a: a[0:0]),
    # comparisons: bool out, no gradient; small ints so equality happens
    R("lt", lambda a, b: a < b, SI(3, 4), SI(4)),
    R("le", lambda a, b: a <= b, SI(3, 4), SI(4)),
    R("gt", lambda a, b: a > b, SI(3, 4), SI(3, 1)),
    R("ge", lambda a, b: a >= b, SI(3, 4), SI(3, 4)),
    R("eq", lambda a, b: a == b, SI(3, 4), SI(4)),
    R("ne", lambda a, b: a != b, SI(3, 4), SI(4)),
    R("gt_scalar", lambda a: a > 0, SI(3, 4)),
    R("eq_scalar_left", lambda a: 1.0 == a, SI(3, 4)),
    # selection
    R("where", lambda c, a, b: pg.where(c, a, b), Input((2, 3), "bool"), (2, 3), (3,),
      torch_fn=lambda c, a, b: _torch().where(c, a, b)),
    R("where_scalar", lambda c, a: pg.where(c, a, 0.0), Input((2, 3), "bool"), (2, 3),
      torch_fn=lambda c, a: _torch().where(c, a, 0.0)),
    R("maximum", lambda a, b: a.maximum(b), D(2, 3), D(3)),
    R("minimum", lambda a, b: a.minimum(b), D(2, 3), D(2, 3)),
    R("maximum_scalar", lambda a: a.maximum(0.0), D(2, 3), torch_fn=lambda a: a.clamp(min=0.0)),
    R("clip", lambda a: a.clip(-0.5, 0.5), D(3, 4)),
    R("clip_lo", lambda a: a.clip(-0.5), D(3, 4)),
    R("argmax", lambda a: a.argmax(), D(3, 4)),
    R("argmax_axis0", lambda a: a.argmax(axis=0), D(3, 4)),
    R("argmax_dim1", lambda a: a.argmax(dim=1), D(3, 4)),
    # integer and bool tensors stay integer
    R("int_add", lambda y: y + 1, Input((5,), "labels")),
    R("int_mul_int", lambda y, z: y * z, Input((5,), "labels"), Input((5,), "labels")),
    R("int_mul_float", lambda y: y * 0.5, Input((5,), "labels")),
    R("int_sum", lambda y: y.sum(), Input((5,), "labels")),
    R("int_max", lambda y: y.max(), Input((5,), "labels")),
    R("int_eq", lambda y: y == 2, Input((5,), "labels")),
    R("int_div", lambda y: y / 2, Input((5,), "labels")),
    R("int_pow_3", lambda y: y**3, Input((5,), "labels")),
    R("int_pow_0", lambda y: y**0, Input((5,), "labels")),  # all ones, yet on the tensor's device
    # all True (out of int64), on the tensor's device; torch refuses the int, so it compares in float64
    R("int_lt_huge", lambda y: y < 2**70, Input((5,), "labels"), torch_fn=lambda y: y.double() < 2.0**70),
    R("int_mean", lambda y: y.mean(), Input((5,), "labels"), torch_fn=lambda y: y.float().mean()),
    R("bool_sum", lambda c: c.sum(), Input((2, 3), "bool")),
    R("int_plus_float", lambda y, a: y + a, Input((3,), "labels"), (2, 3)),
    # compositions: shared subexpressions (diamonds) and a small MLP
    R("diamond", lambda a: (a.sin() * a.cos() + a.exp()) * a, (2, 3)),
    R("mlp", lambda x, w1, w2: ((x @ w1).relu() @ w2).log_softmax(-1), (4, 3), NZ(3, 5), (5, 2), fd_atol=1e-5),
]

# Losses live in picograd/nn/functional.py; their rows join the table once that file exists.
LOSS_NAMES = ("nll_loss", "mse_loss", "cross_entropy")
SKIPPED: dict[str, str] = {}
try:
    from picograd.nn import functional as _F
except ImportError as e:  # pragma: no cover - depends on the other engineer's progress
    SKIPPED.update({n: f"picograd.nn.functional is not importable yet ({e})" for n in LOSS_NAMES})
else:
    ROWS += [
        R("nll_loss", lambda lp, y: _F.nll_loss(lp, y), (4, 3), Input((4,), "labels", high=3),
          torch_fn=lambda lp, y: _torch_F().nll_loss(lp, y)),
        R("nll_loss_of_log_softmax", lambda z, y: _F.nll_loss(z.log_softmax(-1), y), (4, 3),
          Input((4,), "labels", high=3), torch_fn=lambda z, y: _torch_F().nll_loss(z.log_softmax(-1), y)),
        R("mse_loss", lambda a, b: _F.mse_loss(a, b), (3, 4), (3, 4),
          torch_fn=lambda a, b: _torch_F().mse_loss(a, b)),
        R("cross_entropy", lambda z, y: _F.cross_entropy(z, y), (4, 5), Input((4,), "labels", high=5),
          torch_fn=lambda z, y: _torch_F().cross_entropy(z, y)),
        R("cross_entropy_sum", lambda z, y: _F.cross_entropy(z, y, reduction="sum"), (4, 5),
          Input((4,), "labels", high=5), torch_fn=lambda z, y: _torch_F().cross_entropy(z, y, reduction="sum")),
        R("mse_loss_none", lambda a, b: _F.mse_loss(a, b, reduction="none"), (3, 4), (3, 4),
          torch_fn=lambda a, b: _torch_F().mse_loss(a, b, reduction="none")),
    ]

ROWS_BY_NAME: dict[str, OpRow] = {r.name: r for r in ROWS}
assert len(ROWS_BY_NAME) == len(ROWS), "duplicate row names in the op table"
