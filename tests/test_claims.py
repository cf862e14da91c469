"""Claims: Welch intervals against the Welch-Satterthwaite formula, verdicts on constructed
samples, skewness against closed forms, seed counts against Cohen's tables and a simulation,
bad claims files, and "not run" for missing experiments."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from uniq.repro import claims as C
from uniq.repro.figures import plot_claims

HEADER = "id,source,statement,metric,a,b,direction,margin,paper_effect,comparable_profiles"


def welch_interval(a, b, confidence=0.95):
    """Independent Welch interval: Welch-Satterthwaite degrees of freedom, numpy only + t.ppf."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df) * math.sqrt(va + vb)
    d = a.mean() - b.mean()
    return d - half, d + half


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_welch_interval_matches_the_satterthwaite_formula(seed, confidence):
    rng = np.random.default_rng(seed)
    a = rng.normal(70.0, 0.3, size=3 + seed)
    b = rng.normal(69.6, 0.8, size=5)
    got = C.effect_interval(a, b, "greater", confidence)
    low, high = welch_interval(a, b, confidence)
    assert got["effect"] == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    assert got["low"] == pytest.approx(low, abs=1e-9)
    assert got["high"] == pytest.approx(high, abs=1e-9)
    assert (got["n_a"], got["n_b"], got["test"]) == (a.size, 5, "Welch's t")


def test_one_sample_interval_is_student_t():
    x = np.array([-0.41, -0.35, -0.52, -0.47])
    got = C.effect_interval(x, None, "less")
    half = stats.t.ppf(0.975, 3) * x.std(ddof=1) / 2
    assert (got["low"], got["high"]) == pytest.approx((x.mean() - half, x.mean() + half))
    assert got["test"] == "one-sample t" and got["n_b"] == 0


@pytest.mark.parametrize("direction,shift", [("greater", 0.6), ("greater", -0.6), ("greater", 0.0),
                                             ("less", 0.6), ("less", -0.6),
                                             ("match", 0.0), ("match", 0.2), ("match", 2.0)])
def test_holds_exactly_when_the_one_sided_p_is_below_alpha_over_two(direction, shift):
    rng = np.random.default_rng(7)
    a = rng.normal(shift, 0.3, 6)
    b = rng.normal(0.0, 0.3, 6)
    got = C.effect_interval(a, b, direction, margin=0.5 if direction == "match" else None)
    result = C.verdict(got["low"], got["high"], direction, 0.5 if direction == "match" else None)
    assert (result == "holds") == (got["p"] < 0.025)


# Samples built so that the 95% interval is known to be far from (or across) the boundaries:
# 10 values, spread 0.1, interval half-width about 0.1.
BASE = np.linspace(-0.15, 0.15, 10)


@pytest.mark.parametrize("direction,diff,margin,expected", [
    ("greater", 1.0, None, "holds"),
    ("greater", -1.0, None, "contradicted"),
    ("greater", 0.0, None, "inconclusive"),
    ("less", -1.0, None, "holds"),
    ("less", 1.0, None, "contradicted"),
    ("less", 0.02, None, "inconclusive"),
    ("match", 0.0, 0.5, "holds"),
    ("match", 2.0, 0.5, "contradicted"),
    ("match", -2.0, 0.5, "contradicted"),
    ("match", 0.5, 0.5, "inconclusive"),
])
def test_verdicts_on_constructed_samples(direction, diff, margin, expected):
    a, b = BASE + 60.0 + diff, BASE[::-1] + 60.0
    got = C.effect_interval(a, b, direction, margin=margin)
    assert C.verdict(got["low"], got["high"], direction, margin, got["n_a"], got["n_b"]) == expected


def test_verdict_boundaries_and_undefined_intervals():
    assert C.verdict(0.1, 0.4, "greater") == "holds"
    assert C.verdict(-0.1, 0.4, "greater") == "inconclusive"
    assert C.verdict(-0.4, -0.1, "greater") == "contradicted"
    assert C.verdict(-0.4, 0.4, "match", 0.5) == "holds"
    assert C.verdict(0.6, 0.9, "match", 0.5) == "contradicted"
    assert C.verdict(0.4, 0.9, "match", 0.5) == "inconclusive"
    assert C.verdict(np.nan, np.nan, "greater", n_a=1, n_b=3) == "inconclusive (n=1)"
    assert C.verdict(np.nan, np.nan, "less", n_a=1, n_b=None) == "inconclusive (n=1)"
    assert C.verdict(np.nan, np.nan, "greater", n_a=3, n_b=3) == "inconclusive (zero variance)"
    with pytest.raises(ValueError, match="direction"):
        C.verdict(0, 1, "bigger")


def test_n_equal_one_gives_an_effect_but_no_interval():
    got = C.effect_interval([71.0], [70.0, 70.4, 70.2], "greater")
    assert got["effect"] == pytest.approx(0.8)
    assert np.isnan(got["low"]) and np.isnan(got["high"]) and np.isnan(got["p"])
    one = C.effect_interval([0.3], None, "less")
    assert one["effect"] == pytest.approx(0.3) and np.isnan(one["low"])


# ---------------------------------------------------------------- seeds needed

@pytest.mark.parametrize("d,n_cohen", [(0.5, 64), (0.8, 26), (1.0, 17)])
def test_students_seeds_needed_matches_cohens_table(d, n_cohen):
    # Cohen (1988), Table 2.4.1: two-sided alpha 0.05, power 0.80, n per group.
    assert C.seeds_needed(d * 0.3, 0.3, test="student") == n_cohen


def test_seeds_needed_is_the_smallest_n_reaching_the_power():
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    for effect, sd in ((0.5, 0.2), (0.5, 0.4), (1.0, 0.4), (0.3, 0.3)):
        n = C.seeds_needed(effect, sd)
        assert C.welch_power(n, effect, sd) >= 0.8
        assert n == 2 or C.welch_power(n - 1, effect, sd) < 0.8
        # never below the normal approximation, never below Student's (Welch has fewer df)
        assert n >= 2 * (z * sd / effect) ** 2
        assert n >= C.seeds_needed(effect, sd, test="student")


@pytest.mark.parametrize("n", [3, 5])
def test_welch_power_against_a_simulation(n):
    rng = np.random.default_rng(11 + n)
    effect, sd, reps = 0.5, 0.3, 20000
    a = rng.normal(effect, sd, (reps, n))
    b = rng.normal(0.0, sd, (reps, n))
    simulated = float((stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue < 0.05).mean())
    # Monte-Carlo standard error <= 0.0036: 4 SE
    assert simulated == pytest.approx(C.welch_power(n, effect, sd), abs=0.015)
    # and Student's noncentral-t power is a different (higher) number at this n
    assert C.students_power(n, effect, sd) > C.welch_power(n, effect, sd) + 0.02


def test_detectable_effect_inverts_the_power():
    for n in (2, 3, 5):
        effect = C.detectable_effect(n, 0.3)
        assert C.welch_power(n, effect, 0.3) == pytest.approx(0.8, abs=1e-6)
    assert C.detectable_effect(3, 0.3) > C.detectable_effect(5, 0.3)


def test_pooled_seed_sd():
    m = pd.DataFrame({"experiment": ["x"] * 3 + ["y"] * 4 + ["z"],
                      "seed": [0, 1, 2, 0, 1, 2, 3, 0], "metric": "top1_final",
                      "value": [1.0, 2.0, 4.0, 0.0, 0.5, 0.7, 2.0, 9.0]})
    vx, vy = np.var([1.0, 2.0, 4.0], ddof=1), np.var([0.0, 0.5, 0.7, 2.0], ddof=1)
    sd, dof = C.pooled_seed_sd(m)
    assert dof == 5 and sd == pytest.approx(math.sqrt((2 * vx + 3 * vy) / 5))


# ---------------------------------------------------------------- claims file

def write(tmp_path, *rows, header=HEADER):
    path = tmp_path / "claims.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


GOOD = "c1,Table 4,UniQ beats LSQ,top1_final,t4/uniq/4b,t4/lsq/4b,greater,,0.2,paper;quick"


def test_the_repository_claims_file_is_valid_and_covers_every_claim():
    claims = C.load_claims()
    assert claims["id"].is_unique
    assert set(claims["source"]) >= {"Table 2", "Table 4", "Table 5", "Table 6", "Figure 3",
                                      "Figure 4"}
    pairs = set(zip(claims["a"], claims["b"], strict=True))
    for bits in (4, 3, 2):
        assert (f"t4/uniq/{bits}b", f"t4/lsq/{bits}b") in pairs
        assert (f"t2/resnet18/uniq/{bits}b", f"t2/resnet18/lsq/{bits}b") in pairs
    for bits in (2, 3):
        for other in ("0.1", "0.2", "lsq"):
            assert (f"t5/{bits}b/init=mse", f"t5/{bits}b/init={other}") in pairs
    assert ("t6/sgd-warmup5", "t6/sgd-lr0.01") in pairs
    assert ("t6/adam-warmup5", "t6/adam-lr0.004") in pairs
    assert ("f4/sgd-lr0.01", "f4/sgd-warmup5") in pairs  # Figure 4: its own runs' keys
    assert ("f4/sgd-lr0.01", "f4/adam-lr0.004") in pairs
    # paper effects are the paper's a - b, read independently from its tables
    paper = pd.read_csv(C.CLAIMS_PATH.parent / "paper_tables.csv")
    t4 = paper[paper.table == 4].set_index(["method", "weight_bits"]).value
    row = claims.set_index("id").loc["T4-uniq>lsq-2b"]
    assert row.paper_effect == pytest.approx(t4["UniQ", 2] - t4["LSQ", 2])


@pytest.mark.parametrize("rows,header,message", [
    ([GOOD], HEADER + ",colour", r"unknown column\(s\) 'colour'"),
    ([GOOD], HEADER.replace("statement", "statment"), r"'statment' \(did you mean 'statement'"),
    ([GOOD.replace(",Table 4,", ",,")], HEADER, r"line 2 \(claim 'c1'\).*'source' is empty"),
    ([GOOD.replace("greater", "bigger")], HEADER, r"claim 'c1'.*unknown direction 'bigger'"),
    ([GOOD.replace("greater,,", "match,,")], HEADER, r"'match' claim needs a margin"),
    ([GOOD.replace("greater,,", "match,half,")], HEADER, r"margin 'half' is not a finite number"),
    ([GOOD.replace("greater,,", "match,-1,")], HEADER, r"margin -1.0 is not positive"),
    ([GOOD.replace("greater,,", "greater,0.5,")], HEADER, r"used by 'match' claims only"),
    ([GOOD.replace(",0.2,", ",big,")], HEADER, r"paper_effect 'big' is not a number"),
    ([GOOD, GOOD], HEADER, r"line 3 \(claim 'c1'\): duplicate id"),
    ([GOOD.replace("paper;quick", "papr")], HEADER, r"unknown profile\(s\) \['papr'\]"),
    ([GOOD.replace("t4/lsq/4b", "t4/uniq/4b")], HEADER, r"on both sides"),
    ([GOOD.replace("t4/lsq/4b", "t4/lsq/4b;t4 lsq")], HEADER, r"contains white space"),
    ([], HEADER, r"no claims"),
])
def test_bad_claims_files_give_clear_errors(tmp_path, rows, header, message):
    path = write(tmp_path, *rows, header=header)
    with pytest.raises(ValueError, match=message) as err:
        C.load_claims(path)
    assert str(path) in str(err.value) and "Fix:" in str(err.value)


def test_missing_claims_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        C.load_claims(tmp_path / "nope.csv")


# ---------------------------------------------------------------- evaluation

def measurements(values: dict[str, list[float]], metric="top1_final") -> pd.DataFrame:
    return pd.DataFrame([{"experiment": k, "seed": s, "metric": metric, "value": v, "run": "r"}
                         for k, vs in values.items() for s, v in enumerate(vs)])


def two_claims(tmp_path):
    return C.load_claims(write(
        tmp_path, GOOD,
        "c2,Table 4,3-bit UniQ matches 4-bit LSQ,top1_final,t4/uniq/3b,t4/lsq/4b,match,0.5,0,"
        "paper;quick"))


def test_evaluate_claims_numbers_and_comparability(tmp_path):
    values = {"t4/uniq/4b": [71.9, 72.1, 72.0], "t4/lsq/4b": [71.0, 71.2, 71.1],
              "t4/uniq/3b": [71.1, 71.0, 71.2]}
    table = C.evaluate_claims(measurements(values), two_claims(tmp_path), profile="quick")
    assert list(table.columns) == C.RESULT_COLUMNS
    c1, c2 = table.iloc[0], table.iloc[1]
    low, high = welch_interval(values["t4/uniq/4b"], values["t4/lsq/4b"])
    assert (c1.ci_low, c1.ci_high) == pytest.approx((low, high))
    assert c1.effect == pytest.approx(0.9) and c1.mean_a == pytest.approx(72.0)
    assert (c1.n_a, c1.n_b, c1.verdict, c1.paper_effect) == (3, 3, "holds", 0.2)
    assert c2.verdict == "holds" and bool(c1.comparable_to_paper) and c1.note == ""
    smoke = C.evaluate_claims(measurements(values), two_claims(tmp_path), profile="smoke")
    assert not smoke.comparable_to_paper.any()
    assert smoke.note.str.contains("smoke profile: not comparable to the paper").all()
    assert list(smoke.verdict) == list(table.verdict)  # computed the same way
    forced = C.evaluate_claims(measurements(values), two_claims(tmp_path), profile_comparable=False)
    assert not forced.comparable_to_paper.any()


def test_not_run_when_a_side_is_missing_or_partly_missing(tmp_path):
    values = {"t4/uniq/4b": [71.9, 72.1], "t4/lsq/4b": [71.0]}  # lsq 4b: one seed of two
    missing = {"t4/lsq/4b": ["python -m uniq train --bits 4 --method lsq --seed 1"],
               "t4/uniq/3b": ["python -m uniq train --bits 3 --seed 0",
                              "python -m uniq train --bits 3 --seed 1"]}
    table = C.evaluate_claims(measurements(values), two_claims(tmp_path), missing=missing)
    assert list(table.verdict) == ["not run", "not run"]
    assert table.note[0].startswith("not run: t4/lsq/4b")
    assert "python -m uniq train --bits 4 --method lsq --seed 1" in table.note[0]
    assert "--bits 3 --seed 0" in table.note[1] and "--bits 3 --seed 1" in table.note[1]
    assert table.n_a[0] == 2 and table.n_b[0] == 1  # the seeds that exist are still shown


def test_unmeasured_metric_is_not_run_and_unknown_experiment_is_an_error(tmp_path):
    claims = two_claims(tmp_path)
    values = {"t4/uniq/4b": [1.0, 2.0], "t4/lsq/4b": [1.0, 2.0], "t4/uniq/3b": [1.0, 2.0]}
    only_best = measurements(values, metric="top1_best")
    table = C.evaluate_claims(only_best, claims)
    assert (table.verdict == "not run").all() and table.note.str.contains("no 'top1_final'").all()
    with pytest.raises(ValueError, match=r"claim 'c2' names experiment\(s\) 't4/uniq/3b'"):
        C.evaluate_claims(measurements({"t4/uniq/4b": [1.0], "t4/lsq/4b": [1.0],
                                        "t4/uniq/3c": [1.0]}), claims)
    with pytest.raises(ValueError, match=r"did you mean 't4/uniq/\dc?b'"):
        C.evaluate_claims(measurements({"t4/uniq/4b": [1.0], "t4/lsq/4b": [1.0],
                                        "t4/uniq/3c": [1.0]}), claims)


def test_n_equal_one_and_bad_measurements(tmp_path):
    values = {"t4/uniq/4b": [72.0], "t4/lsq/4b": [71.0], "t4/uniq/3b": [71.0]}
    table = C.evaluate_claims(measurements(values), two_claims(tmp_path))
    assert (table.verdict == "inconclusive (n=1)").all()
    assert table.effect[0] == pytest.approx(1.0)
    m = measurements(values)
    with pytest.raises(ValueError, match="repeated"):
        C.evaluate_claims(pd.concat([m, m]), two_claims(tmp_path))
    with pytest.raises(ValueError, match="lack column"):
        C.evaluate_claims(m.drop(columns="seed"), two_claims(tmp_path))


def test_pooled_sides_and_one_sample_claims(tmp_path):
    claims = C.load_claims(write(
        tmp_path,
        "p1,Table 5,MSE beats the constants,top1_final,t5/2b/init=mse,"
        "t5/2b/init=0.1;t5/2b/init=0.2,greater,,,paper",
        "s1,Figure 3,LSQ skew < 0,weight_skew:A,t4/lsq/2b,,less,,,paper;quick"))
    m = pd.concat([
        measurements({"t5/2b/init=mse": [69.0, 69.2], "t5/2b/init=0.1": [67.0, 67.2],
                      "t5/2b/init=0.2": [68.0, 68.4]}),
        measurements({"t4/lsq/2b": [-0.5, -0.6, -0.4]}, metric="weight_skew:A")])
    table = C.evaluate_claims(m, claims).set_index("id")
    assert table.loc["p1", "n_b"] == 4
    assert table.loc["p1", "effect"] == pytest.approx(69.1 - np.mean([67.0, 67.2, 68.0, 68.4]))
    assert table.loc["s1", "n_b"] == 0 and np.isnan(table.loc["s1", "mean_b"])
    assert table.loc["s1", "verdict"] == "holds"


# ---------------------------------------------------------------- per-cell summary

def test_per_cell_summary():
    values = pd.DataFrame({"method": ["uniq"] * 3 + ["lsq"] * 3 + ["fp"],
                           "bits": [2] * 6 + [32], "seed": [0, 1, 2] * 2 + [0],
                           "top1": [69.0, 69.5, 68.8, 68.0, 68.6, 68.1, 71.0],
                           "paper_top1": [69.3] * 3 + [68.5] * 3 + [71.4], "run": "r"})
    s = C.per_cell_summary(values)
    assert list(s.columns) == ["method", "bits", "mean", "sd", "n", "paper", "diff", "diff_low",
                               "diff_high"]
    assert list(s.method) == ["uniq", "lsq", "fp"]
    u = s.iloc[0]
    x = np.array([69.0, 69.5, 68.8]) - 69.3
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    assert (u["mean"], u["sd"], u["n"]) == pytest.approx((69.1, np.std([69.0, 69.5, 68.8],
                                                                       ddof=1), 3))
    assert (u["diff"], u["diff_low"], u["diff_high"]) == pytest.approx((x.mean(), ci.low,
                                                                        ci.high))
    fp = s.iloc[2]
    assert fp["n"] == 1 and fp["diff"] == pytest.approx(-0.4)
    assert np.isnan(fp["sd"]) and np.isnan(fp["diff_low"])
    bad = values.assign(paper_top1=[69.3, 69.0, 69.3, 68.5, 68.5, 68.5, 71.4])
    with pytest.raises(ValueError, match="several paper values"):
        C.per_cell_summary(bad)


# ---------------------------------------------------------------- figure

def test_plot_claims_without_warnings(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    claims = C.load_claims()
    rng = np.random.default_rng(0)
    keys = {k for col in ("a", "b") for field in claims[col] for k in C.split_keys(field)}
    rows = []
    for k in sorted(keys):
        for seed in range(2 if k != "t4/lsq/4b" else 1):
            for metric in ("top1_final", "weight_skew_change:A", "weight_skew_change:B",
                           "weight_abs_skew_change:A", "weight_abs_skew_change:B",
                           "sqnr_gap_after_warmup"):
                rows.append({"experiment": k, "seed": seed, "metric": metric,
                             "value": rng.normal(0, 1)})
    missing = {k: [f"train {k}"] for k in keys if k.startswith("t2/")}
    m = pd.DataFrame([r for r in rows if r["experiment"] not in missing])
    table = C.evaluate_claims(m, claims, missing=missing, profile="smoke")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plot_claims(table)
        fig.savefig(tmp_path / "claims.png", dpi=60)
    assert len(fig.axes) == 3  # top-1 points, skewness, dB
    plt.close(fig)


def test_holm_adjusted_p_values_closed_form():
    p = [0.01, 0.04, 0.03, np.nan]
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04 -> monotone 0.03, 0.06, 0.06
    assert np.allclose(C.holm(p)[:3], [0.03, 0.06, 0.06]) and np.isnan(C.holm(p)[3])
    assert np.allclose(C.holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    assert C.holm([]).size == 0


def test_holm_verdict_and_chance_holds(tmp_path):
    rng = np.random.default_rng(1)
    values = {"t4/uniq/4b": list(72 + rng.normal(0, 0.3, 3)),
              "t4/lsq/4b": list(71.6 + rng.normal(0, 0.3, 3)),
              "t4/uniq/3b": list(71.1 + rng.normal(0, 0.3, 3))}
    table = C.evaluate_claims(measurements(values), two_claims(tmp_path))
    assert list(table.columns) == C.RESULT_COLUMNS
    assert np.allclose(table.p_holm, C.holm(table.p))
    for _, row in table.iterrows():
        expected = row.verdict if row.verdict != "holds" else (
            "holds" if row.p_holm < 0.025 else "inconclusive (Holm)")
        assert row.verdict_holm == expected
    assert C.chance_holds(table) == pytest.approx(2 * 0.025)


def test_a_match_margin_from_the_data_is_twice_the_pooled_seed_sd(tmp_path):
    claims = C.load_claims(write(
        tmp_path, "c1,Table 4,3-bit UniQ matches 4-bit LSQ,top1_final,t4/uniq/3b,t4/lsq/4b,"
                  "match,2sd,0,paper"))
    assert claims.margin_from[0].startswith("data") and np.isnan(claims.margin[0])
    values = {"t4/uniq/3b": [71.0, 71.4, 71.2], "t4/lsq/4b": [71.1, 71.3, 71.2]}
    m = measurements(values)
    table = C.evaluate_claims(m, claims)
    sd, _ = C.pooled_seed_sd(m)
    assert table.margin[0] == pytest.approx(2 * sd) and "2 x seed-to-seed sd" in table.note[0]
    one_seed = C.evaluate_claims(measurements({"t4/uniq/3b": [71.0], "t4/lsq/4b": [71.1]}),
                                 claims)
    assert one_seed.verdict[0] == "inconclusive (no margin yet)"


def test_incompatible_runs_are_not_comparable_and_not_pooled(tmp_path):
    values = {"t4/uniq/4b": [71.9, 72.1, 72.0], "t4/lsq/4b": [71.0, 71.2, 71.1],
              "t4/uniq/3b": [71.1, 71.0, 71.2]}
    table = C.evaluate_claims(measurements(values), two_claims(tmp_path), profile="paper",
                              incompatible={"t4/lsq/4b": "epochs: 90, 1"},
                              comparability={"t4/uniq/3b": (False, "epochs 30 (paper 350)")})
    assert list(table.verdict) == ["not comparable"] * 2
    assert not table.comparable_to_paper.any() and np.isnan(table.p).all()
    assert "epochs: 90, 1" in table.note[0] and "epochs 30 (paper 350)" in table.note[1]


def test_a_claim_whose_precondition_fails_is_inconclusive(tmp_path):
    claims = C.load_claims(write(
        tmp_path, "f3,Figure 3,skew change,weight_skew_change:A,t4/lsq/2b,t4/uniq/2b,less,,,paper",
        "f3b,Figure 3,skew change,weight_skew_change:B,t4/lsq/2b,t4/uniq/2b,less,,,paper"))
    m = pd.concat([measurements({"t4/lsq/2b": [-0.5, -0.6, -0.55],
                                 "t4/uniq/2b": [0.0, 0.01, -0.01]}, metric=f)
                   for f in ("weight_skew_change:A", "weight_skew_change:B")])
    table = C.evaluate_claims(m, claims, inconclusive={
        ("t4/uniq/2b", "weight_*:A"): ("weights did not move", "moved 1%")})
    assert list(table.verdict) == ["inconclusive (weights did not move)", "holds"]
    assert table.note[0].startswith("moved 1%") and np.isnan(table.p[0])


def test_the_claims_chart_shows_the_holm_verdict_with_the_unadjusted_beside_it():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from uniq.repro.figures import VERDICT_COLOURS

    row = {"id": "X", "metric": "top1_final", "direction": "greater", "margin": np.nan,
           "effect": 1.0, "ci_low": 0.2, "ci_high": 1.8, "paper_effect": 0.5, "b": "k",
           "verdict": "holds", "verdict_holm": "inconclusive (Holm)"}
    fig = plot_claims(pd.DataFrame([row, {**row, "id": "Y", "verdict_holm": "holds"}]))
    labels = {t.get_text(): t.get_color() for t in fig.axes[0].texts}
    assert labels["inconclusive (Holm) (alone: holds)"] == VERDICT_COLOURS["inconclusive"]
    assert labels["holds"] == VERDICT_COLOURS["holds"]
    plt.close(fig)
