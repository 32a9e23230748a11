"""Compile a new program's kernels on two cores: a helper process compiles about half of them into numba's disk
cache while this process compiles the rest; the entry function then loads the helper's from the cache.

Why: a `parallel=True` kernel takes 1-1.5 s to compile and compilation holds the GIL, so a program with several
(the seed model's training step has six, plus a 2.5 s entry) compiled serially for 13-15 s on its first run.
Measured on 2 cores with an empty cache: 13.5-15.0 s -> 9.1-9.9 s. Such a program's serial kernels are
functions of their own too (cpu.render_program), shared out with the parallel ones by their rough cost (the
entry, compiled last, is then only calls: 7.4-7.8 s -> 6.2-6.3 s). Used only for a module file written just now
(nothing of it can be cached yet), with at least two parallel kernels and two CPUs; PICOGRAD_COMPILE_HELPER=0
turns it off. If the helper fails, the entry compiles whatever is missing itself: only time is at stake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

_HELPER = r"""
import importlib.util, json, sys
import numpy as np
from numba import types
from numba.np.numpy_support import from_dtype
from picograd.codegen import threads
threads.configure()  # the same threading layer as the parent process
path, name, jobs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
spec = importlib.util.spec_from_file_location(name, path)
mod = importlib.util.module_from_spec(spec)
sys.modules[name] = mod  # numba's cache looks the module up by name
spec.loader.exec_module(mod)
for fn, dtypes in jobs:
    getattr(mod, fn).compile(tuple(types.Array(from_dtype(np.dtype(d)), 1, "C") for d in dtypes))
"""
TIMEOUT_S = 900


def enabled() -> bool:
    return os.environ.get("PICOGRAD_COMPILE_HELPER", "1") != "0" and (os.cpu_count() or 1) >= 2


# Rough compile times, seconds on one core (the seed model's step: parallel kernels 0.9-1.5, serial ones
# 0.15-0.35), and the helper's start (interpreter, numba, picograd, the module) before it compiles anything.
PARALLEL_S, SERIAL_S, START_S = 1.2, 0.25, 1.0


def share(jobs: list[tuple[str, tuple, bool]]) -> tuple[list, list]:
    """(the helper's jobs, ours): the dearest first, each to whichever process would be done with it sooner."""
    theirs: list = []
    ours: list = []
    busy = [START_S, 0.0]  # helper, here
    for job in sorted(jobs, key=lambda j: not j[2]):  # parallel kernels first (a stable sort)
        side = 0 if busy[0] < busy[1] else 1
        (theirs, ours)[side].append(job)
        busy[side] += PARALLEL_S if job[2] else SERIAL_S
    return theirs, ours


def compile_split(mod: Any, path: Path, jobs: list[tuple[str, tuple, bool]]) -> int:
    """Compile jobs (function name in mod, numba signature of 1-D C arrays, whether it is a parallel kernel),
    about half of the work in a helper process, the rest here; returns how many the helper compiled (0 if it
    failed)."""
    from numba.np.numpy_support import as_dtype

    theirs, ours = share(jobs)
    spec = json.dumps([(fn, [str(as_dtype(t.dtype)) for t in sig]) for fn, sig, _ in theirs])
    root = str(Path(__file__).resolve().parents[2])  # the folder picograd imports from
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    helper = subprocess.Popen([sys.executable, "-c", _HELPER, str(path), mod.__name__, spec], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for fn, sig, _ in ours:
            getattr(mod, fn).compile(sig)
    finally:
        try:
            helper.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            helper.kill()  # (a negative return code: counted as failed below)
            helper.wait()
    return len(theirs) if helper.returncode == 0 else 0
