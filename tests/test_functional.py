"""Quantizer forward values and straight-through gradients against independent oracles."""

import pytest
import torch

from uniq.functional import lsq_quantize, symmetric_quantize, unsigned_quantize


@pytest.fixture(autouse=True)
def _seed():
    """Each test draws the same inputs whichever tests ran before it."""
    torch.manual_seed(0)


def eq3_reference(x, d, bits):
    """Eq. 3 written directly, plus its straight-through gradients (d/dD of the clipped levels
    outside the range, not Eq. 6's sign(x) a), with plain Python floats."""
    n = 2**bits
    a = d * (n - 1) / 2
    u = (x + a) / d
    uc = min(max(u, 0.0), n - 1)
    value = round_half_even(uc) * d - a
    inside = 0.0 < u < n - 1
    dx = 1.0 if inside else 0.0
    dd = (round_half_even(u) - u) if inside else (n - 1) / 2 * (1 if u >= n - 1 else -1)
    return value, dx, dd


def eq5_reference(x, d, bits):
    n = 2**bits
    v = x / d
    inside = 0.0 < v < n - 1
    value = round_half_even(min(max(v, 0.0), n - 1)) * d
    dd = (round_half_even(v) - v) if inside else (n - 1 if v >= n - 1 else 0.0)
    return value, 1.0 if inside else 0.0, dd


def round_half_even(v):
    return float(round(v))  # Python rounds half to even, like torch.round


def grads(fn, x, step, *args):
    x = x.clone().requires_grad_(True)
    step = step.clone().requires_grad_(True)
    out = fn(x, step, *args)
    gx, gs = torch.autograd.grad(out.sum(), (x, step))
    return out.detach(), gx, gs


@pytest.mark.parametrize("fn,reference,scale,step,bits", [
    *[(symmetric_quantize, eq3_reference, 2, 0.37, b) for b in (1, 2, 3, 4, 8)],
    *[(unsigned_quantize, eq5_reference, 3, 0.29, b) for b in (1, 2, 4, 8)]],
    ids=[f"eq3-{b}bit" for b in (1, 2, 3, 4, 8)] + [f"eq5-{b}bit" for b in (1, 2, 4, 8)])
def test_quantizer_matches_its_equation_and_its_ste_gradients(fn, reference, scale, step, bits):
    """Eq. 3 (symmetric) and Eq. 5 (unsigned): values, input gradients and, one element at a
    time, the step's gradient, against the scalar references."""
    x = torch.randn(250, dtype=torch.float64) * scale
    out, gx, _ = grads(fn, x, torch.tensor(step, dtype=torch.float64), bits)
    for i in range(len(x)):
        value, dx, dd = reference(float(x[i]), step, bits)
        assert out[i].item() == pytest.approx(value, abs=1e-12)
        assert gx[i].item() == dx
        s = torch.tensor(step, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(fn(x[i : i + 1], s, bits).sum(), s)
        assert g.item() == pytest.approx(dd, abs=1e-9)


def test_binary_is_exactly_plus_minus_half_step():
    x = torch.randn(1000)
    d = torch.tensor(0.731)
    out = symmetric_quantize(x, d, 1)
    assert set(out.unique().tolist()) == {-(d / 2).item(), (d / 2).item()}
    assert torch.equal(out > 0, x > 0)


def test_levels_are_symmetric_without_zero():
    x = torch.linspace(-5, 5, 10001)
    levels = symmetric_quantize(x, torch.tensor(0.5), 2).unique()
    assert torch.allclose(levels, torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert torch.equal(unsigned_quantize(x, torch.tensor(0.5), 2).unique(),
                       torch.tensor([0.0, 0.5, 1.0, 1.5]))


def test_step_gradient_matches_finite_differences_between_jumps():
    # Away from decision levels the quantizer is smooth in the step; the STE gradient of the
    # step is then the true derivative only where round() is constant: compare the clipped
    # region (exact) and the "round(u) - u" term minus the STE part for inside points.
    x = torch.tensor([-3.0, -2.5, 2.2, 4.0], dtype=torch.float64)  # outside range at d=0.5, 2b
    d = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(symmetric_quantize(x, d, 2).sum(), d)
    eps = 1e-6
    fd = (symmetric_quantize(x, d + eps, 2).sum() - symmetric_quantize(x, d - eps, 2).sum()) / (
        2 * eps)
    assert g.item() == pytest.approx(fd.item(), rel=1e-6)
    # Inside the range the true derivative of round(u) D - a with round frozen is round(u) - (N-1)/2
    # and the STE adds -x/D: check the composite against d/dD of the frozen-level expression.
    xi = torch.tensor([0.1, -0.3, 0.6], dtype=torch.float64)
    (gi,) = torch.autograd.grad(symmetric_quantize(xi, d, 2).sum(), d)
    u = xi / d.detach() + 1.5
    assert gi.item() == pytest.approx((u.round() - u).sum().item(), abs=1e-12)


def test_grad_scale_multiplies_only_the_step_gradient():
    x = torch.randn(64)
    out1, gx1, gs1 = grads(symmetric_quantize, x, torch.tensor(0.4), 2)
    out2, gx2, gs2 = grads(lambda a, b, c: symmetric_quantize(a, b, c, grad_scale=0.125),
                           x, torch.tensor(0.4), 2)
    assert torch.equal(out1, out2) and torch.equal(gx1, gx2)
    assert torch.allclose(gs2, gs1 * 0.125)


def test_kernelwise_step_broadcasts_and_reduces():
    w = torch.randn(8, 3, 3, 3)
    step = torch.rand(8, 1, 1, 1) + 0.1
    out, _, gs = grads(symmetric_quantize, w, step, 3)
    assert gs.shape == step.shape
    for c in range(8):
        oc, _, gc = grads(symmetric_quantize, w[c], step[c, 0, 0, 0], 3)
        assert torch.equal(out[c], oc)
        assert gs[c].item() == pytest.approx(gc.item(), abs=1e-5)


def _fake_quant_oracle(x, scale, qmin, qmax, per_channel):
    scale = scale.clone().requires_grad_(True)
    x = x.clone().requires_grad_(True)
    if per_channel:
        zp = torch.zeros(scale.shape[0])
        out = torch._fake_quantize_learnable_per_channel_affine(x, scale, zp, 0, qmin, qmax, 1.0)
    else:
        zp = torch.zeros(1)
        out = torch._fake_quantize_learnable_per_tensor_affine(x, scale, zp, qmin, qmax, 1.0)
    gx, gs = torch.autograd.grad(out.sum(), (x, scale))
    return out.detach(), gx, gs


def _away_from_windows(x, s, qn, qp):
    v = x / s
    # drop inputs within half a step outside the range (where the oracle decides after rounding)
    # and inputs within 1e-3 of a rounding tie
    keep = ~(((v < -qn) & (v > -qn - 0.5)) | ((v > qp) & (v < qp + 0.5)))
    return keep & ((v - v.floor() - 0.5).abs() > 1e-3)


@pytest.mark.parametrize("bits,signed", [(2, True), (3, True), (4, False), (2, False), (8, True)])
def test_lsq_per_tensor_against_pytorch_fake_quant(bits, signed):
    qn, qp = (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    s = torch.tensor([0.21])
    x = torch.randn(4000) * qp * 0.2 * (3 if bits < 8 else 30)
    x = x[_away_from_windows(x, s, qn, qp)]
    ref, rgx, rgs = _fake_quant_oracle(x, s, -qn, qp, per_channel=False)
    out, gx, gs = grads(lambda a, b, c: lsq_quantize(a, b, c, signed), x, s[0], bits)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.equal(gx, rgx)
    assert gs.item() == pytest.approx(rgs.item(), rel=1e-4, abs=1e-3)


def test_lsq_per_channel_against_pytorch_fake_quant():
    bits, qn, qp = 3, 4, 3
    w = torch.randn(6, 50)
    s = torch.rand(6) * 0.3 + 0.1
    keep = _away_from_windows(w, s[:, None], qn, qp)
    w = torch.where(keep, w, torch.zeros_like(w) + 0.01 * s[:, None])  # tame the excluded ones
    ref, rgx, rgs = _fake_quant_oracle(w, s, -qn, qp, per_channel=True)
    out, gx, gs = grads(lambda a, b, c: lsq_quantize(a, b, c, True), w, s[:, None], bits)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.equal(gx, rgx)
    assert torch.allclose(gs.flatten(), rgs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtypes(dtype):
    x = torch.randn(100, dtype=dtype)
    out = symmetric_quantize(x, torch.tensor(0.5, dtype=dtype), 2)
    assert out.dtype == dtype
    levels = {-0.75, -0.25, 0.25, 0.75}
    assert set(out.float().unique().tolist()) <= levels


def test_steps_stay_positive_in_the_forward_pass():
    step = torch.tensor(0.3, requires_grad=True)
    with torch.no_grad():
        step.sub_(1.0)  # an optimizer overshoot
    # CPU eager calls check values; emulate the unchecked (compiled / CUDA) path
    from oracle import positive_step
    assert positive_step(step).item() > 0
    (g,) = torch.autograd.grad(positive_step(step), step)
    assert g.item() == 1.0


@pytest.mark.parametrize("bits", [0, 9, 2.5, "2", True, None])
def test_bad_bits(bits):
    for fn in (symmetric_quantize, unsigned_quantize):
        with pytest.raises(ValueError, match="bits must be"):
            fn(torch.randn(3), torch.tensor(0.1), bits)


def test_lsq_has_no_signed_binary():
    with pytest.raises(ValueError, match="no 1-bit"):
        lsq_quantize(torch.randn(3), torch.tensor(0.1), 1, True)


@pytest.mark.parametrize("step", [0.0, -0.1, torch.tensor(0.0), torch.tensor([0.1, -0.2])])
def test_bad_steps(step):
    with pytest.raises(ValueError, match="positive"):
        symmetric_quantize(torch.randn(2), step, 2)


def test_nan_input():
    with pytest.raises(ValueError, match="NaN"):
        unsigned_quantize(torch.tensor([1.0, float("nan")]), torch.tensor(0.1), 2)


def test_compiles_without_graph_breaks():
    fns = [lambda x, s: symmetric_quantize(x, s, 2, 0.5),
           lambda x, s: unsigned_quantize(x, s, 3),
           lambda x, s: lsq_quantize(x, s, 4, True)]
    x = torch.randn(16, 8)
    s = torch.tensor(0.3, requires_grad=True)
    for fn in fns:
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
        out = compiled(x, s)
        assert torch.equal(out, fn(x, s))
        (gc,) = torch.autograd.grad(out.sum(), s)
        (ge,) = torch.autograd.grad(fn(x, s).sum(), s)
        assert torch.allclose(gc, ge)


def test_bfloat16_inputs_are_quantized_in_float32():
    # In bf16, x / step keeps 8 significant bits, so round(u) - u would collapse at 8 bits.
    x = torch.randn(4096) * 3
    step = torch.tensor(0.021)
    for fn in (lambda a, s: symmetric_quantize(a, s, 8), lambda a, s: unsigned_quantize(a, s, 8)):
        ref_out, _, ref_gs = grads(fn, x.bfloat16().float(), step)
        out, _, gs = grads(fn, x.bfloat16(), step)
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, ref_out.bfloat16())
        assert gs.item() == pytest.approx(ref_gs.item(), rel=1e-5)
