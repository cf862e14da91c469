"""CIFAR-100 (real, via torchvision) and an offline synthetic stand-in, with two input pipelines.

* ``TensorLoader``: the whole uint8 dataset lives on the training device; shuffling, random
  crop (4-pixel zero padding) and horizontal flip run there as batched tensor ops, with no
  DataLoader workers. This is the fast path (and on the CPU it is still the simplest).
* ``dataloader``: torchvision transforms in a ``torch.utils.data.DataLoader``, the portable path.

Both draw crop offsets uniformly from 0..8 in each axis and flip with probability 1/2, so they
give the same augmentation distribution (a test checks it).
"""

from __future__ import annotations

import gzip
import importlib
import math
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.utils import calculate_md5, extract_archive

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
PAD = 4


@dataclass
class ImageData:
    """Images as uint8 ``(N, 3, H, W)``, labels as int64 ``(N,)``, and what they are."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    num_classes: int
    mean: tuple[float, ...] = CIFAR100_MEAN
    std: tuple[float, ...] = CIFAR100_STD

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, fraction: float, seed: int = 0) -> ImageData:
        """A class-balanced-in-expectation random fraction of the data (for quick runs)."""
        if not 0 < fraction <= 1:
            raise ValueError(f"data fraction must be in (0, 1], got {fraction}")
        if fraction == 1:
            return self
        n = max(1, int(round(len(self) * fraction)))
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return ImageData(self.images[idx], self.labels[idx], f"{self.name}[{fraction:g}]",
                         self.num_classes, self.mean, self.std)


CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
# MD5s of the official release, as torchvision's CIFAR100 dataset class lists them.
CIFAR100_MD5 = {
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}


class DataChecksumError(ValueError):
    """A data file whose checksum is not the official one (corrupt, incomplete or altered)."""


class UnsafeDataFileError(ValueError):
    """A pickle that asks for something a CIFAR-100 file never contains (code, other types)."""


def _numpy_attribute(modules: tuple[str, ...], name: str):
    """``name`` from the first of ``modules`` that imports (numpy 2 moved ``core`` to ``_core``);
    the new location first, so that numpy 2 never touches its deprecated ``numpy.core`` alias."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {name} in {' or '.join(modules)}")


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it (bytes written as latin-1 text), and only
    that: no other codec is needed to rebuild a CIFAR-100 file."""
    if encoding != "latin1" or not isinstance(text, str):
        raise UnsafeDataFileError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not "
                                  f"how a pickle stores bytes")
    return text.encode("latin1")


# Every global a CIFAR-100 python pickle needs: the release (Python 2, protocol 2) names
# numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype; the same dict pickled by
# Python 3 names numpy._core.multiarray._reconstruct (numpy 2), plus _codecs.encode(.., "latin1")
# for raw bytes with protocol 2, or numpy's _frombuffer with protocol 5 (Python 3.14's default).
# Each only rebuilds an ndarray, a dtype or bytes; everything else in the files is a dict, list,
# str, bytes or int (pickle opcodes, not globals).
_RECONSTRUCT = ("numpy._core.multiarray", "numpy.core.multiarray")
_FROMBUFFER = ("numpy._core.numeric", "numpy.core.numeric")
_ALLOWED_GLOBALS = {
    **{(module, "_reconstruct"): lambda: _numpy_attribute(_RECONSTRUCT, "_reconstruct")
       for module in _RECONSTRUCT},
    **{(module, "_frombuffer"): lambda: _numpy_attribute(_FROMBUFFER, "_frombuffer")
       for module in _FROMBUFFER},
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only what CIFAR-100 files hold: dicts, lists, str, bytes, int
    and numpy arrays. Any other global (``os.system``, ``builtins.eval``, a class...) stops the
    load before it is imported or called."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str):
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise UnsafeDataFileError(
                f"{self.path}: refusing to load the global '{module}.{name}'; a CIFAR-100 file "
                f"holds only dicts, lists, strings, integers and numpy arrays, so this file was "
                f"altered or is not CIFAR-100. Nothing from it was run. Delete it and get the "
                f"official release again ({CIFAR100_URL})")
        return resolve()

    def persistent_load(self, pid):
        raise UnsafeDataFileError(f"{self.path}: persistent ids are not part of a CIFAR-100 "
                                  f"file; delete it and get the official release again")


def load_cifar_pickle(path: str | Path):
    """Unpickle a CIFAR python-release file with :class:`_CifarUnpickler` (no code runs)."""
    path = Path(path)
    with path.open("rb") as f:
        try:
            return _CifarUnpickler(f, path).load()
        except UnsafeDataFileError:
            raise
        except Exception as err:  # truncated or garbled: pickle raises many kinds
            raise ValueError(f"{path} is not a readable CIFAR-100 python-pickle file "
                             f"({type(err).__name__}: {err}); delete it and get the official "
                             f"release again ({CIFAR100_URL})") from err


def verify_md5(path: str | Path, expected: str, remedy: str) -> None:
    """Raise :class:`DataChecksumError` naming the file, both checksums and ``remedy``."""
    actual = calculate_md5(path)
    if actual != expected:
        raise DataChecksumError(
            f"{path}: MD5 {actual} is not the official CIFAR-100 checksum {expected}; the file "
            f"is corrupt, incomplete or altered. {remedy} If you made this file yourself, "
            f"turn the check off (verify_checksums=False; --no-verify-data on the command line)")


def _extract(archive: Path, root: Path) -> None:
    """torchvision's ``extract_archive``, once every member is known to be a plain file or
    folder inside ``root``: torchvision extracts with no tar filter before Python 3.14."""
    try:
        with tarfile.open(archive) as tar:  # reading every header also finds a corrupt archive
            unsafe = [m.name for m in tar if not (m.isfile() or m.isdir())
                      or root.resolve() not in (root / m.name).resolve().parents]
        if unsafe:
            raise UnsafeDataFileError(f"{archive}: member {unsafe[0]!r} is not a plain file "
                                      "inside the archive's folder; nothing was extracted")
        extract_archive(archive, root)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ValueError(
            f"{archive} cannot be extracted ({type(err).__name__}: "
            f"{(str(err).splitlines() or [''])[0].rstrip(':')}); it is corrupt or "
            f"incomplete. Delete it (and any partial {root / 'cifar-100-python'}) and download "
            f"it again ({CIFAR100_URL}), or keep the checksum check on (--verify-data)") from None


def cifar100(root: str | Path = "data", train: bool = True, download: bool = True,
             verify_checksums: bool = True) -> ImageData:
    """CIFAR-100 from its python-pickle release (``cifar-100-python/{train,test}``) under ``root``.

    Order of preference: the extracted folder, then ``cifar-100-python.tar.gz`` in ``root``
    (extracted here), then a torchvision download (checksum-verified) if ``download``. Offline
    without the files: a clear error that says where to put them.

    The files are pickles, so they are read with an unpickler that admits only what the release
    contains (no file can run code), and with ``verify_checksums`` (default) the archive and the
    split file must have the official MD5s (:data:`CIFAR100_MD5`).
    """
    root = Path(root)
    folder = root / "cifar-100-python"
    split_name = "train" if train else "test"
    split = folder / split_name
    if not split.exists():
        archive = root / "cifar-100-python.tar.gz"
        if archive.exists():
            if verify_checksums:
                verify_md5(archive, CIFAR100_MD5[archive.name],
                           f"Delete {archive} and download it again ({CIFAR100_URL}).")
            _extract(archive, root)
        elif download:
            try:
                torchvision.datasets.CIFAR100(str(root), train=train, download=True)
            except Exception as err:  # noqa: BLE001 - any network failure gets the same advice
                raise FileNotFoundError(_missing_cifar(root, folder, err)) from err
        if not split.exists():
            raise FileNotFoundError(_missing_cifar(root, folder, None))
    if verify_checksums:
        verify_md5(split, CIFAR100_MD5[split_name],
                   f"Delete the folder {folder} (and {root / 'cifar-100-python.tar.gz'} if it is "
                   f"there) and download the release again ({CIFAR100_URL}).")
    entry = load_cifar_pickle(split)
    try:
        flat = np.asarray(entry["data"], dtype=np.uint8)
        images = torch.from_numpy(flat.reshape(-1, 3, 32, 32).copy())
        labels = torch.tensor(entry["fine_labels"], dtype=torch.int64)
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{split} is not a CIFAR-100 python-pickle file ({err})") from err
    if len(images) != len(labels) or (len(labels) and int(labels.max()) >= 100):
        raise ValueError(f"{split}: {len(images)} images, {len(labels)} labels: malformed file")
    return ImageData(images, labels, "cifar100", 100)


def _missing_cifar(root: Path, folder: Path, err: Exception | None) -> str:
    why = f" (download failed: {err})" if err else ""
    return (
        f"CIFAR-100 is not in {root.resolve()}{why}. Put cifar-100-python.tar.gz there (from "
        f"{CIFAR100_URL}) or its extracted folder at {folder.resolve()}, or use "
        f"dataset='synthetic' to run offline on generated data"
    )


def _shifted_crops(templates: torch.Tensor, n: int, size: int, seed: int, train: bool):
    """``n`` labelled samples of the class templates (``(classes, 3, size + 2 PAD, ...)``):
    each a random ``size`` crop (a shift of up to ``2 PAD`` pixels) with a random contrast.
    Returns labels, crops ``(n, 3, size, size)``, contrasts and the generator, which the caller
    goes on drawing its noise from (train and test use different streams)."""
    gs = torch.Generator().manual_seed(seed * 1_000_003 + (1 if train else 2))
    labels = torch.randint(templates.shape[0], (n,), generator=gs)
    dx = torch.randint(2 * PAD + 1, (n,), generator=gs)
    dy = torch.randint(2 * PAD + 1, (n,), generator=gs)
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=gs)
    rows = dy[:, None] + torch.arange(size)
    cols = dx[:, None] + torch.arange(size)
    crops = templates[labels[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return labels, crops.permute(0, 3, 1, 2), contrast, gs


def synthetic_cifar(
    n: int = 50_000, train: bool = True, seed: int = 0, num_classes: int = 100, size: int = 32
) -> ImageData:
    """A generated stand-in for CIFAR-100: same shapes and dtype, deterministic from ``seed``.

    Each class has a smooth colour template (low-frequency noise, upsampled); an image is its
    class template, randomly shifted and scaled in contrast, plus pixel noise. A small CNN learns
    it well above chance within a few hundred steps, so training curves are meaningful offline.
    Train and test splits share templates (same ``seed``) and differ in their samples.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, 3, 4, 4, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=size + 2 * PAD, mode="bicubic",
                                                align_corners=False)
    labels, crops, contrast, gs = _shifted_crops(templates, n, size, seed, train)
    noise = torch.randn(n, 3, size, size, generator=gs)
    x = 128 + 40 * (contrast * crops + 0.8 * noise)
    images = x.round().clamp(0, 255).to(torch.uint8)
    return ImageData(images, labels, "synthetic", num_classes)


FINEGRAIN_CLASSES = 20
FINEGRAIN_SIZE = 16


def finegrain(n: int = 5_000, train: bool = True, seed: int = 0,
              num_classes: int = FINEGRAIN_CLASSES, size: int = FINEGRAIN_SIZE,
              detail: float = 0.5, noise: float = 1.3) -> ImageData:
    """Generated data whose classes differ in fine detail (the ``laptop`` profile's task).

    Classes come in pairs. The two classes of a pair share a smooth colour template (as in
    :func:`synthetic_cifar`) and differ only in a fine pattern: a random +-1 grid of 2x2-pixel
    cells, added with amplitude ``detail``. An image is its class's template plus pattern,
    randomly shifted (up to 4 pixels) and scaled in contrast, plus pixel noise of sd ``noise``.
    Colour alone tells the pair (at most half the accuracy); telling the two classes of a pair
    apart needs the 2-pixel pattern under the noise, which is what coarse quantization of
    weights and activations loses. ``size`` 16 keeps a ResNet-8 fast on a laptop CPU.
    Deterministic from ``seed``; train and test share templates and patterns.
    """
    if num_classes % 2:
        raise ValueError(f"finegrain classes come in pairs: num_classes must be even, got "
                         f"{num_classes}")
    g = torch.Generator().manual_seed(seed)
    side = size + 2 * PAD
    coarse = torch.randn(num_classes // 2, 3, 4, 4, generator=g)
    colour = torch.nn.functional.interpolate(coarse, size=side, mode="bicubic",
                                             align_corners=False)
    cells = torch.randn(num_classes, 1, side // 2, side // 2, generator=g).sign()
    pattern = torch.nn.functional.interpolate(cells, size=side, mode="nearest")
    templates = colour.repeat_interleave(2, 0) + detail * pattern
    labels, crops, contrast, gs = _shifted_crops(templates, n, size, seed, train)
    x = 128 + 40 * (contrast * crops + noise * torch.randn(n, 3, size, size, generator=gs))
    images = x.round().clamp(0, 255).to(torch.uint8)
    # pixels are 128 + 40 * (about 1.5 sd): normalise to zero mean and about unit variance
    return ImageData(images, labels, "finegrain", num_classes, mean=(0.5,) * 3, std=(0.25,) * 3)


GENERATED = ("synthetic", "finegrain")  # the offline data sets (not CIFAR-100)


def load_dataset(
    name: str, train: bool, root: str | Path = "data", seed: int = 0,
    synthetic_size: tuple[int, int] = (50_000, 10_000), download: bool = True,
    verify_checksums: bool = True,
) -> ImageData:
    """``name`` is "cifar100", "synthetic" or "finegrain" (generated; sizes from
    ``synthetic_size``: train, test).

    ``verify_checksums``: CIFAR-100 files must have the official MD5s (see :func:`cifar100`).
    """
    if name == "cifar100":
        return cifar100(root, train, download, verify_checksums)
    if name == "synthetic":
        return synthetic_cifar(synthetic_size[0 if train else 1], train, seed)
    if name == "finegrain":
        return finegrain(synthetic_size[0 if train else 1], train, seed)
    raise ValueError(f"unknown dataset {name!r}; use 'cifar100', 'synthetic' or 'finegrain'")


# --- augmentation -------------------------------------------------------------------------


def random_crop_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop after 4-pixel zero padding, and horizontal flip with p=1/2, batched."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))
    dev = images.device
    dy = torch.randint(2 * PAD + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(2 * PAD + 1, (n,), generator=generator, device=dev)
    flip = torch.rand(n, generator=generator, device=dev) < 0.5
    rows = dy[:, None] + torch.arange(h, device=dev)
    cols = dx[:, None] + torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    out = padded[torch.arange(n, device=dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    m = torch.tensor(mean, device=images.device, dtype=dtype).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=images.device, dtype=dtype).view(1, -1, 1, 1) * 255
    return (images.to(dtype) - m) / s


class TensorLoader:
    """Batches from a device-resident uint8 dataset; augmentation and shuffling on the device.

    Each epoch's order and augmentation come from a generator seeded by ``(seed, epoch)``, so a
    resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, data: ImageData, batch_size: int, train: bool, device: torch.device | str,
                 seed: int = 0, drop_last: bool | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.data = data
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size = batch_size
        self.train = train
        self.device = torch.device(device)
        self.seed = seed
        self.drop_last = train if drop_last is None else drop_last
        self.memory_format = memory_format
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        g = torch.Generator(device=self.device).manual_seed(self.seed * 100_003 + self.epoch)
        order = (torch.randperm(n, generator=g, device=self.device) if self.train
                 else torch.arange(n, device=self.device))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            if self.train:
                x = random_crop_flip(x, g)
            x = normalize(x, self.data.mean, self.data.std).contiguous(
                memory_format=self.memory_format)
            yield x, self.labels[idx]


class _AugmentedDataset(Dataset):
    def __init__(self, data: ImageData, train: bool) -> None:
        from torchvision.transforms import v2

        self.data = data
        steps = [v2.RandomCrop(32, padding=PAD), v2.RandomHorizontalFlip()] if train else []
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.transform(self.data.images[i]), self.data.labels[i]


class NormalizingLoader:
    """A DataLoader (torchvision transforms, worker processes) that yields normalised floats."""

    def __init__(self, data: ImageData, batch_size: int, train: bool, device: torch.device | str,
                 seed: int = 0, workers: int = 2,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.data, self.device, self.seed, self.train = data, torch.device(device), seed, train
        self.memory_format = memory_format
        self.generator = torch.Generator()
        self.loader = DataLoader(
            _AugmentedDataset(data, train), batch_size=batch_size, shuffle=train,
            drop_last=train, num_workers=workers, generator=self.generator,
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
        )

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 100_003 + epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            yield (normalize(x, self.data.mean, self.data.std).contiguous(
                memory_format=self.memory_format), y.to(self.device, non_blocking=True))


def make_loader(data: ImageData, batch_size: int, train: bool, device: torch.device | str,
                kind: str = "tensor", seed: int = 0, workers: int = 2,
                memory_format: torch.memory_format = torch.contiguous_format):
    """``kind="tensor"`` (device-resident, fast) or ``"dataloader"`` (portable)."""
    if kind == "tensor":
        return TensorLoader(data, batch_size, train, device, seed, memory_format=memory_format)
    if kind == "dataloader":
        return NormalizingLoader(data, batch_size, train, device, seed, workers, memory_format)
    raise ValueError(f"unknown loader {kind!r}; use 'tensor' or 'dataloader'")
