"""realize(): turn lazy graphs into buffers.

One call gathers the requested nodes plus every pending update (optimizer assigns, gradients of
parameters) and hands them to a backend as ONE program, so a training step is one compiled call.
Backends: "numpy" (the reference interpreter) and the Numba code generators in picograd.codegen."""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from . import eager
from .ir.autodiff import expand_grads
from .ir.node import Buffer, Node

Backend = Callable[[list[Node]], list[np.ndarray]]
_backends: dict[str, Backend] = {"numpy": eager.evaluate}


def register_backend(name: str, fn: Backend) -> None:
    _backends[name] = fn


def backend_name() -> str:
    return os.environ.get("PICOGRAD_BACKEND", "numpy")


def realize_nodes(nodes: list[Node]) -> None:
    """Compute every node without a buffer and attach the result to it."""
    todo = list({id(n): n for n in nodes if n.buffer is None}.values())
    if not todo:
        return
    name = backend_name()
    if name not in _backends:
        raise ValueError(f"realize: unknown backend {name!r} (known: {sorted(_backends)})")
    # Backends never see grad placeholders: autodiff (IR -> IR) runs here, before scheduling.
    outs = _backends[name](expand_grads(todo))
    for n, out in zip(todo, outs):
        n.buffer = Buffer(out, n.device or "cpu")
