"""The paper's printed numbers (``data/paper_tables.csv``), their lookup, the ``diff``
column every reproduced table carries, and Table 1 computed beside the printed one."""

from __future__ import annotations

import functools

import pandas as pd

from .. import mse
from .paths import REPO

PAPER_CSV = REPO / "data" / "paper_tables.csv"
PAPER_NAMES = {"preresnet18": "resnet18", "preresnet34": "resnet34",
               "mobilenetv2_w1": "mobilenetv2"}
"""The paper's model names of the pytorchcv architectures."""
PAPER_EPOCHS = {"cifar": 350, "imagenet": 90}
"""Training epochs of the paper's runs per task (Sections 5.1, 5.2)."""
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


def table1(bits: range | list[int] = range(1, 5)) -> pd.DataFrame:
    """Table 1 recomputed, with the paper's values beside the computed ones (bits 1-4 in print)."""
    paper = paper_tables()
    paper = paper[paper.table == 1]

    def paper_value(kind: str, b: int, metric: str) -> float:
        col = "weight_bits" if kind == "weight" else "act_bits"
        hit = paper[(paper[col] == b) & (paper.metric == metric)
                    & (paper.method == f"uniq-{kind}")]
        return float(hit.value.iloc[0]) if len(hit) else float("nan")

    rows = []
    for b in bits:
        row = {"bits": b, "N": 2**b}
        for kind, tag in (("weight", "w"), ("activation", "a")):
            row[f"step_{tag}"] = mse.optimal_step(b, kind)
            row[f"step_{tag}_paper"] = paper_value(kind, b, "optimal_unit_step")
            row[f"sqnr_{tag}_db"] = mse.optimal_sqnr_db(b, kind)
            row[f"sqnr_{tag}_db_paper"] = paper_value(kind, b, "sqnr_db")
        rows.append(row)
    return pd.DataFrame(rows)
