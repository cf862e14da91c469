"""Create or refresh the project's virtual environment from requirements.lock (run by make).

    python3 tools/ensure_venv.py [--venv .venv] [--check-python]

A stamp file in the environment records a hash of the lock, pyproject.toml, the interpreter's
version and this script; when it matches, the environment is current and this returns in well
under a second. Otherwise the environment is created (or refreshed in place) with the standard
library's ``venv`` and filled with ``pip install -r requirements.lock`` plus the project itself
(editable, no dependency resolution: every dependency comes from the lock).

This file runs before any dependency exists and on whatever ``python3`` the machine has, so it
uses only the standard library and parses on old Pythons, Python 2.7 included (no f-strings,
no ``raise from``), to be able to say clearly what is missing.
"""

from __future__ import print_function

import hashlib
import os
import subprocess
import sys
import time

MIN_PYTHON = (3, 10)
STAMP_NAME = "uniq-lock.stamp"
# Bump when what this script installs changes, so that existing environments are refreshed.
SCRIPT_VERSION = "1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = os.path.join(ROOT, "requirements.lock")
PYPROJECT = os.path.join(ROOT, "pyproject.toml")


class SetupError(Exception):
    """A problem with a message that says what to install or do."""


def python_problem(version_info=None, has_module=None):
    """A message saying what to install when this interpreter cannot build the environment,
    or None when it can. Arguments exist for the tests: ``version_info`` (default
    ``sys.version_info``) and ``has_module(name) -> bool``."""
    version_info = sys.version_info if version_info is None else version_info
    has_module = _importable if has_module is None else has_module
    version = ".".join(str(v) for v in tuple(version_info)[:3])
    if tuple(version_info)[:2] < MIN_PYTHON:
        return (
            "uniq needs Python {need} or newer, but {exe} is Python {have}.\n"
            "Install Python 3.10+ (python.org, pyenv, or your package manager, e.g. "
            "`sudo apt install python3.11 python3.11-venv`; on macOS `brew install "
            "python@3.11`), then run make with it: `make PYTHON=python3.11 test`."
        ).format(need="%d.%d" % MIN_PYTHON, exe=sys.executable, have=version)
    short = "%d.%d" % tuple(version_info)[:2]
    for module in ("venv", "ensurepip"):
        if not has_module(module):
            return (
                "Python {have} ({exe}) has no `{module}` module, which is needed to create the "
                "project's virtual environment.\n"
                "Install it: on Debian/Ubuntu `sudo apt install python{short}-venv`; elsewhere "
                "install Python from python.org or pyenv, which include it."
            ).format(have=version, exe=sys.executable, module=module, short=short)
    return None


def _importable(name):
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def venv_python(venv_dir):
    """The environment's interpreter (POSIX or Windows layout)."""
    if os.name == "nt":
        return os.path.join(venv_dir, "Scripts", "python.exe")
    return os.path.join(venv_dir, "bin", "python")


def stamp(lock=LOCK, pyproject=PYPROJECT):
    """What the environment must have been built from to be current."""
    digest = hashlib.sha256()
    for path in (lock, pyproject):
        if not os.path.isfile(path):
            raise SetupError("{} is missing: run make from a complete checkout of the "
                             "repository".format(path))
        with open(path, "rb") as f:
            digest.update(f.read().replace(b"\r\n", b"\n"))
    # the interpreter's version, not its path: the same Python reached by another path (a pyenv
    # shim, a symlink) must not rebuild the environment, another version must
    digest.update(sys.version.encode())
    digest.update(SCRIPT_VERSION.encode())
    return digest.hexdigest()


def is_current(venv_dir, expected):
    path = os.path.join(venv_dir, STAMP_NAME)
    if not (os.path.isfile(venv_python(venv_dir)) and os.path.isfile(path)):
        return False
    with open(path) as f:
        return f.read().strip() == expected


def _run(command, what):
    print("+ " + " ".join(command))
    sys.stdout.flush()
    code = subprocess.call(command, cwd=ROOT)
    if code != 0:
        raise SetupError(
            "{what} failed (exit {code}); pip's message is above. Offline? pip needs its "
            "package index, or a local wheel store configured in pip.conf (find-links). "
            "A half-built environment is rebuilt on the next run; `make clean-venv` removes "
            "it.".format(what=what, code=code))


def _same_interpreter(venv_dir):
    """Whether the existing environment was made by this interpreter version."""
    cfg = os.path.join(venv_dir, "pyvenv.cfg")
    if not os.path.isfile(cfg):
        return False
    with open(cfg) as f:
        for line in f:
            key, _, value = line.partition("=")
            if key.strip() in ("version", "version_info"):
                return value.strip().startswith("%d.%d." % sys.version_info[:2])
    return False


def ensure(venv_dir):
    """Make ``venv_dir`` the locked environment; returns True when it had to (re)build."""
    expected = stamp()
    if is_current(venv_dir, expected):
        print("{} is current (built from requirements.lock)".format(venv_dir))
        return False
    problem = python_problem()
    if problem:
        raise SetupError(problem)
    import venv

    start = time.time()
    fresh = not (os.path.isfile(venv_python(venv_dir)) and _same_interpreter(venv_dir))
    print("{} {} from requirements.lock with Python {} ...".format(
        "Creating" if fresh else "Refreshing", venv_dir, sys.version.split()[0]))
    if fresh:
        try:
            venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
        except (OSError, subprocess.CalledProcessError) as err:
            # no `raise ... from err`: this file must parse on Python 2 to say it is too old
            raise SetupError(  # noqa: B904
                "could not create the virtual environment {} ({}). On Debian/Ubuntu install "
                "`python{}.{}-venv`.".format(venv_dir, err, *sys.version_info[:2]))
    python = venv_python(venv_dir)
    stamp_path = os.path.join(venv_dir, STAMP_NAME)
    if os.path.exists(stamp_path):
        os.remove(stamp_path)  # an interrupted refresh must not look current
    _run([python, "-m", "pip", "install", "--disable-pip-version-check", "-r", LOCK],
         "installing requirements.lock")
    # The project itself: editable, so the checkout is what runs; no dependency resolution, so
    # nothing outside the lock gets in; no build isolation, so the lock's setuptools builds it
    # (offline too).
    _run([python, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps",
          "--no-build-isolation", "-e", ROOT], "installing the project (editable)")
    with open(stamp_path, "w") as f:
        f.write(expected + "\n")
    print("{} is ready ({:.0f} s)".format(venv_dir, time.time() - start))
    return True


def main(argv=None):
    args = list(sys.argv[1:] if argv is None else argv)
    venv_dir = os.path.join(ROOT, ".venv")
    if "--check-python" in args:
        problem = python_problem()
        if problem:
            sys.stderr.write("\nerror: " + problem + "\n\n")
            return 2
        return 0
    if "--venv" in args:
        i = args.index("--venv")
        if i + 1 >= len(args):
            sys.stderr.write("error: --venv needs a directory\n")
            return 2
        venv_dir = os.path.abspath(args[i + 1])
    try:
        ensure(venv_dir)
    except SetupError as err:
        sys.stderr.write("\nerror: {}\n\n".format(err))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
