"""Run every notebook in order with papermill, into ``results/<profile>/``.

Executed notebooks, tables (CSV + Markdown), figures (PNG), ``provenance.json`` and an HTML
report (``index.html``, with every notebook rendered under ``html/``) land in the results
folder. A failing notebook is reported by name, the failing cell's index in the source notebook,
its first line and the error; what was produced before stays; ``keep_going`` runs the rest; the
exit code is non-zero if any notebook failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .paths import REPO, resolve_path
from .report import build_report
from .study import get_profile, parse_seeds

NOTEBOOKS_DIR = REPO / "notebooks"
PACKAGES = ("torch", "torchvision", "numpy", "scipy", "pandas", "matplotlib", "papermill",
            "pytorchcv", "onnx", "onnxruntime", "uniq")


def _lock(path: Path = REPO / "requirements.lock") -> dict:
    """``sha256:`` of the lock (line endings normalised: a CRLF checkout names the same lock),
    and the recorded packages (``PACKAGES``) installed at a version the lock pins nowhere, each
    also warned about: results made outside the lock may not reproduce. The full comparison,
    markers included, is ``python tools/environment_lock.py``."""
    if not path.is_file():
        return {"hash": None, "differences": [], "note": f"lock file {path} not found"}
    text = path.read_bytes().replace(b"\r\n", b"\n")
    pins: dict[str, set[str]] = {}
    for name, version in re.findall(r"^([\w.-]+)==([^\s;]+)", text.decode(), re.M):
        pins.setdefault(re.sub(r"[-_.]+", "-", name).lower(), set()).add(version)
    differences = [f"{name} {v} is installed (locked: {', '.join(sorted(pins[name]))})"
                   for name, v in _versions().items() if name in pins and v is not None
                   and v.split("+")[0] not in pins[name]]  # a local tag (+cpu) is no difference
    for line in differences:
        print(f"[reproduce] warning: {line}; this environment differs from requirements.lock "
              "(make reproduce uses the locked one)", file=sys.stderr, flush=True)
    return {"hash": "sha256:" + hashlib.sha256(text).hexdigest(), "differences": differences}


def notebooks(folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The sequenced notebooks: ``NN_name.ipynb``, in order of NN."""
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no NN_*.ipynb notebooks in {folder}")
    return found


def select(found: list[Path], only: list[int] | None) -> list[Path]:
    if not only:
        return found
    by_number = {int(p.name[:2]): p for p in found}
    unknown = sorted(set(only) - set(by_number))
    if unknown:
        raise ValueError(f"--only names notebooks {unknown}, which do not exist; "
                         f"there are {sorted(by_number)}")
    return [by_number[n] for n in sorted(set(only))]


def check_parameters(nb: Path, parameters: dict) -> None:
    """Unknown parameters are an error (papermill itself only warns)."""
    import papermill

    known = set(papermill.inspect_notebook(str(nb)))
    if not known:
        raise ValueError(f"{nb.name} has no cell tagged 'parameters'")
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {nb.name}; "
                         f"it takes {sorted(known)}")


def _git() -> dict:
    def git(*args: str) -> str:
        try:  # git is optional: an unpacked archive, or a machine without git
            out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        except OSError:
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or "unknown",
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _device() -> dict:
    import torch

    info = {"cuda_available": torch.cuda.is_available(), "cpu": platform.processor() or
            platform.machine(), "cpu_count": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# The kernel's own warnings (e.g. ipykernel's "running over TCP without encryption" for a kernel
# that only listens on loopback) would be printed once per notebook into the user's terminal;
# its errors still show.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]
# cells papermill adds to the executed copy: the injected parameters, and on failure an error
# banner at the top and an anchor just before the failing cell
PAPERMILL_TAGS = {"injected-parameters", "papermill-error-cell-tag"}


def quiet_shutdown_kernel_manager() -> type:
    """The kernel manager papermill runs each notebook's kernel with.

    jupyter_client interrupts a kernel (SIGINT) just before it asks it to shut down; a kernel
    still handling a message at that moment logs "KeyboardInterrupt caught in kernel" at ERROR
    level into the user's terminal, after a notebook that succeeded (a race, more likely on a
    loaded machine). papermill is done with the kernel by then, so the shutdown request is
    enough, and a kernel that does not answer it is still killed after jupyter_client's wait."""
    from jupyter_client.manager import AsyncKernelManager

    class QuietShutdownKernelManager(AsyncKernelManager):
        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return QuietShutdownKernelManager


def _first_line(source: str) -> str:
    lines = [line for line in source.splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


def source_cell_index(executed: Path, since: float = 0.0) -> int | None:
    """Index (from 0) in the SOURCE notebook of the cell that raised.

    papermill's ``cell_index`` counts the cells of its in-memory copy, which has the injected
    parameters cell, and the copy written to disk has two more (the error banner and anchor).
    Walk the written copy, skip papermill's own cells, and find the cell that holds the error
    output (or that papermill marked as raising). A copy older than ``since`` is a previous
    run's and says nothing about this failure."""
    if not executed.exists() or executed.stat().st_mtime < since:
        return None
    import nbformat

    book = nbformat.read(executed, as_version=4)
    index = 0
    for cell in book.cells:
        if PAPERMILL_TAGS & set(cell.metadata.get("tags", [])):
            continue
        failed = cell.metadata.get("papermill", {}).get("exception") is True or any(
            o.get("output_type") == "error" for o in cell.get("outputs", []))
        if failed and cell.cell_type == "code":
            return index
        index += 1
    return None


def _failure(nb: Path, executed: Path, err: Exception, since: float) -> dict:
    source = getattr(err, "source", None)
    error = f"{getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', str(err))}"
    index = source_cell_index(executed, since)
    if source is None and index is not None:  # e.g. a dead kernel: read the cell's source
        import nbformat

        cells = nbformat.read(nb, as_version=4).cells
        source = cells[index].source if index < len(cells) else ""
    return {"notebook": nb.name, "cell_index": index,
            "execution_count": getattr(err, "exec_count", None),
            "first_line": _first_line(source or ""), "error": error.strip()}


def _report_failure(f: dict, nb: Path, executed: Path) -> None:
    where = (f"cell {f['cell_index']} (counting from 0) of {nb}" if f["cell_index"] is not None
             else f"{nb} (the failing cell could not be identified)")
    first = f"\n[reproduce]   the cell starts with: {f['first_line']}" if f["first_line"] else ""
    print(f"[reproduce] FAILED {f['notebook']} at {where}, execution count "
          f"{f['execution_count']}{first}\n[reproduce]   error: {f['error']}\n"
          f"[reproduce]   the executed copy with the traceback is {executed}",
          file=sys.stderr, flush=True)


INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


@contextlib.contextmanager
def inline_backend():
    """Start kernels with the backend JupyterLab gives them, whatever this process's MPLBACKEND
    (`make` exports Agg, which a kernel would inherit): a figure a notebook draws with plain
    pyplot then shows in the executed copy too. uniq's own figures show in any backend
    (``uniq.repro.figures.show``). The variable is restored afterwards."""
    before = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = INLINE_BACKEND
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = before


def reproduce(profile: str = "smoke", only: list[int] | None = None, keep_going: bool = False,
              out_dir: str | Path | None = None, parameters: dict | None = None,
              notebooks_dir: str | Path | None = None) -> int:
    """Run the notebooks; returns the process exit code (0 when every notebook succeeded)."""
    import papermill

    prof = get_profile(profile)
    out = resolve_path(out_dir or f"results/{profile}")
    out.mkdir(parents=True, exist_ok=True)
    chosen = select(notebooks(Path(notebooks_dir) if notebooks_dir else NOTEBOOKS_DIR), only)
    params = {"PROFILE": profile, "RESULTS_DIR": str(out), **(parameters or {})}
    for nb in chosen:
        check_parameters(nb, params)

    lock = _lock()
    kernel_manager = quiet_shutdown_kernel_manager()
    # Notebooks run headless here: plain progress lines, not widgets nobody will see.
    os.environ.setdefault("UNIQ_PROGRESS", "lines")
    started = datetime.now(timezone.utc).isoformat()
    status, failures = {}, []
    if prof.expected_time:
        print(f"[reproduce] {len(chosen)} notebook(s), profile {profile}: the whole profile takes "
              f"{prof.expected_time} from an empty runs folder; cached runs are not trained again",
              flush=True)
    for nb in chosen:
        t0 = time.time()
        print(f"[reproduce] {nb.name} ({profile}) ...", flush=True)
        try:
            with inline_backend():
                papermill.execute_notebook(str(nb), str(out / nb.name), parameters=params,
                                           kernel_name="python3", cwd=str(nb.parent),
                                           progress_bar=False, extra_arguments=KERNEL_ARGUMENTS,
                                           kernel_manager_class=kernel_manager)
        except Exception as err:  # noqa: BLE001 - any failure is reported, then we go on or stop
            failures.append(_failure(nb, out / nb.name, err, since=t0 - 1))
            status[nb.name] = {"ok": False, "seconds": round(time.time() - t0, 1)}
            _report_failure(failures[-1], nb, out / nb.name)
            if not keep_going:
                break
            continue
        status[nb.name] = {"ok": True, "seconds": round(time.time() - t0, 1)}
        print(f"[reproduce] {nb.name} done in {status[nb.name]['seconds']}s", flush=True)

    for nb in chosen:
        status.setdefault(nb.name, {"ok": False, "skipped": True})
    notebook_facts = out / "notebooks.json"
    provenance = {
        "profile": profile,
        "profile_settings": prof.__dict__,
        "dataset": prof.dataset,
        "caveat": prof.caveat(),
        "comparable_to_paper": prof.comparable,
        "differs_from_paper": prof.paper_differences(),
        "parameters": params,
        "seeds": {"quantized_runs": list(parse_seeds(params["SEEDS"])) if params.get("SEEDS")
                  not in (None, "None", "") else list(prof.seeds), "full_precision_run": 0,
                  "note": "every run's seed is in its config.json"},
        "git": _git(),
        "lock": lock,
        "versions": _versions(),
        "device": _device(),
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(),
        "notebooks": status,
        "failures": failures,
        "notebook_records": json.loads(notebook_facts.read_text())
        if notebook_facts.exists() else {},
        "command": " ".join(sys.argv),
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str))
    report_failed = False
    try:
        index = build_report(out, Path(notebooks_dir) if notebooks_dir else NOTEBOOKS_DIR)
        print(f"[reproduce] report: {index} (open it in a browser)", flush=True)
    except Exception as err:  # noqa: BLE001 - the notebooks' results stay; say what went wrong
        report_failed = True
        print(f"[reproduce] could not write the HTML report: {type(err).__name__}: {err}; "
              f"retry with `python -m uniq.repro.report {out}`", file=sys.stderr, flush=True)
    print(f"[reproduce] results in {out}; {len(failures)} notebook(s) failed", flush=True)
    return 1 if failures or report_failed else 0
