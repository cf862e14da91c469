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
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..convert import calibrate, quantize_model
from ..models import adaptive_pooling, imagenet_model, preact_resnet
from .graph import INPUT_NAME, OPSET, OUTPUT_NAME, onnx_session, require

# name -> image size; resnet8 is a small stand-in for quick checks of the benchmark itself
NETWORKS = {"resnet32": 32, "preresnet18": 224, "resnet8": 32}


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
    fp = (adaptive_pooling(imagenet_model(name)) if name == "preresnet18"
          else preact_resnet(int(name.removeprefix("resnet")), 100))
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


# The x86 and ARM extensions that decide which integer kernels onnxruntime runs: AVX2 alone
# multiplies uint8 by int8 in saturating 16-bit pairs (VPMADDUBSW), AVX-512 VNNI / AVX-VNNI
# accumulate in 32 bits (VPDPBUSD), AMX multiplies tiles; ARM's dot products (asimddp, i8mm).
INTEGER_EXTENSIONS = ("sse4_1", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
                      "avx_vnni", "amx_int8", "asimddp", "i8mm")


def instruction_sets() -> str:
    """The CPU's integer-relevant instruction-set extensions (``INTEGER_EXTENSIONS`` found in
    ``/proc/cpuinfo``'s flags), space-separated, or the machine type where that is not
    readable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    found = [f for f in INTEGER_EXTENSIONS if f in flags]
    return " ".join(found) if found else f"{platform.machine()} (none of {INTEGER_EXTENSIONS})"


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _torch_run(forward, x: torch.Tensor, threads: int):
    def run():
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.no_grad():
                forward(x)
        finally:
            torch.set_num_threads(previous)
    return run


def compare_latency(graphs: dict, x: torch.Tensor, threads: int,
                    repeats: int = 20, warmup: int = 2, spin: bool = True) -> dict[str, float]:
    """Median ms of one forward pass of each ONNX file in ``graphs`` (name -> path, or a
    callable: a PyTorch forward such as the bit-serial model, run with ``threads`` too) on batch
    ``x``, ``threads`` intra-op threads each, interleaved over ``repeats`` rounds after
    ``warmup`` runs. Returns ``{name}_ms`` per graph, plus the batch, threads and the 1-minute
    load average before and after (a loaded machine slows multi-threaded runs most).
    ``spin=False`` stops idle intra-op threads from busy-waiting: onnxruntime's default spins,
    which is fastest on an idle machine, but on a shared one a spinning thread waits for a
    descheduled partner at every parallel region (the integer graph has many small ones)."""
    feed = {INPUT_NAME: x.detach().cpu().float().numpy()}
    runs = {}
    for name, graph in graphs.items():
        if callable(graph):  # a PyTorch forward (the bit-serial model), on the same input
            runs[name] = _torch_run(graph, x, threads)
        else:
            runs[name] = (lambda s: lambda: s.run(None, feed))(onnx_session(graph, threads, spin))
    load_before = _load()
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    row: dict[str, float] = {"batch": int(x.shape[0]), "threads": threads, "spin": spin}
    row.update({f"{name}_ms": 1e3 * statistics.median(t) for name, t in times.items()})
    row.update(load_1min_before=load_before, load_1min_after=_load())
    return row


def latency_table(graphs: dict, image_size: int, batches=(1, 32),
                  threads=(1, 2), repeats: int = 20, seed: int = 0, baseline: str = "float32",
                  spin: bool = True):
    """``compare_latency`` for every batch size and thread count (Gaussian input; the timings
    do not depend on the values), with ``{name}_speedup = baseline_ms / name_ms`` for every
    other graph (above 1 means faster than the baseline) and the CPU's ``instruction_sets``,
    which decide the integer kernels onnxruntime ran."""
    import pandas as pd

    g = torch.Generator().manual_seed(seed)
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, image_size, image_size, generator=g)
        for t in threads:
            rows.append(compare_latency(graphs, x, t, repeats, spin=spin))
    table = pd.DataFrame(rows)
    table["instruction_sets"] = instruction_sets()
    for name in graphs:
        if name != baseline:
            table[f"{name}_speedup"] = table[f"{baseline}_ms"] / table[f"{name}_ms"]
    return table


def kernel_table(model: nn.Module, x: torch.Tensor, threads: int = 1, repeats: int = 5,
                 layers: list[str] | None = None):
    """One row per layer the bit-serial kernel handles (or ``layers`` of them): median ms of
    its convolution on this batch's input codes as a float32 PyTorch conv of the dequantized
    values, as onnxruntime's 8-bit integer kernel (``ConvInteger``, uint8 x uint8, the integer
    graph's) and as the bit-serial kernel, the ratios, and whether the two integer results
    equal the int64 reference (``exact``)."""
    import numpy as np
    import pandas as pd
    from onnx import TensorProto, helper, numpy_helper

    from .bitserial import bitserial_layers
    from .graph import WEIGHT_ZERO_POINT
    from .integer import integer_conv2d, layer_inputs, to_codes

    kernels = bitserial_layers(model)
    inputs = layer_inputs(model, x)
    rows = []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name in layers or list(kernels):
            kernel = kernels[name]
            layer = kernel.layer
            codes = to_codes(inputs[name], layer.input_grid)
            w_float = layer.weight_codes.float() * layer.weight_grid.scale.reshape(-1, 1, 1, 1)
            x_float = codes.float() * layer.input_grid.scale
            ph, pw = layer.padding
            node = helper.make_node(
                "ConvInteger", ["x", "w", "", "zw"], ["y"], strides=list(layer.stride),
                pads=[ph, pw, ph, pw], dilations=list(layer.dilation))
            graph = helper.make_graph(
                [node], "layer", [helper.make_tensor_value_info("x", TensorProto.UINT8, None)],
                [helper.make_tensor_value_info("y", TensorProto.INT32, None)], initializer=[
                    numpy_helper.from_array(
                        (layer.weight_codes + WEIGHT_ZERO_POINT).numpy().astype(np.uint8), "w"),
                    numpy_helper.from_array(np.array(WEIGHT_ZERO_POINT, np.uint8), "zw")])
            proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
            proto.ir_version = 8
            session = onnx_session(proto.SerializeToString(), threads)
            feed = {"x": codes.numpy().astype(np.uint8)}
            conv = layer.conv_args()
            runs = {"float32": partial(torch.nn.functional.conv2d, x_float, w_float, **conv),
                    "int8": partial(session.run, None, feed), "bitserial": partial(kernel, codes)}
            ms = {}
            for label, run in runs.items():
                run()
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - t0)
                ms[label] = 1e3 * statistics.median(times)
            reference = integer_conv2d(codes, layer.weight_codes, **conv)
            exact = (torch.equal(kernel(codes), reference) and torch.equal(
                torch.from_numpy(session.run(None, feed)[0]).long(), reference))
            rows.append({"layer": name, "input": "x".join(map(str, codes.shape)),
                         "weight_bits": layer.weight_grid.bits,
                         "input_bits": layer.input_grid.bits, "exact": exact,
                         **{f"{k}_ms": v for k, v in ms.items()},
                         "bitserial_vs_float32": ms["float32"] / ms["bitserial"],
                         "bitserial_vs_int8": ms["int8"] / ms["bitserial"]})
    finally:
        torch.set_num_threads(previous)
    return pd.DataFrame(rows)


def op_profile(path: str | Path, x: torch.Tensor, threads: int, runs: int = 3):
    """Where one ONNX graph's time goes: onnxruntime's own profiler over ``runs`` runs after a
    warm-up, summed per operator type (ms per run, largest first, with the share of the
    total node time)."""
    import json

    import pandas as pd

    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    feed = {INPUT_NAME: x.detach().cpu().float().numpy()}
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feed)
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1e3 / runs
    table = pd.DataFrame({"op": list(per_op), "ms": list(per_op.values())})
    table = table.sort_values("ms", ascending=False, ignore_index=True)
    table["share"] = table.ms / max(table.ms.sum(), 1e-12)
    return table


__all__ = ["NETWORKS", "benchmark_networks", "export_float_onnx", "cpu_name",
           "INTEGER_EXTENSIONS", "instruction_sets", "compare_latency", "latency_table",
           "kernel_table", "op_profile"]
