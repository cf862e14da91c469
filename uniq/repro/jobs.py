"""Many runs at once: N worker processes on one machine (``--jobs``, ``JOBS``), or a SLURM
job-array script for a cluster (``runs --slurm``).

The runs a notebook or a profile needs are planned first (each once, with every ancestor it
starts from: the full-precision run, or the 2-bit parent of a 1-bit ImageNet run). Then up to N
train at once, each in its own worker process, which runs it exactly as its command would
(``python -m uniq train ...``, what ``runs --commands`` prints) and then takes the next; a
parent is always finished before its children start. A run on the CPU uses the thread count its
config fixes (the profile's ``threads``); on GPUs each worker sees one GPU
(``CUDA_VISIBLE_DEVICES``). The run lock (``uniq.repro.runs.RunLock``) makes a run asked for by two
processes train once.

Results do not depend on N: a run computes the same bits in its own process as in the
notebook's, on the same thread count (``uniq.repro.train.cpu_threads``). A worker that fails or is
killed loses only its own run (and the runs that start from it, which are not started); the
others finish, and the error names every failed run with the command that trains it alone.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

from .config import RunConfig, as_flags, placement
from .paths import resolve_path
from .runs import run_state

COMMAND_OF_TASK = {"cifar": "train", "imagenet": "imagenet"}
TAIL_LINES = 20
"""Lines of a failed worker's output repeated in the error (the whole output is in its log)."""


class RunsFailed(RuntimeError):
    """Some runs of a parallel batch failed; the others finished. The message names each one."""

    def __init__(self, message: str, failed: list[Job]) -> None:
        super().__init__(message)
        self.failed = failed


def parse_jobs(value: object) -> int | str:
    """``--jobs``/``JOBS``: a positive number of runs at once, or ``"auto"``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool):
        value = None  # True is not a count
    try:
        n = int(str(value).strip()) if isinstance(value, str) else int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        n = 0
    if n < 1 or (not isinstance(value, str) and n != value):
        raise ValueError(f"jobs must be a positive integer or 'auto', got {value!r} (e.g. "
                         "--jobs 2, -p JOBS=auto)")
    return n


def run_args(cfg: RunConfig) -> list[str]:
    """The ``python -m uniq`` arguments that train exactly this run: its command and every
    command-line field that differs from the default."""
    default = type(cfg)()
    changed = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.metadata.get("cli", True)
               and getattr(cfg, f.name) != getattr(default, f.name)}
    return [COMMAND_OF_TASK[cfg.task], *as_flags(changed)]


# --- how many at once -------------------------------------------------------------------------


CGROUP = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
# What one CPU worker may hold: a laptop-profile run peaks at 1.05 GB resident (PyTorch
# included), so 1.5 GiB each keeps `auto` from swapping a many-core machine with little memory.
WORKER_MEMORY = 1.5 * 2**30


def available_cpus(cgroup_root: Path = CGROUP, self_cgroup: Path = SELF_CGROUP) -> int:
    """CPU cores this process may use: its CPU set (``taskset``, a container's cpuset), and no
    more than a container's CPU quota (``docker --cpus 2`` on a 64-core host: 2)."""
    if hasattr(os, "sched_getaffinity"):
        n = max(len(os.sched_getaffinity(0)), 1)
    else:
        n = os.cpu_count() or 1
    quota = cpu_quota(cgroup_root, self_cgroup)
    return max(1, min(n, int(quota))) if quota is not None else n


def _cgroup_files(root: Path, self_cgroup: Path, v2: tuple[str, ...], v1_controller: str,
                  v1: tuple[str, ...]) -> list[list[str]]:
    """The contents of a cgroup's limit files for this process's cgroup and each parent, in
    the unified hierarchy (``v2`` files) and in the v1 ``v1_controller`` one (``v1`` files)."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    paths = {}  # "2": the unified hierarchy's path; "1": the v1 controller's
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            paths["2"] = path
        elif v1_controller in controllers.split(","):
            paths["1"] = path
    found = []
    for version, files, folder in (("2", v2, root), ("1", v1, root / v1_controller)):
        here = folder / paths.get(version, "/").strip("/")
        for d in (here, *here.parents):
            if not d.is_relative_to(folder):
                break
            try:
                found.append([(d / f).read_text().strip() for f in files])
            except (OSError, UnicodeDecodeError):
                continue
    return found


def cpu_quota(root: Path = CGROUP, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """The tightest CFS quota, in CPUs, on this process's cgroup and its parents (cgroup v2
    ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None without one."""
    limits = []
    for texts in _cgroup_files(root, self_cgroup, ("cpu.max",), "cpu",
                               ("cpu.cfs_quota_us", "cpu.cfs_period_us")):
        quota, _, period = " ".join(texts).partition(" ")
        try:
            if quota not in ("max", "-1") and float(period) > 0:
                limits.append(float(quota) / float(period))
        except ValueError:
            continue
    return min(limits) if limits else None


def available_memory(root: Path = CGROUP, self_cgroup: Path = SELF_CGROUP,
                     meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes this process can still use: the machine's ``MemAvailable`` (elsewhere half the
    physical memory), and no more than a container's memory limit less its use (cgroup v2
    ``memory.max``, v1 ``memory.limit_in_bytes``); None where none of these can be read."""
    free = []
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not free:  # not Linux (macOS): half the physical memory, a cautious guess at what is free
        try:
            free.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
        except (ValueError, OSError, AttributeError):
            pass
    for limit, used in _cgroup_files(root, self_cgroup, ("memory.max", "memory.current"),
                                     "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")):
        try:
            if limit != "max" and int(limit) < 2**60:  # v1 writes "no limit" as a huge number
                free.append(max(int(limit) - int(used), 0))
        except ValueError:
            continue
    return min(free) if free else None


def visible_gpus() -> list[str]:
    """The GPUs a worker can be given, as ``CUDA_VISIBLE_DEVICES`` entries."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
              if g.strip()]
    return listed or [str(i) for i in range(torch.cuda.device_count())]


def uses_gpus(cfg: RunConfig) -> bool:
    """Whether the run goes to a GPU chosen by ``--device auto``/``cuda`` (one per worker)."""
    return cfg.device in ("auto", "cuda") and bool(visible_gpus())


def resolve_jobs(jobs: int | str, configs: list[RunConfig]) -> int:
    """How many workers: the number asked for, or with ``auto`` one per GPU, else as many as
    the cores hold at the runs' fixed thread count (the profile picks it from the network's
    size: 1 for the small ResNet-8 profiles) and the memory holds (``WORKER_MEMORY`` each). A
    CPU run whose thread count is not fixed takes every core, so ``auto`` trains those one at a
    time. Never more than there are runs."""
    if not configs:
        return 0
    if jobs != "auto":
        return max(1, min(int(jobs), len(configs)))
    if any(uses_gpus(c) for c in configs):
        n = len(visible_gpus())
    else:
        threads = max(c.threads for c in configs)
        n = available_cpus() // threads if threads else 1
        memory = available_memory()
        if memory is not None:
            n = min(n, int(memory // WORKER_MEMORY))
    return max(1, min(n, len(configs)))


# --- the plan ----------------------------------------------------------------------------------


@dataclass
class Job:
    """One run to train in its own process."""

    cfg: RunConfig
    name: str
    parent: Path | None = None
    state: str = "waiting"  # waiting, running, done, failed, skipped
    returncode: int | None = None
    why: str = ""
    started: float = 0.0
    seconds: float = 0.0
    slot: int = -1
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir()

    @property
    def args(self) -> list[str]:
        return run_args(self.cfg)

    @property
    def command(self) -> str:
        return shlex.join(["python", "-m", "uniq", *self.args])

    @property
    def log(self) -> Path:
        return resolve_path(self.cfg.runs_dir) / "logs" / f"{self.run_dir.name}.log"


def parent_config(cfg: RunConfig) -> RunConfig | None:
    """The run this one starts from (same placement), or None."""
    init_from = cfg.resolved().init_from
    return None if init_from is None else type(cfg).from_dict({**init_from, **placement(cfg)})


def plan_jobs(configs: Iterable[RunConfig], names: dict[Path, str] | None = None) -> list[Job]:
    """The runs to train, each once, every parent (also one not asked for) before its
    children; finished runs are left out."""
    names = names or {}
    jobs: dict[Path, Job] = {}

    def add(cfg: RunConfig) -> Path | None:
        run_dir = cfg.run_dir()
        if run_dir in jobs:
            return run_dir
        if run_state(run_dir) == "done":
            return None
        parent = parent_config(cfg)
        parent_dir = add(parent) if parent is not None else None
        jobs[run_dir] = Job(cfg, names.get(run_dir, run_dir.name), parent_dir)
        return run_dir

    for c in configs:
        add(c)
    return list(jobs.values())


def levels(jobs: list[Job]) -> list[list[Job]]:
    """The jobs grouped so that every parent is in an earlier group than its children."""
    depth: dict[Path, int] = {}
    for j in jobs:  # parents come first in a plan
        depth[j.run_dir] = 0 if j.parent is None else depth[j.parent] + 1
    out: list[list[Job]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for j in jobs:
        out[depth[j.run_dir]].append(j)
    return out


# --- progress ----------------------------------------------------------------------------------

STEP_LINE = re.compile(r"^\[(?P<label>\S+) epoch (?P<epoch>\d+)/(?P<epochs>\d+)\] step "
                       r"(?P<step>\d+)/(?P<steps>\d+)")
EPOCH_LINE = re.compile(r"^\[(?P<label>\S+)\] epoch (?P<epoch>\d+)/(?P<epochs>\d+): (?P<text>.*)")


class Display:
    """Every active run at once: a tqdm bar per worker under a bar of finished runs
    (``tqdm.auto``: widgets in JupyterLab, positioned bars in a terminal), or under papermill,
    in logs and with ``UNIQ_PROGRESS=lines`` the workers' own lines as they come."""

    def __init__(self, workers: int, total: int) -> None:
        mode = os.environ.get("UNIQ_PROGRESS", "auto")
        self.quiet = mode == "none"
        interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
        self.bars = None
        if not self.quiet and mode != "lines" and interactive:
            from tqdm.auto import tqdm

            self.tqdm = tqdm
            self.overall = tqdm(total=total, desc="runs finished", unit="run", position=0)
            self.bars = [tqdm(total=1, desc=f"worker {i + 1}: idle", unit="step",
                              position=i + 1) for i in range(workers)]

    @property
    def child_interval(self) -> str:
        """How often a worker prints its progress (often enough to draw a bar)."""
        return "1" if self.bars else "10"

    def say(self, text: str) -> None:
        if self.quiet:
            return
        if self.bars:
            self.tqdm.write(text)
        else:
            print(text, flush=True)

    def started(self, job: Job) -> None:
        if self.bars:
            bar = self.bars[job.slot]
            bar.reset(total=1)
            bar.set_description(f"worker {job.slot + 1}: {job.name}")

    def line(self, job: Job, text: str) -> None:
        if not self.bars:
            self.say(text)
            return
        step, epoch = STEP_LINE.match(text), EPOCH_LINE.match(text)
        bar = self.bars[job.slot]
        if step:
            steps = int(step["steps"])
            if bar.total != int(step["epochs"]) * steps:  # a new run on this worker
                bar.reset(total=int(step["epochs"]) * steps)
            bar.n = (int(step["epoch"]) - 1) * steps + int(step["step"])
            bar.refresh()
        elif epoch:
            bar.set_postfix_str(f"epoch {epoch['epoch']}/{epoch['epochs']}: {epoch['text']}")
        elif text.startswith("error:") or "Traceback" in text:
            self.say(f"[{job.name}] {text}")

    def finished(self, job: Job) -> None:
        if self.bars:
            self.overall.update(1)
            self.bars[job.slot].set_description(f"worker {job.slot + 1}: idle")

    def close(self) -> None:
        if self.bars:
            for bar in [*self.bars, self.overall]:
                bar.close()


# --- running -----------------------------------------------------------------------------------

ENDED = "[uniq.repro.jobs] run ended with exit code "
"""What a worker prints after each run (the rest of its output is the run's own)."""


# The worker's program: ``uniq.repro.cli.jobs_worker`` (the command line's own ``main`` runs
# each run; this module sits below the command line and does not import it).
WORKER = (f"from {__name__.rsplit('.', 1)[0]}.cli import jobs_worker; "
          "raise SystemExit(jobs_worker())")


def _package_root() -> str:
    import uniq

    return str(Path(uniq.__file__).resolve().parent.parent)


@dataclass
class Worker:
    """One slot: a worker process (started when first needed, again after it died) and the
    job it is training."""

    slot: int
    gpu: str | None = None
    process: subprocess.Popen | None = None
    job: Job | None = None
    log: object = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, threads: int, interval: str, lines: queue.Queue) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH"))
                                            if p)
        env["UNIQ_PROGRESS"], env["UNIQ_PROGRESS_INTERVAL"] = "lines", interval
        env["PYTHONUNBUFFERED"] = "1"
        if threads:  # OpenMP's pool sized before PyTorch starts, too
            env["OMP_NUM_THREADS"] = str(threads)
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
        threading.Thread(target=_forward, args=(self, self.process, lines), daemon=True).start()

    def submit(self, job: Job) -> None:
        import json

        self.job, job.slot = job, self.slot
        job.log.parent.mkdir(parents=True, exist_ok=True)
        self.log = job.log.open("w")
        self.process.stdin.write(json.dumps(job.args) + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process is not None and self.process.stdin and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:  # it died
                pass


def _forward(w: Worker, process: subprocess.Popen, lines: queue.Queue) -> None:
    """A worker's output, line by line, to the scheduler; ``None`` when it ended."""
    for text in process.stdout:
        lines.put((w, text.rstrip("\n")))
    process.wait()
    lines.put((w, None))


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return {3: "exit code 3 (training diverged)", 4: "exit code 4 (run busy)",
            130: "exit code 130 (interrupted)"}.get(code, f"exit code {code}")


def failure_report(jobs: list[Job]) -> str:
    """Which runs failed, why, and the command that trains each alone."""
    failed = [j for j in jobs if j.state == "failed"]
    skipped = [j for j in jobs if j.state == "skipped"]
    done = sum(j.state == "done" for j in jobs)
    lines = [f"{len(failed)} of {len(jobs)} runs failed ({done} finished and are kept"
             + (f"; {len(skipped)} not started because a run they start from failed"
                if skipped else "") + "):"]
    for j in failed:
        last = next((t for t in reversed(j.tail) if t.strip()), "")
        lines += [f"  {j.name} ({j.run_dir.name}): {j.why}" + (f": {last}" if last else ""),
                  f"    command: {j.command}", f"    output: {j.log}"]
    for j in skipped:
        lines += [f"  {j.name} ({j.run_dir.name}): not started ({j.why})"]
    lines.append("Run again to retry them (finished runs are cached and not trained again), "
                 "or run a command above on its own to see it fail.")
    return "\n".join(lines)


def train_all(configs: Iterable[RunConfig], jobs: int | str = "auto",
              names: dict[Path, str] | None = None) -> list[Job]:
    """Train every unfinished run of ``configs`` (and the runs they start from), up to
    ``jobs`` at once in worker processes, parents before children. Returns the jobs (all
    ``done``); raises ``RunsFailed`` naming the failed runs after the others finished."""
    plan = plan_jobs(configs, names)
    if not plan:
        return []
    n = resolve_jobs(parse_jobs(jobs), [j.cfg for j in plan])
    gpus = visible_gpus() if any(uses_gpus(j.cfg) for j in plan) else []
    cpus = available_cpus()
    for j in plan:
        if not gpus and not j.cfg.threads and n > 1:
            # no fixed thread count: share the cores (the count is recorded in the run)
            j.cfg = type(j.cfg).from_dict({**j.cfg.to_dict(), "threads": max(cpus // n, 1)})
    display = Display(n, len(plan))
    workers = [Worker(i, gpus[i % len(gpus)] if gpus else None) for i in range(n)]
    lines: queue.Queue = queue.Queue()
    where = (f"one GPU each ({', '.join(gpus)})" if gpus else
             f"{plan[0].cfg.threads or 'all'} CPU thread(s) each on {cpus} core(s)")
    display.say(f"[jobs] {len(plan)} run(s), {n} at a time in worker processes, {where}")
    t_start = time.time()
    try:
        while any(j.state in ("waiting", "running") for j in plan):
            _start_ready(plan, workers, display, lines)
            _handle(lines, display, plan, timeout=0.5)
    except BaseException:
        _stop(workers, display)
        raise
    finally:
        for w in workers:
            w.close()
        display.close()
    done = sum(j.state == "done" for j in plan)
    display.say(f"[jobs] {done} of {len(plan)} run(s) finished in {time.time() - t_start:.0f}s")
    if done < len(plan):
        raise RunsFailed(failure_report(plan), [j for j in plan if j.state != "done"])
    return plan


def _start_ready(plan: list[Job], workers: list[Worker], display: Display,
                 lines: queue.Queue) -> None:
    by_dir = {j.run_dir: j for j in plan}
    for j in plan:
        if j.state != "waiting":
            continue
        parent = by_dir.get(j.parent) if j.parent else None
        if parent is not None and parent.state in ("failed", "skipped"):
            j.state, j.why = "skipped", f"the run it starts from, {parent.run_dir.name}, failed"
            display.say(f"[jobs] not starting {j.name}: {j.why}")
            continue
        if parent is not None and parent.state != "done":
            continue
        free = next((w for w in workers if w.job is None), None)
        if free is None:
            return
        if not free.alive():
            free.start(j.cfg.threads, display.child_interval, lines)
        free.submit(j)
        j.state, j.started = "running", time.time()
        running = sum(w.job is not None for w in workers)
        display.say(f"[jobs] started {j.name} ({j.run_dir.name})"
                    + (f" on GPU {free.gpu}" if free.gpu is not None else "")
                    + f"; {running} running")
        display.started(j)


def _handle(lines: queue.Queue, display: Display, plan: list[Job], timeout: float) -> None:
    """Every line the workers printed since the last call (waiting ``timeout`` for one)."""
    try:
        w, text = lines.get(timeout=timeout)
    except queue.Empty:
        return
    while True:
        job = w.job
        if text is None:  # the worker process ended
            if job is not None and w.process is not None:
                _finish(w, w.process.returncode or 1, display, plan)
            w.process = None
        elif job is not None and text.startswith(ENDED):
            _finish(w, int(text[len(ENDED):]), display, plan)
        elif job is not None:
            w.log.write(text + "\n")
            job.tail.append(text)
            if not text.startswith(("{", "}", '  "')):  # the JSON summary: in the log only
                display.line(job, text)
        try:
            w, text = lines.get_nowait()
        except queue.Empty:
            return


def _finish(w: Worker, code: int, display: Display, plan: list[Job]) -> None:
    j = w.job
    w.job = None
    w.log.close()
    j.returncode, j.seconds = code, time.time() - j.started
    if code == 0 and run_state(j.run_dir) == "done":
        j.state = "done"
    else:
        j.state = "failed"
        j.why = (_describe_exit(code) if code else
                 f"the command ended without finishing {j.run_dir}")
    finished = sum(x.state in ("done", "failed", "skipped") for x in plan)
    display.say(f"[jobs] {'finished' if j.state == 'done' else 'FAILED'} {j.name} in "
                f"{j.seconds:.0f}s" + (f" ({j.why}; output: {j.log})" if j.why else "")
                + f"; {finished} of {len(plan)} done")
    display.finished(j)


def _stop(workers: list[Worker], display: Display, grace_s: float = 30.0) -> None:
    """Interrupt the workers (a run keeps its last checkpoint), then end any that linger."""
    alive = [w for w in workers if w.alive()]
    for w in alive:
        w.process.send_signal(signal.SIGINT)
        w.close()
    deadline = time.time() + grace_s
    for w in alive:
        try:
            w.process.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            w.process.kill()
            w.process.wait()
    display.say(f"[jobs] stopped {len(alive)} worker(s); their runs' last checkpoints are kept")


# --- a cluster: SLURM job arrays ---------------------------------------------------------------


def slurm_script(configs: Iterable[RunConfig], what: str,
                 sbatch_options: str = "--cpus-per-task=8 --gres=gpu:1") -> str:
    """A bash script that submits the unfinished runs as SLURM job arrays: one array per
    level of the plan (one run per array task), each level after the one before it finished
    (``--dependency=afterok``), since its runs start from that level's weights."""
    groups = levels(plan_jobs(configs))
    total = sum(len(g) for g in groups)
    out = ["#!/bin/bash",
           f"# SLURM job arrays that train the {total} unfinished run(s) of {what}.",
           "# Submit from the login node:  bash THIS_FILE   (it calls sbatch once per level)",
           "# Each array task trains one run with `python -m uniq train ...`; a level waits",
           "# for the level before it (afterok): its runs start from those runs' weights.",
           "# Finished runs are cached, so submitting again trains only what is missing.",
           "# Resources of every task: edit SBATCH_OPTIONS (or export SBATCH_PARTITION,",
           "# SBATCH_TIMELIMIT, SBATCH_ACCOUNT, ...); UNIQ_PYTHON names the interpreter.",
           "set -euo pipefail",
           f"SBATCH_OPTIONS=({sbatch_options})",
           "previous=\"\""]
    if not total:
        out.append('echo "every run is finished; nothing to submit"')
    for level, group in enumerate(groups):
        after = '${previous:+--dependency=afterok:$previous}'
        out += ["", f"# level {level}: {len(group)} run(s)" + (
            " that start from level " + str(level - 1) if level else ""),
            f"job=$(sbatch --parsable --job-name=uniq-{level} --array=0-{len(group) - 1} "
            f"{after} \"${{SBATCH_OPTIONS[@]}}\" <<'ARRAY'",
            "#!/bin/bash",
            'case "$SLURM_ARRAY_TASK_ID" in']
        for i, j in enumerate(group):
            out.append(f"  {i}) exec ${{UNIQ_PYTHON:-python}} -m uniq {shlex.join(j.args)} ;;"
                       f"  # {j.name}")
        out += ["esac",
                'echo "array task $SLURM_ARRAY_TASK_ID names no run" >&2',
                "exit 2",
                "ARRAY",
                ")",
                'previous="${job%%;*}"',
                f'echo "level {level}: job array $previous, {len(group)} run(s)"']
    return "\n".join(out) + "\n"

