"""Where a command may write: checked before any work starts, so that no flag overwrites a
file it was not asked about.

* A run directory belongs to its run (``uniq.runs``): nothing else writes into it.
* A results folder (``provenance.json``, ``notebooks.json`` or executed notebooks) belongs to
  ``reproduce`` and the report: its tables, figures, notebooks and pages are not another
  command's output file.
* A notebook (``NN_name.ipynb``) is never an output file.
* An existing file of another kind is overwritten only with ``--force``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

# what makes a folder a run directory (``uniq.runs``) or a results folder (``uniq.reproduce``)
RUN_FILES = ("result.json", "checkpoint.pt", "model.pt")
RESULTS_MARKERS = ("provenance.json", "notebooks.json")
RESULTS_PAGES = ("index.html", "reproducibility_summary.md")
RESULTS_SUFFIXES = (".csv", ".md", ".png", ".ipynb", ".html")  # what the report shows
NOTEBOOK = re.compile(r"^\d\d_.*\.ipynb$")


def _run_config(folder: Path) -> bool:
    """``config.json`` as the engine writes it (its config and key)."""
    try:
        saved = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and "config" in saved and "key" in saved


def is_run_dir(folder: Path) -> bool:
    """A run directory: the engine's ``config.json``, or a config with a checkpoint, weights
    or result beside it (a hand-edited or torn config still marks a run)."""
    if not folder.is_dir() or not (folder / "config.json").is_file():
        return False
    return _run_config(folder) or any((folder / name).exists() for name in RUN_FILES)


def executed_notebook(path: Path) -> bool:
    """A notebook that papermill executed (``reproduce`` writes these into a results folder)."""
    try:
        book = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(book, dict) and "papermill" in (book.get("metadata") or {})


def is_results_folder(folder: Path) -> bool:
    """A folder ``reproduce`` wrote: provenance, the notebooks' record, or executed notebooks."""
    if not folder.is_dir():
        return False
    return (any((folder / name).is_file() for name in RESULTS_MARKERS)
            or any(executed_notebook(p) for p in folder.glob("[0-9][0-9]_*.ipynb")))


def run_dir_of(path: Path) -> Path | None:
    """The run directory that holds ``path`` (or is it), else None."""
    path = Path(path).resolve()
    return next((p for p in (path, *path.parents) if is_run_dir(p)), None)


def results_file(path: Path) -> Path | None:
    """The results folder whose own file (table, figure, notebook, page, record) ``path`` is,
    else None."""
    path = Path(path).resolve()
    folder = path.parent
    if folder.name == "html" and path.suffix == ".html" and is_results_folder(folder.parent):
        return folder.parent
    if is_results_folder(folder) and (path.suffix in RESULTS_SUFFIXES
                                      or path.name in RESULTS_MARKERS + RESULTS_PAGES):
        return folder
    return None


def check_output(path: str | Path, flag: str, force: bool = False,
                 same_kind: Callable[[Path], bool] | None = None, kind: str = "file") -> Path:
    """``path`` if a command may write its output there, else ``ValueError`` with one line
    that says why and what to do. ``same_kind`` says whether an existing file is this
    command's own kind of output (overwritten without ``--force``)."""
    out = Path(path)
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"{flag} {out}: {blocking} is a file, not a folder; choose an output "
                         "path inside a folder")
    if out.is_dir():
        raise ValueError(f"{flag} {out} is a folder; give a file name, e.g. "
                         f"{out / ('output' + (out.suffix or ''))}")
    run = run_dir_of(out)
    if run is not None:
        raise ValueError(f"{flag} {out} is inside the run directory {run}, whose files belong "
                         "to the run; write the output somewhere else")
    if NOTEBOOK.match(out.name) or out.suffix == ".ipynb":
        raise ValueError(f"{flag} {out} names a notebook; give another file name")
    results = results_file(out)
    if results is not None:
        raise ValueError(f"{flag} {out} would replace a file of the results folder {results} "
                         "(written by `python -m uniq reproduce`); give another file name")
    if out.exists() and not force and not (same_kind is not None and same_kind(out)):
        raise ValueError(f"{flag} {out} exists and is not a {kind}; give another file name, or "
                         "pass --force to replace it")
    return out
