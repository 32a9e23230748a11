"""Shared test setup: the op table is importable as `optable`, hypothesis has no deadline (Numba compiles
and a shared 2-core machine make per-example timings meaningless), each test starts from the same seed, and
the `reference_backend` fixture for tests about semantics rather than about a backend."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Any

import pytest
from hypothesis import settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `from optable import ...` under any import mode
# Compiled programs go to a fresh cache per test session, so tests never depend on an earlier run's cache
# (set PICOGRAD_CACHE_DIR to reuse one across runs, e.g. in CI).
if not os.environ.get("PICOGRAD_CACHE_DIR"):
    import atexit
    import shutil
    import tempfile

    os.environ["PICOGRAD_CACHE_DIR"] = tempfile.mkdtemp(prefix="picograd-test-cache-")
    atexit.register(shutil.rmtree, os.environ["PICOGRAD_CACHE_DIR"], ignore_errors=True)

import picograd as pg  # noqa: E402

settings.register_profile("picograd", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "picograd"))


# Set explicitly (e.g. PICOGRAD_BACKEND=cpu pytest tests/test_autodiff.py), it applies to those tests too.
REFERENCE_BACKEND = os.environ.get("PICOGRAD_BACKEND", "numpy")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    pg.manual_seed(0)


@pytest.fixture
def reference_backend(monkeypatch: pytest.MonkeyPatch) -> str:
    """Realize lazy graphs with the numpy interpreter: property tests and finite differences build hundreds
    of distinct graph structures, each a Numba compile on the default backend (minutes on 2 cores)."""
    monkeypatch.setenv("PICOGRAD_BACKEND", REFERENCE_BACKEND)
    return REFERENCE_BACKEND


class _Background:
    """Slow subprocess checks that the selected tests need, started when collection ends and run one after
    another on a thread, so they use the second core while the rest of the suite runs (the CUDA simulator
    workers are ~140 s of a ~390 s suite on 2 cores). A test module declares them as
    BACKGROUND = {fixture name: (argv, environment)}; its fixture asks for the result by name."""

    def __init__(self) -> None:
        self.jobs: dict[str, Future] = {}
        self.proc: subprocess.Popen | None = None
        self.stopped = False

    def start(self, wanted: dict[str, tuple[list[str], dict[str, str]]]) -> None:
        self.jobs = {name: Future() for name in wanted}
        threading.Thread(target=self._run, args=(wanted,), name="picograd-background", daemon=True).start()

    def _run(self, wanted: dict[str, tuple[list[str], dict[str, str]]]) -> None:
        for name, (argv, env) in wanted.items():
            fut = self.jobs[name]
            if self.stopped:
                fut.set_exception(RuntimeError("the test session ended before this job ran"))
                continue
            try:
                fut.set_result(self._call(argv, env, keep=True))
            except BaseException as e:  # noqa: BLE001 - handed to the fixture that waits for it
                fut.set_exception(e)

    def _call(self, argv: list[str], env: dict[str, str], keep: bool = False) -> subprocess.CompletedProcess:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if keep:
            self.proc = proc
        try:
            out, err = proc.communicate(timeout=1200)
        except BaseException:
            proc.kill()
            raise
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def result(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        """The job's finished process; run here and now when it wasn't started in the background."""
        fut = self.jobs.get(name)
        return fut.result() if fut is not None else self._call(argv, env)

    def stop(self) -> None:
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


_background = _Background()


def pytest_collection_finish(session: pytest.Session) -> None:
    wanted: dict[str, Any] = {}
    for item in session.items:
        jobs = getattr(getattr(item, "module", None), "BACKGROUND", None) or {}
        for name in getattr(item, "fixturenames", ()):
            if name in jobs and name not in wanted:
                wanted[name] = jobs[name]
    if wanted and os.environ.get("PICOGRAD_TEST_BACKGROUND", "1") != "0":
        _background.start(wanted)


def pytest_unconfigure(config: pytest.Config) -> None:
    _background.stop()


@pytest.fixture(scope="session")
def background() -> _Background:
    """Results of the subprocess jobs test modules declare in BACKGROUND (see _Background)."""
    return _background
