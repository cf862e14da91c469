"""The reproducibility summary that opens the HTML report, in the form of the ML Reproducibility
Challenge (scope, methodology, results, what was easy, what was hard).

Its numbers come from three sources, so the summary says what this results folder holds and
nothing else: the claims table the notebooks wrote (``claims.csv``, from ``data/claims.csv``),
the fidelity table (``data/fidelity.csv``: every choice that can change a number, with its
status) and the provenance (``provenance.json``: profile, data, seeds, device, notebooks).
``summary_facts`` gathers the numbers; the words are the template
``uniq/templates/summary.md`` (Markdown, turned into HTML by mistune).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined

from .claims import detectable_effect, pooled_seed_sd
from .paths import REPO

FIDELITY = REPO / "data" / "fidelity.csv"
FIDELITY_COLUMNS = ("section", "choice", "paper", "authors_code", "uniq", "alternative",
                    "status")
STATUSES = ("follows paper", "follows authors' code", "project choice", "departure")
"""A fidelity row's status: ``uniq`` does what the paper says; the paper is silent (or vague)
and ``uniq`` does what the authors' code does; neither decides and ``uniq`` chose; ``uniq``
departs from what the paper or the authors' code does (switchable: the row names the flag)."""
HEADINGS = ("Scope of reproducibility", "Methodology", "Results", "What was easy",
            "What was hard")
# the paper cell of a fidelity row when the paper does not settle the choice
SILENT = re.compile(r"^(—|-|)$|not (mentioned|described|stated|said)|not public|silent", re.I)
# Why a claim is not decided, from its verdict after Holm (``claims.evaluate_claims``)
CAUSES = {"noise": "the effect is small against the seed-to-seed noise",
          "did not move": "the weights moved less than the gate from their full-precision "
                          "start, so their shape says nothing about training",
          "no margin yet": "no seed-to-seed spread is measured yet for its margin",
          "not run": "its runs are not in this folder",
          "not comparable": "its runs differ in more than the seed"}

TEMPLATES = Environment(loader=PackageLoader("uniq.repro"), autoescape=False, trim_blocks=True,
                        lstrip_blocks=True, keep_trailing_newline=True,
                        undefined=StrictUndefined)


def fidelity_rows(path: str | Path = FIDELITY) -> pd.DataFrame:
    """The fidelity table: section, choice, paper, authors' code, uniq default, alternative
    and status, one row per choice (``data/fidelity.csv``)."""
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in FIDELITY_COLUMNS if c not in rows]
    if missing:
        raise ValueError(f"{path}: column(s) {missing} missing; expected "
                         f"{', '.join(FIDELITY_COLUMNS)}")
    wrong = sorted(set(rows.status) - set(STATUSES))
    if wrong:
        raise ValueError(f"{path}: unknown status(es) {wrong}; use one of {', '.join(STATUSES)}")
    return rows[list(FIDELITY_COLUMNS)]


def _read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def cause(verdict: str) -> str | None:
    """Why a claim is undecided, from its verdict (None when it holds or is contradicted)."""
    v = str(verdict)
    if v in ("holds", "contradicted"):
        return None
    if v in ("not run", "not comparable"):
        return v
    inside = re.search(r"\((.*)\)", v)
    reason = inside.group(1) if inside else "noise"
    return {"Holm": "noise", "weights did not move": "did not move"}.get(reason, reason)


def _claim(row: pd.Series) -> dict:
    def num(name: str) -> float | None:
        value = row.get(name)
        return float(value) if pd.notna(value) else None

    return {"id": row["id"], "statement": row["statement"], "effect": num("effect"),
            "low": num("ci_low"), "high": num("ci_high"), "paper": num("paper_effect"),
            "p_holm": num("p_holm")}


def seed_noise(results_dir: Path) -> tuple[float, int, int] | None:
    """(pooled seed-to-seed sd of top-1 over Table 4's cells, degrees of freedom, seeds per
    cell) from ``table4_seeds.csv``, or None without two seeds."""

    seeds = _read_csv(results_dir / "table4_seeds.csv")
    if seeds is None or "top1_final" not in seeds:
        return None
    m = seeds.assign(metric="top1_final", value=seeds["top1_final"])
    sd, dof = pooled_seed_sd(m)
    if not dof:
        return None
    return sd, dof, int(seeds.groupby("experiment").seed.count().max())


def _claims_facts(claims: pd.DataFrame | None) -> dict | None:
    if claims is None or not len(claims):
        return None
    adjusted = claims["verdict_holm"] if "verdict_holm" in claims else claims["verdict"]
    unadjusted = claims["verdict"]
    causes = adjusted.map(cause)
    undecided = causes.dropna()
    by_cause = [{"cause": c, "why": CAUSES.get(c, c), "count": int((undecided == c).sum()),
                 "ids": list(claims.id[causes == c])}
                for c in dict.fromkeys([*CAUSES, *undecided]) if (undecided == c).any()]
    not_run = claims[causes == "not run"]
    return {
        "total": len(claims),
        "per_source": [{"source": s, "count": int(n)}
                       for s, n in claims.groupby("source", sort=False).size().items()],
        "holm": "verdict_holm" in claims,
        "holds": [_claim(r) for _, r in claims[adjusted == "holds"].iterrows()],
        "contradicted": [_claim(r) for _, r in claims[adjusted == "contradicted"].iterrows()],
        "holds_unadjusted": int((unadjusted == "holds").sum()),
        "demoted": [_claim(r) for _, r in
                    claims[(unadjusted == "holds") & (adjusted != "holds")].iterrows()],
        "undecided": len(undecided), "by_cause": by_cause,
        "not_run_sources": sorted(set(not_run.source)),
        "any_comparable": bool(claims.comparable_to_paper.astype(bool).any())
        if "comparable_to_paper" in claims else False,
    }


def _fidelity_facts(fid: pd.DataFrame | None) -> dict | None:
    if fid is None or not len(fid):
        return None
    per_section = [{"section": s, "count": len(part),
                    "status": {st: int((part.status == st).sum()) for st in STATUSES}}
                   for s, part in fid.groupby("section", sort=False)]
    return {"total": len(fid),
            "status": {st: int((fid.status == st).sum()) for st in STATUSES},
            "per_section": per_section,
            "silent": list(fid.choice[fid.paper.map(lambda p: bool(SILENT.search(p)))]),
            "departures": list(fid.choice[fid.status == "departure"]),
            "unpublished": list(fid.choice[fid.authors_code.str.contains(
                "not public|not in the public code")])}


def _failures(listed: object) -> list[dict]:
    """The failed notebooks a provenance file lists, as text (a hand-edited or foreign file may
    hold anything)."""
    if not isinstance(listed, list):
        return []
    return [{"notebook": str(x.get("notebook", "?")), "cell_index": str(x.get("cell_index", "?")),
             "error": str(x.get("error", ""))} for x in listed if isinstance(x, dict)]


def summary_facts(results_dir: str | Path, fidelity: str | Path = FIDELITY) -> dict:
    """Every number the summary states, read from the results folder and the fidelity table."""
    out = Path(results_dir)
    prov_path = out / "provenance.json"
    prov = json.loads(prov_path.read_text()) if prov_path.exists() else {}
    settings = prov.get("profile_settings", {})
    facts: dict = {"profile": prov.get("profile", out.name), "caveat": prov.get("caveat"),
                   "comparable": bool(prov.get("comparable_to_paper", False)),
                   "differs": prov.get("differs_from_paper") or [],
                   "provenance": bool(prov), "settings": None, "device": None,
                   "failures": _failures(prov.get("failures")), "table1": None, "notebooks": None,
                   "noise": None}
    if settings:
        facts["settings"] = {
            "depth": settings.get("depth"), "dataset": settings.get("dataset"),
            "train": settings.get("synthetic_train", 0), "test": settings.get("synthetic_test", 0),
            "fp_epochs": settings.get("fp_epochs"), "epochs": settings.get("epochs"),
            "seeds": list(prov.get("seeds", {}).get("quantized_runs",
                                                    settings.get("seeds", [])))}
    device = prov.get("device", {})
    if device:
        versions = prov.get("versions", {})
        facts["device"] = {"where": device.get("gpu") or "CPU" + (
            f" ({device['cpu_count']} threads)" if device.get("cpu_count") else ""),
            "python": versions.get("python"), "torch": versions.get("torch"),
            "lock": prov.get("lock", {}).get("hash", "")[:19]}
    facts["claims"] = _claims_facts(_read_csv(out / "claims.csv"))
    facts["fidelity"] = _fidelity_facts(fidelity_rows(fidelity) if Path(fidelity).exists()
                                        else None)
    t1 = _read_csv(out / "table1.csv")
    if t1 is not None and {"step_w", "step_w_paper"} <= set(t1.columns):
        printed = t1[t1.bits <= 4]
        facts["table1"] = {
            "step": max((printed[f"step_{t}"] - printed[f"step_{t}_paper"]).abs().max()
                        for t in "wa"),
            "sqnr": max((printed[f"sqnr_{t}_db"] - printed[f"sqnr_{t}_db_paper"]).abs().max()
                        for t in "wa")}
    notebooks = prov.get("notebooks", {})
    if notebooks:
        facts["notebooks"] = {"ok": sum(bool(s.get("ok")) for s in notebooks.values()),
                              "total": len(notebooks),
                              "minutes": sum(s.get("seconds", 0) for s in notebooks.values())
                              / 60}
    noise = seed_noise(out)
    if noise:
        sd, _, n = noise
        facts["noise"] = {"sd": sd, "seeds": n, "detectable": detectable_effect(n, sd)}
    return facts


def summary_markdown(results_dir: str | Path, fidelity: str | Path = FIDELITY,
                     level: int = 1) -> str:
    """The summary as Markdown: a title at heading ``level``, one heading per part below it."""
    return TEMPLATES.get_template("summary.md").render(
        f=summary_facts(results_dir, fidelity), level=level, headings=HEADINGS)


def summary_html(results_dir: str | Path, fidelity: str | Path = FIDELITY) -> str:
    """The summary as an HTML section (an ``h2`` and an ``h3`` per part); any HTML in a
    results file is shown as text."""
    import mistune

    markdown = mistune.create_markdown(escape=True)
    body = markdown(summary_markdown(results_dir, fidelity, level=2))
    return f'<section id="reproducibility-summary">{body}</section>'
