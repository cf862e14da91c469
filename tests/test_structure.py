"""The package's structure: every module sits on one floor of pyproject.toml's import-linter
contract, imports only go down (checked by import-linter, which can fail: see the planted
upward import), the CLI imports a command's modules only when it runs, and a run resolves its
config once."""

import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, env, tiny

LINT = "from importlinter.cli import lint_imports; raise SystemExit(lint_imports(no_cache=True))"


def floors() -> list[list[str]]:
    text = (REPO / "pyproject.toml").read_text()
    block = text[text.index('name = "floors'):]
    block = block[block.index("["):block.index("]") + 1]
    return [[m.strip() for m in line.split("|")] for line in re.findall(r'"([^"]+)"', block)]


def test_every_module_is_on_exactly_one_floor():
    listed = [m for floor in floors() for m in floor]
    modules = {f"uniq.{p.stem}" for p in (REPO / "uniq").glob("*.py") if p.stem != "__init__"}
    modules |= {f"uniq.{p.parent.name}" for p in (REPO / "uniq").glob("*/__init__.py")}
    assert len(listed) == len(set(listed))
    assert set(listed) == modules


def _lint(root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, capture_output=True,
                          text=True, timeout=300, env={**env(), "PYTHONPATH": str(root)})


def test_imports_only_go_down():
    out = _lint(REPO)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "2 kept, 0 broken" in out.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The same check on a copy of the package with one import planted from the config floor
    up to the study floor (inside a function: those count too)."""
    shutil.copytree(REPO / "uniq", tmp_path / "uniq",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "uniq" / "config.py").open("a") as f:
        f.write("\n\ndef _planted():\n    from .study import PROFILES\n\n    return PROFILES\n")
    out = _lint(tmp_path)
    assert out.returncode == 1
    assert "uniq.config -> uniq.study" in out.stdout


def test_train_help_imports_at_most_eight_package_modules():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "uniq", "train", "--help"],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--bits" in out.stdout
    modules = set(re.findall(r"\|\s*(uniq(?:\.\w+)*)\s*$", out.stderr, re.M))
    modules.add("uniq.__main__")  # run by runpy, not listed by -X importtime
    assert "uniq.config" in modules and "uniq.train" not in modules
    assert len(modules) <= 8, sorted(modules)


def test_a_run_resolves_its_config_once(tmp_path, monkeypatch):
    """``fit`` resolves a config once; key, label and run directory reuse that resolution."""
    from uniq.config import RunConfig
    from uniq.train import fit

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
    modules -= {"uniq.exercises"}  # the exercises' checkers, not the notebook's API
    assert modules and len(modules) <= 3, sorted(modules)
    assert not [name for name in RUN_FILES if name in code]
    assert "json.load" not in code and "read_csv" not in code
