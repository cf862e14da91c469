"""The paper's printed numbers (``data/paper_tables.csv``), their lookup, and the ``diff``
column every reproduced table carries; Tables 2 and 3 assembled from finished ImageNet runs."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd

from .paths import REPO, resolve_path

PAPER_CSV = REPO / "data" / "paper_tables.csv"
REPORTED = ("top1_final", "top1_best")
"""Which accuracy a table's ``diff`` compares with the paper: the last epoch's (default; the
paper does not say) or the best epoch's (what the authors' code keeps)."""


@functools.cache
def _read() -> pd.DataFrame:
    if not PAPER_CSV.exists():
        raise FileNotFoundError(
            f"{PAPER_CSV} is missing; uniq reads the paper's numbers from the repository's "
            "data/ folder, so install it from a clone with `pip install -e .`")
    return pd.read_csv(PAPER_CSV)


def paper_tables() -> pd.DataFrame:
    """The paper's numbers as a DataFrame (a copy: callers may change it)."""
    return _read().copy()


def paper_value(table: int, method: str, bits: int, model: str | None = None) -> float:
    """One printed number (NaN where the paper has none, e.g. LSQ at 1 bit)."""
    p = _read()
    hit = p[(p.table == table) & (p.method == method) & (p.weight_bits == bits)]
    if model is not None:
        hit = hit[hit.model == model]
    return float(hit.value.iloc[0]) if len(hit) else float("nan")


def check_reported(reported: str) -> str:
    if reported not in REPORTED:
        raise ValueError(f"reported accuracy must be one of {REPORTED}, got {reported!r}")
    return reported


def with_diff(df: pd.DataFrame, reported: str = "top1_final") -> pd.DataFrame:
    """Add ``diff`` = reproduced - paper, from the ``reported`` column, and say which."""
    df = df.copy()
    df["diff"] = (df[check_reported(reported)] - df.paper_top1).round(2)
    df["diff_uses"] = reported
    return df


def imagenet_results(runs_dir: str | Path = "runs") -> pd.DataFrame:
    """Every finished ImageNet run under ``<runs_dir>/imagenet``, one row each."""
    from .imagenet import PAPER_NAMES

    rows = []
    for path in sorted(resolve_path(runs_dir).glob("imagenet/*/result.json")):
        r = json.loads(path.read_text())
        cfg = json.loads((path.parent / "config.json").read_text())["config"]
        rows.append({"model": PAPER_NAMES.get(cfg["arch"], cfg["arch"]),
                     "method": "fp" if r["bits"] == 32 else
                     {"uniq": "UniQ", "lsq": "LSQ"}[r["method"]],
                     "bits": r["bits"], "top1_final": r["top1_final"],
                     "top1_best": r["top1_best"], "epochs": r["epochs"],
                     "precision": r.get("precision", "fp32"), "run": r["run"]})
    cols = ["model", "method", "bits", "top1_final", "top1_best", "epochs", "precision", "run"]
    return pd.DataFrame(rows, columns=cols)


def _comparable(runs_dir: str | Path, run: str) -> bool:
    """``uniq.comparable``'s verdict on one ImageNet run (the rule of every table and claim)."""
    from .comparable import comparable_to_paper
    from .engine import Run

    return comparable_to_paper([Run.load(resolve_path(runs_dir) / "imagenet" / run).config])[0]


def imagenet_tables(runs_dir: str | Path = "runs", reported: str = "top1_final"
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables 2 and 3: the paper's numbers with reproduced top-1 where a run exists."""
    done = imagenet_results(runs_dir)
    out = []
    for table in (2, 3):
        p = _read()
        t = p[p.table == table].rename(columns={"value": "paper_top1", "weight_bits": "bits"})
        t = t[["model", "method", "bits", "act_bits", "paper_top1", "note"]].copy()
        for col in REPORTED:
            t[col] = float("nan")
        t["run"] = ""
        t["comparable_to_paper"] = None
        for i, r in t.iterrows():
            hit = done[(done.model == r.model) & (done.method == r.method) & (done.bits == r.bits)]
            if len(hit):
                for col in REPORTED:
                    t.loc[i, col] = float(hit[col].iloc[-1])
                t.loc[i, "run"] = hit.run.iloc[-1]
                t.loc[i, "comparable_to_paper"] = _comparable(runs_dir, hit.run.iloc[-1])
        t = with_diff(t, reported)
        t["top1"] = t[reported]
        t["dataset"] = "imagenet"
        out.append(t.reset_index(drop=True))
    return out[0], out[1]
