"""Training recipes as data: optimizer, learning-rate schedule, warm-up, weight decay.

The schedule is a pure function of the (fractional) epoch, so a resumed run needs no scheduler
state beyond the step counter, and a test can read the rate at any epoch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from ..functional import FULL_PRECISION


@dataclass(frozen=True)
class Recipe:
    """``lr`` is the peak rate; during ``warmup_epochs`` the rate is the constant ``warmup_lr``,
    then it follows ``schedule`` ("cosine" to zero over the remaining epochs, no restarts, or
    "constant")."""

    optimizer: str
    lr: float
    warmup_epochs: float = 0.0
    warmup_lr: float = 0.0
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    description: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    # Full precision from scratch (the paper gives no recipe; the standard CIFAR one).
    "fp": Recipe("sgd", 0.1, description="full precision from scratch: SGD lr 0.1, cosine"),
    # Multi-bit (Section 5): SGD lr 0.01, cosine without restarts, from the FP model.
    "sgd": Recipe("sgd", 0.01, description="multi-bit: SGD lr 0.01, cosine"),
    # 1-bit (Section 5): Adam at 0.001 for 5 warm-up epochs, then 0.004 with cosine decay.
    "adam-warmup5": Recipe("adam", 0.004, 5, 0.001, description="1-bit: Adam, 5 warm-up epochs "
                           "at 0.001, then 0.004 cosine"),
    # Table 6: the 1-bit schedule ablation.
    "sgd-lr0.01": Recipe("sgd", 0.01, description="SGD lr 0.01, no warm-up"),
    "sgd-lr0.005": Recipe("sgd", 0.005, description="SGD lr 0.005, no warm-up"),
    "sgd-lr0.001": Recipe("sgd", 0.001, description="SGD lr 0.001, no warm-up"),
    "sgd-warmup5": Recipe("sgd", 0.01, 5, 0.001, description="SGD, 5 warm-up epochs at 0.001"),
    "sgd-warmup10": Recipe("sgd", 0.01, 10, 0.001, description="SGD, 10 warm-up epochs at 0.001"),
    "adam-lr0.004": Recipe("adam", 0.004, description="Adam lr 0.004, no warm-up"),
    "adam-lr0.001": Recipe("adam", 0.001, description="Adam lr 0.001, no warm-up"),
    "adam-lr0.0005": Recipe("adam", 0.0005, description="Adam lr 0.0005, no warm-up"),
    "adam-warmup10": Recipe("adam", 0.004, 10, 0.001, description="Adam, 10 warm-up epochs at "
                            "0.001"),
}

# ImageNet (Section 5.1): weight decay per bit width; no decay on step sizes.
IMAGENET_WEIGHT_DECAY = {32: 1e-4, 8: 1e-4, 4: 1e-4, 3: 0.5e-4, 2: 0.25e-4, 1: 0.0}


def default_recipe(bits: int) -> str:
    """The paper's recipe for a bit width: FP from scratch, SGD for multi-bit, Adam for 1-bit."""
    return "fp" if bits >= FULL_PRECISION else "adam-warmup5" if bits == 1 else "sgd"


def get_recipe(name: str, **overrides) -> Recipe:
    """A named recipe, with fields replaced by the non-None ``overrides``."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from: {', '.join(RECIPES)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    recipe = replace(RECIPES[name], **changes)
    if recipe.optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {recipe.optimizer!r}")
    if recipe.schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {recipe.schedule!r}")
    if recipe.lr <= 0 or recipe.warmup_epochs < 0 or recipe.weight_decay < 0:
        raise ValueError(f"recipe {name!r}: lr must be > 0, warm-up and weight decay >= 0")
    return recipe


def lr_at(recipe: Recipe, epoch: float, epochs: int) -> float:
    """Learning rate at a fractional epoch (``epoch`` counts from 0) of an ``epochs`` run."""
    if epoch < recipe.warmup_epochs:
        return recipe.warmup_lr
    if recipe.schedule == "constant":
        return recipe.lr
    span = max(epochs - recipe.warmup_epochs, 1e-12)
    progress = min(max((epoch - recipe.warmup_epochs) / span, 0.0), 1.0)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * progress))
