"""The test oracle of ``uniq.functional.FakeQuantize``: the same quantizer written with the
detach trick, so that autograd derives the straight-through gradients by itself. Slower than
``FakeQuantize`` (more passes over ``x``, a dozen autograd nodes); the tests check that the fused
one gives the same bits, and ``benchmarks/train_step.py`` times the two."""

import numbers

import torch

from uniq.functional import MIN_STEP


def round_ste(t: torch.Tensor) -> torch.Tensor:
    """``round(t)`` in the forward pass, identity in the backward pass (STE)."""
    return (t - t.detach()) + t.round().detach()


def scale_grad(t: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Identity in the forward pass (bit-exact); multiplies the gradient by ``scale``."""
    if isinstance(scale, numbers.Real) and scale == 1.0:
        return t
    scaled = t * scale
    return (scaled - scaled.detach()) + t.detach()


def positive_step(step: torch.Tensor) -> torch.Tensor:
    """``max(step, MIN_STEP)`` with a straight-through gradient."""
    return (step - step.detach()) + step.detach().clamp_min(MIN_STEP)


def reference_quantize(x: torch.Tensor, step: torch.Tensor, lo: float, hi: float, offset: float,
                       grad_scale: float = 1.0) -> torch.Tensor:
    """``(round(clip(x/D + o, lo, hi)) - o) D`` written with the detach trick: autograd derives
    the straight-through gradients itself. Slower than ``FakeQuantize`` (more passes over ``x``,
    a dozen autograd nodes); kept as the check that the fused one gives the same bits."""
    d = positive_step(scale_grad(step, grad_scale))
    u = torch.clamp(x / d + offset, lo, hi)
    return (round_ste(u) - offset) * d
