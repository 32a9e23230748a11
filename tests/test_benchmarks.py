"""benchmarks/ops.py runs end to end (its training-step breakdown hooks into picograd's internals, and once broke
silently when those moved). Timings are not checked: only that every table comes out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ops_benchmark_runs(tmp_path: Path) -> None:
    env = dict(os.environ, PICOGRAD_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ops.py"), "--quick", "--repeat", "1"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for row in ("sum(relu(x*w+b))", "softmax rows 128x10", "relu(x@W+b) 64x800x800", "the compiled program",
                "first step, fresh process"):
        assert row in r.stdout, r.stdout


def test_cuda_host_benchmark_runs_the_gpu_path_without_a_gpu(tmp_path: Path) -> None:
    # benchmarks/cuda_host.py swaps in a driver that does nothing: the rows must come from the real CUDA backend
    # (kernels launched through the driver, batches uploaded), not from a CPU fallback.
    env = dict(os.environ, PICOGRAD_CACHE_DIR=str(tmp_path))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cuda_host.py"), "--steps", "40"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.split()[:1] in (["seed"], ["mlp"])}
    assert set(rows) == {"seed", "mlp"}, r.stdout
    for model, ln in rows.items():
        calls = dict(kv.split() for kv in ln.split("  ")[-1].split(", "))
        assert float(calls["launch"]) >= 10 and float(calls["htod"]) >= 2, (model, ln)
        assert float(ln.split()[2]) > 0, ln


def test_gpu_check_python_runs_on_a_null_driver(tmp_path: Path) -> None:
    # benchmarks/gpu_check.sh is run only when a session is lent a GPU (15 minutes): its Python must not have
    # rotted in between. Its inline scripts run here against benchmarks/cuda_host.py's driver that does nothing
    # (once, CudaProgram's constructor had grown an argument that the step breakdown's wrapper refused).
    import re

    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    scripts = re.findall(r"<<'PYEOF'\n(.*?)\nPYEOF", text, re.S)
    scripts += [s for s in re.findall(r'\$PY -c "\n(.*?)\n"', text, re.S) if "picograd" in s]
    assert len(scripts) >= 2, "gpu_check.sh's inline Python scripts were not found"
    for i, script in enumerate(scripts):
        path = tmp_path / f"script{i}.py"
        path.write_text(script)
        env = dict(os.environ, PICOGRAD_CACHE_DIR=str(tmp_path))
        env.pop("NUMBA_ENABLE_CUDASIM", None)
        r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "null_python.py"), str(path)], env=env,
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert r.returncode == 0, f"script {i}:\n{script[:300]}\n{r.stdout[-3000:]}{r.stderr[-3000:]}"


def test_gpu_check_dry_run(tmp_path: Path) -> None:
    # The whole of benchmarks/gpu_check.sh, as a lent GPU session runs it, against the driver that does nothing
    # (benchmarks/null_python.py as its python): every step's code runs (the MNIST benchmark and example with
    # --device cuda, the step breakdown, the CUDA tests); the numbers are meaningless. A peer without CUDA (torch's
    # CPU build) is left out of the benchmark's table, not a failure.
    data = os.environ.get("PICOGRAD_DATA")
    if not data or not (Path(data) / "mnist").is_dir():
        pytest.skip("PICOGRAD_DATA is unset: the MNIST steps need the real data")
    env = dict(os.environ, PICOGRAD_CACHE_DIR=str(tmp_path), EPOCHS="1",
               PY=f"{sys.executable} {ROOT / 'benchmarks' / 'null_python.py'}")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                       timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = r.stdout.rsplit("===== summary", 1)[-1].strip().splitlines()[1:]
    assert len(summary) >= 8 and all(": rc=0 in" in ln for ln in summary), "\n".join(summary) + r.stdout[-3000:]
    for expect in ("picograd lazy", "kernels (split-k)", "kernels (no split-k)", "jit step", "host us/step",
                   "device cuda"):
        assert expect in r.stdout, expect
