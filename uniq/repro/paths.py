"""One rule for every relative path (runs, data, results), used by the CLI, the notebooks and
the runner alike: a relative path is taken from the project root, wherever the command starts.

The project root is ``$UNIQ_ROOT`` when set; otherwise the checkout this package lives in (the
folder with ``pyproject.toml`` above ``uniq/``, two levels above this file); otherwise (an
installed package) the current
directory. Absolute paths are used as given.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def project_root() -> Path:
    if os.environ.get("UNIQ_ROOT"):
        return Path(os.environ["UNIQ_ROOT"]).expanduser().resolve()
    if (REPO / "pyproject.toml").exists() and (REPO / "uniq").is_dir():
        return REPO
    return Path.cwd()


def resolve_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p
