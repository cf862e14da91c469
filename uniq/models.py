"""Pre-activation ResNet for CIFAR (ResNet-32 is the paper's), and the ImageNet models."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity or 1x1 projection shortcut.

    As in pytorchcv's ``PreResUnit`` the projection reads the pre-activated input, so every
    convolution, shortcut included, sees a post-ReLU (unsigned) input.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + identity


class PreActResNet(nn.Module):
    def __init__(self, depth: int = 32, num_classes: int = 100, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR pre-activation ResNet depth must be 6n+2 >= 8, got {depth}")
        n = (depth - 2) // 6
        self.in_size = (32, 32)
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        blocks, cin = [], width
        for stage in range(3):
            cout = width * 2**stage
            for i in range(n):
                blocks.append(PreActBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.conv1(x))
        x = torch.relu(self.bn(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def preact_resnet(depth: int = 32, num_classes: int = 100, width: int = 16) -> PreActResNet:
    """Pre-activation ResNet for 32x32 inputs: depth 6n+2, stages of 16/32/64 channels."""
    return PreActResNet(depth, num_classes, width)


IMAGENET_MODELS = ("preresnet18", "preresnet34", "mobilenetv2_w1")


def pytorchcv_filename(name: str) -> str:
    """The file pytorchcv stores a model's weights in, e.g. ``preresnet18-0972-5651bc2d.pth``."""
    try:
        from pytorchcv.models.common.model_store import get_model_name_suffix_data

        error, sha1, _ = get_model_name_suffix_data(name)
        return f"{name}-{error}-{sha1[:8]}.pth"
    except Exception:  # noqa: BLE001 - a private pytorchcv API; fall back to the pattern
        return f"{name}-<error>-<hash>.pth"


def pretrained_path(name: str, pretrained: str | Path) -> Path:
    """The weight file of ``name`` that ``pretrained`` names: the file itself, or the newest
    pytorchcv ``<name>-*.pth`` in a cache directory."""
    path = Path(pretrained)
    if path.is_dir():
        found = sorted(path.glob(f"{name}-*.pth"))
        if not found:
            raise FileNotFoundError(
                f"no pytorchcv weights for {name} in {path}: put {pytorchcv_filename(name)} "
                "there (pytorchcv saves it in ~/.torch/models) or pass a state-dict file")
        path = found[-1]
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights for {name} not found at {path}; pass a state dict saved with "
            f"torch.save(model.state_dict(), FILE), pytorchcv's {pytorchcv_filename(name)}, or "
            "--pretrained pytorchcv/none")
    return path


def imagenet_model(name: str, pretrained: bool | str | Path = False) -> nn.Module:
    """A pytorchcv ImageNet model. ``pretrained``: False; True (pytorchcv's download/cache); a
    path to a saved state dict or to pytorchcv's ``.pth`` file; or a cache directory holding
    pytorchcv's ``<name>-*.pth`` (for offline use)."""
    from pytorchcv.model_provider import get_model

    if name not in IMAGENET_MODELS:
        raise ValueError(f"unknown ImageNet model {name!r}; choose from {IMAGENET_MODELS}")
    model = get_model(name, pretrained=False)
    if pretrained is False or pretrained is None:
        return model
    if pretrained is True:
        try:
            return get_model(name, pretrained=True)
        except Exception as err:  # noqa: BLE001 - offline or cache miss: say what to provide
            raise FileNotFoundError(
                f"could not fetch pytorchcv's pretrained {name} ({err}). Offline, copy "
                f"{pytorchcv_filename(name)} (from pytorchcv's cache, ~/.torch/models, on a "
                f"machine with internet) and pass it: --pretrained /path/to/that/file or dir"
            ) from err
    state = torch.load(pretrained_path(name, pretrained), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model.load_state_dict(state)
    return model


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the module called ``name`` (dotted, as in ``named_modules``) is."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def adaptive_pooling(model: nn.Module) -> nn.Module:
    """pytorchcv's final 7x7 AvgPool equals a global average at 224 pixels; the adaptive form
    gives the same numbers there and also accepts other input sizes."""
    for name, m in list(model.named_modules()):
        if name.endswith("final_pool") and isinstance(m, nn.AvgPool2d):
            replace_module(model, name, nn.AdaptiveAvgPool2d(1))
    return model
