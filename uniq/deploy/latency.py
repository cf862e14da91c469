"""CPU latency of ONNX graphs measured side by side: float32 against the integer graph.

The float32 baseline is the full-precision network exported by ``torch.onnx.export`` (what a
user deploying the float model would run); the quantized network is ``uniq.deploy``'s integer
graph (``integer=True``) and, optionally, its QDQ graph. Every graph runs in its own
onnxruntime CPU session with the same intra-op thread count, on the same input, and the
timings are interleaved (one run of each graph per round), so that a change in the machine's
load hits all of them alike; the ratios within one call are the result, absolute times are
only this machine at this moment.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from ..convert import calibrate, quantize_model
from ..models import adaptive_pooling, imagenet_model, preact_resnet
from .graph import INPUT_NAME, OPSET, OUTPUT_NAME, onnx_session, require

NETWORKS = {"resnet32": 32, "preresnet18": 224}  # name -> image size


def benchmark_networks(name: str, bits: int = 2, seed: int = 0) -> tuple[nn.Module, nn.Module,
                                                                         int]:
    """``(float model, calibrated UniQ model, image size)`` for a latency measurement: the
    paper's CIFAR ResNet-32 (100 classes, 32 px) or pytorchcv's preresnet18 (224 px), random
    weights with non-trivial BatchNorm statistics, converted at ``bits`` under the paper's
    layer policy (kernel-wise weight steps) and calibrated on random images. Latency does not
    depend on the values, only on the shapes and the graph."""

    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose from {list(NETWORKS)}")
    size = NETWORKS[name]
    torch.manual_seed(seed)
    fp = (preact_resnet(32, 100) if name == "resnet32"
          else adaptive_pooling(imagenet_model("preresnet18")))
    with torch.no_grad():
        fp.train()(torch.randn(8, 3, size, size) * 2)
    fp.eval()
    x = torch.randn(8, 3, size, size)
    q = quantize_model(fp, bits, "uniq", "channel", example_input=x)
    return fp, calibrate(q, [x], 1).eval(), size


def export_float_onnx(model: nn.Module, path: str | Path, example_input: torch.Tensor) -> Path:
    """The float32 model as ONNX via ``torch.onnx.export`` (the TorchScript exporter, which
    needs no extra package), with a dynamic batch dimension; same input and output names as
    ``uniq.deploy``'s files."""
    require("onnx")
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(model, example_input[:1], str(path), dynamo=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              opset_version=OPSET)
    finally:
        model.train(was_training)
    return Path(path)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``), and
    how many logical CPUs this process may use."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({cpus} logical CPUs)"


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def compare_latency(graphs: dict[str, str | Path], x: torch.Tensor, threads: int,
                    repeats: int = 20, warmup: int = 2, spin: bool = True) -> dict[str, float]:
    """Median ms of one forward pass of each ONNX file in ``graphs`` (name -> path) on batch
    ``x``, ``threads`` intra-op threads each, interleaved over ``repeats`` rounds after
    ``warmup`` runs. Returns ``{name}_ms`` per graph, plus the batch, threads and the 1-minute
    load average before and after (a loaded machine slows multi-threaded runs most).
    ``spin=False`` stops idle intra-op threads from busy-waiting: onnxruntime's default spins,
    which is fastest on an idle machine, but on a shared one a spinning thread waits for a
    descheduled partner at every parallel region (the integer graph has many small ones)."""
    sessions = {name: onnx_session(path, threads, spin) for name, path in graphs.items()}
    feed = {INPUT_NAME: x.detach().cpu().float().numpy()}
    load_before = _load()
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            times[name].append(time.perf_counter() - t0)
    row: dict[str, float] = {"batch": int(x.shape[0]), "threads": threads, "spin": spin}
    row.update({f"{name}_ms": 1e3 * statistics.median(t) for name, t in times.items()})
    row.update(load_1min_before=load_before, load_1min_after=_load())
    return row


def latency_table(graphs: dict[str, str | Path], image_size: int, batches=(1, 32),
                  threads=(1, 2), repeats: int = 20, seed: int = 0, baseline: str = "float32",
                  spin: bool = True):
    """``compare_latency`` for every batch size and thread count (Gaussian input; the timings
    do not depend on the values), with ``{name}_speedup = baseline_ms / name_ms`` for every
    other graph: above 1 means faster than the baseline."""
    import pandas as pd

    g = torch.Generator().manual_seed(seed)
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, image_size, image_size, generator=g)
        for t in threads:
            rows.append(compare_latency(graphs, x, t, repeats, spin=spin))
    table = pd.DataFrame(rows)
    for name in graphs:
        if name != baseline:
            table[f"{name}_speedup"] = table[f"{baseline}_ms"] / table[f"{name}_ms"]
    return table


__all__ = ["NETWORKS", "benchmark_networks", "export_float_onnx", "cpu_name",
           "compare_latency", "latency_table"]
