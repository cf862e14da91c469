"""The reproducibility summary that opens the HTML report, in the form of the ML Reproducibility
Challenge (scope, methodology, results, what was easy, what was hard).

Every sentence is generated from three sources, so the summary says what this results folder
holds and nothing else: the claims table the notebooks wrote (``claims.csv``, from
``data/claims.csv``), the fidelity page (``docs/fidelity.md``: every choice that can change a
number) and the provenance (``provenance.json``: profile, data, seeds, device, notebooks).
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .claims import detectable_effect, pooled_seed_sd
from .paths import REPO

FIDELITY = REPO / "docs" / "fidelity.md"
HEADINGS = ("Scope of reproducibility", "Methodology", "Results", "What was easy",
            "What was hard")
# the paper cell of a fidelity row when the paper does not settle the choice
SILENT = re.compile(r"^(—|-|)$|not (mentioned|described|stated|said)|not public", re.I)


@dataclass
class Part:
    heading: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)


def fidelity_rows(path: str | Path = FIDELITY) -> pd.DataFrame:
    """The rows of the fidelity page's tables: section, choice, paper, authors' code, uniq
    default (an escaped ``\\|`` inside a cell is not a column break)."""
    rows, section = [], ""
    for line in Path(path).read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        if not line.startswith("|") or line.startswith("|---") or line.startswith("| choice"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) >= 4:
            rows.append({"section": section, "choice": cells[0], "paper": cells[1],
                         "authors_code": cells[2], "uniq": cells[3]})
    return pd.DataFrame(rows, columns=["section", "choice", "paper", "authors_code", "uniq"])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def _verdict_word(verdict: str) -> str:
    return str(verdict).split(" ")[0] if str(verdict) != "not run" else "not run"


def _claim_line(row: pd.Series) -> str:
    effect = (f"effect {row['effect']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
              if pd.notna(row.get("ci_low")) and pd.notna(row.get("effect")) else
              f"effect {row['effect']:+.2f}" if pd.notna(row.get("effect")) else "no effect")
    paper = (f", paper {row['paper_effect']:+.2f}" if pd.notna(row.get("paper_effect")) else "")
    return f"{row['id']}: {row['statement']} ({effect}{paper})"


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


def summary_parts(results_dir: str | Path, fidelity: str | Path = FIDELITY) -> list[Part]:
    """The five parts of the summary, each a heading with paragraphs and bullets (plain text
    with `code` spans)."""

    out = Path(results_dir)
    prov_path = out / "provenance.json"
    prov = json.loads(prov_path.read_text()) if prov_path.exists() else {}
    settings = prov.get("profile_settings", {})
    profile = prov.get("profile", out.name)
    claims = _read_csv(out / "claims.csv")
    fid = fidelity_rows(fidelity) if Path(fidelity).exists() else None
    scope, method, results, easy, hard = (Part(h) for h in HEADINGS)

    # scope: the paper's claims, as the claims file states them
    if claims is not None and len(claims):
        per_source = claims.groupby("source", sort=False).size()
        scope.paragraphs.append(
            f"The paper (Pham, Abraham and Chung, IEEE Access 2021) introduces UniQ, a learnable "
            f"symmetric quantizer for multi-bit and binarised networks. This report tests "
            f"{_plural(len(claims), 'claim')} taken from it (`data/claims.csv`): "
            + ", ".join(f"{n} from {s}" for s, n in per_source.items()) + ".")
    else:
        scope.paragraphs.append(
            "The paper (Pham, Abraham and Chung, IEEE Access 2021) introduces UniQ, a learnable "
            "symmetric quantizer. No claims table was found in this folder (notebook 8 writes "
            "`claims.csv`), so no claim is tested here.")
    if prov.get("caveat"):
        scope.paragraphs.append(
            ("Comparable to the paper: " if prov.get("comparable_to_paper") else
             "Not comparable to the paper: ") + prov["caveat"])

    # methodology: what was run, where, and how faithfully
    if settings:
        seeds = prov.get("seeds", {}).get("quantized_runs", settings.get("seeds", []))
        data = ("CIFAR-100" if settings.get("dataset") == "cifar100" else
                f"{settings.get('dataset')} data ({settings.get('synthetic_train', 0):,} "
                f"training, {settings.get('synthetic_test', 0):,} test images; not CIFAR-100)")
        method.paragraphs.append(
            f"A PyTorch reimplementation (the `uniq` package) run by `python -m uniq reproduce "
            f"--profile {profile}`: a pre-activation ResNet-{settings.get('depth')} on {data}, "
            f"{settings.get('fp_epochs')} full-precision epochs, then "
            f"{settings.get('epochs')} epochs per quantized run, started from that model; "
            f"{_plural(len(seeds), 'seed')} ({', '.join(map(str, seeds))}) per quantized "
            "setting.")
    device = prov.get("device", {})
    if device:
        where = device.get("gpu") or "CPU" + (f" ({device['cpu_count']} threads)"
                                               if device.get("cpu_count") else "")
        versions = prov.get("versions", {})
        method.paragraphs.append(
            f"Hardware: {where}. Software: Python {versions.get('python')}, torch "
            f"{versions.get('torch')}"
            + (f", the locked environment (`{prov['lock']['hash'][:19]}...`)"
               if prov.get("lock", {}).get("hash") else "") + ".")
    if fid is not None and len(fid):
        silent = fid[fid.paper.map(lambda p: bool(SILENT.search(p)))]
        same = fid[fid.uniq.str.lower().str.startswith("the same") | (fid.uniq == fid.paper)]
        method.paragraphs.append(
            f"The fidelity page (`docs/fidelity.md`) lists {_plural(len(fid), 'choice')} that "
            f"can change a number, each with the paper's text, the authors' code and `uniq`'s "
            f"default and switch: {len(same)} follow the paper (or the authors' code) as "
            f"written, in {len(silent)} the paper is silent and the row says what `uniq` "
            "does and why.")

    # results: the verdicts
    if claims is not None and len(claims):
        words = claims.verdict.map(_verdict_word)
        counts = words.value_counts()
        results.paragraphs.append(
            "Verdicts (95% intervals over seeds): "
            + ", ".join(f"{counts[w]} {w}" for w in ("holds", "contradicted", "inconclusive",
                                                      "not run") if w in counts) + "."
            + ("" if claims.comparable_to_paper.any() else
               " They describe this profile's setting, not the paper's."))
        for w in ("holds", "contradicted"):
            for _, row in claims[words == w].iterrows():
                results.bullets.append(f"{w}: {_claim_line(row)}")

    # what was easy
    t1 = _read_csv(out / "table1.csv")
    if t1 is not None and {"step_w", "step_w_paper"} <= set(t1.columns):
        printed = t1[t1.bits <= 4]
        step = max((printed[f"step_{t}"] - printed[f"step_{t}_paper"]).abs().max()
                   for t in "wa")
        sqnr = max((printed[f"sqnr_{t}_db"] - printed[f"sqnr_{t}_db_paper"]).abs().max()
                   for t in "wa")
        easy.bullets.append(
            f"Table 1 (MSE-optimal steps, Eq. 7-8) is analytic and matches the paper: largest "
            f"difference {step:.4f} in the unit steps and {sqnr:.3f} dB in the SQNR, bits 1-4.")
    notebooks = prov.get("notebooks", {})
    ok = [n for n, s in notebooks.items() if s.get("ok")]
    if notebooks:
        seconds = sum(s.get("seconds", 0) for s in notebooks.values())
        easy.bullets.append(f"{len(ok)} of {_plural(len(notebooks), 'notebook')} ran end to "
                            f"end in {seconds / 60:.1f} minutes, from one command.")
    if fid is not None and len(fid):
        as_written = fid.uniq.str.lower().str.startswith("the same") | (fid.uniq == fid.paper)
        per_section = fid.assign(same=as_written).groupby("section", sort=False).same
        easy.bullets.append(
            "Choices implemented exactly as the paper (or the authors' code) states them, per "
            "section of the fidelity page: " + "; ".join(
                f"{name} {int(same.sum())} of {len(same)}" for name, same in per_section) + ".")

    # what was hard
    for f in prov.get("failures", []):
        hard.bullets.append(f"{f.get('notebook')} failed at cell {f.get('cell_index')}: "
                            f"{f.get('error')}")
    if claims is not None and len(claims):
        words = claims.verdict.map(_verdict_word)
        not_run = claims[words == "not run"]
        if len(not_run):
            hard.bullets.append(
                f"{_plural(len(not_run), 'claim')} could not be tested here ("
                + ", ".join(sorted(set(not_run.source))) + "): the runs they need are not in "
                "this folder (ImageNet needs its data set and GPUs); the claims table gives the "
                "commands.")
        inconclusive = int((words == "inconclusive").sum())
        noise = seed_noise(out)
        if inconclusive:
            text = f"{_plural(inconclusive, 'claim')} stayed inconclusive: the effects are "
            if noise:
                sd, _, n = noise
                text += (f"small against the seed-to-seed noise (pooled sd of top-1 over Table "
                         f"4's cells {sd:.2f} points; with {n} seeds an effect needs about "
                         f"{detectable_effect(n, sd):.2f} points to be resolved).")
            else:
                text += "small against the seed-to-seed noise."
            hard.bullets.append(text)
    if fid is not None and len(fid):
        silent = fid[fid.paper.map(lambda p: bool(SILENT.search(p)))]
        if len(silent):
            hard.bullets.append("The paper does not say: " + "; ".join(silent.choice) + ".")
        unpublished = fid[fid.authors_code.str.contains("not public|not in the public code")]
        if len(unpublished):
            hard.bullets.append("Not in the authors' public code either (written from the "
                                "paper's description): " + "; ".join(unpublished.choice) + ".")
    if not prov.get("comparable_to_paper", False) and prov:
        hard.bullets.append("The paper's schedules (350 epochs per CIFAR-100 run, 90 per "
                            "ImageNet run) need GPUs; this profile is shorter, so its numbers "
                            "are not the paper's.")
    for part in (easy, hard):
        if not part.bullets:
            part.paragraphs.append("Nothing recorded in this folder.")
    return [scope, method, results, easy, hard]


def _inline(text: str) -> str:
    """Plain text with `code` spans as HTML."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def summary_html(results_dir: str | Path, fidelity: str | Path = FIDELITY) -> str:
    """The summary as an HTML section (an ``h2`` and an ``h3`` per part)."""
    out = ['<section id="reproducibility-summary"><h2>Reproducibility summary</h2>',
           '<p class="note">In the form of the ML Reproducibility Challenge, generated from '
           "this folder's claims table, the fidelity page and the provenance.</p>"]
    for part in summary_parts(results_dir, fidelity):
        out.append(f"<h3>{html.escape(part.heading)}</h3>")
        out.extend(f"<p>{_inline(p)}</p>" for p in part.paragraphs)
        if part.bullets:
            out.append("<ul>" + "".join(f"<li>{_inline(b)}</li>" for b in part.bullets)
                       + "</ul>")
    out.append("</section>")
    return "\n".join(out)


def summary_markdown(results_dir: str | Path, fidelity: str | Path = FIDELITY) -> str:
    lines = ["# Reproducibility summary", ""]
    for part in summary_parts(results_dir, fidelity):
        lines += [f"## {part.heading}", ""]
        for p in part.paragraphs:
            lines += [p, ""]
        lines += [f"- {b}" for b in part.bullets] + ([""] if part.bullets else [])
    return "\n".join(lines)
