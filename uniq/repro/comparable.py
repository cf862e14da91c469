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

# The paper's setting per task (Sections 5.1, 5.2): every field the paper fixes. The recipe
# (optimizer, lr, warm-up, weight decay), the init, the granularity and the start weights
# depend on the bit width and the method, and are checked in ``paper_differences``.
PAPER_SETTING: dict[str, dict[str, Any]] = {
    "cifar": {"dataset": "cifar100", "depth": 32, "data_fraction": 1.0, "epochs": 350,
              "batch_size": 128, "calib_batches": 100, "precision": "fp32",
              "first_last_bits": 8, "overrides": "", "grad_scale": True},
    "imagenet": {"pretrained": "pytorchcv", "image_size": 224, "augment": True, "epochs": 90,
                 "batch_size": 256, "calib_batches": 1000, "precision": "fp32",
                 "first_last_bits": 8, "overrides": "", "grad_scale": True},
}
PAPER_CLASSES = {"imagenet": 1000}
"""Class count of the paper's data (an ImageNet ``--data-dir`` may hold a subset)."""

# The paper's recipes: Section 5 (SGD for multi-bit, Adam with warm-up at 1 bit) and, at
# 1 bit with the MSE init, every schedule of Table 6.
TABLE6_RECIPES = ("sgd-lr0.01", "sgd-lr0.005", "sgd-lr0.001", "sgd-warmup5", "sgd-warmup10",
                  "adam-lr0.004", "adam-lr0.001", "adam-lr0.0005", "adam-warmup5",
                  "adam-warmup10")
# Table 5's step-size inits (UniQ, 2 and 3 bits); elsewhere UniQ uses the MSE init (Eq. 10)
# and LSQ its own.
TABLE5_INITS = (0.1, 0.2, "lsq", "mse")


def _recipe_differences(c: RunConfig) -> list[str]:
    from .recipes import default_recipe

    out = []
    allowed = (TABLE6_RECIPES if c.task == "cifar" and c.bits == 1 and c.method == "uniq"
               and c.init == "mse" else (default_recipe(c.bits),))
    if c.recipe not in allowed:
        out.append(f"recipe {c.recipe} (paper {' or '.join(allowed)})")
    base = get_recipe(c.recipe)
    if c.lr != base.lr:
        out.append(f"lr {c.lr:g} (paper {base.lr:g})")
    if c.warmup_epochs != base.warmup_epochs:
        out.append(f"warm-up {c.warmup_epochs:g} epochs (paper {base.warmup_epochs:g})")
    want_wd = c.default_weight_decay(base)
    if c.weight_decay != want_wd:
        out.append(f"weight decay {c.weight_decay:g} (paper {want_wd:g})")
    return out


def _quantizer_differences(c: RunConfig) -> list[str]:
    out = []
    want = c.default_granularity()
    if c.weight_granularity != want:
        out.append(f"weight granularity {c.weight_granularity} (paper {want})")
    if c.first_last_weight_granularity not in ("", want):
        out.append(f"first/last weight granularity {c.first_last_weight_granularity} "
                   f"(paper {want})")
    if c.method == "lsq":
        if c.init != "lsq":
            out.append(f"init {c.init} for LSQ (paper: LSQ's own init)")
    elif c.task == "cifar" and c.bits in (2, 3):
        if c.init not in TABLE5_INITS:
            out.append(f"init {c.init} (paper mse, or Table 5's 0.1, 0.2, lsq)")
    elif c.init != "mse":
        out.append(f"init {c.init} (paper mse)")
    from ..convert import default_init_scope

    if c.init != "mse" and c.init_scope != default_init_scope(c.method):
        out.append(f"init scope {c.init_scope} (paper {default_init_scope(c.method)})")
    return out


def class_count(config: RunConfig) -> int | None:
    """Classes of an ImageNet run's ``--data-dir`` (train/ sub-folders); None when absent."""
    from .paths import resolve_path

    folder = resolve_path(config.data_dir) / "train"
    if not folder.is_dir():
        return None
    return sum(1 for e in folder.iterdir() if e.is_dir())


def paper_differences(config: RunConfig) -> list[str]:
    """How this run's setting departs from the paper's, e.g. ``["epochs 30 (paper 350)"]``;
    empty when it is the paper's setting. Every field the paper fixes is compared: data and
    class count, model, epochs, batch, calibration, arithmetic, layer policy, granularity,
    gradient scale, init and its scope, recipe (lr, warm-up, weight decay) and start weights
    (the paper's parent run, never ``--init-from-run``). A quantized run's parent counts too."""
    c = config.resolved()
    setting = dict(PAPER_SETTING[c.task])
    fp = c.bits == FULL_PRECISION
    if fp:
        setting = {k: v for k, v in setting.items() if k not in ("calib_batches",
                                                                 "first_last_bits",
                                                                 "grad_scale")}
    out = [f"{name} {getattr(c, name)!r} (paper {want!r})".replace("'", "")
           for name, want in setting.items() if getattr(c, name) != want]
    if c.task in PAPER_CLASSES:
        n = class_count(c)
        if n != PAPER_CLASSES[c.task]:
            out.append(f"classes {'unknown (no data folder)' if n is None else n} "
                       f"(paper {PAPER_CLASSES[c.task]})")
    out += _recipe_differences(c)
    if not fp:
        out += _quantizer_differences(c)
    if c.init_from_run:
        out.append(f"start weights --init-from-run {c.init_from_run} (paper: "
                   + ("pytorchcv's weights)" if c.task == "imagenet" and c.bits != 1 else
                      "the paper's parent run)"))
    if c.init_from is not None and c.default_parent() is None:
        out.append("start weights: a parent run the paper does not use")
    if c.init_from is not None:
        parent_cfg = type(c).from_dict(c.init_from)
        out += [f"parent run: {d}" for d in paper_differences(parent_cfg) if d not in out]
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
    # Start weights and data by content, not by path (the key's rule)
    hashed = c.hashed()
    for name in ("init_from_run", "pretrained", "imagenet_data"):
        if name in hashed:
            out[name] = hashed[name]
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
