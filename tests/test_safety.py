"""Bad input against export, doctor, runs, reproduce and the report: one clear line, exit 2, no
traceback, and the runs and results folders exactly as they were (a hash of every file before
and after each case). The report is safe to open: hostile notebook content, file names and
provenance never put a script, an event attribute or a javascript: URL on a page."""

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from conftest import env

import uniq.repro.runs as RD
from uniq.repro import outputs
from uniq.repro.report import CSP, build_report
from uniq.repro.report import main as report_main
from uniq.repro.reproduce import NOTEBOOKS_DIR

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360606060000000050001a5f645400000000049454e44ae426082")


def tree_hash(*folders: Path) -> str:
    """Every file's path and bytes under ``folders`` (and which folders exist)."""
    h = hashlib.sha256()
    for folder in folders:
        h.update(f"{folder}:{folder.exists()}".encode())
        for path in sorted(folder.rglob("*")) if folder.exists() else []:
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes() if path.is_file() else b"<dir>")
    return h.hexdigest()


def _executed(path: Path, markdown: str = "# A notebook", outputs_=()) -> None:
    book = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("x = 1")
    code.outputs = list(outputs_)
    code.execution_count = 1
    book.cells = [nbformat.v4.new_markdown_cell(markdown), code]
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    book.metadata["papermill"] = {"parameters": {"PROFILE": "smoke"}}
    nbformat.write(book, path)


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A project root with a finished run, a results folder and a few other files."""
    monkeypatch.setenv("UNIQ_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "cifar" / "uniq-w2a2-0123456789ab"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": "cifar", "config": {}, "key": "0123"}))
    (run / "result.json").write_text(json.dumps({"top1_final": 50.0}))
    (run / "model.pt").write_bytes(b"weights")
    results = tmp_path / "results" / "smoke"
    results.mkdir(parents=True)
    (results / "provenance.json").write_text(json.dumps({"profile": "smoke"}))
    (results / "notebooks.json").write_text(json.dumps({"01_quantizers": {"seeds": [0]}}))
    pd.DataFrame({"bits": [2], "top1": [50.0]}).to_csv(results / "table4.csv", index=False)
    (results / "index.html").write_text("<!DOCTYPE html><title>report</title>")
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "index.html").write_text("<p>someone else's page</p>")
    return {"root": tmp_path, "run": run, "results": results}


def _call(main, args) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's own errors
        return exit_.code


def _one_clear_line(err: str, *wanted: str) -> None:
    """One line of error (after argparse's usage lines, for its own errors) that says it all."""
    lines = [line for line in err.splitlines()
             if line.strip() and not line.startswith(("usage:", " "))]
    assert "Traceback" not in err and len(lines) == 1, err
    for text in wanted:
        assert text in lines[0], (text, err)


R, S, T = "{run}", "{results}", "{root}"
CLI_CASES = [
    # export: nothing written over a run's or the results' files, flags checked first
    (["export", R, "-o", R + "/model.pt", "--integer"], "inside the run directory"),
    (["export", R, "-o", R + "/new.onnx"], "inside the run directory"),
    (["export", R, "-o", S + "/table4.csv"], "results folder"),
    (["export", R, "-o", S + "/02_mse_init.ipynb"], "names a notebook"),
    (["export", R, "-o", T + "/notes.txt"], "--force"),
    (["export", R, "-o", T + "/m.onnx", "--image-size", "100000"], "GiB"),
    (["export", R, "-o", T + "/m.onnx", "--nine-bit", "split"], "only applies with --integer"),
    (["export", R, "-o", T + "/m.onnx", "--image-size", "0"], "positive integer"),
    (["export", R, "-o", T + "/notes.txt/m.onnx"], "is a file"),
    # doctor
    (["doctor", "-o", R + "/result.json"], "inside the run directory"),
    (["doctor", "-o", S + "/provenance.json"], "results folder"),
    (["doctor", "-o", S + "/index.html"], "results folder"),
    (["doctor", "-o", T + "/notes.txt"], "--force"),
    (["doctor", "-o", T + "/d.json", "--steps", "-1"], "--steps must be"),
    (["doctor", "-o", T + "/d.json", "--budget", "-5"], "--budget must be"),
    (["doctor", "-o", T + "/d.json", "--budget", "0"], "--budget must be"),
    (["doctor", "-o", T + "/d.json", "--device", "nope"], "unknown device"),
    (["doctor", "-o", T + "/d.json", "--steps", "x"], "invalid int value"),
    # runs
    (["runs", "--runs-dir", T + "/notes.txt"], "is a file"),
    (["runs", "--data-dir", T + "/notes.txt"], "is a file"),
    (["runs", "--device", "nope"], "unknown device"),
    # reproduce: every -p value and the output folder before notebook 1 runs
    (["reproduce", "--only", "1", "-p", "SEEDS=abc"], "-p SEEDS=abc"),
    (["reproduce", "--only", "1", "-p", "SEEDS=0"], "-p SEEDS=0"),
    (["reproduce", "--only", "1", "-p", "SEEDS=1,1"], "must not repeat"),
    (["reproduce", "--only", "1", "-p", "SEEDS=-1"], "-p SEEDS=-1"),
    (["reproduce", "--only", "1", "-p", "DEVICE=nope"], "-p DEVICE=nope"),
    (["reproduce", "--only", "1", "-p", "PRECISION=fp16"], "-p PRECISION=fp16"),
    (["reproduce", "--only", "1", "-p", "LSQ_INIT=zero"], "-p LSQ_INIT=zero"),
    (["reproduce", "--only", "1", "-p", "REPORTED=top5"], "-p REPORTED=top5"),
    (["reproduce", "--only", "1", "-p", "RUNS_DIR=" + T + "/notes.txt"], "is a file"),
    (["reproduce", "--only", "1", "-p", "DATA_DIR=" + T + "/notes.txt/data"], "is a file"),
    (["reproduce", "--only", "1", "-p", "PROFILE=nope"], "unknown profile"),
    (["reproduce", "--only", "1", "--out-dir", R], "inside the run directory"),
    (["reproduce", "--only", "1", "--out-dir", T + "/other"], "holds other files"),
    (["reproduce", "--only", "1", "--out-dir", T + "/notes.txt"], "is a file"),
    (["reproduce", "--only", "1", "--out-dir", str(NOTEBOOKS_DIR)], "notebooks themselves"),
]


@pytest.mark.parametrize("args,match", CLI_CASES, ids=[" ".join(a[:3]) + f" {i}" for i, (a, _)
                                                       in enumerate(CLI_CASES)])
def test_bad_input_is_one_line_and_changes_nothing(world, args, match, capsys):
    from uniq.repro.cli import main

    filled = [a.format(**world) for a in args]
    folders = [world["root"] / "runs", world["root"] / "results", world["root"] / "other",
               NOTEBOOKS_DIR]
    before = tree_hash(*folders)
    notes = (world["root"] / "notes.txt").read_bytes()
    code = _call(main, filled)
    err = capsys.readouterr().err
    assert code == 2, (filled, err)
    _one_clear_line(err, match.format(**world))
    assert tree_hash(*folders) == before
    assert (world["root"] / "notes.txt").read_bytes() == notes
    assert not (world["root"] / "d.json").exists() and not (world["root"] / "m.onnx").exists()


def test_force_replaces_a_foreign_file_but_never_a_run_s(world):
    notes = world["root"] / "notes.txt"
    assert outputs.check_output(notes, "-o", force=True) == notes
    with pytest.raises(ValueError, match="inside the run directory"):
        outputs.check_output(world["run"] / "model.pt", "-o", force=True)
    with pytest.raises(ValueError, match="results folder"):
        outputs.check_output(world["results"] / "table4.csv", "-o", force=True)
    # a file of the command's own kind is replaced without --force
    own = world["root"] / "doctor.json"
    own.write_text(json.dumps({"machine": {}, "checks": [], "summary": {}}))
    from uniq.repro.doctor import is_doctor_report

    assert outputs.check_output(own, "-o", same_kind=is_doctor_report) == own
    assert not is_doctor_report(notes)


# --- the report's command line -----------------------------------------------------------------


def _results(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "provenance.json").write_text(json.dumps({"profile": "smoke"}))
    _executed(folder / "04_table4_figure3.ipynb")
    pd.DataFrame({"bits": [2], "top1": [50.0]}).to_csv(folder / "table4.csv", index=False)
    return folder


# Damage to one file of a results folder: the file, and what is written into it.
DAMAGE = {
    "provenance not JSON": ("provenance.json", b'{"profile": "smo'),
    "provenance a list": ("provenance.json", b"[1, 2]"),
    "provenance binary": ("provenance.json", bytes(range(256))),
    "binary CSV": ("table4.csv", bytes(range(256)) * 4),
    "empty CSV": ("table4.csv", b""),
    "claims without columns": ("claims.csv", b"x\n1\n2\n"),
    "notebook not JSON": ("05_table5.ipynb", b"this is not a notebook"),
    "notebook a JSON list": ("05_table5.ipynb", b"[]"),
}


def _damage(kind: str, folder: Path) -> str:
    """Break one file of a results folder; returns its name (what the error must name)."""
    name, content = DAMAGE[kind]
    (folder / name).write_bytes(content)
    return name


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_report_on_a_damaged_folder_is_one_line_and_writes_nothing(tmp_path, kind, capsys):
    folder = _results(tmp_path / "results" / "smoke")
    names = _damage(kind, folder)
    before = tree_hash(folder)
    assert report_main([str(folder)]) == 2
    _one_clear_line(capsys.readouterr().err, names)
    assert tree_hash(folder) == before


def test_report_on_provenance_fields_of_another_type_writes_or_says_one_line(tmp_path, capsys):
    folder = _results(tmp_path / "results" / "smoke")
    (folder / "provenance.json").write_text(json.dumps(
        {"profile": "smoke", "git": "x", "device": [1], "notebooks": [1], "failures": "x"}))
    code = report_main([str(folder)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert (code == 0 and (folder / "index.html").is_file() or
            code == 2 and len(lines) == 1 and "provenance.json" in err), err
    assert "Traceback" not in err


@pytest.mark.parametrize("setup", ["empty", "foreign page", "missing", "a file"])
def test_report_writes_only_into_a_results_folder(tmp_path, setup, capsys):
    folder = tmp_path / "folder"
    if setup != "missing":
        folder.mkdir() if setup != "a file" else folder.write_text("x")
    if setup == "foreign page":
        (folder / "index.html").write_text("<p>mine</p>")
        _executed(folder / "01_source.ipynb")
        book = json.loads((folder / "01_source.ipynb").read_text())
        book["metadata"].pop("papermill")  # a source notebook, not one reproduce executed
        (folder / "01_source.ipynb").write_text(json.dumps(book))
    before = tree_hash(tmp_path)
    assert report_main([str(folder)]) == 2
    _one_clear_line(capsys.readouterr().err, str(folder))
    assert tree_hash(tmp_path) == before


def test_report_on_an_unwritable_folder_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    folder = _results(tmp_path / "results" / "smoke")

    def read_only(real):
        def write(self, *a, **k):
            if folder in Path(self).parents:
                raise OSError(errno.EACCES, "Permission denied", str(self))
            return real(self, *a, **k)
        return write

    for method in ("write_text", "write_bytes", "mkdir", "touch"):
        monkeypatch.setattr(Path, method, read_only(getattr(Path, method)))
    before = tree_hash(folder)
    assert report_main([str(folder)]) == 2
    _one_clear_line(capsys.readouterr().err, "Permission denied", str(folder))
    assert tree_hash(folder) == before  # no temporary file left either


# --- the report is safe to open ----------------------------------------------------------------

PAYLOADS = [
    "<script>alert('md')</script>",
    "<img src=x onerror=alert('img')>",
    "<a href=\"javascript:alert('a')\">a</a>",
    "<a href=\" JaVaScRiPt:alert('case')\">b</a>",
    "<a href=\"jav&#x09;ascript:alert('tab')\">c</a>",
    "[md link](javascript:alert('mdlink'))",
    "![md image](javascript:alert('mdimg'))",
    "<svg onload=alert('svg')><script>alert('svgscript')</script></svg>",
    "<iframe src=\"data:text/html,<script>alert('frame')</script>\"></iframe>",
    "<a href=\"data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\">data</a>",
    "<img src=\"data:text/html,<script>alert('dataimg')</script>\">",
    "<div style=\"width: expression(alert('css'))\">css</div>",
    "<div style=\"background:url(javascript:alert('bg'))\">bg</div>",
    "<style>body{background:url(\"javascript:alert('style')\")}</style>",
    "<object data=\"evil.swf\"></object><embed src=\"evil.swf\">",
    "<form action=\"javascript:alert('form')\"><input type=submit></form>",
    "<base href=\"http://evil.example/\">",
    "<meta http-equiv=\"refresh\" content=\"0;url=javascript:alert('meta')\">",
    "<link rel=stylesheet href=\"http://evil.example/x.css\">",
    "<img src=\"http://evil.example/track.png\">",
    "<img src=\"../../../../etc/passwd\">",
    "<details open ontoggle=alert('toggle')>d</details>",
    "<a href=\"//evil.example/x\">protocol-relative</a>",
    "<p onmouseover=\"alert('p')\">hover</p>",
    # last: an unclosed <style> hides the rest of its cell, as it would in a browser
    "<math><mtext><table><mglyph><style><img src=x onerror=alert('mxss')>",
]
SVG = ("<svg xmlns='http://www.w3.org/2000/svg' onload=\"alert('svgout')\">"
       "<script>alert('svgout2')</script></svg>")


class Page(HTMLParser):
    """Every tag and attribute of a page (values as a browser reads them: entities decoded)."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    handle_startendtag = handle_starttag


def problems_of(page: Path) -> list[str]:
    """What could run a script or fetch something remote in ``page``."""
    parsed = Page()
    parsed.feed(page.read_text())
    problems = []
    csp = [dict(a).get("content") for t, a in parsed.tags
           if t == "meta" and (dict(a).get("http-equiv") or "").lower() ==
           "content-security-policy"]
    if csp != [CSP]:
        problems.append(f"{page.name}: Content-Security-Policy meta tag {csp}")
    for tag, attrs in parsed.tags:
        if tag in ("script", "iframe", "object", "embed", "base", "link", "form", "svg", "math"):
            problems.append(f"{page.name}: <{tag}>")
        if tag == "meta" and (dict(attrs).get("http-equiv") or "").lower() == "refresh":
            problems.append(f"{page.name}: meta refresh")
        for name, value in attrs:
            value = "".join(ch for ch in (value or "") if ch > " ").lower()
            if name.startswith("on"):
                problems.append(f"{page.name}: <{tag} {name}>")
            if name == "style":
                problems.append(f"{page.name}: <{tag} style>")
            if name in ("href", "src", "action", "data", "formaction", "xlink:href"):
                if value.startswith(("javascript:", "vbscript:", "http:", "https:", "//")):
                    problems.append(f"{page.name}: <{tag} {name}={value[:40]}>")
                if value.startswith("data:") and not (
                        tag == "img" and name == "src" and value.startswith("data:image/")):
                    problems.append(f"{page.name}: <{tag} {name}={value[:40]}>")
    return problems


def test_no_payload_puts_a_script_on_any_page(tmp_path):
    folder = tmp_path / "results" / "smoke"
    folder.mkdir(parents=True)
    hostile = "<script>alert('provenance')</script>"
    (folder / "provenance.json").write_text(json.dumps({
        "profile": hostile, "caveat": hostile, "command": hostile,
        "failures": [{"notebook": "04_table4_figure3.ipynb", "error": hostile}]}))
    html_outputs = [nbformat.v4.new_output("display_data", data={"text/html": p,
                                                                 "text/plain": "x"})
                    for p in PAYLOADS]
    extra = [nbformat.v4.new_output("display_data", data={"image/svg+xml": SVG,
                                                          "text/plain": "svg"}),
             nbformat.v4.new_output("display_data", data={"application/javascript": "alert(1)",
                                                          "text/plain": "js"}),
             nbformat.v4.new_output("display_data", data={"text/markdown": PAYLOADS[1],
                                                          "text/plain": "md"})]
    _executed(folder / "04_table4_figure3.ipynb", "\n\n".join(PAYLOADS),
              [*extra, *html_outputs])
    (folder / "javascript:alert(1).png").write_bytes(PNG)
    (folder / "figure3.png").write_bytes(PNG)
    pd.DataFrame({"method": [hostile], "top1": [1.0]}).to_csv(
        folder / 'table4" onmouseover="alert(1).csv', index=False)
    index = build_report(folder, tmp_path / "repo" / "notebooks")
    pages = [index, *sorted((folder / "html").glob("*.html"))]
    assert len(pages) == 2
    assert [p for page in pages for p in problems_of(page)] == []
    # the harmless content is still there: the figure link, escaped text, the inline images
    text = index.read_text()
    assert 'href="javascript%3Aalert%281%29.png"' in text
    assert "&lt;script&gt;alert(&#39;provenance&#39;)&lt;/script&gt;" in text
    notebook = (folder / "html" / "04_table4_figure3.html").read_text()
    assert "data:image/svg+xml;base64," in notebook  # shown as an image: it cannot run
    assert "hover" in notebook and "protocol-relative" in notebook


def test_sanitised_links_keep_the_results_and_project_files(tmp_path):
    from uniq.repro.report import sanitise

    results, project = tmp_path / "results" / "smoke", tmp_path / "repo"
    page_dir = results / "html"
    body = ('<a href="../table4.csv">t</a><a href="#x">x</a>'
            '<a href="../../../repo/docs/fidelity.md">f</a><a href="../../../elsewhere.txt">e</a>'
            '<img src="../figure3.png"><img src="../../../repo/x.png">'
            '<img src="data:image/png;base64,iVBORw0KGgo=">')
    clean = sanitise(body, page_dir, results, project)
    assert 'href="../table4.csv"' in clean and 'href="#x"' in clean
    assert 'href="../../../repo/docs/fidelity.md"' in clean
    assert "elsewhere.txt" not in clean and ">e</a>" in clean
    assert 'src="../figure3.png"' in clean and 'src="../../../repo/x.png"' not in clean
    assert 'src="data:image/png;base64,iVBORw0KGgo="' in clean


# --- atomic writes, torn files ------------------------------------------------------------------


def test_a_failed_replace_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "doctor.json"
    target.write_text("{}")

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(RD.os, "replace", refuse)
    with pytest.raises(PermissionError):
        RD.write_json_atomic({"a": 1}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doctor.json"]
    assert target.read_text() == "{}"


def test_a_torn_notebook_record_is_started_afresh_and_named(tmp_path, capsys):
    from uniq.repro.study import context, record

    ctx = context(profile="smoke", results_dir=str(tmp_path))
    (tmp_path / "notebooks.json").write_text('{"01_quantizers": {"seeds": [0')
    record(ctx, "02_mse_init", samples=3)
    assert "notebooks.json" in capsys.readouterr().out
    saved = json.loads((tmp_path / "notebooks.json").read_text())
    assert list(saved) == ["02_mse_init"] and saved["02_mse_init"]["samples"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notebooks.json"]


def test_reproduce_names_a_torn_record_and_still_writes_provenance(tmp_path, capsys):
    from uniq.repro.reproduce import _notebook_records, _start_torn_records_afresh

    (tmp_path / "notebooks.json").write_text('{"01": ')
    records = _notebook_records(tmp_path)
    assert "notebooks.json" in records["error"]
    assert "notebooks.json" in capsys.readouterr().err
    _start_torn_records_afresh(tmp_path)
    assert not (tmp_path / "notebooks.json").exists()
    assert "started afresh" in capsys.readouterr().err


# --- kill anywhere: reproduce killed at a written file, then rerun --------------------------------

PARAMETERS = ('PROFILE = "smoke"\nRESULTS_DIR = None\nRUNS_DIR = "runs"\nDATA_DIR = "data"\n'
              'DEVICE = "auto"\nSEEDS = None\nLSQ_INIT = "lsq"\nREPORTED = "top1_final"\n'
              'PRECISION = "fp32"')
WORK = """\
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import uniq.repro.study as E

ctx = E.context(profile=PROFILE, results_dir=RESULTS_DIR, runs_dir=RUNS_DIR, data_dir=DATA_DIR,
                device=DEVICE, seeds=SEEDS, lsq_init=LSQ_INIT, reported=REPORTED,
                precision=PRECISION)
n = {n}
E.save_table(ctx, pd.DataFrame({{"bits": list(range(1, n + 1)), "value": [b * 0.5 for b in
             range(1, n + 1)]}}), "mse_kill{n}", "Table {n}")
fig, ax = plt.subplots()
ax.plot(range(n + 2))
E.save_figure(ctx, fig, "mse_kill{n}")
E.record(ctx, "0{n}_kill", rows=n)
"""


def _kill_notebooks(folder: Path) -> Path:
    folder.mkdir()
    for n in (1, 2):
        book = nbformat.v4.new_notebook()
        params = nbformat.v4.new_code_cell(PARAMETERS)
        params.metadata["tags"] = ["parameters"]
        book.cells = [nbformat.v4.new_markdown_cell(f"# {n}"), params,
                      nbformat.v4.new_code_cell(WORK.format(n=n))]
        book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
        nbformat.write(book, folder / f"0{n}_kill.ipynb")
    return folder


def _snapshot(folder: Path) -> dict:
    """Every file's size and time (temporary files included: a kill mid-write is a case)."""
    seen = {}
    for path in folder.rglob("*") if folder.exists() else []:
        try:
            stat = path.stat()
        except FileNotFoundError:  # replaced or removed since it was listed
            continue
        seen[path.relative_to(folder)] = (stat.st_size, stat.st_mtime_ns)
    return seen


def _kernels_of(pid: int) -> list[int]:
    """Kernels started by process ``pid`` (jupyter_client starts them in their own session and
    names their parent in JPY_PARENT_PID)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"JPY_PARENT_PID={pid}\0".encode() in (
                    proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _reproduce(notebooks: Path, out: Path, root: Path,
               kill_at: int | None = None) -> tuple[str, int]:
    """``python -m uniq reproduce`` of the two notebooks; with ``kill_at``, SIGKILL it and its
    kernels at the ``kill_at``-th change of a file in ``out``. Returns ("killed", changes seen)
    or ("exit", its exit code)."""
    cmd = [sys.executable, "-m", "uniq", "reproduce", "--profile", "smoke", "--notebooks-dir",
           str(notebooks), "--out-dir", str(out)]
    with (root / f"{out.name}.log").open("a") as log:
        proc = subprocess.Popen(cmd, env=env(UNIQ_ROOT=str(root), MPLBACKEND="Agg"),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        seen, events = _snapshot(out), 0
        while proc.poll() is None:
            now = _snapshot(out)
            if now != seen:
                events, seen = events + 1, now
                if kill_at is not None and events >= kill_at:
                    kernels = _kernels_of(proc.pid)
                    os.killpg(proc.pid, signal.SIGKILL)
                    for pid in kernels:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    proc.wait()
                    return "killed", events
            time.sleep(0.01)
    return "exit", proc.returncode


def _results_of(out: Path) -> dict:
    """What a finished reproduce leaves, less what names a time: every table, figure and
    record, the file names, and the notebooks' statuses."""
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    content = {name: (out / name).read_bytes() for name in files
               if name.endswith((".csv", ".png")) or name.startswith("mse_")}
    provenance = json.loads((out / "provenance.json").read_text())
    return {"files": files, "content": content,
            "records": json.loads((out / "notebooks.json").read_text()),
            "notebooks": {k: v["ok"] for k, v in provenance["notebooks"].items()},
            "failures": provenance["failures"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The two notebooks, and what an uninterrupted reproduce of them leaves."""
    root = tmp_path_factory.mktemp("kill")
    notebooks = _kill_notebooks(root / "notebooks")
    assert _reproduce(notebooks, root / "reference", root) == ("exit", 0)
    want = _results_of(root / "reference")
    assert want["notebooks"] == {"01_kill.ipynb": True, "02_kill.ipynb": True}
    return root, notebooks, want


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds kernels in /proc")
@pytest.mark.parametrize("kill_at", [1, 12])  # in the first notebook, in the second
def test_reproduce_killed_at_a_written_file_then_rerun_gives_the_same_results(uninterrupted,
                                                                               kill_at):
    root, notebooks, want = uninterrupted
    out = root / f"killed{kill_at}"
    # killed where asked, not finished first
    assert _reproduce(notebooks, out, root, kill_at) == ("killed", kill_at)
    log = root / f"{out.name}.log"
    assert _reproduce(notebooks, out, root) == ("exit", 0), log.read_text()[-3000:]
    assert _results_of(out) == want
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or
                p.name.endswith((".tmp", ".lock"))]


def test_reproduce_takes_up_the_folder_of_a_run_killed_in_its_first_notebook(tmp_path):
    from uniq.repro.reproduce import check_results_folder

    notebooks = _kill_notebooks(tmp_path / "notebooks")
    out = tmp_path / "out"
    out.mkdir()
    (out / "01_kill.ipynb").write_text('{"cells": [')  # papermill's copy, torn by a kill
    check_results_folder(out, [notebooks], sorted(notebooks.glob("*.ipynb")))
    (out / "01_kill.ipynb").rename(out / "01_other.ipynb")
    with pytest.raises(ValueError, match="holds other files"):
        check_results_folder(out, [notebooks], sorted(notebooks.glob("*.ipynb")))
