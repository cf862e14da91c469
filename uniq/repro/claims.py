"""The paper's claims as testable statements, decided over seeds with confidence intervals.

``data/claims.csv`` lists each claim of the paper (UniQ beats LSQ at 4 bits, MSE init beats the
constant inits, warm-up beats no warm-up, ...) as a comparison between named experiments on one
metric. :func:`evaluate_claims` takes the measured values (one per experiment, seed and metric),
computes the effect ``mean(a) - mean(b)`` with its 95% confidence interval (Welch's t for two
samples, Student's one-sample t when ``b`` is empty) and gives a verdict:

* ``holds``: the interval lies entirely on the claimed side (above 0 for ``greater``, below 0 for
  ``less``, inside ``[-margin, margin]`` for ``match``);
* ``contradicted``: the interval lies entirely on the other side (below 0 for ``greater``,
  above 0 for ``less``, entirely outside ``[-margin, margin]`` for ``match``);
* ``inconclusive``: the interval straddles a boundary (more seeds are needed), or it cannot be
  computed (``inconclusive (n=1)``: one seed on a side; ``inconclusive (zero variance)``);
* ``not run``: an experiment of the claim is missing or partly missing; the note gives the
  commands that train it;
* ``not comparable``: the runs of an experiment differ in more than the seed (say a 90-epoch
  and a 1-epoch run), so they are not pooled; the note names the difference.

Many claims are tested at once: ``verdict_holm`` repeats each verdict with the ``holds`` ones
kept only when their Holm-adjusted p-value (``p_holm``, family: every claim with a p-value) is
below ``(1 - confidence) / 2``; :func:`chance_holds` is how many ``holds`` chance alone gives.

The module needs numpy, scipy and pandas only (no torch), so it is cheap to import; the claims'
chart is ``uniq.repro.figures.plot_claims``.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special, stats

from .config import PROFILE_NAMES
from .paths import REPO

CLAIMS_PATH = REPO / "data" / "claims.csv"

REQUIRED_COLUMNS = ("id", "source", "statement", "metric", "a", "b", "direction", "margin",
                    "paper_effect", "comparable_profiles")
REQUIRED_FIELDS = ("id", "source", "statement", "metric", "a", "direction")
DIRECTIONS = ("greater", "less", "match")
# Profile names of uniq.repro.study.PROFILES (not imported: that module pulls in torch).
KEY_SEPARATOR = ";"
SEED_MARGIN = "2sd"
"""A ``match`` margin taken from the data: twice the seed-to-seed standard deviation of the
metric, pooled over every experiment with two or more seeds (:func:`pooled_seed_sd`): the
difference two runs of one setting show by chance."""

RESULT_COLUMNS = ["id", "source", "statement", "metric", "a", "b", "direction", "margin",
                  "margin_from",
                  "n_a", "n_b", "mean_a", "mean_b", "effect", "ci_low", "ci_high", "p",
                  "paper_effect", "verdict", "p_holm", "verdict_holm", "comparable_to_paper",
                  "note"]


# --------------------------------------------------------------------------- claims file

def _bad(path: Path, where: str, problem: str, fix: str) -> ValueError:
    return ValueError(f"{path}: {where}: {problem}. Fix: {fix}")


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def split_keys(field: str) -> list[str]:
    """Experiment keys of one side of a claim (``"k1;k2"`` pools the seeds of both)."""
    return [k.strip() for k in str(field).split(KEY_SEPARATOR) if k.strip()]


def load_claims(path: str | Path | None = None) -> pd.DataFrame:
    """Read and validate a claims file (default ``data/claims.csv``).

    Columns: ``id`` (unique), ``source`` (e.g. "Table 4"), ``statement`` (human text),
    ``metric``, ``a`` and ``b`` (experiment keys; several keys joined by ``;`` pool their seeds;
    ``b`` empty means a one-sample claim about ``mean(a)`` against 0), ``direction``
    (``greater``: a > b, ``less``: a < b, ``match``: |a - b| < margin), ``margin`` (metric units,
    required for ``match`` and only there), ``paper_effect`` (the paper's a - b, or empty) and
    ``comparable_profiles`` (profiles whose verdict may be compared with the paper, ``;``-joined).

    Any problem raises a ValueError that names the file, the row (line and claim id) and the fix.
    Returns the claims with ``margin`` and ``paper_effect`` as floats (NaN when empty).
    """
    path = Path(path) if path is not None else CLAIMS_PATH
    if not path.exists():
        raise FileNotFoundError(
            f"claims file {path} does not exist; pass the path of a claims CSV or restore the "
            "repository's data/claims.csv (git checkout data/claims.csv)")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    columns = [c.strip() for c in raw.columns]
    raw.columns = columns
    unknown = [c for c in columns if c not in REQUIRED_COLUMNS]
    if unknown:
        hints = [f"{c!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(
            c, REQUIRED_COLUMNS, n=1)) else repr(c) for c in unknown]
        raise _bad(path, "header", f"unknown column(s) {', '.join(hints)}",
                   f"use exactly the columns {', '.join(REQUIRED_COLUMNS)}")
    absent = [c for c in REQUIRED_COLUMNS if c not in columns]
    if absent:
        raise _bad(path, "header", f"missing column(s) {', '.join(absent)}",
                   f"add them (they may be empty where allowed): {', '.join(REQUIRED_COLUMNS)}")
    raw = raw.apply(lambda col: col.str.strip())
    if raw.empty:
        raise _bad(path, "body", "no claims", "add at least one claim row below the header")

    seen: dict[str, int] = {}
    margins, paper_effects, sources = [], [], []
    for i, row in raw.iterrows():
        line = int(i) + 2  # 1-based, after the header
        where = f"line {line} (claim {row['id']!r})" if row["id"] else f"line {line}"
        for field in REQUIRED_FIELDS:
            if not row[field]:
                raise _bad(path, where, f"required field {field!r} is empty",
                           f"fill in {field!r}" + (
                               f" (one of {', '.join(DIRECTIONS)})" if field == "direction"
                               else ""))
        if row["id"] in seen:
            raise _bad(path, where, f"duplicate id {row['id']!r} (also on line {seen[row['id']]})",
                       "give every claim its own id")
        seen[row["id"]] = line
        direction = row["direction"]
        if direction not in DIRECTIONS:
            raise _bad(path, where, f"unknown direction {direction!r}",
                       f"use one of {', '.join(DIRECTIONS)} (greater: a > b, less: a < b, "
                       "match: |a - b| < margin)")
        keys_a, keys_b = split_keys(row["a"]), split_keys(row["b"])
        for key in keys_a + keys_b:
            if any(ch.isspace() for ch in key):
                raise _bad(path, where, f"experiment key {key!r} contains white space",
                           "write keys like t4/uniq/4b; join several keys with ';'")
        if set(keys_a) & set(keys_b):
            raise _bad(path, where, f"experiment(s) {sorted(set(keys_a) & set(keys_b))} are on "
                       "both sides", "a claim compares different experiments; fix 'a' or 'b'")
        from_data = row["margin"] == SEED_MARGIN
        margin = 1.0 if from_data else _number(row["margin"]) if row["margin"] else None
        if row["margin"] and margin is None:
            raise _bad(path, where, f"margin {row['margin']!r} is not a finite number",
                       f"write the margin in the metric's units, e.g. 0.5, or {SEED_MARGIN} "
                       "(twice the seed-to-seed sd of the data)")
        if direction == "match":
            if margin is None:
                raise _bad(path, where, "a 'match' claim needs a margin",
                           "set margin to the largest |a - b| (metric units) that still counts "
                           "as a match, e.g. 0.5")
            if margin <= 0:
                raise _bad(path, where, f"margin {margin} is not positive",
                           "use a positive margin")
        elif margin is not None:
            raise _bad(path, where, f"margin {row['margin']!r} given for a {direction!r} claim",
                       "leave margin empty; it is used by 'match' claims only")
        paper_effect = _number(row["paper_effect"]) if row["paper_effect"] else None
        if row["paper_effect"] and paper_effect is None:
            raise _bad(path, where, f"paper_effect {row['paper_effect']!r} is not a number",
                       "write the paper's a - b as a number, or leave it empty")
        profiles = split_keys(row["comparable_profiles"])
        wrong = [p for p in profiles if p not in PROFILE_NAMES]
        if wrong:
            raise _bad(path, where, f"unknown profile(s) {wrong} in comparable_profiles",
                       f"use profile names from {', '.join(PROFILE_NAMES)} joined by ';'")
        margins.append(np.nan if margin is None or from_data else margin)
        sources.append("data (2 x seed sd)" if from_data else "claims file" if margin else "")
        paper_effects.append(np.nan if paper_effect is None else paper_effect)
    claims = raw.copy()
    claims["margin"] = margins
    claims["margin_from"] = sources
    claims["paper_effect"] = paper_effects
    return claims.reset_index(drop=True)


# --------------------------------------------------------------------------- statistics

def _clean(x) -> np.ndarray:
    if x is None:
        return np.empty(0)
    return np.asarray(x, dtype=np.float64).ravel()


def effect_interval(a, b=None, direction: str = "greater", confidence: float = 0.95,
                    margin: float | None = None) -> dict:
    """Effect ``mean(a) - mean(b)`` (or ``mean(a)`` when ``b`` is None or empty) with its
    two-sided ``confidence`` interval.

    Two samples: Welch's t (``scipy.stats.ttest_ind(equal_var=False)``): no assumption of equal
    seed-to-seed spread, Welch-Satterthwaite degrees of freedom. One sample: Student's t on ``a``
    against 0. With fewer than 2 values on a side, or zero spread, the interval is undefined and
    ``low``, ``high`` and ``p`` are NaN.

    ``p`` is the one-sided p-value of the claimed ``direction`` (``greater``: H0 effect <= 0;
    ``less``: H0 effect >= 0) and, for ``match``, the two-one-sided-tests (TOST) p-value against
    ``[-margin, margin]``. The verdict uses the two-sided interval, so a claim holds exactly when
    ``p < (1 - confidence) / 2``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is unknown; use one of {', '.join(DIRECTIONS)}")
    if direction == "match" and (margin is None or not margin > 0):
        raise ValueError("a 'match' comparison needs a positive margin (metric units)")
    a, b = _clean(a), _clean(b)
    two_sample = b.size > 0
    out = {"effect": np.nan, "low": np.nan, "high": np.nan, "p": np.nan,
           "n_a": int(a.size), "n_b": int(b.size),
           "test": "Welch's t" if two_sample else "one-sample t"}
    if a.size == 0:
        return out
    out["effect"] = float(a.mean() - (b.mean() if two_sample else 0.0))
    if a.size < 2 or (two_sample and b.size < 2):
        return out
    spread = a.var(ddof=1) / a.size + (b.var(ddof=1) / b.size if two_sample else 0.0)
    if not spread > 0:
        return out

    def test(shift: float, alternative: str):
        # scipy warns of "catastrophic cancellation" when the values of a side nearly agree
        # (e.g. two seeds with the same top-1); the interval it returns is still right.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if two_sample:
                return stats.ttest_ind(a, b + shift, equal_var=False, alternative=alternative)
            return stats.ttest_1samp(a, shift, alternative=alternative)

    ci = test(0.0, "two-sided").confidence_interval(confidence_level=confidence)
    out["low"], out["high"] = float(ci.low), float(ci.high)
    if direction == "match":
        out["p"] = float(max(test(-margin, "greater").pvalue, test(margin, "less").pvalue))
    else:
        out["p"] = float(test(0.0, direction).pvalue)
    return out


def verdict(low: float, high: float, direction: str, margin: float | None = None,
            n_a: int | None = None, n_b: int | None = None) -> str:
    """holds / contradicted / inconclusive for an interval ``[low, high]`` of ``a - b``.

    ``greater``: holds if ``low > 0``, contradicted if ``high < 0``; ``less`` the mirror image;
    ``match``: holds if ``-margin < low`` and ``high < margin``, contradicted if the interval lies
    entirely outside ``[-margin, margin]``. Anything else is inconclusive; a side with one value
    gives ``inconclusive (n=1)`` (``n_b=0`` means a one-sample claim), an undefined interval
    otherwise ``inconclusive (zero variance)``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is unknown; use one of {', '.join(DIRECTIONS)}")
    if (n_a is not None and n_a < 2) or (n_b is not None and n_b == 1):
        return "inconclusive (n=1)"
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive (zero variance)"
    if direction == "greater":
        return "holds" if low > 0 else "contradicted" if high < 0 else "inconclusive"
    if direction == "less":
        return "holds" if high < 0 else "contradicted" if low > 0 else "inconclusive"
    if margin is None or not margin > 0:
        raise ValueError("a 'match' verdict needs a positive margin (metric units)")
    if -margin < low and high < margin:
        return "holds"
    if low > margin or high < -margin:
        return "contradicted"
    return "inconclusive"


def students_power(n: int, effect: float, sd: float, alpha: float = 0.05) -> float:
    """Power of the two-sided equal-variance (Student) t-test at level ``alpha``, ``n`` seeds per
    side, true difference ``effect``, seed-to-seed ``sd``: ``P(|T| > t_crit)`` for ``T``
    noncentral t with ``2n - 2`` degrees of freedom and noncentrality
    ``effect / (sd * sqrt(2/n))`` (the textbook formula behind Cohen's tables)."""
    if n < 2:
        return float("nan")
    df = 2 * n - 2
    ncp = abs(effect) / (sd * math.sqrt(2.0 / n))
    t_crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(t_crit, df, ncp) + stats.nct.cdf(-t_crit, df, ncp))


def welch_power(n: int, effect: float, sd: float, alpha: float = 0.05, grid: int = 256) -> float:
    """Power of the two-sided Welch test (the one the verdicts use) at level ``alpha`` with ``n``
    seeds per side and seed-to-seed ``sd`` on both sides.

    Welch's degrees of freedom depend on the two sample variances, so there is no noncentral-t
    closed form. The mean difference is independent of the sample variances
    (``s^2 ~ sd^2 chi2_{n-1} / (n-1)`` on each side), so the power is the average over the two
    variances of the normal probability that ``|mean difference|`` exceeds
    ``t_{1-alpha/2, nu} * sqrt((s_a^2 + s_b^2) / n)``; the average runs over a ``grid x grid``
    midpoint rule in the chi-square quantiles (accurate to about 1e-4 at ``grid = 256``). At small
    ``n`` it is noticeably below :func:`students_power` (n = 4, effect/sd = 5/3: 0.46 vs 0.51)."""
    if n < 2:
        return float("nan")
    threshold = _welch_threshold(int(n), float(alpha), int(grid)) * sd / math.sqrt(n)
    sd_diff = sd * math.sqrt(2.0 / n)
    power = (special.ndtr((abs(effect) - threshold) / sd_diff)
             + special.ndtr((-threshold - abs(effect)) / sd_diff))
    return float(power.mean())


@functools.lru_cache(maxsize=64)
def _welch_threshold(n: int, alpha: float, grid: int) -> np.ndarray:
    """``t_{1-alpha/2, nu} * sqrt(u_a + u_b)`` on the grid of ``u = s^2 / sd^2`` quantiles: the
    rejection threshold of ``|mean difference|`` in units of ``sd / sqrt(n)``; it depends on
    ``n`` and ``alpha`` only, so it is computed once (``t.ppf`` is the slow part)."""
    df = n - 1
    quantiles = (np.arange(grid) + 0.5) / grid
    u = stats.chi2.ppf(quantiles, df) / df
    var_a, var_b = np.meshgrid(u, u, indexing="ij")
    welch_df = (var_a + var_b) ** 2 / ((var_a**2 + var_b**2) / df)
    out = stats.t.ppf(1 - alpha / 2, welch_df) * np.sqrt(var_a + var_b)
    out.flags.writeable = False
    return out


def seeds_needed(effect: float, sd: float, power: float = 0.8, alpha: float = 0.05,
                 test: str = "welch") -> int:
    """Seeds per experiment so that a true difference ``effect`` gives a 95% (``1 - alpha``)
    interval that excludes 0 with probability ``power``, with equal seeds and seed-to-seed ``sd``
    on both sides. ``test``: ``"welch"`` (what the verdicts use, :func:`welch_power`) or
    ``"student"`` (:func:`students_power`, Cohen's tables).

    Starts from the normal approximation ``n = 2 (z_{1-alpha/2} + z_power)^2 sd^2 / effect^2``
    and steps up to the smallest ``n`` whose power reaches ``power``."""
    if not (effect != 0 and sd > 0 and 0 < power < 1 and 0 < alpha < 1):
        raise ValueError("seeds_needed wants effect != 0, sd > 0 and power, alpha in (0, 1)")
    if test not in ("welch", "student"):
        raise ValueError(f"test {test!r} is unknown; use 'welch' or 'student'")
    power_of = welch_power if test == "welch" else students_power
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    n = max(2, math.floor(2 * (z * sd / effect) ** 2))
    while n > 2 and power_of(n - 1, effect, sd, alpha) >= power:
        n -= 1
    while power_of(n, effect, sd, alpha) < power:
        n += 1
    return n


def detectable_effect(n: int, sd: float, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true difference that ``n`` seeds per side resolve with probability ``power``
    (two-sided Welch test at ``alpha``, seed-to-seed ``sd``): the inverse of
    :func:`welch_power` in the effect, by bisection."""
    if n < 2:
        return float("inf")
    low, high = 0.0, sd
    while welch_power(n, high, sd, alpha) < power:
        low, high = high, 2 * high
    for _ in range(30):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if welch_power(n, mid, sd, alpha) < power else (low, mid)
    return high


def pooled_seed_sd(measurements: pd.DataFrame, metric: str = "top1_final") -> tuple[float, int]:
    """Seed-to-seed standard deviation of ``metric`` pooled over every experiment with at least
    two seeds: ``sqrt(sum((n_i - 1) s_i^2) / sum(n_i - 1))``. Returns ``(sd, degrees of freedom)``;
    NaN and 0 when no experiment has two seeds. Use it in :func:`seeds_needed`."""
    m = measurements[measurements["metric"] == metric].dropna(subset=["value"])
    groups = m.groupby("experiment")["value"]
    dof = groups.count() - 1
    var = groups.var(ddof=1)
    keep = dof > 0
    total = int(dof[keep].sum())
    if total == 0:
        return float("nan"), 0
    return float(math.sqrt((dof[keep] * var[keep]).sum() / total)), total


# --------------------------------------------------------------------------- evaluation

def _check_measurements(measurements: pd.DataFrame) -> pd.DataFrame:
    need = ("experiment", "seed", "metric", "value")
    absent = [c for c in need if c not in measurements.columns]
    if absent:
        raise ValueError(f"measurements lack column(s) {', '.join(absent)}; pass one row per "
                         "(experiment, seed, metric) with columns experiment, seed, metric, "
                         "value (and optionally run, command)")
    dup = measurements.duplicated(subset=["experiment", "seed", "metric"], keep=False)
    if dup.any():
        first = measurements[dup].iloc[0]
        raise ValueError(
            f"measurements hold {int(dup.sum())} rows for repeated (experiment, seed, metric), "
            f"e.g. ({first['experiment']!r}, {first['seed']!r}, {first['metric']!r}); keep one "
            "value per experiment, seed and metric (two runs with the same seed?)")
    out = measurements.copy()
    out["value"] = pd.to_numeric(out["value"], errors="coerce")
    return out


def _commands(keys: list[str], missing: Mapping[str, Sequence[str]]) -> list[str]:
    commands: list[str] = []
    for key in keys:
        for command in missing.get(key, ()):
            if command not in commands:
                commands.append(command)
    return commands


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted):
    ``p_(i) * (m - i + 1)``, made monotone and capped at 1."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out


def chance_holds(table: pd.DataFrame, confidence: float = 0.95) -> float:
    """Expected number of ``holds`` if no claimed effect were real: each claim with a p-value
    holds by chance with probability at most ``(1 - confidence) / 2`` (one side of the
    interval), so ``m * (1 - confidence) / 2``."""
    return float(np.isfinite(pd.to_numeric(table["p"], errors="coerce")).sum()
                 * (1 - confidence) / 2)


def evaluate_claims(measurements: pd.DataFrame, claims: pd.DataFrame | None = None,
                    missing: Mapping[str, Sequence[str]] | None = None,
                    profile: str | None = None, profile_comparable: bool | None = None,
                    confidence: float = 0.95,
                    comparability: Mapping[str, tuple[bool, str]] | None = None,
                    incompatible: Mapping[str, str] | None = None,
                    inconclusive: Mapping[tuple[str, str], tuple[str, str]] | None = None
                    ) -> pd.DataFrame:
    """Every claim with its effect, interval, verdict and note (columns ``RESULT_COLUMNS``).

    ``measurements``: one row per (experiment, seed, metric) with ``value``. ``claims``: a
    DataFrame from :func:`load_claims` (default: ``data/claims.csv``). ``missing``:
    ``{experiment: [command, ...]}`` for experiments not (fully) trained; a claim that names one
    gets the verdict ``not run`` and a note with the commands (its numbers show the seeds that do
    exist). ``profile``: the reproduction profile; ``comparable_to_paper`` is then whether it is
    among the claim's ``comparable_profiles`` (``smoke`` never is). ``profile_comparable``
    overrides that for every claim. With neither, results are taken as comparable.

    ``comparability``: ``{experiment: (comparable, what differs)}`` from
    ``uniq.repro.comparable.comparable_to_paper``; a claim is then comparable only when each of its
    experiments is (and the profile is among its ``comparable_profiles``). ``incompatible``:
    ``{experiment: note}`` for experiments whose runs differ in more than the seed; a claim
    naming one is ``not comparable`` (its runs are not pooled). ``inconclusive``:
    ``{(experiment, metric pattern): (reason, note)}`` (``fnmatch`` patterns, e.g.
    ``"weight_*:A"``): a claim on such a metric of such an
    experiment cannot be decided (e.g. weights that did not move) and is ``inconclusive
    (reason)``.

    A claim naming an experiment that is neither measured nor in ``missing`` is an error (a typo
    in the claims file, or an experiment the caller forgot).
    """
    incompatible = dict(incompatible or {})
    claims = load_claims() if claims is None else claims
    missing = dict(missing or {})
    measurements = _check_measurements(measurements)
    known = set(measurements["experiment"]) | set(missing)
    rows = []
    for _, claim in claims.iterrows():
        keys_a, keys_b = split_keys(claim["a"]), split_keys(claim["b"])
        unknown = [k for k in keys_a + keys_b if k not in known]
        if unknown:
            hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (
                m := difflib.get_close_matches(k, sorted(known), n=1)) else "")
                for k in unknown]
            raise ValueError(
                f"claim {claim['id']!r} names experiment(s) {', '.join(hints)} that are neither "
                "in the measurements nor in `missing`; correct the key in the claims file, or "
                "pass the experiment's measurements or its training commands in `missing`")
        notes: list[str] = []
        of_metric = measurements[measurements["metric"] == claim["metric"]]

        def side(keys: list[str], notes: list[str] = notes,
                 of_metric: pd.DataFrame = of_metric) -> np.ndarray:
            values = of_metric[of_metric["experiment"].isin(keys)]["value"]
            dropped = int(values.isna().sum())
            if dropped:
                notes.append(f"{dropped} non-finite value(s) of {', '.join(keys)} left out")
            return values.dropna().to_numpy(dtype=np.float64)

        a, b = side(keys_a), side(keys_b) if keys_b else np.empty(0)
        direction = claim["direction"]
        margin = float(claim["margin"]) if pd.notna(claim["margin"]) else None
        margin_from = claim.get("margin_from", "") or ""
        if margin_from.startswith("data"):
            sd, dof = pooled_seed_sd(measurements, claim["metric"])
            margin = 2 * sd if dof > 0 and sd > 0 else None
            notes.append(f"margin {margin:.3g} = 2 x seed-to-seed sd ({dof} degrees of freedom)"
                         if margin else "no seed-to-seed spread measured yet for the margin")
        no_margin = direction == "match" and margin is None
        stat = effect_interval(a, b if keys_b else None, direction, confidence,
                               1.0 if no_margin else margin)  # placeholder: no verdict below
        not_trained = [k for k in keys_a + keys_b if k in missing]
        mixed = [k for k in keys_a + keys_b if k in incompatible]
        unmeasured = [k for k in keys_a + keys_b if k not in not_trained
                      and not (of_metric["experiment"] == k).any()]
        if not_trained or unmeasured:
            result = "not run"
            if not_trained:
                commands = _commands(not_trained, missing)
                notes.insert(0, f"not run: {', '.join(not_trained)} missing or partly missing"
                             + (f"; train with: {' && '.join(commands)}" if commands else ""))
            if unmeasured:
                notes.insert(0, f"not run: no {claim['metric']!r} measured for "
                             f"{', '.join(unmeasured)}")
        elif mixed:
            result = "not comparable"
            stat["p"] = np.nan
            notes.insert(0, "; ".join(f"{k}: {incompatible[k]}" for k in mixed))
        elif no_margin:
            result = "inconclusive (no margin yet)"
            stat["p"] = np.nan
        else:
            result = verdict(stat["low"], stat["high"], direction, margin,
                             stat["n_a"], stat["n_b"] if keys_b else None)
            blocked = [v for (k, pattern), v in (inconclusive or {}).items()
                       if k in keys_a + keys_b and fnmatch.fnmatchcase(str(claim["metric"]),
                                                                        pattern)]
            if blocked:
                result = f"inconclusive ({blocked[0][0]})"
                stat["p"] = np.nan
                notes[:0] = [note for _, note in blocked]
        allowed = split_keys(claim["comparable_profiles"])
        differs: list[str] = []
        if profile_comparable is not None:
            comparable = bool(profile_comparable)
        else:
            comparable = profile is None or (profile != "smoke" and profile in allowed)
            if comparability is not None:
                differs = list(dict.fromkeys(
                    comparability[k][1] for k in keys_a + keys_b
                    if k in comparability and not comparability[k][0]))
            comparable = comparable and not differs and not mixed
        if not comparable:
            if profile == "smoke":
                notes.append("smoke profile: not comparable to the paper")
            elif profile is not None and profile not in allowed:
                notes.append(f"{profile} profile: not comparable to the paper (comparable: "
                             f"{', '.join(allowed) or 'none'})")
            elif not differs and not mixed:
                notes.append("not comparable to the paper")
            notes += differs
        rows.append({
            "id": claim["id"], "source": claim["source"], "statement": claim["statement"],
            "metric": claim["metric"], "a": claim["a"], "b": claim["b"],
            "direction": direction, "margin": margin if margin is not None else np.nan,
            "margin_from": margin_from,
            "n_a": stat["n_a"], "n_b": stat["n_b"],
            "mean_a": float(a.mean()) if a.size else np.nan,
            "mean_b": float(b.mean()) if b.size else np.nan,
            "effect": stat["effect"], "ci_low": stat["low"], "ci_high": stat["high"],
            "p": stat["p"] if result not in ("not run", "not comparable") else np.nan,
            "paper_effect": claim["paper_effect"], "verdict": result,
            "comparable_to_paper": comparable, "note": "; ".join(notes),
        })
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    table["p_holm"] = holm(table["p"].to_numpy(dtype=np.float64))
    alpha = (1 - confidence) / 2
    table["verdict_holm"] = [
        ("holds" if p_holm < alpha else "inconclusive (Holm)") if v == "holds" else v
        for v, p_holm in zip(table["verdict"], table["p_holm"], strict=True)]
    return table


# --------------------------------------------------------------------------- tables

def per_cell_summary(values: pd.DataFrame, by: Sequence[str] | None = None,
                     value: str = "top1", paper: str = "paper_top1",
                     confidence: float = 0.95) -> pd.DataFrame:
    """Per table cell: mean, sd, n over seeds, the paper's value, ``diff = mean - paper`` and its
    ``confidence`` interval (one-sample t on the seeds' differences from the paper; NaN when
    n = 1).

    ``values``: one row per seed with the cell's key columns, ``seed``, ``value`` and ``paper``.
    ``by``: the key columns (default: every column but seed, value, paper, run and command).
    Cells keep their first-seen order.
    """
    absent = [c for c in ("seed", value, paper) if c not in values.columns]
    if absent:
        raise ValueError(f"per_cell_summary: column(s) {', '.join(absent)} missing; pass one row "
                         f"per seed with the table's key columns, seed, {value} and {paper}")
    if by is None:
        by = [c for c in values.columns if c not in ("seed", value, paper, "run", "command")]
    by = list(by)
    rows = []
    for key, cell in values.groupby(by, sort=False, dropna=False) if by else [((), values)]:
        key = key if isinstance(key, tuple) else (key,)
        x = pd.to_numeric(cell[value], errors="coerce").dropna().to_numpy(np.float64)
        papers = pd.to_numeric(cell[paper], errors="coerce").dropna().unique()
        if len(papers) > 1:
            raise ValueError(f"per_cell_summary: cell {dict(zip(by, key, strict=True))} has "
                             f"several paper values {list(papers)}; one paper value per cell")
        paper_value = float(papers[0]) if len(papers) else np.nan
        n = int(x.size)
        mean = float(x.mean()) if n else np.nan
        sd = float(x.std(ddof=1)) if n > 1 else np.nan
        low = high = np.nan
        if n > 1 and np.isfinite(paper_value):
            half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
            low, high = mean - paper_value - half, mean - paper_value + half
        rows.append({**dict(zip(by, key, strict=True)), "mean": mean, "sd": sd, "n": n,
                     "paper": paper_value, "diff": mean - paper_value,
                     "diff_low": low, "diff_high": high})
    return pd.DataFrame(rows, columns=[*by, "mean", "sd", "n", "paper", "diff", "diff_low",
                                       "diff_high"])


# --------------------------------------------------------------------------- figure
