"""ImageNet as an engine task (Tables 2 and 3): pytorchcv models, ImageFolder data.

    python -m uniq imagenet --arch preresnet18 --bits 4 --data-dir /data/imagenet
    torchrun --nproc-per-node 8 -m uniq imagenet --arch preresnet18 --bits 2 --data-dir ...
    torchrun --nproc-per-node 8 -m uniq imagenet --arch preresnet18 --bits 1 --data-dir ...

The recipe is the paper's (Section 5.1): kernel-wise weight and layer-wise activation steps
(MobileNetV2: layer-wise both), global batch 256, SGD lr 0.01 cosine for multi-bit and the Adam
warm-up recipe for 1 bit, which starts from the 2-bit run of the same settings (trained first if
missing; weights only, steps re-initialised at 1 bit), per-bit weight decay (1e-4, 0.5e-4,
0.25e-4, 0 for 4/3/2/1 bits) and none on steps, 1000 calibration batches, 90 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch import nn

from .convert import conversion_report, quantize_model
from .distributed import Dist
from .engine import FULL_PRECISION, RunConfig, TaskData, option, register
from .models import IMAGENET_MODELS, adaptive_pooling, imagenet_model
from .paths import resolve_path
from .recipes import IMAGENET_WEIGHT_DECAY, Recipe

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAPER_NAMES = {"preresnet18": "resnet18", "preresnet34": "resnet34",
               "mobilenetv2_w1": "mobilenetv2"}


@register
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
        weights are named by pytorchcv's own file name (which carries their checksum)."""
        out = super().hashed()
        if self.pretrained in ("none", "pytorchcv"):
            out["pretrained"] = self.pretrained
        else:
            out["pretrained"] = pretrained_digest(self.arch, self.pretrained)
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

    def make_model(self, num_classes: int, example: torch.Tensor,
                   pretrained: bool = True) -> nn.Module:
        """The pretrained (or structure-only) model, converted under the paper's policy."""
        pre = {"pytorchcv": True, "none": False}.get(self.pretrained, self.pretrained)
        if isinstance(pre, str):
            pre = resolve_path(pre)
        model = imagenet_model(self.arch, pre if pretrained else False)
        if num_classes != 1000:  # a smaller label set (tests, subsets of ImageNet): a new head
            last = model.output
            model.output = (nn.Linear(last.in_features, num_classes)
                            if isinstance(last, nn.Linear)
                            else nn.Conv2d(last.in_channels, num_classes, 1))
        model = adaptive_pooling(model)
        if self.bits != FULL_PRECISION:
            model = quantize_model(model, self.bits, self.method, self.weight_granularity,
                                   init=self.init, grad_scale=self.grad_scale, inplace=True,
                                   example_input=example,
                                   signed_inputs=self.signed_inputs, **self.policy())
        return model

    def make_data(self, d: Dist) -> TaskData:
        return imagenet_data(self, d)


# --- start weights --------------------------------------------------------------------------


_DIGESTS: dict[tuple, str] = {}


def pretrained_file(arch: str, pretrained: str) -> Path:
    """The weight file ``--pretrained`` names (a file, or pytorchcv's cache dir)."""
    from .models import pytorchcv_filename

    path = resolve_path(pretrained)
    if path.is_dir():
        found = sorted(path.glob(f"{arch}-*.pth"))
        if not found:
            raise FileNotFoundError(
                f"--pretrained {path}: no pytorchcv weights for {arch} in this folder; put "
                f"{pytorchcv_filename(arch)} there or pass a state-dict file")
        path = found[-1]
    if not path.is_file():
        raise FileNotFoundError(
            f"--pretrained {path}: no such file; pass a state dict saved with "
            "torch.save(model.state_dict(), FILE), pytorchcv's weights, or none/pytorchcv")
    return path


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
    from .models import imagenet_model

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
    own = {k: tuple(v.shape) for k, v in imagenet_model(arch, False).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    shapes = sorted(k for k in set(own) & set(theirs) if own[k] != theirs[k])
    if missing or unexpected or shapes:
        what = (f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}"
                if unexpected else f"other shapes for {shapes[:2]}")
        raise ValueError(f"--pretrained {path} is not a state dict of {arch} ({what}); {fix}")


# --- data -----------------------------------------------------------------------------------


def transforms(cfg: ImageNetConfig, train: bool):
    from torchvision.transforms import v2

    size = cfg.image_size
    resize = int(round(size * 256 / 224))
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train and cfg.augment:
        return v2.Compose([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), *tail])
    return v2.Compose([v2.Resize(resize), v2.CenterCrop(size), *tail])


def load_image(path: str) -> Image.Image:
    """PIL loading that names the file when an image is truncated or not an image."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except OSError as err:
        raise ValueError(f"cannot read image {path} ({err}); delete or replace the file") \
            from None


def image_folder(root: Path, split: str, cfg: ImageNetConfig, train: bool):
    from torchvision.datasets import ImageFolder

    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"ImageNet {split}/ folder not found at {folder}; --data-dir must point to a folder "
            "with train/ and val/, each holding one sub-folder of images per class "
            "(torchvision ImageFolder layout)")
    try:
        return ImageFolder(str(folder), transform=transforms(cfg, train), loader=load_image)
    except (FileNotFoundError, RuntimeError) as err:
        raise FileNotFoundError(f"{folder} is not a valid ImageFolder: {err}") from err


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation shard of one rank: indices rank, rank+world, ... (no padding, exact)."""

    def __init__(self, n: int, d: Dist) -> None:
        self.indices = list(range(d.rank, n, d.world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class DeviceLoader:
    """A DataLoader whose batches arrive on the training device; ``set_epoch`` reseeds its
    DistributedSampler."""

    def __init__(self, loader, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def imagenet_data(cfg: ImageNetConfig, d: Dist) -> TaskData:
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    root = resolve_path(cfg.data_dir)
    train_ds = image_folder(root, "train", cfg, True)
    val_ds = image_folder(root, "val", cfg, False)
    if train_ds.classes != val_ds.classes:
        raise ValueError(f"train/ and val/ under {root} have different class folders")
    if cfg.batch_size % d.world:
        raise ValueError(f"global batch {cfg.batch_size} is not divisible by {d.world} processes")
    per_rank = cfg.batch_size // d.world
    sampler = DistributedSampler(train_ds, d.world, d.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    common = dict(num_workers=cfg.workers, pin_memory=d.device.type == "cuda",
                  persistent_workers=cfg.workers > 0)
    train = DataLoader(train_ds, per_rank, sampler=sampler, drop_last=True, **common)
    val = DataLoader(val_ds, per_rank, sampler=ShardSampler(len(val_ds), d), **common)
    if len(train) == 0:
        raise ValueError(f"{root / 'train'} has fewer images than one batch per process")

    def calibration():
        # Global batches in a seeded order, identical on every rank.
        g = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(train_ds, cfg.batch_size, generator=g, num_workers=cfg.workers,
                            sampler=RandomSampler(train_ds, generator=g))
        return ((x.to(d.device), y) for x, y in loader)

    info = {"dataset": "imagenet", "num_classes": len(train_ds.classes),
            "train_size": len(train_ds), "eval_size": len(val_ds)}
    return TaskData(DeviceLoader(train, d.device), DeviceLoader(val, d.device), calibration,
                    info)


# --- the conversion policy, offline -----------------------------------------------------------


def policy_summary(bits_list=(4, 3, 2, 1)) -> pd.DataFrame:
    """For each architecture and bit width: how many layers get which weight bits."""
    rows = []
    for arch in IMAGENET_MODELS:
        base = adaptive_pooling(imagenet_model(arch, False))
        granularity = ImageNetConfig(arch=arch).default_granularity()
        for bits in bits_list:
            r = conversion_report(quantize_model(base, bits, "uniq", granularity,
                                                 example_input=torch.randn(1, 3, 64, 64)))
            rows.append({"arch": arch, "bits": bits, "layers": len(r),
                         "at_bits": int((r.weight_bits == bits).sum()),
                         "at_8": int(((r.weight_bits == 8) & (bits != 8)).sum()),
                         "full_precision": int((r.weight_bits == 32).sum()),
                         "signed_inputs": int(r.signed_input.fillna(False).sum()),
                         "granularity": granularity})
    return pd.DataFrame(rows)


# --- offline demonstration --------------------------------------------------------------------


def generated_folder(root: Path, classes: int = 4, train: int = 8, val: int = 4,
                     size: int = 40, seed: int = 0) -> Path:
    """A small ImageFolder of generated PNGs (class-dependent brightness), in ImageNet's layout,
    for running the real loaders offline. Written once; reused if present."""
    root = Path(root)
    if (root / "val").is_dir():
        return root
    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                px = (torch.rand(size, size, 3, generator=g) * 60 + c * 50).to(torch.uint8)
                Image.fromarray(px.numpy()).save(d / f"img_{i}.png")
    return root


def demo_config(arch: str, bits: int, data_dir: Path, runs_dir: Path, **kw) -> ImageNetConfig:
    """A few steps of the real ImageNet path on generated images (no accuracy is claimed)."""
    return ImageNetConfig(**{"arch": arch, "bits": bits, "data_dir": str(data_dir),
                             "pretrained": "none", "epochs": 1, "batch_size": 8,
                             "calib_batches": 1, "image_size": 32, "augment": False,
                             "workers": 0, "runs_dir": str(runs_dir), "log_every": 1, **kw})
