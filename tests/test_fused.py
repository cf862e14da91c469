"""The fused quantizer (``FakeQuantize``) against the composite detach-trick form it replaced:
the same forward value and the same gradients bit for bit (so a run trains to the same weights
as before), and no graph break under ``torch.compile(fullgraph=True)``."""

import pytest
import torch
from oracle import reference_quantize

from uniq.functional import MIN_STEP, FakeQuantize, fake_quantize
from uniq.modules import Quantizer

# (lo, hi, offset): Eq. 3 at 2 bits, Eq. 5 at 2 bits, LSQ signed 3 bits, Eq. 3 binary
CASES = [(0, 3, 1.5), (0, 3, 0.0), (-4, 3, 0.0), (0, 1, 0.5)]


def bits(t):
    """The raw bits: ``torch.equal`` alone would not tell -0.0 from 0.0."""
    return t.view({torch.float32: torch.int32, torch.float64: torch.int64}[t.dtype])


def same_bits(a, b):
    return a.dtype == b.dtype and torch.equal(bits(a), bits(b))


def _both(x, step, lo, hi, offset, scale, upstream):
    results = []
    for fn in (FakeQuantize.apply, reference_quantize):
        xx, ss = x.clone().requires_grad_(True), step.clone().requires_grad_(True)
        out = fn(xx, ss, lo, hi, offset, scale)
        gx, gs = torch.autograd.grad((out * upstream).sum(), (xx, ss))
        results.append((out.detach(), gx, gs))
    return results


@pytest.mark.parametrize("lo,hi,offset", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [None, 6])
def test_fused_matches_the_composite_form(lo, hi, offset, dtype, channels):
    torch.manual_seed(0)
    x = torch.randn(6, 5, 7, 7, dtype=dtype) * 2
    shape = () if channels is None else (channels, 1, 1, 1)
    step = (torch.rand(shape, dtype=dtype) * 0.5 + 0.2)
    d = step.clamp_min(MIN_STEP)
    x[0, 0, 0, :4] = torch.tensor([lo - offset, hi - offset, lo - offset - 1, hi - offset + 1],
                                  dtype=dtype) * d.flatten()[0]  # on and beyond the clip edges
    x[0, 0, 1, :2] = torch.tensor([-0.0, 0.0])  # signed zeros
    upstream = torch.randn_like(x)
    (out, gx, gs), (ref, rgx, rgs) = _both(x, step, lo, hi, offset, 0.3, upstream)
    assert same_bits(out, ref) and same_bits(gx, rgx) and same_bits(gs, rgs)
    v = x / d + offset
    inside = (v > lo) & (v < hi)  # torch.clamp's gradient: the open range
    torch.testing.assert_close(gx, torch.where(inside, upstream, 0.0))  # the STE, (g D)/D
    assert gs.shape == step.shape and gs.dtype == step.dtype


def test_no_grad_path_gives_the_same_values():
    torch.manual_seed(1)
    x, step = torch.randn(1000) * 3, torch.tensor(0.37)
    with torch.no_grad():
        plain = fake_quantize(x, step, 0, 7, 3.5)
    fused = fake_quantize(x, step.clone().requires_grad_(True), 0, 7, 3.5)
    assert same_bits(plain, fused.detach())
    assert same_bits(plain, reference_quantize(x, step, 0, 7, 3.5))


def test_only_the_step_needs_a_gradient():
    torch.manual_seed(2)
    x = torch.randn(50)
    step = torch.tensor(0.4, requires_grad=True)
    (g,) = torch.autograd.grad(fake_quantize(x, step, 0, 3, 0.0).sum(), step)
    (r,) = torch.autograd.grad(reference_quantize(x, step, 0, 3, 0.0).sum(), step)
    assert same_bits(g, r)


def test_nan_propagates_without_a_host_check():
    step = torch.tensor(0.5, requires_grad=True)
    out = fake_quantize(torch.tensor([1.0, float("nan")]), step, 0, 3, 0.0)
    assert torch.isnan(out[1]) and out[0].item() == 1.0


@pytest.mark.parametrize("signed,channels", [(True, 4), (False, None)])
def test_quantizer_module_compiles_in_one_graph(signed, channels):
    torch.manual_seed(3)
    q = Quantizer(2, signed=signed, channels=channels, init=0.3)
    x = torch.randn(4, 3, 5, 5) if signed else torch.rand(4, 3, 5, 5) * 2
    explanation = torch._dynamo.explain(q)(x.clone().requires_grad_(True))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(q, fullgraph=True, backend="aot_eager")
    xc, xe = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = compiled(xc)
    out.sum().backward()
    gc = q.step.grad.clone()
    q.step.grad = None
    ref = q(xe)
    ref.sum().backward()
    assert torch.equal(out, ref) and torch.equal(xc.grad, xe.grad)
    torch.testing.assert_close(gc, q.step.grad)  # the compiler may fuse the sums differently


def test_activation_sized_input_is_bit_exact():
    torch.manual_seed(4)
    x = torch.relu(torch.randn(16, 16, 16, 16)) * 1.7
    step = torch.tensor(0.23)
    (out, gx, gs), (ref, rgx, rgs) = _both(x, step, 0, 3, 0.0, 1 / 300, torch.randn_like(x))
    assert same_bits(out, ref) and same_bits(gx, rgx) and same_bits(gs, rgs)


class _Composite:
    apply = staticmethod(reference_quantize)


def test_training_steps_give_the_same_weights_as_the_composite_form(monkeypatch):
    """Three SGD steps of a converted, calibrated ResNet-8 at 2 bits: identical weights."""
    import uniq
    import uniq.functional as QF
    from uniq.models import preact_resnet

    def train(fused: bool):
        torch.manual_seed(5)
        model = uniq.quantize_model(preact_resnet(8, 10), 2,
                                    example_input=torch.randn(2, 3, 32, 32))
        uniq.calibrate(model, [torch.randn(8, 3, 32, 32)], 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        with monkeypatch.context() as m, QF.value_checks(False):
            if not fused:
                m.setattr(QF, "FakeQuantize", _Composite)
            for _ in range(3):
                x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        return model.state_dict()

    fused, composite = train(True), train(False)
    for k, v in fused.items():
        if torch.is_tensor(v) and v.is_floating_point():
            assert same_bits(v, composite[k]), k
