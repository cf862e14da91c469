"""The CIFAR training engine: configs, cached and resumable runs, the training loop.

A run lives in ``<runs_dir>/<label>-<hash>/`` where the hash covers every field of its config that
can change the result (and, for a quantized run, the config of the run it starts from):

    config.json     the full config, the recipe spelled out, the dataset used
    metrics.csv     one row per epoch: losses, top-1, learning rate, time
    dynamics.csv    several rows per epoch and activation quantizer: step, input std, SQNR
    checkpoint.pt   written atomically every epoch: model, optimizer, epoch, step, RNG states
    model.pt        the final weights (state dict)
    summary.json    written last; its presence means "finished"

``train(config)`` returns a finished run from disk without training, resumes an unfinished one
from its checkpoint, and otherwise trains from scratch (training the parent run first if needed).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import data as D
from .convert import calibrate, quantize_model
from .dynamics import record_dynamics, rng_state, set_rng_state
from .functional import check_bits
from .models import preact_resnet
from .mse import check_init, optimal_sqnr_db
from .recipes import Recipe, build_optimizer, default_recipe, get_recipe, lr_at, set_lr

FULL_PRECISION = 32
# Fields that choose where and how fast a run executes, not what it computes.
NOT_HASHED = ("device", "compile", "runs_dir", "data_dir", "log_every", "workers", "download")


@dataclass
class TrainConfig:
    """Everything that defines a CIFAR run. ``bits=32`` is full precision."""

    dataset: str = "cifar100"            # "cifar100" or "synthetic" (generated, offline)
    data_fraction: float = 1.0           # use a random fraction of the training set
    synthetic_train: int = 50_000
    synthetic_test: int = 10_000
    depth: int = 32
    bits: int = FULL_PRECISION
    method: str = "uniq"                 # "uniq" or "lsq"
    init: str | float = "mse"            # "mse", "lsq" or a constant (Table 5)
    grad_scale: bool = True              # LSQ's step-gradient scale, as in the authors' code
    weight_granularity: str = "tensor"   # CIFAR: layer-wise weights and activations
    recipe: str = ""                     # "" = the paper's default for the bit width
    lr: float | None = None              # overrides of the recipe's fields
    warmup_epochs: float | None = None
    weight_decay: float | None = None
    epochs: int = 350
    batch_size: int = 128
    calib_batches: int = 100
    seed: int = 0
    init_from: dict | None = None        # config of the run whose weights start this one
    amp: bool | None = None              # bf16 autocast; None = on for CUDA
    channels_last: bool | None = None    # None = on for CUDA
    loader: str = "tensor"               # "tensor" (device-resident) or "dataloader"
    dynamics_per_epoch: int = 4
    # Not part of the hash:
    device: str = "auto"
    compile: str = "none"                # "none", "default", "max-autotune", "reduce-overhead"
    runs_dir: str = "runs"
    data_dir: str = "data"
    log_every: int = 50
    workers: int = 2
    download: bool = True

    def __post_init__(self) -> None:
        if not self.recipe:
            self.recipe = default_recipe(self.bits)
        self.validate()

    def validate(self) -> None:
        if self.bits != FULL_PRECISION:
            check_bits(self.bits)
        if self.method not in ("uniq", "lsq"):
            raise ValueError(f"method must be 'uniq' or 'lsq', got {self.method!r}")
        if self.method == "lsq" and self.bits == 1:
            raise ValueError("LSQ has no 1-bit weight quantizer; use method='uniq' for 1 bit")
        if isinstance(self.init, str) and self.init.replace(".", "", 1).isdigit():
            self.init = float(self.init)
        check_init(self.init)
        self.get_recipe()
        for name in ("epochs", "batch_size", "calib_batches", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.dataset not in ("cifar100", "synthetic"):
            raise ValueError(f"dataset must be 'cifar100' or 'synthetic', got {self.dataset!r}")
        if not 0 < self.data_fraction <= 1:
            raise ValueError(f"data_fraction must be in (0, 1], got {self.data_fraction}")
        if self.loader not in ("tensor", "dataloader"):
            raise ValueError(f"loader must be 'tensor' or 'dataloader', got {self.loader!r}")
        if self.compile not in ("none", "default", "max-autotune", "reduce-overhead"):
            raise ValueError(f"unknown compile mode {self.compile!r}")
        if self.weight_granularity not in ("tensor", "channel"):
            raise ValueError("weight_granularity must be 'tensor' or 'channel'")

    def get_recipe(self) -> Recipe:
        return get_recipe(self.recipe, lr=self.lr, warmup_epochs=self.warmup_epochs,
                          weight_decay=self.weight_decay)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**d)

    def hashed(self) -> dict[str, Any]:
        d = {k: v for k, v in self.to_dict().items() if k not in NOT_HASHED}
        if self.init_from is not None:
            d["init_from"] = TrainConfig.from_dict(self.init_from).key()
        d["recipe_spelled_out"] = self.get_recipe().as_dict()
        return d

    def key(self) -> str:
        blob = json.dumps(self.hashed(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def label(self) -> str:
        what = "fp" if self.bits == FULL_PRECISION else f"{self.method}{self.bits}b"
        return f"resnet{self.depth}-{what}-{self.recipe}"

    def run_dir(self) -> Path:
        return Path(self.runs_dir) / f"{self.label()}-{self.key()}"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


@dataclass
class Run:
    """A finished run on disk."""

    dir: Path
    config: TrainConfig
    summary: dict

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        run_dir = Path(run_dir)
        cfg = json.loads((run_dir / "config.json").read_text())["config"]
        return cls(run_dir, TrainConfig.from_dict(cfg),
                   json.loads((run_dir / "summary.json").read_text()))

    @property
    def top1(self) -> float:
        return self.summary["final_test_top1"]

    def metrics(self) -> pd.DataFrame:
        return pd.read_csv(self.dir / "metrics.csv")

    def dynamics(self) -> pd.DataFrame:
        path = self.dir / "dynamics.csv"
        return pd.read_csv(path) if path.exists() and path.stat().st_size else pd.DataFrame()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return torch.load(self.dir / "model.pt", map_location="cpu", weights_only=True)

    def model(self) -> nn.Module:
        """The trained model, rebuilt and loaded on the CPU (eval mode)."""
        model = build_model(self.config, num_classes=self.summary["num_classes"])
        model.load_state_dict(self.state_dict())
        return model.eval()


# --- building blocks ------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is visible; use 'cpu'")
    return torch.device(name)


def load_data(cfg: TrainConfig) -> tuple[D.ImageData, D.ImageData]:
    size = (cfg.synthetic_train, cfg.synthetic_test)
    train = D.load_dataset(cfg.dataset, True, cfg.data_dir, cfg.seed, size, cfg.download)
    test = D.load_dataset(cfg.dataset, False, cfg.data_dir, cfg.seed, size, cfg.download)
    return train.subset(cfg.data_fraction, cfg.seed), test


def build_model(cfg: TrainConfig, num_classes: int = 100) -> nn.Module:
    """The (unconverted or converted, uncalibrated) model of a config, on the CPU."""
    model = preact_resnet(cfg.depth, num_classes)
    if cfg.bits != FULL_PRECISION:
        g = torch.Generator().manual_seed(0)
        model = quantize_model(model, cfg.bits, cfg.method, cfg.weight_granularity,
                               init=cfg.init, grad_scale=cfg.grad_scale, inplace=True,
                               example_input=torch.randn(2, 3, 32, 32, generator=g))
    return model


def parent_weights(cfg: TrainConfig, **kwargs) -> dict[str, torch.Tensor] | None:
    """Weights of the run this one starts from (trained first if not cached), quantizer state
    dropped: the new run converts and calibrates afresh (the 1-bit run from a 2-bit one too)."""
    if cfg.init_from is None:
        return None
    parent_cfg = TrainConfig.from_dict({**cfg.init_from, **_placement(cfg)})
    parent = train(parent_cfg, **kwargs)
    return {k: v for k, v in parent.state_dict().items() if "quantizer" not in k}


def _placement(cfg: TrainConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in NOT_HASHED}


def save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


class CsvLog:
    """An append-only CSV whose rows from an interrupted epoch are dropped on resume."""

    def __init__(self, path: Path, resume_epoch: int) -> None:
        self.path = path
        rows: list[dict] = []
        if path.exists() and resume_epoch > 0:
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < resume_epoch]
        self.fields: list[str] | None = list(rows[0]) if rows else None
        with path.open("w", newline="") as f:
            if rows:
                w = csv.DictWriter(f, fieldnames=self.fields)
                w.writeheader()
                w.writerows(rows)

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        with self.path.open("a", newline="") as f:
            if self.fields is None:
                self.fields = list(rows[0])
                csv.DictWriter(f, fieldnames=self.fields).writeheader()
            csv.DictWriter(f, fieldnames=self.fields).writerows(rows)


class Progress:
    """tqdm on a terminal; plain periodic lines otherwise (papermill, CI, log files)."""

    def __init__(self, label: str, total: int, every: int) -> None:
        self.label, self.total, self.every, self.bar = label, total, max(every, 1), None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=label, leave=False)

    def update(self, step: int, text: str | None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if text:
                self.bar.set_postfix_str(text)
        elif text:
            print(f"[{self.label}] step {step}/{self.total} {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD/Adam step. Returns device tensors (summed loss, correct count): no host sync."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach() * y.shape[0], (logits.argmax(1) == y).sum()


@torch.no_grad()
def evaluate(model: nn.Module, loader, amp: bool = False) -> tuple[float, float]:
    """Mean loss and top-1 (%) over a loader, accumulated on the device."""
    was_training = model.training
    model.eval()
    loss = correct = count = 0
    for x, y in loader:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = loss + F.cross_entropy(logits.float(), y, reduction="sum")
        correct = correct + (logits.argmax(1) == y).sum()
        count += y.shape[0]
    model.train(was_training)
    return float(loss) / count, 100.0 * float(correct) / count


def _environment(device: torch.device) -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "device": str(device), "host": platform.node()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


# --- the run --------------------------------------------------------------------------------


@dataclass
class Setup:
    """What a run needs in memory: device, data, model (eager and possibly compiled), optimizer."""

    cfg: TrainConfig
    device: torch.device
    amp: bool
    train_loader: Any
    test_loader: Any
    model: nn.Module
    net: nn.Module  # the model, or its torch.compile'd wrapper: what the training step calls
    optimizer: torch.optim.Optimizer
    recipe: Recipe
    data_info: dict


def setup(cfg: TrainConfig, start_weights: dict | None) -> Setup:
    """Load data, build (and convert) the model on the device, build the optimizer."""
    device = resolve_device(cfg.device)
    amp = device.type == "cuda" if cfg.amp is None else cfg.amp
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    train_data, test_data = load_data(cfg)
    train_loader = D.make_loader(train_data, cfg.batch_size, True, device, cfg.loader, cfg.seed,
                                 cfg.workers, fmt)
    test_loader = D.make_loader(test_data, 500, False, device, cfg.loader, cfg.seed,
                                cfg.workers, fmt)
    if len(train_loader) == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set "
                         f"({len(train_data)} images)")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, train_data.num_classes)
    if start_weights is not None:
        missing, unexpected = model.load_state_dict(start_weights, strict=False)
        if unexpected or any("quantizer" not in k for k in missing):
            raise ValueError(f"parent run's weights do not fit: {unexpected or missing}")
    model.to(device, memory_format=fmt)
    recipe = cfg.get_recipe()
    optimizer = build_optimizer(model, recipe, fused=device.type == "cuda")
    net = model
    if cfg.compile != "none":
        net = torch.compile(model, mode=None if cfg.compile == "default" else cfg.compile)
    info = {"dataset": train_data.name, "num_classes": train_data.num_classes,
            "train_size": len(train_data), "test_size": len(test_data)}
    return Setup(cfg, device, amp, train_loader, test_loader, model, net, optimizer, recipe, info)


def train_epoch(s: Setup, epoch: int, step: int, label: str, ckpt_path: Path) -> tuple[dict, list]:
    """One epoch: the training steps (no host sync inside them), a few dynamics probes and a
    periodic loss check. Returns the epoch's metrics row and its dynamics rows."""
    cfg, t0 = s.cfg, time.time()
    s.model.train()
    s.train_loader.set_epoch(epoch)
    n = len(s.train_loader)
    probe_every = max(n // max(cfg.dynamics_per_epoch, 1), 1)
    probing = cfg.bits != FULL_PRECISION and cfg.dynamics_per_epoch > 0
    loss_sum = torch.zeros((), device=s.device)
    correct = torch.zeros((), device=s.device, dtype=torch.long)
    seen, probes = 0, []
    progress = Progress(f"{label} epoch {epoch + 1}/{cfg.epochs}", n, cfg.log_every)
    for i, (x, y) in enumerate(s.train_loader):
        lr = lr_at(s.recipe, epoch + i / n, cfg.epochs)
        set_lr(s.optimizer, lr)
        if probing and i % probe_every == 0:
            probes.append((epoch + i / n, step, record_dynamics(s.model, x, s.amp)))
        batch_loss, batch_correct = train_step(s.net, s.optimizer, x, y, s.amp)
        loss_sum += batch_loss
        correct += batch_correct
        seen += y.shape[0]
        step += 1
        text = None
        if (i + 1) % progress.every == 0 or i + 1 == n:
            mean_loss = float(loss_sum) / seen  # a periodic sync, between steps
            _check_finite(mean_loss, epoch, step, ckpt_path)
            text = f"loss {mean_loss:.4f} lr {lr:.5f}"
        progress.update(i + 1, text)
    progress.close()
    test_loss, test_top1 = evaluate(s.net, s.test_loader, s.amp)
    row = {"epoch": epoch, "step": step, "lr": lr, "train_loss": float(loss_sum) / seen,
           "train_top1": 100.0 * float(correct) / seen, "test_loss": test_loss,
           "test_top1": test_top1, "epoch_time_s": time.time() - t0}
    dynamics = [
        {"epoch": epoch, "epoch_float": round(ef, 4), "step": st, "layer": layer,
         "bits": v["bits"], "signed": v["signed"], "step_size": float(v["step"]),
         "input_std": float(v["input_std"]), "sqnr_db": float(v["sqnr_db"]),
         "optimal_sqnr_db": optimal_sqnr_db(v["bits"], "weight" if v["signed"] else "activation")}
        for ef, st, rows in probes for layer, v in rows.items()
    ]
    return row, dynamics


def train(config: TrainConfig | dict, *, resume: str = "auto", quiet: bool = False) -> Run:
    """Train a run, or return it from disk if it finished before.

    ``resume``: "auto" continues an unfinished run from its checkpoint, "require" fails if there
    is no checkpoint, "never" starts over.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    if resume not in ("auto", "require", "never"):
        raise ValueError(f"resume must be 'auto', 'require' or 'never', got {resume!r}")
    run_dir, label = cfg.run_dir(), cfg.run_dir().name
    ckpt_path = run_dir / "checkpoint.pt"
    if (run_dir / "summary.json").exists() and resume != "never":
        return Run.load(run_dir)
    if resume == "require" and not ckpt_path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))

    s = setup(cfg, parent_weights(cfg, resume=resume, quiet=quiet))
    start_epoch, step = 0, 0
    run_dir.mkdir(parents=True, exist_ok=True)
    if ckpt_path.exists() and resume != "never":
        ckpt = torch.load(ckpt_path, map_location=s.device, weights_only=True)
        s.model.load_state_dict(ckpt["model"])
        s.optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        set_rng_state(ckpt["rng"])
        say(f"[{label}] resuming at epoch {start_epoch}")
    else:
        if cfg.bits != FULL_PRECISION:
            s.train_loader.set_epoch(0)
            calibrate(s.model, s.train_loader, cfg.calib_batches)
        write_json_atomic({"config": cfg.to_dict(), "key": cfg.key(),
                           "recipe": s.recipe.as_dict(), **s.data_info,
                           "environment": _environment(s.device)}, run_dir / "config.json")
    metrics_log = CsvLog(run_dir / "metrics.csv", start_epoch)
    dynamics_log = CsvLog(run_dir / "dynamics.csv", start_epoch)

    for epoch in range(start_epoch, cfg.epochs):
        row, dynamics = train_epoch(s, epoch, step, label, ckpt_path)
        step = row["step"]
        metrics_log.append([row])
        dynamics_log.append(dynamics)
        save_atomic({"model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
                     "epoch": epoch + 1, "step": step, "rng": rng_state(), "key": cfg.key()},
                    ckpt_path)
        say(f"[{label}] epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} "
            f"test top-1 {row['test_top1']:.2f}% ({row['epoch_time_s']:.1f}s)")

    metrics = pd.read_csv(run_dir / "metrics.csv")
    save_atomic(s.model.state_dict(), run_dir / "model.pt")
    summary = {
        "final_test_top1": float(metrics.test_top1.iloc[-1]),
        "best_test_top1": float(metrics.test_top1.max()),
        "final_train_loss": float(metrics.train_loss.iloc[-1]),
        "epochs": cfg.epochs, "steps": step, **s.data_info,
        "train_time_s": float(metrics.epoch_time_s.sum()),
        "key": cfg.key(), "environment": _environment(s.device),
    }
    write_json_atomic(summary, run_dir / "summary.json")
    return Run(run_dir, cfg, summary)


def _check_finite(loss: float, epoch: int, step: int, ckpt_path: Path) -> None:
    if not math.isfinite(loss):
        kept = (f"the last good checkpoint is kept at {ckpt_path}" if ckpt_path.exists()
                else "no checkpoint had been written yet")
        raise TrainingDiverged(
            f"training loss became {loss} in epoch {epoch + 1} (step {step}); {kept}. "
            "Lower the learning rate, add warm-up, or check the data and the step-size init"
        )
