"""The results report: ``results/<profile>/index.html``, to browse without Jupyter.

``build_report(results_dir)`` writes one page that opens with a reproducibility summary (scope,
method, results, what was easy, what was hard) and holds every table of the results folder (the
reproduced numbers beside the paper's), every figure, the profile's caveat and the provenance,
and renders each executed notebook into ``html/NN_name.html``. Everything is a file next to the
page, linked relatively: it opens from the file system, with no server and no internet (no
script, style sheet or image is fetched from elsewhere), and it reads on a phone-width screen.

Run it on its own with ``python -m uniq.repro.report results/smoke``.
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
from jinja2 import Environment, PackageLoader
from markupsafe import Markup

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

# The pages are jinja2 templates in uniq/repro/templates/ (package data): the HTML and CSS
# read, edit
# and diff as what they are. Autoescape is on, so every value from a results folder (CSV cells,
# captions, provenance, error messages) is text, never markup; only HTML that this package or
# nbconvert built goes in, as ``Markup``.
PAGES = Environment(loader=PackageLoader("uniq.repro"), autoescape=True, trim_blocks=True,
                    keep_trailing_newline=True)


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


def _cell(value, column: str) -> tuple[str, str]:
    """A cell's text and its classes: paper columns shaded, numbers right-aligned, ``diff``
    coloured by sign."""
    value = value.item() if hasattr(value, "item") else value  # numpy scalars from object columns
    classes = ["paper"] if _paper_column(column) is not None else []
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
    return text, " ".join(classes)


def _table(path: Path) -> dict:
    """One CSV of the results folder with its ``# title`` and ``> note`` from the ``.md`` that
    ``study.save_table`` writes beside it."""
    md = path.with_suffix(".md")
    lines = md.read_text().splitlines() if md.exists() else []
    title = next((line[2:].strip() for line in lines if line.startswith("# ")), path.stem)
    note = next((line[2:].strip() for line in lines if line.startswith("> ")), None)
    df = beside_the_paper(pd.read_csv(path))
    rows = [[_cell(v, c) for v, c in zip(r, df.columns, strict=True)]
            for r in df.astype(object).itertuples(index=False)]
    return {"stem": path.stem, "title": title, "note": note, "md": md.exists(), "rows": rows,
            "head": [(str(c), _paper_column(c) is not None) for c in df.columns]}


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
    pygments_css = HtmlFormatter(style="default").get_style_defs(".highlight")
    page.write_text(PAGES.get_template("notebook.html").render(
        pygments=Markup(pygments_css), title=executed.stem, name=executed.name,
        body=Markup(_relink(body, page.parent, notebook_dir)),
        back=os.path.relpath(page.parent.parent / "index.html", page.parent).replace(os.sep, "/"),
        ipynb=os.path.relpath(executed, page.parent)))
    return page


# --- the report -----------------------------------------------------------------------------


def _provenance_rows(p: dict) -> list[tuple[str, str]]:
    git, device, versions = p.get("git", {}), p.get("device", {}), p.get("versions", {})
    rows = [
        ("profile", p.get("profile")), ("dataset", p.get("dataset")),
        ("git commit", f"{git.get('commit')}"
                       f"{' (with uncommitted changes)' if git.get('dirty') else ''}"),
        ("started", p.get("started")), ("finished", p.get("finished")),
        ("device", ", ".join(f"{k}: {v}" for k, v in device.items())),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
        ("command", p.get("command")),
    ]
    return [(k, str(v)) for k, v in rows if v not in (None, "")]


def build_report(results_dir: str | Path, notebook_dir: str | Path = NOTEBOOKS_DIR,
                 fidelity: str | Path = FIDELITY) -> Path:
    """Write ``index.html`` (and ``html/NN_name.html`` per executed notebook) into the results
    folder; returns the index page. It opens with the reproducibility summary
    (``uniq.repro.repro_summary``). Reads only what is in the folder and the fidelity page, so
    it also
    works on a folder copied from another machine."""
    out = Path(results_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"no results folder {out}; run `python -m uniq reproduce` first")
    provenance_path = out / "provenance.json"
    provenance = json.loads(provenance_path.read_text()) if provenance_path.exists() else {}
    profile = provenance.get("profile", out.name)

    executed = sorted(out.glob("[0-9][0-9]_*.ipynb"))
    statuses = provenance.get("notebooks", {})
    failures = {f["notebook"]: f for f in provenance.get("failures", [])}
    pages = set()
    render_error = None
    for nb in executed:
        try:
            render_notebook(nb, out / "html" / f"{nb.stem}.html", Path(notebook_dir))
            pages.add(nb.stem)
        except ImportError as err:  # nbconvert missing: the page still lists the notebooks
            render_error = (f"notebooks not rendered: {err} (pip install nbconvert, then "
                            f"python -m uniq.repro.report {out})")
            break

    # in the order the notebooks wrote them (a notebook's tables and figures follow its cells)
    results = sorted((p for p in [*out.glob("*.csv"), *out.glob("*.png")]),
                     key=lambda p: (p.stat().st_mtime, p.name))
    blocks: dict[str | None, list[dict]] = {}
    for path in results:
        number = next((n for n, _, prefixes in SECTIONS
                       if any(path.stem.startswith(p) for p in prefixes)), None)
        caption = FIGURE_CAPTIONS.get(path.stem, path.stem)
        blocks.setdefault(number, []).append(
            _table(path) if path.suffix == ".csv" else
            {"stem": path.stem, "name": path.name, "caption": caption})
    sections = [{"id": f"nb{number}", "heading": f"{number}. {title}", "blocks": blocks[number],
                 "page": next((nb.stem for nb in executed if nb.name.startswith(number)
                               and nb.stem in pages), None)}
                for number, title, _ in SECTIONS if blocks.get(number)]
    if blocks.get(None):
        sections.append({"id": "other", "heading": "Other results", "blocks": blocks[None]})

    # first, the reproducibility summary (also as Markdown, to quote elsewhere)
    (out / "reproducibility_summary.md").write_text(summary_markdown(out, fidelity))
    summary = Markup(summary_html(out, fidelity).replace(
        "</h2>", ' <a class="note" href="reproducibility_summary.md">(md)</a></h2>', 1))
    notebooks = [{"name": nb.name, "stem": nb.stem, "page": nb.stem in pages,
                  "failed": not statuses.get(nb.name, {}).get("ok", True) or nb.name in failures,
                  "seconds": statuses.get(nb.name, {}).get("seconds")} for nb in executed]
    index = out / "index.html"
    index.write_text(PAGES.get_template("index.html").render(
        title=f"UniQ reproduction: {profile}", profile=profile,
        caveat=provenance.get("caveat"), comparable=provenance.get("comparable_to_paper"),
        summary=summary, sections=sections, notebooks=notebooks, render_error=render_error,
        failures=list(failures.values()), provenance=_provenance_rows(provenance),
        full=json.dumps(provenance, indent=2, default=str)))
    return index


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m uniq.repro.report RESULTS_DIR", file=sys.stderr)
        return 2
    try:
        print(build_report(args[0]))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
