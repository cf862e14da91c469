"""How a run executes, the same for every task: ``fit`` (cached, resumable, one process or
torchrun), ``prepare``, one ``train_one_epoch``, one ``evaluate``, divergence checks.

A single process is simply world size 1; under torchrun every rank runs the same code, rank 0
writes. ``fit(config)`` resolves the config once, returns a finished run without loading any data,
resumes an unfinished one from its checkpoint, and otherwise trains it (its parent run first, if
it has one and it is missing). The run's files are described in ``uniq.repro.runs``.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..convert import calibrate, conversion_report
from ..functional import value_checks
from ..modules import quantizers, step_parameters
from ..state import rng_state, set_rng_state
from . import distributed as dist
from .config import (
    FULL_PRECISION,
    KEY_SCHEME,
    RESUME_MODES,
    RunConfig,
    TrainingDiverged,
    placement,
)
from .dynamics import probe_rows, record_dynamics
from .paths import resolve_path
from .recipes import Recipe, default_recipe, get_recipe, lr_at
from .runs import (
    CorruptFile,
    Run,
    RunLock,
    check_key_scheme,
    finished_run,
    load_checkpoint,
    load_weights_into,
    remove_stale_temporaries,
    save_atomic,
    start_weights,
    write_csv_atomic,
    write_json_atomic,
)
from .tasks import TaskData, make_data, make_model


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
    """Training progress in the form that fits where it runs: tqdm's bar (``tqdm.auto``: the
    widget in JupyterLab, text in a terminal), plain lines at most every ``min_interval`` seconds
    under papermill, in logs and with ``UNIQ_PROGRESS=lines``, nothing with ``quiet``."""

    def __init__(self, label: str, total: int, quiet: bool, min_interval: float = 10.0) -> None:
        import os
        import sys

        self.label, self.total, self.bar = label, total, None
        # ``uniq.repro.jobs`` asks its workers for more frequent lines: it draws them as bars
        self.min_interval = float(os.environ.get("UNIQ_PROGRESS_INTERVAL", min_interval))
        self.last = time.time()
        mode = os.environ.get("UNIQ_PROGRESS", "auto")
        self.quiet = quiet or mode == "none"
        # A terminal or a Jupyter kernel (``reproduce`` sets ``UNIQ_PROGRESS=lines`` for its
        # headless kernels, where a widget would never be seen).
        interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
        if not self.quiet and mode != "lines" and interactive:
            from tqdm.auto import tqdm

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


def build_optimizer(model: nn.Module, recipe: Recipe, fused: bool = False) -> torch.optim.Optimizer:
    """SGD (momentum) or Adam with weight decay on everything except the step sizes."""
    steps = {id(p) for p in step_parameters(model)}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in steps], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if id(p) in steps], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    kwargs = {"fused": True} if fused else {}
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, **kwargs)
    return torch.optim.Adam(groups, lr=recipe.lr, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


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
        # the same on every device (see uniq.functional), on the run's own thread count
        with value_checks(False), cpu_threads(cfg.threads):
            return _train(cfg, d, run_dir, start, say, quiet)


@contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the life of the block (0: leave PyTorch's own
    count). A float sum split over another number of threads rounds differently, so a profile
    fixes this count and every run records it (``_environment``)."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _printer(on: bool) -> Callable[..., None]:
    if not on:
        return lambda *a, **k: None
    return lambda *a, **k: print(*a, **{"flush": True, **k})


def _environment(device: torch.device, d: dist.Dist) -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "device": str(device), "host": platform.node(), "world_size": d.world,
           "threads": torch.get_num_threads(),
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
    data = make_data(cfg, d)
    torch.manual_seed(cfg.seed)
    model = make_model(cfg, data.info["num_classes"],
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
    calibration = ", calibration" if cfg.bits != FULL_PRECISION else ""
    say(f"[{label}] preparing: data, model{calibration} ...")
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
        lr = lr_at(recipe, epoch + i / n, cfg.schedule_epochs or cfg.epochs)
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
    data = make_data(cfg, d)
    model = make_model(cfg, data.info["num_classes"])
    state = load_checkpoint(path)
    load_weights_into(model, state.get("model", state), str(path))
    model.to(d.device, _dtype(cfg.precision))
    set_precision(cfg.precision)
    loss, top1, n = evaluate(model, data.eval, d, cfg.precision)
    return {"task": cfg.task, "label": cfg.label(), "evaluated": str(path), "top1": top1,
            "loss": loss, "images": n, "precision": cfg.precision, **data.info}
