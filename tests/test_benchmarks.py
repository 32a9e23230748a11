"""benchmarks/ops.py runs end to end (its training-step breakdown hooks into picograd's internals, and once broke
silently when those moved). Timings are not checked: only that every table comes out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ops_benchmark_runs(tmp_path: Path) -> None:
    env = dict(os.environ, PICOGRAD_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ops.py"), "--quick", "--repeat", "1"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for row in ("sum(relu(x*w+b))", "softmax rows 128x10", "relu(x@W+b) 64x800x800", "the compiled program",
                "first step, fresh process"):
        assert row in r.stdout, r.stdout
