"""``python -m uniq doctor``: a preflight that proves a machine before a long run.

In a few minutes it checks what a GPU-days run depends on and no test on a CPU machine can:
versions, devices and free memory; the TF32 switches each ``--precision`` sets; a short training
of full precision and 2-bit UniQ per precision, eager and compiled (CUDA graphs on a GPU), with
ms per step and the UniQ/FP ratio; that the profile's batch fits in GPU memory; with two or
more GPUs a 2-process NCCL run against one process; and loader throughput (the device-resident
CIFAR loader, ImageNet JPEGs decoded on the CPU and with ``torchvision.io.decode_jpeg`` on the
GPU). It prints one table and writes ``doctor.json``; every line says pass, warn, fail or
skipped, with a fix hint. The exit code is 1 when a check failed, else 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..functional import value_checks
from ..modules import quantizers
from . import data as D
from . import distributed
from .config import PRECISIONS, CifarConfig, ImageNetConfig, as_flags
from .runs import Run
from .study import get_profile
from .tasks import imagenet_data, make_model
from .train import fit, prepare, set_precision, train_step

GROUPS = ("versions", "devices", "tf32", "training", "memory", "ddp", "loaders")
TARGET_RATIO = {"cpu": 1.7, "cuda": 1.15}  # UniQ/FP step, eager fp32: the targets of the preflight
TARGET_IMAGENET_IMAGES_S = 2500  # per GPU, ResNet-18 2-bit, decoding included


@dataclasses.dataclass
class Check:
    """One line of the table: ``status`` is pass, warn, fail or skipped."""

    group: str
    name: str
    status: str
    value: str = ""
    hint: str = ""
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Options:
    device: str = "auto"
    quick: bool = False
    profile: str = "paper"
    precisions: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()
    steps: int = 0
    only: tuple[str, ...] = GROUPS
    budget_s: float = 300.0
    work_dir: str = ""
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def out_of_time(self) -> bool:
        return time.perf_counter() - self.started > self.budget_s

    def resolved(self) -> Options:
        cuda = distributed.resolve_device(self.device).type == "cuda"
        precisions = self.precisions or (("fp32", "bf16") if cuda else ("fp32",))
        # compiling takes most of the budget: CUDA graphs (which compile first) on a GPU, and
        # nothing on the CPU, where inductor compiles a ResNet for minutes (--modes asks for
        # it); the benchmark (benchmarks/gpu_preflight.sh) times every mode
        modes = self.modes or (("eager", "reduce-overhead") if cuda else ("eager",))
        for p in precisions:
            if p not in PRECISIONS:
                raise ValueError(f"unknown precision {p!r}; use {', '.join(PRECISIONS)}")
        for m in modes:
            if m not in ("eager", "default", "reduce-overhead", "max-autotune"):
                raise ValueError(f"unknown mode {m!r}; use eager, default, reduce-overhead "
                                 "or max-autotune")
        for g in self.only:
            if g not in GROUPS:
                raise ValueError(f"unknown check group {g!r}; use {', '.join(GROUPS)}")
        steps = self.steps or (2 if self.quick else 20 if cuda else 5)
        return dataclasses.replace(self, precisions=tuple(precisions), modes=tuple(modes),
                                   steps=steps)


# --- timing (shared with benchmarks/train_step.py) ------------------------------------------


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def step_function(cfg: CifarConfig) -> tuple[Any, Callable[[], torch.Tensor]]:
    """The engine's session for ``cfg`` and a function that takes one training step on the
    next batch of its loader (the data path included); it returns the summed loss."""
    cfg = cfg.resolved()
    s = prepare(cfg, distributed.init(cfg.device))

    def batches():
        epoch = 0
        while True:
            s.data.train.set_epoch(epoch)
            yield from s.data.train
            epoch += 1

    stream = batches()

    def step() -> torch.Tensor:
        x, y = next(stream)
        return train_step(s.net, s.optimizer, x, y, cfg.precision)[0]

    return s, step


def time_pair(common: dict, bits: int, warmup: int, steps: int) -> dict[str, Any]:
    """Median ms per step of full precision and of ``bits``-bit UniQ (the same config
    otherwise), timed alternately one step each so that load from other processes hits both
    alike, as training runs (value checks off). ``sessions`` holds both for profiling."""
    device = common.get("device", "cpu")
    with value_checks(False):
        sessions = {"fp": step_function(CifarConfig(**common)),
                    "uniq": step_function(CifarConfig(bits=bits, **common))}
        times: dict[str, list[float]] = {"fp": [], "uniq": []}
        losses = []
        for _, step in sessions.values():
            for _ in range(warmup):
                step()
        _sync(device)
        for i in range(steps):
            for name in ("fp", "uniq") if i % 2 == 0 else ("uniq", "fp"):
                t0 = time.perf_counter()
                loss = sessions[name][1]()
                _sync(device)
                times[name].append((time.perf_counter() - t0) * 1e3)
                losses.append(loss)
        finite = bool(torch.isfinite(torch.stack(losses)).all())  # one sync, after timing
    fp, q = statistics.median(times["fp"]), statistics.median(times["uniq"])
    return {"fp_ms": fp, "uniq_ms": q, "ratio": q / fp, "steps": steps, "warmup": warmup,
            "finite": finite, "sessions": sessions}


# --- the checks ----------------------------------------------------------------------------


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:  # the CUDA driver API version, e.g. 12040 -> 12.4
        v = torch._C._cuda_getDriverVersion()
        return f"CUDA driver API {v // 1000}.{v % 1000 // 10}"
    except (AttributeError, RuntimeError):
        return "unknown"


def check_versions(o: Options, cuda: bool) -> list[Check]:
    v = {"python": platform.python_version(), "torch": torch.__version__,
         "cuda": torch.version.cuda or "", "cudnn": "", "driver": ""}
    rows = [Check("versions", "python, torch", "pass", f"Python {v['python']}, torch "
                  f"{v['torch']}", data=dict(v))]
    if not cuda:
        built = f"torch built with CUDA {v['cuda']}" if v["cuda"] else "a CPU-only torch build"
        rows.append(Check("versions", "CUDA, cuDNN, driver", "skipped", f"no CUDA ({built})",
                          "on a GPU machine: install the CUDA build of torch from "
                          "requirements.lock and check nvidia-smi"))
        return rows
    v["cudnn"] = str(torch.backends.cudnn.version())
    v["driver"] = _driver_version()
    ok = torch.backends.cudnn.is_available()
    rows.append(Check("versions", "CUDA, cuDNN, driver", "pass" if ok else "fail",
                      f"CUDA {v['cuda']}, cuDNN {v['cudnn']}, driver {v['driver']}",
                      "" if ok else "cuDNN is not available: reinstall the CUDA build of torch",
                      data=dict(v)))
    return rows


def check_devices(o: Options, cuda: bool) -> list[Check]:
    if not cuda:
        return [Check("devices", "GPUs, free memory", "skipped", "no CUDA",
                      f"training runs on the CPU ({os.cpu_count()} cores): fine for smoke, "
                      "far too slow for the quick and paper profiles",
                      data={"cpu_count": os.cpu_count()})]
    rows = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        ok = free > 0.5 * total
        rows.append(Check("devices", f"cuda:{i}", "pass" if ok else "warn",
                          f"{p.name}, sm {p.major}.{p.minor}, {free / 2**30:.1f} of "
                          f"{total / 2**30:.1f} GiB free",
                          "" if ok else "another process holds GPU memory: see nvidia-smi",
                          data={"name": p.name, "capability": [p.major, p.minor],
                                "free_bytes": free, "total_bytes": total}))
    return rows


EXPECTED_TF32 = {"fp32": False, "tf32": True, "bf16": False, "fp64": False}


def check_tf32(o: Options, cuda: bool) -> list[Check]:
    """The switches ``uniq.repro.train.set_precision`` sets, for every precision."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    rows = []
    try:
        for p in PRECISIONS:
            set_precision(p)
            got = {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                   "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                   "float32_matmul_precision": torch.get_float32_matmul_precision()}
            ok = got["cudnn_allow_tf32"] == got["matmul_allow_tf32"] == EXPECTED_TF32[p]
            rows.append(Check("tf32", f"--precision {p}", "pass" if ok else "fail",
                              f"TF32 convolutions {'on' if got['cudnn_allow_tf32'] else 'off'},"
                              f" matmuls {'on' if got['matmul_allow_tf32'] else 'off'}",
                              "" if ok else "uniq.repro.train.set_precision does not set what the "
                              "README documents: report it", data=got))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    return rows


def _training_config(o: Options, device: str) -> dict:

    prof = get_profile(o.profile)
    depth, batch = (8, 32) if o.quick else (prof.depth, prof.batch_size)
    return dict(dataset="synthetic", synthetic_train=batch * (4 if o.quick else 16),
                synthetic_test=64, depth=depth, batch_size=batch, device=device,
                dynamics_per_epoch=0, calib_batches=1,
                runs_dir=str(Path(o.work_dir) / "runs"))


def check_training(o: Options, cuda: bool) -> list[Check]:
    device = "cuda" if cuda else "cpu"
    base = _training_config(o, device)
    rows = []
    if not cuda and not {"default", "reduce-overhead", "max-autotune"} & set(o.modes):
        rows.append(Check("training", "compiled (torch.compile)", "skipped", "on the CPU unless "
                          "asked: compiling a ResNet takes minutes", "--modes eager,default"))
    for mode in o.modes:
        if mode == "reduce-overhead" and not cuda:
            rows.append(Check("training", f"{mode} (CUDA graphs)", "skipped", "no CUDA"))
            continue
        for p in o.precisions:
            name = f"{mode} {p}: FP vs 2-bit UniQ"
            if p == "tf32" and not cuda:
                rows.append(Check("training", name, "skipped", "no CUDA (TF32 is CUDA-only)"))
                continue
            if o.out_of_time():
                rows.append(Check("training", name, "skipped", f"time budget of "
                                  f"{o.budget_s:.0f} s spent", "rerun with --only training "
                                  f"--modes {mode} --precisions {p}"))
                continue
            warmup = 1 if o.quick else 3 if mode == "eager" else 10
            try:
                r = time_pair({**base, "precision": p,
                               "compile": "none" if mode == "eager" else mode}, 2, warmup,
                              o.steps)
            except Exception as err:  # a failure here is the finding: report it, go on
                rows.append(Check("training", name, "fail", _short(err),
                                  "eager works: train with --compile none" if mode != "eager"
                                  else "see the error; run the tests (make test)",
                                  data={"traceback": traceback.format_exc()[-4000:]}))
                continue
            r.pop("sessions")
            value = (f"FP {r['fp_ms']:.1f} ms, UniQ {r['uniq_ms']:.1f} ms per step: "
                     f"{r['ratio']:.2f}x (batch {base['batch_size']}, ResNet-{base['depth']})")
            status, hint = "pass", ""
            if not r["finite"]:
                status, hint = "fail", "a loss was not finite: check the precision and data"
            elif mode == "eager" and p == "fp32" and r["ratio"] > TARGET_RATIO[device]:
                status, hint = "warn", (f"UniQ/FP above the {TARGET_RATIO[device]}x target: "
                                        "profile with benchmarks/train_step.py --profile")
            rows.append(Check("training", name, status, value, hint,
                              data={"mode": mode, "precision": p, **r, **base}))
    return rows


def _step_memory(model_fn, batch: int, size: int, classes: int, precision: str) -> dict:
    """Peak GPU memory of one training step of ``model_fn()`` at ``batch``."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = model_fn().cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device="cuda").contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device="cuda")
    with value_checks(False):
        train_step(model, opt, x, y, precision)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    _, total = torch.cuda.mem_get_info()
    del model, opt, x, y
    torch.cuda.empty_cache()
    return {"peak_bytes": peak, "total_bytes": total}


def memory_cases(profile: str) -> list[tuple[str, Callable[[], Any], int, int, int]]:
    """(name, model builder, batch per GPU, image size, classes): the CIFAR profile's model and
    batch, and ImageNet ResNet-18 at its default batch, both 2-bit with steps set (memory only,
    no calibration pass)."""

    prof = get_profile(profile)
    cifar = CifarConfig(depth=prof.depth, bits=2, batch_size=prof.batch_size).resolved()
    inet = ImageNetConfig(bits=2, pretrained="none").resolved()

    def builder(cfg, classes):
        def build():
            m = make_model(cfg, classes)
            for _, q in quantizers(m):
                q.set_step(torch.full_like(q.step, 0.05))  # any positive step: memory only
            return m
        return build

    return [(f"CIFAR ResNet-{prof.depth} 2-bit, batch {prof.batch_size} ({profile})",
             builder(cifar, 100), prof.batch_size, 32, 100),
            (f"ImageNet {inet.arch} 2-bit, batch {inet.batch_size} per GPU at "
             f"{inet.image_size}px", builder(inet, 1000), inet.batch_size, inet.image_size,
             1000)]


def check_memory(o: Options, cuda: bool) -> list[Check]:
    if not cuda:
        return [Check("memory", "the profile's batch fits", "skipped", "no CUDA")]
    rows = []
    for name, build, batch, size, classes in memory_cases(o.profile):
        for p in o.precisions:
            try:
                m = _step_memory(build, batch, size, classes, p)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                rows.append(Check("memory", f"{name}, {p}", "fail", "out of memory",
                                  "use a smaller --batch-size per GPU (more GPUs keep the "
                                  "global batch), or bf16"))
                continue
            except Exception as err:
                rows.append(Check("memory", f"{name}, {p}", "fail", _short(err),
                                  "see the error", data={"traceback": traceback.format_exc()}))
                continue
            share = m["peak_bytes"] / m["total_bytes"]
            rows.append(Check("memory", f"{name}, {p}", "pass" if share < 0.9 else "warn",
                              f"peak {m['peak_bytes'] / 2**30:.2f} GiB of "
                              f"{m['total_bytes'] / 2**30:.1f} ({share:.0%})",
                              "" if share < 0.9 else "little headroom: a smaller batch per GPU",
                              data=m))
    return rows


def check_ddp(o: Options, cuda: bool) -> list[Check]:
    n = torch.cuda.device_count() if cuda else 0
    if n < 2:
        why = "no CUDA" if not cuda else f"needs 2 GPUs, {n} found"
        return [Check("ddp", "2-process NCCL step = 1 process", "skipped", why,
                      "the CPU (gloo) version runs in the test suite")]
    return [ddp_equivalence("cuda", Path(o.work_dir) / "ddp")]


def ddp_equivalence(device: str, runs: Path, port: int = 29531) -> Check:
    """Two processes under torchrun (NCCL on CUDA, gloo on the CPU), one step of the same
    global batch in float64, against one process: the weights agree as in
    tests/test_imagenet.py (8-bit inputs: a rounding tie may move a weight by ~1e-7)."""

    name = f"2-process {'NCCL' if device == 'cuda' else 'gloo'} step = 1 process"
    kw = dict(dataset="synthetic", synthetic_train=64, synthetic_test=32, depth=8,
              batch_size=64, calib_batches=1, fp_epochs=1, epochs=1, bits=8,
              precision="fp64", sync_bn=True, device=device, log_every=1000)
    args = as_flags(kw)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(port), "-m", "uniq", "train", *args,
           "--runs-dir", str(runs / "two")]
    env = {**os.environ, "UNIQ_PROGRESS": "none"}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if out.returncode != 0:
        last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"
        return Check("ddp", name, "fail", _short(last), "check NCCL (NCCL_DEBUG=INFO), the "
                     "GPUs' peer access and the firewall", data={"stderr": out.stderr[-4000:]})
    two = Run.load(CifarConfig(**kw, runs_dir=str(runs / "two")).run_dir())
    one = fit(CifarConfig(**kw, runs_dir=str(runs / "one")), quiet=True)
    a, b = two.state_dict(), one.state_dict()
    floats = [k for k in a if torch.is_tensor(a[k]) and a[k].is_floating_point()]
    diff = max(((a[k] - b[k]).abs().max().item() for k in floats), default=0.0)
    close = all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in floats)
    ok = two.result.get("ranks_identical") is True and close
    return Check("ddp", name, "pass" if ok else "fail",
                 f"max weight difference {diff:.1e}, ranks identical "
                 f"{two.result.get('ranks_identical')}, {time.perf_counter() - t0:.0f} s",
                 "" if ok else "DDP does not take the one-process step: report it with "
                 "doctor.json", data={"max_abs_diff": diff})


def _jpeg_folder(root: Path, n: int, size: tuple[int, int]) -> Path:
    """An ImageFolder of ``n`` generated JPEGs (2 classes), ImageNet-like in size."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in range(2):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n // 2 if split == "train" else 2):
                low = torch.rand(3, size[1] // 16, size[0] // 16, generator=g)
                img = torch.nn.functional.interpolate(low[None], (size[1], size[0]),
                                                      mode="bilinear")[0]
                img = (img * 200 + torch.rand(img.shape, generator=g) * 55).clamp(0, 255)
                Image.fromarray(img.permute(1, 2, 0).to(torch.uint8).numpy()).save(
                    d / f"img_{i}.JPEG", quality=90)
    return root


def check_loaders(o: Options, cuda: bool) -> list[Check]:

    device = torch.device("cuda" if cuda else "cpu")
    rows = []
    n = 2_048 if o.quick else 20_000
    data = D.synthetic_cifar(n, True, seed=0)
    loader = D.TensorLoader(data, 128, True, device)
    next(iter(loader))  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    count = sum(x.shape[0] for x, _ in loader)
    _sync(device)
    rate = count / (time.perf_counter() - t0)
    rows.append(Check("loaders", "CIFAR device-resident loader", "pass",
                      f"{rate:,.0f} images/s (batch 128, crop + flip on {device.type})",
                      data={"images_per_s": rate, "images": count}))

    images = 32 if o.quick else 512
    size = (160, 120) if o.quick else (500, 375)
    root = _jpeg_folder(Path(o.work_dir) / "jpeg", images, size)
    workers = 0 if o.quick else min(8, os.cpu_count() or 1)
    cfg = ImageNetConfig(data_dir=str(root), batch_size=16 if o.quick else 64,
                         image_size=224, workers=workers, device=device.type)
    t = imagenet_data(cfg, distributed.Dist(device=device)).train
    it = iter(t)
    next(it)
    _sync(device)
    t0 = time.perf_counter()
    count = sum(x.shape[0] for x, _ in it)
    _sync(device)
    rate = count / max(time.perf_counter() - t0, 1e-9)
    status, hint = "pass", ""
    if cuda and rate < TARGET_IMAGENET_IMAGES_S:
        status, hint = "warn", (f"below {TARGET_IMAGENET_IMAGES_S} images/s per GPU: more "
                                "--workers, faster storage, or GPU decoding")
    rows.append(Check("loaders", f"ImageNet JPEGs, CPU decode ({workers} workers)", status,
                      f"{rate:,.0f} images/s ({size[0]}x{size[1]} JPEGs, RandomResizedCrop "
                      "224)", hint, data={"images_per_s": rate, "workers": workers}))
    if not cuda:
        rows.append(Check("loaders", "ImageNet JPEGs, GPU decode (decode_jpeg)", "skipped",
                          "no CUDA"))
        return rows
    rows.append(tensor_decode(root, device))
    return rows


def tensor_decode(root: Path, device: torch.device) -> Check:
    """``torchvision.io.decode_jpeg`` on ``device`` (nvJPEG on a GPU), then crop and flip
    there: images per second of the JPEGs under ``root/train``."""
    import warnings

    from torchvision.transforms import v2

    files = sorted((root / "train").rglob("*.JPEG"))
    raw = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]
    crop = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()])
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its image codecs for torchcodec, which the lock does
            # not hold; decode_jpeg is still what it ships (and the issue asks about)
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import decode_jpeg

            decode_jpeg(raw[:2], device=device)
            _sync(device)
            t0 = time.perf_counter()
            for i in range(0, len(raw), 64):
                imgs = decode_jpeg(raw[i:i + 64], device=device)
                torch.stack([crop(im) for im in imgs])
            _sync(device)
    except Exception as err:
        return Check("loaders", "ImageNet JPEGs, GPU decode (decode_jpeg)", "fail", _short(err),
                     "torchvision's nvJPEG decoding is unavailable: keep CPU workers")
    rate = len(raw) / (time.perf_counter() - t0)
    return Check("loaders", "ImageNet JPEGs, GPU decode (decode_jpeg)", "pass",
                 f"{rate:,.0f} images/s (decode + crop + flip on {device.type}; the training "
                 "loader decodes on the CPU)", data={"images_per_s": rate})


CHECKS: dict[str, Callable[[Options, bool], list[Check]]] = {
    "versions": check_versions, "devices": check_devices, "tf32": check_tf32,
    "training": check_training, "memory": check_memory, "ddp": check_ddp,
    "loaders": check_loaders}


def _short(err: BaseException | str, width: int = 160) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= width else text[:width - 3] + "..."


def run_checks(o: Options, say: Callable[[str], None] = lambda s: None) -> list[Check]:
    """Every check group in ``o.only``, in order; groups left when ``o.budget_s`` is spent are
    reported as skipped."""
    o = o.resolved()
    cuda = distributed.resolve_device(o.device).type == "cuda"
    rows: list[Check] = []
    with tempfile.TemporaryDirectory(prefix="uniq-doctor-") as tmp:
        o = dataclasses.replace(o, work_dir=o.work_dir or tmp)
        for group in GROUPS:
            if group not in o.only:
                continue
            if o.out_of_time():
                rows.append(Check(group, group, "skipped", f"time budget of {o.budget_s:.0f} s "
                                  "spent", "rerun with --only " + group))
                continue
            say(f"doctor: {group} ...")
            g0 = time.perf_counter()
            try:
                got = CHECKS[group](o, cuda)
            except Exception as err:
                got = [Check(group, group, "fail", _short(err), "see doctor.json for the "
                             "traceback", data={"traceback": traceback.format_exc()[-4000:]})]
            for c in got:
                c.data.setdefault("seconds", round(time.perf_counter() - g0, 2))
            rows += got
    return rows


def table(rows: list[Check]) -> str:
    """The checks as one fixed-width table (hints on the line below a check that has one)."""
    w_name = max([len(f"{r.group}: {r.name}") for r in rows] + [5])
    lines = [f"{'check':<{w_name}}  {'status':<8} result", "-" * (w_name + 60)]
    for r in rows:
        lines.append(f"{r.group + ': ' + r.name:<{w_name}}  {r.status:<8} {r.value}")
        if r.hint:
            lines.append(f"{'':<{w_name}}  {'':<8} fix: {r.hint}")
    counts = {s: sum(r.status == s for r in rows) for s in ("pass", "warn", "fail", "skipped")}
    lines.append(", ".join(f"{v} {k}" for k, v in counts.items()))
    return "\n".join(lines)


def report(rows: list[Check], o: Options, elapsed: float) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {"machine": {"host": platform.node(), "cpu_count": os.cpu_count(),
                        "gpu": torch.cuda.get_device_name() if cuda else "",
                        "gpus": torch.cuda.device_count() if cuda else 0},
            "options": {k: v for k, v in dataclasses.asdict(o).items()
                        if k not in ("work_dir", "started")},
            "elapsed_s": round(elapsed, 1),
            "summary": {s: sum(r.status == s for r in rows)
                        for s in ("pass", "warn", "fail", "skipped")},
            "checks": [dataclasses.asdict(r) for r in rows]}


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def main(o: Options, out: str | Path = "doctor.json") -> int:
    """Run the checks, print the table, write ``out``; 1 if a check failed, else 0."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"-o {out} is a folder; give a file name, e.g. {out / 'doctor.json'}")
    t0 = time.perf_counter()
    rows = run_checks(o, say=lambda s: print(s, file=sys.stderr, flush=True))
    print(table(rows))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(_json_safe(report(rows, o.resolved(), time.perf_counter() - t0)),
                              indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 1 if any(r.status == "fail" for r in rows) else 0
