"""Functional forms of the layers and the losses (torch.nn.functional's names and conventions).

Everything here builds IR, so it works lazily (one compiled program per step) and in eager mode
alike. The per-step hot paths (linear, relu, log_softmax, nll_loss, cross_entropy) build their nodes
through nn._graph, skipping the general Tensor ops' per-call overhead; the rest uses Tensor ops.
Class-index targets need no gather primitive: a one-hot mask is made from `iota` compared with the
targets, and a masked sum picks each row's entry."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import build as B
from ..ir.node import Node
from ..tensor import Tensor, where
from . import _graph as G

REDUCTIONS = ("mean", "sum", "none")


# ---- activations --------------------------------------------------------------------------------
def relu(x: Tensor) -> Tensor:
    return Tensor(G.relu(x.node)) if x.dtype.kind == "f" else x.relu()


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    return x.leaky_relu(negative_slope)


def sigmoid(x: Tensor) -> Tensor:
    return x.sigmoid()


def tanh(x: Tensor) -> Tensor:
    return x.tanh()


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    return x.softmax(dim)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    if x.ndim != 2 or dim not in (1, -1) or x.dtype.kind != "f":
        return x.log_softmax(dim)
    z = _shifted(x.node)  # the nodes Tensor.log_softmax builds, without its per-op overhead
    lse = B.unary("log", B.reduce("reduce_sum", B.unary("exp", z), (1,)))
    return Tensor(B.add(z, B.expand(B.neg(lse), z.shape)))


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p). The mask comes from the
    in-program counter RNG (seeded by picograd.manual_seed), so lazy and eager runs draw the same one.
    p = 1 zeroes everything, as in PyTorch (x * 0: NaN and inf inputs give NaN there too)."""
    return x.dropout(p, training)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias, with weight of shape (out_features, in_features) as in PyTorch."""
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input of shape {x.shape} does not match weight of shape {weight.shape} "
                         "(expected (..., in_features) and (out_features, in_features))")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: bias of shape {bias.shape} does not match {weight.shape[0]} out_features")
    if x.ndim == 2 and x.dtype == weight.dtype and (bias is None or bias.dtype == weight.dtype):
        return Tensor(G.linear(x.node, weight.node, None if bias is None else bias.node))
    out = x @ weight.T  # batched or mixed-dtype input: the general ops broadcast and promote
    return out if bias is None else out + bias


def one_hot(target: Any, num_classes: int) -> Tensor:
    """(N,) integer class indices -> (N, num_classes) float32 one-hot rows (no gradient)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"one_hot: num_classes must be a positive int, got {num_classes!r} (picograd does not "
                         "infer it from the targets: pass it explicitly)")
    t = _index_target("one_hot", target, None, num_classes)
    return Tensor(G.class_mask(t.node, num_classes)).float()


# ---- losses -------------------------------------------------------------------------------------
def nll_loss(input: Tensor, target: Any, weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of (N, C) log-probabilities at (N,) integer class targets.

    With weight (C,), 'mean' divides by the summed weights of the targets, as PyTorch does."""
    _check_reduction("nll_loss", reduction)
    x = _check_logits("nll_loss", input)
    t = _index_target("nll_loss", target, x, x.shape[1])
    mask = G.class_mask(t.node, x.shape[1])
    return _weighted("nll_loss", Tensor(B.neg(G.masked_row_sum(mask, x.node))), mask, weight, x, reduction)


def cross_entropy(input: Tensor, target: Any, weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """log_softmax + nll_loss fused: loss_i = logsumexp(x_i) - x_i[target_i], computed after
    subtracting the row max, so it is stable for any logits. target: (N,) class indices, or (N, C)
    class probabilities (float)."""
    _check_reduction("cross_entropy", reduction)
    x = _check_logits("cross_entropy", input)
    zn = _shifted(x.node)
    lse = B.reshape(B.unary("log", B.reduce("reduce_sum", B.unary("exp", zn), (1,))), (x.shape[0],))
    if (target.dtype if isinstance(target, Tensor) else np.asarray(target).dtype).kind == "f":
        if np.ndim(target) == 1 if not isinstance(target, Tensor) else target.ndim == 1:
            # float class indices (labels that went through a float array): say that, not "shape (N,) != (N, C)"
            dt = target.dtype if isinstance(target, Tensor) else np.asarray(target).dtype
            raise TypeError(f"cross_entropy: class targets must be integers, got {dt}[{x.shape[0]}] (cast them with "
                            f".astype(np.int64)); class probabilities must have the input's shape {x.shape}")
        _, p = _same_shape_target("cross_entropy", x, target)
        if weight is not None:
            p = p * _check_weight("cross_entropy", weight, x)
        # sum_c p_c * (lse - z_c), written so the (N, C) log-softmax is never formed.
        loss = Tensor(lse) * p.sum(1) - (p * Tensor(zn)).sum(1)
        return _reduce(loss, reduction)
    t = _index_target("cross_entropy", target, x, x.shape[1])
    mask = G.class_mask(t.node, x.shape[1])
    return _weighted("cross_entropy", Tensor(G.sub(lse, G.masked_row_sum(mask, zn))), mask, weight, x, reduction)


def mse_loss(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Mean squared error. An integer input with a float target is promoted to the target's float dtype, as
    in PyTorch (the target is never cast to an integer input's dtype, which would truncate it)."""
    _check_reduction("mse_loss", reduction)
    x, t = _same_shape_target("mse_loss", input, target)
    d = x - t
    return _reduce(d * d, reduction)


def binary_cross_entropy(input: Tensor, target: Any, weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """BCE of probabilities in [0, 1]. Like PyTorch, each log is clamped at -100 so p = 0 or 1 gives a
    finite loss, and the gradient stays finite there too (see _clamped_log)."""
    _check_reduction("binary_cross_entropy", reduction)
    x, t = _same_shape_target("binary_cross_entropy", input, target, float_input=True)
    _check_probabilities("binary_cross_entropy", x)
    _check_probabilities("binary_cross_entropy", t, "target")
    loss = -(t * _clamped_log(x) + (1.0 - t) * _clamped_log(1.0 - x))
    if weight is not None:
        loss = loss * _broadcast_weight("binary_cross_entropy", "weight", weight, x)
    return _reduce(loss, reduction)


def binary_cross_entropy_with_logits(input: Tensor, target: Any, weight: Tensor | None = None,
                                     reduction: str = "mean", pos_weight: Tensor | None = None) -> Tensor:
    """sigmoid + BCE fused and stable for any logit: max(x, 0) - x*t + log(1 + exp(-|x|)).
    pos_weight (broadcast over the last axis) scales the positive term, as in PyTorch."""
    op = "binary_cross_entropy_with_logits"
    _check_reduction(op, reduction)
    x, t = _same_shape_target(op, input, target, float_input=True)
    # Every kink (|x|, max(x, 0), max(-x, 0)) takes the x >= 0 side at x = 0, so their one-sided derivatives
    # there add up to the true derivative sigmoid(x) - t. Tensor.abs/relu have derivative 0 at 0 (as torch's
    # do), and the sum of those gave -t at x = 0 instead of 0.5 - t.
    nonneg = x >= 0.0
    softplus_neg = (1.0 + (-where(nonneg, x, -x)).exp()).log()  # log(1 + exp(-|x|)), never overflows
    if pos_weight is None:
        loss = where(nonneg, x, 0.0) - x * t + softplus_neg
    else:
        lw = 1.0 + (_broadcast_weight(op, "pos_weight", pos_weight, x) - 1.0) * t
        loss = (1.0 - t) * x + lw * (softplus_neg + where(nonneg, 0.0, -x))
    if weight is not None:
        loss = loss * _broadcast_weight(op, "weight", weight, x)
    return _reduce(loss, reduction)


# ---- helpers ------------------------------------------------------------------------------------
def _check_reduction(op: str, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_logits(op: str, x: Any) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: input must be a Tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.dtype.kind != "f":
        raise ValueError(f"{op}: input must be a float (N, C) tensor, got {x.dtype}{list(x.shape)}")
    return x


def _index_target(op: str, target: Any, x: Tensor | None, num_classes: int) -> Tensor:
    host = None if isinstance(target, Tensor) else np.asarray(target)
    t = target if host is None else Tensor(host, requires_grad=False, device=x.device if x is not None else "cpu")
    if t.dtype.kind not in "iu":
        raise TypeError(f"{op}: class targets must be integers, got {t.dtype}{list(t.shape)}")
    if t.ndim != 1 or (x is not None and t.shape[0] != x.shape[0]):
        want = f"({x.shape[0]},) for input {x.shape}" if x is not None else "(N,)"
        raise ValueError(f"{op}: class targets must have shape {want}, got {t.shape}")
    if host is None and t.node.op == "buffer" and isinstance(t.node.buffer.data, np.ndarray):
        host = t.node.buffer.data  # a realized host tensor (the usual Tensor(y_batch)): its values are known
    if host is not None:
        _check_classes(op, host, num_classes)
    # A lazy (or device-resident) target can't be checked without realizing it, a host sync per step; there,
    # and in a picograd.jit replay (which skips the Python), an out-of-range class matches no column: its
    # one-hot row is zero and its loss term is missing.
    return t


def _check_classes(op: str, target: np.ndarray, num_classes: int) -> None:
    """Out-of-range classes would silently pick no column (the mask compares with iota): raise, as torch does.
    A few microseconds for a batch of targets, paid only when the step's Python runs (not in jit replays)."""
    if target.size == 0:
        return
    lo, hi = target.min(), target.max()
    if lo >= 0 and hi < num_classes:
        return
    bad = int(lo if lo < 0 else hi)
    hint = " (picograd has no ignore_index: drop those rows instead)" if bad == -100 else ""
    raise ValueError(f"{op}: class target {bad} is out of range for {num_classes} classes "
                     f"(expected 0 <= target < {num_classes}){hint}")


def _clamped_log(x: Tensor) -> Tensor:
    """max(log(x), -100) for x >= 0, as PyTorch's BCE computes it, with a finite gradient everywhere.

    Written naively, at x = 0 the clamp's zero gradient meets log's 1/x = inf and gives 0 * inf = NaN (and
    1/x overflows for subnormal x as well). So the log is differentiated only where x is a normal number,
    on a copy of x with every other entry replaced by 1; below that (0 and subnormals) the value comes from
    a detached x, so the gradient there is 0, the clamp's, and no inf ever enters the backward pass."""
    fi = np.finfo(x.dtype)
    normal = x >= float(fi.tiny)
    live = where(normal, x, 1.0).log()
    # max(., smallest subnormal) only keeps log(0) = -inf (and numpy's warning about it) out of eager mode
    dead = x.detach().maximum(float(fi.smallest_subnormal)).log()
    return where(normal, live, dead).maximum(-100.0)


def _shifted(x: Node) -> Node:
    """x minus its (detached) row max: exp() of it cannot overflow, and the max needs no gradient."""
    m = B.reduce("reduce_max", B.unary("detach", x), (1,))
    return B.add(x, B.expand(B.neg(m), x.shape))


def _as_float_tensor(op: str, name: str, w: Any, x: Tensor) -> Tensor:
    """A weight (Tensor, numpy array, list or number) as a Tensor of x's float dtype, so that it multiplies
    x's losses without a dtype mismatch (a float64 or integer weight is cast; float32 stays as it is)."""
    if not isinstance(w, Tensor):
        try:
            arr = np.asarray(w)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{op}: {name} must be a Tensor or an array of numbers, got {type(w).__name__}") from e
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"{op}: {name} must be a Tensor or an array of numbers, got {type(w).__name__} "
                            f"of dtype {arr.dtype}")
        return Tensor(arr, dtype=x.dtype, requires_grad=False, device=x.device)
    if w.dtype.kind not in "fiub":
        raise TypeError(f"{op}: {name} must be numeric, got {w.dtype}")
    return w if w.dtype == x.dtype else w.cast(x.dtype)


def _broadcast_weight(op: str, name: str, w: Any, x: Tensor) -> Tensor:
    """An elementwise weight that must broadcast to x's shape without changing it (a bigger weight would
    silently make the loss bigger than the batch)."""
    w = _as_float_tensor(op, name, w, x)
    shape = tuple(w.shape)
    ok = len(shape) <= x.ndim and all(s in (1, d) for s, d in zip(reversed(shape), reversed(x.shape)))
    if not ok:
        raise ValueError(f"{op}: {name} of shape {shape} does not broadcast to the input's shape {x.shape}")
    return w


def _check_weight(op: str, weight: Any, x: Tensor) -> Tensor:
    """A per-class weight: shape (C,), given as a Tensor, array or list; cast to x's dtype."""
    shape = weight.shape if isinstance(weight, Tensor) else np.shape(weight)
    if tuple(shape) != (x.shape[1],):
        raise ValueError(f"{op}: weight must be a ({x.shape[1]},) Tensor or array (one per class), "
                         f"got shape {tuple(shape)}")
    return _as_float_tensor(op, "weight", weight, x)


def _check_probabilities(op: str, x: Tensor, what: str = "input") -> None:
    """BCE's input and target must lie in [0, 1] (as PyTorch checks). Checked only where the values are already on
    the host (a realized tensor: eager mode, or a Tensor made from an array); a lazy input (say, a sigmoid output)
    would have to be realized first, a host sync per step, so it is not checked. NaN passes."""
    buf = x.node.buffer
    if buf is None or not isinstance(buf.data, np.ndarray) or buf.data.size == 0:
        return
    lo, hi = buf.data.min(), buf.data.max()
    if lo < 0 or hi > 1:
        hint = " (for logits use binary_cross_entropy_with_logits)" if what == "input" else ""
        raise ValueError(f"{op}: {what} values must be probabilities between 0 and 1, got values in "
                         f"[{float(lo):g}, {float(hi):g}]{hint}")


def _weighted(op: str, loss: Tensor, mask: Node, weight: Tensor | None, x: Tensor, reduction: str) -> Tensor:
    if weight is None:
        return _reduce(loss, reduction)
    w = _check_weight(op, weight, x)
    wt = Tensor(G.masked_row_sum(mask, G.broadcast(w.node, x.shape)))  # the weight of each row's target class
    loss = loss * wt
    return loss.sum() / wt.sum() if reduction == "mean" else _reduce(loss, reduction)


def _same_shape_target(op: str, x: Tensor, target: Any, float_input: bool = False) -> tuple[Tensor, Tensor]:
    """(input, target) of one shape and one dtype. A float input takes the target in its dtype (an integer or
    bool target converts exactly; a float64 one is rounded, as the input's precision is what the loss has).
    An integer input is never allowed to truncate a float target: it is promoted to the target's float dtype
    (mse_loss, as PyTorch does), or, for losses of probabilities/logits (float_input), refused."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: input must be a Tensor, got {type(x).__name__}")
    if float_input and x.dtype.kind != "f":
        raise TypeError(f"{op}: input must be a float tensor, got {x.dtype}{list(x.shape)} "
                        f"(cast it with .float())")
    if isinstance(target, Tensor):
        t = target
    else:
        arr = np.asarray(target)
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"{op}: target must be numeric, got {type(target).__name__} of dtype {arr.dtype}")
        # a float input: the target in its dtype at once (no cast node); otherwise the target's own dtype
        t = Tensor(arr, dtype=x.dtype if x.dtype.kind == "f" else None, requires_grad=False, device=x.device)
    if t.shape != x.shape:
        raise ValueError(f"{op}: target shape {t.shape} differs from input shape {x.shape}")
    if t.dtype.kind not in "fiub":
        raise TypeError(f"{op}: target must be numeric, got {t.dtype}")
    if t.dtype != x.dtype:
        if x.dtype.kind == "f":
            t = t.cast(x.dtype)
        elif t.dtype.kind == "f":
            x = x.cast(t.dtype)  # integer input, float target: promote, never truncate the target
        else:
            dt = np.promote_types(x.dtype, t.dtype)  # two integer dtypes: the one that holds both
            x, t = x.cast(dt), t.cast(dt)
    return x, t


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return Tensor(G.mean(loss.node)) if loss.dtype.kind == "f" else loss.mean()
    return loss.sum() if reduction == "sum" else loss
