"""picograd.jit: run a training step's compiled program without running the step's Python.

A lazy step rebuilds its graph in Python every time (~0.4 ms for a small MLP, over 1 ms with Adam on the
seed's model) only to find the program it compiled already. `jit` traces the function instead, the way
jax.jit and tinygrad's TinyJit do, and then replays: it binds the new arguments, the current values of the
model's and the optimizer's tensors, and fresh runtime scalars straight to the cached program.

    @picograd.jit
    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss                      # returned tensors come back realized

    for x, y in loader:
        loss = train_step(x, y)

How a call runs, per signature of the arguments (shapes, dtypes, devices, also of tensors inside tuples, lists
and dicts; other arguments by value):
  1. plainly (it compiles the program);
  2. and 3. plainly while recording what the realize at its return read and wrote; the two records must
     agree (same program; the same tensors as state; anything made inside the function unchanged), so a
     step whose Python makes different data each call is never replayed;
  4. on: replayed. Optimizer steps and dropout seeds advance exactly as if the Python had run (they
     register how, in picograd.recording); a learning rate set on the optimizer takes effect. Gradients are
     bound to `.grad` (of parameters and of arguments) as backward() binds them, and the function returns
     what its Python would: this call's arguments, a parameter itself, new tensors for what it computes.

A module switching between train() and eval() makes the next call trace again; when that trace agrees with
one made before (back in train() after an evaluation), the calls after it replay. Other Python state the
function reads to decide its graph (hyperparameters other than the learning rate, flags of your own) is
frozen at the trace, as with jax.jit: call `reset()` after changing it. Steps that realize inside (e.g.
`.item()` in the function), or whose records disagree, keep running plainly, with one warning saying why.
With PICOGRAD_DEBUG or a picograd-dump capture on, calls run plainly so that every step is seen. On a
method, `@picograd.jit` traces each instance on its own."""

from __future__ import annotations

import functools
import os
import types
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import recording
from . import tensor as _t
from .realize import _listening
from .replay import NOTHING, STALE, Plan, same_kind, tensors_in
from .tensor import Tensor

__all__ = ["jit"]

_TRACES = 2  # recorded calls that must agree before replaying
# Replays update optimizer state and parameters in place (PICOGRAD_IN_PLACE=0: into fresh arrays, as plain
# realizes do). Seed model, Adam: the two big updates take ~250 us less each, with half the memory touched.
_IN_PLACE = os.environ.get("PICOGRAD_IN_PLACE", "1") != "0"


class jit:
    """Decorator: trace a step function, then replay its compiled program (see the module docstring). On a method,
    each instance gets its own traces (see __get__)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self._entries: dict[tuple, _Entry] = {}
        self.stats = {"plain": 0, "traced": 0, "replayed": 0}
        # per instance, for a jitted method: id(instance) -> (weak reference to it, its _entries, its stats)
        self._per_instance: dict[int, tuple[weakref.ref, dict, dict]] = {}

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        """`@picograd.jit` on a method: `obj.step` is a jit of the method bound to obj. Its traces belong to obj
        (another instance reads other parameters) and live as long as obj does: they are kept here by a weak
        reference to obj, not on obj itself (which would copy or pickle them with it)."""
        if obj is None:
            return self
        key = id(obj)
        held = self._per_instance.get(key)
        if held is None or held[0]() is not obj:
            per = self._per_instance

            def forget(_: weakref.ref, key: int = key) -> None:
                if key in per and per[key][0]() is None:
                    del per[key]

            try:
                ref = weakref.ref(obj, forget)
            except TypeError:
                raise TypeError(
                    f"picograd.jit: method {getattr(self.fn, '__qualname__', self.fn)} needs instances that can be "
                    f"weakly referenced ({type(obj).__name__} has __slots__ without __weakref__)"
                ) from None
            held = per[key] = (ref, {}, {"plain": 0, "traced": 0, "replayed": 0})
        bound = object.__new__(jit)
        bound.__dict__.update(self.__dict__)
        bound.fn = bound.__wrapped__ = types.MethodType(self.fn, obj)
        bound._entries, bound.stats, bound._per_instance = held[1], held[2], {}
        return bound

    def describe(self) -> str:
        """What each traced signature replays: the program, where each of its inputs comes from, what it
        writes back; or why it runs plainly."""
        lines = []
        for key, e in self._entries.items():
            sig = _describe_sig(key[0])
            state = (
                "replaying"
                if e.plan is not None
                else "runs plainly: " + e.broken
                if e.broken
                else f"tracing ({e.calls} of {_TRACES + 1} calls)"
            )
            lines.append(f"{getattr(self.fn, '__name__', 'fn')}({sig}): {state}")
            plan = e.plan or e.last
            if plan is not None:
                lines += ["  " + ln for ln in plan.describe()]
        return "\n".join(lines) or "(not called yet)"

    def reset(self) -> None:
        """Forget the traces: the next calls trace again (after changing Python state the step reads)."""
        self._entries.clear()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _t._pending._refs:  # updates pending from outside belong to no step: realize them on their own
            _t.realize()
        if _t.is_eager() or _listening()[0] or recording.current[0] is not None:
            return self._plain(args, kwargs)
        args, kwargs, flat, key = _bind(args, kwargs)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(generation=recording.generation[0])
        elif entry.generation != recording.generation[0]:
            entry.switch(recording.generation[0])
        if entry.plan is not None:
            out = entry.plan.replay(flat)
            if out is not STALE:
                self.stats["replayed"] += 1
                return out
            # a state tensor died, or a gradient the trace found zeroed is not: trace again
            entry.plan, entry.calls, entry.last = None, 0, None
        if entry.broken or entry.calls == 0:
            entry.calls += 1
            return self._plain(args, kwargs, in_place=not entry.broken)
        return self._trace(entry, args, kwargs, flat)

    def _plain(self, args: tuple, kwargs: dict, in_place: bool = False) -> Any:
        """Run the Python. in_place: compile the program that its replays will run (state updated in place;
        see recording.in_place), so that tracing costs no second compile."""
        self.stats["plain"] += 1
        recording.in_place[0] = in_place and _IN_PLACE
        try:
            out = self.fn(*args, **kwargs)
            _t.realize(*tensors_in(out))
        finally:
            recording.in_place[0] = False
        return out

    def _trace(self, entry: _Entry, args: tuple, kwargs: dict, flat: list[Any]) -> Any:
        self.stats["traced"] += 1
        # which gradients the step finds set when it starts (see Plan.zeroed): those of the plans it may agree with
        known = [entry.last] if entry.last is not None else entry.known if entry.verify else []
        had_grad = {id(p): p.grad is not None for plan in known for p in plan.grad_owners(flat)}
        log = recording.Log()
        recording.current[0] = log
        recording.in_place[0] = _IN_PLACE
        try:
            out = self.fn(*args, **kwargs)
            returned = tensors_in(out)
            _t.realize(*returned)
        finally:
            recording.current[0] = None
            recording.in_place[0] = False
        plan = Plan.make(log, flat, out, had_grad)
        if plan is NOTHING:  # everything it returns was computed before (hash-consing found it): try again later
            return out
        if entry.verify and not isinstance(plan, str):
            # the first call since a train()/eval() switch: if it agrees with a plan of this signature made before
            # (switching back to the mode it was traced in), that plan's traces and this one agree: replay from now
            entry.verify = False
            match = next((k for k in entry.known if k.differs(plan) is None), None)
            if match is not None:
                entry.known.remove(match)
                entry.plan = entry.last = plan
                entry.calls = _TRACES + 1
                return out
            # a new mode: this trace counts as its first, but one call ahead of usual (no plain call since the
            # switch), so it may hold what a first call does once; a next trace that disagrees replaces it
            entry.last, entry.calls, entry.soft = plan, 2, True
            return out
        entry.verify = False
        reason = plan if isinstance(plan, str) else (entry.last.differs(plan) if entry.last is not None else None)
        if reason is not None and entry.soft and not isinstance(plan, str):
            entry.soft = False
            entry.last = plan
            return out
        if reason is not None:
            entry.broken = reason
            warnings.warn(
                f"picograd.jit({getattr(self.fn, '__name__', 'fn')}): runs without replay: {reason}",
                RuntimeWarning,
                stacklevel=3,
            )
            return out
        entry.soft = False
        entry.calls += 1
        entry.last = plan
        if entry.calls > _TRACES:
            entry.plan = plan
        return out


_KNOWN = 4  # plans kept per signature from other train()/eval() modes


@dataclass
class _Entry:
    calls: int = 0
    last: Plan | None = None
    plan: Plan | None = None
    broken: str = ""  # why it runs plainly
    generation: int = 0  # recording.generation its traces were made under
    # plans (or agreeing first traces) made under other generations, newest first: after a module switches between
    # train() and eval() and back, the first call's trace is compared with them rather than traced from scratch
    known: list[Plan] = field(default_factory=list)
    verify: bool = False  # the next trace is the first since a switch: compare it with `known`
    soft: bool = False  # `last` is such a first trace: one that the next trace disagrees with is replaced

    def switch(self, generation: int) -> None:
        """A module switched between train() and eval() (recording.generation moved): the graph the step builds
        may differ. Keying traces by every module's mode would need to know which modules exist; instead the
        current plan is kept aside, and the next call is traced and compared with the plans kept so far."""
        mine = self.plan or self.last
        if mine is not None:
            self.known = [mine] + [k for k in self.known if k is not mine][: _KNOWN - 1]
        self.calls = 1 if self.calls else 0  # a step that ran before needs no plain first call: it traces
        self.plan, self.last, self.broken, self.soft, self.generation = None, None, "", False, generation
        self.verify = self.calls > 0


def _bind(args: tuple, kwargs: dict) -> tuple[tuple, dict, list[Any], tuple]:
    """Arguments as the function sees them (arrays become Tensors), the tensors among them in order, and the
    signature that selects a trace: tensors by shape, dtype and device, anything else by value. Tensors inside
    tuples, lists and dicts are arguments too (keyed by identity, every call would trace anew and keep its
    arguments alive); such a container is passed on as a copy."""
    flat: list[Any] = []
    sig: list[Any] = []

    def conv(a: Any) -> Any:
        if isinstance(a, np.ndarray):
            a = Tensor(a, requires_grad=False)
        if isinstance(a, Tensor):
            if a.node.buffer is None:  # a lazy argument: its own program, before the step's
                _t.realize(a)
            flat.append(a)
            sig.append(("tensor", a.node.shape, a.node.dtype, a.device))
            return a
        if isinstance(a, (tuple, list, dict)) and _holds_tensors(a):
            if isinstance(a, dict):
                sig.append(("dict", tuple(a)))
                return {k: conv(v) for k, v in a.items()}
            sig.append((type(a), len(a)))
            return same_kind(a, [conv(v) for v in a])
        sig.append(("value", a))
        return a

    args = tuple(conv(a) for a in args)
    kwargs = {k: conv(kwargs[k]) for k in sorted(kwargs)}
    try:
        key = (tuple(sig), tuple(kwargs))
        hash(key)
    except TypeError as e:
        raise TypeError(f"picograd.jit: arguments must be Tensors, arrays or hashable values ({e})") from None
    return args, kwargs, flat, key


def _holds_tensors(a: Any) -> bool:
    if isinstance(a, (Tensor, np.ndarray)):
        return True
    if isinstance(a, (tuple, list)):
        return any(_holds_tensors(x) for x in a)
    if isinstance(a, dict):
        return any(_holds_tensors(x) for x in a.values())
    return False


def _describe_sig(sig: tuple) -> str:
    """_bind's signature as the arguments' shapes and values, for describe()."""
    items = iter(sig)

    def one(k: tuple) -> str:
        if k[0] == "tensor":
            return f"{k[2]}{list(k[1])}@{k[3]}"
        if k[0] == "value":
            return repr(k[1])
        if k[0] == "dict":
            return "{" + ", ".join(f"{name!r}: {one(next(items))}" for name in k[1]) + "}"
        inner = ", ".join(one(next(items)) for _ in range(k[1]))
        return f"[{inner}]" if issubclass(k[0], list) else f"({inner})"

    return ", ".join(one(k) for k in items)
