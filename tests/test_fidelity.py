"""The fidelity page is data (``data/fidelity.csv``) rendered with the code's own numbers
(``uniq.repro.fidelity``): the committed page is the generated one, and every number of the
``uniq`` columns is either read from the code or checked against it here."""

import re

import pandas as pd
import pytest
import torch

from uniq.repro import fidelity as F
from uniq.repro.repro_summary import FIDELITY, STATUSES, fidelity_rows

# Numbers that are references, not values: Eq. 3, Table 5, 8-bit, 2 bits, 16x16, ...
REFERENCE = re.compile(
    r"(?:Eqs?\.|Tables?|Figures?|Sec\.|Section|notebook|CIFAR-|ResNet-|seeds? |epoch |"
    r"float|int|TF|sha|stride > |ImageNet-)\s?\d+(?:\.\d+)?|\d+-(?:bit|pixel|level)|"
    r"\d+ (?:and \d+ )?bits?|\d+x\d+|\d+, \d+, \d+, \d+ bits|\d+ to \d+ bits|\d+/fp|"
    r"\(say \d+ and \d+ epochs\)|\d+ and \d+ epochs|\d+ = full")
NUMBER = re.compile(r"(?<![A-Za-z_\-.\d])\d+(?:\.\d+)?(?:e-?\d+)?")


def _checked_literals() -> dict:
    """The literal numbers left in the ``uniq`` columns, each with its check against the code
    (or, for the two measured against the authors' constants, the place it was measured)."""
    from uniq.repro.data import CIFAR100_EXACT_MEAN, CIFAR100_EXACT_STD, CIFAR100_MEAN, CIFAR100_STD
    from uniq.repro.study import TABLE5_INITS

    def normalisation_shift() -> bool:
        x = torch.linspace(0, 1, 256, dtype=torch.float64)
        worst = max(float(((x - m) / s - (x - me) / se).abs().max())
                    for m, s, me, se in zip(CIFAR100_MEAN, CIFAR100_STD, CIFAR100_EXACT_MEAN,
                                            CIFAR100_EXACT_STD, strict=True))
        return worst < 0.001

    inits = {str(i) for i, _ in TABLE5_INITS}
    return {
        ("unit step sizes (Table 1)", "1e-10"): "measured against the authors' hard-coded "
                                                 "weight constants",
        ("unit step sizes (Table 1)", "1e-4"): "measured against the authors' hard-coded "
                                                "activation constants",
        ("which layers Table 5's init reaches", "0.2"): "0.2" in inits,
        ("which layers Table 5's init reaches", "0.1"): "0.1" in inits,
        ("ImageNet 1-bit start", "2"): 2 ** 1 == 2,
        ("CIFAR-100 normalisation constants", "4"): all(
            round(e, 4) == r for e, r in zip(CIFAR100_EXACT_MEAN + CIFAR100_EXACT_STD,
                                             CIFAR100_MEAN + CIFAR100_STD, strict=True)),
        ("CIFAR-100 normalisation constants", "0.001"): normalisation_shift(),
    }


def literals(cell: str) -> list[str]:
    cell = re.sub(r"\{\{.*?\}\}", "", cell)  # read from the code
    cell = re.sub(r"`[^`]*`", "", cell)  # flags, names and formulas (checked below)
    return NUMBER.findall(REFERENCE.sub("", cell))


def test_the_committed_page_is_the_generated_one():
    """Changing a number of docs/fidelity.md, or a number of the code the page quotes,
    fails here until the page is regenerated: python -m uniq.repro.fidelity"""
    assert F.PAGE.read_text() == F.fidelity_markdown(), \
        "docs/fidelity.md is out of date: edit data/fidelity.csv, run python -m uniq.repro.fidelity"


def test_every_literal_number_of_the_uniq_columns_is_checked():
    rows = fidelity_rows(FIDELITY)
    checked = _checked_literals()
    found = {(row.choice, number) for _, row in rows.iterrows()
             for column in ("uniq", "alternative") for number in literals(row[column])}
    assert found <= set(checked), sorted(found - set(checked))
    assert all(v is True or isinstance(v, str) for v in checked.values()), checked


def test_the_numbers_the_page_reads_are_the_codes():
    from uniq.repro.config import CifarConfig
    from uniq.repro.recipes import RECIPES
    from uniq.repro.study import MIN_MOVED, PROFILES

    facts = F.facts()
    assert facts["steps_uniq"] == 50_000 // CifarConfig().batch_size == 390
    assert facts["steps_authors"] == 391
    assert facts["cifar_wd"] == "5e-4" and RECIPES["sgd"].weight_decay == 5e-4
    assert facts["imagenet_wd"] == "1e-4, 0.5e-4, 0.25e-4, 0"
    assert facts["smoke_warmups"] == f"{PROFILES['smoke'].warmup(5):g} and " \
                                     f"{PROFILES['smoke'].warmup(10):g}"
    assert facts["min_moved"] == f"{100 * MIN_MOVED:g}"
    assert facts["table5_levels"]["0.2"] == 2 and facts["table5_levels"]["0.1"] == 4


def test_a_changed_number_in_the_table_or_the_code_changes_the_page(monkeypatch):
    import uniq.repro.study as X

    before = F.fidelity_markdown()
    monkeypatch.setattr(X, "MIN_MOVED", 0.07)
    assert F.fidelity_markdown() != before


def test_flags_named_in_the_uniq_columns_exist():
    from uniq.repro.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    known = {opt for name in sub for action in sub[name]._actions
             for opt in action.option_strings}
    rows = fidelity_rows(FIDELITY)
    named = set(re.findall(r"`(--[a-z][a-z0-9-]*)", " ".join(rows.uniq) + " "
                           + " ".join(rows.alternative)))
    assert named and named <= known, sorted(named - known)


def test_every_row_has_a_status_and_departures_name_what_differs():
    rows = fidelity_rows(FIDELITY)
    assert set(rows.status) <= set(STATUSES) and rows.status.ne("").all()
    assert (rows.status == "departure").sum() >= 5
    for _, row in rows[rows.status == "departure"].iterrows():
        assert row.uniq and row.authors_code, row.choice


def test_a_bad_status_is_a_clear_error(tmp_path):
    rows = fidelity_rows(FIDELITY).head(2).copy()
    rows.loc[0, "status"] = "roughly"
    rows.to_csv(tmp_path / "f.csv", index=False)
    with pytest.raises(ValueError, match="unknown status"):
        fidelity_rows(tmp_path / "f.csv")
    pd.DataFrame({"choice": ["x"]}).to_csv(tmp_path / "g.csv", index=False)
    with pytest.raises(ValueError, match="missing"):
        fidelity_rows(tmp_path / "g.csv")
