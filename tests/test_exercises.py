"""The notebooks' exercise checkers: an unanswered exercise checks nothing, the right answer
(computed here independently, as ``docs/teaching.md`` gives it) is right, a wrong one is not."""

import math

import pytest
import torch
from scipy.stats import norm

from uniq import mse
from uniq.models import preact_resnet
from uniq.repro import exercises as EX


def test_an_unanswered_exercise_checks_nothing(capsys):
    assert EX.check_levels("1.1", None, bits=3, step=0.5) is None
    assert EX.check_lsq_quantizer("1.3", None) is None
    assert EX.check_skewness("4.1", None) is None
    assert "not answered yet" in capsys.readouterr().out


def test_levels_and_the_clipped_gradient():
    assert EX.check_levels("1.1", [(k - 3.5) * 0.5 for k in range(8)], bits=3, step=0.5)
    assert not EX.check_levels("1.1", [k * 0.5 for k in range(-4, 4)], bits=3, step=0.5)
    assert EX.check_outer_gradient("1.2", 3.5, bits=3)
    assert not EX.check_outer_gradient("1.2", 4, bits=3)


def test_an_lsq_quantizer_from_scratch_is_checked_on_values_and_gradients():
    def lsq(x, step, bits):
        u = torch.clamp(x / step, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        return ((u - u.detach()) + u.round().detach()) * step

    def no_ste(x, step, bits):  # right values, but round blocks the gradient
        return torch.clamp(x / step, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1).round() * step

    assert EX.check_lsq_quantizer("1.3", lsq)
    assert not EX.check_lsq_quantizer("1.3", no_ste)
    assert not EX.check_lsq_quantizer("1.3", lambda x, s, b: (x / s).round() * s)


def test_the_mse_exercises_against_an_independent_grid_search():
    z = torch.tensor(norm.ppf((torch.arange(200_000) + 0.5) / 200_000), dtype=torch.float64)
    steps = torch.linspace(0.5, 0.7, 201, dtype=torch.float64)
    errors = [float(((z - (torch.clamp((z / s + 3.5), 0, 7).round() - 3.5) * s) ** 2).mean())
              for s in steps]
    found = float(steps[min(range(len(errors)), key=errors.__getitem__)])
    assert EX.check_optimal_step("2.1", found, bits=3)
    assert not EX.check_optimal_step("2.1", found * 1.05, bits=3)
    gain = mse.optimal_sqnr_db(4, "weight") - mse.optimal_sqnr_db(3, "weight")
    assert 4 < gain < 6 and EX.check_sqnr_gain("2.2", gain, bits=3)
    assert EX.check_first_step("2.3", 0.996 * 0.05, bits=2, std=0.05)  # Table 1's 2-bit step


def test_policy_counts_of_the_cifar_resnet():
    net = preact_resnet(8)  # stem, 3 stages of one block (2 convs), 2 shortcuts, fc: 10
    assert EX.check_policy_count("3.1", 4, net, 1, "fp", weight_granularity="tensor")
    assert EX.check_policy_count("5.3", 8, net, 2, "low", weight_granularity="tensor", init=0.1)
    channels = 16 + 2 * 16 + 2 * 32 + 32 + 2 * 64 + 64 + 100  # stem, blocks, shortcuts, fc
    assert EX.check_policy_count("3.2", channels, net, 2, "steps", weight_granularity="channel")
    with pytest.raises(ValueError, match="unknown count"):
        EX.check_policy_count("x", 1, net, 2, "layers")


def test_init_skewness_and_holm():
    # LSQ starts at 0.92 (optimum 0.586): too wide, but 0.1 and 0.2 clip far more
    assert EX.check_closest_init("5.1", "LSQ", bits=3)
    assert not EX.check_closest_init("5.1", "0.2", bits=3)
    value = mse.optimal_step(2, "activation") * math.sqrt(8) / 0.1
    assert EX.check_activation_init("5.2", value, 2, 4.0, 0.1)

    def skewness(w):
        w = w.double()
        return float(((w - w.mean()) ** 3).mean() / w.std(unbiased=False) ** 3)

    assert EX.check_skewness("4.1", skewness)
    assert not EX.check_skewness("4.1", lambda w: float(((w - w.mean()) ** 3).mean()
                                                        / w.std() ** 3) * 1.01)
    assert EX.check_holm("8.2", [0, 1], [0.001, 0.004, 0.02, 0.03])
    assert not EX.check_holm("8.2", [0, 1, 2, 3], [0.001, 0.004, 0.02, 0.03])
