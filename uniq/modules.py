"""Quantizer modules with a learnable step, and the quantized Conv2d / Linear layers."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import functional as QF
from .mse import check_init, step_statistic

METHODS = ("uniq", "lsq")
GRANULARITIES = ("channel", "tensor")


class Quantizer(nn.Module):
    """A fake-quantizer with a learnable step size (layer-wise or kernel-wise).

    * ``method="uniq"``: signed inputs use the symmetric quantizer (Eq. 3), unsigned inputs the
      activation quantizer (Eq. 5). ``method="lsq"``: LSQ, two's complement when signed.
    * ``channels=None`` gives one step for the tensor (layer-wise); ``channels=C`` gives a step
      per output channel of shape ``(C, 1, ..., 1)`` with ``ndim`` dimensions (kernel-wise).
    * ``init``: "mse" (Eq. 9/10), "lsq" (2 E|X| / sqrt(Qp)) or a positive constant.
    * ``grad_scale=True`` multiplies the step's gradient by ``1/sqrt(n * Qp)`` as the authors'
      code (and LSQ) do, where ``n`` is the number of elements that ONE step value quantizes:
      the whole tensor for a layer-wise step, one output channel's kernel (``numel / C_out``)
      for a kernel-wise weight step, and the whole batch for an activation step (times
      ``batch_replicas``: the global batch under data parallelism). It is on by default for
      both methods, and every run records the setting.
    * ``detect_sign=True`` lets calibration switch an unsigned quantizer that sees negative
      inputs to the signed one (with a warning); ``False`` keeps it unsigned, so negative inputs
      are clipped at zero by Eq. 5 as in the authors' code (``signed_inputs="unsigned"``).

    ``initialized`` is False until the step was set from data (``init_from``) or from a constant;
    a forward pass before that is an error, so an un-calibrated model cannot train by accident.
    """

    def __init__(
        self,
        bits: int,
        *,
        signed: bool,
        method: str = "uniq",
        channels: int | None = None,
        ndim: int = 4,
        init: str | float = "mse",
        grad_scale: bool = True,
        detect_sign: bool = True,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be 'uniq' or 'lsq', got {method!r}")
        self.bits = QF.check_bits(bits, allow_binary=not (method == "lsq" and signed))
        self.signed = bool(signed)
        self.method = method
        self.init = check_init(init)
        self.grad_scale = bool(grad_scale)
        self.detect_sign = bool(detect_sign)
        shape = () if channels is None else (channels,) + (1,) * (ndim - 1)
        self.step = nn.Parameter(torch.ones(shape))
        self.initialized = False
        self.observing = False
        # Under data parallelism an activation quantizer sees 1/world of the batch; counting
        # the global batch keeps the step's gradient scale independent of the process count
        # (the authors' DataParallel runs counted one GPU's share). Weights keep 1.
        self.batch_replicas = 1
        self.observed: torch.Tensor | None = None
        if isinstance(self.init, float):
            self.set_step(torch.full(shape, self.init))

    @property
    def granularity(self) -> str:
        return "tensor" if self.step.dim() == 0 else "channel"

    def extra_repr(self) -> str:
        kind = "signed" if self.signed else "unsigned"
        return f"{self.method}, bits={self.bits}, {kind}, {self.granularity}, init={self.init}"

    # Persist the Python-side state with the weights (plain types: loads with weights_only=True).
    def get_extra_state(self) -> dict[str, Any]:
        return {"initialized": self.initialized, "signed": self.signed, "bits": self.bits,
                "detect_sign": self.detect_sign}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.initialized = bool(state["initialized"])
        self.signed = bool(state["signed"])
        self.bits = int(state["bits"])
        # Checkpoints written before the setting existed were all converted with detection on.
        self.detect_sign = bool(state.get("detect_sign", True))

    def _reduce_dims(self, x: torch.Tensor) -> tuple[int, ...] | None:
        return None if self.granularity == "tensor" else tuple(range(1, x.dim()))

    @torch.no_grad()
    def statistic(self, x: torch.Tensor) -> torch.Tensor:
        """The init rule's value of the step for this tensor (or batch): Eq. 9/10 or LSQ's."""
        if isinstance(self.init, float):
            return torch.full_like(self.step, self.init)
        stat = step_statistic(x, self.bits, self.signed, self.init, self._reduce_dims(x))
        return stat.reshape(self.step.shape)

    @torch.no_grad()
    def set_step(self, value: torch.Tensor, where: str = "quantizer") -> None:
        """Set the step, refusing zero, negative or non-finite values with a clear message."""
        value = torch.as_tensor(value, dtype=torch.float32).reshape(self.step.shape)
        bad = ~torch.isfinite(value) | (value <= 0)
        if bool(bad.any()):
            raise ValueError(
                f"{where}: step-size init gave {value[bad].flatten()[:4].tolist()} "
                f"({int(bad.sum())} bad of {value.numel()}); the statistics are zero or not "
                "finite (all-zero weights or inputs, or NaN). Give this layer a constant init, "
                "keep it in full precision via overrides, or fix the data"
            )
        self.step.copy_(value.to(self.step))
        self.initialized = True

    @torch.no_grad()
    def init_from(self, x: torch.Tensor, where: str = "quantizer") -> None:
        """Initialise the step from one tensor (a weight, or a single batch of activations)."""
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{where}: input contains NaN or inf; cannot initialise its step")
        self.set_step(self.statistic(x), where)

    def observe(self, x: torch.Tensor) -> None:
        """Record the per-batch statistic and keep the running maximum (used by calibrate).

        An input the conversion probe judged unsigned that turns out negative on real data is
        switched to the signed quantizer (with a warning) rather than silently clipped at zero,
        unless ``detect_sign`` is off (the authors' all-unsigned activations): then it stays
        unsigned and its step comes from Eq. 10 on the raw input, negatives included, as theirs.
        """
        if self.detect_sign and not self.signed and bool((x < 0).any()):
            warnings.warn(
                f"an unsigned {self.method} quantizer got negative inputs during calibration; "
                "switching it to the signed (symmetric) quantizer", stacklevel=2)
            self.signed, self.observed = True, None
        stat = self.statistic(x)
        self.observed = stat if self.observed is None else torch.maximum(self.observed, stat)

    def elements_per_step(self, x: torch.Tensor) -> int:
        """``n`` of the gradient scale ``1/sqrt(n * Qp)``: how many elements one step value
        quantizes. Layer-wise: all of ``x``; kernel-wise: ``numel / C_out``, one output
        channel's kernel (the authors' ``x.numel() / x.shape[0]``); times ``batch_replicas``,
        so an activation step counts the global batch under data parallelism."""
        return x.numel() // self.step.numel() * self.batch_replicas

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
            return x
        if not self.initialized:
            raise RuntimeError(
                "quantizer step is not initialised: call uniq.calibrate(model, batches) "
                "before training or evaluating a converted model"
            )
        g = 1.0
        if self.grad_scale:
            g = QF.step_grad_scale(self.elements_per_step(x), self.bits, self.signed)
        if self.method == "lsq":
            return QF.lsq_quantize(x, self.step, self.bits, self.signed, g)
        if self.signed:
            return QF.symmetric_quantize(x, self.step, self.bits, g)
        return QF.unsigned_quantize(x, self.step, self.bits, g)


class _QuantizedLayer:
    """Shared bits of QConv2d and QLinear: optional weight and input quantizers."""

    weight_quantizer: Quantizer | None
    act_quantizer: Quantizer | None
    role: str

    def quantized_weight(self) -> torch.Tensor:
        w = self.weight  # type: ignore[attr-defined]
        return w if self.weight_quantizer is None else self.weight_quantizer(w)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act_quantizer is None else self.act_quantizer(x)


class QConv2d(nn.Conv2d, _QuantizedLayer):
    """``nn.Conv2d`` whose weight and input pass through quantizers (None = full precision)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)


class QLinear(nn.Linear, _QuantizedLayer):
    """``nn.Linear`` whose weight and input pass through quantizers (None = full precision)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)


def quantized_copy(
    layer: nn.Conv2d | nn.Linear,
    weight_quantizer: Quantizer | None,
    act_quantizer: Quantizer | None,
    role: str,
) -> QConv2d | QLinear:
    """A QConv2d/QLinear sharing ``layer``'s parameters, with the given quantizers attached."""
    if isinstance(layer, nn.Conv2d):
        new: QConv2d | QLinear = QConv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
            layer.padding, layer.dilation, layer.groups, layer.bias is not None,
            layer.padding_mode, device="meta",
        )
    else:
        new = QLinear(layer.in_features, layer.out_features, layer.bias is not None,
                      device="meta")
    new.weight = layer.weight
    if layer.bias is not None:
        new.bias = layer.bias
    new.weight_quantizer = weight_quantizer
    new.act_quantizer = act_quantizer
    new.role = role
    return new.train(layer.training)


def quantizers(model: nn.Module) -> list[tuple[str, Quantizer]]:
    """All quantizer modules of a model, with their qualified names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Quantizer)]


def step_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable step sizes (kept out of weight decay by the recipes)."""
    return [m.step for _, m in quantizers(model)]
