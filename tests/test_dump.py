"""picograd.dump(), PICOGRAD_DEBUG levels, the capture, the picograd-dump CLI, its HTML and the cache command."""

from __future__ import annotations

import html.parser
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import picograd as pg
from picograd import debug, nn, optim
from picograd import dump as dump_mod  # noqa: F401  (the module; picograd.dump must stay callable)
from picograd.dump import main, write_report
from picograd.ir.printer import GraphView

sys.path.insert(0, str(Path(__file__).parent))
from test_printer import parse_dot, small_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "inspect_mlp.py"


def training_step():
    pg.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    opt = optim.SGD(model.parameters(), lr=0.1)
    x = pg.Tensor(np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32))
    loss = nn.CrossEntropyLoss()(model(x), pg.Tensor(np.array([0, 1, 2, 1])))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss, model, opt  # the model must live: pending updates are weakly held, as in realize()


# ---- picograd.dump ------------------------------------------------------------------------------------------------
def test_dump_shows_forward_backward_update(monkeypatch):
    monkeypatch.setenv("PICOGRAD_BACKEND", "numpy")  # the dump is the point here, not compiling it
    loss, _model, _opt = training_step()
    text = pg.dump(loss)
    heads = [ln for ln in text.splitlines() if re.fullmatch(r"[a-z]+:", ln)]
    assert heads == ["inputs:", "forward:", "backward:", "update:"]
    assert " grad " not in text, "gradients show as their VJP graph, not as placeholders"
    assert text == loss.dump() == pg.dump(loss)
    assert text.count("matmul") >= 4  # 2 forward + at least 2 in the backward pass
    only_loss = pg.dump(loss, pending=False)
    assert "backward:" not in only_loss and "update:" not in only_loss
    assert re.search(r"= grad %\d+ in\d+", pg.dump(loss, expand=False))
    loss.item()  # realizing clears the pending updates


def test_dump_with_the_schedulers_kernels(monkeypatch):
    schedule = pytest.importorskip("picograd.codegen.schedule")
    monkeypatch.setenv("PICOGRAD_BACKEND", "numpy")  # kernels=True shows the plan whatever the backend
    loss, _model, _opt = training_step()
    text = pg.dump(loss, kernels=True)
    from picograd.ir.autodiff import expand_grads
    from picograd.tensor import _pending

    sched = schedule.schedule(expand_grads([loss.node] + [t.node for t in _pending]))
    names = {k.name for k in sched.kernels}
    assert f", {len(sched.kernels)} kernels" in text.splitlines()[0]
    annotated = 0
    for line in text.splitlines():
        if m := re.match(r"  %\d+:\S+ = (\w+)", line):
            last = line.rsplit(None, 1)[-1]
            if last.startswith("k"):
                assert set(last.split(",")) <= names, line  # only real kernels
                annotated += 1
            else:  # only free views (an output that aliases another buffer) sit in no kernel
                assert m.group(1) in ("detach", "reshape", "permute", "expand"), line
    assert annotated >= 60
    loss.item()


def test_picograd_dump_callable_even_after_importing_the_module():
    import picograd.dump  # noqa: F401  (rebinds the package attribute to the module)

    t = pg.Tensor(np.ones((2, 2), np.float32)) * 3
    assert callable(pg.dump)
    assert pg.dump(t, pending=False) == debug.dump(t, pending=False)
    assert "mul in0 3.0" in pg.dump(t, pending=False)


# ---- fakes of the compiled-program interface (codegen's Program / Kernel), to test the annotations ---------------
@dataclass
class FakeKernel:
    name: str
    kind: str
    nodes: list
    shape: tuple = (4, 5)
    flops: float = 2e6
    bytes: float = 4e6
    source: str = ""


@dataclass
class FakeProgram:
    kernels: list
    key_hash: str = "feedc0ffee12"
    source: str = "# whole generated module\ndef program(in0, in1):\n    pass\n"
    compile_s: float = 1.5
    from_cache: str | None = None
    extra: dict = field(default_factory=dict)


def fake_program(roots):
    body = GraphView(roots).body
    ks = [FakeKernel(f"k{i}", "elementwise" if i % 2 else "reduce", body[i * 10:(i + 1) * 10],
                     source=f"@njit\ndef k{i}(a, out):\n    out[:] = a  # kernel {i}\n")
          for i in range((len(body) + 9) // 10)]
    return FakeProgram(ks)


def test_debug_levels_with_a_program(capsys):
    roots = small_step()
    prog = fake_program(roots)
    event = {"roots": roots, "program": prog, "hit": False, "compile_s": 1.5, "run_s": 0.002,
             "kernel_s": [1e-3] * len(prog.kernels), "backend": "cpu"}
    for lvl in (1, 2, 3, 4):
        debug.print_event(dict(event), lvl, sys.stdout)
        out = capsys.readouterr().out.splitlines()
        assert re.match(r"\[picograd\] realize \d+: program feedc0ffee12 \(cpu, 5 kernels\), miss, compile 1\.500 s,"
                        r" run 2\.000 ms$", out[0])
        klines = [ln for ln in out if re.match(r"  k\d ", ln)]
        assert len(klines) == (5 if lvl >= 2 else 0)
        if lvl >= 2:  # 2e6 flops and 4e6 bytes in 1 ms
            assert "1.000 ms" in klines[0] and "2.00 GFLOP/s" in klines[0] and "4.00 GB/s" in klines[0]
        assert any(ln.startswith("  %0:") and ln.endswith("k0") for ln in out) == (lvl >= 3)
        assert ("# whole generated module" in out) == (lvl >= 4)
    prog.from_cache = "disk"
    debug.print_event({**event, "hit": True}, 1, sys.stdout)
    assert ", hit (disk)," in capsys.readouterr().out


def test_debug_env_levels_through_realize(monkeypatch, capsys):
    x = pg.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    monkeypatch.setenv("PICOGRAD_DEBUG", "0")
    (x * 2).realize()
    assert "[picograd]" not in capsys.readouterr().err
    monkeypatch.setenv("PICOGRAD_DEBUG", "1")
    (x * 3).realize()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and re.match(r"\[picograd\] realize \d+: program [0-9a-f]+ \(", err[0])
    monkeypatch.setenv("PICOGRAD_DEBUG", "3")
    (x.exp() + 1).sum().realize()
    err = capsys.readouterr().err
    assert "forward:" in err and re.search(r"= exp in0", err)


def test_debug_levels_with_the_cpu_backend(monkeypatch, capsys):
    pytest.importorskip("picograd.codegen.cache")
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    monkeypatch.setenv("PICOGRAD_DEBUG", "4")
    for i in range(2):  # fresh data each time: the same structure, so the second is a cache hit
        x = pg.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3) + i)
        (x.exp() * 3 + 1).sum(axis=1).realize()
    runs = capsys.readouterr().err.split("[picograd] realize ")[1:]
    assert len(runs) == 2
    head, *rest = runs[1].splitlines()
    assert re.match(r"\d+: program [0-9a-f]+ \(cpu, \d+ kernels\), hit \(memory\), compile 0\.000 s, run ", head)
    kernels = [ln for ln in rest if re.match(r"  k\d+\S* ", ln)]
    assert kernels and all(re.search(r"\d\.\d{3} ms ", ln) for ln in kernels)  # level 2: timed kernels
    ir = [ln for ln in rest if ln.startswith("  %")]
    assert ir and any(ln.split()[-1].startswith("k") for ln in ir)  # level 3: IR with kernels
    assert any(ln.startswith("def program(") for ln in rest)  # level 4: the generated source


def test_capture_dedupes_programs_and_counts_calls():
    with debug.Capture() as cap:
        for _ in range(3):
            (pg.Tensor(np.ones((2, 3), np.float32)) * 2).sum().realize()
        (pg.Tensor(np.ones((4, 3), np.float32)) * 2).sum().realize()
    assert cap.realizes == 4
    assert [r.calls for r in cap.programs] == [3, 1]
    assert len(cap.programs[0].run_s) == 3 and cap.programs[0].run_median() is not None
    (pg.Tensor(np.ones(2, np.float32)) * 2).realize()  # after the block: not recorded
    assert cap.realizes == 4


# ---- report files and HTML ----------------------------------------------------------------------------------------
class _Collect(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids, self.hrefs, self.tags, self.text = set(), set(), [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if "href" in a:
            self.hrefs.add(a["href"])

    def handle_data(self, data):
        self.text.append(data)


def parse_html(path: Path) -> _Collect:
    p = _Collect()
    p.feed(path.read_text())
    p.close()
    return p


def test_report_with_kernels_html_references_every_kernel(tmp_path, monkeypatch):
    roots = small_step()
    prog = fake_program(roots)
    with debug.Capture() as cap:
        for i in range(3):
            debug.on_realize({"roots": roots, "program": prog, "hit": i > 0, "compile_s": 1.5 if i == 0 else 0.0,
                              "run_s": 0.002, "kernel_s": [1e-3 * (k + 1) for k in range(len(prog.kernels))]})
    assert len(cap.programs) == 1 and cap.programs[0].calls == 3 and cap.programs[0].hits == 2
    report = write_report(cap, tmp_path / "out")
    d = tmp_path / "out" / report["programs"][0]
    assert sorted(p.name for p in (d / "kernels").iterdir()) == sorted(f"{k.name}.py" for k in prog.kernels)
    assert (d / "kernels" / "k1.py").read_text() == prog.kernels[1].source
    assert (d / "source.py").read_text() == prog.source
    g = parse_dot((d / "graph.dot").read_text())
    assert len(g["clusters"]) == len(prog.kernels)
    timings = (d / "timings.txt").read_text()
    assert "calls 3  cache hits 2" in timings and re.search(r"k4 .* 5\.000 ms", timings)
    page = parse_html(Path(report["index"]))
    for k in prog.kernels:
        assert f"p0-{k.name}" in page.ids and f"#p0-{k.name}" in page.hrefs
    assert f"{report['programs'][0]}/" in page.hrefs
    assert ("svg" in page.tags) == (shutil.which("dot") is not None)
    text = "".join(page.text)
    assert prog.kernels[0].source.splitlines()[1] in text and "%0:f32[4,5] = matmul in0 in1" in text
    # Without Graphviz: a clear notice, no SVG, still a complete page.
    monkeypatch.setattr(shutil, "which", lambda name: None)
    report = write_report(cap, tmp_path / "out")
    assert report["notice"] and "graphviz" in report["notice"].lower()
    assert not list((tmp_path / "out").rglob("*.svg")), "stale SVGs of an earlier run are removed"
    page = parse_html(Path(report["index"]))
    assert "svg" not in page.tags and "Graphviz" in "".join(page.text)


def _check_output(out: Path, expect_programs: int | None = None) -> list[Path]:
    assert (out / "index.html").is_file() and (out / "timings.txt").is_file()
    dirs = sorted(p for p in out.iterdir() if p.is_dir())
    if expect_programs is not None:
        assert len(dirs) == expect_programs
    page = parse_html(out / "index.html")
    for d in dirs:
        assert (d / "graph.txt").read_text().startswith(f"# program {d.name[7:].split('-')[0]} ")
        g = parse_dot((d / "graph.dot").read_text())
        assert (d / "graph.svg").is_file() == (shutil.which("dot") is not None)
        kernels = sorted(p.stem for p in (d / "kernels").iterdir())
        assert len(g["clusters"]) == len(kernels)
        assert f"{d.name}/" in page.hrefs
        for k in kernels:
            assert f"#p{d.name[7:].split('-')[0]}-{k}" in page.hrefs
    return dirs


def test_cli_on_inspect_mlp(tmp_path, capsys):
    out = tmp_path / "mlp"
    # --no-profile here; the subprocess test profiles
    assert main(["-o", str(out), "--no-profile", str(EXAMPLE), "--quiet", "--steps", "2", "--batch", "16"]) == 0
    dirs = _check_output(out)
    assert dirs
    ir = (dirs[0] / "graph.txt").read_text()
    assert "f32[16,784]" in ir and "backward:" in ir and "update:" in ir
    assert "distinct program" in capsys.readouterr().err


def test_cli_on_a_user_script_in_a_subprocess(tmp_path):
    """The console entry on an arbitrary script with arguments, compiled and profiled as a user would run it."""
    pytest.importorskip("picograd.codegen.cache")
    script = tmp_path / "user_script.py"
    script.write_text(
        "import sys\nimport numpy as np\nimport picograd as pg\n"
        "n = int(sys.argv[1])\n"
        "x = pg.Tensor(np.ones((n, 3), np.float32), requires_grad=True)\n"
        "y = (x.tanh() * 2).sum()\ny.backward()\nprint('result', y.item(), sys.argv[1:])\n"
        "for i in range(3):\n    (pg.Tensor(np.full((n, 3), i, np.float32)).exp() + 1).max().realize()\n"
        "if __name__ == '__main__':\n    sys.exit(0)\n")
    out = tmp_path / "o"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PICOGRAD_BACKEND": "cpu"}
    r = subprocess.run([sys.executable, "-m", "picograd.dump", "-o", str(out), str(script), "5", "--flag"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "result 22.84" in r.stdout and "['5', '--flag']" in r.stdout
    dirs = _check_output(out, expect_programs=2)
    assert "f32[5,3]" in (dirs[0] / "graph.txt").read_text()
    for d in dirs:
        assert list((d / "kernels").iterdir()) and "def " in (d / "source.py").read_text()
    timings = (dirs[1] / "timings.txt").read_text()
    assert "calls 3  cache hits 2" in timings and "median of calls 2..3" in timings
    assert re.search(r"^  k0\S* .* \d+\.\d{3} ms ", timings, re.M), timings  # a measured per-kernel time


def test_cli_module_function_and_errors(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_model.py").write_text(
        "import numpy as np\nimport picograd as pg\n"
        "import sys\n"
        "def build():\n    return (pg.Tensor(np.ones((2, int(sys.argv[1])), np.float32)) * 3).sum()\n"
        "def broken():\n    (pg.Tensor(np.ones(2, np.float32)) + 1).realize()\n    raise RuntimeError('boom')\n")
    monkeypatch.chdir(tmp_path)
    assert main(["-o", "a", "my_model:build", "3"]) == 0  # an importable module, result realized
    assert "f32[2,3]" in (_check_output(tmp_path / "a", expect_programs=1)[0] / "graph.txt").read_text()
    assert main(["-o", "b", str(tmp_path / "my_model.py") + ":build", "4"]) == 0  # a file path
    assert "f32[2,4]" in (_check_output(tmp_path / "b", expect_programs=1)[0] / "graph.txt").read_text()
    assert main(["-o", "c", "my_model:broken"]) == 1  # the error is reported, what ran before it is kept
    _check_output(tmp_path / "c", expect_programs=1)
    assert "boom" in capsys.readouterr().err
    for bad in ("my_model:nothing_here", "no_such_module:build", "missing.py"):
        with pytest.raises(SystemExit) as e:
            main(["-o", "d", bad])
        assert e.value.code == 2 and not (tmp_path / "d").exists()
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(SystemExit) as e:  # refused before the target runs (it would print "boom")
        main(["-o", "taken", "my_model:broken"])
    assert e.value.code == 2 and "not a folder" in capsys.readouterr().err


# ---- the cache subcommand -----------------------------------------------------------------------------------------
def test_cache_list_size_clear(tmp_path, monkeypatch, capsys):
    d = tmp_path / "cache"
    (d / "cpu" / "__pycache__").mkdir(parents=True)
    (d / "cuda").mkdir()
    (d / "mnist").mkdir()
    (d / "cpu" / "pg_0123abcd.py").write_text("x = 1\n" * 100)
    (d / "cpu" / "__pycache__" / "pg_0123abcd.program-1.py310.nbi").write_bytes(b"\0" * 2048)
    (d / "cpu" / "__pycache__" / "pg_0123abcd.program-1.py310.1.nbc").write_bytes(b"\0" * 4096)
    (d / "cpu" / "pg_77ee.py").write_text("y = 2\n")
    (d / "cuda" / "5f5f5f.json").write_text("{}")
    (d / "cpu" / "notes.txt").write_text("not ours")
    (d / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"\0" * 100)
    assert main(["cache", "list", "--dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^cpu +pg_0123abcd +3 files +6\.6 KiB", out, re.M)
    assert re.search(r"^cuda +5f5f5f +1 files", out, re.M)
    assert "3 cached programs" in out and "mnist/" in out
    monkeypatch.setenv("PICOGRAD_CACHE_DIR", str(d))
    assert main(["cache", "size"]) == 0
    assert f"{d}: 3 cached programs" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert "removed 5 files" in out and "notes.txt" in out
    left = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
    assert left == ["cpu/notes.txt", "mnist/train-labels-idx1-ubyte.gz"]
    assert not (d / "cuda").exists()
    assert main(["cache"]) == 0 and "0 cached programs" in capsys.readouterr().out


def test_cache_command_sees_what_the_cpu_backend_writes(tmp_path, monkeypatch, capsys):
    pytest.importorskip("picograd.codegen.cache")
    monkeypatch.setenv("PICOGRAD_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    # A shape no other test uses, so this compiles (and writes the cache) instead of hitting memory.
    (pg.Tensor(np.ones((3, 17, 2), np.float32)).exp() * 2).sum().realize()
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^cpu +pg_[0-9a-f]+ ", out, re.M), out
    assert main(["cache", "clear"]) == 0 and "removed" in capsys.readouterr().out
    assert not list(tmp_path.rglob("pg_*"))


def test_kernels_are_timed_inside_the_entry(monkeypatch):
    """PICOGRAD_DEBUG=2's per-kernel times come from clock readings inside the compiled entry (cache.Program.
    run_profiled): one per kernel, adding up to nearly the whole call, and no kernel compiled on its own."""
    import importlib

    from picograd.codegen import cache

    realize_mod = importlib.import_module("picograd.realize")  # (picograd.realize is also the function)

    monkeypatch.setenv("PICOGRAD_BACKEND", "cpu")
    monkeypatch.setenv("PICOGRAD_DEBUG", "2")
    monkeypatch.setattr(cache, "_programs", {})
    events = []
    monkeypatch.setattr(realize_mod, "hooks", realize_mod.hooks + [events.append])
    rng = np.random.default_rng(0)
    a = pg.Tensor(rng.standard_normal((300, 300)).astype(np.float32))
    b = pg.Tensor(rng.standard_normal((300, 300)).astype(np.float32))
    for _ in range(3):
        out = ((a @ b).tanh() @ a).exp().sum(1)
        out.realize()
    prog, ks = events[-1]["program"], events[-1]["kernel_s"]
    assert len(ks) == len(prog.kernels) >= 2 and all(t >= 0 for t in ks)
    assert 0.3 * events[-1]["run_s"] <= sum(ks) <= events[-1]["run_s"]
    inlined = [k for k in prog.kernels if f"    {k.name}(" not in prog.source]
    assert inlined  # (a program with fewer than two parallel kernels: the serial ones are inlined)
    for k in inlined:  # kernels inlined into the entry were never compiled as functions of their own
        assert not getattr(prog.module, k.name).signatures
