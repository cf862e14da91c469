"""``python -m uniq export RUN -o model.onnx``: a finished run's trained model written as an
ONNX file by ``uniq.deploy`` and checked against PyTorch, and the run-directory helpers the
deployment notebook uses (the run's model, its image size, a batch of its test images)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..deploy.graph import (
    INSTALL_HINT,
    NINE_BIT,
    OPSET,
    check_parity,
    export_onnx,
    integer_layers,
    require,
)
from .data import FINEGRAIN_SIZE, load_dataset, normalize
from .outputs import check_output
from .paths import resolve_path
from .runs import Run
from .tasks import DATA_SEED


def load_run_model(run_dir: str | Path) -> nn.Module:
    """The trained model of a finished run directory (CIFAR or ImageNet), on the CPU in eval
    mode, with a message for a folder that is not a finished run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run directory {run_dir} not found; pass a folder written by `python -m uniq "
            "train` or `python -m uniq imagenet` (it holds config.json and model.pt)")
    config_path, weights_path = run_dir / "config.json", run_dir / "model.pt"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: {run_dir} is not a run directory")
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"{weights_path} not found: the run has not finished; finish it (run the same "
            "training command again, it resumes) or export a finished run")

    run = Run.load(run_dir)
    if not run.finished:
        raise FileNotFoundError(f"{run_dir} has not finished (no result.json); finish it first")
    return run.model().eval()


def run_input_size(run_dir: str | Path) -> int:
    """The image size a run was trained at (ImageNet: its ``image_size``; CIFAR-100 and the
    ``synthetic`` stand-in: 32; the laptop profile's ``finegrain``: 16)."""
    cfg = Run.load(run_dir).config
    if cfg.task == "imagenet":
        return int(cfg.image_size)
    return FINEGRAIN_SIZE if cfg.dataset == "finegrain" else 32


def load_run_batch(run_dir: str | Path, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images of a CIFAR run's dataset, normalised as in training, and
    their labels (the synthetic set is generated from the run's seed)."""
    cfg = Run.load(run_dir).config
    if cfg.task == "imagenet":
        raise ValueError(f"{run_dir} is an ImageNet run; load its validation images yourself")
    data = load_dataset(cfg.dataset, False, resolve_path(cfg.data_dir), DATA_SEED,
                        (cfg.synthetic_train, cfg.synthetic_test), download=False)
    return normalize(data.images[:n], data.mean, data.std), data.labels[:n]


# Bytes of memory an export needs per input pixel of the check batch: the float input, the
# widest early feature maps (64 channels), kept by the tracer, PyTorch and onnxruntime alike.
BYTES_PER_INPUT_PIXEL = 4 * 64 * 2


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: no bound
        return None


def _is_onnx(path: Path) -> bool:
    """An ONNX file (an earlier export, replaced without --force)."""
    try:
        import onnx

        return path.suffix == ".onnx" and bool(onnx.load(str(path),
                                                         load_external_data=False).graph.node)
    except Exception:  # noqa: BLE001 - anything onnx cannot read is not an ONNX file
        return False


def check_export_arguments(a: argparse.Namespace) -> Path:
    """Every flag, and the output path, before the run is loaded; returns the output path."""
    for name in ("batch", "image_size"):
        value = getattr(a, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if a.nine_bit is not None and not a.integer:
        raise ValueError(f"--nine-bit {a.nine_bit} only applies with --integer; add --integer "
                         "or leave --nine-bit out")
    memory = _memory_bytes()
    if a.image_size is not None and memory is not None:
        need = a.batch * a.image_size ** 2 * BYTES_PER_INPUT_PIXEL
        if need > memory:
            raise ValueError(f"--image-size {a.image_size} with --batch {a.batch} needs about "
                             f"{need / 2**30:,.0f} GiB, more than this machine's "
                             f"{memory / 2**30:,.0f} GiB of memory; use a smaller --image-size "
                             "or --batch")
    return check_output(a.output, "-o", getattr(a, "force", False), _is_onnx, "ONNX file")


def cmd_export(a: argparse.Namespace) -> int:
    check_export_arguments(a)
    try:
        require("onnx"), require("onnxruntime")
        model = load_run_model(a.run_dir)
        size = a.image_size or run_input_size(a.run_dir)
        g = torch.Generator().manual_seed(a.seed)
        x = torch.randn(a.batch, 3, size, size, generator=g)
        path = export_onnx(model, a.output, x, integer=a.integer,
                           nine_bit=a.nine_bit or "float", fused=getattr(a, "fused", False))
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"onnx": str(path), "opset": OPSET, "input": [a.batch, 3, size, size],
                              "form": "integer" if a.integer else "qdq"}
    if a.integer:
        report.update(integer_layers(path))
    if not a.no_check:
        parity = check_parity(model, path, x)
        report.update({k: v for k, v in parity.items() if not k.endswith("_logits")},
                      check_input="Gaussian noise (the data are not needed to check the graph)")
    print(json.dumps(report, indent=2))
    agree = report.get("allclose") and report.get("top1_agree_forced") == 1.0
    integer_ok = not report.get("missing")
    return 0 if (a.no_check or agree) and integer_ok else 1


def add_export_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``python -m uniq export RUN_DIR -o model.onnx``."""
    p.description = ("Write a finished CIFAR or ImageNet run as an ONNX file in the QDQ form "
                     f"(opset {OPSET}) and compare onnxruntime's logits with PyTorch's on a "
                     f"random batch. Needs: {INSTALL_HINT}")
    p.add_argument("run_dir", help="a finished run directory (config.json and model.pt)")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size of the check batch (default: the run's; CIFAR 32)")
    p.add_argument("--batch", type=int, default=8, help="check batch size")
    p.add_argument("--seed", type=int, default=0, help="seed of the check batch")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--integer", action="store_true",
                   help="compute every quantized layer with integer kernels (ConvInteger / "
                        "MatMulInteger) instead of the QDQ form's float kernels")
    p.add_argument("--nine-bit", choices=NINE_BIT, default=None,
                   help="with --integer: layers whose odd codes need 9 bits (8-bit UniQ first "
                        "and last layers) stay QDQ (float, the default: faster) or are split "
                        "into int8 kernels (split: every quantized layer in integers)")
    p.add_argument("--fused", action="store_true",
                   help="with --integer: fuse a convolution, its BatchNorm, ReLU and the next "
                        "quantizer into one QLinearConv (faster; the bias is rounded to the "
                        "accumulator's grid, the report counts the codes that moved)")
    p.add_argument("--force", action="store_true",
                   help="replace -o even if it is not an ONNX file (a run's or results "
                        "folder's file is never replaced)")
    p.set_defaults(func=cmd_export)
    return p
