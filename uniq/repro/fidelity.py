"""The fidelity page (``docs/fidelity.md``) generated from its data (``data/fidelity.csv``).

Each row of the table is one choice that can change a reproduced number: what the paper says,
what the authors' code does, what ``uniq`` does by default, the flag for the other behaviour,
and a status (``uniq.repro.repro_summary.STATUSES``). A cell may name a number of the code as
``{{ name }}``: :func:`facts` reads every such number from the code, so the page cannot
disagree with it (a test regenerates the page and compares it with the committed one).

    python -m uniq.repro.fidelity            # rewrite docs/fidelity.md from data/fidelity.csv
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from .paths import REPO
from .repro_summary import FIDELITY, fidelity_rows

PAGE = REPO / "docs" / "fidelity.md"
CIFAR_TRAIN_IMAGES = 50_000  # the CIFAR-100 training set


def _e4(value: float) -> str:
    """A weight decay as the paper writes it: ``5e-4``, ``0.25e-4``, ``0``."""
    return "0" if value == 0 else f"{value * 1e4:g}e-4"


def facts() -> dict:
    """Every number of the fidelity page that the code decides, read from the code."""
    import inspect

    from ..functional import MIN_STEP
    from .claims import evaluate_claims
    from .config import KEY_SCHEME, CifarConfig, ImageNetConfig
    from .data import (
        CIFAR100_EXACT_MEAN,
        CIFAR100_EXACT_STD,
        CIFAR100_MEAN,
        CIFAR100_STD,
    )
    from .generated import DATA_SEED, GENERATOR_CONSTANTS
    from .paper import PAPER_EPOCHS
    from .recipes import IMAGENET_WEIGHT_DECAY, RECIPES
    from .study import FIGURE4_EPOCHS, FIGURE4_WARMUP, MIN_MOVED, PROFILES

    cifar, imagenet = CifarConfig(), ImageNetConfig()
    confidence = inspect.signature(evaluate_claims).parameters["confidence"].default
    fp, adam = RECIPES["fp"], RECIPES["adam-warmup5"]
    return {
        "key_scheme": KEY_SCHEME, "min_step": f"{MIN_STEP:g}",
        "confidence": f"{100 * confidence:g}", "holm_alpha": f"{100 * (1 - confidence) / 2:g}",
        "cifar_calib": cifar.calib_batches, "imagenet_calib": imagenet.calib_batches,
        "cifar_batch": cifar.batch_size, "cifar_epochs": cifar.epochs,
        "imagenet_epochs": imagenet.epochs, "imagenet_batch": imagenet.batch_size,
        "first_last_bits": cifar.first_last_bits,
        "steps_authors": math.ceil(CIFAR_TRAIN_IMAGES / cifar.batch_size),
        "steps_uniq": CIFAR_TRAIN_IMAGES // cifar.batch_size,
        "cifar_images": f"{CIFAR_TRAIN_IMAGES:,}",
        "fp_lr": f"{fp.lr:g}", "fp_momentum": f"{fp.momentum:g}", "cifar_wd": _e4(fp.weight_decay),
        "sgd_lr": f"{RECIPES['sgd'].lr:g}",
        "adam_warmup_lr": f"{adam.warmup_lr:g}", "adam_lr": f"{adam.lr:g}",
        "adam_warmup": f"{adam.warmup_epochs:g}",
        "imagenet_wd": ", ".join(_e4(IMAGENET_WEIGHT_DECAY[b]) for b in (4, 3, 2, 1)),
        "cifar_mean": ", ".join(f"{m:.4f}" for m in CIFAR100_MEAN),
        "cifar_std": ", ".join(f"{m:.4f}" for m in CIFAR100_STD),
        "cifar_exact_mean": ", ".join(repr(m) for m in CIFAR100_EXACT_MEAN),
        "cifar_exact_std": ", ".join(repr(m) for m in CIFAR100_EXACT_STD),
        "smoke_warmups": " and ".join(f"{PROFILES['smoke'].warmup(w):g}" for w in (5, 10)),
        "smoke_epochs": PROFILES["smoke"].epochs, "smoke_scale": PROFILES["smoke"].warmup_scale,
        "laptop_warmups": " and ".join(f"{PROFILES['laptop'].warmup(w):g}" for w in (5, 10)),
        "laptop_epochs": PROFILES["laptop"].epochs,
        "laptop_scale": PROFILES["laptop"].warmup_scale,
        "quick_epochs": PROFILES["quick"].epochs,
        "seeds": {name: len(p.seeds) for name, p in PROFILES.items()},
        "min_moved": f"{100 * MIN_MOVED:g}",
        "figure4_epochs": FIGURE4_EPOCHS, "figure4_warmup": FIGURE4_WARMUP,
        "paper_epochs": PAPER_EPOCHS["cifar"],
        "laptop_f4_epochs": PROFILES["laptop"].figure4.epochs,
        "laptop_f4_batch": PROFILES["laptop"].figure4.batch_size,
        "laptop_batch": PROFILES["laptop"].batch_size,
        "synthetic": GENERATOR_CONSTANTS["synthetic"],
        "finegrain": GENERATOR_CONSTANTS["finegrain"],
        "data_seed": DATA_SEED,
        "table5_levels": table5_levels(),
    }


def table5_levels() -> dict:
    """Distinct 8-bit weight levels of a freshly initialised ResNet-32 classifier (64 inputs,
    100 classes, PyTorch's default init, seed 0) under the constant inits 0.2 and 0.1 (what
    ``--init-scope all`` gives the 8-bit last layer) and under the MSE init (Eq. 9)."""
    import torch

    from ..functional import symmetric_quantize
    from ..mse import optimal_step

    torch.manual_seed(0)
    w = torch.nn.Linear(64, 100).weight.detach()
    steps = {"0.2": 0.2, "0.1": 0.1, "mse": optimal_step(8, "weight") * float(w.std())}
    return {name: int(symmetric_quantize(w, step, 8).unique().numel())
            for name, step in steps.items()}


def render_cell(text: str, values: dict) -> str:
    """One cell with its ``{{ name }}`` numbers filled in (an unknown name is an error)."""
    env = Environment(undefined=StrictUndefined, autoescape=False)
    return env.from_string(text).render(**values)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def fidelity_markdown(csv: str | Path = FIDELITY) -> str:
    """The fidelity page, from the table and the code's numbers."""
    values = facts()
    rows = fidelity_rows(csv)
    columns = ("choice", "paper", "authors_code", "uniq", "alternative", "status")
    sections = []
    for name, part in rows.groupby("section", sort=False):
        sections.append({"name": name, "rows": [
            [_cell(render_cell(row[c], values)) for c in columns] for _, row in part.iterrows()]})
    env = Environment(loader=PackageLoader("uniq.repro"), autoescape=False, trim_blocks=True,
                      lstrip_blocks=True, keep_trailing_newline=True, undefined=StrictUndefined)
    return env.get_template("fidelity.md").render(sections=sections, **values)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    target = Path(argv[0]) if argv else PAGE
    target.write_text(fidelity_markdown())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
