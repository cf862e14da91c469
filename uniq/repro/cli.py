"""Command line: ``python -m uniq {train,imagenet,runs,reproduce,table1,export,doctor} ...``.

``train`` (CIFAR-100) and ``imagenet`` take one flag per field of their config dataclass
(``uniq.repro.config.CifarConfig``, ``uniq.repro.config.ImageNetConfig``), with the help text
written once
in the field; both run under torchrun unchanged. Every error is one line on stderr, never a
traceback: exit code 2 for bad input, 3 for a diverged run, 4 for a run busy in another process.
A command's modules are imported only when it runs (``train --help`` imports the config only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import RunConfig


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _init_value(text: str) -> str | float:
    try:
        return _float(text)
    except argparse.ArgumentTypeError:
        return text


def add_config_args(p: argparse.ArgumentParser, cls: type[RunConfig]) -> None:
    """One flag per config field (``--field-name``), typed and documented from the field."""
    from .config import flag as config_flag

    defaults = cls()
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        flag = config_flag(f.name)
        default = getattr(defaults, f.name)
        kw = {"default": default, "help": f.metadata.get("help", "")}
        if f.metadata.get("choices"):
            kw["choices"] = [c for c in f.metadata["choices"] if c] + ([""] if "" in
                                                                       f.metadata["choices"]
                                                                       else [])
        t = str(f.type)
        if t.startswith("bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif t == "str | float":
            p.add_argument(flag, type=_init_value, **kw)
        elif t.startswith("float"):
            p.add_argument(flag, type=_float, **kw)
        elif t.startswith("int"):
            p.add_argument(flag, type=int, **kw)
        else:
            p.add_argument(flag, type=str, **kw)


def add_run_args(p: argparse.ArgumentParser, cls: type[RunConfig]) -> None:
    add_config_args(p, cls)
    x = p.add_argument_group("what to do")
    x.add_argument("--resume", action="store_true", help="continue from the checkpoint "
                   "(required); without it an unfinished run also continues")
    x.add_argument("--fresh", action="store_true", help="start THIS run over (its parent "
                   "run is kept)")
    x.add_argument("--print-config", action="store_true",
                   help="print the resolved config, its run directory and state, and exit")
    x.add_argument("--evaluate", default="", metavar="CHECKPOINT",
                   help="only evaluate this model.pt/checkpoint.pt on the evaluation set")
    p.set_defaults(func=cmd_run, config_class=cls)


def config_from_args(a: argparse.Namespace) -> RunConfig:
    cls = a.config_class
    names = {f.name for f in dataclasses.fields(cls) if f.metadata.get("cli", True)}
    return cls(**{k: v for k, v in vars(a).items() if k in names})


def cmd_run(a: argparse.Namespace) -> int:
    from . import distributed
    from .runs import run_state
    from .train import evaluate_weights, fit

    if a.resume and a.fresh:
        raise ValueError("--resume and --fresh contradict each other; give one")
    cfg = config_from_args(a).resolved()
    main = distributed.init(cfg.device).main
    if a.print_config:
        run_dir = cfg.run_dir()
        state = run_state(run_dir)
        print(json.dumps({"run_dir": str(run_dir), "state": state, "key": cfg.key(),
                          "recipe_spelled_out": cfg.recipe_obj().as_dict(),
                          "config": cfg.to_dict()}, indent=2, default=str))
        return 0
    if a.evaluate:
        row = evaluate_weights(cfg, a.evaluate)
        if main:
            print(json.dumps(row, indent=2))
        return 0
    run = fit(cfg, resume="require" if a.resume else "never" if a.fresh else "auto")
    distributed.shutdown()
    if main and run is not None:
        r = run.result
        print(json.dumps({"run_dir": str(run.dir), "top1_final": r["top1_final"],
                          "top1_best": r["top1_best"], "dataset": r["dataset"],
                          "precision": r["precision"]}, indent=2))
    return 0


def cmd_table1(a: argparse.Namespace) -> int:
    from .paper import table1

    if not 1 <= a.max_bits <= 8:
        raise ValueError(f"--max-bits must be 1..8, got {a.max_bits}")
    print(table1(range(1, a.max_bits + 1)).round(4).to_string(index=False))
    return 0


def _numbers(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what} takes comma-separated integers, e.g. 4,5; got {text!r}") \
            from None


def cmd_reproduce(a: argparse.Namespace) -> int:
    from .reproduce import reproduce
    from .study import get_profile

    only = _numbers(a.only, "--only") if a.only else None

    params = {}
    for kv in a.param:
        if "=" not in kv:
            raise ValueError(f"-p expects NAME=VALUE, got {kv!r}")
        name, value = kv.split("=", 1)
        params[name] = value
    # The runner sets these two from its own options (they name the results folder and the
    # provenance): -p PROFILE=X is --profile X, -p RESULTS_DIR=D is --out-dir D.
    profile = params.pop("PROFILE", a.profile)
    try:
        get_profile(profile)
    except ValueError as err:
        raise ValueError(f"-p PROFILE={profile}: {err}; or use --profile") from None
    out_dir = params.pop("RESULTS_DIR", a.out_dir)
    if a.jobs is not None:  # --jobs N is -p JOBS=N
        from .jobs import parse_jobs

        params["JOBS"] = str(parse_jobs(a.jobs))
    return reproduce(profile, only=only, keep_going=a.keep_going, out_dir=out_dir,
                     parameters=params, notebooks_dir=a.notebooks_dir)


def cmd_runs(a: argparse.Namespace) -> int:
    from .distributed import check_device_name
    from .jobs import slurm_script, train_all
    from .paths import resolve_path
    from .study import context, distinct_runs, parse_seeds, plan

    check_device_name(a.device)
    for flag, folder in (("--runs-dir", a.runs_dir), ("--data-dir", a.data_dir)):
        path = resolve_path(folder)
        if path.exists() and not path.is_dir():
            raise ValueError(f"{flag} {folder}: {path} is a file, not a folder; give a folder "
                             "(it need not exist yet)")
    ctx = context(profile=a.profile, runs_dir=a.runs_dir, data_dir=a.data_dir, device=a.device,
                  seeds=parse_seeds(a.seeds) if a.seeds else None, jobs=a.jobs)
    if a.slurm or a.train:
        configs = [cfg for _, _, cfg in distinct_runs(ctx)]
        names = {cfg.run_dir(): f"{key} seed {seed}" for key, seed, cfg in distinct_runs(ctx)}
        if a.slurm:
            options = a.sbatch_options or (f"--cpus-per-task={ctx.profile.threads}"
                                           if ctx.profile.threads else
                                           "--cpus-per-task=8 --gres=gpu:1")
            print(slurm_script(configs, f"profile {a.profile} (seeds {list(ctx.seeds)})",
                               options), end="")
            return 0
        train_all(configs, ctx.jobs, names)
        return 0
    rows = plan(ctx)
    if a.commands:
        for r in rows:
            if r["state"] != "done":
                print(r["command"])
        return 0
    width = max(len(r["run"]) for r in rows)
    for r in rows:
        print(f"{r['state']:8} {r['run']:{width}}  {r['command']}")
    states = [r["state"] for r in rows]
    print(f"# {len(rows)} distinct runs for profile {a.profile} (seeds {list(ctx.seeds)}): "
          f"{states.count('done')} done, {states.count('partial')} partial, "
          f"{states.count('missing')} missing"
          + (f", {states.count('old-key')} made under an older key scheme (training one says "
             "what to do)" if "old-key" in states else ""), file=sys.stderr)
    return 0


def _names(text: str, what: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names:
        raise ValueError(f"{what} takes a comma-separated list, got {text!r}")
    return names


def cmd_doctor(a: argparse.Namespace) -> int:
    from .doctor import GROUPS, Options, main

    o = Options(device=a.device, quick=a.quick, profile=a.profile,
                precisions=_names(a.precisions, "--precisions") if a.precisions else (),
                modes=_names(a.modes, "--modes") if a.modes else (), steps=a.steps,
                only=_names(a.only, "--only") if a.only else GROUPS, budget_s=a.budget)
    return main(o, a.output, force=a.force)


def _train_args(p: argparse.ArgumentParser) -> None:
    from .config import CifarConfig

    add_run_args(p, CifarConfig)


def _imagenet_args(p: argparse.ArgumentParser) -> None:
    from .config import ImageNetConfig

    add_run_args(p, ImageNetConfig)


def _profile_names() -> list[str]:
    from .config import PROFILE_NAMES

    return list(PROFILE_NAMES)


def _runs_args(r: argparse.ArgumentParser) -> None:
    r.add_argument("--profile", default="smoke", choices=_profile_names())
    r.add_argument("--seeds", default="", help="a count (3) or a list (0,1,2); default: the "
                   "profile's")
    r.add_argument("--commands", action="store_true", help="one training command per run "
                   "not done (for GNU parallel, a SLURM array or one worker per GPU)")
    r.add_argument("--slurm", action="store_true", help="print a bash script that submits "
                   "the runs not done as SLURM job arrays (one run per task, parents first)")
    r.add_argument("--sbatch-options", default="", metavar="OPTIONS", help="sbatch options of "
                   "every task in the --slurm script (default: the profile's threads as "
                   "--cpus-per-task on the CPU profiles; 8 CPUs and one GPU otherwise)")
    r.add_argument("--train", action="store_true", help="train the runs not done here, "
                   "--jobs at a time, parents first")
    r.add_argument("--jobs", default="auto", help="with --train: runs at once, a number or "
                   "auto (one per GPU, or as many as the cores hold at the profile's threads)")
    r.add_argument("--runs-dir", default="runs")
    r.add_argument("--data-dir", default="data")
    r.add_argument("--device", default="auto")
    r.set_defaults(func=cmd_runs)


def _reproduce_args(r: argparse.ArgumentParser) -> None:
    r.add_argument("--profile", default="smoke", choices=_profile_names())
    r.add_argument("--only", default="", help="comma-separated notebook numbers, e.g. 4,5")
    r.add_argument("--keep-going", action="store_true", help="continue after a failing notebook")
    r.add_argument("--out-dir", default=None, help="default: results/<profile>")
    r.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="notebook parameter (must exist in the notebooks' parameters cell)")
    r.add_argument("--notebooks-dir", default=None,
                   help="run another folder of NN_*.ipynb notebooks (default: notebooks/)")
    r.add_argument("--jobs", default=None, help="runs trained at once, each in its own "
                   "process: a number, or auto (one per GPU, or as many as the cores hold at "
                   "the profile's threads); the tables do not depend on it. Default: the "
                   "notebooks' JOBS (auto)")
    r.set_defaults(func=cmd_reproduce)


def _table1_args(t1: argparse.ArgumentParser) -> None:
    t1.add_argument("--max-bits", type=int, default=4)
    t1.set_defaults(func=cmd_table1)


def _doctor_args(d: argparse.ArgumentParser) -> None:
    d.add_argument("-o", "--output", default="doctor.json", help="where to write the JSON")
    d.add_argument("--force", action="store_true", help="replace -o even if it is not a "
                   "doctor report (a run's or results folder's file is never replaced)")
    d.add_argument("--device", default="auto")
    d.add_argument("--quick", action="store_true", help="a tiny model and few steps, eager "
                   "only (the test suite runs this on the CPU)")
    d.add_argument("--profile", default="paper", choices=_profile_names(),
                   help="whose model and batch to time and fit in memory")
    d.add_argument("--precisions", default="", help="comma list (default: fp32,bf16 on CUDA, "
                   "fp32 on the CPU)")
    d.add_argument("--modes", default="", help="comma list of eager, default, "
                   "reduce-overhead, max-autotune (default: eager,reduce-overhead on CUDA; "
                   "eager on the CPU)")
    d.add_argument("--steps", type=int, default=0, help="timed steps of each kind")
    d.add_argument("--only", default="", help="comma list of check groups: versions, devices, "
                   "tf32, training, memory, ddp, loaders")
    d.add_argument("--budget", type=_float, default=300.0, help="seconds; groups left when it "
                   "is spent are reported as skipped")
    d.set_defaults(func=cmd_doctor)


def _export_args(p: argparse.ArgumentParser) -> None:
    from .export import add_export_arguments

    add_export_arguments(p)


COMMANDS = {
    "train": ("train one CIFAR-100 run (cached, resumable, torchrun-ready)", _train_args),
    "imagenet": ("train or evaluate one ImageNet run", _imagenet_args),
    "runs": ("list the distinct CIFAR runs a profile needs, or print the commands that train "
             "the missing ones", _runs_args),
    "reproduce": ("run every notebook with papermill into results/", _reproduce_args),
    "table1": ("print Table 1 computed from Eq. 7/8", _table1_args),
    "doctor": ("preflight a (GPU) machine in minutes: versions, TF32, training speed eager and "
               "compiled, memory, NCCL, loaders", _doctor_args),
    "export": ("export a finished run to ONNX (QDQ, or integer kernels with --integer)",
               _export_args),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` only that subcommand's arguments are built (and only its
    modules imported), the others are listed by name and help."""
    p = argparse.ArgumentParser(prog="python -m uniq", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, (text, add) in COMMANDS.items():
        sp = sub.add_parser(name, help=text, description=text)
        if command in (None, name):
            add(sp)
    return p


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    if "Original Traceback" in text:  # an error re-raised from a DataLoader worker
        text = text.splitlines()[-1]
    return " ".join(line.strip() for line in text.splitlines())  # always one line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    from .config import TrainingDiverged
    from .jobs import RunsFailed
    from .runs import CorruptFile, RunBusy

    try:
        return args.func(args)
    except TrainingDiverged as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 3
    except RunBusy as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 4
    except RunsFailed as err:  # one line per failed run, with its command
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, CorruptFile) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only file system, a file where a folder should be, ...
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot write or read{where}: {err.strerror or err}; choose a writable "
              "folder (--runs-dir, --data-dir, -o) or fix its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept and the next call resumes from it",
              file=sys.stderr)
        return 130


def jobs_worker() -> int:
    """A worker process of ``uniq.repro.jobs``: reads one run's ``python -m uniq`` arguments per
    line (JSON) from stdin, runs each as that command would (same errors, same exit codes), and
    prints ``jobs.ENDED`` with the exit code after each. Importing PyTorch once per worker, not
    once per run, keeps many short runs from paying the start-up again and again."""
    import traceback

    from .jobs import ENDED

    try:
        for line in sys.stdin:
            try:
                code = main(json.loads(line))
            except SystemExit as err:  # argparse
                code = err.code if isinstance(err.code, int) else 2
            except Exception:  # noqa: BLE001 - reported as this run's failure; the next goes on
                traceback.print_exc()
                code = 1
            print(f"{ENDED}{code}", flush=True)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
