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
from urllib.parse import quote, unquote, urlsplit

import pandas as pd
from jinja2 import Environment, PackageLoader
from markupsafe import Markup

from .outputs import is_results_folder
from .paths import REPO
from .repro_summary import FIDELITY, summary_html, summary_markdown
from .runs import CorruptFile, read_json, write_text_atomic

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
# A file of the results folder as a link, percent-encoded (":" too), so that no file name (say
# ``javascript:x.png``) reads as a URL scheme.
PAGES.filters["file_url"] = lambda name, folder="": folder + quote(str(name), safe="/")

# Every page says what it may load (the template's Content-Security-Policy meta tag): no script
# at all, styles only from the page itself, images only from its folder or inline data; nothing
# remote.
CSP = ("default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")
PAGES.globals["csp"] = CSP


# --- sanitising a rendered notebook -----------------------------------------------------------

# What a notebook page may hold (an allow-list, applied by ``bleach``): text structure, tables,
# code as pygments marks it up and images; no script, style, form, frame, object or event
# attribute. Links go to files of the results folder or of the project the notebooks come from
# (their links to docs/), images only to files of the results folder or to inline raster data.
SAFE_TAGS = frozenset({
    "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "col", "colgroup", "dd",
    "del", "details", "dfn", "div", "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3",
    "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s",
    "samp", "small", "span", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot",
    "th", "thead", "tr", "u", "ul", "var"})
SAFE_ATTRIBUTES = frozenset({"class", "id", "title", "lang", "dir", "alt", "width", "height",
                             "colspan", "rowspan", "scope", "align", "start", "span", "open"})
# elements dropped with their content before sanitising (their text means nothing on the page)
DROPPED_ELEMENTS = ("script", "style", "noscript", "template", "iframe", "object", "embed")
DATA_IMAGE = re.compile(r"^data:image/(png|jpeg|gif|webp|svg\+xml);base64,[A-Za-z0-9+/=\s]*$")


def _inside(target: Path, roots: list[Path]) -> bool:
    target = target.resolve()
    return any(target == root or root in target.parents for root in roots)


def _relative_target(value: str, page_dir: Path, roots: list[Path]) -> bool:
    """A relative URL (no scheme, host or absolute path) whose file is inside ``roots``."""
    url = urlsplit(value)
    if url.scheme or url.netloc or value.startswith(("/", "\\")) or "\\" in value:
        return False
    if not url.path:
        return True  # "#anchor" or "?x" within the page
    return _inside(page_dir / unquote(url.path), roots)


def sanitise(body: str, page_dir: Path, results_dir: Path, project_dir: Path) -> str:
    """A rendered notebook's HTML with only what ``SAFE_TAGS``/``SAFE_ATTRIBUTES`` allow, links
    only to files of the results folder or of the project, images only to files of the results
    folder or inline raster data."""
    import bleach
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(body, "html.parser")
    for element in soup.find_all(DROPPED_ELEMENTS):
        element.decompose()
    results = [results_dir.resolve()]
    links = [*results, project_dir.resolve()]

    def allowed(tag: str, name: str, value: str) -> bool:
        if tag == "a" and name == "href":
            return _relative_target(value, page_dir, links)
        if tag == "img" and name == "src":
            return bool(DATA_IMAGE.match(value)) or _relative_target(value, page_dir, results)
        return name in SAFE_ATTRIBUTES

    # bleach lets a URL without a scheme through only when "http" is allowed; ``allowed``
    # refuses every URL with a scheme but an inline image's data:
    cleaner = bleach.Cleaner(tags=SAFE_TAGS, attributes=allowed, protocols=["data", "http"],
                             strip=True, strip_comments=True)
    return cleaner.clean(str(soup))


# --- tables ---------------------------------------------------------------------------------


def unreadable(path: Path, err: BaseException, what: str) -> ValueError:
    """The one-line error for a results file that cannot be read."""
    detail = " ".join(str(err).split())[:160]
    return ValueError(f"{path} cannot be read as {what} ({type(err).__name__}: {detail}); "
                      "rerun the notebook that writes it (python -m uniq reproduce), or remove "
                      "it from the results folder")


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
    try:
        lines = md.read_text().splitlines() if md.exists() else []
    except ValueError as err:  # not text (UnicodeDecodeError)
        raise unreadable(md, err, "text") from None
    try:
        df = beside_the_paper(pd.read_csv(path))
    except ValueError as err:  # binary (UnicodeDecodeError), empty or malformed
        raise unreadable(path, err, "a table") from None
    title = next((line[2:].strip() for line in lines if line.startswith("# ")), path.stem)
    note = next((line[2:].strip() for line in lines if line.startswith("> ")), None)
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
    text = notebook_page(executed, page, notebook_dir)
    page.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(text, page)
    return page


def notebook_page(executed: Path, page: Path, notebook_dir: Path = NOTEBOOKS_DIR) -> str:
    """The HTML of ``page``, one executed notebook rendered and sanitised (images inline)."""
    import nbformat
    from nbconvert import HTMLExporter
    from pygments.formatters import HtmlFormatter

    try:
        book = nbformat.read(executed, as_version=4)
    except (ValueError, AttributeError, KeyError, TypeError) as err:  # not JSON, not a notebook
        raise unreadable(executed, err, "a notebook") from None
    # the 'basic' template is the body only: no require.js, MathJax or CDN style sheets
    exporter = HTMLExporter(template_name="basic", embed_images=True)
    exporter.log.setLevel(logging.ERROR)  # not "alternative text is missing" once per figure
    try:
        body, _ = exporter.from_notebook_node(book)
    except (ValueError, AttributeError, KeyError, TypeError) as err:  # a malformed cell
        raise unreadable(executed, err, "a notebook") from None
    body = sanitise(_relink(body, page.parent, notebook_dir), page.parent, executed.parent,
                    notebook_dir.parent)
    pygments_css = HtmlFormatter(style="default").get_style_defs(".highlight")
    return PAGES.get_template("notebook.html").render(
        pygments=Markup(pygments_css), title=executed.stem, name=executed.name,
        body=Markup(body),
        back=os.path.relpath(page.parent.parent / "index.html", page.parent).replace(os.sep, "/"),
        ipynb=os.path.relpath(executed, page.parent).replace(os.sep, "/"))


# --- the report -----------------------------------------------------------------------------


def _mapping(value) -> dict:
    """A part of provenance.json that should be an object, as one (a hand-edited or foreign
    file may hold anything there)."""
    return value if isinstance(value, dict) else {}


def _provenance_rows(p: dict) -> list[tuple[str, str]]:
    git, device, versions = (_mapping(p.get(k)) for k in ("git", "device", "versions"))
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
    if not is_results_folder(out):
        raise ValueError(f"{out} is not a results folder (no provenance.json, notebooks.json or "
                         "executed notebooks), so no report is written into it; give the folder "
                         "that `python -m uniq reproduce` wrote, e.g. results/smoke")
    provenance_path = out / "provenance.json"
    provenance = (read_json(provenance_path, remedy="rerun `python -m uniq reproduce` to "
                            "write it again, or delete it") if provenance_path.exists() else {})
    if not isinstance(provenance, dict):
        raise CorruptFile(f"{provenance_path} holds a JSON {type(provenance).__name__}, not the "
                          "object `python -m uniq reproduce` writes; rerun it to write the file "
                          "again, or delete it")
    profile = provenance.get("profile", out.name)

    executed = sorted(out.glob("[0-9][0-9]_*.ipynb"))
    statuses = _mapping(provenance.get("notebooks"))
    failures = {f["notebook"]: f for f in provenance.get("failures") or []
                if isinstance(f, dict) and "notebook" in f}
    # Every page is made first and written last: a results file that cannot be read stops the
    # report before it has changed anything in the folder.
    written: dict[Path, str] = {}
    pages = set()
    render_error = None
    for nb in executed:
        try:
            page = out / "html" / f"{nb.stem}.html"
            written[page] = notebook_page(nb, page, Path(notebook_dir))
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
    try:
        markdown, summary_page = summary_markdown(out, fidelity), summary_html(out, fidelity)
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        missing = f"lacks the column {err}" if isinstance(err, KeyError) else f"{err}"
        raise ValueError(f"the reproducibility summary cannot be made from {out}: a results "
                         f"file (claims.csv, table4_seeds.csv, table1.csv or provenance.json) "
                         f"{missing}; rerun the notebook that writes it (python -m uniq "
                         "reproduce)") from None
    written[out / "reproducibility_summary.md"] = markdown
    summary = Markup(summary_page.replace(
        "</h2>", ' <a class="note" href="reproducibility_summary.md">(md)</a></h2>', 1))
    notebooks = [{"name": nb.name, "stem": nb.stem, "page": nb.stem in pages,
                  "failed": not _mapping(statuses.get(nb.name)).get("ok", True)
                  or nb.name in failures,
                  "seconds": _mapping(statuses.get(nb.name)).get("seconds")} for nb in executed]
    index = out / "index.html"
    written[index] = PAGES.get_template("index.html").render(
        title=f"UniQ reproduction: {profile}", profile=profile,
        caveat=provenance.get("caveat"), comparable=provenance.get("comparable_to_paper"),
        summary=summary, sections=sections, notebooks=notebooks, render_error=render_error,
        failures=list(failures.values()), provenance=_provenance_rows(provenance),
        full=json.dumps(provenance, indent=2, default=str))
    for path, text in written.items():
        path.parent.mkdir(exist_ok=True)
        write_text_atomic(text, path)
    return index


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m uniq.repro.report RESULTS_DIR", file=sys.stderr)
        return 2
    try:
        print(build_report(args[0]))
    except (ValueError, FileNotFoundError, CorruptFile) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:  # an unwritable folder, a file where a folder should be, ...
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot write or read{where}: {err.strerror or err}; make the results "
              "folder writable, or copy it somewhere writable and report on the copy",
              file=sys.stderr)
        return 2
    except (KeyError, TypeError, AttributeError) as err:  # a results file of another shape
        print(f"error: a file in {args[0]} does not have the shape `python -m uniq reproduce` "
              f"writes ({type(err).__name__}: {' '.join(str(err).split())[:160]}); rerun it to "
              "write the folder again", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
