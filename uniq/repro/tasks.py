"""The tasks: the data and the model of a run, built from its config (``uniq.repro.config``).

CIFAR-100 (Tables 4-6, Figures 3-4): the pre-activation ResNet on CIFAR-100 or the generated
stand-ins, quantized runs starting from a full-precision run. ImageNet (Tables 2-3): pytorchcv
models on an ImageFolder, 1-bit runs starting from the 2-bit run. The engine (``uniq.repro.train``)
calls ``make_data`` and ``make_model``; nothing here calls back into it.

    python -m uniq train --bits 2                                # one process
    torchrun --nproc-per-node 2 -m uniq train --bits 2           # DDP, same global batch
    torchrun --nproc-per-node 8 -m uniq imagenet --arch preresnet18 --bits 2 --data-dir ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..convert import quantize_model
from ..models import adaptive_pooling, preact_resnet
from . import data as D
from .config import FULL_PRECISION, CifarConfig, ImageNetConfig, RunConfig
from .distributed import Dist
from .paths import resolve_path
from .pretrained import load_imagenet_model

DATA_SEED = 0
"""Seed of the generated data set and of the ``data_fraction`` subset: fixed, not the run's."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TaskData:
    """What a task hands the engine: the training loader (this rank's share of each global
    batch, ``set_epoch``), the evaluation loader (this rank's shard), the calibration batches
    (global batches, identical on every rank) and facts about the data."""

    train: Any
    eval: Any
    calibration: Callable[[], Iterable]
    info: dict



def make_data(cfg: RunConfig, d: Dist) -> TaskData:
    """The loaders of a (resolved) config's task on this process's device."""
    if cfg.batch_size % d.world:
        raise ValueError(f"global batch {cfg.batch_size} is not divisible by {d.world} "
                         "processes")
    return {"cifar": cifar_data, "imagenet": imagenet_data}[cfg.task](cfg, d)


def make_model(cfg: RunConfig, num_classes: int, pretrained: bool = False) -> nn.Module:
    """The model of a (resolved) config, converted under the paper's policy and uncalibrated, on
    the CPU. ``pretrained``: load the task's start weights (ImageNet's ``--pretrained``)."""
    model = (preact_resnet(cfg.depth, num_classes) if cfg.task == "cifar"
             else imagenet_network(cfg, num_classes, pretrained))
    if cfg.bits != FULL_PRECISION:
        model = quantize_model(model, cfg.bits, cfg.method, cfg.weight_granularity,
                               init=cfg.init, grad_scale=cfg.grad_scale, inplace=True,
                               example_input=cfg.example_input(),
                               signed_inputs=cfg.signed_inputs, **cfg.policy())
    return model


# --- CIFAR-100 ------------------------------------------------------------------------------


class ShardedLoader:
    """This rank's contiguous share of every global batch of a loader. The global batch (its
    order and augmentation) is drawn exactly as in a single process, so one process and N
    processes see the same data."""

    def __init__(self, loader: Any, d: Dist, drop_uneven: bool) -> None:
        self.loader, self.d, self.drop_uneven = loader, d, drop_uneven

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            if self.d.world == 1:
                yield x, y
                continue
            if self.drop_uneven and len(y) % self.d.world:
                raise ValueError(f"global batch {len(y)} is not divisible by {self.d.world} "
                                 "processes")
            yield (torch.tensor_split(x, self.d.world)[self.d.rank],
                   torch.tensor_split(y, self.d.world)[self.d.rank])


def cifar_splits(cfg: CifarConfig) -> tuple[D.ImageData, D.ImageData]:
    """The training and test images of a CIFAR config, as stored (uint8)."""
    size = (cfg.synthetic_train, cfg.synthetic_test)
    root = resolve_path(cfg.data_dir)
    # The data are the same for every seed (the seed varies order and augmentation): a
    # quantized run of any seed sees the data its full-precision parent was trained on.
    train = D.load_dataset(cfg.dataset, True, root, DATA_SEED, size, cfg.download,
                           cfg.verify_data)
    test = D.load_dataset(cfg.dataset, False, root, DATA_SEED, size, cfg.download,
                          cfg.verify_data)
    return train.subset(cfg.data_fraction, DATA_SEED), test


def cifar_data(cfg: CifarConfig, d: Dist) -> TaskData:
    train_data, test_data = cifar_splits(cfg)
    channels_last = d.device.type == "cuda" if cfg.channels_last is None \
        else cfg.channels_last
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def loader(data: D.ImageData, batch: int, train: bool):
        return D.make_loader(data, batch, train, d.device, cfg.loader, cfg.seed,
                             cfg.workers, fmt)

    train = loader(train_data, cfg.batch_size, True)
    if len(train) == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set "
                         f"({len(train_data)} images)")

    def calibration():
        train.set_epoch(0)
        return iter(train)

    info = {"dataset": train_data.name, "num_classes": train_data.num_classes,
            "train_size": len(train_data), "eval_size": len(test_data)}
    return TaskData(ShardedLoader(train, d, True),
                    ShardedLoader(loader(test_data, 500, False), d, False),
                    calibration, info)


# --- ImageNet ------------------------------------------------------------------------------


def imagenet_network(cfg: ImageNetConfig, num_classes: int, pretrained: bool) -> nn.Module:
    """The pytorchcv network of ``cfg.arch`` (its ``--pretrained`` weights when ``pretrained``),
    a new head for another class count, adaptive pooling for other image sizes."""
    pre = {"pytorchcv": True, "none": False}.get(cfg.pretrained, cfg.pretrained)
    if isinstance(pre, str):
        pre = resolve_path(pre)
    model = load_imagenet_model(cfg.arch, pre if pretrained else False)
    if num_classes != 1000:  # a smaller label set (tests, subsets of ImageNet): a new head
        last = model.output
        model.output = (nn.Linear(last.in_features, num_classes)
                        if isinstance(last, nn.Linear)
                        else nn.Conv2d(last.in_channels, num_classes, 1))
    return adaptive_pooling(model)


def transforms(cfg: ImageNetConfig, train: bool):
    from torchvision.transforms import v2

    size = cfg.image_size
    resize = int(round(size * 256 / 224))
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train and cfg.augment:
        return v2.Compose([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), *tail])
    return v2.Compose([v2.Resize(resize), v2.CenterCrop(size), *tail])


def load_image(path: str) -> Image.Image:
    """PIL loading that names the file when an image is truncated or not an image."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except OSError as err:
        raise ValueError(f"cannot read image {path} ({err}); delete or replace the file") \
            from None


def image_folder(root: Path, split: str, cfg: ImageNetConfig, train: bool):
    from torchvision.datasets import ImageFolder

    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"ImageNet {split}/ folder not found at {folder}; --data-dir must point to a folder "
            "with train/ and val/, each holding one sub-folder of images per class "
            "(torchvision ImageFolder layout)")
    try:
        return ImageFolder(str(folder), transform=transforms(cfg, train), loader=load_image)
    except (FileNotFoundError, RuntimeError) as err:
        raise FileNotFoundError(f"{folder} is not a valid ImageFolder: {err}") from err


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation shard of one rank: indices rank, rank+world, ... (no padding, exact)."""

    def __init__(self, n: int, d: Dist) -> None:
        self.indices = list(range(d.rank, n, d.world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class DeviceLoader:
    """A DataLoader whose batches arrive on the training device; ``set_epoch`` reseeds its
    DistributedSampler."""

    def __init__(self, loader, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def imagenet_data(cfg: ImageNetConfig, d: Dist) -> TaskData:
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    root = resolve_path(cfg.data_dir)
    train_ds = image_folder(root, "train", cfg, True)
    val_ds = image_folder(root, "val", cfg, False)
    if train_ds.classes != val_ds.classes:
        raise ValueError(f"train/ and val/ under {root} have different class folders")
    per_rank = cfg.batch_size // d.world
    sampler = DistributedSampler(train_ds, d.world, d.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    common = dict(num_workers=cfg.workers, pin_memory=d.device.type == "cuda",
                  persistent_workers=cfg.workers > 0)
    train = DataLoader(train_ds, per_rank, sampler=sampler, drop_last=True, **common)
    val = DataLoader(val_ds, per_rank, sampler=ShardSampler(len(val_ds), d), **common)
    if len(train) == 0:
        raise ValueError(f"{root / 'train'} has fewer images than one batch per process")

    def calibration():
        # Global batches in a seeded order, identical on every rank.
        g = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(train_ds, cfg.batch_size, generator=g, num_workers=cfg.workers,
                            sampler=RandomSampler(train_ds, generator=g))
        return ((x.to(d.device), y) for x, y in loader)

    info = {"dataset": "imagenet", "num_classes": len(train_ds.classes),
            "train_size": len(train_ds), "eval_size": len(val_ds)}
    return TaskData(DeviceLoader(train, d.device), DeviceLoader(val, d.device), calibration,
                    info)


# --- offline demonstration --------------------------------------------------------------------


def generated_folder(root: Path, classes: int = 4, train: int = 8, val: int = 4,
                     size: int = 40, seed: int = 0) -> Path:
    """A small ImageFolder of generated PNGs (class-dependent brightness), in ImageNet's layout,
    for running the real loaders offline. Written once; reused if present."""
    root = Path(root)
    if (root / "val").is_dir():
        return root
    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                px = (torch.rand(size, size, 3, generator=g) * 60 + c * 50).to(torch.uint8)
                Image.fromarray(px.numpy()).save(d / f"img_{i}.png")
    return root


def demo_config(arch: str, bits: int, data_dir: Path, runs_dir: Path, **kw) -> ImageNetConfig:
    """A few steps of the real ImageNet path on generated images (no accuracy is claimed)."""
    return ImageNetConfig(**{"arch": arch, "bits": bits, "data_dir": str(data_dir),
                             "pretrained": "none", "epochs": 1, "batch_size": 8,
                             "calib_batches": 1, "image_size": 32, "augment": False,
                             "workers": 0, "runs_dir": str(runs_dir), "log_every": 1, **kw})
