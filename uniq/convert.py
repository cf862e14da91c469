"""Model conversion (the paper's layer policy), the conversion report, and step calibration."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping
from itertools import islice

import pandas as pd
import torch
from torch import nn

from .functional import FULL_PRECISION, check_bits
from .modules import GRANULARITIES, METHODS, QConv2d, QLinear, Quantizer, quantized_copy, quantizers
from .state import preserved_state

SIGNED_INPUTS = ("detect", "unsigned")
"""How activation quantizers treat inputs that can be negative (``quantize_model``'s
``signed_inputs``): "detect" gives them the symmetric quantizer, "unsigned" clips them at zero
as the authors' code does."""


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _probe_input(model: nn.Module, layers: list[tuple[str, nn.Module]]) -> torch.Tensor:
    first = layers[0][1]
    channels = first.in_channels if isinstance(first, nn.Conv2d) else first.in_features
    param = next(model.parameters())
    if isinstance(first, nn.Linear):
        return torch.randn(2, channels, device=param.device)
    size = getattr(model, "in_size", (32, 32))
    return torch.randn(2, channels, *size, device=param.device)


@torch.no_grad()
def probe_layers(
    model: nn.Module, example_input: torch.Tensor | None = None
) -> tuple[list[str], dict[str, bool]]:
    """Run one forward pass in eval mode and return the conv/linear layers it reached, in
    execution order, and for each whether its input took negative values (a signed input).

    The input defaults to Gaussian noise shaped from the first layer and ``model.in_size`` (a
    pytorchcv attribute; 32x32 otherwise): noise is signed, as a normalised image is.
    """
    layers = _layers(model)
    if not layers:
        raise ValueError(
            "the model has no nn.Conv2d or nn.Linear layer, so there is nothing to quantize"
        )
    order: list[str] = []
    signed: dict[str, bool] = {}

    def hook(name: str):
        def record(_module: nn.Module, args: tuple) -> None:
            order.append(name)
            signed[name] = signed.get(name, False) or bool((args[0] < 0).any())
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers]
    try:
        with preserved_state(model):
            x = _probe_input(model, layers) if example_input is None else example_input
            model.eval()(x)
    except Exception as err:  # noqa: BLE001 - re-raised with the fix
        raise ValueError(
            f"could not run a probe forward pass through the model ({err}); pass "
            "example_input=<a small batch of the model's input shape> to quantize_model"
        ) from err
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order)), signed


def is_downsampling(layer: nn.Module) -> bool:
    """A 1x1 convolution with stride > 1: the projection shortcut of a ResNet stage."""
    return (isinstance(layer, nn.Conv2d) and tuple(layer.kernel_size) == (1, 1)
            and max(layer.stride) > 1)


def layer_policy(
    model: nn.Module,
    bits: int,
    order: list[str],
    first_last_bits: int = 8,
    overrides: Mapping[str, int | None] | None = None,
) -> dict[str, tuple[int | None, str]]:
    """Bits (None = full precision) and role of every conv/linear layer under the paper's policy.

    Multi-bit: first and last layers at ``first_last_bits`` (8). Binary: first, last and
    downsampling (1x1 stride > 1) layers in full precision. ``overrides`` maps layer names to
    bits, or None/32 for full precision, and wins over the policy. ``order`` lists the layers
    in execution order; layers it lacks (not reached by a forward pass) are body layers.
    """
    modules = dict(model.named_modules())
    policy: dict[str, tuple[int | None, str]] = {}
    unreached = [n for n, _ in _layers(model) if n not in set(order)]
    for i, name in enumerate(order):
        role = "first" if i == 0 else "last" if i == len(order) - 1 else "body"
        if role == "body" and is_downsampling(modules[name]):
            role = "downsample"
        if bits == 1:
            policy[name] = (None if role != "body" else 1, role)
        else:
            policy[name] = (first_last_bits if role in ("first", "last") else bits, role)
    for name in unreached:
        policy[name] = (bits, "body")
    for name, value in (overrides or {}).items():
        if name not in policy:
            raise ValueError(
                f"override names layer {name!r}, which is not a conv/linear layer of the model; "
                f"layers are: {', '.join(order[:6])}{', ...' if len(order) > 6 else ''}"
            )
        value = None if value in (None, FULL_PRECISION) else check_bits(value)
        policy[name] = (value, policy[name][1])
    return policy


def default_init_scope(method: str) -> str:
    """Table 5's ablated inits apply to the low-bit layers (the 8-bit first and last layers
    keep the MSE init); LSQ's baseline applies its own init to every layer, as LSQ does."""
    return "all" if method == "lsq" else "low-bit"


def quantize_model(
    model: nn.Module,
    bits: int,
    method: str = "uniq",
    weight_granularity: str = "channel",
    act_granularity: str = "tensor",
    *,
    init: str | float = "mse",
    grad_scale: bool = True,
    first_last_bits: int = 8,
    overrides: Mapping[str, int | None] | None = None,
    example_input: torch.Tensor | None = None,
    inplace: bool = False,
    signed_inputs: str = "detect",
    first_last_weight_granularity: str | None = None,
    init_scope: str | None = None,
) -> nn.Module:
    """Replace every Conv2d/Linear by a quantized layer under the paper's policy.

    Weights and input activations of a layer share its bit width. Weight steps are initialised
    from the weights at once (Eq. 9); activation steps need data: call ``uniq.calibrate`` next.
    Returns the converted model (a copy unless ``inplace``).

    ``signed_inputs`` says what happens to inputs that can be negative:

    * ``"detect"`` (default): inputs found to be signed by a probe forward pass (the normalised
      image into the first layer, MobileNetV2's linear-bottleneck outputs) get the symmetric
      quantizer (Eq. 3) instead of the unsigned one (Eq. 5); an input judged unsigned that
      turns out negative during calibration is switched to the symmetric one, with a warning.
    * ``"unsigned"``: the authors' code. The first layer's input (the image) gets the symmetric
      quantizer (their ``UniQInputConv2d``); every other input gets Eq. 5, so negative values
      are clipped at zero, whatever the probe or calibration sees, and its step comes from
      Eq. 10 on the raw input, negatives included.

    The conversion report's ``signed_input`` column shows which inputs are quantized
    symmetrically, its ``signed_inputs_mode`` column (and ``.attrs["signed_inputs"]``) the rule.

    ``first_last_weight_granularity``: None (default) gives the first and last layers the same
    weight granularity as the others (the paper: kernel-wise weights on ImageNet); "tensor" is
    the authors' code, whose 8-bit first and last layers always have one weight step.

    ``init_scope``: which layers get ``init`` when it is not "mse" (Table 5's ablation; the
    paper is silent). "low-bit" (default): the layers at ``bits``; the others (the 8-bit first
    and last layers) keep the MSE init (Eq. 9/10), so a constant init cannot leave the 8-bit
    classifier with a handful of levels. "all": every quantized layer. None: "low-bit" for
    UniQ, "all" for LSQ (LSQ's own init everywhere, as LSQ does).
    """
    init_scope = default_init_scope(method) if init_scope is None else init_scope
    if init_scope not in ("low-bit", "all"):
        raise ValueError(f"init_scope must be 'low-bit' or 'all', got {init_scope!r}")
    if signed_inputs not in SIGNED_INPUTS:
        raise ValueError(
            f"signed_inputs must be one of {SIGNED_INPUTS}, got {signed_inputs!r}: 'detect' "
            "quantizes inputs that can be negative symmetrically, 'unsigned' clips them at zero "
            "as the authors' code does"
        )
    bits = check_bits(bits)
    check_bits(first_last_bits)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "lsq" and bits == 1:
        raise ValueError("LSQ has no 1-bit weight quantizer (Qp = 0); use method='uniq' for 1 bit")
    if first_last_weight_granularity is None:
        first_last_weight_granularity = weight_granularity
    for g, what in ((weight_granularity, "weight"), (act_granularity, "act"),
                    (first_last_weight_granularity, "first_last_weight")):
        if g not in GRANULARITIES:
            raise ValueError(f"{what}_granularity must be one of {GRANULARITIES}, got {g!r}")
    if any(isinstance(m, Quantizer) for m in model.modules()):
        raise ValueError("the model is already quantized; convert the full-precision model")
    if not inplace:
        model = copy.deepcopy(model)
    order, signed = probe_layers(model, example_input)
    policy = layer_policy(model, bits, order, first_last_bits, overrides)
    modules = dict(model.named_modules())
    for name, (layer_bits, role) in policy.items():
        layer = modules[name]
        wq = aq = None
        if layer_bits is not None:
            granularity = (first_last_weight_granularity if role in ("first", "last")
                           else weight_granularity)
            channels = layer.weight.shape[0] if granularity == "channel" else None
            layer_init = init if init_scope == "all" or layer_bits == bits else "mse"
            wq = Quantizer(layer_bits, signed=True, method=method, channels=channels,
                           ndim=layer.weight.dim(), init=layer_init, grad_scale=grad_scale)
            wq.init_from(layer.weight, where=f"layer {name!r} (weights)")
            if signed_inputs == "detect":
                act_signed = signed.get(name, False)
            else:
                act_signed = role == "first"
            aq = Quantizer(layer_bits, signed=act_signed, method=method, channels=None,
                           init=layer_init, grad_scale=grad_scale,
                           detect_sign=signed_inputs == "detect")
            if act_granularity == "channel":
                warnings.warn("kernel-wise activation steps are not supported; using layer-wise",
                              stacklevel=2)
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, quantized_copy(layer, wq, aq, role))
    return model


def conversion_report(model: nn.Module) -> pd.DataFrame:
    """One row per conv/linear layer: its name, kind, bits, granularity, input signedness
    (``signed_input``: quantized symmetrically) and the rule that decided it
    (``signed_inputs_mode``: "detect" or "unsigned", see ``quantize_model``). ``.attrs
    ["signed_inputs"]`` holds the model's rule ("mixed" if layers differ, None if no layer
    quantizes its input)."""
    rows = []
    for name, m in _layers(model):
        wq = getattr(m, "weight_quantizer", None)
        aq = getattr(m, "act_quantizer", None)
        kind = "linear" if isinstance(m, nn.Linear) else (
            "conv-depthwise" if m.groups > 1 and m.groups == m.in_channels else "conv")
        rows.append({
            "layer": name,
            "kind": kind,
            "role": getattr(m, "role", "-"),
            "weight_bits": wq.bits if wq else FULL_PRECISION,
            "act_bits": aq.bits if aq else FULL_PRECISION,
            "granularity": wq.granularity if wq else "-",
            "signed_input": bool(aq.signed) if aq else None,
            "signed_inputs_mode": (SIGNED_INPUTS[0] if aq.detect_sign else SIGNED_INPUTS[1])
            if aq else None,
            "method": (wq or aq).method if (wq or aq) else "fp",
        })
    report = pd.DataFrame(rows)
    modes = set(report.signed_inputs_mode.dropna())
    report.attrs["signed_inputs"] = (modes.pop() if len(modes) == 1 else "mixed") if modes else None
    return report


def _first_tensor(batch: object) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(
        f"calibrate needs batches that are tensors or (inputs, targets) pairs, got "
        f"{type(batch).__name__}"
    )


def calibrate(model: nn.Module, batches: Iterable, num_batches: int = 100) -> nn.Module:
    """Initialise every step from data: weights by Eq. 9, activations by Eq. 10 (or the layer's
    init rule), taking the maximum over the first ``num_batches`` batches of the per-batch value.

    The forward passes run in training mode in full precision (quantizers pass inputs through),
    so the statistics are those the first training steps see. Nothing else changes: BatchNorm
    running statistics and every other buffer, the weights, the train/eval mode and the RNG
    states are restored afterwards.
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive integer, got {num_batches!r}")
    named = quantizers(model)
    if not named:
        raise ValueError("the model has no quantizers; convert it with uniq.quantize_model first")
    for name, q in named:
        if name.endswith("weight_quantizer"):
            layer = model.get_submodule(name.rpartition(".")[0])
            q.init_from(layer.weight, where=f"{name} (weights)")
    acts = [(n, q) for n, q in named if n.endswith("act_quantizer")]
    device = next(model.parameters()).device
    seen = 0
    # Every quantizer passes its input through, so the statistics are the full-precision
    # model's; weight quantizers observe too, harmlessly (their steps were set above).
    try:
        with preserved_state(model), torch.no_grad():
            for _, q in named:
                q.observing, q.observed = True, None
            model.train()
            for batch in islice(batches, num_batches):
                x = _first_tensor(batch).to(device, non_blocking=True)
                if not bool(torch.isfinite(x).all()):
                    raise ValueError(f"calibration batch {seen} contains NaN or inf")
                model(x)
                seen += 1
        if seen == 0:
            raise ValueError("calibrate got no batches; pass a non-empty loader or list")
        for name, q in acts:
            if q.observed is None:
                raise ValueError(f"{name}: no calibration batch reached this layer")
            q.set_step(q.observed, where=name)
    finally:
        for _, q in named:
            q.observing, q.observed = False, None
    if seen < num_batches:
        warnings.warn(f"calibrate used {seen} batches, fewer than num_batches={num_batches}",
                      stacklevel=2)
    return model


__all__ = ["quantize_model", "conversion_report", "calibrate", "layer_policy", "probe_layers",
           "QConv2d", "QLinear", "SIGNED_INPUTS"]
