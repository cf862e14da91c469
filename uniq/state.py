"""Random-number state and side-effect-free forward passes.

Checkpoints save and restore the RNG states; calibration and the dynamics probes run extra
forward passes that must leave the model exactly as they found it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


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
