"""The smoke reproduction end to end (all notebooks through papermill) and the runner's errors."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from uniq.repro.paper import paper_tables
from uniq.repro.reproduce import notebooks, reproduce

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPLBACKEND", "Agg")  # as `make reproduce` exports it
        code = reproduce("smoke", out_dir=tmp / "results",
                         parameters={"RUNS_DIR": str(tmp / "runs")})
    return code, tmp / "results"


def inline_images(executed: Path) -> list[str]:
    """The image/png outputs of an executed notebook, each as the figure file it shows (its
    ``uniq_figure`` metadata; "?" for an image that names none)."""
    book = nbformat.read(executed, as_version=4)
    return [o.get("metadata", {}).get("image/png", {}).get("uniq_figure", "?")
            for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]


def test_every_notebook_runs(smoke):
    code, out = smoke
    assert code == 0
    for nb in notebooks():
        executed = nbformat.read(out / nb.name, as_version=4)
        assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")


def test_every_table_has_its_rows_and_columns(smoke):
    _, out = smoke
    paper = paper_tables()
    expected_rows = {2: int((paper.table == 2).sum()), 3: int((paper.table == 3).sum()),
                     4: 8, 5: 8, 6: 10}
    for table, rows in expected_rows.items():
        df = pd.read_csv(out / f"table{table}.csv")
        assert len(df) == rows, table
        assert {"top1", "paper_top1", "diff", "profile", "dataset"} <= set(df.columns), table
        assert (out / f"table{table}.md").exists()
    for table in (4, 5, 6):
        df = pd.read_csv(out / f"table{table}.csv")
        assert df.top1.notna().all() and (df.dataset == "synthetic").all()
        assert not df.comparable_to_paper.any() and (df.profile == "smoke").all()
        assert "NOT comparable" in (out / f"table{table}.md").read_text()
    t5 = pd.read_csv(out / "table5.csv")
    assert sorted(t5.init.astype(str).unique()) == ["0.1", "0.2", "LSQ", "MSE"]
    # every seed's value is kept; the table shows mean, sd, n and the interval of the diff
    seeds = pd.read_csv(out / "table4_seeds.csv")
    assert len(seeds) == 1 + 7 * 2 and set(seeds.seed) == {0, 1}
    t4 = pd.read_csv(out / "table4.csv")
    assert {"n", "top1_final", "top1_final_sd", "top1_best", "diff_ci_low", "diff_ci_high",
            "diff_uses", "precision"} <= set(t4.columns)
    assert (t4[t4.method != "FP"].n == 2).all() and (t4.precision == "fp32").all()
    assert t4[t4.method != "FP"].diff_ci_low.notna().all()


def test_the_claims_table_has_a_verdict_for_every_claim(smoke):
    from uniq.repro.claims import load_claims

    _, out = smoke
    claims = pd.read_csv(out / "claims.csv")
    assert len(claims) == len(load_claims())
    verdicts = claims.verdict.str.split(" ").str[0]
    assert set(verdicts) <= {"holds", "contradicted", "inconclusive", "not"}
    # ImageNet's claims need ImageNet runs; Figure 4's need runs as long as the paper's first
    # 30 epochs mapped onto the profile (smoke's 2-epoch runs are shorter): both "not run"
    not_run = claims.a.str.startswith(("t2/", "f4/"))
    cifar = claims[~not_run]
    assert (cifar.n_a == 2).all() and not (verdicts[cifar.index] == "not").any()
    assert claims[not_run].verdict.str.startswith("not run").all()
    assert claims.a.str.startswith("f4/").sum() == 2
    assert not claims.comparable_to_paper.any()
    assert (out / "claims.png").stat().st_size > 10_000


def test_table1_in_the_results_matches_the_paper(smoke):
    _, out = smoke
    t1 = pd.read_csv(out / "table1.csv")
    printed = t1[t1.bits <= 4]
    assert len(printed) == 4
    for tag in ("w", "a"):
        assert (printed[f"step_{tag}"] - printed[f"step_{tag}_paper"]).abs().max() <= 0.001
        assert (printed[f"sqnr_{tag}_db"] - printed[f"sqnr_{tag}_db_paper"]).abs().max() <= 0.05


def test_figures_and_summary_exist(smoke):
    _, out = smoke
    for name in ("figure1", "figure3", "figure4", "fp_training", "quantizers_transfer",
                 "mse_distortion_curves"):
        path = out / f"{name}.png"
        assert path.exists() and path.stat().st_size > 10_000, name
    summary = pd.read_csv(out / "summary.csv")
    assert {1, 4, 5, 6} <= set(summary.table)


@pytest.mark.slow
def test_every_figure_file_is_shown_inline_once(smoke):
    """Under MPLBACKEND=Agg (as `make` runs it), each figure a notebook writes is displayed in
    the executed notebook, once, as that very file."""
    _, out = smoke
    shown = {nb.name: inline_images(out / nb.name) for nb in notebooks()}
    everything = sorted(name for names in shown.values() for name in names)
    files = sorted(p.name for p in out.glob("*.png"))
    assert len(files) >= 10 and everything == files, shown
    assert len(shown["01_quantizers.ipynb"]) == 3


@pytest.mark.slow
def test_a_pyplot_figure_after_a_uniq_figure_still_shows(tmp_path, monkeypatch):
    """In a kernel started with MPLBACKEND=Agg in the environment: a uniq figure, then a plain
    pyplot figure; each shows once, in its own cell."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "01_figures.ipynb", "import uniq.repro.figures as P\n"
              "fig = P.transfer_curves()\nP.show(fig)")
    book = nbformat.read(nbs / "01_figures.ipynb", as_version=4)
    book.cells.append(nbformat.v4.new_code_cell(
        "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([0, 1])\n"
        "print(plt.get_backend())"))
    nbformat.write(book, nbs / "01_figures.ipynb")
    assert reproduce("smoke", out_dir=tmp_path / "out", notebooks_dir=nbs) == 0
    executed = nbformat.read(tmp_path / "out" / "01_figures.ipynb", as_version=4)
    images = [sum("image/png" in o.get("data", {}) for o in c.get("outputs", []))
              for c in executed.cells if c.cell_type == "code"]
    assert images[-3:] == [1, 0, 1], images  # the uniq cell, print('the cell after'), pyplot
    assert "inline" in executed.cells[-1].outputs[0].text
    assert os.environ["MPLBACKEND"] == "Agg"  # the runner's own environment is left as it was


def test_provenance_is_complete(smoke):
    _, out = smoke
    p = json.loads((out / "provenance.json").read_text())
    assert p["profile"] == "smoke" and p["dataset"] == "synthetic"
    assert len(p["git"]["commit"]) == 40 or p["git"]["commit"] == "unknown"
    for pkg in ("torch", "torchvision", "papermill", "pytorchcv", "python"):
        assert p["versions"][pkg]
    assert "cuda_available" in p["device"] and p["parameters"]["PROFILE"] == "smoke"
    assert p["seeds"]["quantized_runs"] == [0, 1] and p["failures"] == []
    assert p["lock"]["hash"].startswith("sha256:")
    assert all(v["ok"] for v in p["notebooks"].values()) and len(p["notebooks"]) == len(notebooks())
    assert "04_table4_figure3" in p["notebook_records"]


# what a cell shows when it ends with an expression whose value nobody wanted to see
REPR_ECHO = re.compile(r"^(PosixPath\(|WindowsPath\(|<Figure|\[<matplotlib|<matplotlib"
                       r"|<[\w.]+ object at 0x)")


def test_executed_notebooks_show_no_warnings_errors_or_stray_values(smoke):
    _, out = smoke
    problems = []
    for nb in notebooks():
        executed = nbformat.read(out / nb.name, as_version=4)
        for index, cell in enumerate(executed.cells):
            for output in cell.get("outputs", []):
                where = f"{nb.name} cell {index}"
                kind = output.get("output_type")
                if kind == "stream" and output.get("name") == "stderr" and (
                        "Warning" in output.get("text", "")):
                    problems.append(f"{where}: warning on stderr: {output['text'][:200]}")
                if kind == "error":
                    problems.append(f"{where}: error {output.get('ename')}")
                data = output.get("data", {})
                if any(m.startswith("application/vnd") and "error" in m for m in data):
                    problems.append(f"{where}: error output {sorted(data)}")
                if kind == "execute_result" and REPR_ECHO.match(data.get("text/plain", "")):
                    problems.append(f"{where}: stray value {data['text/plain'][:80]}")
    assert problems == []


def test_the_report_of_the_smoke_run_opens_offline(smoke):
    from test_report import check_page, parse

    _, out = smoke
    index = out / "index.html"
    assert index.exists()
    links = {value for _, _, value in parse(index).links}
    for name in ("table1", "table4", "table5", "table6", "summary"):
        assert f"{name}.csv" in links, name
    for png in out.glob("*.png"):
        assert png.name in links, png.name
    for nb in notebooks():
        assert f"html/{nb.stem}.html" in links, nb.name
    # the notebooks' links into the repository (e.g. ../docs/) are checked by test_report.py;
    # here, every page is checked for external fetches and for links inside the results folder
    pages = [index, *(out / "html").glob("*.html")]
    problems = [p for page in pages for p in check_page(page, out)
                if "does not exist" not in p or str(out.resolve()) in p.split("->")[-1]]
    assert problems == []
    text = index.read_text()
    assert "NOT comparable" in text and "provenance.json" in text
    assert "ResNet-32 on CIFAR-100" not in (out / "table4.md").read_text()


def test_committed_notebooks_carry_no_outputs():
    for nb in notebooks():
        book = nbformat.read(nb, as_version=4)
        for cell in book.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, nb.name
        tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, nb.name


def _notebook(path, code):
    book = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('PROFILE = "smoke"\nRESULTS_DIR = None')
    params.metadata["tags"] = ["parameters"]
    book.cells = [params, nbformat.v4.new_markdown_cell("# a heading"),
                  nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell(code),
                  nbformat.v4.new_code_cell("print('the cell after')")]
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    nbformat.write(book, path)


@pytest.fixture
def broken(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "01_fine.ipynb", "print('fine')")
    _notebook(nbs / "02_broken.ipynb",
              "y = 2  # the failing cell\nraise RuntimeError('deliberate failure')")
    _notebook(nbs / "03_after.ipynb", "print('after')")
    return nbs


@pytest.mark.slow
def test_a_failing_notebook_is_reported_and_exits_non_zero(broken, tmp_path, capsys):
    out = tmp_path / "out"
    assert reproduce("smoke", out_dir=out, notebooks_dir=broken) == 1
    err = capsys.readouterr().err
    assert "FAILED 02_broken.ipynb at cell" in err and "deliberate failure" in err
    p = json.loads((out / "provenance.json").read_text())
    failure = p["failures"][0]
    assert failure["notebook"] == "02_broken.ipynb"
    # the oracle: the position of the raising cell in the source notebook, although the executed
    # copy has papermill's injected-parameters cell, error banner and anchor in front of it
    source = nbformat.read(broken / "02_broken.ipynb", as_version=4)
    failing = next(i for i, c in enumerate(source.cells) if "raise" in c.source)
    executed = nbformat.read(out / "02_broken.ipynb", as_version=4)
    assert len(executed.cells) == len(source.cells) + 3  # so the executed index would be off
    assert failure["cell_index"] == failing
    assert failure["first_line"] == source.cells[failing].source.splitlines()[0]
    assert failure["error"] == "RuntimeError: deliberate failure"
    # code cells before it ran once each: parameters, injected parameters, "x = 1", the failing one
    assert failure["execution_count"] == 4
    assert f"cell {failing} (counting from 0)" in err and "y = 2  # the failing cell" in err
    report = (out / "index.html").read_text()  # the report is written after a failure too
    assert f"02_broken.ipynb failed at cell {failing}" in report
    assert (out / "html" / "02_broken.html").exists()
    assert p["notebooks"]["03_after.ipynb"]["skipped"]
    assert (out / "01_fine.ipynb").exists() and (out / "02_broken.ipynb").exists()
    assert not (out / "03_after.ipynb").exists()

    cli = subprocess.run([sys.executable, "-m", "uniq", "reproduce", "--profile", "smoke",
                          "--notebooks-dir", str(broken), "--out-dir", str(tmp_path / "o2"),
                          "--keep-going"], capture_output=True, text=True, cwd=REPO)
    assert cli.returncode == 1 and "02_broken.ipynb" in cli.stderr
    assert (tmp_path / "o2" / "03_after.ipynb").exists()  # --keep-going ran the rest


def test_unknown_parameters_and_notebooks_are_errors(broken, tmp_path):
    with pytest.raises(ValueError, match="unknown parameter"):
        reproduce("smoke", out_dir=tmp_path, notebooks_dir=broken, parameters={"EPOCHS": "3"})
    with pytest.raises(ValueError, match="do not exist"):
        reproduce("smoke", out_dir=tmp_path, notebooks_dir=broken, only=[7])
    with pytest.raises(ValueError, match="profile"):
        reproduce("huge", out_dir=tmp_path)


def test_a_notebook_runs_on_its_own_with_papermill(tmp_path):
    notebook = REPO / "notebooks" / "01_quantizers.ipynb"
    out = subprocess.run([sys.executable, "-m", "papermill", str(notebook),
                          str(tmp_path / "out.ipynb"), "-p", "PROFILE", "smoke",
                          "-p", "RESULTS_DIR", str(tmp_path / "res")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "res" / "quantizers_transfer.png").exists()


def test_every_notebook_takes_the_same_parameters():
    """``reproduce -p NAME=VALUE`` passes a parameter to every notebook, so they all need it."""
    import papermill

    found = {nb.name: set(papermill.inspect_notebook(str(nb))) for nb in notebooks()}
    expected = {"PROFILE", "RESULTS_DIR", "RUNS_DIR", "DATA_DIR", "DEVICE", "SEEDS", "LSQ_INIT",
                "REPORTED", "PRECISION", "JOBS"}
    assert all(params == expected for params in found.values()), found


def test_the_console_shows_progress_not_kernel_transport_warnings(broken, tmp_path, capfd):
    # the kernel writes to the terminal's file descriptors directly, hence capfd
    assert reproduce("smoke", out_dir=tmp_path / "out", notebooks_dir=broken, only=[1]) == 0
    out, err = capfd.readouterr()
    assert "01_fine.ipynb" in out and "done in" in out
    assert "without encryption" not in out + err and "IPKernelApp" not in out + err


@pytest.fixture
def fake_papermill(monkeypatch):
    """papermill.execute_notebook replaced by a copy of the notebook; the keyword arguments
    reproduce passed are returned."""
    import papermill

    seen = {}

    def fake_execute(source, target, **kwargs):
        seen.update(kwargs)
        Path(target).write_text(Path(source).read_text())

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    return seen


def test_kernels_are_shut_down_without_the_interrupt_that_logs_keyboard_interrupt(
        broken, tmp_path, fake_papermill):
    """jupyter_client sends SIGINT before a shutdown request; a kernel still in a message
    handler then logs "KeyboardInterrupt caught in kernel" into the terminal (seen in CI after a
    notebook that succeeded). ``reproduce`` hands papermill a manager that skips that interrupt
    during shutdown only."""
    import asyncio

    from jupyter_client.manager import AsyncKernelManager

    assert reproduce("smoke", out_dir=tmp_path / "out", notebooks_dir=broken, only=[1]) == 0
    manager = fake_papermill["kernel_manager_class"]
    assert issubclass(manager, AsyncKernelManager)
    km = manager()
    with pytest.raises(RuntimeError, match="No kernel is running"):  # outside a shutdown: as usual
        asyncio.run(km._async_interrupt_kernel())
    km.shutting_down = True
    asyncio.run(km._async_interrupt_kernel())  # during a shutdown: no signal, no error


@pytest.mark.parametrize("profile", ["smoke", "laptop"])
def test_the_profile_s_expected_time_is_said_before_the_first_notebook(
        broken, tmp_path, fake_papermill, capsys, profile):
    from uniq.repro.study import get_profile

    assert reproduce(profile, out_dir=tmp_path / "out", notebooks_dir=broken, only=[1]) == 0
    out = capsys.readouterr().out
    assert out.index(get_profile(profile).expected_time) < out.index("01_fine.ipynb")
