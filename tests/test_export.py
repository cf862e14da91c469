"""Integer form, bit planes and XNOR-popcount (exact, int64), and the QDQ ONNX export checked
against PyTorch with onnxruntime."""

import importlib.util
import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import uniq
import uniq.deploy.integer as I
from uniq.deploy import graph as E
from uniq.functional import lsq_range
from uniq.models import IMAGENET_MODELS, imagenet_model, preact_resnet
from uniq.modules import QConv2d, QLinear, Quantizer
from uniq.repro.tasks import make_model

needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason='needs the export extra: pip install "uniq[export]"')

KINDS = [("uniq", True), ("uniq", False), ("lsq", True), ("lsq", False)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: a second intra-op thread only spins, and on a shared, busy CPU the
    spinning made this file several times slower. The results do not depend on it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def calibrated_quantizer(bits, method, signed, x, channels=None, ndim=4):
    q = Quantizer(bits, signed=signed, method=method, channels=channels, ndim=ndim)
    q.init_from(x)
    q.step.data *= 0.9  # some values outside the clip range too
    return q


def with_ties(x, q):
    """``x`` plus inputs that land exactly on rounding ties (k + 1/2 after scaling)."""
    g = I.integer_grid(q)
    half = g.levels / 2 if g.kind == "symmetric" else 0.0
    k = torch.arange(-3, g.levels + 3, dtype=torch.float32) + 0.5
    step = g.step.reshape(-1)[0]
    ties = ((k - half) * step).reshape(1, -1)
    return torch.cat([x.flatten(1), ties.expand(x.shape[0], -1)], 1).reshape(x.shape[0], -1)


# --- integer form: exact ----------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("method", ["uniq", "lsq"])
@pytest.mark.parametrize("bits", range(1, 9))
def test_weight_codes_dequantize_to_the_fake_quantized_weights_bit_for_bit(bits, method,
                                                                          granularity):
    if method == "lsq" and bits == 1:
        pytest.skip("LSQ has no 1-bit weight quantizer")
    g = torch.Generator().manual_seed(bits)
    for shape in [(6, 4, 3, 3), (5, 7)]:  # conv and linear weights
        w = torch.randn(shape, generator=g) * 0.1
        channels = shape[0] if granularity == "channel" else None
        q = calibrated_quantizer(bits, method, True, w, channels, len(shape))
        codes = I.to_codes(w, q)
        assert codes.dtype == torch.int64
        assert torch.equal(I.from_codes(codes, q), q(w))
        grid = I.integer_grid(q)
        assert set(codes.unique().tolist()) <= set(grid.codes().tolist())
        if method == "uniq":  # odd codes, scale D/2, no zero level
            assert bool((codes % 2 == 1).all()) and grid.scale.shape == q.step.shape
            assert torch.equal(grid.scale * 2, q.step.detach().clamp_min(1e-8))


@pytest.mark.parametrize("method,signed", KINDS)
@pytest.mark.parametrize("bits", range(1, 9))
def test_input_codes_dequantize_to_the_fake_quantized_inputs_bit_for_bit(bits, method, signed):
    if method == "lsq" and signed and bits == 1:
        pytest.skip("LSQ has no 1-bit signed quantizer")
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(bits))
    x = x if signed else x.relu()
    q = calibrated_quantizer(bits, method, signed, x)
    x = with_ties(x, q)
    assert torch.equal(I.from_codes(I.to_codes(x, q), q), q(x))


@pytest.mark.parametrize("bits", range(1, 9))
def test_grid_levels_are_the_papers_closed_forms(bits):
    n, step = 2**bits, torch.tensor(0.37)
    def grid(method, signed):
        return I.integer_grid(Quantizer(bits, signed=signed, method=method, init=0.37))

    sym = grid("uniq", True)
    expected = (torch.arange(n) - (n - 1) / 2) * step             # Eq. 3: (k - (N-1)/2) D
    assert torch.equal(sym.codes() * sym.scale, expected)
    assert torch.equal(sym.codes(), torch.arange(-(n - 1), n, 2))  # odd integers, no zero
    unsigned = grid("uniq", False)
    assert torch.equal(unsigned.codes() * unsigned.scale, torch.arange(n) * step)  # Eq. 5
    assert sym.container == (torch.int8 if bits < 8 else torch.int32)
    assert unsigned.container == torch.uint8
    if bits > 1:
        qn, qp = lsq_range(bits, True)
        lsq = grid("lsq", True)
        assert torch.equal(lsq.codes(), torch.arange(-qn, qp + 1)) and lsq.container == torch.int8


def test_uncalibrated_quantizer_has_no_integer_form():
    with pytest.raises(ValueError, match="calibrate"):
        I.integer_grid(Quantizer(2, signed=False))


# --- bit planes and integer convolution: exact, int64 ---------------------------------------


def grid_of(kind, bits, step=0.5):
    method = "lsq" if kind == "twos-complement" else "uniq"
    return I.IntegerGrid(method, bits, kind, torch.tensor(step))


def random_codes(grid, shape, seed):
    codes = grid.codes()
    return codes[torch.randint(len(codes), shape, generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize("kind", ["symmetric", "unsigned", "twos-complement"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_bit_planes_rebuild_every_code(kind, bits):
    if kind == "twos-complement" and bits == 1:
        pytest.skip("no 1-bit two's complement grid")
    grid = grid_of(kind, bits)
    codes = grid.codes()
    planes, weights = I.bit_planes(codes, grid)
    assert planes.shape == (bits, len(codes))
    allowed = {-1, 1} if kind == "symmetric" else {0, 1}
    assert set(planes.unique().tolist()) <= allowed
    assert torch.equal(I.from_bit_planes(planes, weights), codes)
    if kind == "symmetric":  # q = sum_i 2^i s_i
        assert torch.equal(weights, 2 ** torch.arange(bits))


def test_bit_planes_reject_codes_off_the_grid():
    with pytest.raises(ValueError, match="odd"):
        I.bit_planes(torch.tensor([0, 1]), grid_of("symmetric", 2))
    with pytest.raises(ValueError, match="range"):
        I.bit_planes(torch.tensor([4]), grid_of("unsigned", 2))


CONVS = [dict(), dict(stride=2, padding=1), dict(padding=2, dilation=2), dict(padding=1, groups=2)]


@pytest.mark.parametrize("conv", CONVS)
def test_integer_conv2d_equals_float64_conv_of_the_codes(conv):
    x = torch.randint(-255, 256, (2, 4, 7, 6), generator=torch.Generator().manual_seed(0))
    w = torch.randint(-255, 256, (6, 4 // conv.get("groups", 1), 3, 3))
    reference = F.conv2d(x.double(), w.double(), **conv)  # exact: |values| < 2^53
    assert torch.equal(I.integer_conv2d(x, w, **conv), reference.long())


@pytest.mark.parametrize("x_kind", ["unsigned", "symmetric", "twos-complement"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_bitplane_conv_equals_the_integer_conv_exactly(bits, x_kind):
    if x_kind == "twos-complement" and bits == 1:
        pytest.skip("no 1-bit two's complement grid")
    w_grid, x_grid = grid_of("symmetric", bits), grid_of(x_kind, bits)
    x = random_codes(x_grid, (2, 4, 6, 6), 10 + bits)
    for conv in CONVS:
        w = random_codes(w_grid, (6, 4 // conv.get("groups", 1), 3, 3), bits)
        assert torch.equal(I.bitplane_conv2d(x, x_grid, w, w_grid, **conv),
                           I.integer_conv2d(x, w, **conv))
        if x_kind != "twos-complement":  # every binary conv on packed bits (+-1 weight planes)
            assert torch.equal(I.bitplane_conv2d(x, x_grid, w, w_grid, **conv, popcount=True),
                               I.integer_conv2d(x, w, **conv))
    wl, xl = random_codes(w_grid, (5, 9), bits), random_codes(x_grid, (3, 9), bits)
    assert torch.equal(I.bitplane_linear(xl, x_grid, wl, w_grid), xl @ wl.t())


def test_pack_bits_and_popcount():
    bits = torch.randint(0, 2, (3, 21), generator=torch.Generator().manual_seed(0))
    packed = I.pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 3)
    assert torch.equal(I.popcount(packed), bits.sum(1))
    unpacked = (packed.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    assert torch.equal(unpacked.reshape(3, -1)[:, :21].long(), bits)


@pytest.mark.parametrize("x_kind", ["unsigned", "symmetric"])
def test_xnor_popcount_on_packed_bits_equals_the_integer_conv(x_kind):
    w_grid, x_grid = grid_of("symmetric", 1), grid_of(x_kind, 1)
    x = random_codes(x_grid, (2, 6, 7, 7), 1)
    for conv in CONVS:  # 27 or 54 weights per output: not a multiple of 8 bits
        w = random_codes(w_grid, (8, 6 // conv.get("groups", 1), 3, 3), 0)
        assert torch.equal(I.xnor_popcount_conv2d(x, x_grid, w, w_grid, **conv),
                           I.integer_conv2d(x, w, **conv))


def trained_like(depth=8, classes=10, seed=0):
    torch.manual_seed(seed)
    model = preact_resnet(depth, classes)
    model.train()(torch.randn(16, 3, 32, 32) * 2)  # non-trivial BatchNorm statistics
    return model.eval()


def converted(model, bits, method="uniq", granularity="channel", x=None, **kw):
    x = torch.randn(8, 3, 32, 32) if x is None else x
    q = uniq.quantize_model(model, bits, method, granularity, example_input=x, **kw)
    return uniq.calibrate(q, [x], 1).eval()


@pytest.mark.parametrize("bits", [1, 2])
def test_a_converted_layer_is_scale_times_integer_accumulator(bits):
    """Each quantized layer of a real model: the float64 conv of its fake-quantized operands
    equals ``scale_x * scale_w * (integer conv of the codes)`` (up to the float32 rounding of
    the dequantized values); at 1 bit, every quantized layer's integer accumulator also equals
    its XNOR/AND-popcount evaluation on packed bits exactly."""
    model = converted(trained_like(), bits)
    layers = I.integer_layers(model)
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: inputs.__setitem__(n, a[0]))
             for n, m in model.named_modules() if n in layers]
    with torch.no_grad():
        model(torch.randn(1, 3, 16, 16))
    for h in hooks:
        h.remove()
    modules = dict(model.named_modules())
    checked_xnor = 0
    for name, layer in layers.items():
        m = modules[name]
        codes = I.to_codes(inputs[name], layer.input_grid)
        acc = layer.integer_forward(codes)
        w_scale = layer.weight_grid.scale.double().reshape(1, -1, *([1] * (acc.dim() - 2)))
        got = acc.double() * layer.input_grid.scale.double() * w_scale
        with torch.no_grad():
            xq, wq = m.act_quantizer(inputs[name]).double(), m.quantized_weight().double()
        ref = F.linear(xq, wq) if isinstance(m, QLinear) else F.conv2d(xq, wq, **layer.conv_args())
        # float32 dequantized values carry one rounding each: float32 tolerance, not exact
        assert torch.allclose(got, ref, rtol=1e-6, atol=1e-6 * float(ref.abs().max()))
        if bits == 1:
            assert torch.equal(I.xnor_popcount_conv2d(codes, layer.input_grid, layer.weight_codes,
                                                      layer.weight_grid, **layer.conv_args()),
                               acc)
            checked_xnor += 1
    assert checked_xnor == (len(layers) if bits == 1 else 0) and len(layers) > 0


def test_grid_table_and_code_counts_of_a_converted_model():
    model = converted(trained_like(), 2)
    x = torch.randn(2, 3, 32, 32)
    table = I.grid_table(model, x)
    assert table.exact.all() and len(table) == 2 * len(I.integer_layers(model))
    body = table[(table.layer == "blocks.0.conv1") & (table.tensor == "weight")].iloc[0]
    assert body.codes == "-3, -1, 1, 3" and body.container == "int8"
    first = table[(table.layer == "conv1") & (table.tensor == "input")].iloc[0]
    assert first.grid == "symmetric" and first.container == "int32"  # 8-bit odd codes
    counts = I.code_counts(model, "blocks.0.conv1", x)
    weights = counts[counts.tensor == "weight"]
    assert weights.code.tolist() == [-3, -1, 1, 3]
    assert weights["count"].sum() == model.blocks[0].conv1.weight.numel()


def test_model_size_counts_packed_bits():
    fp = trained_like()
    floats = sum(t.numel() for t in list(fp.parameters()) + list(fp.buffers())
                 if t.is_floating_point())
    for bits in (1, 2, 4):
        model = uniq.quantize_model(fp, bits, init=0.1, example_input=torch.randn(1, 3, 32, 32))
        size = I.model_size_bytes(model)
        quantized = [m for m in model.modules()
                     if isinstance(m, (QConv2d, QLinear)) and m.weight_quantizer is not None]
        packed = sum(-(-m.weight.numel() * m.weight_quantizer.bits // 8) for m in quantized)
        steps = sum(q.step.numel() for _, q in uniq.quantizers(model))
        assert size["float32"] == 4 * floats and size["packed_weights"] == packed
        assert size["scales"] == 4 * steps
        assert size["quantized"] == packed + 4 * steps + 4 * floats - 4 * sum(
            m.weight.numel() for m in quantized)
    table = I.size_table(fp, [1, 2], torch.randn(1, 3, 32, 32))
    assert table.bits.tolist() == [1, 2] and (table.ratio > 1).all()


# --- ONNX export and onnxruntime parity -------------------------------------------------------


def assert_parity(model, path, x):
    """Logits to float tolerance and identical argmax once both sides see the same codes (the
    forced run), and codes that differ only at rounding ties. The free-running comparison is
    not asserted: one tie can cascade through a deep low-bit network (a random 2-bit
    MobileNetV2 turns one tie into differences in a third of its last layer's codes), and
    where ties fall depends on the CPU's float kernels."""
    r = E.check_parity(model, path, x)
    assert r["allclose"], r["max_abs_diff_forced"]
    assert r["top1_agree_forced"] == 1.0
    assert r["codes_differing"] <= 1e-4 * r["codes_total"]
    return r


def graph_facts(path):
    import onnx

    model = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = {n.input[0]: inits[n.input[0]] for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("DequantizeLinear", "QuantizeLinear")]
    ops = [n.op_type for n in model.graph.node]
    return model, weights, zero_points, ops


@needs_onnx
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_cifar_resnet_exports_and_onnxruntime_agrees(bits, tmp_path):
    model = converted(trained_like(), bits)
    path = E.export_onnx(model, tmp_path / "r8.onnx", torch.randn(1, 3, 32, 32))
    assert_parity(model, path, torch.randn(4, 3, 32, 32))
    proto, weights, zero_points, ops = graph_facts(path)
    assert proto.opset_import[0].version == E.OPSET
    assert all((z == 0).all() for z in zero_points)
    layers = I.integer_layers(model)
    assert len(weights) == len(layers)
    for name, layer in layers.items():  # the stored codes are the integer form's
        stored = weights[name.replace(".", "_") + "_weight_codes"]
        assert torch.equal(torch.from_numpy(stored.astype("int64")), layer.weight_codes)
        assert stored.dtype.name == {8: "int32"}.get(layer.bits, "int8")
    if bits == 1:  # first, last and downsampling layers stay float
        assert all(m.weight_quantizer is None for n, m in model.named_modules()
                   if getattr(m, "role", "body") != "body")
    assert ops.count("QuantizeLinear") + ops.count("Cast") == len(layers)
@needs_onnx
def test_lsq_exports_twos_complement_codes(tmp_path):
    model = converted(trained_like(), 2, "lsq")
    path = E.export_onnx(model, tmp_path / "lsq.onnx", torch.randn(1, 3, 32, 32))
    assert_parity(model, path, torch.randn(4, 3, 32, 32))
    _, weights, _, _ = graph_facts(path)
    body = weights["blocks_0_conv1_weight_codes"]
    assert body.dtype.name == "int8" and set(body.flatten().tolist()) <= {-2, -1, 0, 1}
    summary = E.onnx_summary(path)
    assert summary["opset"] == E.OPSET and summary["ops"]["DequantizeLinear"] == 2 * 9 + 2
    # What onnxruntime fuses in a QDQ graph is its choice; assert_parity above checks that the
    # optimised graph it ran computes what PyTorch computes.


# --- the integer graph: integer kernels, exact accumulators, parity ---------------------------


def accumulators(path, x):
    """Each integer layer's input codes (as onnxruntime computed them) and int32 accumulator."""
    import onnx

    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    taps, accs = json.loads(props["uniq.input_taps"]), json.loads(props["uniq.accumulators"])
    if not accs:
        return {}
    names = [taps[n] for n in accs] + list(accs.values())
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    outs = E.onnx_session(proto.SerializeToString(), 1, spin=False).run(names, {"input": x.numpy()})
    codes = dict(zip(accs, outs[:len(accs)], strict=True))
    return {n: (torch.from_numpy(codes[n]).long(), torch.from_numpy(a))
            for n, a in zip(accs, outs[len(accs):], strict=True)}


def assert_integer_graph(model, path, x, qdq_layers=()):
    """Parity, an integer kernel for every other quantized layer in onnxruntime's optimised
    graph, and every int32 accumulator equal to the int64 reference convolution of the codes
    (``torch.equal``: integer arithmetic has no tolerance)."""
    assert_parity(model, path, x)
    layers = I.integer_layers(model)
    found = E.integer_layers(path)
    assert found["missing"] == [] and sorted(found["qdq_layers"]) == sorted(qdq_layers)
    assert sorted(found["integer_layers"]) == sorted(set(layers) - set(qdq_layers))
    for name, (codes, acc) in accumulators(path, x).items():
        assert acc.dtype == torch.int32
        assert torch.equal(acc.long(), layers[name].integer_forward(codes))
    return found


@needs_onnx
@pytest.mark.parametrize("bits,nine_bit,granularity", [
    (1, "float", "channel"), (2, "float", "channel"), (2, "split", "tensor"),
    (4, "split", "channel"), (8, "float", "channel"), (8, "split", "channel")])
def test_integer_graph_runs_integer_kernels_exactly(bits, nine_bit, granularity, tmp_path):
    model = converted(trained_like(), bits, granularity=granularity)
    path = E.export_onnx(model, tmp_path / "int.onnx", torch.randn(1, 3, 32, 32), integer=True,
                         nine_bit=nine_bit)
    nine = [n for n, layer in I.integer_layers(model).items()
            if torch.int32 in (layer.weight_grid.container, layer.input_grid.container)]
    # 9-bit odd codes: the first and last layers (8 bits), at 8 bits every layer
    assert len(nine) == {1: 0, 8: len(I.integer_layers(model))}.get(bits, 2)
    found = assert_integer_graph(model, path, torch.randn(3, 3, 32, 32),
                                 nine if nine_bit == "float" else ())
    import onnx

    proto = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    ops = [n.op_type for n in proto.graph.node]
    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert ops.count("Conv") == len(convs - set(found["integer_layers"]))  # float ones only
    for name, layer in I.integer_layers(model).items():  # uint8 codes + 128, zero point 128
        if name in nine:
            continue
        stored = inits[name.replace(".", "_") + "_weight_codes"]
        assert stored.dtype.name == "uint8"
        assert torch.equal(torch.from_numpy(stored.astype("int64")) - 128,
                           layer.weight_codes.t() if layer.kind == "linear"
                           else layer.weight_codes)


@needs_onnx
def test_integer_graph_of_lsq_and_of_signed_inputs(tmp_path):
    lsq = converted(trained_like(), 3, "lsq")  # two's-complement weights
    path = E.export_onnx(lsq, tmp_path / "lsq.onnx", torch.randn(1, 3, 32, 32), integer=True,
                         nine_bit="split")
    assert_integer_graph(lsq, path, torch.randn(2, 3, 32, 32))
    run = imagenet_run_dir(tmp_path, "mobilenetv2_w1", 2)  # odd-code (signed) inputs, groups
    mobilenet = E.load_run_model(run)
    path = E.export_onnx(mobilenet, tmp_path / "m.onnx", torch.randn(1, 3, 32, 32), integer=True,
                         nine_bit="split")
    assert_integer_graph(mobilenet, path, torch.randn(2, 3, 32, 32))


@needs_onnx
def test_integer_graph_rejects_an_unknown_nine_bit_choice(tmp_path):
    with pytest.raises(ValueError, match="nine_bit"):
        E.build_onnx(converted(trained_like(), 2), torch.randn(1, 3, 32, 32), integer=True,
                     nine_bit="int16")
    qdq = E.export_onnx(converted(trained_like(), 2), tmp_path / "q.onnx",
                        torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="not an integer graph"):
        E.integer_layers(qdq)


def imagenet_run_dir(tmp_path, arch, bits):
    """A finished ImageNet run directory as the engine writes it (config.json, model.pt)."""
    from uniq.repro.config import ImageNetConfig

    cfg = ImageNetConfig(arch=arch, bits=bits, pretrained="none", image_size=32, init="lsq",
                         runs_dir=str(tmp_path / "runs")).resolved()
    torch.manual_seed(0)
    model = make_model(cfg, 10)
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    uniq.calibrate(model, [torch.randn(2, 3, 32, 32)], 1)
    return write_run(cfg, model)


def write_run(cfg, model):
    """The files of a finished run as the engine writes them (config.json, result.json,
    model.pt), without the training."""
    run = cfg.run_dir()
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": cfg.task, "config": cfg.to_dict(),
                                                 "data": {"num_classes": 10}}))
    (run / "result.json").write_text(json.dumps({"num_classes": 10, "top1_final": 0.0}))
    torch.save(model.state_dict(), run / "model.pt")
    return run


@needs_onnx
@pytest.mark.parametrize("arch", ["mobilenetv2_w1"])
def test_imagenet_run_loads_exports_and_onnxruntime_agrees(arch, tmp_path):
    run = imagenet_run_dir(tmp_path, arch, 2)
    model = E.load_run_model(run)
    assert uniq.conversion_report(model).signed_input.any()  # odd-code inputs are exercised
    path = E.export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 3, 32, 32))
    assert_parity(model, path, torch.randn(2, 3, 32, 32))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("UNIQ_EXPORT_ALL"),
                    reason="UNIQ_EXPORT_ALL=1 runs every ImageNet model at 1-4, 8 bits (minutes)")
@needs_onnx
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("arch", IMAGENET_MODELS)
def test_every_imagenet_model_at_every_bit_width(arch, bits, tmp_path):
    from uniq.models import adaptive_pooling

    torch.manual_seed(0)
    model = adaptive_pooling(imagenet_model(arch))
    granularity = "tensor" if arch.startswith("mobilenet") else "channel"
    model = converted(model, bits, "uniq", granularity, x=torch.randn(4, 3, 64, 64), init="lsq")
    path = E.export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 3, 64, 64))
    assert_parity(model, path, torch.randn(4, 3, 64, 64))
    path = E.export_onnx(model, tmp_path / "i.onnx", torch.randn(1, 3, 64, 64), integer=True,
                         nine_bit="split")
    assert_integer_graph(model, path, torch.randn(2, 3, 64, 64))


# --- bad input and the command line -----------------------------------------------------------


class WithGroupNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.norm(self.conv(x)).mean((2, 3)))


@needs_onnx
def test_bad_models_give_clear_errors_and_write_nothing(tmp_path):
    out = tmp_path / "m.onnx"
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="quantize_model"):
        E.export_onnx(trained_like(), out, x)
    uncalibrated = uniq.quantize_model(trained_like(), 2, example_input=x)
    with pytest.raises(ValueError, match="calibrate"):
        E.export_onnx(uncalibrated, out, x)
    odd = uniq.calibrate(uniq.quantize_model(WithGroupNorm(), 4, example_input=x), [x], 1)
    with pytest.raises(ValueError, match="unsupported"):
        E.export_onnx(odd, out, x)
    assert list(tmp_path.iterdir()) == []


def test_missing_packages_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r'pip install "uniq\[export\]"'):
        E.build_onnx(converted(trained_like(), 2), torch.randn(1, 3, 32, 32))


def cifar_run_dir(tmp_path, bits=2):
    """A finished CIFAR run directory as the engine writes it, without the training."""
    from uniq.repro.config import CifarConfig

    cfg = CifarConfig(dataset="synthetic", depth=8, bits=bits, epochs=1,
                      runs_dir=str(tmp_path / "runs")).resolved()
    model = make_model(cfg, 10)
    uniq.calibrate(model, [torch.randn(8, 3, 32, 32)], 1)
    return write_run(cfg, model)
@needs_onnx
def test_cli_exports_a_cifar_run_and_refuses_bad_run_dirs(tmp_path, capsys):
    from uniq.repro.cli import main

    run = cifar_run_dir(tmp_path)
    out = tmp_path / "out" / "model.onnx"
    assert main(["export", str(run), "-o", str(out), "--batch", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.is_file() and report["allclose"] and report["top1_agree_forced"] == 1.0
    assert report["opset"] == E.OPSET and report["input"] == [4, 3, 32, 32]

    integer = tmp_path / "out" / "int.onnx"
    assert main(["export", str(run), "-o", str(integer), "--batch", "2", "--integer"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["form"] == "integer" and report["allclose"] and report["missing"] == []
    assert report["qdq_layers"] == ["conv1", "fc"]  # 8-bit odd codes (9 bits) stay QDQ

    missing = tmp_path / "nothing.onnx"
    assert main(["export", str(tmp_path / "no-such-run"), "-o", str(missing)]) == 2
    assert "not found" in capsys.readouterr().err
    (run / "model.pt").rename(run / "moved.pt")
    assert main(["export", str(run), "-o", str(missing)]) == 2
    assert "model.pt" in capsys.readouterr().err and not missing.exists()


@needs_onnx
def test_latency_table_times_the_float32_and_integer_graphs_of_one_network(tmp_path):
    """The float32 file is the float model (PyTorch's logits to float tolerance); the table has
    one row per batch and thread count, and the speedup is the ratio of its two columns. No
    timing is asserted: speed depends on the machine."""
    from uniq.deploy import latency as L

    fp = trained_like()
    x = torch.randn(2, 3, 32, 32)
    path = L.export_float_onnx(fp, tmp_path / "fp.onnx", x)
    got = E.onnx_session(path, 1, spin=False).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = fp(x).numpy()
    assert torch.allclose(torch.from_numpy(got), torch.from_numpy(want), rtol=1e-4,
                          atol=1e-5 * float(abs(want).max()))
    graphs = {"float32": path,
              "integer": E.export_onnx(converted(fp, 2), tmp_path / "int.onnx", x, integer=True)}
    table = L.latency_table(graphs, 32, batches=(1, 2), threads=(1,), repeats=2)
    assert table[["batch", "threads"]].values.tolist() == [[1, 1], [2, 1]]
    assert (table.integer_speedup == table.float32_ms / table.integer_ms).all()
    assert (table[["float32_ms", "integer_ms"]] > 0).all().all()
    assert "logical CPUs" in L.cpu_name()


def _saved_run(tmp_path, task: str, **fields):
    """A run directory holding only the config.json of a config (what ``Run.load`` reads)."""
    from uniq.repro.config import config_class

    cfg = config_class(task)(runs_dir=str(tmp_path), **fields)
    cfg.run_dir().mkdir(parents=True)
    (cfg.run_dir() / "config.json").write_text(json.dumps(
        {"task": task, "config": cfg.to_dict(), "key": cfg.key(), "key_scheme": 2}))
    return cfg.run_dir()


@pytest.mark.parametrize("task, fields, size", [
    ("cifar", {"dataset": "cifar100"}, 32), ("cifar", {"dataset": "synthetic"}, 32),
    ("cifar", {"dataset": "finegrain"}, 16),
    ("imagenet", {"image_size": 224, "pretrained": "none"}, 224),
    ("imagenet", {"image_size": 64, "pretrained": "none"}, 64)])
def test_a_run_is_exported_at_the_image_size_it_was_trained_at(tmp_path, task, fields, size):
    from uniq.deploy.graph import run_input_size

    assert run_input_size(_saved_run(tmp_path, task, **fields)) == size


@pytest.mark.parametrize("dataset", ["synthetic", "finegrain"])
def test_the_export_size_of_generated_data_is_the_datas_own(tmp_path, dataset):
    from uniq.deploy.graph import run_input_size
    from uniq.repro.config import CifarConfig
    from uniq.repro.data import finegrain, synthetic_cifar

    cfg = CifarConfig(dataset=dataset, runs_dir=str(tmp_path))
    cfg.run_dir().mkdir(parents=True)
    (cfg.run_dir() / "config.json").write_text(json.dumps(
        {"task": "cifar", "config": cfg.to_dict(), "key": cfg.key(), "key_scheme": 2}))
    make = {"synthetic": synthetic_cifar, "finegrain": finegrain}[dataset]
    assert run_input_size(cfg.run_dir()) == make(2).images.shape[-1]
