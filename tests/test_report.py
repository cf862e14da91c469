"""The HTML results report: built from a results folder, opens from the file system, offline."""

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from uniq.repro.report import beside_the_paper, build_report  # noqa: E402


class Links(HTMLParser):
    """Every (tag, attribute, value) of href/src, and every id, of one page."""

    def __init__(self):
        super().__init__()
        self.links, self.ids, self.tags = [], set(), []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.links.append((tag, name, value))
            if name == "id":
                self.ids.add(value)


def parse(page: Path) -> Links:
    links = Links()
    links.feed(page.read_text())
    return links


def check_page(page: Path, inside: Path) -> list[str]:
    """Problems with one page: an external URL that a browser would fetch (script, style sheet,
    image), a relative link whose file does not exist, an anchor with no target. Relative
    links that leave ``inside`` (the results folder) are checked for existence too."""
    links = parse(page)
    problems = []
    for tag, attr, value in links.links:
        url = urlparse(value)
        if url.scheme == "data":
            continue
        if url.scheme or value.startswith("//"):
            if tag in ("script", "link", "img", "iframe") or "http" in value:
                problems.append(f"{page.name}: external {tag} {attr}={value}")
            continue
        if not url.path:  # "#anchor" within the page
            if url.fragment and url.fragment not in links.ids:
                problems.append(f"{page.name}: no element with id {url.fragment!r}")
            continue
        target = (page.parent / unquote(url.path)).resolve()
        if not target.exists():
            problems.append(f"{page.name}: {attr}={value} -> {target} does not exist")
    assert "script" not in links.tags or all(
        a != "src" for t, a, _ in links.links if t == "script")
    return problems


def _executed_notebook(path: Path, markdown: str = "# 04. A notebook") -> None:
    book = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("print('hello')\nfig")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n"),
                    nbformat.v4.new_output("display_data", data={
                        "image/png": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4"
                                     "nGNgYGD4DwABBAEAcCBlCwAAAABJRU5ErkJggg==",
                        "text/plain": "<Figure>"}),
                    nbformat.v4.new_output("display_data", data={
                        "text/html": "<table><tr><td>1</td></tr></table>",
                        "text/plain": "df"})]
    code.execution_count = 1
    book.cells = [nbformat.v4.new_markdown_cell(markdown), code]
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    nbformat.write(book, path)


@pytest.fixture
def results(tmp_path):
    """A results folder as `reproduce` leaves it: a table in the save_table format, a figure,
    an extra table, provenance and two executed notebooks (one with a link to the repo's docs)."""
    out = tmp_path / "results" / "smoke"
    out.mkdir(parents=True)
    t4 = pd.DataFrame({"profile": ["smoke"] * 2, "method": ["LSQ", "UniQ"], "bits": ["2/2"] * 2,
                       "paper_top1": [68.5, 69.3], "top1": [3.2, 4.1], "dataset": ["synthetic"] * 2,
                       "run": ["a-1", "b-2"], "diff": [-65.3, -65.2],
                       "comparable_to_paper": [False, False]})
    t4.to_csv(out / "table4.csv", index=False)
    (out / "table4.md").write_text("# Table 4: LSQ vs UniQ, ResNet-8 on generated data\n\n"
                                   "> SMOKE PROFILE: not comparable\n\n" + t4.to_markdown())
    pd.DataFrame({"x": [1.0]}).to_csv(out / "mse_monte_carlo.csv", index=False)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    fig.savefig(out / "figure3.png")
    plt.close(fig)
    (out / "provenance.json").write_text(json.dumps({
        "profile": "smoke", "dataset": "synthetic", "caveat": "SMOKE PROFILE: generated data",
        "comparable_to_paper": False, "git": {"commit": "0" * 40, "dirty": False},
        "versions": {"torch": "2"}, "device": {"cuda_available": False},
        "notebooks": {"04_table4_figure3.ipynb": {"ok": True, "seconds": 3.0},
                      "05_table5.ipynb": {"ok": False, "seconds": 1.0}},
        "failures": [{"notebook": "05_table5.ipynb", "cell_index": 3, "first_line": "t5 = 1",
                      "error": "RuntimeError: boom <b>"}]}))
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "notebooks").mkdir()
    (repo / "docs" / "fidelity.md").write_text("# fidelity\n")
    _executed_notebook(out / "04_table4_figure3.ipynb",
                       "# 04\nSee [the fidelity table](../docs/fidelity.md) and "
                       "[Table 4](#04).")
    _executed_notebook(out / "05_table5.ipynb")
    return out, repo / "notebooks"


def test_the_report_links_only_to_files_that_exist_and_fetches_nothing(results):
    out, notebook_dir = results
    index = build_report(out, notebook_dir)
    assert index == out / "index.html"
    pages = [index, *sorted((out / "html").glob("*.html"))]
    assert [p.name for p in pages[1:]] == ["04_table4_figure3.html", "05_table5.html"]
    problems = [p for page in pages for p in check_page(page, out)]
    assert problems == []
    targets = {v for _, _, v in parse(index).links}
    assert {"table4.csv", "table4.md", "figure3.png", "provenance.json",
            "html/04_table4_figure3.html", "html/05_table5.html"} <= targets
    # the notebook's link to ../docs/fidelity.md, written for notebooks/, still finds the file
    page = parse(out / "html" / "04_table4_figure3.html")
    docs = [v for _, _, v in page.links if v.endswith("fidelity.md")]
    assert docs and all((out / "html" / v).resolve() ==
                        (notebook_dir.parent / "docs" / "fidelity.md").resolve() for v in docs)


def test_the_report_shows_every_table_figure_caveat_and_failure(results):
    out, notebook_dir = results
    text = build_report(out, notebook_dir).read_text()
    assert "Table 4: LSQ vs UniQ, ResNet-8 on generated data" in text
    assert "SMOKE PROFILE: generated data" in text
    assert '<img src="figure3.png"' in text and "mse_monte_carlo" in text
    assert "RuntimeError: boom &lt;b&gt;" in text  # escaped, not markup
    assert 'name="viewport"' in text and 'class="scroll"' in text
    # every number of the CSV is on the page
    for value in pd.read_csv(out / "table4.csv")[["paper_top1", "top1", "diff"]].to_numpy().ravel():
        assert f"<td class=\"paper num\">{value:g}</td>" in text or f">{value:g}</td>" in text
    for page in (out / "html").glob("*.html"):
        body = page.read_text()
        assert 'name="viewport"' in body and "data:image/png;base64," in body


def test_paper_columns_sit_beside_the_reproduced_ones():
    df = pd.DataFrame(columns=["profile", "bits", "paper_top1", "top1", "run", "diff",
                               "step_w", "sqnr_w_db", "step_w_paper"])
    assert list(beside_the_paper(df)) == ["profile", "bits", "top1", "paper_top1", "diff", "run",
                                          "step_w", "step_w_paper", "sqnr_w_db"]


def test_a_missing_results_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="reproduce"):
        build_report(tmp_path / "nothing")


def test_figures_draw_without_warnings_and_titles_say_what_ran(recwarn):
    """Figure 3 on a real converted model (its step is a parameter that requires grad) and
    Figure 4 on a small dynamics table: no warning, the given titles, the warm-up length."""
    import torch

    import uniq
    from uniq.models import preact_resnet
    from uniq.repro import figures as plots
    from uniq.repro.config import CifarConfig

    torch.manual_seed(0)
    models = {name: uniq.quantize_model(preact_resnet(8), 2, method, weight_granularity="tensor",
                                        init=0.1) for name, method in (("LSQ", "lsq"),
                                                                       ("UniQ", "uniq"))}
    layer = "blocks.0.conv1"
    fig = plots.weight_histograms(models, [layer], title="trained 2-bit weights, X on Y")
    assert fig._suptitle.get_text() == "trained 2-bit weights, X on Y"
    plt.close(fig)

    cfg = CifarConfig(bits=1, recipe="sgd-warmup5", warmup_epochs=0.25, dataset="synthetic")
    title = plots.describe_run(cfg)
    assert title.startswith("1-bit UniQ, SGD, 0.25-epoch warm-up at 0.001, then lr 0.01")
    dynamics = pd.DataFrame({"layer": layer, "epoch_float": [0.0, 0.5, 1.0],
                             "step_size": [1.0, 1.0001, 1.0002], "input_std": [1.0, 1.1, 1.2],
                             "sqnr_db": [5.0, 5.5, 6.0], "optimal_sqnr_db": 5.5})
    fig = plots.dynamics_figure([(title, dynamics, 0.25)], layer, title="dynamics",
                                max_epoch=1.0, scale=0.1)
    heading = fig.axes[0].get_title()
    assert "0.25-epoch" in heading and "+0.02% over the span" in heading
    assert fig.axes[0].get_xlim() == (0.0, 1.0)
    plt.close(fig)
    assert [str(w.message) for w in recwarn] == []


# ------------------------------------------------------------ the reproducibility summary

FIDELITY_TABLE = pd.DataFrame([
    ("Quantizer", "weight quantizer", "Eq. 3", "the same", "the same, `symmetric_quantize`", "—",
     "follows paper"),
    ("Quantizer", "step-gradient scale", "not mentioned", "`1/sqrt(n Qp)`", "on",
     "`--no-grad-scale`", "follows authors' code"),
    ("Quantizer", "LSQ init", "`2 E|W| / sqrt(Qp)`", "not public", "`2 E|W| / sqrt(Qp)`", "—",
     "follows paper"),
    ("Seeds", "seeds", "—", "none", "seed 0", "`--seed`", "project choice"),
    ("Seeds", "steps", "—", "391", "390", "—", "departure"),
], columns=["section", "choice", "paper", "authors_code", "uniq", "alternative", "status"])


@pytest.fixture
def summarised(results):
    """The results folder with a claims table, Table 1, Table 4's seeds and full provenance."""
    out, notebook_dir = results
    fidelity = notebook_dir.parent / "data" / "fidelity.csv"
    fidelity.parent.mkdir(exist_ok=True)
    FIDELITY_TABLE.to_csv(fidelity, index=False)
    pd.DataFrame([
        {"id": "T4-a", "source": "Table 4", "statement": "UniQ beats LSQ at 2 bits",
         "effect": 1.5, "ci_low": 0.5, "ci_high": 2.5, "paper_effect": 0.8, "verdict": "holds",
         "comparable_to_paper": False},
        {"id": "T5-b", "source": "Table 5", "statement": "MSE beats 0.1", "effect": 0.1,
         "ci_low": -1.0, "ci_high": 1.2, "paper_effect": 2.2, "verdict": "inconclusive",
         "comparable_to_paper": False},
        {"id": "T2-c", "source": "Table 2", "statement": "ImageNet", "effect": float("nan"),
         "ci_low": float("nan"), "ci_high": float("nan"), "paper_effect": 0.4,
         "verdict": "not run", "comparable_to_paper": False},
    ]).to_csv(out / "claims.csv", index=False)
    pd.DataFrame({"bits": [1, 2, 5], "step_w": [1.5958, 0.9957, 0.1],
                  "step_w_paper": [1.596, 0.996, float("nan")], "sqnr_w_db": [4.4, 9.3, 30.0],
                  "sqnr_w_db_paper": [4.4, 9.25, float("nan")], "step_a": [0.8, 0.5, 0.1],
                  "step_a_paper": [0.8, 0.5, float("nan")], "sqnr_a_db": [4.0, 8.0, 30.0],
                  "sqnr_a_db_paper": [4.0, 8.0, float("nan")]}).to_csv(out / "table1.csv",
                                                                       index=False)
    # two cells, three seeds each: pooled sd = sqrt((2 * 1 + 2 * 4) / 4) = sqrt(2.5)
    pd.DataFrame({"experiment": ["t4/fp"] + ["a"] * 3 + ["b"] * 3, "seed": [0, 0, 1, 2, 0, 1, 2],
                  "top1_final": [70.0, 10.0, 11.0, 12.0, 20.0, 22.0, 24.0]}).to_csv(
        out / "table4_seeds.csv", index=False)
    prov = json.loads((out / "provenance.json").read_text())
    prov.update({"profile_settings": {"depth": 8, "dataset": "synthetic", "fp_epochs": 6,
                                      "epochs": 2, "synthetic_train": 512,
                                      "synthetic_test": 250, "seeds": [0, 1]},
                 "seeds": {"quantized_runs": [0, 1, 2]},
                 "versions": {"python": "3.11", "torch": "2"},
                 "lock": {"hash": "sha256:" + "a" * 64}})
    (out / "provenance.json").write_text(json.dumps(prov))
    return out, notebook_dir, fidelity


def test_the_report_opens_with_the_reproducibility_summary(summarised):
    import math

    from uniq.repro.claims import detectable_effect
    from uniq.repro.repro_summary import HEADINGS, fidelity_rows

    out, notebook_dir, fidelity = summarised
    text = build_report(out, notebook_dir, fidelity).read_text()
    first = text.index("<h2")
    assert text[first:].startswith('<h2>Reproducibility summary')
    positions = [text.index(f"<h3>{h}</h3>") for h in HEADINGS]
    assert positions == sorted(positions) and positions[-1] < text.index('id="contents"')
    summary = text[first:text.index("</section>")]
    # scope and results come from the claims table
    assert "3 claims" in summary and "1 from Table 4, 1 from Table 5, 1 from Table 2" in summary
    assert "1 holds, 0 contradicted, 2 not decided" in summary
    assert "holds: T4-a: UniQ beats LSQ at 2 bits (effect +1.50 [+0.50, +2.50], paper +0.80)" \
        in summary
    assert "Not decided, by cause: 1 noise, 1 not run." in summary
    # methodology from the provenance, easy/hard from Table 1, the seeds and the fidelity table
    assert "ResNet-8 on synthetic data (512 training, 250 test images" in summary
    assert "3 seeds (0, 1, 2)" in summary
    assert ("lists 5 choices" in summary and "2 follow the paper, 1 follow the authors" in summary
            and "1 are choices of this reproduction" in summary and "and 1 depart" in summary)
    assert "The paper does not say: step-gradient scale; seeds; steps." in summary
    assert "public code either (written from the paper's description): LSQ init." in summary
    assert "largest difference 0.0003 in the unit steps and 0.050 dB" in summary
    assert "per section of the fidelity table: Quantizer 3 of 3; Seeds 0 of 2." in summary
    sd = math.sqrt(2.5)
    assert f"pooled sd of top-1 over Table 4's cells {sd:.2f} points" in summary
    assert f"about {detectable_effect(3, sd):.2f} points" in summary
    assert "05_table5.ipynb failed at cell 3" in summary
    assert (out / "reproducibility_summary.md").read_text().startswith(
        "# Reproducibility summary\n\nIn the form of")
    assert "## Scope of reproducibility" in (out / "reproducibility_summary.md").read_text()
    rows = fidelity_rows(fidelity)
    assert rows.set_index("choice").loc["LSQ init", "paper"] == "`2 E|W| / sqrt(Qp)`"
    assert check_page(out / "index.html", out) == []


def test_the_summary_counts_verdicts_after_holm_by_cause(summarised):
    from uniq.repro.repro_summary import summary_markdown

    out, _, fidelity = summarised
    claims = pd.read_csv(out / "claims.csv")
    extra = pd.DataFrame([
        {"id": "T4-d", "source": "Table 4", "statement": "UniQ beats LSQ at 3 bits",
         "effect": 0.9, "ci_low": 0.1, "ci_high": 1.7, "paper_effect": 0.5, "verdict": "holds"},
        {"id": "F3-e", "source": "Figure 3", "statement": "skewed", "effect": 0.2,
         "ci_low": -0.1, "ci_high": 0.5, "paper_effect": float("nan"),
         "verdict": "inconclusive (weights did not move)"},
        {"id": "T2-f", "source": "Table 2", "statement": "mixed", "effect": float("nan"),
         "ci_low": float("nan"), "ci_high": float("nan"), "paper_effect": 0.3,
         "verdict": "not comparable"}])
    claims = pd.concat([claims, extra], ignore_index=True).assign(comparable_to_paper=False)
    claims["verdict_holm"] = claims.verdict
    claims.loc[claims.id == "T4-d", "verdict_holm"] = "inconclusive (Holm)"
    claims["p_holm"] = [0.01, 0.5, float("nan"), 0.04, float("nan"), float("nan")]
    claims.to_csv(out / "claims.csv", index=False)
    text = summary_markdown(out, fidelity)
    assert "1 holds, 0 contradicted, 5 not decided (without the adjustment: 2 holds)" in text
    assert "- holds alone, not after Holm: T4-d: UniQ beats LSQ at 3 bits" in text
    assert ("Not decided, by cause: 2 noise, 1 did not move, 1 not run, 1 not comparable."
            in text)
    assert "(1 of them significant alone, not after the Holm adjustment)" in text


def test_a_bf16_paper_reproduction_reports_not_comparable(results):
    from uniq.repro.repro_summary import summary_markdown
    from uniq.repro.reproduce import paper_comparison

    out, _ = results
    prov = json.loads((out / "provenance.json").read_text())
    prov.update(caveat="paper profile: real CIFAR-100, ResNet-32, the paper's 350-epoch "
                "schedules.", **paper_comparison("paper", out, {"PRECISION": "bf16"}))
    (out / "provenance.json").write_text(json.dumps(prov))
    text = summary_markdown(out, out / "no-fidelity.csv")
    assert "Not comparable to the paper: paper profile" in text
    assert "precision bf16 (paper fp32)" in text
    assert "Comparable to the paper" not in text


def test_the_summary_says_what_is_missing(results):
    from uniq.repro.repro_summary import summary_facts, summary_markdown

    out, _ = results
    text = summary_markdown(out, out / "no-fidelity.csv")
    assert "No claims table was found" in text
    assert summary_facts(out, out / "no-fidelity.csv")["claims"] is None
