"""Optimal step sizes and SQNR (Table 1) against the paper, Monte Carlo and finite differences."""

import math

import pytest
import torch

from uniq import mse
from uniq.functional import symmetric_quantize, unsigned_quantize
from uniq.repro.paper import table1


def test_table1_matches_the_paper():
    t = table1()
    assert list(t.bits) == [1, 2, 3, 4]
    for tag in ("w", "a"):
        assert (t[f"step_{tag}"] - t[f"step_{tag}_paper"]).abs().max() <= 0.001
        assert (t[f"sqnr_{tag}_db"] - t[f"sqnr_{tag}_db_paper"]).abs().max() <= 0.05


def test_binary_weight_closed_form():
    # For N=2 the optimum is D/2 = E|X| = sqrt(2/pi); MSE = 1 - 2/pi.
    assert mse.optimal_step(1, "weight") == pytest.approx(2 * math.sqrt(2 / math.pi), abs=1e-9)
    assert mse.optimal_sqnr_db(1, "weight") == pytest.approx(
        -10 * math.log10(1 - 2 / math.pi), abs=1e-9)


@pytest.mark.parametrize("kind", ["weight", "activation"])
@pytest.mark.parametrize("bits", [1, 2, 5])
def test_eq8_is_the_derivative_of_the_distortion(bits, kind):
    for step in (0.2, 0.7, 1.3):
        eps = 1e-6
        fd = (mse.distortion(step + eps, bits, kind) - mse.distortion(step - eps, bits, kind)) / (
            2 * eps)
        assert mse.distortion_derivative(step, bits, kind) == pytest.approx(fd, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6, 8])
def test_optimum_is_a_minimum_for_every_bit_width(bits):
    for kind in mse.KINDS:
        s = mse.optimal_step(bits, kind)
        d = mse.distortion(s, bits, kind)
        assert d < mse.distortion(s * 1.01, bits, kind)
        assert d < mse.distortion(s * 0.99, bits, kind)


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_monte_carlo_agrees_with_the_closed_form(bits):
    g = torch.Generator().manual_seed(bits)
    z = torch.randn(2_000_000, generator=g, dtype=torch.float64)
    sw = mse.optimal_step(bits, "weight")
    mc_w = (z - symmetric_quantize(z, torch.tensor(sw, dtype=torch.float64), bits)).pow(2).mean()
    assert 10 * math.log10(1 / mc_w.item()) == pytest.approx(
        mse.optimal_sqnr_db(bits, "weight"), abs=0.03)
    x = z.clamp_min(0)  # rectified Gaussian
    sa = mse.optimal_step(bits, "activation")
    xq = unsigned_quantize(x, torch.tensor(sa, dtype=torch.float64), bits)
    assert mse.sqnr_db(x, xq).item() == pytest.approx(mse.optimal_sqnr_db(bits, "activation"),
                                                      abs=0.03)


def test_step_statistics():
    w = torch.randn(4, 100, dtype=torch.float64) * torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    per_channel = mse.step_statistic(w, 2, True, "mse", dims=(1,))
    expected = mse.optimal_step(2, "weight") * w.std(dim=1)
    assert torch.allclose(per_channel.flatten().double(), expected)
    x = torch.rand(1000)
    assert mse.step_statistic(x, 3, False, "mse").item() == pytest.approx(
        mse.optimal_step(3, "activation") * math.sqrt(2 * x.pow(2).mean().item()), rel=1e-6)
    assert mse.step_statistic(x, 2, False, "lsq").item() == pytest.approx(
        2 * x.abs().mean().item() / math.sqrt(3), rel=1e-6)
    assert mse.step_statistic(w, 1, True, "lsq").item() == pytest.approx(
        2 * w.abs().mean().item(), rel=1e-6)  # max(Qp, 1) for binary weights


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        mse.optimal_step(2, "bias")
    with pytest.raises(ValueError, match="bits"):
        mse.optimal_step(0, "weight")
    for bad in ("median", -0.1, 0, True):
        with pytest.raises(ValueError, match="init"):
            mse.check_init(bad)
