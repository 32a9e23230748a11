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

How a call runs, per signature of the arguments (shapes, dtypes, devices; other arguments by value):
  1. plainly (it compiles the program);
  2. and 3. plainly while recording what the realize at its return read and wrote; the two records must
     agree (same program; the same tensors as state; anything made inside the function unchanged), so a
     step whose Python makes different data each call is never replayed;
  4. on: replayed. Optimizer steps and dropout seeds advance exactly as if the Python had run (they
     register how, in picograd.recording); a learning rate set on the optimizer takes effect.

A module switching between train() and eval() makes the next calls trace again. Other Python state the
function reads to decide its graph (hyperparameters other than the learning rate, flags of your own) is
frozen at the trace, as with jax.jit: call `reset()` after changing it. Arguments' own `.grad` is not
set. Steps that realize inside (e.g. `.item()` in the function), or whose records disagree, keep running
plainly, with one warning saying why. With PICOGRAD_DEBUG or a picograd-dump capture on, calls run plainly
so that every step is seen."""

from __future__ import annotations

import functools
import os
import sys
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
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
    """Decorator: trace a step function, then replay its compiled program (see the module docstring)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self._entries: dict[tuple, _Entry] = {}
        self.stats = {"plain": 0, "traced": 0, "replayed": 0}

    def describe(self) -> str:
        """What each traced signature replays: the program, where each of its inputs comes from, what it
        writes back; or why it runs plainly."""
        lines = []
        for key, e in self._entries.items():
            # _bind's signature: (shape, dtype, device) per tensor, ("value", v) per other argument
            sig = ", ".join(f"{k[1]}{list(k[0])}@{k[2]}" if len(k) == 3 else repr(k[1]) for k in key[0])
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
        if entry is None or entry.generation != recording.generation[0]:
            entry = self._entries[key] = _Entry(generation=recording.generation[0])
        if entry.plan is not None:
            out = entry.plan.replay(flat)
            if out is not _STALE:
                self.stats["replayed"] += 1
                return out
            entry.plan, entry.calls, entry.last = None, 0, None  # a state tensor died: trace again
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
        plan = _Plan.make(log, flat, out, returned)
        if plan is _NOTHING:  # everything it returns was computed before (hash-consing found it): try again later
            return out
        reason = plan if isinstance(plan, str) else (entry.last.differs(plan) if entry.last is not None else None)
        if reason is not None:
            entry.broken = reason
            warnings.warn(
                f"picograd.jit({getattr(self.fn, '__name__', 'fn')}): runs without replay: {reason}",
                RuntimeWarning,
                stacklevel=3,
            )
            return out
        entry.calls += 1
        entry.last = plan
        if entry.calls > _TRACES:
            entry.plan = plan
        return out


@dataclass
class _Entry:
    calls: int = 0
    last: _Plan | None = None
    plan: _Plan | None = None
    broken: str = ""  # why it runs plainly
    generation: int = 0  # recording.generation when it started tracing


_STALE = object()
# Gradients of at least this many elements are written over their previous arrays (_reuse_of): what that saves is
# cache footprint, ~2.5 MB per 800x800 gradient, while its checks cost ~5 us of Python per gradient per step (a
# tiny Adam model: 239 -> 270 us per replay with every gradient checked).
_REUSE_MIN = 1 << 18
_NOTHING = "nothing to compute"


def _bind(args: tuple, kwargs: dict) -> tuple[tuple, dict, list[Any], tuple]:
    """Arguments as the function sees them (arrays become Tensors), the tensors among them in order, and the
    signature that selects a trace: tensors by shape, dtype and device, anything else by value."""
    flat: list[Any] = []
    sig: list[Any] = []

    def conv(a: Any) -> Any:
        if isinstance(a, np.ndarray):
            a = Tensor(a, requires_grad=False)
        if isinstance(a, Tensor):
            if a.node.buffer is None:  # a lazy argument: its own program, before the step's
                _t.realize(a)
            flat.append(a)
            sig.append((a.node.shape, a.node.dtype, a.device))
            return a
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


def _tensors_in(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [x for o in out for x in _tensors_in(o)]
    if isinstance(out, dict):
        return [x for o in out.values() for x in _tensors_in(o)]
    return []


def _rebuild(out: Any, new: dict[int, Tensor]) -> Any:
    """The function's result with each returned tensor swapped for this replay's."""
    if isinstance(out, Tensor):
        return new[id(out)]
    if isinstance(out, (tuple, list)):
        return type(out)(_rebuild(o, new) for o in out)
    if isinstance(out, dict):
        return {k: _rebuild(o, new) for k, o in out.items()}
    return out


class _Plan:
    """Everything a replay needs, taken from one traced call."""

    run: Callable[[list[Any]], list[Any]]
    slots: list[tuple[str, Any]]  # per program input: ("arg", i) | ("host", k) | ("owner", weakref) | ("const", data)
    actions: list[recording.HostAction]
    host_devices: list[str | None]  # per action: the device of the buffer it feeds (None: an effect)
    writes: list[tuple[weakref.ref, int, str]]  # tensor assigned by the step, output index, device
    # input slots the program updates in place (written over when their tensor alone holds them) -> the root
    # (output index) that writes over each
    donated_root: dict[int, int]
    kept: frozenset[int]  # the donated roots whose tensor keeps its Buffer when all donations hold
    kept_not: frozenset[int]  # roots returned or written twice (their results are always needed)
    fresh: list[tuple[weakref.ref, int]]  # writes to tensors the program doesn't read (gradients): (tensor, root)
    returns: list[tuple[int, str, Tensor | None]]  # per returned tensor: output index (or -1) and device
    out: Any
    returned: list[Tensor]

    @staticmethod
    def make(log: recording.Log, flat: list[Tensor], out: Any, returned: list[Tensor]) -> _Plan | str:
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
        p.run, p.actions, p.out, p.returned = cap["run"], log.actions, out, returned
        args = {id(t.node.buffer): i for i, t in enumerate(flat)}
        host = {id(a.buffer): k for k, a in enumerate(log.actions) if a.buffer is not None}
        p.host_devices = [a.buffer.device if a.buffer is not None else None for a in log.actions]
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
        p.writes = []
        for t, n in zip(pending, nodes[len(tensors) :], strict=True):
            if id(n) not in index:
                return f"a tensor of shape {t.shape} is assigned a value the step does not compute"
            p.writes.append((weakref.ref(t), index[id(n)], t.device))
        p.returns = [
            (index.get(id(n), -1), t.device, None if id(n) in index else t)
            for t, n in zip(tensors, nodes[: len(tensors)], strict=True)
        ]
        p.donated_root = _in_place_slots(cap["run"], p.slots, p.writes)
        # roots also returned, or written to two tensors: their results are always needed
        p.kept_not = frozenset(j for j, _, _ in p.returns if j >= 0) | {
            j for k, (_, j, _) in enumerate(p.writes) if any(w[1] == j for w in p.writes[k + 1 :])
        }
        p.kept = frozenset(p.donated_root.values()) - p.kept_not
        read = {id(x()) for kind, x in p.slots if kind == "owner"}
        reusing = hasattr(getattr(p.run, "__self__", None), "reusable")  # CPU programs (cache.Program)
        p.fresh = [(ref, j) for ref, j, _ in p.writes if reusing and id(ref()) not in read and ref().size >= _REUSE_MIN]
        return p

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
        if len(self.slots) != len(other.slots) or [w[1] for w in self.writes] != [w[1] for w in other.writes]:
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
        host: list[Any] = []
        for a, dev in zip(self.actions, self.host_devices, strict=True):
            v = a.fn()
            host.append(None if dev is None else v)  # a device program uploads its host values itself
        arrays = []
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
                arrays.append(host[x])
            else:
                arrays.append(x.data)
        reuse = _reuse_of(self)
        if reuse:
            # a gradient written over its own array keeps its Buffer too, as a parameter updated in place does
            skip = set(skip) | (set(reuse) - self.kept_not)
            outs = self.run(arrays, sole, skip, reuse)
        else:
            outs = self.run(arrays, sole, skip) if self.donated_root else self.run(arrays)
        for ref, j, dev in self.writes:
            t = ref()
            if t is not None and outs[j] is not None:
                buf = Buffer(outs[j], dev)
                buf.owner = ref
                if t._rg is not False:
                    buf.leaf = ref
                t.node = buffer_node(buf)
        new = {}
        for t, (j, dev, same) in zip(self.returned, self.returns, strict=True):
            new[id(t)] = same if j < 0 else Tensor(buffer_node(Buffer(outs[j], dev)), requires_grad=False)
        return _rebuild(self.out, new)


def _reuse_of(plan: _Plan) -> dict[int, np.ndarray] | None:
    """{root: array} for the step's gradients whose current values nothing else holds: the program writes the new
    ones into those arrays rather than into its alternating output pool, so a step touches one array per gradient
    (seed model: ~5 MB less per step; its two weight-gradient + Adam kernels ~60-120 us faster each)."""
    if not plan.fresh:
        return None
    prog = plan.run.__self__
    view = _sole_counts()[1]
    reuse = {}
    for ref, root in plan.fresh:
        t = ref()
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
    written = {prog.results[j][1]: (ref(), j) for ref, j, _ in writes if not prog.results[j][0]}
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


def _sole_value(t: Tensor) -> bool:
    """True when nothing but t holds its current value: no lazy graph reads it, no other tensor, array or
    view shares it. Then writing t's new value over it is invisible (picograd's Buffers are otherwise never
    modified). Counts are compared exactly with calibrated ones: a difference either way means "copy"."""
    counts = _ref_counts(t)
    return counts is not None and counts in _sole_counts()
