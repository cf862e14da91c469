"""Development tool: the locked environment, and how the running one differs from it.

``requirements.lock`` (at the repository root, next to ``pyproject.toml``) pins every package
the project, its notebooks and its tests use, for every supported Python and platform (its lines
carry environment markers). ``make test`` / ``make reproduce`` install exactly it into ``.venv``.
``python tools/environment_lock.py`` prints :func:`lock_differences`: how the running
interpreter's versions differ from the lock (someone who ``pip install``-ed the package into
their own environment gets the compatible ranges of ``pyproject.toml``, which may well differ).
``tools/write_environment_yml.py`` writes ``environment.yml`` from it. The runtime
(``uniq.repro.reproduce``) records the lock's hash itself, with the same normalisation as
:func:`lock_hash`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

try:  # packaging is in the lock; pip vendors a copy for environments without it
    from packaging.markers import Marker
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import SpecifierSet
except ImportError:  # pragma: no cover - only outside the locked environment
    from pip._vendor.packaging.markers import Marker
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCK_FILE = REPO_ROOT / "requirements.lock"
PROJECT = "uniq"


@dataclass(frozen=True)
class LockedPackage:
    """One line of the lock: ``name==version ; marker`` (the marker may be empty)."""

    name: str
    version: str
    marker: str = ""

    def applies(self, environment: dict[str, str] | None = None) -> bool:
        """Whether the line's marker holds for ``environment`` (default: this interpreter)."""
        return not self.marker or Marker(self.marker).evaluate(environment)


def canonical_name(name: str) -> str:
    """PEP 503 normalised name: ``Foo_Bar.baz`` and ``foo-bar-baz`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str | Path = LOCK_FILE) -> list[LockedPackage]:
    """Every pinned line of a ``pip-compile``/``uv pip compile`` lock file.

    Comments (``# via ...``), options (``--index-url``) and blank lines are skipped; any other
    line that is not an exact ``==`` pin is an error, because a lock must not leave a choice.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"lock file {path} not found; it ships with the repository (run from a checkout, or "
            f"regenerate it with `make lock`, docs/environment.md)")
    packages = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as err:
            raise ValueError(f"{path}:{number}: not a requirement line ({err}): {raw!r}") from err
        pins = [s for s in req.specifier if s.operator == "=="]
        if len(pins) != 1 or len(req.specifier) != 1:
            raise ValueError(f"{path}:{number}: {raw!r} is not an exact '==' pin; regenerate the "
                             f"lock with `make lock` (docs/environment.md)")
        packages.append(LockedPackage(canonical_name(req.name), pins[0].version,
                                      str(req.marker) if req.marker else ""))
    return packages


def locked_versions(path: str | Path = LOCK_FILE,
                    environment: dict[str, str] | None = None) -> dict[str, str]:
    """``{name: version}`` of the lock lines whose markers hold here (or in ``environment``)."""
    versions: dict[str, str] = {}
    for package in read_lock(path):
        if package.applies(environment):
            if package.name in versions and versions[package.name] != package.version:
                raise ValueError(f"{path}: {package.name} is pinned to both "
                                 f"{versions[package.name]} and {package.version} here")
            versions[package.name] = package.version
    return versions


def lock_hash(path: str | Path = LOCK_FILE) -> str:
    """``"sha256:<hex>"`` of the lock file, line endings normalised (a Windows checkout that
    converts them to CRLF still names the same lock)."""
    path = Path(path)
    if not path.is_file():
        read_lock(path)  # raises the FileNotFoundError with its advice
    text = path.read_bytes().replace(b"\r\n", b"\n")
    return "sha256:" + hashlib.sha256(text).hexdigest()


def installed_version(name: str) -> str | None:
    """The version of the installed distribution ``name``, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _project_requirements(lock_path: Path) -> list[str]:
    """The project's own dependencies: from the ``pyproject.toml`` beside the lock, else from the
    installed ``uniq`` distribution's metadata."""
    pyproject = lock_path.parent / "pyproject.toml"
    if pyproject.is_file():
        try:
            import tomllib
        except ImportError:  # Python 3.10: tomli is in the lock there
            try:
                import tomli as tomllib
            except ImportError:
                tomllib = None
        if tomllib is not None:
            with pyproject.open("rb") as f:
                return list(tomllib.load(f).get("project", {}).get("dependencies", []))
    try:
        return list(importlib.metadata.requires(PROJECT) or [])
    except importlib.metadata.PackageNotFoundError:
        return []


def runtime_closure(lock_path: str | Path = LOCK_FILE) -> set[str]:
    """Names of the packages the results can depend on: the project's dependencies (no extras)
    and, recursively, the dependencies of those that are installed."""
    environment = {"extra": ""}  # requirements behind an extra do not count
    todo = list(_project_requirements(Path(lock_path)))
    seen: set[str] = set()
    while todo:
        try:
            req = Requirement(todo.pop())
        except InvalidRequirement:
            continue
        name = canonical_name(req.name)
        if name in seen or (req.marker and not req.marker.evaluate(environment)):
            continue
        seen.add(name)
        try:
            todo.extend(importlib.metadata.requires(name) or [])
        except importlib.metadata.PackageNotFoundError:
            pass  # missing: reported by lock_differences; its own dependencies are unknown
    return seen


def lock_differences(path: str | Path = LOCK_FILE, scope: str = "runtime") -> list[str]:
    """How the running environment differs from the lock, one sentence per package, sorted.

    ``scope="runtime"`` (default) looks at what the results can depend on (the project's
    dependencies and theirs, see :func:`runtime_closure`): a version that differs, or a package
    that is missing. ``scope="all"`` looks at every package of the lock (the test and
    notebook tools too). A local build tag does not count as a difference: ``2.14.1+cpu``
    satisfies a lock's ``2.14.1``, as it does for pip. An empty list: the environment is the
    locked one.
    """
    if scope not in ("runtime", "all"):
        raise ValueError(f"scope must be 'runtime' or 'all', got {scope!r}")
    locked = locked_versions(path)
    names = sorted(locked if scope == "all" else runtime_closure(path) & set(locked))
    differences = []
    for name in names:
        installed = installed_version(name)
        if installed is None:
            differences.append(f"{name} is not installed (locked: {locked[name]})")
        elif not SpecifierSet(f"=={locked[name]}").contains(installed, prereleases=True):
            differences.append(f"{name} {installed} is installed (locked: {locked[name]})")
    return differences


# --- environment.yml (conda users) -------------------------------------------------------------

CONDA_PYTHON = "3.11"
# Platforms a conda user may be on; a lock line goes into environment.yml when its marker holds
# for Python CONDA_PYTHON on at least one of them (pip evaluates the marker again at install).
_PLATFORMS = (
    {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
     "os_name": "posix"},
    {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64",
     "os_name": "posix"},
    {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64",
     "os_name": "posix"},
    {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64",
     "os_name": "nt"},
)


def _applies_to_python(package: LockedPackage, python: str) -> bool:
    for platform in _PLATFORMS:
        for patch in ("0", "99"):
            environment = dict(platform, python_version=python,
                               python_full_version=f"{python}.{patch}",
                               implementation_name="cpython",
                               platform_python_implementation="CPython")
            if package.applies(environment):
                return True
    return False


def environment_yml(path: str | Path = LOCK_FILE, python: str = CONDA_PYTHON) -> str:
    """The text of ``environment.yml``: conda provides Python and pip; pip installs the lock's
    lines for that Python (exact versions, markers kept) and the project, editable."""
    lines = [
        "# conda env create -f environment.yml && conda activate uniq",
        "# Generated from requirements.lock by `make lock` (tools/write_environment_yml.py):",
        "# the same exact versions, installed by pip (conda-forge's builds of torch differ from",
        "# the wheels the lock pins). A test checks that this file and the lock agree.",
        "name: uniq",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        f"  - python={python}",
        "  - pip",
        "  - pip:",
    ]
    for package in read_lock(path):
        if _applies_to_python(package, python):
            marker = f" ; {package.marker}" if package.marker else ""
            lines.append(f"      - '{package.name}=={package.version}{marker}'")
    lines.append("      - -e .")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    scope = sys.argv[1] if len(sys.argv) > 1 else "runtime"
    found = lock_differences(scope=scope)
    print("\n".join(found) or f"every {scope} package is at its locked version")
    sys.exit(1 if found else 0)
