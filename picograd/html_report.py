"""The self-contained index.html of `picograd-dump`: one page, no external files or scripts from the network.

Per program: the graph picture (Graphviz SVG inlined when available), a kernel timeline drawn with plain CSS
bars (so there is a picture of where the time goes even without Graphviz), the kernel table with each kernel's
generated source, the IR text and the whole program's source."""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING

from .ir.printer import PHASE_COLOURS

if TYPE_CHECKING:
    from .debug import Capture, ProgramRecord

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; color: #212529;
       background: #f8f9fa; }
header { background: #343a40; color: #f8f9fa; padding: 14px 28px; }
header h1 { margin: 0; font-size: 20px; font-weight: 600; }
header .sub { color: #ced4da; font-size: 13px; margin-top: 3px; }
main { padding: 8px 28px 40px; max-width: 1500px; }
section.program { background: #fff; border: 1px solid #dee2e6; border-radius: 8px; padding: 6px 20px 14px;
                  margin: 18px 0; }
h2 { font-size: 17px; margin: 12px 0 6px; }
h3 { font-size: 14px; margin: 16px 0 6px; color: #495057; text-transform: uppercase; letter-spacing: .04em; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e9ecef; text-align: left; white-space: nowrap; }
th { background: #f1f3f5; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f8f9fa; border: 1px solid #e9ecef; border-radius: 4px; padding: 8px 10px; overflow: auto;
      font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; max-height: 520px; }
details { margin: 4px 0; }
summary { cursor: pointer; color: #1c5fb8; }
.legend span.sw { display: inline-block; width: 12px; height: 12px; border: 1px solid #adb5bd; border-radius: 3px;
                  vertical-align: -1px; margin: 0 4px 0 12px; }
.notice { background: #fff3cd; border: 1px solid #ffe69c; border-radius: 6px; padding: 8px 12px; margin: 12px 0; }
.stats span { margin-right: 18px; }
.stats b { font-variant-numeric: tabular-nums; }
.graph { overflow: auto; max-height: 78vh; border: 1px solid #e9ecef; border-radius: 4px; background: #fff; }
.graph.fit svg { width: 100%; height: auto; }
.bar { height: 12px; background: #4c8ed9; border-radius: 2px; min-width: 1px; }
.barcell { width: 320px; }
.kind { color: #6c757d; }
a { color: #1c5fb8; text-decoration: none; }
.ir .sec { color: #1c5fb8; font-weight: 600; }
.ir .cm { color: #868e96; }
"""

_JS = """
function fit(id, btn) { const g = document.getElementById(id); g.classList.toggle('fit');
  btn.textContent = g.classList.contains('fit') ? 'actual size' : 'fit to width'; }
// A link to a kernel (from the table or a cluster of the picture) opens its source.
function openHash() { const el = document.getElementById(decodeURIComponent(location.hash.slice(1)));
  if (el && el.tagName === 'DETAILS') { el.open = true; el.scrollIntoView(); } }
window.addEventListener('hashchange', openHash); window.addEventListener('load', openHash);
"""


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.3f}"


def _rate(amount: float, s: float | None) -> str:
    return "-" if not s or not amount else f"{amount / s / 1e9:.2f}"


def _svg_inline(svg: str) -> str:
    """Graphviz's SVG without its XML prolog and doctype, which are invalid inside HTML."""
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else ""


def _ir_html(ir: str) -> str:
    out = []
    for line in ir.splitlines():
        code, sep, comment = line.partition("  # ") if not line.startswith("#") else ("", "", line)
        if line.startswith("#"):
            out.append(f'<span class="cm">{_e(line)}</span>')
        elif re.match(r"^[a-z]+:$", code.strip()) and not code.startswith(" "):
            out.append(f'<span class="sec">{_e(code)}</span>')
        else:
            out.append(_e(code) + (f'  <span class="cm"># {_e(comment)}</span>' if sep else ""))
    return "\n".join(out)


def _program(rec: ProgramRecord, svg: str | None, folder: str, dot_notice: bool) -> str:
    pid = f"p{rec.index}"
    run = rec.run_median()
    first = rec.compile_s[0] if rec.compile_s else 0.0
    parts = [f'<section class="program" id="{pid}">',
             f"<h2>Program {rec.index} <span class=kind>· {_e(rec.key)} · {_e(rec.backend)}</span></h2>",
             '<div class="stats">'
             f"<span>nodes <b>{rec.n_nodes}</b></span><span>kernels <b>{len(rec.kernels)}</b></span>"
             f"<span>calls <b>{rec.calls}</b></span><span>cache hits <b>{rec.hits}</b></span>"
             f"<span>compile (first call) <b>{first:.3f} s</b></span>"
             f"<span>run <b>{_ms(run)} ms</b></span>"
             f'<span>files: <a href="{_e(folder)}/">{_e(folder)}/</a></span></div>']
    parts.append("<h3>Graph</h3>")
    if svg:
        gid = f"{pid}-graph"
        parts.append(f'<button onclick="fit(\'{gid}\', this)">actual size</button>')
        parts.append(f'<div class="graph fit" id="{gid}">{_svg_inline(svg)}</div>')
    else:
        why = "Graphviz is not installed" if dot_notice else "SVG rendering was turned off"
        parts.append(f'<p class="notice">No picture: {why}. The graph is in '
                     f'<a href="{_e(folder)}/graph.dot">{_e(folder)}/graph.dot</a> '
                     "(render it with <code>dot -Tsvg</code>); the IR below has the same content.</p>")
    if rec.kernels:
        times = [rec.kernel_median(i) for i in range(len(rec.kernels))]
        longest = max((t for t in times if t), default=0.0)
        total = sum(t for t in times if t)
        how = rec.timing_note() if rec.kernel_s else "no per-kernel times (profiling was off)"
        parts.append(f"<h3>Kernels, in execution order</h3><p class=kind>Times: {_e(how)}. GFLOP/s and GB/s "
                     "divide the scheduler's estimates of work and memory traffic by the time.</p>")
        parts.append('<table><tr><th>kernel</th><th>kind</th><th>shape</th><th class=num>ms</th>'
                     '<th class=num>GFLOP/s</th><th class=num>GB/s</th><th class=num>share</th><th>time</th>'
                     '<th class=num>nodes</th></tr>')
        for k, t in zip(rec.kernels, times, strict=True):
            width = 0 if not t or not longest else max(1, round(300 * t / longest))
            nodes = len(k.nodes)
            parts.append(f'<tr><td><a href="#{pid}-{_e(k.name)}">{_e(k.name)}</a></td><td>{_e(k.kind)}</td>'
                         f"<td>[{','.join(map(str, k.shape))}]</td><td class=num>{_ms(t)}</td>"
                         f"<td class=num>{_rate(k.flops, t)}</td><td class=num>{_rate(k.bytes, t)}</td>"
                         f"<td class=num>{f'{100 * t / total:.0f}%' if t and total else '-'}</td>"
                         f'<td class=barcell><div class=bar style="width:{width}px"></div></td>'
                         f"<td class=num>{nodes}</td></tr>")
        parts.append("</table><h3>Kernel sources</h3>")
        for k in rec.kernels:
            src = k.source or "# the backend gave no per-kernel source; see the program source below"
            parts.append(f'<details id="{pid}-{_e(k.name)}"><summary>{_e(k.name)} <span class=kind>{_e(k.kind)} '
                         f"[{','.join(map(str, k.shape))}]</span></summary><pre>{_e(src)}</pre></details>")
    elif rec.backend == "numpy":
        parts.append('<p class="kind">No kernels: this program ran on the numpy interpreter '
                     "(set PICOGRAD_BACKEND=cpu to compile it).</p>")
    else:  # compiled, yet nothing to compute: only views of its inputs (a reshape), or outputs that are inputs
        parts.append('<p class="kind">No kernels: every output of this program is an input or a view of '
                     "one, so there was nothing to compute.</p>")
    parts.append(f'<h3>IR</h3><details open><summary>graph.txt</summary><pre class="ir">{_ir_html(rec.ir)}'
                 "</pre></details>")
    if rec.source:
        parts.append(f"<h3>Generated program</h3><details><summary>source.py</summary><pre>{_e(rec.source)}"
                     "</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


def render_html(cap: Capture, svgs: dict[int, str | None], folders: dict[int, str], title: str = "picograd-dump",
                notice: str | None = None) -> str:
    """The whole page as one string (CSS and the one small script inline, SVGs inline)."""
    legend = "".join(f'<span class="sw" style="background:{c}"></span>{_e(p)}' for p, c in PHASE_COLOURS.items())
    rows = []
    for r in cap.programs:
        rows.append(f'<tr><td><a href="#p{r.index}">program {r.index}</a></td><td>{_e(r.key)}</td>'
                    f"<td>{_e(r.backend)}</td><td class=num>{r.n_nodes}</td><td class=num>{len(r.kernels)}</td>"
                    f"<td class=num>{r.calls}</td><td class=num>{r.hits}</td>"
                    f"<td class=num>{(r.compile_s[0] if r.compile_s else 0):.3f}</td>"
                    f"<td class=num>{_ms(r.run_median())}</td></tr>")
    body = [f"<header><h1>{_e(title)}</h1><div class=sub>{len(cap.programs)} distinct programs from "
            f"{cap.realizes} realizes</div></header><main>"]
    if notice:
        body.append(f'<div class="notice">{_e(notice)}</div>')
    body.append(f'<p class="legend">Node colours:{legend}. A dashed box is one kernel; a thick border marks '
                "an output.</p>")
    if cap.programs:
        body.append('<h3>Programs</h3><table><tr><th>program</th><th>key</th><th>backend</th><th class=num>nodes'
                    "</th><th class=num>kernels</th><th class=num>calls</th><th class=num>hits</th>"
                    "<th class=num>compile s</th><th class=num>run ms (median)</th></tr>" + "".join(rows)
                    + "</table>")
    else:
        body.append('<p class="notice">Nothing was realized under capture.</p>')
    for r in cap.programs:
        body.append(_program(r, svgs.get(r.index), folders[r.index], notice is not None))
    body.append("</main>")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{_e(title)}</title><style>{_CSS}</style><script>{_JS}</script></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
