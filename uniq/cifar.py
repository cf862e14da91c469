"""CIFAR-100 as an engine task (Tables 4-6, Figures 3-4): the pre-activation ResNet, the data,
and the paper's defaults (layer-wise steps, weight decay 5e-4, quantized runs start from a
full-precision run trained from scratch).

    python -m uniq train --bits 2                              # one process
    torchrun --nproc-per-node 2 -m uniq train --bits 2         # DDP, same global batch
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import data as D
from .convert import quantize_model
from .distributed import Dist
from .engine import FULL_PRECISION, RunConfig, TaskData, option, register
from .models import preact_resnet
from .paths import resolve_path

DATA_SEED = 0
"""Seed of the generated data set and of the ``data_fraction`` subset: fixed, not the run's."""


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


@register
@dataclass
class CifarConfig(RunConfig):
    """A CIFAR-100 run. ``bits=32`` is full precision."""

    task = "cifar"

    dataset: str = option("cifar100", "cifar100, or synthetic / finegrain (generated offline; "
                          "not comparable to the paper)", ("cifar100", "synthetic", "finegrain"))
    data_fraction: float = option(1.0, "train on a random fraction of the training set")
    synthetic_train: int = option(50_000, "images in the synthetic training set")
    synthetic_test: int = option(10_000, "images in the synthetic test set")
    depth: int = option(32, "pre-activation ResNet depth (6n+2)")
    loader: str = option("tensor", "tensor (device-resident, on-device augmentation) or "
                         "dataloader (torchvision transforms, workers): they draw different "
                         "batches, so the loader is part of the key", ("tensor", "dataloader"))
    fp_epochs: int = option(350, "epochs of the full-precision run a quantized run starts from",
                            hashed=False)
    fp_seed: int = option(0, "seed of the full-precision run a quantized run starts from",
                          hashed=False)
    download: bool = option(True, "download CIFAR-100 with torchvision when missing",
                            hashed=False)
    verify_data: bool = option(True, "check the CIFAR-100 files against the official MD5s "
                               "(--no-verify-data for files you made yourself)", hashed=False)

    def label_prefix(self) -> str:
        return f"resnet{self.depth}"

    def hashed(self) -> dict:
        out = super().hashed()
        if out["loader"] == "dataloader":  # its workers draw the augmentation: other batches
            out["workers"] = self.workers
        return out

    def validate_task(self) -> None:
        if (self.depth - 2) % 6 or self.depth < 8:
            raise ValueError(f"depth must be 6n+2 and at least 8 (8, 20, 32, 44, 56, ...), "
                             f"got {self.depth}")
        if not 0 < self.data_fraction <= 1:
            raise ValueError(f"data_fraction must be in (0, 1], got {self.data_fraction}")
        for name in ("synthetic_train", "synthetic_test", "fp_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")

    def default_parent(self) -> CifarConfig | None:
        """Section 5.2: quantized CIFAR models start from a full-precision model trained from
        scratch (the same data, model and batch)."""
        if self.bits == FULL_PRECISION:
            return None
        keep = ("dataset", "data_fraction", "synthetic_train", "synthetic_test", "depth",
                "batch_size", "precision", "sync_bn", "dynamics_per_epoch", "loader", "compile",
                "workers")
        return CifarConfig(bits=FULL_PRECISION, epochs=self.fp_epochs, seed=self.fp_seed,
                           **{k: getattr(self, k) for k in keep})

    def example_input(self) -> torch.Tensor:
        return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def make_model(self, num_classes: int, example: torch.Tensor,
                   pretrained: bool = False) -> nn.Module:
        """The (converted, uncalibrated) model of this config, on the CPU."""
        model = preact_resnet(self.depth, num_classes)
        if self.bits != FULL_PRECISION:
            model = quantize_model(model, self.bits, self.method, self.weight_granularity,
                                   init=self.init, grad_scale=self.grad_scale, inplace=True,
                                   example_input=example, signed_inputs=self.signed_inputs,
                                   **self.policy())
        return model

    def load(self) -> tuple[D.ImageData, D.ImageData]:
        size = (self.synthetic_train, self.synthetic_test)
        root = resolve_path(self.data_dir)
        # The data are the same for every seed (the seed varies order and augmentation): a
        # quantized run of any seed sees the data its full-precision parent was trained on.
        train = D.load_dataset(self.dataset, True, root, DATA_SEED, size, self.download,
                               self.verify_data)
        test = D.load_dataset(self.dataset, False, root, DATA_SEED, size, self.download,
                              self.verify_data)
        return train.subset(self.data_fraction, DATA_SEED), test

    def make_data(self, d: Dist) -> TaskData:
        train_data, test_data = self.load()
        if self.batch_size % d.world:
            raise ValueError(f"global batch {self.batch_size} is not divisible by {d.world} "
                             "processes")
        channels_last = d.device.type == "cuda" if self.channels_last is None \
            else self.channels_last
        fmt = torch.channels_last if channels_last else torch.contiguous_format

        def loader(data: D.ImageData, batch: int, train: bool):
            return D.make_loader(data, batch, train, d.device, self.loader, self.seed,
                                 self.workers, fmt)

        train = loader(train_data, self.batch_size, True)
        if len(train) == 0:
            raise ValueError(f"batch_size {self.batch_size} is larger than the training set "
                             f"({len(train_data)} images)")

        def calibration():
            train.set_epoch(0)
            return iter(train)

        info = {"dataset": train_data.name, "num_classes": train_data.num_classes,
                "train_size": len(train_data), "eval_size": len(test_data)}
        return TaskData(ShardedLoader(train, d, True),
                        ShardedLoader(loader(test_data, 500, False), d, False),
                        calibration, info)
