"""MSE-optimal step sizes (Section 4.2, Eq. 7-10, Table 1) and the step-size init rules.

The quantization distortion of a uniform quantizer is a sum over its cells of
``integral (x - level)^2 p(x) dx``. For a Gaussian density every such integral has a closed form
in the normal pdf ``phi`` and cdf ``Phi``, so D(step) and its derivative (Eq. 8) are exact
functions of the step; the optimum is the root of Eq. 8, found with scipy's ``brentq``.

* ``kind="weight"``: X ~ N(0, 1) through the symmetric quantizer (Eq. 3).
* ``kind="activation"``: X = max(Z, 0), Z ~ N(0, 1) through Eq. 5. The step is optimised on the
  continuous (half-normal) part; zeros are reproduced exactly and cost nothing. The SQNR is
  ``Var(X) / MSE`` over the whole rectified Gaussian, with ``Var(X) = 1/2 - 1/(2 pi)``: this
  definition reproduces the paper's column (signal energy ``E[X^2]`` instead of the variance
  gives about 1.7 dB more).
"""

from __future__ import annotations

import math
import numbers
from functools import cache

import numpy as np
import torch

from .functional import check_bits, lsq_range

KINDS = ("weight", "activation")
RECTIFIED_GAUSSIAN_VAR = 0.5 - 1 / (2 * math.pi)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be 'weight' or 'activation', got {kind!r}")
    return kind


def quantizer_cells(bits: int, kind: str, step: float) -> tuple[np.ndarray, ...]:
    """Cells ``[lo, hi)`` and level multipliers ``m`` (level = ``m * step``) of Eq. 3 or Eq. 5.

    For ``kind="activation"`` only the positive half-line is covered (the half-normal part).
    """
    n = 2 ** check_bits(bits)
    if _check_kind(kind) == "weight":
        m = np.arange(n) - (n - 1) / 2
    else:
        m = np.arange(n, dtype=float)
    edges = (m[:-1] + 0.5) * step
    lo = np.concatenate([[-np.inf if kind == "weight" else 0.0], edges])
    hi = np.concatenate([edges, [np.inf]])
    return lo, hi, m


def _density_weight(kind: str) -> float:
    # The half-normal density on x > 0 is 2 * phi(x).
    return 1.0 if kind == "weight" else 2.0


def _moments(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integrals of ``phi``, ``x phi`` and ``x^2 phi`` over each cell (closed forms)."""
    # scipy is imported where it is used: at the top it would cost every process that imports
    # uniq (each training worker) most of a second and about 100 MB
    from scipy.stats import norm

    cdf = norm.cdf(hi) - norm.cdf(lo)
    pdf_hi, pdf_lo = norm.pdf(hi), norm.pdf(lo)
    m1 = pdf_lo - pdf_hi
    # x * phi(x) -> 0 at +-inf; replace the infinite ends by 0 to avoid inf * 0.
    m2 = cdf - (np.nan_to_num(hi, posinf=0.0) * pdf_hi - np.nan_to_num(lo, neginf=0.0) * pdf_lo)
    return cdf, m1, m2


def distortion(step: float, bits: int, kind: str) -> float:
    """Mean squared quantization error ``D(step)`` of Eq. 7 for a unit-variance input.

    For activations it is the MSE of the half-normal part (the quantity that is minimised).
    """
    lo, hi, m = quantizer_cells(bits, kind, step)
    m0, m1, m2 = _moments(lo, hi)
    c = m * step
    return float(_density_weight(kind) * np.sum(m2 - 2 * c * m1 + c**2 * m0))


def distortion_derivative(step: float, bits: int, kind: str) -> float:
    """``dD/dstep`` (Eq. 8): ``-2 sum_k m_k integral_cell_k (x - m_k step) p(x) dx``.

    Boundary terms of the Leibniz rule cancel because the squared error is continuous at every
    decision level, which leaves the sum over cells.
    """
    lo, hi, m = quantizer_cells(bits, kind, step)
    m0, m1, _ = _moments(lo, hi)
    return float(-2 * _density_weight(kind) * np.sum(m * (m1 - m * step * m0)))


@cache
def _optimum(bits: int, kind: str) -> tuple[float, float]:
    from scipy.optimize import brentq, minimize_scalar

    bits, kind = check_bits(bits), _check_kind(kind)
    # A bounded search brackets the minimum; brentq then solves Eq. 8 = 0 to full precision.
    coarse = minimize_scalar(
        distortion, bounds=(1e-3, 4.0), args=(bits, kind), method="bounded",
        options={"xatol": 1e-6},
    ).x
    lo, hi = coarse * 0.9, coarse * 1.1
    step = brentq(distortion_derivative, lo, hi, args=(bits, kind), xtol=1e-12)
    return step, distortion(step, bits, kind)


def optimal_step(bits: int, kind: str) -> float:
    """Optimal unit step size ``Du_w`` (kind="weight") or ``Du_a`` (kind="activation"), Table 1."""
    return _optimum(bits, kind)[0]


def optimal_sqnr_db(bits: int, kind: str) -> float:
    """Optimal signal-to-quantization-noise ratio (dB) at the optimal step, Table 1."""
    _, mse = _optimum(bits, kind)
    if kind == "weight":
        return 10 * math.log10(1.0 / mse)
    # Whole rectified Gaussian: half the samples are zeros, reproduced exactly.
    return 10 * math.log10(RECTIFIED_GAUSSIAN_VAR / (0.5 * mse))


# --- Step-size init rules -------------------------------------------------------------------

INIT_RULES = ("mse", "lsq")


def check_init(init: object) -> str | float:
    """Validate an init rule: "mse" (Eq. 9/10), "lsq" (2 E|X| / sqrt(Qp)) or a constant > 0."""
    if isinstance(init, str):
        if init not in INIT_RULES:
            raise ValueError(f"init must be 'mse', 'lsq' or a positive number, got {init!r}")
        return init
    if isinstance(init, bool) or not isinstance(init, numbers.Real) or not init > 0:
        raise ValueError(f"init must be 'mse', 'lsq' or a positive number, got {init!r}")
    return float(init)


def step_statistic(
    x: torch.Tensor, bits: int, signed: bool, init: str, dims: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """The data-dependent init of a step size, reduced over ``dims`` (None: all elements).

    * ``init="mse"``, signed input: ``Du_w * std(X)`` (Eq. 9);
      unsigned input: ``Du_a * sqrt(2 E[X^2])`` (Eq. 10).
    * ``init="lsq"``: ``2 E|X| / sqrt(Qp)`` with LSQ's Qp (``max(Qp, 1)`` for a binary weight).
    An LSQ quantizer with ``init="mse"`` uses the same UniQ constants.
    """
    x = x.detach().float()
    reduce = dict(dim=dims, keepdim=True) if dims is not None else {}
    if init == "lsq":
        if signed:
            qp = max(2 ** (bits - 1) - 1, 1)
        else:
            qp = lsq_range(bits, signed=False)[1]
        return 2 * x.abs().mean(**reduce) / math.sqrt(qp)
    if init != "mse":
        raise ValueError(f"step_statistic needs init 'mse' or 'lsq', got {init!r}")
    if signed:
        std = x.std(**reduce) if x.numel() > 1 else x.abs()
        return optimal_step(bits, "weight") * std
    return optimal_step(bits, "activation") * torch.sqrt(2 * x.pow(2).mean(**reduce))


def sqnr_db(x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """Empirical SQNR in dB: ``Var(x) / mean((x - xq)^2)`` (the definition used for Table 1)."""
    x, xq = x.detach().float(), xq.detach().float()
    return 10 * torch.log10(x.var() / (x - xq).pow(2).mean().clamp_min(1e-30))
