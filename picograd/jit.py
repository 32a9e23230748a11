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
import sys
import types
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import recording
from . import tensor as _t
from .ir.node import Buffer, buffer_node
from .realize import _listening
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
            if out is not _STALE:
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
            _t.realize(*_tensors_in(out))
        finally:
            recording.in_place[0] = False
        return out

    def _trace(self, entry: _Entry, args: tuple, kwargs: dict, flat: list[Any]) -> Any:
        self.stats["traced"] += 1
        # which gradients the step finds set when it starts (see _Plan.zeroed): those of the plans it may agree with
        known = [entry.last] if entry.last is not None else entry.known if entry.verify else []
        had_grad = {id(p): p.grad is not None for plan in known for p in plan.grad_owners(flat)}
        log = recording.Log()
        recording.current[0] = log
        recording.in_place[0] = _IN_PLACE
        try:
            out = self.fn(*args, **kwargs)
            returned = _tensors_in(out)
            _t.realize(*returned)
        finally:
            recording.current[0] = None
            recording.in_place[0] = False
        plan = _Plan.make(log, flat, out, had_grad)
        if plan is _NOTHING:  # everything it returns was computed before (hash-consing found it): try again later
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
    last: _Plan | None = None
    plan: _Plan | None = None
    broken: str = ""  # why it runs plainly
    generation: int = 0  # recording.generation its traces were made under
    # plans (or agreeing first traces) made under other generations, newest first: after a module switches between
    # train() and eval() and back, the first call's trace is compared with them rather than traced from scratch
    known: list[_Plan] = field(default_factory=list)
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


_STALE = object()
# Gradients of at least this many elements are written over their previous arrays (_reuse_of): what that saves is
# cache footprint, ~2.5 MB per 800x800 gradient, while its checks cost ~5 us of Python per gradient per step (a
# tiny Adam model: 239 -> 270 us per replay with every gradient checked).
_REUSE_MIN = 1 << 18
_NOTHING = "nothing to compute"


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
            return _same_kind(a, [conv(v) for v in a])
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


def _same_kind(seq: tuple | list, items: list) -> Any:
    """A tuple or list of seq's type holding items (a namedtuple takes them as fields)."""
    return type(seq)(*items) if hasattr(seq, "_fields") else type(seq)(items)


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


def _tensors_in(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [x for o in out for x in _tensors_in(o)]
    if isinstance(out, dict):
        return [x for o in out.values() for x in _tensors_in(o)]
    return []


class _Slot:
    """Where a returned tensor stands in the function's result (its structure is kept without the tensors)."""


def _skeleton(out: Any) -> Any:
    """The function's result with each tensor replaced by _Slot (the trace's tensors are not kept alive)."""
    if isinstance(out, Tensor):
        return _Slot
    if isinstance(out, (tuple, list)):
        return _same_kind(out, [_skeleton(o) for o in out])
    if isinstance(out, dict):
        return {k: _skeleton(o) for k, o in out.items()}
    return out


def _rebuild(out: Any, new: Any) -> Any:
    """The skeleton filled with this replay's tensors (an iterator, in _tensors_in's order)."""
    if out is _Slot:
        return next(new)
    if isinstance(out, (tuple, list)):
        return _same_kind(out, [_rebuild(o, new) for o in out])
    if isinstance(out, dict):
        return {k: _rebuild(o, new) for k, o in out.items()}
    return out


class _Plan:
    """Everything a replay needs, taken from one traced call."""

    run: Callable[[list[Any]], list[Any]]
    slots: list[tuple[str, Any]]  # per program input: ("arg", i) | ("host", k) | ("owner", weakref) | ("const", data)
    actions: list[recording.HostAction]
    # per tensor the step assigns or gives a gradient: (kind, which, output index, device), kind being
    #   "state": the same tensor every call (which: a weakref), updated in place as the Python would;
    #   "arg": argument tensor `which`;
    #   "grad" / "arg_grad": the gradient of a tensor (a weakref) / of argument `which`: as backward() does, the
    #     replay binds a tensor holding it to that tensor's .grad (a new one, unless the old one is written over)
    writes: list[tuple[str, Any, int, str]]
    # per "grad"/"arg_grad" write: the step was traced finding that .grad set (so it zeroes it itself); when not,
    # the gradient was None when the step began, and a replay finding one set (which the Python would add to)
    # traces again
    zeroed: list[bool]
    unzeroed: list[tuple[str, Any]]  # (kind, which) of the gradient writes not zeroed
    host_slots: list[tuple[int, int]]  # (input slot, action) per input a host action produces
    # input slots the program updates in place (written over when their tensor alone holds them) -> the root
    # (output index) that writes over each
    donated_root: dict[int, int]
    kept: frozenset[int]  # the donated roots whose tensor keeps its Buffer when all donations hold
    kept_not: frozenset[int]  # roots returned or written twice (their results are always needed)
    fresh: list[tuple[int, int]]  # writes of tensors the program doesn't read (gradients): (write index, root)
    # per returned tensor, what the Python would have returned:
    #   ("out", (root, device)): a new tensor holding the program's root;
    #   ("arg", i) / ("arg_view", i): argument i itself / a new tensor sharing its value (x.reshape(x.shape));
    #   ("write", k): the tensor write k updated (a parameter, the new gradient);
    #   ("state", tensor): a tensor the program doesn't compute, the same each call (state: its current value);
    #   ("const", node): such a value the traces agree on but that is a new tensor each call: a new tensor on it;
    #   ("again", q): the tensor returned at position q, once more
    returns: list[tuple[str, Any]]
    out: Any  # the function's result, tensors replaced by _Slot

    @staticmethod
    def make(log: recording.Log, flat: list[Tensor], out: Any, had_grad: dict[int, bool]) -> _Plan | str:
        if len(log.realizes) != 1:
            return (
                f"it realized {len(log.realizes)} times (.item(), .numpy() or realize() inside it); a step that "
                "can be replayed realizes once, when it returns: return the tensors you need instead"
            )
        cap = log.realizes[0]
        if not cap["todo"]:
            return _NOTHING
        if cap["run"] is None:
            return "its backend cannot replay programs (the numpy interpreter, or a graph too big to compile)"
        p = _Plan()
        p.run, p.actions, p.out = cap["run"], log.actions, _skeleton(out)
        args = {id(t.node.buffer): i for i, t in enumerate(flat)}
        host = {id(a.buffer): k for k, a in enumerate(log.actions) if a.buffer is not None}
        p.slots = []
        for n in cap["inputs"]:
            buf = n.buffer
            if id(buf) in args:
                p.slots.append(("arg", args[id(buf)]))
            elif id(buf) in host:
                p.slots.append(("host", host[id(buf)]))
            elif buf.owner is not None and buf.owner() is not None:
                p.slots.append(("owner", buf.owner))
            else:
                p.slots.append(("const", buf))
        index = {id(n): j for j, n in enumerate(cap["todo"])}
        tensors, pending, nodes = cap["tensors"], cap["pending"], cap["nodes"]
        readers = [x() for kind, x in p.slots if kind == "owner"]
        p.writes, p.zeroed, written = [], [], {}
        for t, n in zip(pending, nodes[len(tensors) :], strict=True):
            if id(n) not in index:
                return f"a tensor of shape {t.shape} is assigned a value the step does not compute"
            written[id(t)] = len(p.writes)
            owner = _grad_owner(t, n, flat, readers)
            if owner is not None:
                arg = next((i for i, a in enumerate(flat) if a is owner), None)
                kind, which = ("grad", weakref.ref(owner)) if arg is None else ("arg_grad", arg)
                p.zeroed.append(had_grad.get(id(owner), False))
            else:
                arg = next((i for i, a in enumerate(flat) if a is t), None)
                kind, which = ("state", weakref.ref(t)) if arg is None else ("arg", arg)
            p.writes.append((kind, which, index[id(n)], t.device))
        p.returns, seen = [], {}
        for q, (t, n) in enumerate(zip(tensors, nodes[: len(tensors)], strict=True)):
            if id(t) in seen:
                p.returns.append(("again", seen[id(t)]))
                continue
            seen[id(t)] = q
            arg = next((i for i, a in enumerate(flat) if a is t or a.node is t.node), None)
            if id(t) in written:
                p.returns.append(("write", written[id(t)]))
            elif id(n) in index:
                p.returns.append(("out", (index[id(n)], t.device)))
            elif arg is not None:
                p.returns.append(("arg" if flat[arg] is t else "arg_view", arg))
            elif t.node.buffer is not None and t.node.buffer.owner is not None and t.node.buffer.owner() is t:
                p.returns.append(("state", t))
            else:
                p.returns.append(("const", t.node))
        grads = [(kind, x) for kind, x, _, _ in p.writes if kind in ("grad", "arg_grad")]
        p.unzeroed = [g for g, zeroed in zip(grads, p.zeroed, strict=True) if not zeroed]
        p.host_slots = [(j, x) for j, (kind, x) in enumerate(p.slots) if kind == "host"]
        p.donated_root = _in_place_slots(cap["run"], p.slots, p.writes)
        # roots also returned, or written to two tensors: their results are always needed
        p.kept_not = frozenset(x[0] for kind, x in p.returns if kind == "out") | {
            j for k, (_, _, j, _) in enumerate(p.writes) if any(w[2] == j for w in p.writes[k + 1 :])
        }
        p.kept = frozenset(p.donated_root.values()) - p.kept_not
        read = {id(x) for x in readers}
        reusing = hasattr(getattr(p.run, "__self__", None), "reusable")  # CPU programs (cache.Program)
        p.fresh = [
            (k, j)
            for k, (kind, t, j, _) in enumerate(p.writes)
            if reusing and kind != "arg" and (kind != "state" or id(t()) not in read) and pending[k].size >= _REUSE_MIN
        ]
        return p

    def grad_owners(self, flat: list[Tensor]) -> list[Tensor]:
        """The tensors whose gradient the step sets (alive ones)."""
        owners = [x() if kind == "grad" else flat[x] for kind, x, _, _ in self.writes if kind.endswith("grad")]
        return [o for o in owners if o is not None]

    @property
    def donations(self) -> list[int]:
        """The input slots the program updates in place."""
        return list(self.donated_root)

    def differs(self, other: _Plan) -> str | None:
        """Why two traces of the same signature can't share one replay, or None when they agree."""
        if self.run != other.run:
            return "its two traces built different programs (the graph depends on something that changes)"
        if [a.tag for a in self.actions] != [a.tag for a in other.actions]:
            return "its two traces made different host-side updates (optimizer steps, dropout seeds)"
        if len(self.slots) != len(other.slots) or [w[2] for w in self.writes] != [w[2] for w in other.writes]:
            return "its two traces read or wrote different tensors"
        for j, ((ka, a), (kb, b)) in enumerate(zip(self.slots, other.slots, strict=True)):
            if ka != kb:
                return f"input {j} of its program changed kind between traces ({ka} vs {kb})"
            if ka == "owner" and a() is not b():
                return (
                    f"input {j} of its program ({_describe(b)}) is a different tensor each call; state a step "
                    "reads must live outside it (e.g. gradients accumulated without zero_grad())"
                )
            if ka == "const" and a is not b and not _same_data(a, b):
                return (
                    f"input {j} of its program ({_describe(b)}) is made inside the function (or by its last call) "
                    "and changes between calls: pass it as an argument or keep it in a tensor that outlives the "
                    "call (gradients accumulated without zero_grad() are such a case)"
                )
            if ka in ("arg", "host") and a != b:
                return f"input {j} of its program comes from a different argument or scalar each call"
        for (ka, a, _, _), (kb, b, _, _) in zip(self.writes, other.writes, strict=True):
            same = a() is b() if ka == kb and ka in ("state", "grad") else ka == kb and a == b
            if not same:
                return "its two traces assigned (or gave gradients to) different tensors"
        if [_uncomputed(k) for k, _ in self.returns] != [_uncomputed(k) for k, _ in other.returns]:
            return "its two traces returned different kinds of tensors"
        for q, ((ka, a), (kb, b)) in enumerate(zip(self.returns, other.returns, strict=True)):
            if _uncomputed(ka) != "const":
                if a != b:
                    return "its two traces returned different tensors"
                continue
            na, nb = a.node if ka == "state" else a, b.node if kb == "state" else b
            if a is not b and na is not nb and not _same_data(na.buffer, nb.buffer):
                return (
                    f"it returns a tensor ({_describe(nb.buffer)}) that its program does not compute and that "
                    "changes between calls: compute it in the step, or pass it as an argument"
                )
            if kb == "state" and a is not b:  # made inside (the same value each call): a new tensor each call
                other.returns[q] = ("const", nb)
        return None

    def describe(self) -> list[str]:
        prog = getattr(self.run, "__self__", None) or getattr(self.run, "args", [None])[0]
        key = getattr(prog, "key_hash", None)
        lines = [
            f"program {key or type(prog).__name__}: {len(self.slots)} inputs, {len(self.writes)} tensors "
            f"written back, {len(self.returns)} returned"
        ]
        for j, (kind, x) in enumerate(self.slots):
            if kind == "arg":
                src = f"argument tensor {x}"
            elif kind == "host":
                src = f"host scalar from {self.actions[x].tag}"
            elif kind == "owner":
                src = f"current value of a {_describe(x)} tensor"
                if j in self.donated_root:
                    src += ", updated in place"
            else:
                src = f"constant {_describe(x)} frozen at the trace"
            lines.append(f"  in{j}: {src}")
        effects = [a.tag for a in self.actions if a.buffer is None]
        if effects:
            lines.append(f"  host effects per call: {', '.join(effects)}")
        return lines

    def replay(self, flat: list[Tensor]) -> Any:
        sole = []
        for i in self.donated_root:
            t = self.slots[i][1]()
            if t is not None and _sole_value(t):
                sole.append(i)
        # a tensor updated in its own array keeps its Buffer: no new Buffer, node or reshaped view for it
        every = len(sole) == len(self.donated_root)
        skip = self.kept if every else {self.donated_root[i] for i in sole} - self.kept_not
        # Whatever makes this call trace again is found before any host action runs: an action (an optimizer's
        # step count, a dropout seed) must run exactly once per call, and the traced call runs it in Python.
        arrays: list[Any] = []
        for kind, x in self.slots:
            if kind == "owner":
                t = x()
                if t is None:
                    return _STALE
                buf = t.node.buffer
                if buf is None:  # assigned outside the step and not realized yet
                    _t.realize(t)
                    buf = t.node.buffer
                arrays.append(buf.data)
            elif kind == "arg":
                arrays.append(flat[x].node.buffer.data)
            elif kind == "host":
                arrays.append(None)  # below, once nothing can stop the replay
            else:
                arrays.append(x.data)
        for kind, x in self.unzeroed:
            owner = x() if kind == "grad" else flat[x]
            if owner is not None and owner.grad is not None:
                return _STALE  # the Python would add to that gradient: the trace started from None
        host = [a.fn() for a in self.actions]  # numpy values: a device program uploads them itself
        for j, k in self.host_slots:
            arrays[j] = host[k]
        reuse = _reuse_of(self, flat)
        if reuse:
            # a gradient written over its own array keeps its Buffer too, as a parameter updated in place does
            skip = set(skip) | (set(reuse) - self.kept_not)
            outs = self.run(arrays, sole, skip, reuse)
        else:
            outs = self.run(arrays, sole, skip) if self.donated_root else self.run(arrays)
        bound: list[Tensor | None] = []  # per write: the tensor holding its new value
        for kind, x, j, dev in self.writes:
            if kind == "state" or kind == "arg":
                t = x() if kind == "state" else flat[x]
                if t is not None and outs[j] is not None:
                    buf = Buffer(outs[j], dev)
                    buf.owner = weakref.ref(t)
                    if t._rg is not False:
                        buf.leaf = buf.owner
                    t.node = buffer_node(buf)
                bound.append(t)
                continue
            owner = x() if kind == "grad" else flat[x]
            if owner is None:
                bound.append(None)
            elif reuse and j in reuse:  # written over the array of the gradient it had, which nothing else holds
                bound.append(owner.grad)
            else:  # a new tensor, as backward() binds: whoever kept the last gradient keeps its value
                g = owner.grad = Tensor(buffer_node(Buffer(outs[j], dev)), requires_grad=False)
                bound.append(g)
        new: list[Tensor | None] = []
        for kind, x in self.returns:
            if kind == "out":
                new.append(Tensor(buffer_node(Buffer(outs[x[0]], x[1])), requires_grad=False))
            elif kind == "write":
                new.append(bound[x])
            elif kind == "arg":
                new.append(flat[x])
            elif kind == "arg_view":
                new.append(Tensor(flat[x].node))
            elif kind == "state":
                new.append(x)
            elif kind == "const":
                new.append(Tensor(x, requires_grad=False))
            else:
                new.append(new[x])
        return _rebuild(self.out, iter(new))


def _uncomputed(kind: str) -> str:
    """A return kind, "state" and "const" alike (a value the program doesn't compute)."""
    return "const" if kind == "state" else kind


def _grad_owner(t: Tensor, n: Any, flat: list[Tensor], readers: list[Tensor | None]) -> Tensor | None:
    """The tensor whose .grad a tensor the step realized is (backward() made it), or None (an assigned tensor)."""
    if n.op == "grad":  # d root / d leaf: the leaf's Buffer names its tensor
        leaf = n.srcs[1].buffer
        owner = leaf.leaf() if leaf is not None and leaf.leaf is not None else None
        if owner is not None and owner.grad is t:
            return owner
    return next((o for o in (*flat, *readers) if o is not None and o.grad is t), None)


def _reuse_of(plan: _Plan, flat: list[Tensor]) -> dict[int, np.ndarray] | None:
    """{root: array} for the step's gradients whose current values nothing else holds: the program writes the new
    ones into those arrays rather than into its alternating output pool, so a step touches one array per gradient
    (seed model: ~5 MB less per step; its two weight-gradient + Adam kernels ~60-120 us faster each)."""
    if not plan.fresh:
        return None
    prog = plan.run.__self__
    view = _sole_counts()[1]
    reuse = {}
    for k, root in plan.fresh:
        kind, x, _, _ = plan.writes[k]
        if kind == "state":
            t = x()
        else:
            # a gradient: its old tensor must be held by .grad alone (a user's `g = w.grad` keeps its value)
            owner = x() if kind == "grad" else flat[x]
            if owner is None or owner.grad is None or _grad_refs(owner) != _sole_grad():
                continue
            t = owner.grad
        if t is None:
            continue
        counts = _ref_counts(t)  # before this function holds any of them
        if counts is None or counts[:3] != view[:3]:
            continue
        base = prog.reusable(root, t.node.buffer.data)
        # its program's output pool may hold the array too (cache.Program._args): that reference is expected
        if base is not None and counts[3] == view[3] + prog.pooled(root, base):
            reuse[root] = base
    return reuse


def _describe(x: Any) -> str:
    if isinstance(x, weakref.ref):
        x = x()
        return f"{x.dtype}{list(x.shape)}" if x is not None else "a dead tensor"
    return f"{x.data.dtype}{list(x.data.shape)}"


def _same_data(a: Buffer, b: Buffer) -> bool:
    da, db = (np.asarray(x.data.copy_to_host() if hasattr(x.data, "copy_to_host") else x.data) for x in (a, b))
    return da.dtype == db.dtype and da.shape == db.shape and bool(np.array_equal(da, db, equal_nan=True))


def _in_place_slots(run: Callable, slots: list, writes: list) -> dict[int, int]:
    """{input slot: root} where the program writes the root, the step's new value of the slot's tensor, into
    the slot's array (a CPU program's in_place pairs). A replay passes the slots as `sole` when nothing else
    holds the old value."""
    prog = getattr(run, "__self__", None)
    pairs = getattr(prog, "in_place", None)
    if not pairs:
        return {}
    written = {prog.results[j][1]: (x(), j) for kind, x, j, _ in writes if kind == "state" and not prog.results[j][0]}
    out = {}
    for jb, i in pairs.items():
        t, root = written.get(jb, (None, -1))
        if slots[i][0] == "owner" and t is not None and t is slots[i][1]():
            out[i] = root
    return out


def _ref_counts(t: Tensor) -> tuple[int, ...] | None:
    """References to t's value at each level (its node, Buffer, array, the array's base); None for a value
    that can't be written over (not a realized CPU array, or a view of a view)."""
    node = t.node
    buf = node.buffer
    if buf is None or node.op != "buffer" or type(buf.data) is not np.ndarray:
        return None
    data = buf.data
    base = data.base
    if base is None:
        return sys.getrefcount(node), sys.getrefcount(buf), sys.getrefcount(data), -1
    if type(base) is not np.ndarray or base.base is not None:
        return None
    return sys.getrefcount(node), sys.getrefcount(buf), sys.getrefcount(data), sys.getrefcount(base)


def _calibrate() -> tuple[tuple[int, ...] | None, ...]:
    """_ref_counts of values that only their tensor holds, plain and as a view, measured on this
    interpreter (reference counting details differ between Python versions)."""
    counts = []
    for view in (False, True):
        t = Tensor(np.zeros(1, np.float32), requires_grad=False)
        t.node = buffer_node(Buffer(np.zeros(2, np.float32).reshape(1, 2) if view else np.zeros(2, np.float32)))
        counts.append(_ref_counts(t))
    return tuple(counts)


_SOLE: list[tuple[tuple[int, ...] | None, ...]] = []


def _sole_counts() -> tuple[tuple[int, ...] | None, ...]:
    """_calibrate's counts (plain, view), measured once per process."""
    if not _SOLE:
        _SOLE.append(_calibrate())
    return _SOLE[0]


def _grad_refs(owner: Tensor) -> int:
    """References to the Tensor object that is owner.grad (the caller must hold none)."""
    g = owner.grad
    return sys.getrefcount(g)


_SOLE_GRAD: list[int] = []


def _sole_grad() -> int:
    """_grad_refs of a gradient that nothing but its tensor's .grad holds, measured once per process."""
    if not _SOLE_GRAD:
        owner = Tensor(np.zeros(1, np.float32), requires_grad=False)
        owner.grad = Tensor(np.zeros(1, np.float32), requires_grad=False)
        _SOLE_GRAD.append(_grad_refs(owner))
    return _SOLE_GRAD[0]


def _sole_value(t: Tensor) -> bool:
    """True when nothing but t holds its current value: no lazy graph reads it, no other tensor, array or
    view shares it. Then writing t's new value over it is invisible (picograd's Buffers are otherwise never
    modified). Counts are compared exactly with calibrated ones: a difference either way means "copy"."""
    counts = _ref_counts(t)
    return counts is not None and counts in _sole_counts()
