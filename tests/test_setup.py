"""Set-up: the lock, pyproject's ranges and environment.yml agree; the venv script's checks and
messages; lock_hash / lock_differences; make and .ci/run plumbing (on stubs, no installs)."""

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10: tomli is in the lock there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
LINUX_311 = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
             "os_name": "posix", "python_version": "3.11", "python_full_version": "3.11.7",
             "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


E = _load_tool("environment_lock")  # development tooling, not part of the package


def _project_requirements():
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


# --- the lock, pyproject.toml and environment.yml agree ---------------------------------------


def test_environment_yml_is_the_lock_for_its_python():
    assert (ROOT / "environment.yml").read_text() == E.environment_yml(), (
        "environment.yml differs from requirements.lock: run `make lock` (or "
        "python tools/write_environment_yml.py)")


@pytest.mark.parametrize("python", ["3.10", "3.11", "3.12"])
def test_every_dependency_is_locked_within_pyprojects_range(python):
    environment = dict(LINUX_311, python_version=python, python_full_version=f"{python}.9")
    locked = E.locked_versions(environment=environment)
    for req in _project_requirements():
        name = E.canonical_name(req.name)
        assert name in locked, f"{name} (pyproject.toml) is not in requirements.lock"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"{name}: locked {locked[name]} is outside pyproject's range {req.specifier}")


def test_the_lock_keeps_the_pins_of_lock_constraints():
    """lock-constraints.txt pins what the lock must hold (torch as served on the project's
    machines); the lock and environment.yml agree with it, whatever the versions are."""
    pins = [Requirement(line.split("#")[0]) for line in
            (ROOT / "lock-constraints.txt").read_text().splitlines()
            if line.split("#")[0].strip()]
    assert {E.canonical_name(p.name) for p in pins} >= {"torch", "torchvision"}
    locked = E.locked_versions(environment=LINUX_311)
    yml = (ROOT / "environment.yml").read_text()
    for pin in pins:
        version = locked[E.canonical_name(pin.name)]
        assert pin.specifier.contains(version, prereleases=True), (pin, version)
        assert f"'{pin.name}=={version}'" in yml, pin
    # the CUDA libraries the Linux torch wheel imports are pinned too, for Linux only
    assert any(name.startswith("nvidia-") for name in locked)
    mac = dict(LINUX_311, sys_platform="darwin", platform_system="Darwin",
               platform_machine="arm64")
    assert not any(name.startswith("nvidia-") for name in E.locked_versions(environment=mac))


def test_the_lock_pins_every_line_exactly():
    packages = E.read_lock()
    assert packages and all(p.version for p in packages)
    assert "uv pip compile" in (ROOT / "requirements.lock").read_text()  # how to regenerate


def test_read_lock_refuses_a_range(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("numpy==2.0.0\n    # via x\ntorch>=2.4\n")
    with pytest.raises(ValueError, match=r"requirements.lock:3: 'torch>=2.4' is not an exact"):
        E.read_lock(lock)


def test_a_missing_lock_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="requirements.lock not found"):
        E.lock_hash(tmp_path / "requirements.lock")


# --- lock_hash and lock_differences ----------------------------------------------------------


def test_lock_hash_is_the_sha256_of_the_file_whatever_its_line_endings(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_bytes(b"numpy==2.0.0\n# via x\n")
    assert E.lock_hash(lock) == "sha256:" + hashlib.sha256(lock.read_bytes()).hexdigest()
    digest = E.lock_hash(lock)
    lock.write_bytes(b"numpy==2.0.0\r\n# via x\r\n")
    assert E.lock_hash(lock) == digest
    lock.write_bytes(b"numpy==2.0.1\n# via x\n")
    assert E.lock_hash(lock) != digest


def _fake_versions(monkeypatch, overrides):
    """importlib.metadata.version answers the locked version, except for ``overrides``
    (None = not installed)."""
    locked = E.locked_versions()
    real = importlib.metadata.version

    def version(name):
        name = E.canonical_name(name)
        if name in overrides:
            if overrides[name] is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return overrides[name]
        return locked.get(name) or real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    return locked


def test_lock_differences_names_the_packages_that_differ(monkeypatch):
    locked = _fake_versions(monkeypatch, {"numpy": "1.0.0", "tabulate": None,
                                          "torch": f"{E.locked_versions()['torch']}+cpu"})
    assert E.lock_differences() == [
        f"numpy 1.0.0 is installed (locked: {locked['numpy']})",
        f"tabulate is not installed (locked: {locked['tabulate']})",
    ]  # and a local build tag (+cpu) of the locked torch release is not a difference


def test_lock_differences_runtime_scope_ignores_the_tools(monkeypatch):
    locked = _fake_versions(monkeypatch, {"ruff": "0.0.1", "pytest": None})
    assert E.lock_differences() == []
    assert E.lock_differences(scope="all") == [
        f"pytest is not installed (locked: {locked['pytest']})",
        f"ruff 0.0.1 is installed (locked: {locked['ruff']})",
    ]
    with pytest.raises(ValueError, match="scope"):
        E.lock_differences(scope="some")


def test_provenance_records_the_tools_lock_hash_and_versions_the_lock_pins_nowhere(tmp_path,
                                                                                   capsys):
    from uniq.repro.reproduce import _lock

    assert _lock()["hash"] == E.lock_hash()
    lock = tmp_path / "requirements.lock"
    numpy, torch = importlib.metadata.version("numpy"), importlib.metadata.version("torch")
    lock.write_text(f"numpy==0.0.1 ; python_version < '3'\nnumpy=={numpy}\n"
                    f"torch=={torch.split('+')[0]}\nscipy==0.0.1\n    # via x\n")
    scipy = importlib.metadata.version("scipy")
    assert _lock(lock) == {"hash": E.lock_hash(lock), "differences": [
        f"scipy {scipy} is installed (locked: 0.0.1)"]}
    assert "warning: scipy" in capsys.readouterr().err


def test_lock_lines_for_other_platforms_do_not_count(tmp_path, monkeypatch):
    lock = tmp_path / "requirements.lock"
    lock.write_text("pytest==0.0.1 ; sys_platform == 'no-such-platform'\n"
                    f"pytest=={importlib.metadata.version('pytest')}\n")
    assert E.locked_versions(lock) == {"pytest": importlib.metadata.version("pytest")}
    assert E.lock_differences(lock, scope="all") == []


# --- tools/ensure_venv.py --------------------------------------------------------------------


def test_python_too_old_says_what_to_install():
    tool = _load_tool("ensure_venv")
    message = tool.python_problem(version_info=(3, 8, 10), has_module=lambda name: True)
    assert "3.10 or newer" in message and "3.8.10" in message
    assert "make PYTHON=python3.11" in message


@pytest.mark.parametrize("missing", ["venv", "ensurepip"])
def test_missing_venv_module_says_what_to_install(missing):
    tool = _load_tool("ensure_venv")
    message = tool.python_problem(version_info=(3, 12, 1), has_module=lambda n: n != missing)
    assert f"no `{missing}` module" in message and "apt install python3.12-venv" in message


def test_a_python_without_ensurepip_is_told_what_to_install(tmp_path):
    # Debian's python3 without python3.X-venv: the module is absent (here it fails to import)
    (tmp_path / "ensurepip.py").write_text("raise ImportError('No module named ensurepip')\n")
    done = subprocess.run([sys.executable, str(ROOT / "tools/ensure_venv.py"), "--check-python"],
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 2
    short = "{}.{}".format(*sys.version_info[:2])
    assert f"sudo apt install python{short}-venv" in done.stderr


@pytest.mark.parametrize("version, ok", [((3, 9, 18), False), ((3, 10, 0), True),
                                          ((3, 13, 1), True), ((4, 0, 0), True)])
def test_the_python_check_on_fake_interpreters(tmp_path, version, ok):
    """``--check-python`` run by interpreters that report another version (a sitecustomize
    overrides ``sys.version_info``): the verdict follows the version, not this machine."""
    (tmp_path / "sitecustomize.py").write_text(
        f"import sys\nsys.version_info = {(*version, 'final', 0)!r}\n")
    done = subprocess.run([sys.executable, str(ROOT / "tools/ensure_venv.py"), "--check-python"],
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == (0 if ok else 2), done.stderr
    assert ("3.10 or newer" in done.stderr) is not ok
    assert ("{}.{}.{}".format(*version) in done.stderr) is not ok


def test_a_current_venv_is_not_reinstalled(tmp_path, monkeypatch, capsys):
    tool = _load_tool("ensure_venv")
    venv = tmp_path / "venv"
    python = Path(tool.venv_python(str(venv)))
    python.parent.mkdir(parents=True)
    python.touch()
    (venv / tool.STAMP_NAME).write_text(tool.stamp() + "\n")

    def no_installs(*args, **kwargs):
        raise AssertionError(f"pip ran although the environment is current: {args}")

    monkeypatch.setattr(tool.subprocess, "call", no_installs)
    assert tool.ensure(str(venv)) is False
    assert "is current" in capsys.readouterr().out
    # another lock (or pyproject, or interpreter) makes it stale
    (venv / tool.STAMP_NAME).write_text("0" * 64 + "\n")
    assert not tool.is_current(str(venv), tool.stamp())


def test_a_failed_install_is_a_clear_error_and_leaves_no_stamp(tmp_path, monkeypatch):
    tool = _load_tool("ensure_venv")
    venv = tmp_path / "venv"
    python = Path(tool.venv_python(str(venv)))
    python.parent.mkdir(parents=True)
    python.touch()
    (venv / "pyvenv.cfg").write_text("version = {}.{}.{}\n".format(*sys.version_info[:3]))
    (venv / tool.STAMP_NAME).write_text("old\n")
    monkeypatch.setattr(tool.subprocess, "call", lambda *a, **k: 1)
    with pytest.raises(tool.SetupError, match=r"installing requirements.lock failed \(exit 1\)"):
        tool.ensure(str(venv))
    assert not (venv / tool.STAMP_NAME).exists()


# --- make and .ci/run ------------------------------------------------------------------------

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
def test_make_targets_build_the_venv_then_run_the_readme_commands():
    for target, command in (("test", '-m pytest -m "not slow"'), ("test-all", "-m pytest"),
                            ("reproduce", "-m uniq reproduce --profile smoke")):
        done = subprocess.run(["make", "-n", "-C", str(ROOT), target, "VENV=/nonexistent/v"],
                              capture_output=True, text=True, check=True)
        lines = done.stdout.splitlines()
        setup = next(i for i, line in enumerate(lines) if "tools/ensure_venv.py" in line)
        run = next(i for i, line in enumerate(lines) if command in line)
        assert setup < run and "/nonexistent/v/bin/python" in lines[run]


@needs_make
def test_make_without_the_python_says_what_to_install():
    done = subprocess.run(["make", "-C", str(ROOT), "venv", "PYTHON=no-such-python3"],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "'no-such-python3' was not found. Install Python 3.10 or newer" in done.stderr


def _stub_ci(tmp_path, pytest_code):
    """A git repository holding a copy of .ci/run beside a stub Makefile whose targets succeed,
    but for test, which prints its environment and exits like pytest would."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci/run", repo / ".ci/run")
    (repo / "Makefile").write_text(
        "VENV ?= .venv\nvenv:\n\tmkdir -p $(VENV)\nlint:\n\ttrue\nreproduce:\n\ttrue\n"
        "test-all:\n\ttrue\n"
        f"test:\n\tenv | sed 's/^/ENV /'; echo {pytest_code} > $(VENV)/pytest-exit-code; "
        f"exit {pytest_code}\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "stub"], check=True)
    return repo / ".ci/run"


@needs_make
@pytest.mark.parametrize("pytest_code", [0, 1, 5])
def test_ci_run_exits_with_pytests_code(tmp_path, pytest_code):
    script = _stub_ci(tmp_path, pytest_code)
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert done.returncode == pytest_code, done.stdout + done.stderr


@needs_make
def test_ci_run_works_in_a_clean_room(tmp_path):
    """Nothing of the caller's environment reaches the README's commands but pip's settings."""
    script = _stub_ci(tmp_path, 0)
    leaky = {**os.environ, "PYTHONPATH": "/leak", "VIRTUAL_ENV": "/leak", "LEAK_MARKER": "1",
             "PATH": f"/leak/bin:{os.environ['PATH']}", "PIP_FIND_LINKS": "/wheels/here"}
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=leaky)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = dict(line[4:].split("=", 1) for line in done.stdout.splitlines()
                if line.startswith("ENV ") and "=" in line)
    assert seen["PATH"] == "/usr/bin:/bin" and seen["PYTHONNOUSERSITE"] == "1"
    assert seen["HOME"] != os.environ.get("HOME") and "uniq-ci." in seen["HOME"]
    assert not {"PYTHONPATH", "VIRTUAL_ENV", "LEAK_MARKER"} & set(seen)
    assert seen["PIP_FIND_LINKS"] == "/wheels/here"
    assert str(tmp_path / "repo") not in seen.get("PWD", "")  # a fresh clone, not the checkout
    assert "[ci]   PATH=/usr/bin:/bin" in done.stdout  # the environment is printed


def test_ci_run_without_make_says_what_to_install(tmp_path):
    script = _stub_ci(tmp_path, 0)
    bin_dir = tmp_path / "bin"  # a PATH with the shell tools .ci/run uses, and no make
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "rm", "cat", "env"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env={"PATH": str(bin_dir)})
    assert done.returncode == 2
    assert "'make' is not installed" in done.stderr and "apt install make" in done.stderr
