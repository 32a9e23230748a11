"""`picograd-dump` (also `python -m picograd.dump`): run a script or a function under capture and write what
the compiler did, one folder per distinct program, plus a self-contained index.html.

    picograd-dump [-o OUT] script.py [ARGS...]        run a script as __main__ with its arguments
    picograd-dump [-o OUT] pkg.module:function [ARGS] call function() like an entry point, ARGS in sys.argv[1:]
                                                      (path/to/file.py:function works too)
    picograd-dump cache [list|size|clear] [--dir DIR] the on-disk compile cache

OUT (default ./picograd-dump) gets, for program N: programN-<key>/graph.txt (the IR), graph.dot (one cluster per
kernel; forward, backward and update in distinct colours), graph.svg (when Graphviz's `dot` is installed),
source.py and kernels/<name>.py (generated code), timings.txt; and at the top timings.txt and index.html."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import runpy
import shutil
import subprocess
import sys
import traceback
import types
from pathlib import Path
from typing import Any

from .debug import Capture, ProgramRecord, kernel_line
from .debug import dump as _dump_graph

_OURS = re.compile(r"^(program\d+-[0-9A-Za-z]+|index\.html|timings\.txt)$")
DOT_MISSING = ("Graphviz's `dot` was not found, so no SVG pictures were drawn (the .dot files are written). "
               "Install it (Debian/Ubuntu: apt-get install graphviz) and run picograd-dump again.")


class TargetNotFound(Exception):
    """The script or function to run does not exist (a usage error: nothing is run or written)."""


# ---- running the target under capture --------------------------------------------------------------------------
def _call_function(target: str, args: list[str]) -> Any:
    mod_name, fn_name = target.rsplit(":", 1)
    if mod_name.endswith(".py") or os.path.sep in mod_name:
        path = Path(mod_name).resolve()
        if not path.is_file():  # a usage error, like a missing script, not "the target raised"
            raise TargetNotFound(f"no such file {mod_name!r} (in {target!r})")
        sys.path.insert(0, str(path.parent))
        namespace = runpy.run_path(str(path), run_name=f"picograd_dump_{path.stem}")
    else:
        sys.path.insert(0, os.getcwd())
        try:
            namespace = vars(importlib.import_module(mod_name))
        except ModuleNotFoundError as e:
            if e.name and mod_name.startswith(e.name):  # the target itself, not one of its imports
                raise TargetNotFound(f"no module named {mod_name!r} (from {os.getcwd()})") from e
            raise
    fn = namespace.get(fn_name)
    if not callable(fn):
        raise TargetNotFound(f"{mod_name} has no function {fn_name!r}")
    # Called like a console-script entry point: no arguments, the rest of the command line in sys.argv[1:].
    sys.argv = [target, *args]
    result = fn()
    _realize_result(result)
    return result


def _realize_result(result: Any) -> None:
    """A function that returns lazy tensors wants them computed: that realize is the program to see."""
    from .tensor import Tensor, realize

    items = list(result.values()) if isinstance(result, dict) else \
        result if isinstance(result, (tuple, list)) else [result]
    tensors = [t for t in items if isinstance(t, Tensor)]
    if tensors:
        realize(*tensors)


def _run_script(path: str, args: list[str]) -> None:
    if not os.path.isfile(path):
        raise TargetNotFound(f"no such script {path!r} (or give module:function)")
    sys.argv = [path, *args]
    sys.path.insert(0, str(Path(path).resolve().parent))
    runpy.run_path(path, run_name="__main__")


def run_target(target: str, args: list[str], profile: bool = True) -> tuple[Capture, int]:
    """Run target under capture; returns the capture and an exit status (the target's errors are reported,
    and what was captured before them is kept)."""
    saved_argv, saved_path = list(sys.argv), list(sys.path)
    status = 0
    with Capture(profile=profile) as cap:
        try:
            if ":" in target and not os.path.isfile(target):
                _call_function(target, args)
            else:
                _run_script(target, args)
        except TargetNotFound:
            raise
        except SystemExit as e:
            code = e.code
            if isinstance(code, str):
                print(code, file=sys.stderr)
            status = code if isinstance(code, int) else (0 if code is None else 1)
        except KeyboardInterrupt:  # Ctrl-C a long training run after a few steps: still get the report
            print("picograd-dump: interrupted; writing what was captured so far", file=sys.stderr)
            status = 130
        except Exception:
            traceback.print_exc()
            print("picograd-dump: the target raised; writing what was captured before that", file=sys.stderr)
            status = 1
        finally:
            sys.argv = saved_argv
            sys.path[:] = saved_path
    return cap, status


# ---- writing the report ---------------------------------------------------------------------------------------------
def program_dir(rec: ProgramRecord) -> str:
    return f"program{rec.index}-{re.sub(r'[^0-9A-Za-z]', '', rec.key)[:16] or 'x'}"


def timing_table(rec: ProgramRecord) -> str:
    run = rec.run_median()
    lines = [f"program {rec.index} ({rec.key})  backend {rec.backend}  {rec.n_nodes} nodes  {len(rec.kernels)} kernels",
             f"  calls {rec.calls}  cache hits {rec.hits}  compile (first call) {rec.compile_s[0]:.3f} s  "
             f"run {run * 1e3:.3f} ms" if run is not None else "  never run",
             f"  times: {rec.timing_note()}"]
    if rec.kernels:
        width = max(10, *(len(k.name) for k in rec.kernels))
        lines.append(f"  {'kernel':<{width}} {'kind':<11} {'shape':<14} {'time':>12} {'compute':>15} {'memory':>12}")
        lines.extend(kernel_line(k, rec.kernel_median(i), width) for i, k in enumerate(rec.kernels))
        if not rec.kernel_s:
            lines.append("  (no per-kernel times: profiling was off)")
    return "\n".join(lines) + "\n"


def _clear_old(out: Path) -> None:
    for p in out.iterdir():
        if _OURS.match(p.name):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def render_svg(dot_file: Path) -> str | None:
    """dot_file rendered to SVG next to it; None if Graphviz is missing or fails (said on stderr)."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    svg = dot_file.with_suffix(".svg")
    try:
        subprocess.run([exe, "-Tsvg", str(dot_file), "-o", str(svg)], check=True, timeout=120, capture_output=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        # A huge graph can make dot slow; the rest of the report is still worth writing.
        err = getattr(e, "stderr", b"") or b""
        print(f"picograd-dump: dot failed on {dot_file}: {e} {err.decode(errors='replace')[:300]}", file=sys.stderr)
        return None
    return svg.read_text()


def write_report(cap: Capture, out: Path, svg: bool = True, title: str = "picograd-dump") -> dict[str, Any]:
    """Write every file for the captured programs; returns {"index": path, "svg": bool, "programs": [dirs]}."""
    from .html_report import render_html

    out.mkdir(parents=True, exist_ok=True)
    _clear_old(out)
    svgs: dict[int, str | None] = {}
    dirs = []
    for rec in cap.programs:
        d = out / program_dir(rec)
        (d / "kernels").mkdir(parents=True)
        (d / "graph.txt").write_text(rec.ir)
        (d / "graph.dot").write_text(rec.dot())
        if rec.source:
            (d / "source.py").write_text(rec.source)
        for k in rec.kernels:
            (d / "kernels" / f"{re.sub(r'[^0-9A-Za-z_]', '_', k.name)}.py").write_text(
                k.source or f"# {k.name}: the backend gave no per-kernel source; see ../source.py\n")
        (d / "timings.txt").write_text(timing_table(rec))
        svgs[rec.index] = render_svg(d / "graph.dot") if svg else None
        dirs.append(d.name)
    (out / "timings.txt").write_text("".join(timing_table(r) + "\n" for r in cap.programs)
                                     or "no program was realized\n")
    have_dot = shutil.which("dot") is not None
    notice = None if have_dot or not svg else DOT_MISSING
    page = render_html(cap, svgs, {r.index: program_dir(r) for r in cap.programs}, title=title, notice=notice)
    (out / "index.html").write_text(page)
    return {"index": str(out / "index.html"), "svg": bool(svg and have_dot), "programs": dirs, "notice": notice}


# ---- the on-disk cache -----------------------------------------------------------------------------------------------
# The compile cache lives in per-backend folders of the cache root (codegen/cache.py: cpu/pg_<hash>.py with numba's
# machine code in cpu/__pycache__/pg_<hash>.*; picograd.cuda: cuda/<key>.json). The root may hold other things
# (the datasets' default download folder is ~/.cache/picograd/<name>), which `clear` never touches; within the
# backend folders it removes only names the cache writes, so a mistaken PICOGRAD_CACHE_DIR cannot wipe a folder.
CACHE_SUBDIRS = ("cpu", "cuda")
_CACHE_NAME = re.compile(r"^pg_[0-9a-f]+[.]|[.]json$|[.]tmp$|^tmp")


def cache_dir() -> Path:
    try:
        from .codegen.cache import cache_dir as codegen_cache_dir

        return Path(codegen_cache_dir())
    except ImportError:
        return Path(os.environ.get("PICOGRAD_CACHE_DIR") or Path.home() / ".cache" / "picograd")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) if folder.is_dir() else []


def cache_programs(root: Path) -> list[dict[str, Any]]:
    """One entry per cached program: {"backend", "name", "files", "bytes", "mtime"}, sorted."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for sub in CACHE_SUBDIRS:
        for p in _files(root / sub):
            if not _CACHE_NAME.search(p.name):
                continue
            name = p.name.split(".", 1)[0]
            st = p.stat()
            g = groups.setdefault((sub, name), {"backend": sub, "name": name, "files": 0, "bytes": 0, "mtime": 0.0})
            g["files"] += 1
            g["bytes"] += st.st_size
            g["mtime"] = max(g["mtime"], st.st_mtime)
    return [groups[k] for k in sorted(groups)]


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def clear_cache(root: Path) -> tuple[int, int, list[Path]]:
    """Remove the compile cache's files under root; returns (files removed, bytes freed, files left alone)."""
    removed = freed = 0
    kept = []
    for sub in CACHE_SUBDIRS:
        for p in _files(root / sub):
            if _CACHE_NAME.search(p.name):
                size = p.stat().st_size
                p.unlink(missing_ok=True)
                removed, freed = removed + 1, freed + size
            else:
                kept.append(p)
        dirs = [d for d in (root / sub).rglob("*") if d.is_dir()] if (root / sub).is_dir() else []
        for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True) + [root / sub]:
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    return removed, freed, kept


def cache_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="picograd-dump cache", description="List, size or clear picograd's on-disk "
                                "compile cache ($PICOGRAD_CACHE_DIR, else ~/.cache/picograd).")
    p.add_argument("action", nargs="?", choices=("list", "size", "clear"), default="list")
    p.add_argument("--dir", help="the cache root (default: as picograd finds it)")
    ns = p.parse_args(argv)
    root = Path(ns.dir) if ns.dir else cache_dir()
    progs = cache_programs(root)
    total = sum(g["bytes"] for g in progs)
    if ns.action == "list":
        import time

        for g in progs:
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(g["mtime"]))
            print(f"{g['backend']:<5} {g['name']:<28} {g['files']:>3} files {_human(g['bytes']):>10}  {stamp}")
    if ns.action in ("list", "size"):
        per = {b: [g for g in progs if g["backend"] == b] for b in CACHE_SUBDIRS}
        detail = ", ".join(f"{b} {len(v)} ({_human(sum(g['bytes'] for g in v))})" for b, v in per.items() if v)
        print(f"{root}: {len(progs)} cached programs, {_human(total)}" + (f" [{detail}]" if detail else ""))
        others = [d for d in sorted(root.iterdir()) if d.name not in CACHE_SUBDIRS] if root.is_dir() else []
        if others:
            sizes = [sum(f.stat().st_size for f in _files(d)) if d.is_dir() else d.stat().st_size for d in others]
            print("  not part of the compile cache (left alone): " + ", ".join(
                f"{d.name}{'/' * d.is_dir()} ({_human(n)})" for d, n in zip(others, sizes, strict=True)))
    else:
        removed, freed, kept = clear_cache(root)
        print(f"{root}: removed {removed} files of {len(progs)} cached programs, freed {_human(freed)}")
        for k in kept:
            print(f"  left alone (not written by the cache): {k.relative_to(root)}")
    return 0


# ---- command line ---------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="picograd-dump",
        description="Run a script or module:function under capture and write, for each distinct program it "
        "realizes, the IR, a DOT/SVG graph with one cluster per kernel, the generated kernel sources, timings, "
        "and an index.html to open in a browser.",
        epilog="`picograd-dump cache [list|size|clear]` manages the on-disk compile cache.",
    )
    p.add_argument("-o", "--out", default="picograd-dump", help="output folder (default: ./picograd-dump)")
    p.add_argument("--no-svg", action="store_true", help="do not call Graphviz's dot")
    p.add_argument("--no-profile", action="store_true", help="skip per-kernel timing (the entry's timed path is "
                   "the same compiled function; this only skips reading the clock)")
    p.add_argument("target", help="script.py, pkg.module:function or path/to/file.py:function")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments (sys.argv[1:]; a function is "
                   "called with none and finds them there, like a console-script entry point)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "cache":
        return cache_main(argv[1:])
    ns = _parser().parse_args(argv)
    if Path(ns.out).exists() and not Path(ns.out).is_dir():  # say so before running the target, not after
        _parser().error(f"-o {ns.out}: exists and is not a folder")
    try:
        cap, status = run_target(ns.target, ns.args, profile=not ns.no_profile)
    except TargetNotFound as e:
        _parser().error(str(e))
    report = write_report(cap, Path(ns.out), svg=not ns.no_svg, title=f"picograd-dump {ns.target}")
    if report["notice"]:
        print(f"picograd-dump: {report['notice']}", file=sys.stderr)
    n = len(cap.programs)
    print(f"picograd-dump: {n} distinct program{'s' * (n != 1)} from {cap.realizes} realizes -> {report['index']}",
          file=sys.stderr)
    if n == 0:
        print("picograd-dump: nothing was realized (eager mode, or no tensor was ever computed?)", file=sys.stderr)
    return status


class _CallableModule(types.ModuleType):
    """`picograd.dump(t)` is the graph-dump function, but importing this module (the console script does) rebinds
    the package attribute `picograd.dump` to the module; calling the module does the same, so both spellings
    keep working whichever happened first."""

    def __call__(self, *tensors: Any, **kw: Any) -> str:
        return _dump_graph(*tensors, **kw)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
