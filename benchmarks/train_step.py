"""Milliseconds per training step, data path included: full precision vs 2-bit UniQ.

    python benchmarks/train_step.py                      # CPU, eager (and small)
    python benchmarks/train_step.py --profile            # ... and where the time goes
    python benchmarks/train_step.py --device cuda --modes eager,default,reduce-overhead \\
        --precisions fp32,bf16 --out benchmarks/results/<gpu>/train_step.json

Each measurement builds the real engine objects (``uniq.repro.train.prepare``: device-resident
loader with on-device crop/flip, the model, calibration, fused optimizer and channels_last on
CUDA) and runs the step as training does (``value_checks(False)``). The full-precision and the
quantized step are timed alternately, one step each, after warm-up steps (compilation happens
there), so that load from other processes hits both alike; the table gives medians and the
UniQ/FP ratio of the medians (fp32 is the paper's and the default; bf16 autocast is the opt-in
speed option). ``--profile`` adds, for the first mode and precision, a per-op table of the two
steps (torch.profiler, self time per step, sorted by the difference) and a per-quantizer table:
forward + backward of each quantizer alone, the fused ``FakeQuantize`` against the composite
(detach-trick) form it replaced. Targets on one H100 (ResNet-32, batch 128, 2-bit UniQ): <= 4.5
ms/step and UniQ/FP <= 1.15; on a CPU UniQ/FP <= 1.7.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from oracle import reference_quantize  # noqa: E402 - the tests' oracle, timed against FakeQuantize

from uniq import functional as QF
from uniq.deploy.latency import cpu_name
from uniq.modules import quantizers
from uniq.repro.doctor import time_pair


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def op_table(sessions: dict, device: str, steps: int = 3, top: int = 25) -> list[dict]:
    """Self time per op and step (ms) of both steps under torch.profiler, largest difference
    first: where the quantized step's extra time goes."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    per_op: dict[str, dict] = {}
    for name, (_, step) in sessions.items():
        with profile(activities=acts) as prof:
            for _ in range(steps):
                step()
            _sync(device)
        for e in prof.key_averages():
            cpu = e.self_cpu_time_total / steps / 1e3
            dev = getattr(e, "self_device_time_total", 0.0) / steps / 1e3
            row = per_op.setdefault(e.key, {"op": e.key})
            row[f"{name}_ms"] = dev if device.startswith("cuda") else cpu
            row[f"{name}_calls"] = e.count // steps
    rows = list(per_op.values())
    for r in rows:
        r["delta_ms"] = r.get("uniq_ms", 0.0) - r.get("fp_ms", 0.0)
    return sorted(rows, key=lambda r: -r["delta_ms"])[:top]


def _bounds(q) -> tuple[float, float, float]:
    if q.method == "lsq":
        qn, qp = QF.lsq_range(q.bits, q.signed)
        return -qn, qp, 0.0
    top = 2**q.bits - 1
    return (0, top, top / 2) if q.signed else (0, top, 0.0)


def quantizer_table(model: torch.nn.Module, sample: torch.Tensor, repeats: int = 5) -> list[dict]:
    """Forward + backward of every quantizer alone on an input of the shape it sees in the
    step: the fused ``FakeQuantize`` and the composite form (``reference_quantize``), median ms."""
    shapes: dict[str, tuple] = {}

    def record(name):
        def hook(module, args):
            shapes.setdefault(name, tuple(args[0].shape))  # returns None: args unchanged
        return hook

    hooks = [q.register_forward_pre_hook(record(n)) for n, q in quantizers(model)]
    with torch.no_grad():
        model(sample)
    for h in hooks:
        h.remove()
    rows = []
    for name, q in quantizers(model):
        lo, hi, offset = _bounds(q)
        x0 = torch.randn(shapes[name], device=sample.device) * q.step.detach().mean() * hi
        g = torch.randn_like(x0)
        row = {"quantizer": name, "shape": list(shapes[name])}
        for label, fn in (("fused_ms", QF.FakeQuantize.apply),
                          ("composite_ms", reference_quantize)):
            ts = []
            for _ in range(repeats):
                x = x0.clone().requires_grad_(True)
                s = q.step.detach().clone().requires_grad_(True)
                _sync(str(sample.device))
                t0 = time.perf_counter()
                fn(x, s, lo, hi, offset, 0.5).backward(g)
                _sync(str(sample.device))
                ts.append((time.perf_counter() - t0) * 1e3)
            row[label] = statistics.median(ts)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--modes", default="eager", help="comma list of eager, default, "
                   "max-autotune, reduce-overhead (torch.compile modes)")
    p.add_argument("--warmup", type=int, default=None, help="default: 3 eager, 30 compiled")
    p.add_argument("--steps", type=int, default=None, help="timed steps of each kind "
                   "(default: 12 on CPU, 200 on CUDA)")
    p.add_argument("--precisions", default="fp32", help="comma list of fp32, tf32, bf16")
    p.add_argument("--train-size", type=int, default=2_560)
    p.add_argument("--profile", action="store_true", help="also print where the time goes "
                   "(per-op and per-quantizer tables) for the first mode and precision")
    p.add_argument("--out", default="", help="also write the results as JSON to this file")
    a = p.parse_args()
    cuda = a.device.startswith("cuda")
    steps = a.steps or (200 if cuda else 12)
    env = {"device": a.device, "gpu": torch.cuda.get_device_name() if cuda else "",
           "cpu": cpu_name(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "depth": a.depth,
           "batch": a.batch_size, "bits": a.bits}
    print(" ".join(f"{k}={v}" for k, v in env.items() if v != ""))
    print(f"{'mode':<16}{'precision':>10}{'fp ms/step':>12}{'uniq ms/step':>14}{'uniq/fp':>9}")
    rows, profile = [], {}
    with QF.value_checks(False):  # as uniq.repro.train.fit trains
        for mode in a.modes.split(","):
            for precision in a.precisions.split(","):
                warmup = a.warmup or (3 if mode == "eager" else 30)
                common = dict(dataset="synthetic", synthetic_train=a.train_size,
                              synthetic_test=500, depth=a.depth, batch_size=a.batch_size,
                              device=a.device, compile="none" if mode == "eager" else mode,
                              dynamics_per_epoch=0, precision=precision, calib_batches=2,
                              runs_dir="/tmp/uniq-benchmark-runs")
                r = time_pair(common, a.bits, warmup, steps)
                sessions = r.pop("sessions")
                rows.append({"mode": mode, "precision": precision, **r})
                print(f"{mode:<16}{precision:>10}{r['fp_ms']:>12.2f}{r['uniq_ms']:>14.2f}"
                      f"{r['ratio']:>9.2f}", flush=True)
                if a.profile and not profile:
                    profile = {"mode": mode, "precision": precision,
                               "ops": op_table(sessions, a.device)}
                    model = sessions["uniq"][0].model
                    sample = next(iter(sessions["uniq"][0].data.train))[0]
                    profile["quantizers"] = quantizer_table(model, sample)
    if profile:
        _print_profile(profile)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"environment": env, "rows": rows,
                                           "profile": profile}, indent=2) + "\n")
        print(f"wrote {a.out}")


def _print_profile(profile: dict, top: int = 12) -> None:
    print(f"\nwhere the time goes ({profile['mode']}, {profile['precision']}): self ms per step")
    print(f"{'op':<44}{'fp':>9}{'uniq':>9}{'delta':>9}{'uniq calls':>11}")
    for r in profile["ops"]:
        print(f"{r['op'][:43]:<44}{r.get('fp_ms', 0):>9.1f}{r.get('uniq_ms', 0):>9.1f}"
              f"{r['delta_ms']:>9.1f}{r.get('uniq_calls', 0):>11}")
    qs = profile["quantizers"]
    print("\nquantizer by quantizer: forward + backward alone, ms (fused vs composite form); "
          f"the {min(top, len(qs))} slowest of {len(qs)} (all of them in --out)")
    print(f"{'quantizer':<40}{'input':>20}{'fused':>9}{'composite':>11}")
    for r in sorted(qs, key=lambda r: -r["composite_ms"])[:top]:
        shape = "x".join(map(str, r["shape"]))
        print(f"{r['quantizer'][:39]:<40}{shape:>20}{r['fused_ms']:>9.2f}"
              f"{r['composite_ms']:>11.2f}")
    print(f"{'all quantizers':<60}{sum(r['fused_ms'] for r in qs):>9.1f}"
          f"{sum(r['composite_ms'] for r in qs):>11.1f}")


if __name__ == "__main__":
    main()
