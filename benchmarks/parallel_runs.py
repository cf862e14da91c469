"""Seconds for a profile's quantized runs one at a time vs several at once (``uniq.repro.jobs``).

    python benchmarks/parallel_runs.py          # laptop profile, 2 runs
    python benchmarks/parallel_runs.py --runs 4 --out benchmarks/results/MACHINE/parallel_runs.json

The full-precision parent is trained first (not timed). Then the same quantized runs (Table
4's 2-bit UniQ and LSQ cells, seeds from 0) are trained three ways, each into a fresh runs
folder that holds only the parent:

- ``one at a time, all threads``: in this process, every core's threads per run (PyTorch's
  default: how the notebooks trained before a profile fixed its threads);
- ``one at a time, profile threads``: in this process, the profile's thread count (what
  ``--jobs 1`` does);
- ``N at a time``: ``uniq.repro.jobs.train_all`` with ``--jobs auto`` (worker processes, their
  start-up included).

The last two must give bit-identical weights (checked: ``weights_sha256``). The machine's load
average is recorded before and after each: on a shared machine the ratio, not the seconds, is
the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

import uniq.repro.jobs as J
import uniq.repro.study as X
from uniq.deploy.latency import cpu_name
from uniq.repro.train import fit


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="laptop")
    p.add_argument("--runs", type=int, default=2, help="quantized runs timed (2-bit UniQ, "
                   "then LSQ, over seeds 0, 1, ...)")
    p.add_argument("--jobs", default="auto")
    p.add_argument("--out", default="", help="write the results as JSON here (and .txt)")
    a = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="uniq-parallel-"))
    ctx = X.context(profile=a.profile, results_dir=str(work / "results"),
                    runs_dir=str(work / "base"), device="cpu", seeds=max((a.runs + 1) // 2, 1))
    runs = [X.quant_config(ctx, 2, method, seed=s) for s in ctx.seeds for method in ("uniq", "lsq")]
    runs = runs[:a.runs]
    fit(X.fp_config(ctx), quiet=True)
    cpus = J.available_cpus()

    def fresh(name: str) -> Path:
        """A runs folder that holds only the full-precision parent."""
        shutil.copytree(work / "base", work / name)
        return work / name

    def placed(c, runs_dir, threads):
        return type(c).from_dict({**c.to_dict(), "runs_dir": str(runs_dir), "threads": threads})

    rows = []
    digests = {}
    for name, threads, jobs in (("one at a time, all threads", cpus, 1),
                                ("one at a time, profile threads", ctx.profile.threads, 1),
                                (f"--jobs {a.jobs}", ctx.profile.threads, a.jobs)):
        runs_dir = fresh(f"w{len(rows)}")
        configs = [placed(r, runs_dir, threads) for r in runs]
        before, t0 = _load(), time.time()
        if jobs == 1:
            done = [fit(r, quiet=True) for r in configs]
        else:
            J.train_all(configs, jobs)
            done = [fit(r, quiet=True) for r in configs]  # cached: reads the results
        seconds = time.time() - t0
        digests[name] = [d.result["weights_sha256"] for d in done]
        rows.append({"way": name, "threads_per_run": threads,
                     "workers": J.resolve_jobs(J.parse_jobs(jobs), configs),
                     "seconds": round(seconds, 1), "load_before": before, "load_after": _load()})
        print(rows[-1], flush=True)
    base = rows[0]["seconds"]
    for r in rows:
        r["speedup_vs_first"] = round(base / r["seconds"], 2)
    same = digests[rows[1]["way"]] == digests[rows[2]["way"]]
    cpu = cpu_name()
    result = {"profile": a.profile, "runs": a.runs, "cpu": cpu, "cores": cpus,
              "torch": torch.__version__,
              "bit_identical_profile_threads_vs_parallel": same, "rows": rows}
    text = [f"profile={a.profile} runs={a.runs} cpu={cpu} torch={torch.__version__}",
            f"{'way':34} {'threads':>7} {'workers':>7} {'seconds':>8} {'speedup':>7} "
            f"{'load before/after':>18}"]
    for r in rows:
        text.append(f"{r['way']:34} {r['threads_per_run']:>7} {r['workers']:>7} "
                    f"{r['seconds']:>8} {r['speedup_vs_first']:>7} "
                    f"{r['load_before']:>8}/{r['load_after']}")
    text.append(f"bit-identical weights, profile threads one at a time vs parallel: {same}")
    print("\n".join(text))
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        out.with_suffix(".txt").write_text("\n".join(text) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
