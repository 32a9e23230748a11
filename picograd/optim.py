"""Optimizers whose update is IR: step() builds each parameter's new value (and new optimizer state)
as lazy `assign`s, which the next realize() computes in the same program as forward and backward.

What may change between steps without changing the program (and so without recompiling) enters as
runtime scalars: fresh 0-d float32 buffers each step (learning rate, Adam's bias corrections). Fixed
hyperparameters (momentum, betas, eps, weight decay) are constants of the program."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from . import recording
from .creation import zeros_like
from .ir import build as B
from .ir.node import Node, phase
from .nn import _graph as G
from .nn.modules import zero_grads
from .tensor import Tensor

__all__ = ["SGD", "Adam", "AdamW", "Optimizer"]


class Optimizer:
    """Base: parameter groups (lists of dicts as in PyTorch, or one iterable of Tensors), per-parameter
    state Tensors, zero_grad(), step(), state_dict()."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        if isinstance(params, (set, frozenset)):
            # an unordered collection: positions (state_dict keys) would change from run to run
            raise TypeError(f"{type(self).__name__}: params must be an ordered collection (a list), got a "
                            f"{type(params).__name__}, whose order changes from run to run")
        if isinstance(params, (Tensor, dict)):
            # list() would iterate over the tensor's rows (or the dict's keys) and then blame those
            raise TypeError(f"{type(self).__name__}: params must be an iterable of Tensors or of parameter-group "
                            f"dicts, got a single {type(params).__name__}; wrap it in a list")
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.defaults = defaults
        self.param_groups: list[dict[str, Any]] = []
        for g in groups:
            self.add_param_group(g)
        self.state: dict[int, dict[str, Tensor]] = {}  # id(param) -> named state tensors
        # id(param) -> the updates it has had (torch's state["step"]): a parameter that first gets a gradient
        # late starts its bias corrections / momentum from its own step 1, not the optimizer's.
        self.param_steps: dict[int, int] = {}
        self.steps = 0  # step() calls

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (a dict with "params" and optional per-group settings; the rest come from the defaults).
        A parameter may belong to one group only, and appear once in it: listed twice it would be updated twice
        per step (PyTorch refuses it too)."""
        if not isinstance(param_group, dict) or "params" not in param_group:
            got = f"a dict with keys {sorted(param_group)}" if isinstance(param_group, dict) else \
                type(param_group).__name__
            raise TypeError(f"{type(self).__name__}: a parameter group must be a dict with a 'params' entry, "
                            f"got {got}")
        ps = param_group["params"]
        if isinstance(ps, (set, frozenset)):
            raise TypeError(f"{type(self).__name__}: a group's params must be an ordered collection (a list), "
                            f"got a {type(ps).__name__}, whose order changes from run to run")
        group = {**self.defaults, **param_group, "params": [ps] if isinstance(ps, Tensor) else list(ps)}
        for p in group["params"]:
            if not isinstance(p, Tensor) or p.dtype.kind != "f":
                raise TypeError(f"{type(self).__name__}: parameters must be float Tensors, got "
                                f"{getattr(p, 'dtype', type(p).__name__)}")
            # requires_grad=False is a frozen parameter (as in torch: skipped while it has no gradient, updated
            # again once unfrozen); the default (None) would never get its gradient realized with the step
            if p._rg is None:
                raise ValueError(f"{type(self).__name__}: parameter of shape {p.shape} does not have "
                                 "requires_grad=True, so its gradient would never be computed")
        ids = [id(p) for p in group["params"]]
        if len(set(ids)) != len(ids):
            dup = next(p for i, p in enumerate(group["params"]) if id(p) in ids[:i])
            raise ValueError(f"{type(self).__name__}: a parameter (shape {dup.shape}) appears more than once in "
                             f"parameter group {len(self.param_groups)}; list each parameter once")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if not seen.isdisjoint(ids):
            dup = next(p for p in group["params"] if id(p) in seen)
            raise ValueError(f"{type(self).__name__}: some parameters appear in more than one parameter group "
                             f"(one of shape {dup.shape}); each parameter may belong to one group only")
        self._check(group)
        self.param_groups.append(group)

    def _check(self, group: dict[str, Any]) -> None:
        """Every group's settings, not only the defaults: a group may override any of them."""
        self._number(group, "lr")
        if group["lr"] < 0:
            raise ValueError(f"{type(self).__name__}: invalid learning rate {group['lr']}")

    def _number(self, group: dict[str, Any], key: str) -> float:
        v = group[key]
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            raise TypeError(f"{type(self).__name__}: {key} must be a finite number, got {type(v).__name__} {v!r}")
        return float(v)

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        """Set every group's learning rate; it is a runtime scalar, so nothing recompiles."""
        for g in self.param_groups:
            g["lr"] = float(value)

    def zero_grad(self, set_to_none: bool = True) -> None:
        zero_grads(self._all_params(), set_to_none)

    def step(self) -> None:
        """Build the update of every parameter that has a gradient, as lazy assigns."""
        live = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
        ids = tuple(dict.fromkeys(id(p) for _, ps in live for p in ps))
        self._advance(ids)
        # picograd.jit replays the counts too (a replayed step updates the same parameters as its trace)
        recording.effect(f"{type(self).__name__}.step", functools.partial(self._advance, ids))
        with phase("update"):
            for group, ps in live:
                # One set of host scalars per step count present: a single one when every parameter has a
                # gradient every step (normal training), so that case makes as many scalars as ever.
                scalars: dict[int, _Scalars] = {}
                for p in ps:
                    t = self.param_steps[id(p)]
                    s = scalars.get(t)
                    if s is None:
                        s = scalars[t] = _Scalars(self, group, id(p))
                    self._update(p, p.grad.node, group, s, self._state(p))

    def _advance(self, ids: tuple[int, ...]) -> None:
        self.steps += 1
        for i in ids:
            self.param_steps[i] = self.param_steps.get(i, 0) + 1

    def _state(self, p: Tensor) -> dict[str, Tensor]:
        st = self.state.get(id(p))
        if st is None:
            st = self.state[id(p)] = {name: zeros_like(p, requires_grad=False) for name in self._state_names()}
        return st

    # Subclasses: the state tensors per parameter, the per-step host scalars, and the update itself.
    def _state_names(self) -> tuple[str, ...]:
        return ()

    def _scalars(self, group: dict[str, Any], step: int) -> dict[str, float]:
        """The host scalars for group's parameters that are at their step-th update (1-based)."""
        raise NotImplementedError

    def _update(self, p: Tensor, g: Node, group: dict[str, Any], s: _Scalars, state: dict[str, Tensor]) -> None:
        """Assign p (and its state) their new values, built from p's gradient node g."""
        raise NotImplementedError

    # ---- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat name -> array (npz-friendly): the step count, each group's learning rate, and each
        parameter's state and own step count (param{i}.step), keyed by the parameter's position."""
        out: dict[str, np.ndarray] = {"steps": np.array(self.steps, np.int64)}
        for j, g in enumerate(self.param_groups):
            out[f"group{j}.lr"] = np.array(g["lr"], np.float64)
        for i, p in enumerate(self._all_params()):
            if id(p) in self.param_steps:
                out[f"param{i}.step"] = np.array(self.param_steps[id(p)], np.int64)
            for name, t in self.state.get(id(p), {}).items():
                out[f"param{i}.{name}"] = t.numpy()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a state_dict() of an optimizer of the same type over the same parameters (by position). Anything
        else raises before anything is loaded: keys this optimizer would not write (another optimizer type,
        more groups or parameters) or a state shape that differs from its parameter's."""
        name = type(self).__name__
        if "steps" not in state:
            raise KeyError(f"{name}.load_state_dict: no 'steps' entry; expected a picograd optimizer state_dict "
                           f"(keys 'steps', 'group<j>.lr', 'param<i>.<state>'), got keys {sorted(state)[:8]}")
        params = self._all_params()
        known = {"steps", *(f"group{j}.lr" for j in range(len(self.param_groups)))}
        known.update(f"param{i}.{n}" for i in range(len(params)) for n in ("step", *self._state_names()))
        unexpected = sorted(k for k in state if k not in known)
        if unexpected:
            raise ValueError(f"{name}.load_state_dict: unexpected keys {unexpected[:8]}: the checkpoint is of "
                             f"another optimizer type or of more parameter groups or parameters (this one has "
                             f"{len(self.param_groups)} groups, {len(params)} parameters, state "
                             f"{list(self._state_names())})")
        for i, p in enumerate(params):
            for n in self._state_names():
                key = f"param{i}.{n}"
                if key in state and np.shape(state[key]) != p.shape:
                    raise ValueError(f"{name}.load_state_dict: {key} has shape {np.shape(state[key])}, "
                                     f"parameter {i} has {p.shape}")
        self.steps = int(np.asarray(state["steps"]))
        for j, g in enumerate(self.param_groups):
            if f"group{j}.lr" in state:
                g["lr"] = float(np.asarray(state[f"group{j}.lr"]))
        for i, p in enumerate(self._all_params()):
            has_state = any(f"param{i}.{name}" in state for name in self._state_names())
            if f"param{i}.step" in state:
                self.param_steps[id(p)] = int(np.asarray(state[f"param{i}.step"]))
            elif has_state:  # a checkpoint from before per-parameter counts: its state is the global count's
                self.param_steps[id(p)] = self.steps
            for name in self._state_names():
                key = f"param{i}.{name}"
                if key in state:
                    arr = np.asarray(state[key], dtype=p.dtype)
                    if arr.shape != p.shape:
                        raise ValueError(f"load_state_dict: {key} has shape {arr.shape}, parameter has {p.shape}")
                    self._state(p)[name] = Tensor(arr, requires_grad=False, device=p.device)

    def _all_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]


class _Scalars:
    """One step's runtime scalars for the parameters of a group that share a step count, each made (as a
    fresh 0-d buffer) and broadcast once per dtype, device and shape, and only if an update asks for it.
    Each tells picograd.jit how to compute its next value from the optimizer's state, so a replayed step
    follows lr changes and the step count (that of `pid`, one of those parameters: they advance together)."""

    def __init__(self, opt: Optimizer, group: dict[str, Any], pid: int) -> None:
        self.opt, self.group, self.pid = opt, group, pid
        self.values = opt._scalars(group, opt.param_steps[pid])
        self.nodes: dict[tuple, Node] = {}

    @staticmethod
    def value_now(opt: Optimizer, group: dict[str, Any], pid: int, name: str, dtype: np.dtype) -> np.ndarray:
        return np.array(opt._scalars(group, opt.param_steps[pid])[name], dtype=dtype)

    def __call__(self, name: str, like: Node) -> Node:
        key = (name, like.dtype.str, like.device, like.shape)
        n = self.nodes.get(key)
        if n is None:
            base = self.nodes.get(key[:3])
            if base is None:
                base = self.nodes[key[:3]] = G.scalar(self.values[name], like.dtype, like.device or "cpu")
                recording.producer(f"{type(self.opt).__name__}.{name}", base.buffer,
                                   functools.partial(self.value_now, self.opt, self.group, self.pid, name, like.dtype))
            n = self.nodes[key] = G.broadcast(base, like.shape)
        return n


class SGD(Optimizer):
    """p -= lr * g, with optional L2 weight_decay, momentum (PyTorch's form, dampening) and nesterov."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov))

    def _check(self, group: dict[str, Any]) -> None:
        super()._check(group)
        momentum, dampening, wd = (self._number(group, k) for k in ("momentum", "dampening", "weight_decay"))
        if group["nesterov"] and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov momentum needs momentum > 0 and dampening = 0")
        if momentum < 0 or wd < 0:
            raise ValueError(f"SGD: momentum ({momentum}) and weight_decay ({wd}) must be >= 0")

    def _state_names(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if any(g["momentum"] for g in self.param_groups) else ()

    def _scalars(self, group: dict[str, Any], step: int) -> dict[str, float]:
        # PyTorch's first momentum step (the parameter's first gradient, which creates its buffer) takes the
        # gradient undamped; later ones scale it by 1-dampening.
        damp = 1.0 if step == 1 else 1.0 - group["dampening"]
        return {"neg_lr": -group["lr"], "damp": damp}

    def _update(self, p: Tensor, g: Node, group: dict[str, Any], s: _Scalars, state: dict[str, Tensor]) -> None:
        x = p.node
        if group["weight_decay"]:
            g = B.add(g, B.mul(x, G.const(group["weight_decay"], x.dtype, x.shape)))
        mu = group["momentum"]
        if mu:
            buf = state["momentum_buffer"]
            # The buffer starts at zero, so without dampening step 1 gives buf = g exactly, as in PyTorch.
            new = B.add(B.mul(buf.node, G.const(mu, x.dtype, x.shape)),
                        B.mul(g, s("damp", x)) if group["dampening"] else g)
            buf.assign(Tensor(new))
            g = B.add(g, B.mul(new, G.const(mu, x.dtype, x.shape))) if group["nesterov"] else new
        p.assign(Tensor(B.add(x, B.mul(g, s("neg_lr", x)))))


class Adam(Optimizer):
    """Adam (PyTorch's formula): p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps). weight_decay adds L2 to
    the gradient; AdamW decouples it."""

    decoupled = False

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _check(self, group: dict[str, Any]) -> None:
        super()._check(group)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{type(self).__name__}: betas must be a pair (beta1, beta2), got {betas!r}")
        b1, b2 = (self._number({"betas": b}, "betas") for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {tuple(betas)}")
        group["betas"] = (b1, b2)
        eps, wd = self._number(group, "eps"), self._number(group, "weight_decay")
        if eps < 0 or wd < 0:
            raise ValueError(f"{type(self).__name__}: eps ({eps}) and weight_decay ({wd}) must be >= 0")

    def _state_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _scalars(self, group: dict[str, Any], step: int) -> dict[str, float]:
        # Bias corrections are host arithmetic on the parameter's step count: one scalar each per step.
        b1, b2 = group["betas"]
        t = step
        return {"neg_step_size": -group["lr"] / (1.0 - b1**t), "inv_sqrt_bc2": 1.0 / math.sqrt(1.0 - b2**t),
                "decay": 1.0 - group["lr"] * group["weight_decay"]}

    def _update(self, p: Tensor, g: Node, group: dict[str, Any], s: _Scalars, state: dict[str, Tensor]) -> None:
        x = p.node
        b1, b2 = group["betas"]
        wd = group["weight_decay"]

        def c(v: float) -> Node:
            return G.const(v, x.dtype, x.shape)

        if wd and not self.decoupled:
            g = B.add(g, B.mul(x, c(wd)))
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m_new = B.add(B.mul(m.node, c(b1)), B.mul(g, c(1.0 - b1)))
        v_new = B.add(B.mul(v.node, c(b2)), B.mul(B.mul(g, g), c(1.0 - b2)))
        m.assign(Tensor(m_new))
        v.assign(Tensor(v_new))
        denom = B.add(B.mul(B.unary("sqrt", v_new), s("inv_sqrt_bc2", x)), c(group["eps"]))
        step = B.mul(B.binary("div", m_new, denom), s("neg_step_size", x))  # as torch's addcdiv
        base = B.mul(x, s("decay", x)) if wd and self.decoupled else x
        p.assign(Tensor(B.add(base, step)))


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr*weight_decay before the Adam step."""

    decoupled = True

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr, betas, eps, weight_decay)
