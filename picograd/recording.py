"""What library code tells picograd.jit while it traces a step.

A replayed step runs the compiled program without running the step's Python, so every value that the Python
would have computed on the host (a learning rate, Adam's bias corrections, a dropout seed) must be
computable without it. Library code that makes such a runtime scalar registers a *producer* for its buffer
(a function returning the value it would have had), and code that changes host state each step (an
optimizer's step count) registers an *effect*. A replay runs them in the order the trace made them, so the
values are exactly those that running the Python again would give.

Nothing here imports the Tensor front end: tensor.py, optim.py and nn/ call in, jit.py reads the log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .ir.node import Buffer


@dataclass
class HostAction:
    tag: str  # what made it, e.g. "SGD.step" or "dropout.seed": a replay checks the same actions recur
    fn: Callable[[], Any]  # an effect returns nothing; a producer returns its buffer's next value (numpy)
    buffer: Buffer | None = None  # the runtime scalar a producer feeds; None for an effect


@dataclass
class Log:
    """One traced call: host actions in order, and each realize's capture (filled in by realize_nodes)."""

    actions: list[HostAction] = field(default_factory=list)
    realizes: list[dict] = field(default_factory=list)
    moved: list[tuple[Buffer, Buffer]] = field(default_factory=list)  # (host buffer, its copy .to(device) made)


current: list[Log | None] = [None]  # the call being traced, if any
# True while picograd.jit runs a step: realize() then asks for a program that writes assigned state over its
# old value (the old array is copied first unless the caller vouches nobody else holds it; see cache.Program).
in_place = [False]
# Bumped when Python state that shapes graphs changes in a way picograd can see (a module switching between
# train() and eval()); a jit trace made under another generation is traced again rather than replayed.
generation = [0]


def changed() -> None:
    generation[0] += 1


def effect(tag: str, fn: Callable[[], None]) -> None:
    """fn changes host state the way the traced code just did (run again at every replay)."""
    log = current[0]
    if log is not None:
        log.actions.append(HostAction(tag, fn))


def moved(src: Buffer, dst: Buffer) -> None:
    """dst is src's host data copied to a device (Tensor.to): where src is an argument of the traced call, the
    replay hands the device program the argument's host data, which the program uploads as it does its host
    scalars (`x.to("cuda")` inside a step, as in a torch loop)."""
    log = current[0]
    if log is not None:
        log.moved.append((src, dst))  # both held: a buffer's id is only its own while it is alive


def producer(tag: str, buffer: Buffer, fn: Callable[[], Any]) -> None:
    """buffer is a runtime scalar made this step; fn() gives the value it would have at a later step."""
    log = current[0]
    if log is not None:
        log.actions.append(HostAction(tag, fn, buffer))
