"""Model conversion policy, the report, calibration side effects and bad inputs."""

import copy
import warnings

import pytest
import torch
from pytorchcv.model_provider import get_model
from torch import nn

import uniq
from uniq.mse import optimal_step


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(16, 16, 1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


@pytest.fixture(scope="module")
def preresnet18():
    return get_model("preresnet18", pretrained=False)


@pytest.mark.parametrize("bits", [4, 3, 2, 1])
def test_preresnet18_policy(preresnet18, bits):
    r = uniq.conversion_report(uniq.quantize_model(preresnet18, bits))
    assert len(r) == 21  # 17 3x3/7x7 convs + 3 shortcut convs + fc
    first, last = r.iloc[0], r.iloc[-1]
    assert first.layer == "features.init_block.conv" and last.layer == "output"
    down = r[r.layer.str.contains("identity_conv")]
    body = r[(r.role == "body")]
    assert len(down) == 3 and (down.role == "downsample").all()
    if bits == 1:
        for row in (first, last):
            assert row.weight_bits == 32 and row.act_bits == 32
        assert (down.weight_bits == 32).all()
        assert (body.weight_bits == 1).all() and (body.act_bits == 1).all()
    else:
        assert first.weight_bits == first.act_bits == last.weight_bits == 8
        assert (down.weight_bits == bits).all()
        assert (body.weight_bits == bits).all()
    assert bool(r.iloc[0].signed_input) == (bits != 1)  # first layer input: the signed image
    assert not r.iloc[1:].signed_input.fillna(False).any()


def test_mobilenetv2_signed_bottleneck_inputs():
    m = get_model("mobilenetv2_w1", pretrained=False)
    q = uniq.quantize_model(m, 4, weight_granularity="tensor")
    r = uniq.conversion_report(q)
    signed = set(r[r.signed_input == True].layer)  # noqa: E712
    # every expansion conv after the first block reads a linear-bottleneck output
    expected = {n for n in r.layer if n.endswith("conv1.conv") and "stage1" not in n}
    assert expected <= signed
    assert "features.final_block.conv" in signed and "features.init_block.conv" in signed
    assert not any(n.endswith(("conv2.conv", "conv3.conv")) for n in signed)
    assert (r.granularity == "tensor").all()
    mods = dict(q.named_modules())
    assert mods["features.stage2.unit1.conv1.conv.act_quantizer"].signed


def test_preresnet34_and_plain_cnn_convert():
    r = uniq.conversion_report(uniq.quantize_model(get_model("preresnet34", pretrained=False), 2))
    assert len(r) == 37 and r.iloc[-1].weight_bits == 8
    q = uniq.quantize_model(small_cnn(), 3, method="lsq", weight_granularity="tensor")
    r = uniq.conversion_report(q)
    assert list(r.weight_bits) == [8, 3, 3, 8] and (r.method == "lsq").all()


def test_overrides_and_weight_init(preresnet18):
    q = uniq.quantize_model(preresnet18, 2, overrides={"output": None,
                                                       "features.stage1.unit1.body.conv1.conv": 4})
    r = uniq.conversion_report(q).set_index("layer")
    assert r.loc["output"].weight_bits == 32
    assert r.loc["features.stage1.unit1.body.conv1.conv"].weight_bits == 4
    layer = q.get_submodule("features.stage1.unit2.body.conv1.conv")
    expected = optimal_step(2, "weight") * layer.weight.detach().flatten(1).std(dim=1)
    assert torch.allclose(layer.weight_quantizer.step.flatten(), expected)
    with pytest.raises(ValueError, match="not a conv/linear"):
        uniq.quantize_model(preresnet18, 2, overrides={"nope": 2})


def test_calibration_sets_steps_and_nothing_else():
    torch.manual_seed(0)
    model = small_cnn()
    model.train()(torch.randn(16, 3, 8, 8))  # non-trivial BN statistics
    q = uniq.quantize_model(model, 2, weight_granularity="tensor").train()
    batches = [torch.randn(8, 3, 8, 8) * (1 + i) for i in range(5)]
    before = {k: v.clone() for k, v in q.state_dict().items() if not k.endswith("step")
              and torch.is_tensor(v)}
    rng = torch.get_rng_state()
    uniq.calibrate(q, batches, num_batches=3)
    after = q.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert torch.equal(torch.get_rng_state(), rng)
    assert q.training
    # the step is the maximum over the first 3 batches of the per-batch Eq. 10 value
    acts = []
    hook = q[3].register_forward_pre_hook(lambda m, a: acts.append(a[0]))
    q.train()
    with torch.no_grad():
        for b in batches[:3]:
            # full-precision forward: switch quantizers to pass-through for the oracle
            for _, m in uniq.quantizers(q):
                m.observing = True
            q(b)
    hook.remove()
    for _, m in uniq.quantizers(q):
        m.observing, m.observed = False, None
    expected = max(optimal_step(2, "activation") * (2 * a.pow(2).mean()).sqrt() for a in acts)
    assert q[3].act_quantizer.step.item() == pytest.approx(expected.item(), rel=1e-5)


def test_forward_before_calibration_is_an_error():
    q = uniq.quantize_model(small_cnn(), 2)
    with pytest.raises(RuntimeError, match="calibrate"):
        q(torch.randn(2, 3, 8, 8))


def test_constant_init_needs_no_data():
    q = uniq.quantize_model(small_cnn(), 2, init=0.1, init_scope="all")
    assert all(m.step.eq(0.1).all() for _, m in uniq.quantizers(q))
    q(torch.randn(2, 3, 8, 8))
    # by default (Table 5's scope) the 8-bit first and last layers keep the MSE init
    low = uniq.quantize_model(small_cnn(), 2, init=0.1)
    roles = {n.rsplit(".", 1)[0]: low.get_submodule(n.rsplit(".", 1)[0]).role
             for n, _ in uniq.quantizers(low)}
    for name, m in uniq.quantizers(low):
        assert (m.init == 0.1) == (roles[name.rsplit(".", 1)[0]] not in ("first", "last")), name


def test_state_dict_round_trip_with_weights_only(tmp_path):
    q = uniq.calibrate(uniq.quantize_model(small_cnn(), 2), [torch.randn(4, 3, 8, 8)], 1)
    torch.save(q.state_dict(), tmp_path / "q.pt")
    fresh = uniq.quantize_model(small_cnn(), 2)
    fresh.load_state_dict(torch.load(tmp_path / "q.pt", weights_only=True))
    assert all(m.initialized for _, m in uniq.quantizers(fresh))
    q.eval(), fresh.eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(q(x), fresh(x))


def test_bad_inputs():
    with pytest.raises(ValueError, match="no nn.Conv2d or nn.Linear"):
        uniq.quantize_model(nn.Sequential(nn.ReLU()), 2)
    with pytest.raises(ValueError, match="1-bit"):
        uniq.quantize_model(small_cnn(), 1, method="lsq")
    for bits in (0, 9, 2.5, "2"):
        with pytest.raises(ValueError, match="bits"):
            uniq.quantize_model(small_cnn(), bits)
    zero = small_cnn()
    nn.init.zeros_(zero[3].weight)
    with pytest.raises(ValueError, match="all-zero"):
        uniq.quantize_model(zero, 2)
    q = uniq.quantize_model(small_cnn(), 2)
    with pytest.raises(ValueError, match="NaN"):
        uniq.calibrate(q, [torch.full((2, 3, 8, 8), float("nan"))], 1)
    with pytest.raises(ValueError, match="no batches"):
        uniq.calibrate(q, [], 1)
    with pytest.raises(ValueError, match="num_batches"):
        uniq.calibrate(q, [torch.randn(2, 3, 8, 8)], 0)
    with pytest.raises(ValueError, match="no quantizers"):
        uniq.calibrate(small_cnn(), [torch.randn(2, 3, 8, 8)], 1)
    with pytest.raises(ValueError, match="already quantized"):
        uniq.quantize_model(q, 2)
    with pytest.raises(ValueError, match="example_input"):
        uniq.quantize_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(7, 2)), 2)


def test_negative_input_found_in_calibration_switches_to_symmetric():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1))
    q = uniq.quantize_model(model, 2, example_input=torch.rand(1, 3, 4, 4))
    with pytest.warns(UserWarning, match="switching"):
        uniq.calibrate(q, [torch.randn(2, 3, 4, 4)], 1)
    assert q[0].act_quantizer.signed


def test_torchvision_resnet_binary_policy():
    import torchvision

    r = uniq.conversion_report(uniq.quantize_model(torchvision.models.resnet18(), 1))
    fp = r[r.weight_bits == 32]
    assert list(fp.layer) == ["conv1", "layer2.0.downsample.0", "layer3.0.downsample.0",
                              "layer4.0.downsample.0", "fc"]
    assert (r[r.role == "body"].weight_bits == 1).all()


def test_bfloat16_autocast_training_step_on_cpu():
    from uniq.models import preact_resnet
    from uniq.repro.train import train_step

    torch.manual_seed(0)
    q = uniq.calibrate(uniq.quantize_model(preact_resnet(8), 2), [torch.randn(8, 3, 32, 32)], 1)
    opt = torch.optim.SGD(q.parameters(), lr=0.0)
    loss, _ = train_step(q, opt, torch.randn(4, 3, 32, 32), torch.randint(100, (4,)), "bf16")
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    for _, quantizer in uniq.quantizers(q):
        grad = quantizer.step.grad
        assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all()
        assert grad.abs().sum() > 0


def test_layers_the_forward_pass_never_reaches_are_body_layers():
    class WithAuxHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = small_cnn()
            self.aux = nn.Linear(16, 3)  # registered last, never called

        def forward(self, x):
            return self.net(x)

    r = uniq.conversion_report(uniq.quantize_model(WithAuxHead(), 2)).set_index("layer")
    assert r.loc["net.12"].role == "last" and r.loc["net.12"].weight_bits == 8
    assert r.loc["aux"].role == "body" and r.loc["aux"].weight_bits == 2


# --- signed_inputs: "detect" (default) vs "unsigned" (the authors' all-unsigned activations) ---


@pytest.fixture(scope="module")
def mobilenetv2_small():
    """pytorchcv's mobilenetv2_w1 with a global average pool, so 64x64 inputs work."""
    from uniq.models import imagenet_model

    torch.manual_seed(0)
    model = imagenet_model("mobilenetv2_w1")
    model.features.final_pool = nn.AdaptiveAvgPool2d(1)
    return model


def _input_capture(model):
    """Forward pre-hooks that keep each quantized layer's raw input (before its quantizer)."""
    seen, handles = {}, []
    for name, m in model.named_modules():
        if getattr(m, "act_quantizer", None) is not None:
            def keep(_m, args, name=name):
                seen[name] = args[0].detach().clone()
            handles.append(m.register_forward_pre_hook(keep))
    return seen, handles


def test_mobilenetv2_signed_inputs_detect_vs_unsigned(mobilenetv2_small):
    probe = torch.randn(2, 3, 64, 64)
    detect = uniq.quantize_model(mobilenetv2_small, 4, weight_granularity="tensor",
                                 example_input=probe)
    unsigned = uniq.quantize_model(mobilenetv2_small, 4, weight_granularity="tensor",
                                   example_input=probe, signed_inputs="unsigned")
    rd = uniq.conversion_report(detect).set_index("layer")
    ru = uniq.conversion_report(unsigned).set_index("layer")
    assert rd.attrs["signed_inputs"] == "detect" and ru.attrs["signed_inputs"] == "unsigned"
    assert (rd.signed_inputs_mode == "detect").all() and (ru.signed_inputs_mode == "unsigned").all()
    # detect: the 1x1 expansion convs that read a linear-bottleneck output (every unit but the
    # first, whose input is the stem's ReLU6 output) and the final 1x1 block are signed
    bottleneck_readers = {n for n in rd.index if n.endswith("conv1.conv") and "stage1" not in n}
    bottleneck_readers.add("features.final_block.conv")
    detected = set(rd.index[rd.signed_input == True])  # noqa: E712
    assert detected == bottleneck_readers | {"features.init_block.conv"}
    # unsigned: only the image into the first layer keeps the symmetric quantizer, as the
    # authors' UniQInputConv2d does; everything else is Eq. 5
    assert set(ru.index[ru.signed_input == True]) == {"features.init_block.conv"}  # noqa: E712

    calib = [torch.randn(4, 3, 64, 64) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "unsigned" must never switch a quantizer to signed
        uniq.calibrate(unsigned, calib, 2)
    assert set(uniq.conversion_report(unsigned).query("signed_input == True").layer) == {
        "features.init_block.conv"}

    # Eq. 10 on the raw input, negatives included (the authors' statistic), max over batches:
    # recompute it from the full-precision model in training mode (calibration's setting).
    fp = copy.deepcopy(mobilenetv2_small).train()
    raw = {n: [] for n in bottleneck_readers}
    hooks = [fp.get_submodule(n).register_forward_pre_hook(
        lambda _m, a, n=n: raw[n].append(a[0].detach())) for n in bottleneck_readers]
    with torch.no_grad():
        for batch in calib:
            fp(batch)
    for h in hooks:
        h.remove()
    modules = dict(unsigned.named_modules())
    for name in bottleneck_readers:
        expected = max(optimal_step(4, "activation") * torch.sqrt(2 * x.pow(2).mean()).item()
                       for x in raw[name])
        assert modules[name].act_quantizer.step.item() == pytest.approx(expected, rel=1e-5)

    # Oracle for the forward pass: each such layer's quantized input is Eq. 5 applied to its
    # input clipped at zero, relu(x), with its own step.
    unsigned.eval()
    seen, handles = _input_capture(unsigned)
    with torch.no_grad():
        unsigned(torch.randn(2, 3, 64, 64))
    for h in handles:
        h.remove()
    for name in bottleneck_readers:
        x = seen[name].double()
        assert (x < 0).any()  # these inputs really are signed
        q = modules[name].act_quantizer
        d = q.step.detach().double()
        eq5 = torch.clamp(torch.relu(x) / d, 0, 15).round() * d
        assert torch.allclose(q(x.float()).double(), eq5, atol=1e-5 * d.item())
    # the symmetric quantizer in "detect" keeps the negative half that "unsigned" drops
    name = "features.stage2.unit2.conv1.conv"
    qd = dict(detect.named_modules())[name].act_quantizer
    qd.set_step(torch.tensor(0.1))
    assert (qd(seen[name]) < 0).any() and (modules[name].act_quantizer(seen[name]) >= 0).all()


def test_signed_inputs_is_validated_and_survives_a_state_dict(tmp_path):
    with pytest.raises(ValueError, match="signed_inputs must be one of.*'detect'.*'unsigned'"):
        uniq.quantize_model(small_cnn(), 2, signed_inputs="signed")
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1))
    q = uniq.quantize_model(model, 2, example_input=torch.rand(1, 3, 4, 4),
                            signed_inputs="unsigned")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        uniq.calibrate(q, [torch.randn(2, 3, 4, 4)], 1)
    # the first layer's input is symmetric; the third conv reads a signed (linear) output and
    # stays unsigned: its quantized input has no negative level
    assert q[0].act_quantizer.signed and not q[3].act_quantizer.signed
    assert (q[3].act_quantizer(torch.randn(50, 4, 2, 2)) >= 0).all()
    torch.save(q.state_dict(), tmp_path / "q.pt")
    fresh = uniq.quantize_model(model, 2, example_input=torch.rand(1, 3, 4, 4))
    fresh.load_state_dict(torch.load(tmp_path / "q.pt", weights_only=True))
    assert uniq.conversion_report(fresh).attrs["signed_inputs"] == "unsigned"
    assert not fresh[3].act_quantizer.signed


def test_first_last_weight_granularity_follows_the_authors_option(preresnet18):
    r = uniq.conversion_report(uniq.quantize_model(
        preresnet18, 4, first_last_weight_granularity="tensor")).set_index("role")
    assert (r.loc[["first", "last"]].granularity == "tensor").all()
    assert (r.loc[["body", "downsample"]].granularity == "channel").all()
    default = uniq.conversion_report(uniq.quantize_model(preresnet18, 4))
    assert (default.granularity == "channel").all()
    with pytest.raises(ValueError, match="first_last_weight_granularity must be one of"):
        uniq.quantize_model(preresnet18, 4, first_last_weight_granularity="kernel")
