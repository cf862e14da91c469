"""The training engine shared by every task (CIFAR-100 in ``uniq.cifar``, ImageNet in
``uniq.imagenet``): configs, cached and resumable runs, one ``fit`` and one ``evaluate``.

A single process is simply world size 1; under torchrun every rank runs the same code, rank 0
writes. A run lives in ``<runs_dir>/<task>/<label>-<hash>/``, the hash taken over the fully
resolved config (recipe spelled out, warm-up scaled, the parent run's hash):

    config.json     the resolved config, the recipe, the dataset, the environment
    metrics.csv     one row per epoch: losses, top-1, learning rate, time
    dynamics.csv    several rows per epoch and activation quantizer: step, input std, SQNR
    checkpoint.pt   written atomically every epoch: model, optimizer, epoch, step, RNG states and
                    the rows of both logs (the CSV files are rebuilt from it, never appended)
    model.pt        the final weights (state dict)
    result.json     written last; its presence means "finished" (one schema for every task)

``fit(config)`` returns a finished run without loading any data, resumes an unfinished one from
its checkpoint, and otherwise trains it (its parent run first, if it has one and it is missing).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import platform
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as dist
from .convert import calibrate, conversion_report, default_init_scope
from .dynamics import probe_rows, record_dynamics
from .functional import check_bits, value_checks
from .modules import quantizers
from .mse import check_init
from .paths import resolve_path
from .recipes import Recipe, build_optimizer, default_recipe, get_recipe, lr_at, set_lr
from .rundir import (
    CorruptFile,
    RunLock,
    load_checkpoint,
    read_json,
    save_atomic,
    write_csv_atomic,
    write_json_atomic,
)
from .state import rng_state, set_rng_state

FULL_PRECISION = 32
KEY_SCHEME = 2
"""Version of what a run's key covers. 1: the first scheme. 2: ``loader``, ``compile``, a
``--pretrained`` file's content, the layer-policy fields and ``init_scope`` are hashed. A run
directory made under another scheme is reported (``older_scheme_run``), never reused or
retrained silently."""
INIT_SCOPES = ("", "low-bit", "all")
PRECISIONS = ("fp32", "tf32", "bf16", "fp64")
COMPILE_MODES = ("none", "default", "max-autotune", "reduce-overhead")
RESUME_MODES = ("auto", "require", "never")


def option(default: Any, help: str, choices: Iterable | None = None, cli: bool = True,
           hashed: bool = True) -> Any:
    """A config field with its help text (written once: the CLI is generated from it).
    ``hashed=False`` marks fields that choose where and how fast a run executes, not what it
    computes."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "cli": cli,
            "hashed": hashed}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


class TrainingDiverged(RuntimeError):
    """The loss, a weight or a step size became NaN or inf; no bad checkpoint was written."""


@dataclass
class RunConfig:
    """Fields shared by every task. Subclasses add the data and model fields and the hooks
    ``make_data``, ``make_model``, ``label_prefix`` and optionally ``default_parent``."""

    task: ClassVar[str] = ""

    # -- model and quantizer
    bits: int = option(FULL_PRECISION, "weight and activation bits, 1..8, or 32 for full "
                       "precision")
    method: str = option("uniq", "quantizer: uniq (the paper's) or lsq (the baseline)",
                         ("uniq", "lsq"))
    init: str | float = option("mse", "step-size init: mse (Table 1, Eq. 9/10), lsq "
                               "(2 E|x| / sqrt(Qp)) or a positive constant")
    grad_scale: bool = option(True, "scale each step's gradient by 1/sqrt(n*Qp), n = elements "
                              "one step value quantizes (the authors' code)")
    weight_granularity: str = option("", "weight steps: tensor (layer-wise) or channel "
                                     "(kernel-wise); empty = the paper's for the task",
                                     ("", "tensor", "channel"))
    signed_inputs: str = option("detect", "detect: signed layer inputs get the symmetric "
                                "quantizer; unsigned: clip them at zero as the authors' code",
                                ("detect", "unsigned"))
    init_scope: str = option("", "layers a non-MSE --init applies to: low-bit (the 8-bit "
                             "first/last layers keep the MSE init) or all; empty = low-bit for "
                             "uniq, all for lsq (LSQ's own rule everywhere)", INIT_SCOPES)
    first_last_bits: int = option(8, "bits of the first and last layers of a multi-bit model "
                                  "(the paper: 8)")
    first_last_weight_granularity: str = option(
        "", "weight steps of the first and last layers: tensor (the authors' code) or channel; "
        "empty = as the other layers", ("", "tensor", "channel"))
    overrides: str = option("", "per-layer bits winning over the policy, NAME=BITS[,NAME=BITS] "
                            "(BITS 1..8, or 32/fp for full precision)")
    # -- recipe
    recipe: str = option("", "named recipe (see uniq.recipes.RECIPES); empty = the paper's "
                         "default for the bit width")
    lr: float | None = option(None, "override the recipe's peak learning rate")
    warmup_epochs: float | None = option(None, "override the recipe's warm-up epochs")
    weight_decay: float | None = option(None, "override the weight decay (never on steps)")
    warmup_scale: float = option(1.0, "multiply the recipe's warm-up epochs (short profiles)")
    epochs: int = option(350, "training epochs")
    batch_size: int = option(128, "global batch size, over all processes")
    calib_batches: int = option(100, "batches for the step-size calibration (Eq. 10)")
    seed: int = option(0, "random seed (part of the run's hash)")
    precision: str = option("fp32", "arithmetic: fp32 (the paper; TF32 off on CUDA), tf32 "
                            "(TF32 convolutions and matmuls), bf16 autocast (faster, changes "
                            "results), fp64 (verification)", PRECISIONS)
    sync_bn: bool = option(False, "synchronise BatchNorm statistics across processes")
    init_from: dict | None = option(None, "config of the run whose weights start this one",
                                    cli=False)
    init_from_run: str = option("", "start from the weights of this run directory (or "
                                "checkpoint file), steps re-initialised")
    dynamics_per_epoch: int = option(4, "Figure-4 probes per epoch (0 = none)")
    compile: str = option("none", "torch.compile mode (hashed: compiled kernels round "
                          "differently from eager ones)", COMPILE_MODES)
    # -- execution (not hashed: see PLACEMENT)
    device: str = option("auto", "auto, cpu, cuda or cuda:N", hashed=False)
    channels_last: bool | None = option(None, "channels-last memory format (default: on for "
                                        "CUDA)", hashed=False)
    runs_dir: str = option("runs", "where runs live (relative: from the project root)",
                           hashed=False)
    data_dir: str = option("data", "where the data lives (relative: from the project root)",
                           hashed=False)
    workers: int = option(2, "DataLoader worker processes", hashed=False)
    log_every: int = option(50, "check the loss (and print, at most every 10 s) every N steps",
                            hashed=False)
    stop_after: int = option(0, "leave after N epochs in this call (0: never); rerun to go on",
                             hashed=False)
    wait: bool = option(True, "if another process is training this run, wait for it "
                        "(--no-wait: stop with a message)", hashed=False)

    # ---- hooks for the tasks ---------------------------------------------------------------
    def policy(self) -> dict[str, Any]:
        """The conversion arguments of ``uniq.quantize_model`` that these fields choose."""
        return {"first_last_bits": self.first_last_bits,
                "overrides": parse_overrides(self.overrides),
                "first_last_weight_granularity": self.first_last_weight_granularity or None,
                "init_scope": self.init_scope or default_init_scope(self.method)}

    def make_data(self, d: dist.Dist) -> TaskData:
        raise NotImplementedError

    def make_model(self, num_classes: int, example: torch.Tensor,
                   pretrained: bool) -> nn.Module:
        raise NotImplementedError

    def label_prefix(self) -> str:
        raise NotImplementedError

    def example_input(self) -> torch.Tensor:
        """A small CPU batch for the conversion probe (which inputs are signed)."""
        raise NotImplementedError

    def default_granularity(self) -> str:
        return "tensor"

    def default_weight_decay(self, recipe: Recipe) -> float:
        return recipe.weight_decay

    def default_parent(self) -> RunConfig | None:
        return None

    def validate_task(self) -> None:
        pass

    # ---- resolution, hash, place -----------------------------------------------------------
    def resolved(self) -> RunConfig:
        """The config with every default filled in: recipe spelled out (overrides applied,
        warm-up scaled), granularity, parent. Idempotent; the hash is taken over this."""
        validate_fields(self)
        c = dataclasses.replace(self)
        if c.bits != FULL_PRECISION:
            check_bits(c.bits, allow_binary=c.method != "lsq")
        if isinstance(c.init, str):
            try:
                c.init = float(c.init)
            except ValueError:
                pass
        check_init(c.init)
        if c.method == "lsq" and c.bits == 1:
            raise ValueError("LSQ has no 1-bit weight quantizer; use method='uniq' for 1 bit")
        if c.bits == FULL_PRECISION:  # quantizer fields mean nothing here: one FP run, one hash
            fresh = type(c)()
            for name in ("method", "init", "grad_scale", "signed_inputs", "calib_batches",
                         "dynamics_per_epoch", "weight_granularity", "init_scope",
                         "first_last_bits", "first_last_weight_granularity", "overrides"):
                setattr(c, name, getattr(fresh, name))
        else:
            check_bits(c.first_last_bits)
            c.overrides = format_overrides(parse_overrides(c.overrides))
            # An MSE init is the same on every layer: one computation, one key.
            c.init_scope = ("low-bit" if c.init == "mse"
                            else c.init_scope or default_init_scope(c.method))
            if c.bits == 1:  # the first and last layers stay in full precision at 1 bit
                c.first_last_bits, c.first_last_weight_granularity = 8, ""
        c.recipe = c.recipe or default_recipe(c.bits)
        base = get_recipe(c.recipe)
        c.lr = float(base.lr if c.lr is None else c.lr)
        c.warmup_epochs = float(base.warmup_epochs if c.warmup_epochs is None
                                else c.warmup_epochs) * c.warmup_scale
        c.warmup_scale = 1.0
        c.weight_decay = float(c.default_weight_decay(base) if c.weight_decay is None
                               else c.weight_decay)
        c.recipe_obj()  # validates the overrides
        c.weight_granularity = c.weight_granularity or c.default_granularity()
        if c.init_from is None and not c.init_from_run:
            parent = c.default_parent()
            c.init_from = None if parent is None else parent.resolved().to_dict()
        elif c.init_from is not None:
            c.init_from = type(c).from_dict(c.init_from).resolved().to_dict()
        if c.init_from_run:
            c.init_from_run = str(resolve_path(c.init_from_run))
        c.validate_task()
        return c

    def recipe_obj(self) -> Recipe:
        return get_recipe(self.recipe or default_recipe(self.bits), lr=self.lr,
                          warmup_epochs=self.warmup_epochs, weight_decay=self.weight_decay)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown {cls.task} config field(s) {unknown}; known: "
                             f"{sorted(names)}")
        return cls(**d)

    def hashed(self) -> dict[str, Any]:
        """What the hash covers: the resolved fields that can change the result. The recipe's
        name is left out (its spelled-out values are in), and so are the parent's fields
        (its hash is in)."""
        c = self.resolved()
        out = {"task": c.task, "key_scheme": KEY_SCHEME}
        for f in dataclasses.fields(c):
            if f.metadata.get("hashed", True) and f.name not in ("recipe", "warmup_scale"):
                out[f.name] = getattr(c, f.name)
        if c.init_from is not None:
            out["init_from"] = type(c).from_dict(c.init_from).key()
        if c.init_from_run:
            out["init_from_run"] = start_key(Path(c.init_from_run))
        out["recipe_spelled_out"] = c.recipe_obj().as_dict() | {"description": ""}
        return out

    def key(self) -> str:
        import json

        blob = json.dumps(self.hashed(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def label(self) -> str:
        c = self.resolved()
        what = "fp" if c.bits == FULL_PRECISION else f"{c.method}{c.bits}b"
        r = c.recipe_obj()
        warm = f"-wu{r.warmup_epochs:g}" if r.warmup_epochs else ""
        return f"{c.label_prefix()}-{what}-{r.optimizer}{r.lr:g}{warm}-s{c.seed}"

    def run_dir(self) -> Path:
        return resolve_path(self.runs_dir) / self.task / f"{self.label()}-{self.key()}"


PLACEMENT = {
    "device": "where the run executes (a CPU and a GPU round differently; the device is "
              "recorded in config.json and result.json)",
    "channels_last": "memory layout of the same tensors (the default follows the device)",
    "runs_dir": "where runs are stored",
    "data_dir": "where the data are read from (their content is checked by verify_data)",
    "workers": "DataLoader processes; hashed by a task when they change the batches (CIFAR's "
               "dataloader loader)",
    "log_every": "how often the loss is checked and printed",
    "stop_after": "leaving early; the next call continues the same run",
    "wait": "what to do when another process holds the run",
    "download": "whether missing data are fetched (the files are checked against their MD5s)",
    "verify_data": "whether the data files are checked (the data are the same files either "
                   "way; an unchecked file is the user's responsibility)",
}
"""Config fields left out of the key because they say where or how fast a run executes, with
the reason. A test walks every field: each is hashed, placement, or in ``ENTERS_VIA``."""

ENTERS_VIA = {
    "fp_epochs": "init_from (the full-precision parent's key)",
    "fp_seed": "init_from (the full-precision parent's key)",
}
"""Unhashed fields that change the computation through another hashed field."""


def parse_overrides(text: str) -> dict[str, int | None]:
    """``"conv1=4,output=fp"`` -> ``{"conv1": 4, "output": None}`` (32 or fp: full precision)."""
    out: dict[str, int | None] = {}
    for item in (t.strip() for t in str(text or "").split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip().lower()
        if not sep or not name:
            raise ValueError(f"overrides: {item!r} is not NAME=BITS; write e.g. "
                             "--overrides features.init_block.conv=4,output=fp")
        if value in ("fp", "32", "none"):
            out[name] = None
            continue
        try:
            out[name] = check_bits(int(value))
        except ValueError:
            raise ValueError(f"overrides: {item!r}: bits must be 1..8, or 32/fp for full "
                             "precision") from None
    return out


def format_overrides(overrides: dict[str, int | None]) -> str:
    return ",".join(f"{k}={'fp' if v is None else v}" for k, v in sorted(overrides.items()))


def validate_fields(cfg: RunConfig) -> None:
    """Type, range and NaN checks for every field, with the field's name in the message."""
    for f in dataclasses.fields(cfg):
        v, t = getattr(cfg, f.name), str(f.type)
        optional = "None" in t
        if v is None:
            if not optional:
                raise ValueError(f"{f.name} must be given (got None)")
            continue
        if t.startswith("int"):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{f.name} must be an integer, got {v!r} ({type(v).__name__})")
        elif t.startswith("float"):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{f.name} must be a number, got {v!r} ({type(v).__name__})")
            if not math.isfinite(v):
                raise ValueError(f"{f.name} must be a finite number, got {v}")
        elif t.startswith("bool"):
            if not isinstance(v, bool):
                raise ValueError(f"{f.name} must be true or false, got {v!r}")
        elif t == "str":
            if not isinstance(v, str):
                raise ValueError(f"{f.name} must be a string, got {v!r} ({type(v).__name__})")
        choices = f.metadata.get("choices")
        if choices and v not in choices:
            raise ValueError(f"{f.name} must be one of {[c for c in choices if c]}, got {v!r}")
    positive = ("epochs", "batch_size", "calib_batches", "log_every")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(cfg, name)}")
    for name in ("seed", "workers", "stop_after", "dynamics_per_epoch"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    for name in ("lr", "warmup_epochs", "weight_decay"):
        v = getattr(cfg, name)
        if v is not None and (v < 0 or (name == "lr" and v == 0)):
            raise ValueError(f"{name} must be {'> 0' if name == 'lr' else '>= 0'}, got {v}")
    if cfg.warmup_scale < 0:
        raise ValueError(f"warmup_scale must be >= 0, got {cfg.warmup_scale}")


def start_key(path: Path) -> str:
    """Identity of a start point for the hash: the run's key, or a checksum of a bare file."""
    run = path if path.is_dir() else path.parent
    if (run / "config.json").exists():
        return str(read_json(run / "config.json").get("key", ""))
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    raise FileNotFoundError(f"--init-from-run: no run directory or checkpoint at {path}")


# --- data and the steps ---------------------------------------------------------------------


@dataclass
class TaskData:
    """What a task hands the engine: the training loader (this rank's share of each global
    batch, ``set_epoch``), the evaluation loader (this rank's shard), the calibration batches
    (global batches, identical on every rank) and facts about the data."""

    train: Any
    eval: Any
    calibration: Callable[[], Iterable]
    info: dict


def _dtype(precision: str) -> torch.dtype:
    return torch.float64 if precision == "fp64" else torch.float32


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step. Returns device tensors (summed loss, correct count): no host sync."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = net(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach() * y.shape[0], (logits.argmax(1) == y).sum()


@torch.no_grad()
def evaluate(net: nn.Module, loader: Iterable, d: dist.Dist | None = None,
             precision: str = "fp32") -> tuple[float, float, int]:
    """Mean loss, top-1 (%) and image count over a loader, summed over all ranks. The model's
    train/eval mode is restored."""
    d = d or dist.Dist()
    was_training = net.training
    net.eval()
    device = d.device if d.world > 1 else None
    totals = None
    for x, y in loader:
        if totals is None:
            totals = torch.zeros(3, device=device or x.device, dtype=torch.float64)
        x = x.to(_dtype(precision)) if x.is_floating_point() else x
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = net(x)
        totals[0] += F.cross_entropy(logits.float(), y, reduction="sum")
        totals[1] += (logits.argmax(1) == y).sum()
        totals[2] += y.shape[0]
    net.train(was_training)
    if totals is None:
        totals = torch.zeros(3, device=d.device, dtype=torch.float64)
    loss, correct, count = dist.all_sum(totals, d).tolist()
    return loss / max(count, 1), 100.0 * correct / max(count, 1), int(count)


class Progress:
    """Training progress in the form that fits where it runs: a tqdm bar in a terminal or in
    JupyterLab (tqdm's notebook bar), plain lines at most every ``min_interval`` seconds under
    papermill and in logs (``UNIQ_PROGRESS=lines``), nothing with ``quiet``."""

    def __init__(self, label: str, total: int, quiet: bool, min_interval: float = 10.0) -> None:
        import os

        self.label, self.total, self.bar = label, total, None
        self.min_interval, self.last = min_interval, time.time()
        mode = os.environ.get("UNIQ_PROGRESS", "auto")
        self.quiet = quiet or mode == "none"
        if self.quiet or mode == "lines":
            return
        if _in_notebook():
            try:
                from tqdm.notebook import tqdm as notebook_tqdm

                self.bar = notebook_tqdm(total=total, desc=label, leave=False)
            except ImportError:  # no ipywidgets: plain lines
                self.bar = None
        elif sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, leave=False)

    def update(self, done: int, text: str | None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if text:
                self.bar.set_postfix_str(text)
        elif text and not self.quiet and time.time() - self.last >= self.min_interval:
            print(f"[{self.label}] step {done}/{self.total} {text}", flush=True)
            self.last = time.time()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"
    except ImportError:
        return False


# --- runs on disk ---------------------------------------------------------------------------


TASKS: dict[str, type[RunConfig]] = {}


def register(cls: type[RunConfig]) -> type[RunConfig]:
    TASKS[cls.task] = cls
    return cls


def _task_class(name: str) -> type[RunConfig]:
    if not TASKS:
        from . import cifar, imagenet  # noqa: F401 - they register themselves
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


@dataclass
class Run:
    """A finished run on disk: its config and ``result.json``."""

    dir: Path
    config: RunConfig
    result: dict

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        run_dir = Path(run_dir)
        if not (run_dir / "config.json").exists():
            raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
        saved = read_json(run_dir / "config.json")
        try:
            cfg = _task_class(saved.get("task", "cifar")).from_dict(saved["config"])
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptFile(f"{run_dir / 'config.json'} does not hold a valid config ({err}); "
                              "delete the run directory to retrain it") from err
        key = cfg.key()
        scheme = saved.get("key_scheme", 1)
        if scheme != KEY_SCHEME and not run_dir.name.endswith(key):
            raise CorruptFile(
                f"{run_dir} was made under key scheme {scheme}; this uniq names runs by scheme "
                f"{KEY_SCHEME}, so its name is no longer its config's key ({key}). If it is the "
                f"run you want, rename it to {run_dir.parent / (cfg.label() + '-' + key)}; "
                "otherwise delete it to retrain")
        if not run_dir.name.endswith(key):
            raise CorruptFile(
                f"{run_dir / 'config.json'} was changed after the run was made: its config "
                f"hashes to {key}, the directory name says {run_dir.name.rsplit('-', 1)[-1]}. "
                "Restore the file, or delete the directory to retrain")
        result = read_json(run_dir / "result.json") if (run_dir / "result.json").exists() else {}
        return cls(run_dir, cfg, result)

    @property
    def finished(self) -> bool:
        return bool(self.result)

    @property
    def top1(self) -> float:
        return self.result["top1_final"]

    @property
    def summary(self) -> dict:  # the former name of ``result``
        return self.result

    def metrics(self) -> pd.DataFrame:
        return pd.read_csv(self.dir / "metrics.csv")

    def dynamics(self) -> pd.DataFrame:
        path = self.dir / "dynamics.csv"
        return pd.read_csv(path) if path.exists() and path.stat().st_size else pd.DataFrame()

    def state_dict(self) -> dict[str, torch.Tensor]:
        path = self.dir / "model.pt"
        state = load_checkpoint(path if path.exists() else self.dir / "checkpoint.pt")
        return state.get("model", state)

    def model(self) -> nn.Module:
        """The trained model, rebuilt and loaded on the CPU (eval mode)."""
        c = self.config.resolved()
        num_classes = int(self.result.get("num_classes") or read_json(
            self.dir / "config.json").get("data", {}).get("num_classes", 100))
        model = c.make_model(num_classes, c.example_input(), pretrained=False)
        load_weights_into(model, self.state_dict(), str(self.dir / "model.pt"))
        return model.eval()


def load_weights_into(model: nn.Module, state: dict, where: str, strict: bool = True) -> None:
    """``load_state_dict`` with a message that names the file and what does not fit."""
    if strict:
        try:
            model.load_state_dict(state)
            return
        except RuntimeError as err:
            own = set(model.state_dict())
            missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
            detail = (f"missing {missing[:3]}, unexpected {unexpected[:3]}"
                      if missing or unexpected else str(err).splitlines()[-1][:200])
            raise ValueError(f"the weights in {where} do not fit this model ({detail}); check "
                             "--arch/--depth/--bits against the run that saved them") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = unexpected or [k for k in missing if "quantizer" not in k]
    if bad:
        raise ValueError(f"the weights in {where} do not fit this model (e.g. {bad[:3]}); "
                         "check that the start run has the same architecture")


def older_scheme_run(cfg: RunConfig) -> Path | None:
    """A run directory of this run's label made under another key scheme whose saved config is
    this config (every field but the placement ones): the same computation under an old name.
    None when there is none."""
    run_dir = cfg.run_dir()
    if run_dir.exists() or not run_dir.parent.is_dir():
        return None
    want = {k: v for k, v in cfg.resolved().to_dict().items() if k not in PLACEMENT}
    for other in sorted(run_dir.parent.glob(f"{cfg.label()}-*")):
        try:
            saved = read_json(other / "config.json")
        except (FileNotFoundError, CorruptFile):
            continue
        if saved.get("key_scheme", 1) == KEY_SCHEME:
            continue
        fields = dict(saved["config"])
        # Scheme 1 applied a non-MSE init to every layer (there was no init_scope field).
        fields.setdefault("init_scope", "all")
        try:
            old = type(cfg).from_dict({**fields, **placement(cfg)}).resolved()
        except (KeyError, TypeError, ValueError):
            continue
        if {k: v for k, v in old.to_dict().items() if k not in PLACEMENT} == want:
            return other
    return None


def check_key_scheme(cfg: RunConfig) -> None:
    """Stop with what to do when this run exists under an older key scheme."""
    old = older_scheme_run(cfg)
    if old is None:
        return
    scheme = read_json(old / "config.json").get("key_scheme", 1)
    what = (f"its saved config is this one, so rename it to reuse it (mv {old} "
            f"{cfg.run_dir()}), or delete it (or pass --fresh) to retrain"
            if (old / "result.json").exists() else "it is unfinished and its checkpoint is "
            "keyed by the old scheme: delete it, or pass --fresh to retrain")
    raise ValueError(f"{old} holds this run under key scheme {scheme} (this uniq names runs by "
                     f"scheme {KEY_SCHEME}, so it is not found under its new name): {what}")


def remove_stale_temporaries(run_dir: Path, say=print) -> None:
    """Temporary files (``.NAME.HOST.PID.tmp``) left by processes of this host that died
    mid-write; called under the run's lock, so no live writer owns them."""
    import os
    import socket

    host = socket.gethostname()
    for tmp in run_dir.glob(f".*.{host}.*.tmp"):
        pid_text = tmp.name.rsplit(".", 2)[1]
        if not pid_text.isdigit() or not tmp.name.endswith(f".{host}.{pid_text}.tmp"):
            continue
        pid = int(pid_text)
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only copy of the runs: nothing to tidy there
            continue
        say(f"[{run_dir.name}] removed {tmp.name}, left by pid {pid} that ended mid-write")


def finished_run(run_dir: Path) -> Run | None:
    if (run_dir / "result.json").exists():
        return Run.load(run_dir)
    return None


def start_weights(path: Path) -> dict[str, torch.Tensor]:
    """Weights of a run directory (``model.pt``, else the last good ``checkpoint.pt``) or a
    checkpoint file, without quantizer state: the new run converts and calibrates afresh (so a
    1-bit run started from a 2-bit one really has 2 levels and 1-bit steps)."""
    p = path
    if p.is_dir():
        p = p / "model.pt" if (p / "model.pt").exists() else p / "checkpoint.pt"
    if not p.is_file():
        raise FileNotFoundError(f"--init-from-run: no model.pt or checkpoint.pt in {path}")
    state = load_checkpoint(p)
    state = state.get("model", state) if isinstance(state, dict) else state
    return {k: v for k, v in state.items() if "quantizer" not in k}


# --- fit ------------------------------------------------------------------------------------


def fit(config: RunConfig, *, resume: str = "auto", quiet: bool = False) -> Run | None:
    """Train a run, or return it from disk if it finished before. Returns ``None`` when
    ``stop_after`` made it leave early (the next call continues).

    ``resume``: "auto" continues an unfinished run from its checkpoint, "require" fails if there
    is no checkpoint, "never" starts this run over (its parent run is left alone).
    """
    if resume not in RESUME_MODES:
        raise ValueError(f"resume must be one of {RESUME_MODES}, got {resume!r}")
    cfg = config.resolved()
    d = dist.init(cfg.device)
    say = _printer(d.main and not quiet)
    run_dir = cfg.run_dir()
    ckpt_path = run_dir / "checkpoint.pt"
    if resume != "never" and (done := finished_run(run_dir)):
        if d.main:
            remove_stale_temporaries(run_dir, say)
        say(f"[{run_dir.name}] finished before: top-1 {done.top1:.2f}% (cached)")
        return done
    if resume == "require" and not ckpt_path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    if resume != "never":
        check_key_scheme(cfg)

    start = None
    if cfg.init_from is not None:
        parent_cfg = type(cfg).from_dict({**cfg.init_from, **placement(cfg)})
        parent = fit(parent_cfg, quiet=quiet)  # --fresh is not passed on: it is shared work
        if parent is None:
            return None
        start = start_weights(parent.dir)
    elif cfg.init_from_run:
        start = start_weights(Path(cfg.init_from_run))

    lock = RunLock(run_dir, wait=cfg.wait, say=say) if d.main else nullcontext()
    with lock:
        done = finished_run(run_dir) if resume != "never" else None
        done_dir = dist.broadcast(str(done.dir) if done else "", d)
        if done_dir:
            say(f"[{run_dir.name}] finished by another process: top-1 {done.top1:.2f}%")
            return Run.load(done_dir)
        if d.main and run_dir.is_dir():
            remove_stale_temporaries(run_dir, say)
        if resume == "never" and d.main:
            for name in ("result.json", "model.pt", "checkpoint.pt"):
                (run_dir / name).unlink(missing_ok=True)
        dist.barrier(d)
        with value_checks(False):  # the same on every device: see uniq.functional
            return _train(cfg, d, run_dir, start, say, quiet)


def placement(cfg: RunConfig) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if not f.metadata.get("hashed", True) and f.name != "stop_after"}


def _printer(on: bool) -> Callable[..., None]:
    if not on:
        return lambda *a, **k: None
    return lambda *a, **k: print(*a, **{"flush": True, **k})


def _environment(device: torch.device, d: dist.Dist) -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "device": str(device), "host": platform.node(), "world_size": d.world,
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
           "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


@dataclass
class Session:
    """A run in memory: data, the model (``net`` is what the step calls: the model, or its
    DDP / torch.compile wrapper), the optimizer, the recipe and the checkpoint resumed from."""

    cfg: RunConfig
    d: dist.Dist
    data: TaskData
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    recipe: Recipe
    checkpoint: dict | None


def set_precision(precision: str) -> None:
    """fp32 means IEEE float32 everywhere (the authors' runs predate TF32): PyTorch's default
    of TF32 cuDNN convolutions is switched off; ``tf32`` switches TF32 on for both."""
    tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


def prepare(cfg: RunConfig, d: dist.Dist, start: dict | None = None,
            checkpoint: Path | None = None) -> Session:
    """Load the data, build and convert the model, load the start weights or the checkpoint,
    calibrate (a new quantized run), wrap for DDP and torch.compile, build the optimizer."""
    set_precision(cfg.precision)
    data = cfg.make_data(d)
    torch.manual_seed(cfg.seed)
    model = cfg.make_model(data.info["num_classes"], cfg.example_input(),
                           pretrained=start is None)
    if start is not None:
        load_weights_into(model, start, "the start run", strict=False)
    dtype = _dtype(cfg.precision)
    channels_last = d.device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    model.to(d.device, dtype)
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    ckpt = load_checkpoint(checkpoint, d.device) if checkpoint and checkpoint.exists() else None
    if ckpt is not None and ckpt.get("key") != cfg.key():
        raise CorruptFile(f"{checkpoint} belongs to another config (key {ckpt.get('key')}, "
                          f"this run is {cfg.key()}); start over with --fresh")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    elif cfg.bits != FULL_PRECISION:
        # Every rank calibrates on the same global batches, so the steps agree everywhere.
        batches = ((x.to(dtype), y) for x, y in data.calibration())
        calibrate(model, batches, cfg.calib_batches)
    for name, q in quantizers(model):
        if name.endswith("act_quantizer"):
            q.batch_replicas = d.world  # the global batch sets the gradient scale
    if cfg.sync_bn:
        model = dist.sync_batchnorm(model, d)
    net: nn.Module = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if cfg.compile != "none":
        net = torch.compile(net, mode=None if cfg.compile == "default" else cfg.compile)
    recipe = cfg.recipe_obj()
    optimizer = build_optimizer(model, recipe,
                                fused=d.device.type == "cuda" and dtype != torch.float64)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    return Session(cfg, d, data, model, net, optimizer, recipe, ckpt)


def _train(cfg: RunConfig, d: dist.Dist, run_dir: Path, start: dict | None, say,
           quiet: bool) -> Run | None:
    label = run_dir.name
    say(f"[{label}] preparing: data, model{', calibration' if cfg.bits != 32 else ''} ...")
    t_setup = time.time()
    ckpt_path = run_dir / "checkpoint.pt"
    s = prepare(cfg, d, start, ckpt_path)
    data, model, net, optimizer, recipe, ckpt = (s.data, s.model, s.net, s.optimizer,
                                                 s.recipe, s.checkpoint)
    history = {"metrics": [], "dynamics": []}
    start_epoch = step = 0
    if ckpt is not None:
        set_rng_state(ckpt["rng"])
        start_epoch, step, history = ckpt["epoch"], ckpt["step"], ckpt["history"]
        say(f"[{label}] resuming at epoch {start_epoch}")
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic({"task": cfg.task, "config": cfg.to_dict(), "key": cfg.key(),
                           "key_scheme": KEY_SCHEME,
                           "label": cfg.label(), "recipe": recipe.as_dict(), "data": data.info,
                           "conversion": conversion_report(model).to_dict("records")
                           if cfg.bits != FULL_PRECISION else [],
                           "environment": _environment(d.device, d)}, run_dir / "config.json")
        _write_logs(run_dir, history)
    say(f"[{label}] ready in {time.time() - t_setup:.1f}s: {len(data.train)} steps per epoch, "
        f"epochs {start_epoch + 1}..{cfg.epochs}, {recipe.optimizer} lr {recipe.lr:g} with "
        f"{'cosine decay' if recipe.schedule == 'cosine' else 'a constant rate'}"
        f"{f' after {recipe.warmup_epochs:g} warm-up epochs' if recipe.warmup_epochs else ''}")

    for epoch in range(start_epoch, cfg.epochs):
        if cfg.stop_after and epoch - start_epoch >= cfg.stop_after:
            say(f"[{label}] stopping after {cfg.stop_after} epoch(s); run again to continue")
            return None
        t0 = time.time()
        row, dyn, step = train_one_epoch(cfg, net, model, optimizer, data.train, recipe, d,
                                         epoch, step, label, quiet)
        eval_loss, eval_top1, _ = evaluate(net, data.eval, d, cfg.precision)
        row.update(eval_loss=eval_loss, eval_top1=eval_top1, epoch_time_s=time.time() - t0)
        check_finite(model, row["train_loss"], epoch, step, cfg, label, eval_loss)
        history["metrics"].append(row)
        history["dynamics"] += dyn
        if d.main:
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "epoch": epoch + 1, "step": step, "rng": rng_state(),
                         "key": cfg.key(), "history": history}, ckpt_path)
            _write_logs(run_dir, history)
        say(f"[{label}] epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}, "
            f"eval top-1 {eval_top1:.2f}%, lr {row['lr']:.2g} ({row['epoch_time_s']:.1f}s)")

    metrics = pd.DataFrame(history["metrics"])
    digests = dist.all_gather(dist.weights_digest(model), d)
    best = int(metrics.eval_top1.idxmax())
    result = {
        "task": cfg.task, "label": cfg.label(), "key": cfg.key(), "run": run_dir.name,
        "top1_final": float(metrics.eval_top1.iloc[-1]),
        "top1_best": float(metrics.eval_top1.max()), "best_epoch": int(metrics.epoch[best]),
        "loss_final": float(metrics.eval_loss.iloc[-1]),
        "train_loss_final": float(metrics.train_loss.iloc[-1]),
        "epochs": cfg.epochs, "steps": step, "bits": cfg.bits, "method": cfg.method,
        "precision": cfg.precision, "seed": cfg.seed, **data.info,
        "train_time_s": float(metrics.epoch_time_s.sum()), "world_size": d.world,
        "ranks_identical": len(set(digests)) == 1, "weights_sha256": digests[0],
        "environment": _environment(d.device, d),
    }
    if d.main:
        save_atomic(model.state_dict(), run_dir / "model.pt")
        write_json_atomic(result, run_dir / "result.json")
    dist.barrier(d)
    return Run(run_dir, cfg, result)


def _write_logs(run_dir: Path, history: dict) -> None:
    write_csv_atomic(history["metrics"], run_dir / "metrics.csv")
    write_csv_atomic(history["dynamics"], run_dir / "dynamics.csv")


def train_one_epoch(cfg: RunConfig, net: nn.Module, model: nn.Module,
                    optimizer: torch.optim.Optimizer, loader, recipe: Recipe, d: dist.Dist,
                    epoch: int, step: int, label: str, quiet: bool
                    ) -> tuple[dict, list[dict], int]:
    """One epoch of training steps (no host sync inside them), a few dynamics probes, and a loss
    check every ``log_every`` steps. Returns the epoch's metrics row, dynamics rows and step."""
    net.train()
    loader.set_epoch(epoch)
    n = len(loader)
    dtype = _dtype(cfg.precision)
    probe_every = max(n // max(cfg.dynamics_per_epoch, 1), 1)
    probing = cfg.bits != FULL_PRECISION and cfg.dynamics_per_epoch > 0
    loss_sum = torch.zeros((), device=d.device, dtype=torch.float64)
    correct = torch.zeros((), device=d.device, dtype=torch.long)
    seen, probes, lr = 0, [], recipe.lr
    progress = Progress(f"{label} epoch {epoch + 1}/{cfg.epochs}", n, quiet or not d.main)
    for i, (x, y) in enumerate(loader):
        lr = lr_at(recipe, epoch + i / n, cfg.epochs)
        set_lr(optimizer, lr)
        x = x.to(dtype)
        if probing and i % probe_every == 0:
            probes.append((epoch + i / n, step, record_dynamics(model, x, cfg.precision)))
        batch_loss, batch_correct = train_step(net, optimizer, x, y, cfg.precision)
        loss_sum += batch_loss
        correct += batch_correct
        seen += y.shape[0]
        step += 1
        text = None
        if (i + 1) % cfg.log_every == 0 or i + 1 == n:
            total = dist.all_sum(torch.stack([loss_sum, correct.double()]), d)
            mean_loss = float(total[0]) / (seen * d.world)  # a periodic sync, between steps
            if not math.isfinite(mean_loss):
                raise diverged(f"the training loss became {mean_loss}", epoch, step, cfg, label)
            text = f"loss {mean_loss:.4f} lr {lr:.2g}"
        progress.update(i + 1, text)
    progress.close()
    total = dist.all_sum(torch.stack([loss_sum, correct.double()]), d)
    row = {"epoch": epoch, "step": step, "lr": lr,
           "train_loss": float(total[0]) / (seen * d.world),
           "train_top1": 100.0 * float(total[1]) / (seen * d.world)}
    return row, probe_rows(epoch, probes) if d.main else [], step


def restart_lr(cfg: RunConfig) -> float:
    """A learning rate to restart a diverged run with, on the recipe's own scale: half the
    recipe's rate, or half the rate used if that was already lower (an ``--lr`` far above the
    recipe's would diverge again at half its value)."""
    own = get_recipe(cfg.recipe or default_recipe(cfg.bits)).lr
    return min(cfg.recipe_obj().lr, own) / 2


def diverged(what: str, epoch: int, step: int, cfg: RunConfig, label: str) -> TrainingDiverged:
    run_dir = cfg.run_dir()
    ckpt = run_dir / "checkpoint.pt"
    kept = (f"The last good checkpoint (end of an earlier epoch) is kept at {ckpt}."
            if ckpt.exists() else "No checkpoint had been written yet.")
    lr = restart_lr(cfg)
    how = (f"To continue, start a new run from it with a lower learning rate, e.g. "
           f"--init-from-run {run_dir} --lr {lr:g} (weights only, steps re-calibrated)"
           if ckpt.exists() else "Lower the learning rate (--lr), add warm-up, or check the "
           "data and the step-size init")
    return TrainingDiverged(f"[{label}] training diverged in epoch {epoch + 1} (step {step}): "
                            f"{what}. {kept} {how}.")


def check_finite(model: nn.Module, loss: float, epoch: int, step: int, cfg: RunConfig,
                 label: str, eval_loss: float = 0.0) -> None:
    """Before a checkpoint is written: the training loss, the evaluation loss and every
    parameter (steps included) finite, so every checkpoint kept is a good one. One host sync
    for all parameters; the names are looked up only when something is bad."""
    params = list(model.parameters())
    weights_ok = bool(torch.stack([torch.isfinite(p).all() for p in params]).all())
    if math.isfinite(loss) and math.isfinite(eval_loss) and weights_ok:
        return
    bad = [] if math.isfinite(loss) else [f"the training loss is {loss}"]
    if not math.isfinite(eval_loss):
        bad += [f"the evaluation loss is {eval_loss}"]
    if not weights_ok:
        bad += [f"{next(n for n, p in model.named_parameters() if not torch.isfinite(p).all())} "
                "is not finite"]
    raise diverged("; ".join(bad) + " (no checkpoint of this epoch was written)", epoch, step,
                   cfg, label)


def evaluate_weights(config: RunConfig, path: str | Path) -> dict[str, Any]:
    """Evaluate the weights in ``path`` (model.pt or checkpoint.pt) on the task's evaluation
    set; builds the model's structure only (no pretrained download)."""
    cfg = config.resolved()
    d = dist.init(cfg.device)
    path = resolve_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--evaluate: no file at {path}")
    data = cfg.make_data(d)
    model = cfg.make_model(data.info["num_classes"], cfg.example_input(), pretrained=False)
    state = load_checkpoint(path)
    load_weights_into(model, state.get("model", state), str(path))
    model.to(d.device, _dtype(cfg.precision))
    set_precision(cfg.precision)
    loss, top1, n = evaluate(model, data.eval, d, cfg.precision)
    return {"task": cfg.task, "label": cfg.label(), "evaluated": str(path), "top1": top1,
            "loss": loss, "images": n, "precision": cfg.precision, **data.info}
