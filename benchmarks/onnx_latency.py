"""CPU latency of a network as float32 ONNX, as uniq's integer graphs and bit-serially.

    python benchmarks/onnx_latency.py                       # CIFAR ResNet-32 and preresnet18
    python benchmarks/onnx_latency.py --models resnet32 --bits 2 --threads 2 --batches 32

For each network: random weights with non-trivial BatchNorm statistics, converted to UniQ at
``--bits`` (the paper's layer policy: first and last layers at 8 bits) and calibrated on random
images. Side by side, on the same input and threads, interleaved run by run:

* ``float32``: the full-precision network exported by ``torch.onnx.export``;
* ``integer``: ``export_onnx(..., integer=True)``, every quantized layer's int32 accumulator
  exact (uint8 x uint8 ``ConvInteger``), the float operations between layers the model's;
* ``fused``: ``integer=True, fused=True``, a conv, its BatchNorm, ReLU and the next quantizer
  as one ``QLinearConv`` where the network allows it (its bias rounded to the accumulator's
  grid: the codes that moves are printed per layer with the top-1 agreement);
* ``bitserial`` (bits <= 2): the PyTorch model with every 1-2-bit convolution computed by
  ``uniq.deploy.bitserial`` (AND + popcount on packed words, numpy), the rest in PyTorch;
  at 224 px only at batch 1 (a batch of 32 takes minutes).

Before timing, both integer graphs are checked against PyTorch (forced codes: logits to float
tolerance, same top-1) and onnxruntime's optimised graph is searched for an integer kernel per
quantized layer. ``{graph}_speedup`` = float32 ms / graph ms. A per-layer table times one
convolution as float32, as the 8-bit integer kernel and bit-serially (``--no-kernels`` skips
it). The speed targets (batch 32, 2 threads: 2-bit integer graph >= 1.5x float32 for
preresnet18, >= 1.0x for ResNet-32) are checked; where missed, onnxruntime's per-operator
profile says where the time goes. Only ratios within one run mean something; the CPU, its
instruction sets and the load average are printed with them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from pathlib import Path

import pandas as pd
import torch

from uniq import deploy as X
from uniq.deploy import latency as L
from uniq.deploy.bitserial import MAX_BITS, bitserial
from uniq.deploy.graph import require

TARGETS = {"preresnet18": 1.5, "resnet32": 1.0}  # integer graph vs float32, batch 32, 2 threads


def checked(model, path, size: int) -> dict:
    """The graph agrees with PyTorch fed the same codes (logits to float tolerance, same
    top-1), onnxruntime runs every integer layer with an integer kernel; and the codes that
    differ from PyTorch's own quantizers, per layer, with the free-running top-1 agreement."""
    parity = X.check_parity(model, path, torch.randn(4, 3, size, size))
    ok = (parity["allclose"] and parity["top1_agree_forced"] == 1.0
          and not X.integer_layers(path)["missing"])
    return {"ok": bool(ok), "top1_agree": parity["top1_agree"],
            "codes_differing_by_layer": parity["codes_differing_by_layer"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="resnet32,preresnet18", help=f"of {list(L.NETWORKS)}")
    p.add_argument("--bits", default="2", help="comma list of UniQ bit widths")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--threads", default="1,2", help="intra-op threads, the same for all graphs")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-kernels", action="store_true", help="skip the per-layer kernel table")
    p.add_argument("--qdq", action="store_true", help="time the QDQ graph too")
    p.add_argument("--split", action="store_true",
                   help="time the integer graph with nine_bit='split' too (the 8-bit first "
                        "and last layers in 8-bit kernels instead of float)")
    p.add_argument("--no-spin", action="store_true",
                   help="idle intra-op threads sleep instead of busy-waiting (fairer on a "
                        "shared, loaded machine; onnxruntime's default spins)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = p.parse_args()
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    isa = L.instruction_sets()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"CPU: {L.cpu_name()}; instruction sets: {isa}; onnxruntime "
          f"{require('onnxruntime').__version__}, torch {torch.__version__}; load average "
          f"{load if load is None else round(load, 2)}")
    tables, kernel_rows, verdicts = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            for bits in ints(a.bits):
                fp, q, size = L.benchmark_networks(name, bits)
                example = torch.randn(1, 3, size, size)
                graphs = {"float32": L.export_float_onnx(fp, f"{tmp}/fp.onnx", example),
                          "integer": X.export_onnx(q, f"{tmp}/int.onnx", example, integer=True),
                          "fused": X.export_onnx(q, f"{tmp}/fused.onnx", example, integer=True,
                                                 fused=True)}
                if a.split:
                    graphs["integer_split"] = X.export_onnx(q, f"{tmp}/split.onnx", example,
                                                            integer=True, nine_bit="split")
                if a.qdq:
                    graphs["qdq"] = X.export_onnx(q, f"{tmp}/qdq.onnx", example)
                checks = {k: checked(q, graphs[k], size) for k in graphs
                          if k.startswith(("integer", "fused"))}
                moved = checks["fused"]["codes_differing_by_layer"]
                fused_layers = json.loads({p.key: p.value for p in require("onnx").load(
                    str(graphs["fused"])).metadata_props}["uniq.fused_layers"]).values()
                print(f"\n{name} {size}px, {bits}-bit: fused requantization moved "
                      + ", ".join(f"{moved[n]:.2%} of {n}'s codes" for n in fused_layers)
                      + f"; top-1 agreement with PyTorch {checks['fused']['top1_agree']:.0%} "
                      "(integer graph: " f"{checks['integer']['top1_agree']:.0%})")
                parts = []
                with contextlib.ExitStack() as stack:
                    if bits <= MAX_BITS:  # the model's 1-2-bit convs through the kernel
                        stack.enter_context(bitserial(q))
                    for batch in ints(a.batches):
                        timed = dict(graphs)
                        if bits <= MAX_BITS and (size < 224 or batch == 1):
                            timed["bitserial"] = q  # at 224 px, batch 32: minutes, left out
                        parts.append(L.latency_table(timed, size, (batch,), ints(a.threads),
                                                     a.repeats, spin=not a.no_spin))
                table = pd.concat(parts, ignore_index=True)
                if bits <= MAX_BITS:
                    if not a.no_kernels:
                        batch = max(ints(a.batches)) if size < 224 else 1
                        kernels = L.kernel_table(q, torch.randn(batch, 3, size, size),
                                                 max(ints(a.threads)), 3)
                        kernels.insert(0, "model", f"{name} {size}px")
                        kernel_rows.append(kernels)
                table.insert(0, "model", f"{name} {size}px")
                table.insert(1, "bits", bits)
                table.insert(2, "checked", all(c["ok"] for c in checks.values()))
                tables.append(table)
                print(table.round(3).to_markdown(index=False), flush=True)
                target = TARGETS.get(name)
                at = table[(table.batch == 32) & (table.threads == 2)]
                if target and bits == 2 and len(at):
                    best = max(("integer", "fused"), key=lambda k: float(at[f"{k}_speedup"].max()))
                    got = float(at[f"{best}_speedup"].max())
                    verdict = (f"{name}: the {best} graph is {got:.2f}x float32 at batch 32 on 2 "
                               f"threads; target {target}x " + ("met" if got >= target else
                               f"missed by {target / got:.2f}x"))
                    verdicts.append(verdict)
                    print(verdict)
                    if got < target:
                        x32 = torch.randn(32, 3, size, size)
                        for k in ("float32", best):
                            prof = L.op_profile(graphs[k], x32, 2)
                            print(f"where the {k} graph's time goes (onnxruntime profiler, ms "
                                  "per run):")
                            print(prof.head(8).round(3).to_markdown(index=False))
    if kernel_rows:
        kernels = pd.concat(kernel_rows, ignore_index=True)
        print("\none convolution: float32 (PyTorch), 8-bit integer kernel (onnxruntime "
              "ConvInteger) and bit-serial (numpy popcount), ms")
        print(kernels.round(3).to_markdown(index=False))
    if a.json:
        a.json.write_text(json.dumps({
            "cpu": L.cpu_name(), "instruction_sets": isa, "verdicts": verdicts,
            "rows": pd.concat(tables).to_dict("records"),
            "kernels": pd.concat(kernel_rows).to_dict("records") if kernel_rows else []},
            indent=2, default=str))


if __name__ == "__main__":
    main()
