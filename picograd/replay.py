"""What a picograd.jit replay needs and does: the Plan taken from one traced call (which program, where each of
its inputs comes from, what it writes back and returns), how two traces are compared, and the replay itself.
picograd/jit.py decides when to trace and when to replay; this module never runs the step's Python."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from . import recording
from . import tensor as _t
from .ir.node import Buffer, buffer_node
from .refcount import grad_refs, ref_counts, sole_counts, sole_grad, sole_value
from .tensor import Tensor

STALE = object()
# Gradients of at least this many elements are written over their previous arrays (_reuse_of): what that saves is
# cache footprint, ~2.5 MB per 800x800 gradient, while its checks cost ~5 us of Python per gradient per step (a
# tiny Adam model: 239 -> 270 us per replay with every gradient checked).
REUSE_MIN = 1 << 18
NOTHING = "nothing to compute"


def same_kind(seq: tuple | list, items: list) -> Any:
    """A tuple or list of seq's type holding items (a namedtuple takes them as fields)."""
    return type(seq)(*items) if hasattr(seq, "_fields") else type(seq)(items)


def tensors_in(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [x for o in out for x in tensors_in(o)]
    if isinstance(out, dict):
        return [x for o in out.values() for x in tensors_in(o)]
    return []


class _Slot:
    """Where a returned tensor stands in the function's result (its structure is kept without the tensors)."""


def _skeleton(out: Any) -> Any:
    """The function's result with each tensor replaced by _Slot (the trace's tensors are not kept alive)."""
    if isinstance(out, Tensor):
        return _Slot
    if isinstance(out, (tuple, list)):
        return same_kind(out, [_skeleton(o) for o in out])
    if isinstance(out, dict):
        return {k: _skeleton(o) for k, o in out.items()}
    return out


def _rebuild(out: Any, new: Any) -> Any:
    """The skeleton filled with this replay's tensors (an iterator, in tensors_in's order)."""
    if out is _Slot:
        return next(new)
    if isinstance(out, (tuple, list)):
        return same_kind(out, [_rebuild(o, new) for o in out])
    if isinstance(out, dict):
        return {k: _rebuild(o, new) for k, o in out.items()}
    return out


class Plan:
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
    def make(log: recording.Log, flat: list[Tensor], out: Any, had_grad: dict[int, bool]) -> Plan | str:
        if len(log.realizes) != 1:
            return (
                f"it realized {len(log.realizes)} times (.item(), .numpy() or realize() inside it); a step that "
                "can be replayed realizes once, when it returns: return the tensors you need instead"
            )
        cap = log.realizes[0]
        if not cap["todo"]:
            return NOTHING
        if cap["run"] is None:
            return ("its backend cannot replay programs (the numpy interpreter, a graph too big to compile, or "
                    "tensors of more than one device realized together)")
        p = Plan()
        p.run, p.actions, p.out = cap["run"], log.actions, _skeleton(out)
        args = {id(t.node.buffer): i for i, t in enumerate(flat)}
        for src, dst in log.moved:  # an argument's host data moved to the device: the program uploads it
            if id(src) in args:
                args[id(dst)] = args[id(src)]
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
            if reusing and kind != "arg" and (kind != "state" or id(t()) not in read) and pending[k].size >= REUSE_MIN
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

    def differs(self, other: Plan) -> str | None:
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
            if t is not None and sole_value(t):
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
                    return STALE
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
                return STALE  # the Python would add to that gradient: the trace started from None
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


def _reuse_of(plan: Plan, flat: list[Tensor]) -> dict[int, np.ndarray] | None:
    """{root: array} for the step's gradients whose current values nothing else holds: the program writes the new
    ones into those arrays rather than into its alternating output pool, so a step touches one array per gradient
    (seed model: ~5 MB less per step; its two weight-gradient + Adam kernels ~60-120 us faster each)."""
    if not plan.fresh:
        return None
    prog = plan.run.__self__
    view = sole_counts()[1]
    reuse = {}
    for k, root in plan.fresh:
        kind, x, _, _ = plan.writes[k]
        if kind == "state":
            t = x()
        else:
            # a gradient: its old tensor must be held by .grad alone (a user's `g = w.grad` keeps its value)
            owner = x() if kind == "grad" else flat[x]
            if owner is None or owner.grad is None or grad_refs(owner) != sole_grad():
                continue
            t = owner.grad
        if t is None:
            continue
        counts = ref_counts(t)  # before this function holds any of them
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
