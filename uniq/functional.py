"""Fake-quantizers with straight-through gradients: UniQ (Eq. 3, Eq. 5) and the LSQ baseline.

Every function takes a float tensor ``x`` and a learnable ``step`` that broadcasts against it:
a scalar tensor for layer-wise quantization, shape ``(C, 1, 1, 1)`` (conv) or ``(C, 1)`` (linear)
for kernel-wise quantization. The forward value is the quantized tensor; the backward pass uses
the straight-through estimator (STE) for ``round`` and the exact derivative of ``clip``:

* d out / d x    = 1 inside the clip range, 0 outside.
* d out / d step = ``round(u) - u`` inside (``u`` the scaled input); outside the range it is the
  derivative of the clipped level itself: ``+-(N-1)/2`` for Eq. 3, ``N-1`` / ``0`` for Eq. 5,
  ``Qp`` / ``-Qn`` for LSQ. (The paper's Eq. 6 writes ``sign(x) * alpha`` outside the range,
  but ``alpha = D (N-1)/2`` depends on ``D``, so ``d alpha / d D = (N-1)/2`` is the actual
  derivative; ``docs/fidelity.md`` lists this with the other choices.)

``grad_scale`` multiplies only the step's gradient (LSQ's ``1/sqrt(n * Qp)`` trick, with ``n``
the number of elements one step value quantizes; ``uniq.modules.Quantizer`` computes it).

All three quantizers are one clip-then-round operation, ``FakeQuantize``: a custom
autograd.Function that computes the same forward value and the same gradients, bit for bit, as
the composite "detach trick" form (``(t - t.detach()) + r.detach()``, kept as
``reference_quantize``, which autograd differentiates by itself), in fewer passes over the input
and with one autograd node instead of a dozen. ``torch.compile(fullgraph=True)`` traces it
without graph breaks.

Steps stay positive: the step used in the forward pass is ``max(step, MIN_STEP)`` with a
straight-through gradient, so an optimizer that pushes a step through zero cannot produce a
division by zero or a sign flip, and the step can still recover. Value checks that would need a
host sync (positive step, finite input) run only for CPU tensors outside ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import functools
import numbers

import torch

FULL_PRECISION = 32
"""The bit width that means "not quantized" (a layer, a run)."""

MIN_STEP = 1e-8
"""Smallest step size used in a forward pass (the guard that keeps steps positive)."""

MAX_BITS = 8


def check_bits(bits: object, *, allow_binary: bool = True) -> int:
    """Return ``bits`` as an int, or raise a ValueError that says what is accepted."""
    low = 1 if allow_binary else 2
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise ValueError(
            f"bits must be an integer from {low} to {MAX_BITS}, got {bits!r} "
            f"({type(bits).__name__}); pass e.g. bits=2"
        )
    if not low <= int(bits) <= MAX_BITS:
        hint = " (LSQ's signed quantizer has no 1-bit form; use method='uniq')" if bits == 1 else ""
        raise ValueError(f"bits must be from {low} to {MAX_BITS}, got {bits}{hint}")
    return int(bits)


class QuantizerInputError(ValueError):
    """A step that is not positive or an input that is not finite (checked on CPU tensors)."""


_VALUE_CHECKS = [True]


@contextlib.contextmanager
def value_checks(enabled: bool):
    """Switch the value checks (positive step, finite input) on or off. The training engine runs
    with them off on every device, as CUDA and compiled code always do: a step that an
    optimizer pushes through zero is then held at ``MIN_STEP`` by the guard and can recover,
    the same on a CPU as on a GPU, and divergence is judged from the loss and the weights."""
    old = _VALUE_CHECKS[0]
    _VALUE_CHECKS[0] = enabled
    try:
        yield
    finally:
        _VALUE_CHECKS[0] = old


def _values_checkable(t: torch.Tensor) -> bool:
    # Reading a CPU tensor costs no device sync; CUDA tensors and compiled graphs are left alone.
    return _VALUE_CHECKS[0] and t.device.type == "cpu" and not torch.compiler.is_compiling()


def _check_inputs(x: torch.Tensor, step: torch.Tensor | float, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name}: x must be a floating-point tensor, got {type(x).__name__}")
    if not isinstance(step, torch.Tensor):
        if not isinstance(step, numbers.Real) or not step > 0:
            raise ValueError(f"{name}: step must be a positive number, got {step!r}")
        step = torch.tensor(float(step), dtype=x.dtype, device=x.device)
    if _values_checkable(step) and not bool((step > 0).all()):
        raise QuantizerInputError(
            f"{name}: every step must be positive, got min {step.min().item():g}; "
            "initialise it from data (uniq.calibrate) or with a positive constant"
        )
    if _values_checkable(x) and not bool(torch.isfinite(x).all()):
        raise QuantizerInputError(
            f"{name}: input contains NaN or inf; check the data and the preceding layers"
        )
    return step


def _in_float32(fn):
    """Quantize in float32 and hand back the input's dtype. In bfloat16 ``x / step`` keeps only
    8 significant bits, so ``round(u) - u`` (the step's gradient) degenerates at 6-8 bits; the
    upcast is free inside a fused (compiled) kernel."""

    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, step, *args, **kwargs) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.dtype in (torch.bfloat16, torch.float16):
            return fn(x.float(), step, *args, **kwargs).to(x.dtype)
        return fn(x, step, *args, **kwargs)

    return wrapper


class FakeQuantize(torch.autograd.Function):
    """``(round(clip(v, lo, hi)) - o) D`` with ``v = x/D + o`` and ``D = max(step, MIN_STEP)``.

    Eq. 3 is ``lo, hi, o = 0, N-1, (N-1)/2``; Eq. 5 is ``0, N-1, 0``; LSQ ``-Qn, Qp, 0``. With
    ``m`` = ``lo < v < hi`` (the open range, as ``torch.clamp``'s gradient) and ``q = round(clip(v))
    - o`` (the level index, ``out = q D``), the straight-through derivatives are

    * ``d out / d x = m`` (STE for ``round``, the derivative of ``clip``);
    * ``d out / d D = q - m x/D``: ``round(v) - v`` inside, the clip level ``- o`` outside.

    The backward pass evaluates exactly the expressions autograd evaluates for the composite
    form (``reference_quantize``), in the same order, so the values and gradients are the same
    bits (for finite inputs; a NaN input gets a NaN loss either way): with
    ``gm = m (g D)``, ``d x = gm / D`` and ``d D = sum(g q) - sum(gm (x/D)/D)``, each sum
    reduced to the step's shape, times ``grad_scale``. What it saves is the composite form's
    extra passes (the detach trick's dead ``t - t.detach()``, the ``where`` of ``clamp``'s
    gradient, ``neg``) and its autograd nodes; the forward pass keeps ``v`` and ``q``.
    """

    @staticmethod
    def forward(ctx, x, step, lo: float, hi: float, offset: float, grad_scale: float):
        d = step.clamp_min(MIN_STEP)
        v = x / d
        if offset:
            v.add_(offset)
        q = v.clamp(lo, hi).round_()
        if offset:
            q.sub_(offset)
        else:  # round(-0.3) is -0.0; the composite form's "0 + round(u)" gives +0.0: the same bits
            q.add_(0.0)
        # x/D is v itself without an offset; with one (weights, small) x is kept to recompute it
        ctx.save_for_backward(v, q, d, x if offset else None)
        ctx.bounds, ctx.grad_scale = (lo, hi, offset), grad_scale
        ctx.step_shape, ctx.step_dtype = step.shape, step.dtype
        return q * d

    @staticmethod
    def backward(ctx, grad):
        v, q, d, x = ctx.saved_tensors
        lo, hi, _ = ctx.bounds
        gm = grad * d
        # clamp's gradient, written into gm's own memory (large CPU allocations cost a pass)
        gm = torch.ops.aten.hardtanh_backward.grad_input(gm, v, lo, hi, grad_input=gm)
        grad_x = gm / d if ctx.needs_input_grad[0] else None
        grad_step = None
        if ctx.needs_input_grad[1]:
            x_over_d = v if x is None else x / d
            # -sum(a) is sum(-a) bit for bit (rounding is symmetric): the composite form's
            # "+ sum(-gm * ((x/D)/D))" without its negation pass
            grad_step = ((grad * q).sum_to_size(ctx.step_shape)
                         - (x_over_d / d).mul_(gm).sum_to_size(ctx.step_shape))
            if ctx.grad_scale != 1.0:
                grad_step = grad_step * ctx.grad_scale
            grad_step = grad_step.to(ctx.step_dtype)
        return grad_x, grad_step, None, None, None, None


def fake_quantize(x: torch.Tensor, step: torch.Tensor, lo: float, hi: float, offset: float,
                  grad_scale: float = 1.0) -> torch.Tensor:
    """``FakeQuantize`` when a gradient is wanted; otherwise (evaluation, calibration) the same
    forward expression computed in place, with nothing kept for a backward pass."""
    if torch.is_grad_enabled() and (x.requires_grad or step.requires_grad):
        return FakeQuantize.apply(x, step, lo, hi, offset, grad_scale)
    d = step.clamp_min(MIN_STEP)
    v = x / d
    if offset:
        v.add_(offset)
    r = v.clamp_(lo, hi).round_()
    r = r.sub_(offset) if offset else r.add_(0.0)  # -0.0 -> 0.0, as in FakeQuantize.forward
    return r.mul_(d)


@_in_float32
def symmetric_quantize(
    x: torch.Tensor, step: torch.Tensor | float, bits: int, grad_scale: float = 1.0
) -> torch.Tensor:
    """UniQ's symmetric quantizer for weights (Eq. 3): ``round(clip_N((x + a)/D)) D - a``.

    ``N = 2**bits`` levels at ``(k - (N-1)/2) D``, ``a = D (N-1)/2``; there is no zero level,
    and ``bits=1`` is the binary case ``+-D/2``. Clip happens before round; computed as
    ``(round(clip(x/D + (N-1)/2, 0, N-1)) - (N-1)/2) D``.
    """
    bits = check_bits(bits)
    step = _check_inputs(x, step, "symmetric_quantize")
    levels = 2**bits - 1  # N - 1
    return fake_quantize(x, step, 0, levels, levels / 2, grad_scale)


@_in_float32
def unsigned_quantize(
    x: torch.Tensor, step: torch.Tensor | float, bits: int, grad_scale: float = 1.0
) -> torch.Tensor:
    """UniQ's activation quantizer (Eq. 5): ``round(clip_N(x / D)) D``, levels ``0 .. (N-1) D``."""
    bits = check_bits(bits)
    step = _check_inputs(x, step, "unsigned_quantize")
    return fake_quantize(x, step, 0, 2**bits - 1, 0.0, grad_scale)


def lsq_range(bits: int, signed: bool) -> tuple[int, int]:
    """LSQ's integer range ``(Qn, Qp)``: two's complement if signed, else ``(0, 2**bits - 1)``."""
    bits = check_bits(bits, allow_binary=not signed)
    return (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


@_in_float32
def lsq_quantize(
    x: torch.Tensor, step: torch.Tensor | float, bits: int, signed: bool, grad_scale: float = 1.0
) -> torch.Tensor:
    """LSQ (Esser et al. 2020): ``round(clip(x/s, -Qn, Qp)) s``; signed uses two's complement.

    LSQ has no 1-bit signed quantizer (``Qp = 0``): ``bits=1, signed=True`` is a ValueError.
    """
    qn, qp = lsq_range(bits, signed)
    step = _check_inputs(x, step, "lsq_quantize")
    return fake_quantize(x, step, -qn, qp, 0.0, grad_scale)


def step_grad_scale(n: int, bits: int, signed: bool, method: str = "uniq") -> float:
    """LSQ's step-gradient scale ``1 / sqrt(n * Qp)``.

    ``n`` is the number of elements that one step value quantizes: the whole tensor for a
    layer-wise step, ``numel / C_out`` (one output channel's kernel) for a kernel-wise weight
    step, the batch for an activation step. ``Qp`` follows the authors' code, for both
    methods: for signed inputs ``max(2**(bits-1) - 1, 1)`` (so the binary case is defined; it
    is LSQ's ``Qp`` from 2 bits on), for unsigned ``2**bits - 1``. ``method`` is accepted for
    call-site symmetry and does not change the rule.
    """
    qp = max(2 ** (bits - 1) - 1, 1) if signed else 2**bits - 1
    return 1.0 / float(n * qp) ** 0.5
