"""Pre-activation ResNet for CIFAR (ResNet-32 is the paper's), and the ImageNet models."""

from __future__ import annotations

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


def imagenet_model(name: str) -> nn.Module:
    """A pytorchcv ImageNet architecture (the paper's ResNet-18/34 and MobileNetV2), untrained;
    ``uniq.repro.pretrained`` loads weights into it."""
    from pytorchcv.model_provider import get_model

    if name not in IMAGENET_MODELS:
        raise ValueError(f"unknown ImageNet model {name!r}; choose from {IMAGENET_MODELS}")
    return get_model(name, pretrained=False)


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
