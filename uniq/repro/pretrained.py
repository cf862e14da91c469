"""Pretrained ImageNet weights: pytorchcv's own (``--pretrained pytorchcv``, fetched into its
cache), a state-dict file, or a folder holding pytorchcv's ``<name>-*.pth`` (offline use)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..models import imagenet_model


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


def load_imagenet_model(name: str, pretrained: bool | str | Path = False) -> nn.Module:
    """A pytorchcv ImageNet model. ``pretrained``: False; True (pytorchcv's download/cache); a
    path to a saved state dict or to pytorchcv's ``.pth`` file; or a cache directory holding
    pytorchcv's ``<name>-*.pth`` (for offline use)."""
    from pytorchcv.model_provider import get_model

    model = imagenet_model(name)
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
