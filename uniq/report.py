"""The results report: ``results/<profile>/index.html``, to browse without Jupyter.

``build_report(results_dir)`` writes one page that opens with a reproducibility summary (scope,
method, results, what was easy, what was hard) and holds every table of the results folder (the
reproduced numbers beside the paper's), every figure, the profile's caveat and the provenance,
and renders each executed notebook into ``html/NN_name.html``. Everything is a file next to the
page, linked relatively: it opens from the file system, with no server and no internet (no
script, style sheet or image is fetched from elsewhere), and it reads on a phone-width screen.

Run it on its own with ``python -m uniq.report results/smoke``.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import re
import sys
from pathlib import Path

import pandas as pd

from .paths import REPO
from .repro_summary import FIDELITY, summary_html, summary_markdown

NOTEBOOKS_DIR = REPO / "notebooks"

# Which notebook writes which file (a name starts with one of these), in the notebooks' order:
# the report puts each table and figure under the notebook that made it.
SECTIONS = (
    ("01", "Quantizers", ("quantizers_",)),
    ("02", "MSE-optimal step initialisation (Table 1)", ("table1", "mse_")),
    ("03", "The full-precision starting point", ("fp_", "data_")),
    ("04", "LSQ vs UniQ (Table 4, Figure 3)", ("table4", "figure3")),
    ("05", "Step-size initialisation (Table 5)", ("table5",)),
    ("06", "1-bit schedules and training dynamics (Table 6, Figure 4)", ("table6", "figure4")),
    ("07", "ImageNet (Tables 2 and 3)", ("table2", "table3", "imagenet_")),
    ("08", "Summary (Figure 1)", ("summary", "figure1")),
)

FIGURE_CAPTIONS = {
    "quantizers_transfer": "Input-output curves of the three 2-bit weight quantizers.",
    "quantizers_binary_activation": "Binary as the symmetric quantizer with N = 2; the "
                                    "activation quantizer (Eq. 5).",
    "quantizers_step_gradient": "The gradient of Eq. 3 with respect to the step (Eq. 6).",
    "mse_distortion_curves": "Quantization MSE against the step for a unit Gaussian "
                             "(weights) and a rectified Gaussian (activations); dots: optima.",
    "data_samples": "Test images of the first classes, as stored (before augmentation).",
    "fp_training": "Loss and top-1 of the full-precision run every quantized run starts from.",
    "figure3": "Figure 3: trained 2-bit weights of two layers, LSQ vs UniQ, with each "
               "method's reconstruction levels.",
    "figure4": "Figure 4: step size, input standard deviation and SQNR of one activation "
               "quantizer during training, in four runs.",
    "figure1": "Figure 1 style: ImageNet ResNet-18 top-1 against bit width (the paper's "
               "numbers, and reproduced UniQ points if any).",
}

STYLE = """
:root { color-scheme: light; --fg: #1d1d1f; --muted: #5f6368; --line: #d0d4d9;
        --paper: #fff4d6; --warn: #fdecea; --ok: #e6f4ea; }
* { box-sizing: border-box; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       max-width: 62rem; margin: 0 auto; padding: 0.75rem; }
h1 { font-size: 1.5rem; line-height: 1.25; } h2 { font-size: 1.25rem; margin-top: 2rem;
  border-bottom: 1px solid var(--line); } h3 { font-size: 1.05rem; }
a { color: #1a5fb4; }
.caveat { background: var(--warn); border-left: 4px solid #c5221f; padding: 0.5rem 0.75rem; }
.caveat.comparable { background: var(--ok); border-left-color: #188038; }
.note { color: var(--muted); font-size: 0.9rem; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.25rem 0 0.5rem; }
th, td { border: 1px solid var(--line); padding: 0.2rem 0.45rem; white-space: nowrap; }
th { background: #f1f3f4; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th.paper, td.paper { background: var(--paper); }
td.neg { color: #b3261e; } td.pos { color: #137333; }
img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figure { margin: 1rem 0; } figcaption { font-size: 0.9rem; color: var(--muted); }
pre { overflow-x: auto; background: #f6f8fa; padding: 0.5rem; font-size: 0.8rem; }
nav ul { padding-left: 1.2rem; } .failed { color: #b3261e; font-weight: 600; }
"""

NOTEBOOK_STYLE = STYLE + """
body { max-width: 56rem; }
.prompt { display: none; }
.cell { margin: 0.6rem 0; }
.input_area { background: #f6f8fa; border: 1px solid var(--line); border-radius: 4px; }
.input_area pre { background: none; margin: 0; }
.output_area pre { background: none; padding: 0.25rem 0.5rem; margin: 0; }
.output_stderr { background: var(--warn); }
.output_subarea, .rendered_html { overflow-x: auto; max-width: 100%; }
.output_html table { font-size: 0.8rem; }
.anchor-link { display: none; }
.ansi-red-fg { color: #b3261e; } .ansi-green-fg { color: #137333; }
.ansi-cyan-fg { color: #007b83; } .ansi-blue-fg { color: #1a5fb4; }
.ansi-yellow-fg { color: #8a6d00; } .ansi-bold { font-weight: bold; }
"""


def _page(title: str, body: str, style: str = STYLE) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{style}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


# --- tables ---------------------------------------------------------------------------------


def _paper_column(column: str) -> str | None:
    """The reproduced column a paper column belongs to (``paper_top1`` -> ``top1``,
    ``step_w_paper`` -> ``step_w``, ``paper`` -> ``value``), else None."""
    if column == "paper":
        return "value"
    if column.startswith("paper_"):
        return column[len("paper_"):]
    if column.endswith("_paper"):
        return column[: -len("_paper")]
    return None


def beside_the_paper(df: pd.DataFrame) -> pd.DataFrame:
    """The same table with every paper column moved right after the column it is compared
    with, and ``diff`` right after that, so a reader sees reproduced, paper, difference."""
    columns = [c for c in df.columns if _paper_column(c) is None and c != "diff"]
    for paper in (c for c in df.columns if _paper_column(c) is not None):
        own = _paper_column(paper)
        at = columns.index(own) + 1 if own in columns else len(columns)
        columns.insert(at, paper)
        if own in ("top1", "value") and "diff" in df.columns:
            columns.insert(at + 1, "diff")
    columns += [c for c in df.columns if c not in columns]
    return df[columns]


def _cell(value, column: str) -> str:
    classes = []
    if _paper_column(column) is not None:
        classes.append("paper")
    if isinstance(value, bool) or value is None:
        text = "" if value is None else str(value)
    elif isinstance(value, int | float):
        classes.append("num")
        if isinstance(value, float) and math.isnan(value):
            text = "–"
        else:
            text = f"{value:g}" if isinstance(value, float) else str(value)
            if column == "diff" and value:
                classes.append("neg" if value < 0 else "pos")
    else:
        text = str(value)
    attr = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{attr}>{html.escape(text)}</td>"


def table_html(df: pd.DataFrame) -> str:
    """A plain HTML table (paper columns shaded), wrapped to scroll sideways on a phone."""
    df = beside_the_paper(df)
    head = "".join(f'<th{" class=paper" if _paper_column(c) is not None else ""}>'
                   f"{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for record in df.astype(object).itertuples(index=False):
        rows.append("<tr>" + "".join(_cell(_plain(v), c) for v, c in zip(record, df.columns,
                                                                            strict=True))
                    + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _plain(value):
    """numpy scalars as Python ones (pandas hands them out from object columns)."""
    return value.item() if hasattr(value, "item") else value


def _markdown_title_and_note(md: Path) -> tuple[str | None, str | None]:
    """The ``# title`` and ``> note`` lines that ``experiments.save_table`` writes."""
    if not md.exists():
        return None, None
    title = note = None
    for line in md.read_text().splitlines():
        if title is None and line.startswith("# "):
            title = line[2:].strip()
        elif note is None and line.startswith("> "):
            note = line[2:].strip()
    return title, note


# --- notebooks ------------------------------------------------------------------------------


def _relink(body: str, page_dir: Path, notebook_dir: Path) -> str:
    """Relative links in a notebook's Markdown point from ``notebooks/``; rewrite the ones that
    resolve there so that they resolve from the rendered page's folder instead."""

    def fix(match: re.Match) -> str:
        attr, target = match.group(1), html.unescape(match.group(2))
        path, _, fragment = target.partition("#")
        if not path or re.match(r"^[a-z][a-z0-9+.-]*:", path) or path.startswith("/"):
            return match.group(0)
        if (page_dir / path).exists() or not (notebook_dir / path).exists():
            return match.group(0)
        fixed = os.path.relpath(notebook_dir / path, page_dir).replace(os.sep, "/")
        fixed += f"#{fragment}" if fragment else ""
        return f'{attr}="{html.escape(fixed)}"'

    return re.sub(r'(href|src)="([^"]*)"', fix, body)


def render_notebook(executed: Path, page: Path, notebook_dir: Path = NOTEBOOKS_DIR) -> Path:
    """Render one executed notebook as a self-contained HTML page (images inline)."""
    import nbformat
    from nbconvert import HTMLExporter
    from pygments.formatters import HtmlFormatter

    book = nbformat.read(executed, as_version=4)
    # the 'basic' template is the body only: no require.js, MathJax or CDN style sheets
    exporter = HTMLExporter(template_name="basic", embed_images=True)
    exporter.log.setLevel(logging.ERROR)  # not "alternative text is missing" once per figure
    body, _ = exporter.from_notebook_node(book)
    page.parent.mkdir(parents=True, exist_ok=True)
    body = _relink(body, page.parent, notebook_dir)
    back = os.path.relpath(page.parent.parent / "index.html", page.parent).replace(os.sep, "/")
    header = (f'<p><a href="{back}">&larr; results report</a> · '
              f'<a href="{html.escape(os.path.relpath(executed, page.parent))}">'
              f"{html.escape(executed.name)}</a> (the executed notebook)</p>")
    pygments_css = HtmlFormatter(style="default").get_style_defs(".highlight")
    page.write_text(_page(executed.stem, header + body, NOTEBOOK_STYLE + pygments_css))
    return page


# --- the report -----------------------------------------------------------------------------


def _section_of(stem: str) -> str | None:
    for number, _, prefixes in SECTIONS:
        if any(stem.startswith(p) for p in prefixes):
            return number
    return None


def _provenance_html(p: dict) -> str:
    git = p.get("git", {})
    device = p.get("device", {})
    versions = p.get("versions", {})
    rows = [
        ("profile", p.get("profile")), ("dataset", p.get("dataset")),
        ("git commit", f"{git.get('commit')}"
                       f"{' (with uncommitted changes)' if git.get('dirty') else ''}"),
        ("started", p.get("started")), ("finished", p.get("finished")),
        ("device", ", ".join(f"{k}: {v}" for k, v in device.items())),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
        ("command", p.get("command")),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows if v not in (None, ""))
    full = html.escape(json.dumps(p, indent=2, default=str))
    return (f'<div class="scroll"><table>{body}</table></div>'
            f'<details><summary>everything in <a href="provenance.json">provenance.json</a>'
            f"</summary><pre>{full}</pre></details>")


def build_report(results_dir: str | Path, notebook_dir: str | Path = NOTEBOOKS_DIR,
                 fidelity: str | Path = FIDELITY) -> Path:
    """Write ``index.html`` (and ``html/NN_name.html`` per executed notebook) into the results
    folder; returns the index page. It opens with the reproducibility summary
    (``uniq.repro_summary``). Reads only what is in the folder and the fidelity page, so it also
    works on a folder copied from another machine."""
    out = Path(results_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"no results folder {out}; run `python -m uniq reproduce` first")
    provenance_path = out / "provenance.json"
    provenance = json.loads(provenance_path.read_text()) if provenance_path.exists() else {}
    profile = provenance.get("profile", out.name)
    caveat = provenance.get("caveat")
    comparable = bool(provenance.get("comparable_to_paper"))

    executed = sorted(out.glob("[0-9][0-9]_*.ipynb"))
    statuses = provenance.get("notebooks", {})
    failures = {f["notebook"]: f for f in provenance.get("failures", [])}
    pages = {}
    render_error = None
    for nb in executed:
        try:
            pages[nb.name] = render_notebook(nb, out / "html" / f"{nb.stem}.html",
                                             Path(notebook_dir))
        except ImportError as err:  # nbconvert missing: the page still lists the notebooks
            render_error = (f"notebooks not rendered: {err} (pip install nbconvert, then "
                            f"python -m uniq.report {out})")
            break

    # in the order the notebooks wrote them (a notebook's tables and figures follow its cells)
    results = sorted((p for p in [*out.glob("*.csv"), *out.glob("*.png")]),
                     key=lambda p: (p.stat().st_mtime, p.name))
    by_section: dict[str | None, list[str]] = {}
    for path in results:
        block = _table_block(path) if path.suffix == ".csv" else _figure_block(path)
        by_section.setdefault(_section_of(path.stem), []).append(block)

    parts = [f"<h1>UniQ reproduction: the <code>{html.escape(profile)}</code> profile</h1>"]
    if caveat:
        parts.append(f'<p class="caveat{" comparable" if comparable else ""}">'
                     f"{html.escape(caveat)}</p>")
    # first, the reproducibility summary (also as Markdown, to quote elsewhere)
    (out / "reproducibility_summary.md").write_text(summary_markdown(out, fidelity))
    parts.append(summary_html(out, fidelity).replace(
        "</h2>", ' <a class="note" href="reproducibility_summary.md">(md)</a></h2>', 1))
    parts.append('<p class="note">Every table shows the reproduced numbers with the paper\'s '
                 "beside them (shaded columns) and the difference; each heading links to the "
                 "CSV. The notebooks explain how to read each table and figure.</p>")
    nav = ['<nav><h2 id="contents">Contents</h2><ul>'
           '<li><a href="#reproducibility-summary">Reproducibility summary</a></li>']
    for number, title, _ in SECTIONS:
        if by_section.get(number):
            nav.append(f'<li><a href="#nb{number}">{number}. {html.escape(title)}</a></li>')
    if by_section.get(None):
        nav.append('<li><a href="#other">Other results</a></li>')
    nav.append('<li><a href="#notebooks">Executed notebooks</a></li>'
               '<li><a href="#provenance">Provenance</a></li></ul></nav>')
    parts.append("".join(nav))

    parts.append('<h2 id="notebooks">Executed notebooks</h2><ul>')
    for nb in executed:
        state = statuses.get(nb.name, {})
        failed = not state.get("ok", True) or nb.name in failures
        label = ('<span class="failed">failed</span>' if failed
                 else f"{state['seconds']} s" if "seconds" in state else "")
        link = (f'<a href="html/{html.escape(nb.stem)}.html">{html.escape(nb.stem)}</a>'
                if nb.name in pages else html.escape(nb.stem))
        parts.append(f"<li>{link} ({label}) · <a href=\"{html.escape(nb.name)}\">.ipynb</a>"
                     "</li>" if label else
                     f"<li>{link} · <a href=\"{html.escape(nb.name)}\">.ipynb</a></li>")
    parts.append("</ul>")
    if render_error:
        parts.append(f'<p class="failed">{html.escape(render_error)}</p>')
    for f in failures.values():
        parts.append(f'<p class="failed">{html.escape(f["notebook"])} failed at cell '
                     f'{f.get("cell_index")} ({html.escape(str(f.get("first_line", "")))}): '
                     f'{html.escape(str(f.get("error")))}</p>')

    for number, title, _ in SECTIONS:
        blocks = by_section.get(number)
        if not blocks:
            continue
        stem = next((nb.stem for nb in executed if nb.name.startswith(number)), None)
        link = (f' <a class="note" href="html/{html.escape(stem)}.html">(notebook)</a>'
                if stem and f"{stem}.ipynb" in pages else "")
        parts.append(f'<h2 id="nb{number}">{number}. {html.escape(title)}{link}</h2>')
        parts.extend(blocks)
    if by_section.get(None):
        parts.append('<h2 id="other">Other results</h2>')
        parts.extend(by_section[None])

    parts.append('<h2 id="provenance">Provenance</h2>')
    parts.append(_provenance_html(provenance) if provenance else
                 '<p class="note">no provenance.json in this folder</p>')
    index = out / "index.html"
    index.write_text(_page(f"UniQ reproduction: {profile}", "\n".join(parts)))
    return index


def _table_block(path: Path) -> str:
    title, note = _markdown_title_and_note(path.with_suffix(".md"))
    df = pd.read_csv(path)
    md = path.with_suffix(".md")
    links = f'<a href="{html.escape(path.name)}">csv</a>'
    if md.exists():
        links += f' · <a href="{html.escape(md.name)}">md</a>'
    return (f'<h3 id="{html.escape(path.stem)}">{html.escape(title or path.stem)} '
            f'<span class="note">({links})</span></h3>'
            + (f'<p class="note">{html.escape(note)}</p>' if note else "") + table_html(df))


def _figure_block(path: Path) -> str:
    caption = FIGURE_CAPTIONS.get(path.stem, path.stem)
    return (f'<figure id="{html.escape(path.stem)}"><a href="{html.escape(path.name)}">'
            f'<img src="{html.escape(path.name)}" alt="{html.escape(caption)}" '
            f'loading="lazy"></a><figcaption>{html.escape(caption)} '
            f"({html.escape(path.name)})</figcaption></figure>")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m uniq.report RESULTS_DIR", file=sys.stderr)
        return 2
    try:
        print(build_report(args[0]))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
