"""Which runs may be compared with the paper, and which runs may be pooled as seeds of one cell.

One rule, used by the tables, the claims and the report:

* :func:`paper_differences` lists how a run's resolved config departs from the paper's setting
  for its task (data, model size, schedule length, batch, calibration, arithmetic, layer
  policy, start weights); :func:`comparable_to_paper` is True when no run of a cell departs.
* :func:`setting_differences` lists the fields in which runs differ other than the seed: runs
  pooled as seeds of one cell (a table's mean, a claim's sample) must differ in the seed only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .config import FULL_PRECISION, PLACEMENT, RunConfig
from .recipes import get_recipe

PAPER_EPOCHS = {"cifar": 350, "imagenet": 90}

# The paper's setting per task (Sections 5.1, 5.2); fields absent here are free (or enter
# through the recipe and the parent run, checked below).
PAPER_SETTING: dict[str, dict[str, Any]] = {
    "cifar": {"dataset": "cifar100", "depth": 32, "data_fraction": 1.0, "epochs": 350,
              "batch_size": 128, "calib_batches": 100, "precision": "fp32",
              "first_last_bits": 8, "overrides": ""},
    "imagenet": {"pretrained": "pytorchcv", "image_size": 224, "augment": True, "epochs": 90,
                 "batch_size": 256, "calib_batches": 1000, "precision": "fp32",
                 "first_last_bits": 8, "overrides": ""},
}


def paper_differences(config: RunConfig) -> list[str]:
    """How this run's setting departs from the paper's, e.g. ``["epochs 30 (paper 350)"]``;
    empty when it is the paper's setting. A quantized run's full-precision parent counts too."""
    c = config.resolved()
    setting = dict(PAPER_SETTING[c.task])
    if c.bits == FULL_PRECISION:
        setting = {k: v for k, v in setting.items() if k not in ("calib_batches",
                                                                 "first_last_bits")}
    out = [f"{name} {getattr(c, name)!r} (paper {want!r})".replace("'", "")
           for name, want in setting.items() if getattr(c, name) != want]
    recipe = get_recipe(c.recipe)
    if c.warmup_epochs != recipe.warmup_epochs:
        out.append(f"warm-up {c.warmup_epochs:g} epochs (paper {recipe.warmup_epochs:g})")
    if c.init_from is not None:
        parent = type(c).from_dict(c.init_from)
        out += [f"parent run: {d}" for d in paper_differences(parent) if d not in out]
    return out


def comparable_to_paper(configs: Iterable[RunConfig]) -> tuple[bool, str]:
    """``(True, "")`` when every run is in the paper's setting, else ``(False, note)`` with the
    note naming what differs."""
    differences: list[str] = []
    for cfg in configs:
        differences += [d for d in paper_differences(cfg) if d not in differences]
    if not differences:
        return True, ""
    return False, "differs from the paper's setting: " + "; ".join(differences)


def _identity(cfg: RunConfig) -> dict[str, Any]:
    c = cfg.resolved()
    out = {k: v for k, v in c.to_dict().items() if k not in PLACEMENT and k != "seed"}
    out["parent"] = None if c.init_from is None else type(c).from_dict(c.init_from).key()
    out.pop("init_from", None)
    return out


def setting_differences(configs: Sequence[RunConfig]) -> list[str]:
    """Fields (other than the seed and placement) whose values differ among ``configs``, e.g.
    ``["epochs: 1, 90"]``; empty when the runs may be pooled as seeds of one cell."""
    ids = [_identity(c) for c in configs]
    out = []
    for name in ids[0] if ids else []:
        values = list(dict.fromkeys(repr(i.get(name)) for i in ids))
        if len(values) > 1:
            out.append(f"{name}: {', '.join(v.strip(chr(39)) for v in values)}")
    return out
