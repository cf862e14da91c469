"""CPU latency of the float32 ONNX graph against uniq's integer graph, side by side.

    python benchmarks/onnx_latency.py                       # ResNet-32 (CIFAR) and preresnet18
    python benchmarks/onnx_latency.py --models resnet32 --bits 2,4 --threads 1,2 --qdq

For each network: random weights with non-trivial BatchNorm statistics, converted to UniQ at
``--bits`` (the paper's layer policy: first and last layers at 8 bits) and calibrated on random
images. The full-precision network is exported with ``torch.onnx.export`` (float32), the
quantized one with ``uniq.deploy.export_onnx(..., integer=True)`` (and ``--qdq``: the QDQ
graph). Before timing, the integer graph is checked against PyTorch (forced codes, logits,
top-1) and onnxruntime's optimised graph is searched for an integer kernel per quantized
layer. Timings: median of ``--repeats`` interleaved runs per graph, the same intra-op threads
for all, batch 1 and 32; ``integer_speedup`` = float32 ms / integer ms. Only the ratios within
one run mean something; the CPU and the load average are printed with them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from uniq import deploy as X
from uniq.deploy import latency as L


def checked(model, path, size: int) -> bool:
    """The graph agrees with PyTorch (forced codes: logits to float tolerance, same top-1) and
    onnxruntime runs every layer it computes in integers with an integer kernel."""
    parity = X.check_parity(model, path, torch.randn(2, 3, size, size))
    return (parity["allclose"] and parity["top1_agree_forced"] == 1.0
            and not X.integer_layers(path)["missing"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="resnet32,preresnet18", help=f"of {list(L.NETWORKS)}")
    p.add_argument("--bits", default="2", help="comma list of UniQ bit widths")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--threads", default="1,2", help="intra-op threads, the same for all graphs")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--qdq", action="store_true", help="time the QDQ graph too")
    p.add_argument("--split", action="store_true",
                   help="time the integer graph with nine_bit='split' too (the 8-bit first "
                        "and last layers in int8 kernels instead of float)")
    p.add_argument("--no-spin", action="store_true",
                   help="idle intra-op threads sleep instead of busy-waiting (fairer on a "
                        "shared, loaded machine; onnxruntime's default spins)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = p.parse_args()
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    print(f"CPU: {L.cpu_name()}; onnxruntime {X.require('onnxruntime').__version__}, "
          f"torch {torch.__version__}")
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            for bits in ints(a.bits):
                fp, q, size = L.benchmark_networks(name, bits)
                graphs = {"float32": L.export_float_onnx(fp, f"{tmp}/fp.onnx",
                                                         torch.randn(1, 3, size, size))}
                example = torch.randn(1, 3, size, size)
                graphs["integer"] = X.export_onnx(q, f"{tmp}/int.onnx", example, integer=True)
                if a.split:
                    graphs["integer_split"] = X.export_onnx(q, f"{tmp}/split.onnx", example,
                                                            integer=True, nine_bit="split")
                if a.qdq:
                    graphs["qdq"] = X.export_onnx(q, f"{tmp}/qdq.onnx", example)
                ok = all(checked(q, graphs[k], size) for k in graphs if k.startswith("integer"))
                table = L.latency_table(graphs, size, ints(a.batches), ints(a.threads),
                                        a.repeats, spin=not a.no_spin)
                table.insert(0, "model", f"{name} {size}px")
                table.insert(1, "bits", bits)
                table.insert(2, "checked", ok)
                tables.append(table)
                print(table.round(3).to_markdown(index=False), flush=True)
    if a.json:
        import pandas as pd

        rows = pd.concat(tables).to_dict("records")
        a.json.write_text(json.dumps({"cpu": L.cpu_name(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
