"""Checkers for the notebooks' exercises: each takes the student's answer and prints whether it
is right. An unanswered exercise (``None``) prints a reminder and checks nothing, so a batch run
of the notebooks passes with every exercise unsolved. The answers are in ``docs/teaching.md``.

Every checker computes its reference with the package itself (``uniq.functional``, ``uniq.mse``,
``uniq.convert``), never from a stored number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..convert import calibrate, conversion_report, quantize_model
from ..functional import lsq_quantize, symmetric_quantize
from ..mse import distortion, optimal_sqnr_db, optimal_step
from .claims import holm


def _verdict(name: str, answer: object, right: bool, detail: str) -> bool | None:
    if answer is None:
        print(f"Exercise {name}: not answered yet.")
        return None
    print(f"Exercise {name}: {'right' if right else 'not right'}: {detail}")
    return right


def _close(answer: object, value: float, rel: float, abs_: float = 0.0) -> bool:
    try:
        return math.isclose(float(answer), value, rel_tol=rel, abs_tol=abs_)
    except (TypeError, ValueError):
        return False


# --- notebook 1: the quantizers -----------------------------------------------------------


def check_levels(name: str, levels: Sequence[float] | None, bits: int, step: float) -> bool | None:
    """The reconstruction levels of Eq. 3 at ``bits`` and ``step``, in any order."""
    n = 2**bits
    x = torch.linspace(-4 * n * step, 4 * n * step, 20_001, dtype=torch.float64)
    truth = sorted(symmetric_quantize(x, step, bits).unique().tolist())
    ok = levels is not None and len(levels) == len(truth) and all(
        math.isclose(float(a), b, abs_tol=1e-9) for a, b in zip(sorted(levels), truth, strict=True))
    return _verdict(name, levels, ok, f"Eq. 3 has {len(truth)} levels, "
                    f"from {truth[0]:g} to {truth[-1]:g}" if ok else "compare with Eq. 3's "
                    "levels (k - (N-1)/2) * step: how many are there?")


def check_outer_gradient(name: str, answer: float | None, bits: int) -> bool | None:
    """The step gradient of Eq. 3 for an input far above the clipping range."""
    x = torch.tensor([1e3], dtype=torch.float64)
    s = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(symmetric_quantize(x, s, bits).sum(), s)
    ok = _close(answer, float(g), 0, 1e-9)
    return _verdict(name, answer, ok, f"autograd gives {float(g):g} at {bits} bits"
                    if ok else "outside the range the output is the top level a = step (N-1)/2")


def check_lsq_quantizer(name: str, fn: Callable | None, trials: int = 3) -> bool | None:
    """A from-scratch LSQ quantizer ``fn(x, step, bits)`` (signed, two's complement) against
    ``uniq.functional.lsq_quantize``: equal outputs and equal gradients for x and the step."""
    if fn is None:
        return _verdict(name, None, False, "")
    g = torch.Generator().manual_seed(0)
    for bits in (2, 3, 4)[:trials]:
        x = torch.randn(1000, generator=g) * 2
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        sa, sb = (torch.tensor(0.7, requires_grad=True) for _ in range(2))
        try:
            mine = fn(xa, sa, bits)
        except Exception as err:  # a student's function may raise anything
            return _verdict(name, fn, False, f"your function raised {type(err).__name__}: {err}")
        ref = lsq_quantize(xb, sb, bits, signed=True)
        if not torch.equal(mine.detach(), ref.detach()):
            return _verdict(name, fn, False, f"the outputs differ at {bits} bits (levels: "
                            "round(clip(x / step, -Qn, Qp)) * step with Qn = 2**(bits-1))")
        mine.sum().backward()
        ref.sum().backward()
        if xa.grad is None or sa.grad is None or not torch.allclose(xa.grad, xb.grad) \
                or not torch.allclose(sa.grad, sb.grad, rtol=1e-4, atol=1e-4):
            return _verdict(name, fn, False, f"the outputs agree but the gradients differ at "
                            f"{bits} bits (use the detach trick for round only)")
    return _verdict(name, fn, True, "outputs and gradients equal uniq's LSQ at 2, 3 and 4 bits")


# --- notebook 2: the MSE init --------------------------------------------------------------


def check_optimal_step(name: str, answer: float | None, bits: int,
                       kind: str = "weight") -> bool | None:
    """A unit-variance optimal step, right to within 1%."""
    best = optimal_step(bits, kind)
    ok = _close(answer, best, 0.01)
    return _verdict(name, answer, ok, f"the optimum is {best:.4f}" if ok else
                    "not within 1% of the optimum; is your grid fine enough around the minimum?")


def check_sqnr_gain(name: str, answer: float | None, bits: int,
                    kind: str = "weight") -> bool | None:
    """The optimal SQNR gained from ``bits`` to ``bits + 1`` (dB), right to within 0.3 dB."""
    gain = optimal_sqnr_db(bits + 1, kind) - optimal_sqnr_db(bits, kind)
    ok = _close(answer, gain, 0, 0.3)
    return _verdict(name, answer, ok, f"{gain:.2f} dB" if ok else
                    "compare the two rows of Table 1")


def check_first_step(name: str, answer: float | None, bits: int, std: float) -> bool | None:
    """Eq. 9: a weight layer's first step, right to within 1%."""
    value = optimal_step(bits, "weight") * std
    ok = _close(answer, value, 0.01)
    return _verdict(name, answer, ok, f"{value:.4f}" if ok else "Eq. 9 scales the unit step")


# --- notebooks 3 and 7: the conversion policy ----------------------------------------------


def check_policy_count(name: str, answer: int | None, model, bits: int, what: str,
                       **convert) -> bool | None:
    """How many layers of ``model`` the conversion at ``bits`` leaves at ``what``: ``"fp"``
    (full precision), ``"low"`` (at ``bits``), ``"8"`` (8 bits), ``"signed"`` (signed inputs),
    or ``"steps"`` (weight step values in all)."""
    report = conversion_report(quantize_model(model, bits, **convert))
    if what == "steps":
        q = quantize_model(model, bits, **convert)
        truth = sum(int(m.weight_quantizer.step.numel()) for m in q.modules()
                    if getattr(m, "weight_quantizer", None) is not None)
    elif what == "fp":
        truth = int(report.weight_bits.isna().sum() + (report.weight_bits == 32).sum())
    elif what == "low":
        truth = int((report.weight_bits == bits).sum())
    elif what == "8":
        truth = int((report.weight_bits == 8).sum())
    elif what == "signed":
        truth = int(report.signed_input.fillna(False).astype(bool).sum())
    else:
        raise ValueError(f"unknown count {what!r}: fp, low, 8, signed or steps")
    ok = answer is not None and int(answer) == truth
    return _verdict(name, answer, ok, f"{truth}" if ok else "look at the conversion report")


# --- notebook 5: the init --------------------------------------------------------------------


def check_closest_init(name: str, answer: str | None, bits: int,
                       kind: str = "weight") -> bool | None:
    """Which of Table 5's non-MSE inits (``"0.1"``, ``"0.2"``, ``"LSQ"``) quantizes a unit
    Gaussian with the least error at ``bits``."""
    qp = max(2 ** (bits - 1) - 1, 1) if kind == "weight" else 2**bits - 1
    starts = {"0.1": 0.1, "0.2": 0.2, "LSQ": 2 * math.sqrt(2 / math.pi) / math.sqrt(qp)}
    errors = {k: distortion(v, bits, kind) for k, v in starts.items()}
    best = min(errors, key=errors.get)
    ok = answer is not None and str(answer).upper() == best.upper()
    return _verdict(name, answer, ok, ", ".join(
        f"{k}: {10 * math.log10(1 / e):.2f} dB" for k, e in errors.items()))


def check_activation_init(name: str, answer: float | None, bits: int, second_moment: float,
                          constant: float) -> bool | None:
    """Eq. 10's first activation step for an input with ``E[X^2] = second_moment``, as a
    multiple of a constant init (Table 5's 0.1 or 0.2), right to within 2%."""
    value = optimal_step(bits, "activation") * math.sqrt(2 * second_moment) / constant
    ok = _close(answer, value, 0.02)
    return _verdict(name, answer, ok, f"{value:.3g} times" if ok else
                    "Eq. 10: the unit optimum times sqrt(2 E[X^2]), over the constant")


def check_ratio(name: str, answer: float | None, value: float, rel: float = 0.02) -> bool | None:
    """A ratio or number the notebook computes, right to within ``rel``."""
    ok = _close(answer, value, rel)
    return _verdict(name, answer, ok, f"{value:.3g}" if ok else "recompute it step by step")


# --- notebook 4: training by hand, and Figure 3's statistic ------------------------------------


def check_skewness(name: str, fn: Callable | None) -> bool | None:
    """A from-scratch skewness (the third standardised moment) against ``scipy.stats.skew``,
    the definition the claims use, on skewed and symmetric samples."""
    if fn is None:
        return _verdict(name, None, False, "")
    from scipy.stats import skew

    g = torch.Generator().manual_seed(0)
    for w in (torch.randn(5000, generator=g), torch.rand(5000, generator=g) ** 3,
              -torch.rand(5000, generator=g) ** 2):
        try:
            mine = float(fn(w))
        except Exception as err:  # a student's function may raise anything
            return _verdict(name, fn, False, f"your function raised {type(err).__name__}: {err}")
        ref = float(skew(w.double().numpy()))
        if not math.isclose(mine, ref, rel_tol=1e-4, abs_tol=1e-6):
            return _verdict(name, fn, False, f"{mine:.4f} where scipy.stats.skew gives {ref:.4f} "
                            "(the biased moments: divide by n, not n - 1)")
    return _verdict(name, fn, True, "equal to scipy.stats.skew on three samples")


def check_initial_loss(name: str, answer: str | None, fp_model, batches, bits: tuple[int, int],
                       calib_batches: int, **convert) -> bool | None:
    """Whether the loss right after conversion and calibration is ``"lower"`` or ``"higher"``
    at ``bits[1]`` than at ``bits[0]`` (on one training batch)."""
    if answer is None:
        return _verdict(name, None, False, "")
    x, y = next(iter(batches))
    losses = []
    for b in bits:
        q = quantize_model(fp_model, b, **convert)
        calibrate(q, batches, calib_batches)
        q.eval()
        with torch.no_grad():
            losses.append(float(torch.nn.functional.cross_entropy(q(x), y)))
    truth = "lower" if losses[1] < losses[0] else "higher"
    ok = str(answer).lower() == truth
    return _verdict(name, answer, ok, f"loss {losses[0]:.3f} at {bits[0]} bits, {losses[1]:.3f} "
                    f"at {bits[1]} bits")


# --- notebook 8: many claims at once --------------------------------------------------------


def check_holm(name: str, answer: Sequence[int] | None, p_values: Sequence[float],
               alpha: float = 0.025) -> bool | None:
    """Which claims (0-based positions) keep "holds" after Holm's adjustment at ``alpha``."""
    adjusted = holm(torch.tensor(p_values, dtype=torch.float64).numpy())
    truth = sorted(int(i) for i, p in enumerate(adjusted) if p < alpha)
    ok = answer is not None and sorted(int(i) for i in answer) == truth
    return _verdict(name, answer, ok, f"adjusted p-values {[round(float(p), 4) for p in adjusted]}")
