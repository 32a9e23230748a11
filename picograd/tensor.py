"""The user-facing Tensor. Every op builds an IR node (lazy, the default); in eager mode the node is
also evaluated at once with numpy, which is the seed's behaviour and the reference for tests."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import eager as _eager
from . import recording
from .ir import build as B
from .ir.autodiff import expand_grads
from .ir.node import Buffer, Node, buffer_node, make, phase, toposort
from .ir.shape import broadcast_shapes, prod
from .realize import realize_nodes
from .tensor_ops import TensorOps
from .tensor_reduce import ReduceOps
from .tensor_shape import ShapeOps

FLOAT32 = np.dtype(np.float32)
_state = {"eager": os.environ.get("PICOGRAD_EAGER", "0") not in ("", "0"), "seed": 0, "counter": 0}
_rng = [np.random.default_rng(0)]


class _OrderedWeakSet:
    """A WeakSet that iterates in insertion order. The pending tensors become the program's roots in
    this order, and the roots' order is part of the program's cache key: a plain WeakSet's arbitrary
    order made every training step a different key (a recompile per step on a compiling backend)."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref] = {}

    def add(self, t: Any) -> None:
        r = self._refs.get(id(t))
        if r is None or r() is not t:  # new, or a dead tensor's id reused: append at the end
            self._refs.pop(id(t), None)
            self._refs[id(t)] = weakref.ref(t)

    def __iter__(self) -> Any:
        return iter([t for r in list(self._refs.values()) if (t := r()) is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def clear(self) -> None:
        self._refs.clear()


# Tensors to realize with the next realize(): assigned parameters and the gradients of tracked
# leaves. Weak, so a zero_grad() or a dropped tensor simply falls out.
_pending = _OrderedWeakSet()
# id(node) -> the tensor whose pending (not yet realized) assign that node is. backward() differentiates w.r.t.
# a tensor's current value, and until the next realize() that value is this node rather than a buffer.
_assigned: dict[int, weakref.ref] = {}
# Moves data between devices; picograd.cuda registers "cuda".
to_device: dict[str, Callable[[np.ndarray], Any]] = {"cpu": lambda a: a}


class eager:
    """`with picograd.eager():` evaluates every op at once with numpy, like the seed did."""

    def __init__(self, on: bool = True) -> None:
        self.on = on

    def __enter__(self) -> None:
        self.prev = _state["eager"]
        _state["eager"] = self.on

    def __exit__(self, *exc: object) -> None:
        _state["eager"] = self.prev


def is_eager() -> bool:
    return _state["eager"]


def manual_seed(seed: int) -> None:
    """Seeds host-side initialisers and the in-program (counter-based) dropout RNG."""
    _rng[0] = np.random.default_rng(seed)
    _state["seed"], _state["counter"] = int(seed), 0


# The dtypes the IR and its backends compute in (numba has no float16; no complex, object, string or time types).
SUPPORTED_DTYPES = tuple(np.dtype(t) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                               np.uint32, np.uint64, np.float32, np.float64))


def canonical_device(device: Any, op: str) -> str:
    """A device name as picograd keys it: "cpu" or "cuda"; torch's "cuda:0" is "cuda" (one GPU is driven)."""
    if not isinstance(device, str):
        name = getattr(device, "type", None)  # a torch.device
        if not isinstance(name, str) or getattr(device, "index", None) not in (None, 0):
            raise TypeError(f"{op}: device must be a string such as 'cpu' or 'cuda', got {type(device).__name__} "
                            f"{device!r}")
        device = name
    if device == "cuda:0":
        return "cuda"
    if device.startswith("cuda:"):
        raise ValueError(f"{op}: device {device!r}: picograd drives one GPU, 'cuda' (also spelled 'cuda:0')")
    if device not in to_device:
        raise ValueError(f"{op}: unknown device {device!r} (available: {sorted(to_device)})")
    return device


def check_dtype(dtype: Any, op: str) -> np.dtype:
    """dtype as a supported numpy dtype in native byte order, or a TypeError naming the supported ones."""
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{op}: {dtype!r} is not a dtype") from e
    native = dt.newbyteorder("=") if dt.byteorder not in ("=", "|") else dt
    if native not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: dtype {dt} is not supported (supported: {', '.join(d.name for d in SUPPORTED_DTYPES)})")
    return native


def _default_dtype(arr: np.ndarray, dtype: Any) -> np.dtype:
    if dtype is not None:
        return check_dtype(dtype, "Tensor")
    if arr.dtype.kind == "f":
        return FLOAT32  # float32 end to end unless asked otherwise
    if arr.dtype.kind in "iub":
        return check_dtype(arr.dtype, "Tensor")
    raise TypeError(f"Tensor: cannot make a tensor from data of dtype {arr.dtype} "
                    f"(supported: {', '.join(d.name for d in SUPPORTED_DTYPES)})")


def _asarray(data: Any, op: str) -> np.ndarray:
    try:
        return np.asarray(data)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{op}: cannot make a tensor from {type(data).__name__} data of inhomogeneous shape (ragged "
                         f"nested sequences); Tensor() needs rectangular data ({e})") from e


class Tensor(TensorOps, ReduceOps, ShapeOps):
    __slots__ = ("node", "_rg", "grad", "_over", "__weakref__")
    __array_priority__ = 1000  # so numpy scalars/arrays on the left defer to Tensor's operators

    def __init__(self, data: Any, dtype: Any = None, requires_grad: bool | None = None, device: str = "cpu", *,
                 copy: bool = True):
        """copy=False lets the tensor share a numpy array's memory where no conversion is needed (as
        torch.from_numpy): the caller then promises not to write to the array while the tensor may read it."""
        if isinstance(data, Node):
            node = data
        else:
            if isinstance(data, Tensor):
                data, copy = data.numpy(), False  # numpy() returns a fresh array
            device = canonical_device(device, "Tensor")
            arr = _asarray(data, "Tensor")
            dt = _default_dtype(arr, dtype)
            # A lazy graph reads the array when it is realized, so without a copy it would see the caller's later
            # writes (torch.tensor copies too). Python data (lists, scalars) is converted into a fresh array anyway.
            # (Moving it to another device copies it anyway.)
            if copy and device == "cpu" and not isinstance(data, (list, tuple, int, float, bool, np.generic)):
                arr = np.array(arr, dtype=dt, order="C", copy=True)
            else:
                arr = np.require(arr, dtype=dt, requirements="C")
            node = buffer_node(Buffer(to_device[device](arr), device))
        if requires_grad:
            _check_can_require_grad(node, "Tensor")
        self.node: Node = node
        # None: a gradient is available on demand (seed behaviour); True: tracked, its gradient is
        # realized with the training step; False: never differentiated.
        self._rg = requires_grad
        self.grad: Tensor | None = None
        self._over: Node | None = None  # the realized value a pending assign replaces (for in-place updates)
        owner = node.buffer.leaf() if node.op == "buffer" and node.buffer.leaf is not None else None
        # An op that returns its input's node (x.reshape(x.shape), x[:], sum over no axis) must not take the
        # leaf away from x: backward() would then give the gradient to the view instead of to x.
        if node.op == "buffer":
            if requires_grad is not False and owner is None:
                node.buffer.leaf = weakref.ref(self)
            if node.buffer.owner is None:
                node.buffer.owner = weakref.ref(self)
        if _state["eager"]:
            _eager.realize_now(node)

    # ---- basic properties -------------------------------------------------------------------------
    shape = property(lambda self: self.node.shape)
    dtype = property(lambda self: self.node.dtype)
    ndim = property(lambda self: len(self.node.shape))
    size = property(lambda self: prod(self.node.shape))
    device = property(lambda self: self.node.device or "cpu")

    @property
    def requires_grad(self) -> bool:
        return self._rg is not False and self.dtype.kind == "f"

    @requires_grad.setter
    def requires_grad(self, v: bool) -> None:
        if v:
            _check_can_require_grad(self.node, "requires_grad")
        if (self._rg is False) == bool(v):
            # Freezing or unfreezing changes which leaves get gradients, and so the step's graph, as train()/eval()
            # do: a jit replaying a step traced before would silently keep the old program. (None -> True, a new
            # tensor marked inside a step, changes nothing: both are differentiated.)
            recording.changed()
        self._rg = bool(v)
        if v and self.node.op == "buffer":
            self.node.buffer.leaf = weakref.ref(self)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self) -> Any:
        """The sub-tensors along the first axis (as torch); a 0-d tensor cannot be iterated."""
        if not self.shape:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    # ---- in-place arithmetic: t += x updates t itself, as numpy and torch do -----------------------
    def _inplace(self, name: str, value: Any) -> Tensor:
        self._check_writable(name)
        v = value()
        if v.dtype != self.dtype or v.shape != self.shape:
            err = TypeError if v.dtype != self.dtype else ValueError
            raise err(f"{name}: the result {v.dtype}{list(v.shape)} cannot be stored in place in "
                      f"{self.dtype}{list(self.shape)} (as numpy, the dtype and shape must stay)")
        self._set_value(v, name)
        return self

    def _check_writable(self, name: str) -> None:
        """Refuse in-place writes that torch refuses (to a parameter) or that could not do what they do in numpy
        and torch (to a view, whose write would not reach the tensor it views)."""
        if self._rg and self.dtype.kind == "f":
            how = (f"write t.assign(t {name[2]} x) to update it (or t = t {name[2]} x for a new tensor)"
                   if name.startswith("t ") else "build the new value out of place and give it with t.assign(...)")
            raise TypeError(f"{name}: in-place op on a tensor that requires grad (a parameter) is not supported; {how}")
        _check_not_a_view(self, name)

    def _set_value(self, v: Tensor, name: str) -> None:
        if self.node.op == "buffer" or _assigned_to(self.node) is self:
            self.assign(v)  # a leaf: it keeps its identity (and the state picograd.jit sees)
        else:
            self.node = v.node  # a computed tensor: its new value, gradients still flowing through it

    def __iadd__(self, o: Any) -> Tensor:
        return self._inplace("t += x", lambda: self + o)

    def __isub__(self, o: Any) -> Tensor:
        return self._inplace("t -= x", lambda: self - o)

    def __imul__(self, o: Any) -> Tensor:
        return self._inplace("t *= x", lambda: self * o)

    def __itruediv__(self, o: Any) -> Tensor:
        return self._inplace("t /= x", lambda: self / o)

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        device = "" if self.device == "cpu" else f", device={self.device!r}"  # as torch: only a non-default device
        return f"Tensor({np.array2string(self.numpy(), separator=', ')}, dtype={self.dtype}{device})"

    def __format__(self, spec: str) -> str:
        """f"{loss:.4f}" formats a one-element tensor's value; otherwise (or with no spec) the tensor's str."""
        if spec and self.size == 1:
            return format(self.item(), spec)
        return format(str(self), spec)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """np.array(t) / np.asarray(t): the realized value (numpy 2's protocol). Always a fresh array, since a
        tensor's own buffer must not be written through, so copy=False cannot be honoured."""
        if copy is False:
            raise ValueError("Tensor.__array__: a tensor's value cannot be shared without a copy (copy=False); "
                             "use np.asarray(t) or t.numpy()")
        a = self.numpy()
        return a if dtype is None else a.astype(dtype, copy=False)

    # ---- realization ------------------------------------------------------------------------------
    def realize(self) -> Tensor:
        realize(self)
        return self

    def numpy(self) -> np.ndarray:
        if self.node.buffer is None or _pending._refs:  # (a realized value with nothing pending: no realize)
            self.realize()
        data = self.node.buffer.data
        return np.array(data.copy_to_host() if hasattr(data, "copy_to_host") else data)

    value = property(numpy)  # the seed's name for it

    def item(self) -> Any:
        if self.size != 1:
            raise ValueError(f"item: only a one-element tensor can be converted to a scalar, got shape {self.shape}")
        buf = self.node.buffer
        if buf is not None and not _pending._refs and type(buf.data) is np.ndarray:
            return buf.data.item()  # the common case after a training step: no copy, no realize
        return self.numpy().reshape(()).item()

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __bool__(self) -> bool:
        if self.size != 1:
            raise ValueError(f"bool: the truth value of a tensor of shape {self.shape} is ambiguous (only a "
                             f"one-element tensor has one); reduce it first, e.g. (t != 0).sum() > 0")
        return bool(self.item())

    def tolist(self) -> Any:
        return self.numpy().tolist()

    # ---- autograd ---------------------------------------------------------------------------------
    def backward(self, gradient: Tensor | None = None) -> None:
        """Accumulate d self / d leaf into .grad of every differentiable leaf it depends on."""
        if gradient is None and self.size != 1:  # (one element of any shape is fine, as in torch)
            raise ValueError(
                f"backward: called on a non-scalar tensor of shape {self.shape} without a gradient; "
                "reduce it to a scalar (e.g. .sum()) or pass backward(gradient=...)"
            )
        if self.dtype.kind != "f":
            raise TypeError(f"backward: called on a tensor of dtype {self.dtype}; only float tensors have gradients")
        if gradient is None:
            seed = None if self.shape == () else B.const(1.0, self.dtype, self.shape)
        elif isinstance(gradient, Tensor):
            seed = gradient.node
            if seed.dtype != self.dtype:
                raise TypeError(f"backward: gradient {seed.dtype}{list(seed.shape)} has another dtype than the tensor "
                                f"{self.dtype}{list(self.shape)}; cast it with .cast({self.dtype})")
            if seed.device and self.node.device and seed.device != self.node.device:  # (a constant has none)
                raise ValueError(f"backward: gradient {seed.dtype}{list(seed.shape)} is on {gradient.device}, the "
                                 f"tensor on {self.device}; move it with .to({self.device!r})")
        else:  # host data (a list of ints too) is the tensor's dtype and on its device, as a Python scalar would be
            host = _asarray(gradient, "backward")
            seed = Tensor(host, dtype=self.dtype, requires_grad=False, device=self.device).node
        if seed is not None and seed.shape != self.shape:
            raise ValueError(f"backward: gradient shape {seed.shape} differs from tensor shape {self.shape}")
        # Placeholders only: realize() expands them into the VJP graph when it has to compile, so a
        # cached training step never builds its backward graph in Python.
        leaves = _leaves(self.node)
        root, wrt = self.node, [t.node for t in leaves]
        if any(n.op != "buffer" for n in wrt):
            # A leaf whose value is a pending assign (a training loop that doesn't realize every step). Autodiff
            # expands the grad placeholders below root before differentiating, which rebuilds every node above
            # them, that value included (an optimizer's update reads the last gradient), so it would no longer
            # find the node it was asked about: expand root and those values together here, the same way.
            root, *wrt = expand_grads([root, *wrt], full=True)
        with phase("backward"):
            for t, n in zip(leaves, wrt, strict=True):
                g = Tensor(B.grad(root, n, seed), requires_grad=False)
                t.grad = g if t.grad is None else t.grad + g
                if t._rg:
                    _pending.add(t.grad)

    def detach(self) -> Tensor:
        return Tensor(B.unary("detach", self.node), requires_grad=False)

    def assign(self, value: Any) -> Tensor:
        """Replace this tensor's value (in place, as seen by the user). Lazy: the new value is computed
        with the next realize(), in the same program as everything else pending. The tensor keeps its
        identity: it stays the leaf that gets the gradients, and the state picograd.jit reads."""
        _check_not_a_view(self, "assign")
        v = self._assign_value(value)
        if v.shape != self.shape:
            v = v.expand(*self.shape) if broadcast_shapes("assign", v.shape, self.shape) == self.shape else v
        if v.shape != self.shape or v.dtype != self.dtype:
            raise ValueError(f"assign: value {v.dtype}{list(v.shape)} does not match {self.dtype}{list(self.shape)}")
        if v.node.device is not None and v.device != self.device:
            raise ValueError(f"assign: value {v.dtype}{list(v.shape)} is on device {v.device!r}, the tensor "
                             f"{self.dtype}{list(self.shape)} on {self.device!r}; move it with .to({self.device!r})")
        old = self.node
        if v.node.buffer is not None:
            # Already computed: a Buffer of its own over the same (immutable) array. Taking v's node would make
            # the two tensors one leaf (v's gradients went to self) and leave v, maybe a dead temporary, as the
            # Buffer's owner (picograd.jit then froze the value as a constant).
            buf = Buffer(v.node.buffer.data, v.node.buffer.device)
            buf.owner = weakref.ref(self)
            if self._rg is not False:
                buf.leaf = weakref.ref(self)
            self.node, self._over = buffer_node(buf), None
        else:
            # A detach node of its own (arg "assign"), even when another pending assign has the same value or the
            # user detached that value too: backward() finds the tensor by it, and a hash-consed v.detach() held
            # elsewhere was taken for this tensor (its loss sent gradients here).
            node = make("detach", (v.node,), v.node.dtype, v.node.shape, "assign")
            while (other := _assigned_to(node)) is not None and other is not self:
                node = make("detach", (node,), node.dtype, node.shape, "assign")
            self.node = node
            self._over = old if old.op == "buffer" and old.buffer is not None else None
            if not _state["eager"]:
                _assigned[id(node)] = weakref.ref(self)
        # pending even when already computed: picograd.jit must see that a traced step assigned the tensor
        _pending.add(self)
        if _state["eager"]:
            _eager.realize_now(self.node, force=True)
            _cut_history(self)
        return self

    def _assign_value(self, value: Any, op: str = "assign") -> Tensor:
        """assign's value as a tensor on this tensor's device: arrays and lists are moved there, and a value
        computed from constants alone (which has no device) is computed on the host and moved there. (setitem
        keeps constants as they are: its new value reads the tensor itself, which gives the program its device.)"""
        if not isinstance(value, (Tensor, bool, int, float, np.number, np.bool_)):
            value = _host_value(value, self.dtype, op)
        v = _as_node(value, self, op)
        if v.node.device == self.device or self.device == "cpu":
            return v
        if op == "setitem" and v.node.device is None:
            return v
        if isinstance(value, Tensor) and v.node.device is not None:
            return v  # a tensor on another device: assign refuses it
        if v.node.buffer is not None:
            data = v.node.buffer.data
        else:  # constants, broadcast on the host: nothing is left to compute on the device
            (data,) = _eager.evaluate([v.node])
            if broadcast_shapes("assign", data.shape, self.shape) == self.shape:
                data = np.broadcast_to(data, self.shape)
        return Tensor(data, requires_grad=False, device=self.device)

    # ---- construction helpers ---------------------------------------------------------------------
    @staticmethod
    def _make(node: Node) -> Tensor:
        return Tensor(node)

    def _lift(self, x: Any, op: str | None = None) -> Tensor:
        return _as_node(x, self, op)

    def _dropout_seed(self) -> Node:
        # A fresh uint32 seed buffer per call: its value varies, the program's structure does not.
        node = Tensor(_next_seed(), requires_grad=False, device=self.device, copy=False).node
        recording.producer("dropout.seed", node.buffer, _next_seed)
        return node

    def cast(self, dtype: Any) -> Tensor:
        return Tensor(B.cast(self.node, check_dtype(dtype, "cast")))

    astype = cast

    def float(self) -> Tensor:
        return self.cast(FLOAT32)

    def to(self, device: str) -> Tensor:
        device = canonical_device(device, "to")
        if device == self.device:
            return self
        out = Tensor(self.numpy(), requires_grad=self._rg, device=device, copy=False)  # numpy() is a fresh copy
        if self.device == "cpu" and not self._rg and self.node.buffer is not None:
            recording.moved(self.node.buffer, out.node.buffer)  # a pg.jit step moving its batch still replays
        return out

    def contiguous(self) -> Tensor:
        return self

    def dump(self, **kw: Any) -> str:
        """The lazy graph behind this tensor as text (see picograd.debug.dump)."""
        from .debug import dump

        return dump(self, **kw)


def _check_can_require_grad(node: Node, op: str) -> None:
    if node.dtype.kind != "f":
        raise TypeError(f"{op}: only float tensors can require gradients, got requires_grad=True for "
                        f"{node.dtype}{list(node.shape)} (as torch); cast it to float first")


def _host_value(value: Any, dt: np.dtype, op: str = "assign") -> np.ndarray:
    """Host data (lists, arrays) for assign, in the tensor's dtype where that loses nothing: ints into a float
    tensor (as assign(1) does), floats of another width, ints that fit. Anything else is left as it is, for
    assign's dtype check to refuse."""
    arr = _asarray(value, op)
    src = arr.dtype
    if src == dt or src.kind not in "biuf":
        return arr
    fits = (np.can_cast(src, dt, "safe") or (src.kind in "biu" and dt.kind == "f") or src.kind == dt.kind == "f"
            or (src.kind in "iu" and dt.kind in "iu"
                and (arr.size == 0 or np.iinfo(dt).min <= int(arr.min()) and int(arr.max()) <= np.iinfo(dt).max)))
    return arr.astype(dt) if fits else arr


def _next_seed() -> np.ndarray:
    s = (_state["seed"] * 1000003 + _state["counter"] * 7919 + 12345) & 0xFFFFFFFF
    _state["counter"] += 1
    return np.array(s, dtype=np.uint32)


def _cut_history(t: Tensor) -> None:
    """After an assign is realized the tensor is a plain leaf again, so graphs don't grow across steps."""
    t._over = None
    buf = t.node.buffer
    if t.node.op != "buffer":
        buf = Buffer(buf.data, buf.device)
        t.node = buffer_node(buf)
    if buf.owner is None:
        buf.owner = weakref.ref(t)
    if t._rg is not False:
        buf.leaf = weakref.ref(t)


_VIEWS = ("reshape", "permute", "expand", "slice")


def _check_not_a_view(t: Tensor, name: str) -> None:
    """Raise if t is a view (in numpy's and torch's terms: indexing, reshape, permute, expand) of another live
    tensor's value. picograd tensors never share memory, so a write to t would silently miss that tensor."""
    n, how = t.node, None
    while n.op in _VIEWS:
        how, n = n.op, n.srcs[0]  # (the op nearest the base names the view)
    if n.op == "buffer":
        base = n.buffer.owner() if n.buffer.owner is not None else None
    else:
        base = _assigned_to(n) if n.op == "detach" and _assigned else None
    if base is not None and base is not t:
        raise TypeError(f"{name}: this {t.dtype}{list(t.shape)} tensor is a view ({how or 'alias'}) of another "
                        f"{base.dtype}{list(base.shape)} tensor; picograd tensors never share memory, so the write "
                        f"would not reach that tensor (in numpy and torch it would): write to it instead "
                        f"(base[idx] = v, base.assign(...)), or make a new tensor (t = t + x)")


def _assigned_to(n: Node) -> Tensor | None:
    """The tensor whose pending assign n is, if any."""
    r = _assigned.get(id(n))
    t = r() if r is not None else None
    return t if t is not None and t.node is n else None


def _leaves(root: Node) -> list[Tensor]:
    """The differentiable tensors root reads the current value of: realized leaves, and tensors whose value is a
    pending assign (their gradient is w.r.t. that new value, as in eager mode, where the assign is done at once)."""
    # Only leaves on a differentiable path from root: the walk stops at non-float nodes (comparisons, integer
    # casts) and at detach(). A leaf reached only through those keeps .grad None, as in torch (a zero gradient made
    # optimizers with momentum or weight decay update a parameter that the loss never differentiated).
    out: list[Tensor] = []
    for n in toposort([root], srcs_of=_differentiable_srcs):
        if n.op == "buffer":
            if n.buffer.leaf is not None:
                t = n.buffer.leaf()
                if t is not None and t._rg is not False and t.node is n:
                    out.append(t)
        elif n.op == "detach" and _assigned:
            t = _assigned_to(n)
            if t is not None and t._rg is not False:
                out.append(t)
    return out


def _differentiable_srcs(n: Node) -> list[Node]:
    return [] if n.op == "detach" else [s for s in n.srcs if s.dtype.kind == "f"]


def realize(*tensors: Tensor) -> None:
    """Compute the given tensors and everything pending (assigns, tracked gradients) as one program."""
    pending = list(_pending)
    _pending.clear()
    _assigned.clear()  # every pending assign is realized below
    nodes = [t.node for t in tensors] + [t.node for t in pending]
    # under picograd.jit, assigned state may be updated in place: (new value, the value it replaces)
    over = [(t.node, t._over) for t in pending if t._over is not None] if recording.in_place[0] else None
    log = recording.current[0]
    if log is None:
        realize_nodes(nodes, over=over)
    else:  # picograd.jit is tracing: keep what it needs to replay this realize
        capture = {"tensors": tensors, "pending": pending, "nodes": nodes}
        log.realizes.append(capture)
        realize_nodes(nodes, capture, over)
    for t in pending:
        _cut_history(t)


def _as_node(x: Any, like: Tensor, op: str | None = None) -> Tensor:
    """Python scalars take the dtype of the tensor they meet (so 0.5 stays float32)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (bool, int, float, np.number, np.bool_)):
        dt = like.dtype
        if isinstance(x, (float, np.floating)) and dt.kind != "f":
            dt = FLOAT32
        elif isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)):
            if dt.kind == "b":
                dt = np.dtype(np.int64)
            if dt.kind in "iu" and not np.iinfo(dt).min <= int(x) <= np.iinfo(dt).max:
                raise OverflowError(f"{op or 'operand'}: Python integer {x} is out of bounds for {dt} (the dtype of "
                                    f"the {like.dtype}{list(like.shape)} tensor it meets; numpy raises too); cast the "
                                    f"tensor to a wider dtype first")
        elif isinstance(x, np.number) and np.dtype(type(x)) not in SUPPORTED_DTYPES and not isinstance(x, np.floating):
            raise TypeError(f"{op or 'operand'}: scalar of unsupported dtype {np.dtype(type(x))}")
        try:
            return Tensor(B.const(x, dt))
        except OverflowError as e:  # a Python int beyond any float (numpy raises too)
            raise OverflowError(f"{op or 'operand'}: Python integer {_short(x)} is too large for {dt} (the "
                                f"{like.dtype}{list(like.shape)} tensor it meets)") from e
    arr = _asarray(x, f"{op or 'operand'} (Tensor())")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{op or 'operand'}: cannot combine a {like.dtype}{list(like.shape)} tensor with "
                        f"{type(x).__name__} {_short(x)} (data of dtype {arr.dtype}); expected a Tensor, a number or "
                        f"numeric array data")
    # Float data meeting a float tensor takes its width; meeting an integer tensor it stays float (float32). Host
    # data goes to the tensor's device, as a Python scalar does (and as assign and t[i] = data do).
    return Tensor(arr, dtype=like.dtype if arr.dtype.kind == "f" and like.dtype.kind == "f" else None,
                  device=like.device)


def _short(x: Any) -> str:
    r = repr(x)
    return r if len(r) <= 40 else r[:37] + "..."


def where(cond: Any, a: Any, b: Any) -> Tensor:
    anchor = next((x for x in (a, b, cond) if isinstance(x, Tensor)), None)
    if anchor is None:
        raise TypeError("where: at least one argument must be a Tensor")
    return anchor._where(cond, a, b)


def grad(f: Callable[..., Tensor], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """The gradient of a scalar-valued function, as a function; composes with itself (grad of grad)."""
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def df(*args: Any) -> Any:
        bad = [i for i in nums if not -len(args) <= i < len(args)]
        if bad:
            raise ValueError(f"grad: argnums {argnums!r} is out of range for a function called with {len(args)} "
                             f"argument(s)")
        ts = [a if isinstance(a, Tensor) else Tensor(a) for a in args]
        out = f(*ts)
        if not isinstance(out, Tensor) or out.shape != ():
            raise ValueError(f"grad: the function must return a scalar Tensor, got {getattr(out, 'shape', out)!r}")
        res = [Tensor(B.grad(out.node, ts[i].node)) for i in nums]
        return res[0] if isinstance(argnums, int) else tuple(res)

    return df
