"""Shared test setup: the op table is importable as `optable`, hypothesis has no deadline (Numba compiles
and a shared 2-core machine make per-example timings meaningless), each test starts from the same seed, and
the `reference_backend` fixture for tests about semantics rather than about a backend."""

from __future__ import annotations

import os
import sys

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
