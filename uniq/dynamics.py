"""Training-dynamics probes (Figure 4): step size, input std and SQNR of activation quantizers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .modules import quantizers
from .mse import sqnr_db


def rng_state() -> dict[str, Any]:
    """The CPU and (once CUDA is in use) CUDA RNG states."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Run extra forward passes without side effects: buffers (BatchNorm statistics), the
    train/eval mode and the RNG states are restored on exit."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    was_training = model.training
    rng = rng_state()
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        model.train(was_training)
        set_rng_state(rng)


def activation_quantizers(model: nn.Module):
    return [(n.removesuffix(".act_quantizer"), q) for n, q in quantizers(model)
            if n.endswith("act_quantizer")]


@torch.no_grad()
def record_dynamics(model: nn.Module, x: torch.Tensor, autocast: bool = False) -> dict:
    """One forward pass (training mode, no side effects) that measures, for every activation
    quantizer, its step, the std of its input and the SQNR of its output. Returns device
    tensors, so calling this inside a training loop causes no host sync."""
    rows: dict[str, dict[str, torch.Tensor]] = {}

    def hook(name: str):
        def measure(q: nn.Module, args: tuple, out: torch.Tensor) -> None:
            inp = args[0]
            rows[name] = {"bits": q.bits, "signed": q.signed,
                          "step": q.step.detach().float().mean(),
                          "input_std": inp.detach().float().std(),
                          "sqnr_db": sqnr_db(inp, out)}
        return measure

    named = activation_quantizers(model)
    handles = [q.register_forward_hook(hook(n)) for n, q in named]
    try:
        with preserved_state(model):
            model.train()
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
                model(x)
    finally:
        for h in handles:
            h.remove()
    return rows
