"""Layers: Module (parameter/submodule registry, state_dict, train/eval, device moves) and the
PyTorch-style building blocks. A parameter is a Tensor with requires_grad=True: backward() realizes
its gradient in the same program as the step. Other Tensor attributes are persistent buffers."""

from __future__ import annotations

import math
import os
import weakref
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from .. import creation as _creation
from .. import recording
from .. import tensor as _tensor
from ..ir.node import Buffer, buffer_node
from ..tensor import Tensor
from ..tensor_ops import check_dropout_p
from . import functional as F


def Parameter(data: Any, dtype: Any = None, device: str = "cpu") -> Tensor:
    """A trainable tensor: requires_grad=True, so Module registers it as a parameter."""
    return Tensor(data, dtype=dtype, requires_grad=True, device=device)


def _set_data(t: Tensor, data: Any, device: str) -> None:
    """Replace t's value in place (a fresh buffer leaf), keeping the Tensor object that optimizers and
    modules hold. Not lazy: it is a host-side load, not a step of the program."""
    arr = np.require(np.asarray(data), dtype=t.dtype, requirements="C")
    device = _tensor.canonical_device(device, "to")
    t.node = buffer_node(Buffer(_tensor.to_device[device](arr), device))
    t.node.buffer.owner = weakref.ref(t)
    if t._rg is not False:
        t.node.buffer.leaf = weakref.ref(t)


class Module:
    """Base class. Assigning a Tensor or Module attribute registers it (in assignment order);
    `__call__` runs `forward`."""

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_kinds", {})  # name -> "param" | "buffer" | "module"
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        kinds = self.__dict__.get("_kinds")
        if kinds is None:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        if name == "training" and self.__dict__.get("training") != value:
            recording.changed()  # `m.training = False` is eval() too (torch allows it): picograd.jit traces again
        if isinstance(value, Module):
            kind: str | None = "module"
        elif isinstance(value, Tensor):
            kind = "param" if value._rg is True else "buffer"
        else:
            # None keeps a registered name (skipped while None), as torch does; anything else unregisters it
            kind = kinds.get(name) if value is None else None
        if kind is None:
            kinds.pop(name, None)
        else:
            # Set in place: a replaced parameter keeps its position, as in torch, so parameters() (hence an
            # optimizer's state_dict, keyed by position) and state_dict() keep their order.
            kinds[name] = kind
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        self._kinds.pop(name, None)
        object.__delattr__(self, name)

    def _check_name(self, what: str, name: Any) -> None:
        # A dot would make state_dict keys ambiguous ("a.b" could be submodule a's b); an attribute that is
        # not registered (a method, `training`) would be shadowed or clobbered.
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"{type(self).__name__}.{what}: name must be a non-empty str without '.', got {name!r}")
        if name not in self._kinds and (name in self.__dict__ or hasattr(type(self), name)):
            raise KeyError(f"{type(self).__name__}.{what}: attribute {name!r} already exists and is not a "
                           "parameter or buffer")

    def register_buffer(self, name: str, t: Tensor | None) -> None:
        """Persistent, non-trainable state (saved in state_dict, moved by to()). None reserves the name, as in
        PyTorch: it is skipped by buffers() and state_dict() until a Tensor is assigned."""
        self._check_name("register_buffer", name)
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{type(self).__name__}.register_buffer: {name} must be a Tensor or None, got "
                            f"{type(t).__name__} (wrap an array with picograd.Tensor)")
        setattr(self, name, t)
        self._kinds[name] = "buffer"

    def register_parameter(self, name: str, t: Tensor | None) -> None:
        """A trainable tensor (requires_grad is set); None reserves the name, skipped by parameters()."""
        self._check_name("register_parameter", name)
        if t is not None:
            if not isinstance(t, Tensor):
                raise TypeError(f"{type(self).__name__}.register_parameter: {name} must be a Tensor or None, got "
                                f"{type(t).__name__}")
            if t.dtype.kind != "f":
                raise TypeError(f"{type(self).__name__}.register_parameter: {name} is {t.dtype}{list(t.shape)}; "
                                "only float tensors can have gradients (cast it with .float())")
            t.requires_grad = True
        setattr(self, name, t)
        self._kinds[name] = "param"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # ---- traversal --------------------------------------------------------------------------------
    def _named(self, kind: str) -> Iterator[tuple[str, Any]]:
        return ((n, v) for n, k in self._kinds.items() if k == kind and (v := self.__dict__[n]) is not None)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        return self._named("module")

    def children(self) -> Iterator[Module]:
        return (m for _, m in self.named_children())

    def named_modules(self, prefix: str = "", remove_duplicate: bool = True) -> Iterator[tuple[str, Module]]:
        """self and every submodule, depth first. A module reachable twice (shared) is listed once, under its
        first name, as in torch (remove_duplicate=False lists it under every name)."""
        seen: set[int] | None = set() if remove_duplicate else None

        def walk(m: Module, prefix: str) -> Iterator[tuple[str, Module]]:
            if seen is not None:
                if id(m) in seen:
                    return
                seen.add(id(m))
            yield prefix, m
            for name, child in m.named_children():
                yield from walk(child, f"{prefix}.{name}" if prefix else name)

        return walk(self, prefix)

    def modules(self) -> Iterator[Module]:
        return (m for _, m in self.named_modules())

    def _named_tensors(self, kinds: tuple[str, ...]) -> Iterator[tuple[str, Tensor]]:
        seen: set[int] = set()  # a tensor shared by two modules is listed once, like PyTorch
        for prefix, m in self.named_modules():
            for name, k in m._kinds.items():
                t = m.__dict__[name]
                if k in kinds and isinstance(t, Tensor) and id(t) not in seen:  # None: a reserved name
                    seen.add(id(t))
                    yield (f"{prefix}.{name}" if prefix else name), t

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        return self._named_tensors(("param",))

    def parameters(self) -> Iterator[Tensor]:
        return (t for _, t in self.named_parameters())

    def named_buffers(self) -> Iterator[tuple[str, Tensor]]:
        return self._named_tensors(("buffer",))

    def buffers(self) -> Iterator[Tensor]:
        return (t for _, t in self.named_buffers())

    # ---- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Name -> numpy array copy of every parameter and buffer (realized first, as one program)."""
        items = list(self._named_tensors(("param", "buffer")))
        _tensor.realize(*(t for _, t in items))
        return {name: t.numpy() for name, t in items}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> tuple[list[str], list[str]]:
        """Copy arrays (or Tensors, or an np.load'ed .npz) into the parameters and buffers in place, so
        optimizers holding them see the new values. Returns (missing, unexpected) keys; with strict,
        any of those or a shape mismatch raises."""
        own = dict(self._named_tensors(("param", "buffer")))
        keys = list(state.keys())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in keys if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        # Check every entry before loading any, so a bad checkpoint leaves the model as it was.
        loads = []
        for name in keys:
            if name not in own:
                continue
            t, v = own[name], state[name]
            try:
                arr = v.numpy() if isinstance(v, Tensor) else np.asarray(v)
            except (TypeError, ValueError) as e:
                raise TypeError(f"load_state_dict: {name} is a {type(v).__name__} in the checkpoint, not an "
                                f"array ({e}); expected {t.dtype}{list(t.shape)}") from e
            if arr.dtype.kind not in "biuf":  # None, strings, objects; complex would drop its imaginary part
                raise TypeError(f"load_state_dict: {name} is a {type(v).__name__} of dtype {arr.dtype} in the "
                                f"checkpoint; expected a numeric array {t.dtype}{list(t.shape)}")
            if arr.shape != t.shape:
                raise ValueError(f"load_state_dict: {name} has shape {arr.shape} in the checkpoint, "
                                 f"{t.shape} in the model")
            if t.dtype.kind in "iub" and arr.dtype.kind not in "iub":
                # float -> int would truncate (1.7 -> 1): refuse. int -> float and same-kind conversions load.
                raise TypeError(f"load_state_dict: {name} is {arr.dtype} in the checkpoint but {t.dtype} in the "
                                f"model; converting would lose the fractional part (cast it explicitly if meant)")
            loads.append((t, arr))
        for t, arr in loads:
            _set_data(t, arr, t.device)
        return missing, unexpected

    def train(self, mode: bool = True) -> Module:
        if not isinstance(mode, (bool, np.bool_)):  # train("no") would be truthy: training on
            raise TypeError(f"{type(self).__name__}.train: mode must be a bool, got {type(mode).__name__} {mode!r}")
        for m in self.modules():
            if m.training != bool(mode):
                recording.changed()  # the graphs it builds change (dropout): picograd.jit traces again
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    def to(self, device: str) -> Module:
        """Move every parameter and buffer to device, in place (the Tensor objects stay the same), and their
        gradients with them, as torch does: a gradient left behind made the next optimizer step (or a
        zero_grad(set_to_none=False) accumulation) mix devices."""
        device = _tensor.canonical_device(device, "to")
        for _, t in self._named_tensors(("param", "buffer")):
            if t.device != device:
                _set_data(t, t.numpy(), device)
                # A picograd.jit step traced before would replay its program on the old device, reading the moved
                # tensors from there and writing them back (a cuda program silently moved them back to the GPU;
                # the Python raises for the mixed devices): it traces again, as after train()/eval().
                recording.changed()
            if t.grad is not None and t.grad.device != device:
                t.grad = t.grad.to(device)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        zero_grads(self.parameters(), set_to_none)

    def __repr__(self) -> str:
        lines = [f"  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self.named_children()]
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        return f"{type(self).__name__}({extra}\n" + "\n".join(lines) + "\n)"

    def extra_repr(self) -> str:
        return ""


def zero_grads(params: Iterable[Tensor], set_to_none: bool = True) -> None:
    """Clear the gradients: None (the default), or with set_to_none=False zeros for those that have one, as in
    PyTorch (an optimizer then still updates such a parameter: momentum and weight decay act on a zero gradient)."""
    for p in params:
        if set_to_none or p.grad is None:
            p.grad = None
        else:
            p.grad = _creation.zeros_like(p, requires_grad=False)


def save(state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write name -> array (a state_dict) as an uncompressed .npz: plain arrays, no pickle. The file is written
    at exactly `path`, whatever its suffix (np.savez given a name would append ".npz" to "model.pt")."""
    arrays = {}
    for k, v in state.items():
        if not isinstance(k, str) or not k:
            raise TypeError(f"save: keys must be non-empty strs, got {type(k).__name__} {k!r}")
        arr = v.numpy() if isinstance(v, Tensor) else np.asarray(v)
        if arr.dtype.hasobject or arr.dtype.kind not in "biufc":
            # np.savez would pickle it, and load() (allow_pickle=False) could never read the file back
            raise TypeError(f"save: {k} is a {type(v).__name__} of dtype {arr.dtype}; only numeric arrays are saved")
        arrays[k] = arr
    # Written entry by entry rather than np.savez(f, **arrays): keys such as "file" or "allow_pickle" would be
    # taken as np.savez's own arguments (the second one silently dropped from the file).
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for k, arr in arrays.items():
            with z.open(k + ".npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.asanyarray(arr), allow_pickle=False)


def load(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a file written by save() (an .npz archive, at whatever path it was given); refuses pickled objects."""
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":  # np.load would try it as a pickle and blame allow_pickle
            raise ValueError(f"load: {os.fspath(path)} is not a checkpoint written by picograd.nn.save "
                             "(an .npz archive of arrays)")
        fh.seek(0)
        try:
            with np.load(fh, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except ValueError as e:
            raise ValueError(f"load: {os.fspath(path)}: {e}") from e


# ---- layers -------------------------------------------------------------------------------------
class Linear(Module):
    """y = x @ weight.T + bias; weight (out_features, in_features) as in PyTorch, initialised like
    PyTorch's default: weight and bias ~ U(-1/sqrt(in_features), 1/sqrt(in_features))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: str = "cpu") -> None:
        super().__init__()
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
                raise ValueError(f"Linear: {name} must be a non-negative int, got {type(n).__name__} {n!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.weight = _creation.uniform(out_features, in_features, low=-bound, high=bound, requires_grad=True,
                                      device=device)
        self.bias = (_creation.uniform(out_features, low=-bound, high=bound, requires_grad=True, device=device)
                     if bias else None)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _Container(Module):
    """Submodules registered under "0", "1", ...: indexing, length and iteration for Sequential and ModuleList."""

    def __getitem__(self, i: int | slice) -> Any:
        """The i-th submodule; a slice gives a container of the same type holding those submodules."""
        children = list(self.children())
        if isinstance(i, slice):
            return type(self)._from_modules(children[i])
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"{type(self).__name__}: indices must be ints or slices, got {type(i).__name__} {i!r}")
        if not -len(children) <= i < len(children):
            raise IndexError(f"{type(self).__name__}: index {i} is out of range for {len(children)} modules")
        return children[i]

    @classmethod
    def _from_modules(cls, modules: list[Module]) -> _Container:
        return cls(*modules)

    def __len__(self) -> int:
        return sum(1 for _ in self.children())

    def __iter__(self) -> Iterator[Module]:
        return self.children()


class Sequential(_Container):
    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for i, m in enumerate(layers):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: argument {i} is a {type(m).__name__}, not a Module")
            setattr(self, str(i), m)

    def forward(self, x: Any) -> Any:
        for m in self.children():
            x = m(x)
        return x


class ModuleList(_Container):
    def __init__(self, modules: Iterable[Module] = ()) -> None:
        super().__init__()
        for m in modules:
            self.append(m)

    @classmethod
    def _from_modules(cls, modules: list[Module]) -> ModuleList:
        return cls(modules)

    def append(self, m: Module) -> ModuleList:
        if not isinstance(m, Module):
            raise TypeError(f"ModuleList.append: got a {type(m).__name__}, not a Module")
        # counted with names set to None (still registered), so an append never overwrites a module
        setattr(self, str(sum(k == "module" for k in self._kinds.values())), m)
        return self


class Identity(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return x.leaky_relu(self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.sigmoid()


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.tanh()


class Softmax(Module):
    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return x.softmax(self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Module):
    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.log_softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Dropout(Module):
    """Active in train(), the identity in eval(). The mask is drawn inside the compiled program."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = check_dropout_p("Dropout", p)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ---- losses as modules --------------------------------------------------------------------------
class _Loss(Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        F._check_reduction(type(self).__name__, reduction)
        self.reduction = reduction

    def _weight(self, name: str, w: Any) -> Tensor | None:
        """A weight given as a list or numpy array becomes a Tensor (a buffer, as a Tensor weight is), once
        here rather than every step; the functional form casts it to the input's float dtype."""
        if w is None or isinstance(w, Tensor):
            return w
        try:
            arr = np.asarray(w)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{type(self).__name__}: {name} must be a Tensor or an array of numbers, "
                            f"got {type(w).__name__}") from e
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"{type(self).__name__}: {name} must be a Tensor or an array of numbers, "
                            f"got {type(w).__name__} of dtype {arr.dtype}")
        return Tensor(arr, requires_grad=False)


class NLLLoss(_Loss):
    def __init__(self, weight: Any = None, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.weight = self._weight("weight", weight)

    def forward(self, input: Tensor, target: Any) -> Tensor:
        return F.nll_loss(input, target, self.weight, self.reduction)


class CrossEntropyLoss(NLLLoss):
    def forward(self, input: Tensor, target: Any) -> Tensor:
        return F.cross_entropy(input, target, self.weight, self.reduction)


class MSELoss(_Loss):
    def forward(self, input: Tensor, target: Any) -> Tensor:
        return F.mse_loss(input, target, self.reduction)


class BCELoss(NLLLoss):
    def forward(self, input: Tensor, target: Any) -> Tensor:
        return F.binary_cross_entropy(input, target, self.weight, self.reduction)


class BCEWithLogitsLoss(_Loss):
    def __init__(self, weight: Any = None, reduction: str = "mean", pos_weight: Any = None):
        super().__init__(reduction)
        self.weight, self.pos_weight = self._weight("weight", weight), self._weight("pos_weight", pos_weight)

    def forward(self, input: Tensor, target: Any) -> Tensor:
        return F.binary_cross_entropy_with_logits(input, target, self.weight, self.reduction, self.pos_weight)
