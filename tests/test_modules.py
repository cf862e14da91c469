"""Module-level step gradients (Quantizer, QConv2d, QLinear) against an independent float64
computation: Eq. 3 / Eq. 5 / LSQ written out in NumPy, their straight-through step derivative
in closed form, and the gradient scale ``1/sqrt(n * Qp)`` with ``n`` counted here from the
shapes (the elements one step value quantizes), not taken from the package."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import uniq
from uniq.modules import Quantizer, quantized_copy


def qp_of(bits, signed):
    """The authors' Qp: weights (signed) ``max(2**(b-1) - 1, 1)``, activations ``2**b - 1``."""
    return max(2 ** (bits - 1) - 1, 1) if signed else 2**bits - 1


def reference(x, d, bits, signed, method):
    """Quantized value and d(value)/d(step) per element, NumPy float64 (STE for round).

    ``d`` broadcasts against ``x``. Eq. 3: ``u = x/D + (N-1)/2``, inside ``round(u) - u``,
    outside ``-+(N-1)/2``. Eq. 5: ``v = x/D``, inside ``round(v) - v``, above ``N-1``, below 0.
    LSQ: ``v = x/s`` clipped to ``[-Qn, Qp]``, inside ``round(v) - v``, outside ``-Qn`` / ``Qp``.
    """
    x, d = np.asarray(x, np.float64), np.asarray(d, np.float64)
    top = 2**bits - 1
    if method == "uniq" and signed:
        half = top / 2
        u = x / d + half
        value = (np.round(np.clip(u, 0, top)) - half) * d
        grad = np.where(u <= 0, -half, np.where(u >= top, half, np.round(u) - u))
        return value, grad
    if method == "uniq":
        lo, hi = 0, top
    else:
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, top)
    v = x / d
    value = np.round(np.clip(v, lo, hi)) * d
    grad = np.where(v <= lo, lo, np.where(v >= hi, hi, np.round(v) - v))
    return value, grad


def away_from_ties(x, d, bits, signed, method):
    """Nudge inputs that sit within 1e-6 of a rounding tie or a clip edge (measure-zero cases
    where the reference and the implementation may legitimately pick different sides)."""
    x = np.array(x, np.float64)
    off = (2**bits - 1) / 2 if (method == "uniq" and signed) else 0.0
    u = x / d + off
    frac = u - np.floor(u)
    near = (np.abs(frac - 0.5) < 1e-6) | (np.abs(frac) < 1e-6) | (np.abs(frac - 1) < 1e-6)
    return np.where(near, x + 1e-4 * d, x)


CASES = [(b, m) for m in ("uniq", "lsq") for b in (1, 2, 4)]


@pytest.mark.parametrize("bits,method", CASES)
@pytest.mark.parametrize("kind", ["weight-tensor", "weight-channel", "act", "act-signed"])
def test_quantizer_step_gradient(bits, method, kind):
    signed = kind != "act"
    if method == "lsq" and signed and bits == 1:
        pytest.skip("LSQ has no 1-bit signed quantizer")
    rng = np.random.default_rng(bits * 7 + len(kind))
    if kind.startswith("weight"):
        x = rng.normal(size=(6, 4, 3, 3))
    else:
        x = rng.normal(size=(5, 4, 6, 6)) * 1.3 + (0.0 if signed else 0.4)
    channels = x.shape[0] if kind == "weight-channel" else None
    q = Quantizer(bits, signed=signed, method=method, channels=channels, init=0.5).double()
    step = rng.uniform(0.2, 0.9, size=tuple(q.step.shape))
    with torch.no_grad():
        q.step.copy_(torch.from_numpy(step))
    replicas = 1 if kind.startswith("weight") else 3
    q.batch_replicas = replicas
    x = away_from_ties(x, step, bits, signed, method)
    upstream = rng.normal(size=x.shape)

    out = q(torch.from_numpy(x))
    (out * torch.from_numpy(upstream)).sum().backward()

    value, dstep = reference(x, step, bits, signed, method)
    np.testing.assert_allclose(out.detach().numpy(), value, rtol=0, atol=1e-12)
    if channels is None:
        n = x.size * replicas  # one step for the whole tensor (or the global batch)
        expected = (upstream * dstep).sum()
    else:
        n = x[0].size  # one output channel's kernel: C_in * kh * kw
        expected = (upstream * dstep).reshape(x.shape[0], -1).sum(1).reshape(step.shape)
    expected = expected / np.sqrt(n * qp_of(bits, signed))
    np.testing.assert_allclose(q.step.grad.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_kernelwise_scale_is_sqrt_cout_larger_than_layerwise():
    """The bug this guards against: a kernel-wise step counted the whole weight's numel."""
    w = torch.randn(16, 8, 3, 3, dtype=torch.float64)
    grads = {}
    for channels in (None, 16):
        q = Quantizer(2, signed=True, channels=channels, init=0.3).double()
        q(w).sum().backward()
        grads[channels] = q.step.grad.sum().item()
    # the same elementwise derivatives, summed over all channels either way
    assert grads[16] == pytest.approx(grads[None] * 16**0.5, rel=1e-10)


def _layer(kind, bits, method, granularity):
    torch.manual_seed(bits)
    base = nn.Conv2d(4, 6, 3, padding=1, bias=True) if kind == "conv" else nn.Linear(12, 5)
    channels = base.weight.shape[0] if granularity == "channel" else None
    wq = Quantizer(bits, signed=True, method=method, channels=channels,
                   ndim=base.weight.dim(), init="mse")
    wq.init_from(base.weight)
    aq = Quantizer(bits, signed=False, method=method, init=0.4)
    return quantized_copy(base, wq, aq, "body").double()


def _check_layer(layer, x, bits, method, replicas=1):
    """Backward through the layer vs. the reference: quantize weight and input in NumPy, run the
    float op on leaves to get dL/d(quantized), then apply the closed-form step derivatives."""
    rng = np.random.default_rng(0)
    wq, aq = layer.weight_quantizer, layer.act_quantizer
    w = layer.weight.detach().numpy()
    w_step, a_step = wq.step.detach().numpy(), aq.step.detach().numpy()
    x = away_from_ties(x, a_step, bits, False, method)
    out = layer(torch.from_numpy(x))
    upstream = rng.normal(size=tuple(out.shape))
    (out * torch.from_numpy(upstream)).sum().backward()

    w_val, w_dstep = reference(w, w_step, bits, True, method)
    x_val, x_dstep = reference(x, a_step, bits, False, method)
    w_leaf = torch.tensor(w_val, requires_grad=True)
    x_leaf = torch.tensor(x_val, requires_grad=True)
    bias = layer.bias.detach()
    if isinstance(layer, nn.Conv2d):
        ref_out = F.conv2d(x_leaf, w_leaf, bias, layer.stride, layer.padding)
    else:
        ref_out = F.linear(x_leaf, w_leaf, bias)
    (ref_out * torch.from_numpy(upstream)).sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), ref_out.detach().numpy(), atol=1e-10)

    gw = w_leaf.grad.numpy() * w_dstep
    if wq.step.dim() == 0:
        expected_w = gw.sum() / np.sqrt(w.size * qp_of(bits, True))
    else:
        per_kernel = w[0].size
        expected_w = gw.reshape(w.shape[0], -1).sum(1).reshape(w_step.shape)
        expected_w = expected_w / np.sqrt(per_kernel * qp_of(bits, True))
    expected_a = (x_leaf.grad.numpy() * x_dstep).sum() / np.sqrt(x.size * replicas
                                                                * qp_of(bits, False))
    np.testing.assert_allclose(wq.step.grad.numpy(), expected_w, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(aq.step.grad.numpy(), expected_a, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bits,method", [c for c in CASES if c != (1, "lsq")])
@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_layer_step_gradients(bits, method, kind, granularity):
    layer = _layer(kind, bits, method, granularity)
    rng = np.random.default_rng(bits)
    shape = (3, 4, 5, 5) if kind == "conv" else (7, 12)
    _check_layer(layer, np.abs(rng.normal(size=shape)) * 0.8, bits, method)


def test_converted_model_counts_the_global_batch_for_activations():
    """Through quantize_model + calibrate, with batch_replicas set as the DDP engine does."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3),
                          nn.ReLU(), nn.Conv2d(6, 4, 1))
    q = uniq.quantize_model(model, 2, overrides={"0": 2, "4": 2},
                            example_input=torch.randn(2, 3, 8, 8))
    uniq.calibrate(q, [torch.randn(4, 3, 8, 8)], 1)
    q = q.double()
    layer = q[2]
    layer.act_quantizer.batch_replicas = 2
    x = torch.relu(q[0](torch.randn(2, 3, 8, 8, dtype=torch.float64))).detach().numpy()
    _check_layer(layer, x, 2, "uniq", replicas=2)
