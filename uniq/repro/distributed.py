"""Distributed helpers: one process is world size 1, torchrun gives more.

``init`` reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK (NCCL on CUDA, gloo on the CPU), ``all_sum``
reduces a tensor, ``broadcast`` sends a Python object from rank 0, and ``AllReduceBatchNorm2d`` is
a synchronised BatchNorm for the CPU/gloo backend (``nn.SyncBatchNorm`` is CUDA-only).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..models import replace_module


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else the CPU; asking for an absent GPU is an
    error rather than a silent fall-back."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but no CUDA GPU is visible; use 'cpu'")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from err


def init(device: str = "auto") -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is a single process."""
    dev = resolve_device(device)
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return Dist(0, 1, dev)
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.set_device(local)
        dev = torch.device(f"cuda:{local}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), dev)


def all_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum ``t`` over all processes, in place (a no-op for one process)."""
    if d.world > 1:
        dist.all_reduce(t)
    return t


def broadcast(obj: Any, d: Dist) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if d.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: Any, d: Dist) -> list[Any]:
    if d.world == 1:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def weights_digest(model: nn.Module) -> str:
    """A hash of every parameter and buffer, to prove the ranks hold identical weights."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if torch.is_tensor(v):
            h.update(k.encode())
            h.update(v.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm with batch statistics reduced over all processes, for the CPU/gloo backend.
    The reduction is differentiable, so the gradient is that of BatchNorm over the global
    batch."""

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
    """Synchronise BatchNorm over processes: ``nn.SyncBatchNorm`` on CUDA, the all-reduce
    BatchNorm above on the CPU."""
    if d.world == 1:
        return model
    if d.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    for name, m in list(model.named_modules()):
        if type(m) is nn.BatchNorm2d:
            new = AllReduceBatchNorm2d(m.num_features, m.eps, m.momentum, m.affine,
                                       m.track_running_stats).to(m.weight)
            new.load_state_dict(m.state_dict())
            replace_module(model, name, new)
    return model
