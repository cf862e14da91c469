"""What a run is: its config, resolved once, and the key that names it.

A config is a dataclass whose fields are the flags of ``python -m uniq train`` (CIFAR-100) and
``python -m uniq imagenet``; every field is documented once, in its ``option``. ``resolved()``
fills in every default (recipe spelled out, warm-up scaled, the parent run's config) and returns
an immutable copy that carries its key: the sha256 of every field that can change the result
(``hashed``). The fields left out say where or how fast a run executes (``PLACEMENT``).
A run lives in ``<runs_dir>/<task>/<label>-<key>/`` (``uniq.repro.runs``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..functional import FULL_PRECISION, check_bits
from ..models import IMAGENET_MODELS, imagenet_model
from .paths import resolve_path
from .pretrained import pretrained_path
from .recipes import IMAGENET_WEIGHT_DECAY, Recipe, default_recipe, get_recipe

KEY_SCHEME = 2
"""Version of what a run's key covers. 1: the first scheme. 2: ``loader``, ``compile``, a
``--pretrained`` file's content, the layer-policy fields and ``init_scope`` are hashed. A run
directory made under another scheme is reported (``older_scheme_run``), never reused or
retrained silently."""
INIT_SCOPES = ("", "low-bit", "all")
PRECISIONS = ("fp32", "tf32", "bf16", "fp64")
COMPILE_MODES = ("none", "default", "max-autotune", "reduce-overhead")
RESUME_MODES = ("auto", "require", "never")
PROFILE_NAMES = ("smoke", "laptop", "quick", "paper")
"""The profiles of ``uniq.repro.study.PROFILES``, in order (claims.csv and the CLI name them)."""


def option(default: Any, help: str, choices: Iterable | None = None, cli: bool = True,
           hashed: bool = True) -> Any:
    """A config field with its help text (written once: the CLI is generated from it).
    ``hashed=False`` marks fields that choose where and how fast a run executes, not what it
    computes."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "cli": cli,
            "hashed": hashed}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


class TrainingDiverged(RuntimeError):
    """The loss, a weight or a step size became NaN or inf; no bad checkpoint was written."""


@dataclass
class RunConfig:
    """Fields shared by every task. Subclasses add the data and model fields, ``label_prefix``,
    ``example_input`` and optionally ``default_parent`` (the data and the model are built by
    ``uniq.repro.tasks``)."""

    task: ClassVar[str] = ""

    # -- model and quantizer
    bits: int = option(FULL_PRECISION, "weight and activation bits, 1..8, or 32 for full "
                       "precision")
    method: str = option("uniq", "quantizer: uniq (the paper's) or lsq (the baseline)",
                         ("uniq", "lsq"))
    init: str | float = option("mse", "step-size init: mse (Table 1, Eq. 9/10), lsq "
                               "(2 E|x| / sqrt(Qp)) or a positive constant")
    grad_scale: bool = option(True, "scale each step's gradient by 1/sqrt(n*Qp), n = elements "
                              "one step value quantizes (the authors' code)")
    weight_granularity: str = option("", "weight steps: tensor (layer-wise) or channel "
                                     "(kernel-wise); empty = the paper's for the task",
                                     ("", "tensor", "channel"))
    signed_inputs: str = option("detect", "detect: signed layer inputs get the symmetric "
                                "quantizer; unsigned: clip them at zero as the authors' code",
                                ("detect", "unsigned"))
    init_scope: str = option("", "layers a non-MSE --init applies to: low-bit (the 8-bit "
                             "first/last layers keep the MSE init) or all; empty = low-bit for "
                             "uniq, all for lsq (LSQ's own rule everywhere)", INIT_SCOPES)
    first_last_bits: int = option(8, "bits of the first and last layers of a multi-bit model "
                                  "(the paper: 8)")
    first_last_weight_granularity: str = option(
        "", "weight steps of the first and last layers: tensor (the authors' code) or channel; "
        "empty = as the other layers", ("", "tensor", "channel"))
    overrides: str = option("", "per-layer bits winning over the policy, NAME=BITS[,NAME=BITS] "
                            "(BITS 1..8, or 32/fp for full precision)")
    # -- recipe
    recipe: str = option("", "named recipe (see uniq.repro.recipes.RECIPES); empty = the paper's "
                         "default for the bit width")
    lr: float | None = option(None, "override the recipe's peak learning rate")
    warmup_epochs: float | None = option(None, "override the recipe's warm-up epochs")
    weight_decay: float | None = option(None, "override the weight decay (never on steps)")
    warmup_scale: float = option(1.0, "multiply the recipe's warm-up epochs (short profiles)")
    epochs: int = option(350, "training epochs")
    schedule_epochs: float = option(0.0, "length in epochs of the learning-rate schedule of "
                                    "which this run trains the start (0: the run's epochs; "
                                    "Figure 4 follows the first 30 of 350 epochs)")
    batch_size: int = option(128, "global batch size, over all processes")
    calib_batches: int = option(100, "batches for the step-size calibration (Eq. 10)")
    seed: int = option(0, "random seed (part of the run's hash)")
    precision: str = option("fp32", "arithmetic: fp32 (the paper; TF32 off on CUDA), tf32 "
                            "(TF32 convolutions and matmuls), bf16 autocast (faster, changes "
                            "results), fp64 (verification)", PRECISIONS)
    sync_bn: bool = option(False, "synchronise BatchNorm statistics across processes")
    init_from: dict | None = option(None, "config of the run whose weights start this one",
                                    cli=False)
    init_from_run: str = option("", "start from the weights of this run directory (or "
                                "checkpoint file), steps re-initialised")
    dynamics_per_epoch: int = option(4, "Figure-4 probes per epoch (0 = none)")
    compile: str = option("none", "torch.compile mode (hashed: compiled kernels round "
                          "differently from eager ones)", COMPILE_MODES)
    # -- execution (not hashed: see PLACEMENT)
    device: str = option("auto", "auto, cpu, cuda or cuda:N", hashed=False)
    channels_last: bool | None = option(None, "channels-last memory format (default: on for "
                                        "CUDA)", hashed=False)
    runs_dir: str = option("runs", "where runs live (relative: from the project root)",
                           hashed=False)
    data_dir: str = option("data", "where the data lives (relative: from the project root)",
                           hashed=False)
    workers: int = option(2, "DataLoader worker processes", hashed=False)
    threads: int = option(0, "CPU threads of this run's process (torch.set_num_threads; 0: "
                          "PyTorch's default). Recorded in config.json and result.json",
                          hashed=False)
    log_every: int = option(50, "check the loss (and print, at most every 10 s) every N steps",
                            hashed=False)
    stop_after: int = option(0, "leave after N epochs in this call (0: never); rerun to go on",
                             hashed=False)
    wait: bool = option(True, "if another process is training this run, wait for it "
                        "(--no-wait: stop with a message)", hashed=False)

    # ---- hooks for the tasks ---------------------------------------------------------------
    def policy(self) -> dict[str, Any]:
        """The conversion arguments of ``uniq.quantize_model`` that these fields choose."""
        return {"first_last_bits": self.first_last_bits,
                "overrides": parse_overrides(self.overrides),
                "first_last_weight_granularity": self.first_last_weight_granularity or None,
                "init_scope": self.resolved().init_scope}

    def label_prefix(self) -> str:
        raise NotImplementedError

    def example_input(self) -> torch.Tensor:
        """A small CPU batch for the conversion probe (which inputs are signed)."""
        raise NotImplementedError

    def default_granularity(self) -> str:
        return "tensor"

    def default_weight_decay(self, recipe: Recipe) -> float:
        return recipe.weight_decay

    def default_parent(self) -> RunConfig | None:
        return None

    def validate_task(self) -> None:
        pass

    # ---- resolution, hash, place -----------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_resolved"):
            raise dataclasses.FrozenInstanceError(
                f"a resolved config is immutable (cannot set {name}); change the config "
                "before resolving it, or dataclasses.replace() a new one")
        object.__setattr__(self, name, value)

    @property
    def is_resolved(self) -> bool:
        return bool(self.__dict__.get("_resolved"))

    def resolved(self) -> RunConfig:
        """The config with every default filled in: recipe spelled out (overrides applied,
        warm-up scaled), granularity, parent. Done once: the result is immutable and returned
        as it is when resolved again; the key is taken over it (and kept)."""
        if self.is_resolved:
            return self
        # The quantizer core's own checks and rules, imported when a config is resolved (not
        # when the CLI is parsed: ``train --help`` stays light).
        from ..convert import default_init_scope
        from ..mse import check_init

        validate_fields(self)
        c = dataclasses.replace(self)
        if c.bits != FULL_PRECISION:
            check_bits(c.bits, allow_binary=c.method != "lsq")
        if isinstance(c.init, str):
            try:
                c.init = float(c.init)
            except ValueError:
                pass
        check_init(c.init)
        if c.method == "lsq" and c.bits == 1:
            raise ValueError("LSQ has no 1-bit weight quantizer; use method='uniq' for 1 bit")
        if c.bits == FULL_PRECISION:  # quantizer fields mean nothing here: one FP run, one hash
            fresh = type(c)()
            for name in ("method", "init", "grad_scale", "signed_inputs", "calib_batches",
                         "dynamics_per_epoch", "weight_granularity", "init_scope",
                         "first_last_bits", "first_last_weight_granularity", "overrides"):
                setattr(c, name, getattr(fresh, name))
        else:
            check_bits(c.first_last_bits)
            c.overrides = format_overrides(parse_overrides(c.overrides))
            # An MSE init is the same on every layer: one computation, one key.
            c.init_scope = ("low-bit" if c.init == "mse"
                            else c.init_scope or default_init_scope(c.method))
            if c.bits == 1:  # the first and last layers stay in full precision at 1 bit
                c.first_last_bits, c.first_last_weight_granularity = 8, ""
                if not c.overrides:  # no 8-bit layer: the scope reaches the same layers
                    c.init_scope = "low-bit"
        c.recipe = c.recipe or default_recipe(c.bits)
        base = get_recipe(c.recipe)
        c.lr = float(base.lr if c.lr is None else c.lr)
        c.warmup_epochs = float(base.warmup_epochs if c.warmup_epochs is None
                                else c.warmup_epochs) * c.warmup_scale
        c.warmup_scale = 1.0
        c.schedule_epochs = 0.0 if c.schedule_epochs == c.epochs else float(c.schedule_epochs)
        c.weight_decay = float(c.default_weight_decay(base) if c.weight_decay is None
                               else c.weight_decay)
        c.recipe_obj()  # validates the overrides
        c.weight_granularity = c.weight_granularity or c.default_granularity()
        if c.first_last_weight_granularity == c.weight_granularity:
            c.first_last_weight_granularity = ""  # "as the other layers": one computation
        if c.init_from is None and not c.init_from_run:
            parent = c.default_parent()
            c.init_from = None if parent is None else parent.resolved().to_dict()
        elif c.init_from is not None:
            c.init_from = type(c).from_dict(c.init_from).resolved().to_dict()
        if c.init_from_run:
            c.init_from_run = str(resolve_path(c.init_from_run))
        c.validate_task()
        c.__dict__["_resolved"] = True
        return c

    def recipe_obj(self) -> Recipe:
        return get_recipe(self.recipe or default_recipe(self.bits), lr=self.lr,
                          warmup_epochs=self.warmup_epochs, weight_decay=self.weight_decay)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown {cls.task} config field(s) {unknown}; known: "
                             f"{sorted(names)}")
        return cls(**d)

    def hashed(self) -> dict[str, Any]:
        """What the hash covers: the resolved fields that can change the result. The recipe's
        name is left out (its spelled-out values are in), and so are the parent's fields
        (its hash is in)."""
        c = self.resolved()
        out = {"task": c.task, "key_scheme": KEY_SCHEME}
        for f in dataclasses.fields(c):
            if f.metadata.get("hashed", True) and f.name not in ("recipe", "warmup_scale"):
                out[f.name] = getattr(c, f.name)
        if not c.schedule_epochs:  # the whole schedule: left out, so such runs keep their keys
            del out["schedule_epochs"]
        if c.init_from is not None:
            out["init_from"] = type(c).from_dict(c.init_from).key()
        if c.init_from_run:
            out["init_from_run"] = start_key(Path(c.init_from_run))
        out["recipe_spelled_out"] = c.recipe_obj().as_dict() | {"description": ""}
        # BatchNorm's group, not the flag: --sync-bn over N processes computes what one process
        # computes (the whole batch); without it each of N processes normalises its own share.
        out["sync_bn"] = False
        processes = world_size()
        if processes > 1 and not c.sync_bn:
            out["batchnorm_processes"] = processes
        if c.precision == "tf32" and not cuda_device(c.device):
            out["precision"] = "fp32"  # TF32 exists only on CUDA: the same arithmetic
        return out

    def key(self) -> str:
        c = self.resolved()
        if "_key" not in c.__dict__:
            blob = json.dumps(c.hashed(), sort_keys=True, default=str)
            c.__dict__["_key"] = hashlib.sha256(blob.encode()).hexdigest()[:12]
        return c.__dict__["_key"]

    def label(self) -> str:
        c = self.resolved()
        what = "fp" if c.bits == FULL_PRECISION else f"{c.method}{c.bits}b"
        r = c.recipe_obj()
        warm = f"-wu{r.warmup_epochs:g}" if r.warmup_epochs else ""
        return f"{c.label_prefix()}-{what}-{r.optimizer}{r.lr:g}{warm}-s{c.seed}"

    def run_dir(self) -> Path:
        return resolve_path(self.runs_dir) / self.task / f"{self.label()}-{self.key()}"


PLACEMENT = {
    "device": "where the run executes: a CPU and a GPU round differently (the device is "
              "recorded in config.json and result.json), but they draw the same batches (the "
              "tensor loader's generator is a CPU one on every device); TF32 is keyed only "
              "where it exists (CUDA)",
    "channels_last": "memory layout of the same tensors (the default follows the device)",
    "runs_dir": "where runs are stored",
    "data_dir": "where the data are read from (CIFAR-100: the files are checked by "
                "verify_data; ImageNet: the folder's class and file lists are in the key)",
    "workers": "DataLoader processes; hashed by a task when they change the batches (CIFAR's "
               "dataloader loader; ImageNet draws each image's augmentation from its own "
               "seed, whatever the worker count)",
    "threads": "CPU threads of the run's process: like the device, they change how float sums "
               "are split, never what is computed; a profile fixes them so its tables do not "
               "depend on how many runs train at once, and every run records them",
    "log_every": "how often the loss is checked and printed",
    "stop_after": "leaving early; the next call continues the same run",
    "wait": "what to do when another process holds the run",
    "download": "whether missing data are fetched (the files are checked against their MD5s)",
    "verify_data": "whether the data files are checked (the data are the same files either "
                   "way; an unchecked file is the user's responsibility)",
}
"""Config fields left out of the key because they say where or how fast a run executes, with
the reason. A test walks every field: each is hashed, placement, or in ``ENTERS_VIA``."""

KEYED_GENERATOR_CONSTANTS = {
    "synthetic": {"classes": 100, "size": 32, "noise": 0.8, "data_seed": 0},
    "finegrain": {"classes": 20, "size": 16, "detail": 0.5, "noise": 1.3, "data_seed": 0},
}
"""The generated data sets' constants (``uniq.repro.generated``) as
the keys of scheme 2 were made: a change of any constant adds them all to the key."""

ENTERS_VIA = {
    "fp_epochs": "init_from (the full-precision parent's key)",
    "fp_seed": "init_from (the full-precision parent's key)",
    "fp_batch_size": "init_from (the full-precision parent's key)",
}
"""Unhashed fields that change the computation through another hashed field."""


def flag(name: str) -> str:
    """The command-line flag of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def as_flags(values: dict[str, Any]) -> list[str]:
    """Config fields as command-line arguments (a boolean as ``--x`` or ``--no-x``)."""
    out: list[str] = []
    for name, value in values.items():
        if isinstance(value, bool):
            out.append(flag(name) if value else "--no-" + flag(name)[2:])
        else:
            out += [flag(name), str(value)]
    return out


def parse_overrides(text: str) -> dict[str, int | None]:
    """``"conv1=4,output=fp"`` -> ``{"conv1": 4, "output": None}`` (32 or fp: full precision)."""
    out: dict[str, int | None] = {}
    for item in (t.strip() for t in str(text or "").split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip().lower()
        if not sep or not name:
            raise ValueError(f"overrides: {item!r} is not NAME=BITS; write e.g. "
                             "--overrides features.init_block.conv=4,output=fp")
        if value in ("fp", "32", "none"):
            out[name] = None
            continue
        try:
            out[name] = check_bits(int(value))
        except ValueError:
            raise ValueError(f"overrides: {item!r}: bits must be 1..8, or 32/fp for full "
                             "precision") from None
    return out


def format_overrides(overrides: dict[str, int | None]) -> str:
    return ",".join(f"{k}={'fp' if v is None else v}" for k, v in sorted(overrides.items()))


def validate_fields(cfg: RunConfig) -> None:
    """Type, range and NaN checks for every field, with the field's name in the message."""
    for f in dataclasses.fields(cfg):
        v, t = getattr(cfg, f.name), str(f.type)
        optional = "None" in t
        if v is None:
            if not optional:
                raise ValueError(f"{f.name} must be given (got None)")
            continue
        if t.startswith("int"):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{f.name} must be an integer, got {v!r} ({type(v).__name__})")
        elif t.startswith("float"):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{f.name} must be a number, got {v!r} ({type(v).__name__})")
            if not math.isfinite(v):
                raise ValueError(f"{f.name} must be a finite number, got {v}")
        elif t.startswith("bool"):
            if not isinstance(v, bool):
                raise ValueError(f"{f.name} must be true or false, got {v!r}")
        elif t == "str":
            if not isinstance(v, str):
                raise ValueError(f"{f.name} must be a string, got {v!r} ({type(v).__name__})")
        choices = f.metadata.get("choices")
        if choices and v not in choices:
            raise ValueError(f"{f.name} must be one of {[c for c in choices if c]}, got {v!r}")
    positive = ("epochs", "batch_size", "calib_batches", "log_every")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(cfg, name)}")
    for name in ("seed", "workers", "threads", "stop_after", "dynamics_per_epoch"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    for name in ("lr", "warmup_epochs", "weight_decay"):
        v = getattr(cfg, name)
        if v is not None and (v < 0 or (name == "lr" and v == 0)):
            raise ValueError(f"{name} must be {'> 0' if name == 'lr' else '>= 0'}, got {v}")
    if cfg.warmup_scale < 0:
        raise ValueError(f"warmup_scale must be >= 0, got {cfg.warmup_scale}")
    if cfg.schedule_epochs and cfg.schedule_epochs < cfg.epochs:
        raise ValueError(f"schedule_epochs ({cfg.schedule_epochs:g}) must be 0 or at least the "
                         f"run's epochs ({cfg.epochs}): a run trains the start of its schedule")


def start_file(path: Path) -> Path:
    """The file ``--init-from-run`` loads: a run directory's ``model.pt`` (else its last
    ``checkpoint.pt``), or the file named."""
    if path.is_dir():
        return path / "model.pt" if (path / "model.pt").exists() else path / "checkpoint.pt"
    return path


def start_key(path: Path) -> str:
    """Identity of a start point for the hash: the sha256 of the file that will be loaded (a
    run's ``model.pt``, an unfinished run's current checkpoint, or any file), never its path
    or its run's key."""
    file = start_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"--init-from-run: no run directory or checkpoint at {path} "
                                "(a run directory needs model.pt or checkpoint.pt)")
    h = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def world_size() -> int:
    """Processes of this run (torchrun's WORLD_SIZE; 1 without torchrun)."""
    import os

    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def cuda_device(device: str) -> bool:
    """Whether a run with ``--device`` runs on CUDA (``auto``: when a GPU is visible)."""
    if device == "auto":
        return torch.cuda.is_available()
    return str(device).startswith("cuda")


def placement(cfg: RunConfig) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if not f.metadata.get("hashed", True) and f.name != "stop_after"}



@dataclass
class CifarConfig(RunConfig):
    """A CIFAR-100 run. ``bits=32`` is full precision."""

    task = "cifar"

    dataset: str = option("cifar100", "cifar100, or synthetic / finegrain (generated offline; "
                          "not comparable to the paper)", ("cifar100", "synthetic", "finegrain"))
    data_fraction: float = option(1.0, "train on a random fraction of the training set")
    synthetic_train: int = option(50_000, "images in the synthetic training set")
    synthetic_test: int = option(10_000, "images in the synthetic test set")
    cifar_stats: str = option("rounded", "CIFAR-100 normalisation: rounded (the statistics "
                              "to 4 decimals) or exact (the training set's, as the authors' "
                              "code)", ("rounded", "exact"))
    depth: int = option(32, "pre-activation ResNet depth (6n+2)")
    loader: str = option("tensor", "tensor (device-resident, on-device augmentation) or "
                         "dataloader (torchvision transforms, workers): they draw different "
                         "batches, so the loader is part of the key", ("tensor", "dataloader"))
    fp_epochs: int = option(350, "epochs of the full-precision run a quantized run starts from",
                            hashed=False)
    fp_seed: int = option(0, "seed of the full-precision run a quantized run starts from",
                          hashed=False)
    fp_batch_size: int = option(0, "batch size of the full-precision run a quantized run "
                                "starts from (0: this run's)", hashed=False)
    download: bool = option(True, "download CIFAR-100 with torchvision when missing",
                            hashed=False)
    verify_data: bool = option(True, "check the CIFAR-100 files against the official MD5s "
                               "(--no-verify-data for files you made yourself)", hashed=False)

    def label_prefix(self) -> str:
        return f"resnet{self.depth}"

    def hashed(self) -> dict:
        from . import generated as G

        out = super().hashed()
        if out["loader"] == "dataloader":  # its workers draw the augmentation: other batches
            out["workers"] = self.workers
        if out.pop("cifar_stats") == "exact" and self.dataset == "cifar100":
            out["cifar_stats"] = "exact"  # keyed when it departs from the default
        if self.dataset == "cifar100":  # the generated sets' sizes mean nothing here
            out["synthetic_train"], out["synthetic_test"] = 50_000, 10_000
        else:  # the generator's own constants, when they differ from those keys were made with
            constants = {**G.GENERATOR_CONSTANTS[self.dataset], "data_seed": G.DATA_SEED}
            if constants != KEYED_GENERATOR_CONSTANTS[self.dataset]:
                out["generator"] = constants
        return out

    def validate_task(self) -> None:
        if (self.depth - 2) % 6 or self.depth < 8:
            raise ValueError(f"depth must be 6n+2 and at least 8 (8, 20, 32, 44, 56, ...), "
                             f"got {self.depth}")
        if not 0 < self.data_fraction <= 1:
            raise ValueError(f"data_fraction must be in (0, 1], got {self.data_fraction}")
        if self.fp_batch_size < 0:
            raise ValueError(f"fp_batch_size must be >= 0 (0: this run's), got "
                             f"{self.fp_batch_size}")
        for name in ("synthetic_train", "synthetic_test", "fp_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")

    def default_parent(self) -> CifarConfig | None:
        """Section 5.2: quantized CIFAR models start from a full-precision model trained from
        scratch (the same data, model and batch)."""
        if self.bits == FULL_PRECISION:
            return None
        keep = ("dataset", "cifar_stats", "data_fraction", "synthetic_train", "synthetic_test",
                "depth", "precision", "sync_bn", "dynamics_per_epoch", "loader", "compile",
                "workers")
        return CifarConfig(bits=FULL_PRECISION, epochs=self.fp_epochs, seed=self.fp_seed,
                           batch_size=self.fp_batch_size or self.batch_size,
                           **{k: getattr(self, k) for k in keep})

    def example_input(self) -> torch.Tensor:
        return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@dataclass
class ImageNetConfig(RunConfig):
    task = "imagenet"

    arch: str = option("preresnet18", "pytorchcv architecture", IMAGENET_MODELS)
    pretrained: str = option("pytorchcv", "start weights: pytorchcv (download/cache), none, a "
                             "state-dict file or pytorchcv's cache dir")
    image_size: int = option(224, "crop size (evaluation resizes to size*256/224 first)")
    augment: bool = option(True, "random-resized crop + flip for training (else the "
                           "evaluation transform)")
    epochs: int = option(90, "training epochs")
    batch_size: int = option(256, "global batch size, over all processes")
    calib_batches: int = option(1000, "global batches for the step-size calibration")
    data_dir: str = option("data/imagenet", "ImageFolder root with train/ and val/",
                           hashed=False)
    workers: int = option(8, "DataLoader worker processes per process", hashed=False)
    log_every: int = option(100, "check the loss (and print, at most every 10 s) every N "
                            "steps", hashed=False)
    dynamics_per_epoch: int = option(0, "Figure-4 probes per epoch (0 = none)")

    def label_prefix(self) -> str:
        return self.arch

    def default_granularity(self) -> str:
        return "tensor" if self.arch.startswith("mobilenet") else "channel"

    def default_weight_decay(self, recipe: Recipe) -> float:
        return IMAGENET_WEIGHT_DECAY.get(self.bits, 1e-4)

    def validate_task(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")

    def hashed(self) -> dict:
        """A weight file counts by its content (sha256), never by its path; pytorchcv's
        weights by pytorchcv's file name, which carries the first 8 hex digits of the file's
        SHA-1 (pytorchcv checks a downloaded or cached file against it). The data folder counts
        by its class list and file list (``imagenet_data_digest``)."""
        out = super().hashed()
        if self.pretrained == "none":
            out["pretrained"] = "none"
        elif self.pretrained == "pytorchcv":
            from .pretrained import pytorchcv_filename

            out["pretrained"] = "pytorchcv:" + pytorchcv_filename(self.arch)
        else:
            out["pretrained"] = pretrained_digest(self.arch, self.pretrained)
        out["imagenet_data"] = imagenet_data_digest(self.data_dir)
        return out

    def default_parent(self) -> ImageNetConfig | None:
        """Section 5.1: the 1-bit models start from the 2-bit model of the same settings."""
        if self.bits != 1:
            return None
        return ImageNetConfig(**{**self.to_dict(), "bits": 2, "recipe": "", "lr": None,
                                 "warmup_epochs": None, "weight_decay": None,
                                 "init_from": None, "init_from_run": ""})

    def example_input(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return torch.randn(2, 3, self.image_size, self.image_size, generator=g)


_DIGESTS: dict[tuple, str] = {}


def imagenet_data_digest(data_dir: str) -> str:
    """The content of an ImageNet folder as a run's key sees it: the sha256 of its class
    list and of every file's path under ``train/`` and ``val/`` (names, not bytes: a folder
    of other images or another class subset is another key; ``absent`` without a folder).
    Taken once per folder state (the folders' modification times)."""
    root = resolve_path(data_dir)
    splits = [root / "train", root / "val"]
    if not all(s.is_dir() for s in splits):
        return "absent"
    classes = {s: sorted(e.name for e in os.scandir(s) if e.is_dir()) for s in splits}
    memo = (str(root), *(os.stat(s / c).st_mtime_ns for s in splits for c in classes[s]),
            *(os.stat(s).st_mtime_ns for s in splits))
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        for s in splits:
            for c in classes[s]:
                h.update(f"{s.name}/{c}\n".encode())
                for name in sorted(e.name for e in os.scandir(s / c) if e.is_file()):
                    h.update(f"{s.name}/{c}/{name}\n".encode())
        _DIGESTS[memo] = f"{len(classes[splits[0]])} classes, sha256:{h.hexdigest()[:16]}"
    return _DIGESTS[memo]


def pretrained_file(arch: str, pretrained: str) -> Path:
    """The weight file ``--pretrained`` names (a file, or pytorchcv's cache dir)."""
    return pretrained_path(arch, resolve_path(pretrained))


def pretrained_digest(arch: str, pretrained: str) -> str:
    """sha256 of a ``--pretrained`` file, taken once per file version, after checking that it
    holds a state dict of ``arch`` (loaded with ``weights_only=True``: nothing in it runs)."""
    path = pretrained_file(arch, pretrained)
    stat = path.stat()
    memo = (str(path), arch, stat.st_size, stat.st_mtime_ns)
    if memo not in _DIGESTS:
        check_state_dict_file(path, arch)
        import hashlib

        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[memo] = "sha256:" + h.hexdigest()
    return _DIGESTS[memo]


def check_state_dict_file(path: Path, arch: str) -> None:
    """One clear line for every file that is not ``arch``'s weights: not a torch file, a
    pickle that would run code, another object, another model's state dict."""

    fix = (f"pass {arch}'s state dict saved with torch.save(model.state_dict(), FILE), "
           "pytorchcv's weights file, or --pretrained pytorchcv/none")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        why = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        kind = ("a pickle that would run code (refused, nothing was executed)"
                if "weights_only" in str(err) or "Unsupported" in str(err)
                else f"not a torch weights file ({type(err).__name__}: {why})")
        raise ValueError(f"--pretrained {path} is {kind}; {fix}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ValueError(f"--pretrained {path} holds a {type(state).__name__}, not a state dict "
                         f"of tensors; {fix}")
    own = {k: tuple(v.shape) for k, v in imagenet_model(arch).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    shapes = sorted(k for k in set(own) & set(theirs) if own[k] != theirs[k])
    if missing or unexpected or shapes:
        what = (f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}"
                if unexpected else f"other shapes for {shapes[:2]}")
        raise ValueError(f"--pretrained {path} is not a state dict of {arch} ({what}); {fix}")



CONFIGS: dict[str, type[RunConfig]] = {"cifar": CifarConfig, "imagenet": ImageNetConfig}


def config_class(task: str) -> type[RunConfig]:
    if task not in CONFIGS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[task]
