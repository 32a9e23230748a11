"""The compile cache: a repeated training step compiles nothing; another shape compiles a new program; a fresh
process loads the program from disk without compiling; damaged cache files are detected and recompiled;
two processes filling one cache directory at once both succeed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from picograd import Tensor
from picograd.codegen import cache
from picograd.tensor import realize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One SGD training step of a small model: forward, backward and update realized as one program.
STEP = textwrap.dedent("""
    import json, sys
    import numpy as np
    from picograd import Tensor
    from picograd.codegen import cache

    def train(batch, steps, seed=0):
        rng = np.random.default_rng(seed)
        params = [Tensor(rng.standard_normal(s).astype(np.float32) * 0.3, requires_grad=True) for s in [(6, 3), (3,)]]
        w, b = params
        true_w = rng.standard_normal((6, 3)).astype(np.float32)
        losses = []
        for _ in range(steps):
            xa = rng.standard_normal((batch, 6)).astype(np.float32)
            x, y = Tensor(xa), Tensor(np.maximum(xa @ true_w, 0))
            for p in params:
                p.grad = None
            loss = (((x @ w + b).relu() - y) ** 2).mean()
            loss.backward()
            for p in params:
                p.assign(p - 0.2 * p.grad)
            losses.append(loss.item())
        return losses, [p.numpy() for p in params]
""")

SCRIPT = STEP + textwrap.dedent("""
    losses, params = train(8, 3)
    progs = [p for p in cache._programs.values() if p is not cache._EXPAND]
    numba_compiles = sum(sum(p.entry.stats.cache_misses.values()) for p in progs)
    print(json.dumps({"stats": cache.cache_stats(), "losses": losses, "numba_compiles": numba_compiles,
                      "from_cache": [p.from_cache for p in progs], "checksum": float(sum(p.sum() for p in params)),
                      "module": progs[0].module_path}))
""")


def run_script(cache_dir: Path, script: str = SCRIPT) -> dict:
    env = dict(os.environ, PICOGRAD_BACKEND="cpu", PICOGRAD_CACHE_DIR=str(cache_dir), PYTHONPATH=ROOT)
    env.pop("NUMBA_DISABLE_JIT", None)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def start_script(cache_dir: Path) -> subprocess.Popen:
    env = dict(os.environ, PICOGRAD_BACKEND="cpu", PICOGRAD_CACHE_DIR=str(cache_dir), PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _train_here(batch: int, steps: int, eager: bool = False) -> list[float]:
    import picograd as pg

    ns: dict = {}
    exec(STEP, ns)  # noqa: S102 - the same step the subprocess tests run
    with pg.eager(eager):
        return ns["train"](batch, steps)[0]


def test_second_identical_step_compiles_nothing(monkeypatch) -> None:
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    _train_here(6, 1)
    before = cache.cache_stats()
    losses = _train_here(6, 3)  # new data and new parameters, the same structure
    after = cache.cache_stats()
    assert after["misses"] == before["misses"] and after["disk_hits"] == before["disk_hits"]
    assert after["memory_hits"] == before["memory_hits"] + 3
    np.testing.assert_allclose(losses, _train_here(6, 3, eager=True), rtol=1e-5)  # and it computes the right thing
    _train_here(7, 1)  # another batch size is another program
    assert cache.cache_stats()["misses"] + cache.cache_stats()["disk_hits"] == after["misses"] + after["disk_hits"] + 1


def test_cached_step_skips_autodiff(monkeypatch) -> None:
    """On a memory hit the graph as built (with grad placeholders) is the key: no VJP graph is constructed."""
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    from picograd.ir import autodiff

    _train_here(5, 1)
    calls = []
    monkeypatch.setattr(autodiff, "gradients", lambda *a, **k: calls.append(1))
    _train_here(5, 2)
    assert calls == []


def test_fresh_process_loads_from_disk_without_compiling(tmp_path) -> None:
    first = run_script(tmp_path)
    assert first["stats"]["misses"] == 1 and first["numba_compiles"] == 1
    second = run_script(tmp_path)
    assert second["stats"]["misses"] == 0 and second["stats"]["disk_hits"] == 1
    assert second["numba_compiles"] == 0 and second["from_cache"] == ["memory"]  # last use was a memory hit
    assert second["losses"] == first["losses"] and second["checksum"] == first["checksum"]


def test_damaged_cache_files_are_recompiled(tmp_path) -> None:
    good = run_script(tmp_path)
    module = Path(good["module"])
    # a truncated generated module: detected by its content hash, rewritten, recompiled
    text = module.read_text()
    module.write_text(text[: len(text) // 2])
    r = run_script(tmp_path)
    assert r["losses"] == good["losses"] and r["stats"]["misses"] == 1
    assert module.read_text() == text
    # damaged numba cache files (index and machine code): never trusted, recompiled, no crash
    for f in (module.parent / "__pycache__").glob(module.stem + ".*"):
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 3] + b"\x00garbage")
    r = run_script(tmp_path)
    assert r["losses"] == good["losses"]
    r = run_script(tmp_path)  # and the rewritten cache is good again
    assert r["losses"] == good["losses"] and r["stats"]["misses"] == 0


def test_two_processes_fill_one_cache_dir_at_once(tmp_path) -> None:
    procs = [start_script(tmp_path) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, out + err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["losses"] == results[1]["losses"]
    after = run_script(tmp_path)
    assert after["losses"] == results[0]["losses"] and after["stats"]["misses"] == 0


def test_cache_stats_and_program_interface(monkeypatch) -> None:
    import picograd

    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    x = Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    y = (x * 3).exp().sum(0)
    realize(y)
    s = picograd.cache_stats()
    assert {"hits", "misses", "compile_s"} <= set(s) and s["compile_s"] >= 0
    prog = [p for p in cache._programs.values() if p is not cache._EXPAND][-1]
    assert len(prog.key_hash) == 12 and int(prog.key_hash, 16) >= 0
    assert prog.source.count("@njit") == len(prog.kernels) + 1 and "def program(" in prog.source
    assert Path(prog.module_path).read_text() == prog.source
    np.testing.assert_allclose(prog.run([x.numpy()])[0], y.numpy())


HELPER_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    import picograd as pg
    from picograd.codegen import cache
    rng = np.random.default_rng(5)
    a = rng.standard_normal((64, 48)).astype(np.float32)
    x = pg.Tensor(a)
    s = (x.exp() * 0.5).sum(0)              # three kernels over different domains or axes
    t = (x.T.tanh() + 1.0).relu()
    u = (x * x).sum(1)
    pg.realize(s, t, u)
    ok = (np.allclose(s.numpy(), (np.exp(a) * 0.5).sum(0), rtol=1e-4, atol=1e-4)
          and np.allclose(t.numpy(), np.maximum(np.tanh(a.T) + 1.0, 0), rtol=1e-5, atol=1e-6)
          and np.allclose(u.numpy(), (a * a).sum(1), rtol=1e-4, atol=1e-4))
    prog = [p for p in cache._programs.values() if p is not cache._EXPAND][-1]
    parallel = sum("parallel=True" in src.split(chr(10), 1)[0] for src in prog.kernel_sources.values())
    called = sum(f"    {k.name}(" in prog.source for k in prog.kernels)
    print(json.dumps({"ok": bool(ok), "parallel": parallel, "called": called, "kernels": len(prog.kernels),
                      "stats": cache.cache_stats()}))
""")


def test_parallel_kernels_compile_on_two_cores(tmp_path) -> None:
    """A new program with several parallel kernels has about half of its kernels compiled by a helper process
    (compile_helper.py) into the disk cache, serial ones included (the entry calls every kernel rather than
    inlining it); the results are the same, and a later process loads everything."""
    env = dict(os.environ, PICOGRAD_BACKEND="cpu", PICOGRAD_CACHE_DIR=str(tmp_path), PYTHONPATH=ROOT,
               PICOGRAD_PARALLEL_MIN="64")
    env.pop("NUMBA_DISABLE_JIT", None)

    def run() -> dict:
        r = subprocess.run([sys.executable, "-c", HELPER_SCRIPT], env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    first = run()
    assert first["ok"] and first["parallel"] >= 2 and first["kernels"] > first["parallel"]
    if (os.cpu_count() or 1) >= 2:
        assert first["called"] == first["kernels"]
        assert 1 <= first["stats"]["helper_kernels"] < first["kernels"]
    second = run()
    assert second["ok"] and second["stats"]["disk_hits"] == 1 and second["stats"]["helper_kernels"] == 0


def test_compile_helper_shares_the_work_by_cost() -> None:
    """Parallel kernels (dear) are handed out first, each to the process that would finish it sooner, counting
    the helper's start; every job goes to exactly one process and neither ends much later than the other."""
    from picograd.codegen import compile_helper as ch

    jobs = [(f"k{i}", (), i % 2 == 0) for i in range(12)]  # 6 parallel, 6 serial, interleaved
    theirs, ours = ch.share(jobs)
    assert sorted(theirs + ours) == sorted(jobs)

    def busy(side: list, start: float) -> float:
        return start + sum(ch.PARALLEL_S if par else ch.SERIAL_S for _, _, par in side)

    helper, here = busy(theirs, ch.START_S), busy(ours, 0.0)
    assert abs(helper - here) <= ch.PARALLEL_S
    assert len(ours) > len(theirs)  # the helper starts later
    assert ch.share([("a", (), True)]) == ([], [("a", (), True)])  # one job: not worth a helper's start
