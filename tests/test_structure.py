"""The package's structure: the quantizer core imports neither the deployment nor the
reproduction, and inside the reproduction imports only go down (checked by import-linter, which
can fail: see the planted imports), the CLI imports a command's modules only when it runs, and a
run resolves its config once."""

import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, env, tiny

LINT = "from importlinter.cli import lint_imports; raise SystemExit(lint_imports(no_cache=True))"


def _lint(root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, capture_output=True,
                          text=True, timeout=300, env={**env(), "PYTHONPATH": str(root)})


def test_imports_only_go_down():
    out = _lint(REPO)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "3 kept, 0 broken" in out.stdout


@pytest.mark.parametrize("module, planted, edge", [
    ("mse.py", "from .repro.study import PROFILES", "uniq.mse -> uniq.repro.study"),
    ("deploy/integer.py", "from ..repro.runs import Run", "uniq.deploy.integer -> uniq.repro.runs"),
    ("repro/config.py", "from .study import PROFILES", "uniq.repro.config -> uniq.repro.study"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, planted, edge):
    """The same check on a copy of the package with one import planted against a contract
    (inside a function: those count too)."""
    shutil.copytree(REPO / "uniq", tmp_path / "uniq",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "uniq" / module).open("a") as f:
        f.write(f"\n\ndef _planted():\n    {planted}\n\n    return None\n")
    out = _lint(tmp_path)
    assert out.returncode == 1
    assert edge in out.stdout


def test_train_help_does_not_import_the_engine():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "uniq", "train", "--help"],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--bits" in out.stdout
    modules = set(re.findall(r"\|\s*(uniq(?:\.\w+)*)\s*$", out.stderr, re.M))
    modules.add("uniq.repro.cli")  # run by runpy, not listed by -X importtime
    assert "uniq.repro.config" in modules
    assert not modules & {"uniq.repro.train", "uniq.repro.study", "uniq.deploy"}, sorted(modules)


def test_a_run_resolves_its_config_once(tmp_path, monkeypatch):
    """``fit`` resolves a config once; key, label and run directory reuse that resolution."""
    from uniq.repro.config import RunConfig
    from uniq.repro.train import fit

    fit(tiny(tmp_path, bits=32, epochs=1), quiet=True)  # the parent, trained beforehand
    resolved = RunConfig.resolved
    calls = []

    def counting(self):
        if not self.is_resolved:
            calls.append(self.bits)
        return resolved(self)

    monkeypatch.setattr(RunConfig, "resolved", counting)
    run = fit(tiny(tmp_path, bits=2, epochs=1), quiet=True)
    assert run.finished and calls.count(2) == 1


def test_a_resolved_config_is_immutable(tmp_path):
    import dataclasses

    cfg = tiny(tmp_path, bits=2).resolved()
    assert cfg.resolved() is cfg and cfg.key() == tiny(tmp_path, bits=2).key()
    with pytest.raises(dataclasses.FrozenInstanceError, match="immutable"):
        cfg.epochs = 3
    assert dataclasses.replace(cfg, epochs=3).key() != cfg.key()


RUN_FILES = ("config.json", "result.json", "metrics.csv", "dynamics.csv", "checkpoint.pt",
             "model.pt")


@pytest.mark.parametrize("notebook", sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb")))
def test_a_notebook_imports_at_most_three_package_modules_and_reads_no_run_file(notebook):
    import nbformat

    nb = nbformat.read(REPO / "notebooks" / notebook, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    modules = {a or b for a, b in re.findall(r"^\s*(?:import (uniq[\w.]*)|from (uniq[\w.]*) "
                                             r"import)", code, re.M)}
    modules -= {"uniq.repro.exercises"}  # the exercises' checkers, not the notebook's API
    assert modules and len(modules) <= 3, sorted(modules)
    assert not [name for name in RUN_FILES if name in code]
    assert "json.load" not in code and "read_csv" not in code


def _words_in_strings(source: str) -> int:
    """Words of prose inside string literals of a code cell (f-string text included), the way a
    reader counts them: runs of letters, in strings of five or more words."""
    import ast
    import io
    import tokenize

    words = 0
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return 0
    for tok in tokens:
        if tok.type == tokenize.STRING:
            try:
                text = str(ast.literal_eval(tok.string))
            except (ValueError, SyntaxError):  # an f-string: its text without the expressions
                text = re.sub(r"\{[^{}]*\}", "", re.sub(r"^[A-Za-z]*(['\"]+)|['\"]+$", "",
                                                       tok.string))
        elif tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):  # Python 3.12+
            text = tok.string
        else:
            continue
        n = len(re.findall(r"[A-Za-z][A-Za-z'-]*", text))
        words += n if n >= 5 else 0
    return words


@pytest.mark.parametrize("notebook", sorted((REPO / "notebooks").glob("[0-9]*.ipynb")),
                         ids=lambda p: p.stem)
def test_notebook_code_cells_hold_little_prose(notebook):
    """Explanations live in markdown cells; a code cell prints only sentences that carry a
    computed number (at most 40 words of prose in its strings)."""
    import json

    cells = json.loads(notebook.read_text())["cells"]
    heavy = {i: _words_in_strings("".join(c["source"])) for i, c in enumerate(cells)
             if c["cell_type"] == "code"}
    assert max(heavy.values()) <= 40, {i: n for i, n in heavy.items() if n > 40}


def test_the_prose_counter_counts_prose():
    assert _words_in_strings('print("one two three four five six")') == 6
    assert _words_in_strings('x = f"{a} is the value of the quantity here"') == 7
    assert _words_in_strings('d = {"a": 1, "b": 2}') == 0
