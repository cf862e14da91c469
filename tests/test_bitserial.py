"""The bit-serial kernel (AND + popcount on packed words) against the int64 reference."""

import pytest
import torch

import uniq
import uniq.deploy.integer as I
from uniq.deploy import bitserial as B
from uniq.models import preact_resnet


def layer_of(w_bits, x_bits, shape, conv, seed=0, extreme=False):
    g = torch.Generator().manual_seed(seed)
    w_grid = I.IntegerGrid("uniq", w_bits, "symmetric", torch.tensor(0.5))
    x_grid = I.IntegerGrid("uniq", x_bits, "unsigned", torch.tensor(0.5))
    w_codes, x_max = w_grid.codes(), x_grid.levels
    if extreme:  # every code at one end of its grid
        w = w_codes[torch.randint(0, 2, shape, generator=g) * (len(w_codes) - 1)]
        x = torch.randint(0, 2, (2, shape[1], 9, 8), generator=g) * x_max
    else:
        w = w_codes[torch.randint(len(w_codes), shape, generator=g)]
        x = torch.randint(0, x_max + 1, (2, shape[1], 9, 8), generator=g)
    layer = I.IntegerLayer("layer", "conv", w, w_grid, x_grid, None,
                           **{k: (v, v) for k, v in conv.items()})
    return layer, x


CONVS = [dict(), dict(stride=2, padding=1), dict(padding=2, dilation=2)]


@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("w_bits,x_bits", [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_bitserial_conv_equals_the_int64_reference_exactly(w_bits, x_bits, conv, extreme):
    # 3 x 3 x 30 = 270 positions: several 64-bit words and a partial one
    layer, x = layer_of(w_bits, x_bits, (7, 30, 3, 3), conv, w_bits + x_bits, extreme)
    got = B.BitSerialConv2d(layer)(x)
    assert got.dtype == torch.int64
    assert torch.equal(got, I.integer_conv2d(x, layer.weight_codes, **layer.conv_args()))


def test_pack_rows_packs_64_bits_a_word():
    bits = torch.randint(0, 2, (3, 70), generator=torch.Generator().manual_seed(0)).numpy()
    words = B.pack_rows(bits)
    assert words.dtype.name == "uint64" and words.shape == (3, 2)
    assert (B.np.bitwise_count(words).sum(-1) == bits.sum(-1)).all()


def test_the_kernel_refuses_what_it_does_not_compute():
    layer, _ = layer_of(2, 2, (4, 3, 3, 3), {})
    with pytest.raises(ValueError, match="1 to 2 bits"):
        B.BitSerialConv2d(I.IntegerLayer(
            "l", "conv", layer.weight_codes,
            I.IntegerGrid("uniq", 4, "symmetric", torch.tensor(0.5)), layer.input_grid, None))
    with pytest.raises(ValueError, match="unsigned"):
        B.BitSerialConv2d(I.IntegerLayer("l", "conv", layer.weight_codes, layer.weight_grid,
                                         layer.weight_grid, None))


@pytest.mark.parametrize("bits", [1, 2])
def test_a_model_runs_its_low_bit_layers_bit_serially(bits):
    """Every 1-2-bit body convolution through the kernel: the same logits as the fake-quantized
    model (float32 tolerance: the accumulator is scaled once instead of summed in float)."""
    torch.manual_seed(0)
    fp = preact_resnet(8, 10)
    fp.train()(torch.randn(16, 3, 32, 32) * 2)
    x = torch.randn(8, 3, 32, 32)
    model = uniq.calibrate(uniq.quantize_model(fp.eval(), bits, example_input=x), [x], 1).eval()
    with torch.no_grad():
        want = model(x)
        with B.bitserial(model) as kernels:
            got = model(x)
        again = model(x)
    assert len(kernels) >= 6 and "conv1" not in kernels  # the 8-bit first layer stays
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert torch.equal(again, want)  # the model is restored
