"""ImageNet training (Tables 2 and 3): pytorchcv models, ImageFolder data, DDP via torchrun.

    python -m uniq imagenet --arch preresnet18 --bits 2 --data /data/imagenet \\
        --pretrained /weights/preresnet18.pth
    torchrun --nproc-per-node 2 -m uniq imagenet --arch preresnet18 --bits 2 ...
    torchrun --nproc-per-node 2 -m uniq imagenet --arch preresnet18 --bits 1 \\
        --init-from runs/imagenet/preresnet18-uniq2b-<hash>

The recipe is the paper's (Section 5.1): kernel-wise weight and layer-wise activation steps
(MobileNetV2: layer-wise both), global batch 256, SGD lr 0.01 cosine for multi-bit and the Adam
warm-up recipe for 1 bit (started from the 2-bit model), per-bit weight decay (1e-4, 0.5e-4,
0.25e-4, 0 for 4/3/2/1 bits) and none on steps, the first 1000 batches for step calibration,
90 epochs. A run lives in ``<output-dir>/<arch>-<method><bits>b-<hash>/`` like the CIFAR runs:
atomic per-epoch checkpoints, automatic resume, and a ``result.json`` row for notebook 7.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .convert import calibrate, conversion_report, quantize_model
from .dynamics import rng_state, set_rng_state
from .functional import check_bits
from .models import IMAGENET_MODELS, imagenet_model
from .modules import quantizers
from .mse import check_init
from .recipes import IMAGENET_WEIGHT_DECAY, default_recipe, get_recipe, lr_at, set_lr
from .recipes import build_optimizer as _build_optimizer
from .train import CsvLog, save_atomic, train_step, write_json_atomic

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAPER_NAMES = {"preresnet18": "resnet18", "preresnet34": "resnet34",
               "mobilenetv2_w1": "mobilenetv2"}
NOT_HASHED = ("data", "workers", "output_dir", "device", "print_freq", "stop_after", "compile",
              "pretrained")


@dataclass
class ImageNetConfig:
    arch: str = "preresnet18"
    bits: int = 4                      # 32 = evaluate/fine-tune in full precision
    method: str = "uniq"
    data: str = "data/imagenet"        # ImageFolder root with train/ and val/
    pretrained: str = "pytorchcv"      # "pytorchcv" (download/cache), "none", a file or a dir
    init_from: str = ""                # run dir/checkpoint to start from; 1 bit: default 2-bit
    epochs: int = 90
    batch_size: int = 256              # global, over all processes
    recipe: str = ""                   # default: sgd (multi-bit), adam-warmup5 (1 bit)
    lr: float | None = None
    weight_decay: float | None = None  # default: per bit width (Section 5.1)
    calib_batches: int = 1000
    image_size: int = 224
    augment: bool = True               # False: the evaluation transform for training too
    sync_bn: bool = False
    grad_scale: bool = True
    init: str | float = "mse"
    seed: int = 0
    amp: bool | None = None
    workers: int = 8
    output_dir: str = "runs/imagenet"
    device: str = "auto"
    compile: str = "none"
    print_freq: int = 100
    stop_after: int = 0                # leave after this many epochs in this session (0: never)

    def __post_init__(self) -> None:
        if self.arch not in IMAGENET_MODELS:
            raise ValueError(f"unknown arch {self.arch!r}; choose from {IMAGENET_MODELS}")
        if self.bits != 32:
            check_bits(self.bits)
        if self.method == "lsq" and self.bits == 1:
            raise ValueError("LSQ has no 1-bit weight quantizer; use method='uniq' for 1 bit")
        if not self.recipe:
            self.recipe = default_recipe(self.bits)
        try:
            self.init = float(self.init)
        except ValueError:
            pass
        check_init(self.init)
        if self.weight_decay is None:
            self.weight_decay = IMAGENET_WEIGHT_DECAY.get(self.bits, 1e-4)
        get_recipe(self.recipe)
        for name in ("epochs", "batch_size", "calib_batches", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def granularity(self) -> str:
        return "tensor" if self.arch.startswith("mobilenet") else "channel"

    def recipe_obj(self):
        return get_recipe(self.recipe, lr=self.lr, weight_decay=self.weight_decay)

    def key(self) -> str:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in NOT_HASHED}
        d["recipe_spelled_out"] = self.recipe_obj().as_dict()
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def run_dir(self) -> Path:
        what = "fp" if self.bits == 32 else f"{self.method}{self.bits}b"
        return Path(self.output_dir) / f"{self.arch}-{what}-{self.key()}"

    def start_from(self) -> str:
        """Where the weights come from: ``init_from``; for 1 bit by default the finished 2-bit
        run of the same settings (Section 5.1); otherwise "" (the pretrained model)."""
        if self.init_from or self.bits != 1:
            return self.init_from
        parent = dataclasses.replace(self, bits=2, recipe="", weight_decay=None, lr=None,
                                     stop_after=0)
        if not (parent.run_dir() / "model.pt").exists():
            raise FileNotFoundError(
                f"a 1-bit run starts from the 2-bit model, and {parent.run_dir()} has none yet; "
                f"train it first (same command with --bits 2) or pass --init-from RUN_DIR")
        return str(parent.run_dir())


# --- distributed ----------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is a single process."""
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if "RANK" not in os.environ:
        return Dist(0, 1, torch.device("cuda" if cuda else "cpu" if device == "auto" else device))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(),
                torch.device(f"cuda:{local}" if cuda else "cpu"))


def all_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t)
    return t


def weights_digest(model: nn.Module) -> str:
    """A hash of every parameter and buffer, to prove the ranks hold identical weights."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if torch.is_tensor(v):
            h.update(k.encode())
            h.update(v.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm with batch statistics reduced over all processes, for the CPU/gloo backend
    (``nn.SyncBatchNorm`` is CUDA-only). The reduction is differentiable, so the gradient is
    that of BatchNorm over the global batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        local = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)),
                           x.new_full((1,), x.numel() / c)])
        total = all_reduce(local)
        n = total[-1]
        mean = total[:c] / n
        var = total[c:2 * c] / n - mean * mean
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        shape = (1, c, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape)


def sync_batchnorm(model: nn.Module, d: Dist) -> nn.Module:
    """Synchronise BatchNorm over processes: ``nn.SyncBatchNorm`` on CUDA, an all-reduce
    BatchNorm on the CPU."""
    if d.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, m in list(model.named_modules()):
        if type(m) is nn.BatchNorm2d:
            new = AllReduceBatchNorm2d(m.num_features, m.eps, m.momentum, m.affine,
                                       m.track_running_stats)
            new.load_state_dict(m.state_dict())
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


# --- data -----------------------------------------------------------------------------------


def transforms(cfg: ImageNetConfig, train: bool):
    from torchvision.transforms import v2

    size = cfg.image_size
    resize = int(round(size * 256 / 224))
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train and cfg.augment:
        return v2.Compose([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), *tail])
    return v2.Compose([v2.Resize(resize), v2.CenterCrop(size), *tail])


def image_folder(root: Path, split: str, cfg: ImageNetConfig, train: bool):
    from torchvision.datasets import ImageFolder

    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"ImageNet {split}/ folder not found at {folder}; --data must point to a folder "
            "with train/ and val/, each holding one sub-folder of images per class "
            "(torchvision ImageFolder layout)")
    try:
        ds = ImageFolder(str(folder), transform=transforms(cfg, train))
    except (FileNotFoundError, RuntimeError) as err:
        raise FileNotFoundError(f"{folder} is not a valid ImageFolder: {err}") from err
    return ds


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation shard of one rank: indices rank, rank+world, ... (no padding, exact)."""

    def __init__(self, n: int, d: Dist) -> None:
        self.indices = list(range(d.rank, n, d.world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def calibration_batches(dataset, cfg: ImageNetConfig, d: Dist):
    """Global batches in a seeded random order, identical on every rank."""
    from torch.utils.data import DataLoader, RandomSampler

    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(dataset, cfg.batch_size, sampler=RandomSampler(dataset, generator=g),
                        num_workers=cfg.workers, generator=g)
    return ((x.to(d.device), y) for x, y in loader)


def loaders(cfg: ImageNetConfig, d: Dist):
    from torch.utils.data import DataLoader, DistributedSampler

    root = Path(cfg.data)
    train_ds = image_folder(root, "train", cfg, True)
    val_ds = image_folder(root, "val", cfg, False)
    if train_ds.classes != val_ds.classes:
        raise ValueError(f"train/ and val/ under {root} have different class folders")
    if cfg.batch_size % d.world:
        raise ValueError(f"global batch {cfg.batch_size} is not divisible by {d.world} processes")
    per_rank = cfg.batch_size // d.world
    sampler = DistributedSampler(train_ds, d.world, d.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    common = dict(num_workers=cfg.workers, pin_memory=d.device.type == "cuda",
                  persistent_workers=cfg.workers > 0)
    train = DataLoader(train_ds, per_rank, sampler=sampler, drop_last=True, **common)
    val = DataLoader(val_ds, per_rank, sampler=ShardSampler(len(val_ds), d), **common)
    if len(train) == 0:
        raise ValueError(f"{root / 'train'} has fewer images than one batch per process")
    return train, val, len(train_ds.classes)


# --- model ----------------------------------------------------------------------------------


def adaptive_pooling(model: nn.Module) -> nn.Module:
    """pytorchcv's final 7x7 AvgPool equals a global average at 224 pixels; the adaptive form
    gives the same numbers there and also accepts other input sizes."""
    for name, m in list(model.named_modules()):
        if name.endswith("final_pool") and isinstance(m, nn.AvgPool2d):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child,
                    nn.AdaptiveAvgPool2d(1))
    return model


def _start_weights(path: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if p.is_dir():
        p = p / "model.pt" if (p / "model.pt").exists() else p / "checkpoint.pt"
    if not p.is_file():
        raise FileNotFoundError(f"--init-from: no model.pt or checkpoint.pt at {path}")
    state = torch.load(p, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    return {k: v for k, v in state.items() if "quantizer" not in k}


def build(cfg: ImageNetConfig, num_classes: int = 1000, example: torch.Tensor | None = None,
          load_weights: bool = True) -> nn.Module:
    """The pretrained (or --init-from) model, converted under the paper's policy.
    ``load_weights=False`` builds the structure only (to load a checkpoint into)."""
    pre = {"pytorchcv": True, "none": False}.get(cfg.pretrained, cfg.pretrained)
    start = cfg.start_from() if load_weights else ""
    pre = pre if load_weights else False
    model = imagenet_model(cfg.arch, False if start else pre)
    if num_classes != 1000:  # a smaller label set (tests, subsets of ImageNet): a new head
        last = model.output
        if isinstance(last, nn.Linear):
            model.output = nn.Linear(last.in_features, num_classes)
        else:
            model.output = nn.Conv2d(last.in_channels, num_classes, 1)
    if start:
        model.load_state_dict(_start_weights(start))
    model = adaptive_pooling(model)
    if cfg.bits != 32:
        if example is None:
            example = torch.randn(2, 3, cfg.image_size, cfg.image_size)
        model = quantize_model(model, cfg.bits, cfg.method, cfg.granularity, init=cfg.init,
                               grad_scale=cfg.grad_scale, inplace=True, example_input=example)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, loader, d: Dist, amp: bool) -> tuple[float, float, int]:
    """Loss and top-1 (%) over the whole validation set, summed across ranks."""
    model.eval()
    totals = torch.zeros(3, device=d.device, dtype=torch.float64)
    for x, y in loader:
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        totals[0] += F.cross_entropy(logits.float(), y, reduction="sum")
        totals[1] += (logits.argmax(1) == y).sum()
        totals[2] += y.shape[0]
    model.train()
    loss, correct, count = all_sum(totals, d).tolist()
    return loss / max(count, 1), 100.0 * correct / max(count, 1), int(count)


def result_row(cfg: ImageNetConfig, top1: float, **extra) -> dict[str, Any]:
    method = "fp" if cfg.bits == 32 else {"uniq": "UniQ", "lsq": "LSQ"}[cfg.method]
    return {"table": 2, "model": PAPER_NAMES[cfg.arch], "arch": cfg.arch, "method": method,
            "bits": cfg.bits, "top1": round(top1, 2), "epochs": cfg.epochs,
            "dataset": "imagenet", **extra}


def train_epoch(net: nn.Module, optimizer, loader, recipe, cfg: ImageNetConfig, d: Dist,
                epoch: int, step: int, amp: bool, say, label: str) -> tuple[float, int]:
    """One epoch of training steps; the loss is summed on the device and read (reduced over
    ranks) only every ``print_freq`` steps and at the end. Returns the mean loss and the step."""
    loader.sampler.set_epoch(epoch)
    n = len(loader)
    loss_sum = torch.zeros((), device=d.device)
    for i, (x, y) in enumerate(loader):
        set_lr(optimizer, lr_at(recipe, epoch + i / n, cfg.epochs))
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        loss, _ = train_step(net, optimizer, x, y, amp)
        loss_sum += loss
        step += 1
        if (i + 1) % cfg.print_freq == 0 and i + 1 < n:
            mean = float(all_sum(loss_sum.clone(), d)) / ((i + 1) * cfg.batch_size)
            say(f"[{label}] epoch {epoch + 1} step {i + 1}/{n} loss {mean:.4f}")
            if not math.isfinite(mean):
                break
    return float(all_sum(loss_sum, d)) / ((i + 1) * cfg.batch_size), step


# --- the run --------------------------------------------------------------------------------


def run(cfg: ImageNetConfig, evaluate_only: str = "", resume: str = "auto") -> dict[str, Any]:
    """Train (or resume, or with ``evaluate_only`` just evaluate) one ImageNet run.

    ``resume``: "auto" continues from the run's checkpoint if there is one, "require" fails
    without one, "never" starts over."""
    if resume not in ("auto", "require", "never"):
        raise ValueError(f"resume must be 'auto', 'require' or 'never', got {resume!r}")
    d = init_distributed(cfg.device)
    run_dir, ckpt_path = cfg.run_dir(), cfg.run_dir() / "checkpoint.pt"
    say = print if d.main else (lambda *a, **k: None)
    if not evaluate_only:
        # Decided before any data or weights are loaded: a finished run costs nothing.
        if (run_dir / "result.json").exists() and resume != "never":
            say(f"[{run_dir.name}] finished before; returning its result")
            return json.loads((run_dir / "result.json").read_text())
        if resume == "require" and not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    torch.manual_seed(cfg.seed)
    amp = d.device.type == "cuda" if cfg.amp is None else cfg.amp
    train_loader, val_loader, classes = loaders(cfg, d)
    model = build(cfg, classes, load_weights=not evaluate_only).to(d.device)

    if evaluate_only:
        state = torch.load(evaluate_only, map_location=d.device, weights_only=True)
        model.load_state_dict(state.get("model", state))
        loss, top1, n = evaluate(model, val_loader, d, amp)
        row = result_row(cfg, top1, evaluated=str(evaluate_only), images=n, loss=loss)
        say(json.dumps(row))
        return row

    recipe = cfg.recipe_obj()
    start_epoch = step = 0
    if ckpt_path.exists() and resume != "never":
        ckpt = torch.load(ckpt_path, map_location=d.device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        say(f"[{run_dir.name}] resuming at epoch {start_epoch}")
    elif cfg.bits != 32:
        # Every rank calibrates on the same global batches (same seed, same order), so the
        # steps agree on every rank and with a single-process run of the same global batch.
        calibrate(model, calibration_batches(train_loader.dataset, cfg, d), cfg.calib_batches)
    for name, q in quantizers(model):
        if name.endswith("act_quantizer"):
            q.batch_replicas = d.world
    if cfg.sync_bn and d.world > 1:
        model = sync_batchnorm(model, d)
    net = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if cfg.compile != "none":
        net = torch.compile(net, mode=None if cfg.compile == "default" else cfg.compile)
    optimizer = _build_optimizer(model, recipe, fused=d.device.type == "cuda")
    if start_epoch:
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic({"config": dataclasses.asdict(cfg), "key": cfg.key(),
                           "recipe": recipe.as_dict(), "world_size": d.world,
                           "conversion": conversion_report(model).to_dict("records")},
                          run_dir / "config.json")

    metrics = CsvLog(run_dir / "metrics.csv", start_epoch) if d.main else None
    top1 = float("nan")
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.stop_after and epoch - start_epoch >= cfg.stop_after:
            say(f"[{run_dir.name}] stopping after {cfg.stop_after} epoch(s); rerun to resume")
            return {"stopped_at_epoch": epoch}
        t0 = time.time()
        train_loss, step = train_epoch(net, optimizer, train_loader, recipe, cfg, d, epoch, step,
                                       amp, say, run_dir.name)
        if not math.isfinite(train_loss):
            raise RuntimeError(f"loss became {train_loss} in epoch {epoch + 1}; the last good "
                               f"checkpoint is kept at {ckpt_path}")
        val_loss, top1, _ = evaluate(net, val_loader, d, amp)
        if d.main:
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "epoch": epoch + 1, "step": step, "rng": rng_state()},
                        ckpt_path)
            metrics.append([{"epoch": epoch, "step": step, "train_loss": train_loss,
                             "val_loss": val_loss, "val_top1": top1,
                             "epoch_time_s": time.time() - t0}])
        say(f"[{run_dir.name}] epoch {epoch + 1}/{cfg.epochs} val top-1 {top1:.2f}% "
            f"({time.time() - t0:.0f}s)")
    if math.isnan(top1):  # resumed after the last epoch's checkpoint: evaluate it
        _, top1, _ = evaluate(net, val_loader, d, amp)

    digests = [weights_digest(model)]
    if d.world > 1:
        digests = [None] * d.world
        dist.all_gather_object(digests, weights_digest(model))
    row = result_row(cfg, top1, run=run_dir.name, world_size=d.world,
                     ranks_identical=len(set(digests)) == 1, weights_sha256=digests[0])
    if d.main:
        save_atomic(model.state_dict(), run_dir / "model.pt")
        write_json_atomic(row, run_dir / "result.json")
    return row


# --- tables and the offline smoke path ------------------------------------------------------


def collect_results(runs_dir: str | Path) -> pd.DataFrame:
    """Every ``result.json`` under ``<runs_dir>/imagenet``: the reproduced ImageNet rows."""
    rows = [json.loads(p.read_text()) for p in Path(runs_dir).glob("imagenet/*/result.json")]
    return pd.DataFrame(rows, columns=["model", "method", "bits", "top1", "epochs", "run"]
                        ) if not rows else pd.DataFrame(rows)


def tables(runs_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables 2 and 3: the paper's numbers with reproduced top-1 where a run exists."""
    from .mse import paper_tables

    paper = paper_tables()
    done = collect_results(runs_dir)
    out = []
    for table in (2, 3):
        t = paper[paper.table == table].rename(columns={"value": "paper_top1",
                                                        "weight_bits": "bits"})
        t = t[["model", "method", "bits", "act_bits", "paper_top1", "note"]].copy()
        t["top1"] = float("nan")
        for i, r in t.iterrows():
            hit = done[(done.model == r.model) & (done.method == r.method) & (done.bits == r.bits)]
            if len(hit):
                t.loc[i, "top1"] = float(hit.top1.iloc[-1])
        t["diff"] = (t.top1 - t.paper_top1).round(2)
        t["dataset"] = "imagenet"
        out.append(t.reset_index(drop=True))
    return out[0], out[1]


def tables_note(t: pd.DataFrame) -> str:
    n = int(t.top1.notna().sum())
    if n == 0:
        return ("No ImageNet run has been done here: the top1 column is empty and the table "
                "shows the paper's numbers only. Train with `python -m uniq imagenet` (README).")
    return f"{n} cell(s) reproduced on ImageNet with `python -m uniq imagenet`; others are empty."


def policy_summary(bits_list=(4, 3, 2, 1)) -> pd.DataFrame:
    """For each architecture and bit width: how many layers get which weight bits."""
    rows = []
    for arch in IMAGENET_MODELS:
        base = adaptive_pooling(imagenet_model(arch, False))
        cfg = ImageNetConfig(arch=arch, bits=4, pretrained="none")
        for bits in bits_list:
            r = conversion_report(quantize_model(base, bits, "uniq", cfg.granularity,
                                                 example_input=torch.randn(1, 3, 64, 64)))
            rows.append({"arch": arch, "bits": bits, "layers": len(r),
                         "at_bits": int((r.weight_bits == bits).sum()),
                         "at_8": int(((r.weight_bits == 8) & (bits != 8)).sum()),
                         "full_precision": int((r.weight_bits == 32).sum()),
                         "signed_inputs": int(r.signed_input.fillna(False).sum()),
                         "granularity": cfg.granularity})
    return pd.DataFrame(rows)


def smoke_steps(steps: int = 2, batch_size: int = 4, image_size: int = 64,
                device: str = "auto") -> pd.DataFrame:
    """Offline check of the ImageNet path: each architecture, converted and calibrated, takes a
    few SGD steps on generated images (not ImageNet; no accuracy is claimed)."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    import tempfile

    rows = []
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        two_bit = Path(tmp) / "preresnet18-2bit.pt"  # the 1-bit run starts from it, as on ImageNet
        for arch, bits in (("preresnet18", 2), ("preresnet18", 1), ("preresnet34", 2),
                           ("mobilenetv2_w1", 2)):
            cfg = ImageNetConfig(arch=arch, bits=bits, pretrained="none", image_size=image_size,
                                 init_from=str(two_bit) if bits == 1 else "")
            x = torch.randn(batch_size, 3, image_size, image_size, generator=g)
            y = torch.randint(1000, (batch_size,), generator=g)
            model = build(cfg, 1000, example=x[:1])
            calibrate(model, [x], 1)
            model.to(dev)
            opt = _build_optimizer(model, cfg.recipe_obj())
            t0, losses = time.time(), []
            for _ in range(steps):
                loss, _ = train_step(model, opt, x.to(dev), y.to(dev), False)
                losses.append(float(loss) / batch_size)
            if arch == "preresnet18" and bits == 2:
                torch.save(model.state_dict(), two_bit)
            rows.append({"arch": arch, "bits": bits, "recipe": cfg.recipe, "steps": steps,
                         "first_loss": round(losses[0], 3), "last_loss": round(losses[-1], 3),
                         "seconds": round(time.time() - t0, 1), "data": "generated"})
    return pd.DataFrame(rows)


# --- command line ---------------------------------------------------------------------------


HELP = {
    "arch": f"one of {', '.join(IMAGENET_MODELS)}",
    "bits": "1..8, or 32 for full precision",
    "method": "uniq or lsq",
    "data": "ImageFolder root with train/ and val/",
    "pretrained": "pytorchcv (download/cache), none, a state-dict file or pytorchcv's cache dir",
    "init_from": "run dir or checkpoint to start from (1 bit: the 2-bit run by default)",
    "batch_size": "global batch over all processes (the paper: 256)",
    "recipe": "default: sgd for multi-bit, adam-warmup5 for 1 bit",
    "weight_decay": "default per bits: 1e-4, 0.5e-4, 0.25e-4, 0 for 4/3/2/1",
    "calib_batches": "global batches for step-size calibration",
    "image_size": "crop size (evaluation resizes to size*256/224 first)",
    "augment": "random-resized crop + flip for training (else the evaluation transform)",
    "sync_bn": "synchronise BatchNorm across processes",
    "grad_scale": "scale step gradients by 1/sqrt(numel*Qp) as the authors' code",
    "init": "step init: mse, lsq or a constant",
    "amp": "bf16 autocast (default: on for CUDA)",
    "workers": "DataLoader workers per process",
    "output_dir": "where runs live",
    "compile": "none, default, max-autotune or reduce-overhead",
    "stop_after": "leave after this many epochs in this session (0: never); rerun to continue",
}


def add_imagenet_parser(sub) -> None:
    p = sub.add_parser("imagenet", help="train or evaluate an ImageNet run (torchrun-ready)")
    defaults = ImageNetConfig()
    for f in dataclasses.fields(ImageNetConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kw = {"default": default, "help": HELP.get(f.name)}
        if f.type in ("bool", "bool | None"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.type in ("float | None", "str | float"):
            p.add_argument(flag, type=float if f.type == "float | None" else str, **kw)
        else:
            p.add_argument(flag, type=type(default), **kw)
    p.add_argument("--evaluate", default="", metavar="CHECKPOINT",
                   help="only evaluate this checkpoint (model.pt or checkpoint.pt)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint "
                   "(required); without it an unfinished run also continues")
    p.add_argument("--fresh", action="store_true", help="ignore any checkpoint, start over")
    p.set_defaults(func=_cmd)


def _cmd(a: argparse.Namespace) -> int:
    names = {f.name for f in dataclasses.fields(ImageNetConfig)}
    cfg = ImageNetConfig(**{k: v for k, v in vars(a).items() if k in names})
    row = run(cfg, evaluate_only=a.evaluate,
              resume="require" if a.resume else "never" if a.fresh else "auto")
    if dist.is_initialized():
        dist.destroy_process_group()
    if not a.evaluate and int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(row))
    return 0
