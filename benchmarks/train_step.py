"""Milliseconds per training step, data path included: full precision vs 2-bit UniQ.

    python benchmarks/train_step.py                      # CPU, eager (and small)
    python benchmarks/train_step.py --device cuda --modes eager,default,reduce-overhead

Each measurement builds the real engine objects (``uniq.engine.prepare``: device-resident
loader with on-device crop/flip, the model, calibration, fused optimizer and channels_last on
CUDA), runs warm-up steps (compilation happens there), then times ``--steps`` steps including the
loader, and prints ms/step and the UniQ/FP ratio per mode and precision (fp32 is the paper's and
the default; bf16 autocast is the opt-in speed option). Targets on one H100 (ResNet-32,
batch 128, 2-bit UniQ): <= 4.5 ms/step and UniQ/FP <= 1.15.
"""

from __future__ import annotations

import argparse
import time

import torch

from uniq import distributed
from uniq.cifar import CifarConfig
from uniq.engine import prepare, train_step


def time_steps(cfg: CifarConfig, warmup: int, steps: int) -> float:
    cfg = cfg.resolved()
    s = prepare(cfg, distributed.init(cfg.device))
    sync = torch.cuda.synchronize if s.d.device.type == "cuda" else (lambda: None)

    def batches():
        epoch = 0
        while True:
            s.data.train.set_epoch(epoch)
            yield from s.data.train
            epoch += 1

    stream = batches()
    for _ in range(warmup):
        x, y = next(stream)
        train_step(s.net, s.optimizer, x, y, cfg.precision)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = next(stream)  # the data path is part of the measurement
        train_step(s.net, s.optimizer, x, y, cfg.precision)
    sync()
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--modes", default="eager", help="comma list of eager, default, "
                   "max-autotune, reduce-overhead (torch.compile modes)")
    p.add_argument("--warmup", type=int, default=None, help="default: 5 eager, 30 compiled")
    p.add_argument("--steps", type=int, default=None, help="default: 20 on CPU, 200 on CUDA")
    p.add_argument("--precisions", default="fp32", help="comma list of fp32, bf16")
    p.add_argument("--train-size", type=int, default=10_000)
    a = p.parse_args()
    steps = a.steps or (200 if a.device.startswith("cuda") else 20)
    print(f"device={a.device} "
          f"{torch.cuda.get_device_name() if a.device.startswith('cuda') else ''} "
          f"torch={torch.__version__} depth={a.depth} batch={a.batch_size} bits={a.bits}")
    print(f"{'mode':<16}{'precision':>10}{'fp ms/step':>12}{'uniq ms/step':>14}{'uniq/fp':>9}")
    for mode in a.modes.split(","):
        for precision in a.precisions.split(","):
            warmup = a.warmup or (5 if mode == "eager" else 30)
            common = dict(dataset="synthetic", synthetic_train=a.train_size,
                          synthetic_test=500, depth=a.depth, batch_size=a.batch_size,
                          device=a.device, compile="none" if mode == "eager" else mode,
                          dynamics_per_epoch=0, precision=precision, calib_batches=2,
                          runs_dir="/tmp/uniq-benchmark-runs")
            fp = time_steps(CifarConfig(**common), warmup, steps)
            q = time_steps(CifarConfig(bits=a.bits, **common), warmup, steps)
            print(f"{mode:<16}{precision:>10}{fp:>12.2f}{q:>14.2f}{q / fp:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
