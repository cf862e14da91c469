"""Command line: ``python -m uniq {train,reproduce,table1,imagenet} ...``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .export import add_export_parser
from .imagenet import add_imagenet_parser
from .recipes import RECIPES


def _init_value(text: str) -> str | float:
    try:
        return float(text)
    except ValueError:
        return text


def add_train_args(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="cifar100", choices=["cifar100", "synthetic"],
                   help="synthetic = generated offline stand-in (not comparable to the paper)")
    d.add_argument("--data-dir", default="data", help="where cifar-100-python/ lives")
    d.add_argument("--data-fraction", type=float, default=1.0)
    d.add_argument("--synthetic-size", type=int, nargs=2, default=[50_000, 10_000],
                   metavar=("TRAIN", "TEST"))
    d.add_argument("--loader", default="tensor", choices=["tensor", "dataloader"])
    d.add_argument("--workers", type=int, default=2, help="workers for --loader dataloader")
    m = p.add_argument_group("model and quantizer")
    m.add_argument("--depth", type=int, default=32, help="pre-activation ResNet depth (6n+2)")
    m.add_argument("--bits", type=int, default=32, help="1..8, or 32 for full precision")
    m.add_argument("--method", default="uniq", choices=["uniq", "lsq"])
    m.add_argument("--init", type=_init_value, default="mse", help="mse, lsq or a constant")
    m.add_argument("--no-grad-scale", dest="grad_scale", action="store_false",
                   help="do not scale the step gradient by 1/sqrt(numel*Qp)")
    m.add_argument("--weight-granularity", default="tensor", choices=["tensor", "channel"])
    m.add_argument("--calib-batches", type=int, default=100)
    r = p.add_argument_group("recipe")
    r.add_argument("--recipe", default="", choices=[""] + list(RECIPES),
                   help="default: fp for 32 bits, sgd for multi-bit, adam-warmup5 for 1 bit")
    r.add_argument("--lr", type=float, default=None, help="override the recipe's peak lr")
    r.add_argument("--warmup-epochs", type=float, default=None)
    r.add_argument("--weight-decay", type=float, default=None)
    r.add_argument("--epochs", type=int, default=350)
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--fp-epochs", type=int, default=350,
                   help="epochs of the full-precision run a quantized run starts from")
    r.add_argument("--init-from-run", default=None,
                   help="run directory whose weights start this run (default: the FP run)")
    x = p.add_argument_group("execution")
    x.add_argument("--device", default="auto")
    x.add_argument("--compile", default="none",
                   choices=["none", "default", "max-autotune", "reduce-overhead"])
    x.add_argument("--amp", default=None, action=argparse.BooleanOptionalAction,
                   help="bf16 autocast (default: on for CUDA)")
    x.add_argument("--runs-dir", default="runs")
    x.add_argument("--resume", action="store_true", help="continue from the checkpoint (required)")
    x.add_argument("--fresh", action="store_true", help="ignore any checkpoint and start over")
    x.add_argument("--print-config", action="store_true", help="print the config and exit")


def config_from_args(a: argparse.Namespace):
    from .train import FULL_PRECISION, TrainConfig

    common = dict(dataset=a.dataset, data_fraction=a.data_fraction,
                  synthetic_train=a.synthetic_size[0], synthetic_test=a.synthetic_size[1],
                  depth=a.depth, batch_size=a.batch_size, seed=a.seed, loader=a.loader,
                  device=a.device, compile=a.compile, amp=a.amp, runs_dir=a.runs_dir,
                  data_dir=a.data_dir, workers=a.workers)
    parent = None
    if a.init_from_run:
        path = Path(a.init_from_run) / "config.json"
        if not path.exists():
            raise SystemExit(f"error: --init-from-run: {path} not found")
        parent = json.loads(path.read_text())["config"]
    elif a.bits != FULL_PRECISION:
        parent = TrainConfig(epochs=a.fp_epochs, **common).to_dict()
    return TrainConfig(bits=a.bits, method=a.method, init=a.init, grad_scale=a.grad_scale,
                       weight_granularity=a.weight_granularity, recipe=a.recipe, lr=a.lr,
                       warmup_epochs=a.warmup_epochs, weight_decay=a.weight_decay,
                       epochs=a.epochs, calib_batches=a.calib_batches, init_from=parent,
                       **common)


def cmd_train(a: argparse.Namespace) -> int:
    from .train import train

    cfg = config_from_args(a)
    if a.print_config:
        print(json.dumps({"run_dir": str(cfg.run_dir()), **cfg.to_dict()}, indent=2))
        return 0
    run = train(cfg, resume="require" if a.resume else "never" if a.fresh else "auto")
    print(json.dumps({"run_dir": str(run.dir), "final_test_top1": run.top1,
                      "dataset": run.summary["dataset"]}, indent=2))
    return 0


def cmd_table1(a: argparse.Namespace) -> int:
    from .mse import table1

    print(table1(range(1, a.max_bits + 1)).round(4).to_string(index=False))
    return 0


def cmd_reproduce(a: argparse.Namespace) -> int:
    from .reproduce import reproduce

    only = [int(x) for x in a.only.split(",")] if a.only else None
    params = {}
    for kv in a.param:
        if "=" not in kv:
            raise ValueError(f"-p expects NAME=VALUE, got {kv!r}")
        name, value = kv.split("=", 1)
        params[name] = value
    return reproduce(a.profile, only=only, keep_going=a.keep_going, out_dir=a.out_dir,
                     parameters=params, notebooks_dir=a.notebooks_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m uniq", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one CIFAR-100 run (cached, resumable)")
    add_train_args(t)
    t.set_defaults(func=cmd_train)
    r = sub.add_parser("reproduce", help="run every notebook with papermill into results/")
    r.add_argument("--profile", default="smoke", choices=["smoke", "quick", "paper"])
    r.add_argument("--only", default="", help="comma-separated notebook numbers, e.g. 4,5")
    r.add_argument("--keep-going", action="store_true", help="continue after a failing notebook")
    r.add_argument("--out-dir", default=None, help="default: results/<profile>")
    r.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="extra notebook parameter (must exist in the notebooks' parameters cell)")
    r.add_argument("--notebooks-dir", default=None,
                   help="run another folder of NN_*.ipynb notebooks (default: notebooks/)")
    r.set_defaults(func=cmd_reproduce)
    t1 = sub.add_parser("table1", help="print Table 1 computed from Eq. 7/8")
    t1.add_argument("--max-bits", type=int, default=4)
    t1.set_defaults(func=cmd_table1)
    add_imagenet_parser(sub)
    add_export_parser(sub)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
