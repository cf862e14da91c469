"""The experiments behind Tables 4-6: 23 distinct runs per profile and seed, commands that
train exactly those runs, seeds, workers sharing one list, and per-seed tables."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import env

import uniq.repro.study as X
from uniq.repro.cli import build_parser, config_from_args


@pytest.mark.parametrize("profile", ["smoke", "laptop", "quick", "paper"])
def test_a_profile_needs_23_distinct_runs_per_seed(tmp_path, profile):
    ctx = X.context(profile=profile, results_dir=str(tmp_path / "res"), runs_dir=str(tmp_path),
                    seeds=1)
    rows = X.plan(ctx)
    own = 4 if profile == "laptop" else 0  # the laptop trains Figure 4's runs itself, one seed
    assert len(rows) == 23 + own and len({r["run"] for r in rows}) == 23 + own
    assert {r["state"] for r in rows} == {"missing"}
    assert len(X.plan(X.context(profile=profile, results_dir=str(tmp_path / "r"),
                                runs_dir=str(tmp_path), seeds=3))) \
        == 1 + 22 * 3 + own
    # Figure 3 runs are cells of Table 4, and Figure 4's (but the laptop's) of Tables 4 and 6;
    # the Table 4 1-bit run is Table 6's "Adam, warm-up 5" row; Table 5's MSE cells are Table
    # 4's UniQ cells
    keys = {e.key: X.config(ctx, e).key() for e in X.experiments(ctx)}
    for key, cell, _ in X.FIGURE4:
        assert (keys[key] == keys[cell]) == (profile != "laptop")
    assert keys["t4/uniq/1b"] == keys["t6/adam-warmup5"]
    assert keys["t5/2b/init=mse"] == keys["t4/uniq/2b"]
    assert keys["t5/3b/init=mse"] == keys["t4/uniq/3b"]
    assert len(set(keys.values())) == 23 + own


def test_each_listed_command_trains_exactly_the_listed_run(tmp_path):
    ctx = X.context(profile="quick", results_dir=str(tmp_path / "res"),
                    runs_dir=str(tmp_path), seeds="0,5")
    for row, (_, _, cfg) in zip(X.plan(ctx), X.distinct_runs(ctx), strict=True):
        argv = row["command"].split()[3:]  # after "python -m uniq"
        parsed = config_from_args(build_parser().parse_args(argv))
        assert parsed.key() == cfg.key() and parsed.run_dir().name == row["run"], row


def test_lsq_rows_use_lsq_init_by_default_and_mse_on_request(tmp_path):
    lsq = X.experiment(X.context(profile="paper", results_dir=str(tmp_path),
                                 runs_dir=str(tmp_path)), "t4/lsq/2b")
    same = X.experiment(X.context(profile="paper", results_dir=str(tmp_path),
                                  runs_dir=str(tmp_path), lsq_init="mse"),
                        "t4/lsq/2b")
    assert lsq.init == "lsq" and same.init == "mse"
    with pytest.raises(ValueError, match="LSQ_INIT"):
        X.context(profile="paper", results_dir=str(tmp_path),
                  runs_dir=str(tmp_path), lsq_init="zero")


@pytest.mark.parametrize("value,expected", [(3, (0, 1, 2)), ("2", (0, 1)), ("0,4,7", (0, 4, 7)),
                                            ([1, 2], (1, 2)), ("[3, 5]", (3, 5))])
def test_seeds_parse(value, expected):
    assert X.parse_seeds(value) == expected


@pytest.mark.parametrize("value", ["two", 0, -1, "1,1", [0.5], True, "1;2"])
def test_bad_seeds_are_clear_errors(value):
    with pytest.raises(ValueError, match="seed"):
        X.parse_seeds(value)


@pytest.mark.slow
def test_three_workers_given_the_same_list_train_every_run_once(tmp_path, monkeypatch):
    """Workers share a runs folder and take the same command list: the run lock makes each
    run train once, whatever the order (here: all three start on the same run at once)."""
    tiny = X.Profile("tiny", "synthetic", depth=8, batch_size=64, fp_epochs=1, epochs=1,
                     calib_batches=1, warmup_scale=0.1, seeds=(0,), synthetic_train=256,
                     synthetic_test=100, dynamics_per_epoch=1)
    monkeypatch.setitem(X.PROFILES, "tiny", tiny)
    ctx = X.context(profile="tiny", results_dir=str(tmp_path / "res"),
                    runs_dir=str(tmp_path / "runs"), device="cpu")
    rows = X.plan(ctx, ["t4/uniq/2b", "t4/lsq/2b", "t5/2b/init=0.1"])
    assert len(rows) == 4  # the FP parent and three quantized runs
    script = " && ".join(r["command"] for r in rows)
    workers = [subprocess.Popen(["bash", "-c", script.replace("python ", f"{sys.executable} ")],
                                env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(3)]
    logs = [w.communicate(timeout=900)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), logs
    text = "\n".join(logs)
    for r in rows:
        prepared = [line for line in text.splitlines() if r["run"] in line and "preparing" in line]
        assert len(prepared) == 1, (r["run"], text[-3000:])
    assert {r["state"] for r in X.plan(ctx, ["t4/uniq/2b", "t4/lsq/2b", "t5/2b/init=0.1"])} \
        == {"done"}


def test_tables_summarise_seeds_with_intervals():
    seeds = pd.DataFrame({
        "experiment": ["a"] * 3 + ["b"], "method": ["UniQ"] * 3 + ["LSQ"],
        "bits": ["2/2"] * 4, "seed": [0, 1, 2, 0], "top1_final": [70.0, 71.0, 72.0, 69.0],
        "top1_best": [71.0, 72.0, 73.0, 69.5], "paper_top1": [71.0] * 3 + [70.0],
        "dataset": ["cifar100"] * 4, "precision": ["fp32"] * 4, "run": ["r0", "r1", "r2", "r3"]})
    t = X.summarize(seeds, "top1_final", "paper")
    a = t[t.experiment == "a"].iloc[0]
    assert a.n == 3 and a.top1_final == 71.0 and a.top1_final_sd == 1.0 and a.top1_best == 72.0
    from scipy import stats

    half = stats.t.ppf(0.975, 2) / 3 ** 0.5
    assert a["diff"] == 0.0 and a.diff_ci_low == pytest.approx(-half, abs=0.01)
    b = t[t.experiment == "b"].iloc[0]
    assert b.n == 1 and pd.isna(b.diff_ci_low) and b["diff"] == -1.0
    assert list(t.columns[:3]) == ["experiment", "method", "bits"]


# --- comparability is one rule; claims pool only runs of one setting -----------------


def _fake_imagenet_run(runs_dir, top1, **kw):
    import json

    from uniq.repro.config import KEY_SCHEME, ImageNetConfig

    cfg = ImageNetConfig(runs_dir=str(runs_dir), **kw)
    d = cfg.run_dir()
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"task": "imagenet", "config": cfg.to_dict(),
                                               "key": cfg.key(), "key_scheme": KEY_SCHEME}))
    (d / "result.json").write_text(json.dumps({"top1_final": top1, "top1_best": top1 + 0.1,
                                               "bits": cfg.bits, "method": cfg.method,
                                               "epochs": cfg.epochs, "run": d.name}))
    return d


def test_imagenet_runs_of_different_epochs_are_not_pooled_nor_comparable(tmp_path):
    ctx = X.context(profile="paper", results_dir=str(tmp_path / "res"),
                    runs_dir=str(tmp_path / "runs"))
    runs = tmp_path / "runs"
    data = tmp_path / "imagenet"  # the paper's 1000 classes (the rule counts them)
    for c in range(1000):
        (data / "train" / f"n{c:08d}").mkdir(parents=True)
    _fake_imagenet_run(runs, 70.0, bits=4, epochs=90, data_dir=str(data))
    _fake_imagenet_run(runs, 20.0, bits=4, epochs=1, data_dir=str(data))
    _fake_imagenet_run(runs, 69.0, bits=4, method="lsq", init="lsq", epochs=90,
                       data_dir=str(data))
    claims = X.claims_table(ctx).set_index("id")
    row = claims.loc["T2-r18-uniq>lsq-4b"]
    assert row.verdict == "not comparable" and not row.comparable_to_paper
    assert "epochs: 1, 90" in row.note
    values, comparability, incompatible = X.imagenet_measurements(ctx)
    assert set(incompatible) == {"t2/resnet18/uniq/4b"}
    assert comparability["t2/resnet18/lsq/4b"] == (True, "")
    assert not comparability["t2/resnet18/uniq/4b"][0]  # the 1-epoch run


def test_two_seeds_of_one_imagenet_setting_are_pooled(tmp_path):
    ctx = X.context(profile="paper", results_dir=str(tmp_path / "res"),
                    runs_dir=str(tmp_path / "runs"))
    for seed in (0, 1):
        _fake_imagenet_run(tmp_path / "runs", 70.0 + seed, bits=3, seed=seed)
    values, _, incompatible = X.imagenet_measurements(ctx)
    assert not incompatible and sorted(set(values.seed)) == [0, 1]


@pytest.mark.parametrize("profile", sorted(X.PROFILES))
def test_tables_and_claims_agree_on_comparability(tmp_path, profile):
    ctx = X.context(profile=profile, results_dir=str(tmp_path / "res"),
                    runs_dir=str(tmp_path / "runs"))
    comparable, differs = ctx.comparable()
    assert comparable == ctx.profile.comparable == (profile == "paper")
    claims = X.claims_table(ctx)
    cifar = claims[~claims.source.isin(["Table 2", "Table 3"])]
    assert (cifar.comparable_to_paper == comparable).all(), cifar[["id", "note"]]
    if profile == "quick":
        assert "epochs 30 (paper 350)" in differs
        assert cifar.note.str.contains("epochs 30 \\(paper 350\\)").all()
    X.save_table(ctx, pd.DataFrame({"top1": [1.0]}), "t", "t")
    assert (pd.read_csv(ctx.results_dir / "t.csv").comparable_to_paper == comparable).all()


@pytest.mark.parametrize("profile", list(X.PROFILES))
def test_figure4_claims_compare_only_probes_after_the_warm_up(profile, tmp_path):
    """One mapping of the paper's 5 warm-up and 30 epochs for the figure and its claims: the
    warm-up run warms up exactly until the window opens, every Figure 4 run is as long as the
    figure, and the gap reads only probes after the warm-up (or nothing: "not run")."""
    ctx = X.context(profile=profile, results_dir=str(tmp_path / "res"),
                    runs_dir=str(tmp_path / "runs"))
    w = X.figure4_window(ctx)
    assert w.warmup_end == pytest.approx(5 * w.scale) and w.end == pytest.approx(30 * w.scale)
    for e in X.experiments(ctx, 0):
        cfg = X.config(ctx, e, 0).resolved()
        assert cfg.epochs == w.run_epochs
        if e.key == "f4/sgd-warmup5":
            assert cfg.recipe_obj().warmup_epochs == pytest.approx(w.warmup_end)
    # probes every 1/64 epoch over the run, the warm-up boundary among them; a probe at or
    # before the warm-up's end reads 100 dB below the optimum, every later one 1 dB
    grid = np.union1d(np.arange(0, w.run_epochs, 1 / 64), [w.warmup_end])
    dyn = pd.DataFrame({"layer": "L", "epoch_float": grid, "optimal_sqnr_db": 10.0,
                        "sqnr_db": np.where(grid <= w.warmup_end, -90.0, 9.0)})
    gap = X.sqnr_gap_after_warmup(dyn, "L", w)
    if profile == "smoke":  # 2 epochs cannot hold the paper's 30 at the warm-up's scale
        assert not w.fits and gap is None
    else:
        assert w.fits and gap == pytest.approx(1.0)


def test_figure4_gap_is_the_mean_over_the_window():
    w = X.Figure4Window(scale=0.1, warmup_end=0.5, end=3.0, run_epochs=4)
    dyn = pd.DataFrame({"layer": ["L"] * 6 + ["M"], "epoch_float": [0, .5, .6, 2, 3, 3.5, 1],
                        "optimal_sqnr_db": 10.0, "sqnr_db": [0, 0, 9, 8, 7, 0, 0]})
    assert X.sqnr_gap_after_warmup(dyn, "L", w) == pytest.approx((1 + 2 + 3) / 3)
    assert X.sqnr_gap_after_warmup(dyn[dyn.epoch_float < 0.5], "L", w) is None


def test_laptop_figure4_runs_are_the_papers_first_30_of_350_epochs_scaled(tmp_path):
    """The laptop's own Figure 4 runs: the learning rate at each mapped epoch is the paper's
    (a cosine over 350 epochs, of which the figure sees 30), from the profile's FP run."""
    from uniq.repro.recipes import lr_at

    ctx = X.context(profile="laptop", results_dir=str(tmp_path / "res"),
                    runs_dir=str(tmp_path / "runs"))
    w = X.figure4_window(ctx)
    assert ctx.profile.figure4 is not None
    for key, recipe in (("f4/sgd-warmup5", "sgd-warmup5"), ("f4/adam-lr0.004", "adam-lr0.004")):
        cfg = X.config(ctx, X.experiment(ctx, key), 0).resolved()
        assert X.CifarConfig.from_dict(cfg.init_from).key() == X.fp_config(ctx).key()
        paper = X.get_recipe(recipe)
        for p in (0.0, 4.9, 5.0, 17.0, 29.9):
            assert lr_at(cfg.recipe_obj(), p * w.scale, cfg.schedule_epochs) == \
                pytest.approx(lr_at(paper, p, 350))


def test_skewness_claims_on_weights_that_did_not_move_are_inconclusive():
    values = pd.DataFrame({"experiment": ["t4/uniq/2b"] * 2 + ["t4/lsq/2b"] * 2,
                           "seed": [0, 1] * 2, "metric": "weight_moved:A",
                           "value": [0.01, 0.02, 0.3, 0.4]})
    blocked = X.unmoved(values)
    assert set(blocked) == {("t4/uniq/2b", "weight_*:A")}
    assert "1.5%" in blocked[("t4/uniq/2b", "weight_*:A")][1]


def test_the_laptop_profile_resolves_and_auto_picks_by_device(tmp_path, monkeypatch):
    """``PROFILE = "auto"`` (the notebooks' default) is ``laptop`` without a GPU,
    ``quick`` with one, and every notebook's parameter comment says so; the laptop profile
    trains on the generated fine-detail data, its own runs."""
    import json
    from pathlib import Path

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert X.CPU_DEFAULT == "laptop" and X.get_profile("auto").name == "laptop"
    notebooks = sorted(Path(__file__).resolve().parent.parent.glob("notebooks/[0-9]*.ipynb"))
    assert len(notebooks) == 9
    for path in notebooks:
        [source] = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                    if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert 'PROFILE = "auto"     # auto: laptop on a CPU, quick on a GPU' in source, path.name
    ctx = X.context(profile="laptop", results_dir=str(tmp_path / "res"), runs_dir=str(tmp_path))
    assert ctx.profile.name == "laptop" and ctx.seeds == (0, 1, 2)
    fp = X.fp_config(ctx)
    assert fp.dataset == "finegrain" and fp.resolved().dataset == "finegrain"
    assert not ctx.profile.comparable and "NOT comparable" in ctx.profile.caveat()
    smoke = X.context(profile="smoke", results_dir=str(tmp_path / "s"), runs_dir=str(tmp_path))
    assert X.fp_config(smoke).key() != fp.key()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert X.get_profile("auto").name == "quick"


def test_one_short_run_on_the_laptop_data(tmp_path, tiny_config):
    """The laptop profile's data and model through the engine: 20 classes of 16x16 images."""
    from uniq.repro.train import fit

    laptop = X.get_profile("laptop")
    cfg = tiny_config(tmp_path, dataset=laptop.dataset, depth=laptop.depth, epochs=1,
                      synthetic_train=256, synthetic_test=100, batch_size=64)
    r = fit(cfg, quiet=True)
    assert r.result["dataset"] == "finegrain" and r.result["num_classes"] == 20
    assert r.result["eval_size"] == 100 and 0 <= r.result["top1_final"] <= 100


def test_context_takes_keywords_or_one_dict_of_the_notebook_parameters(tmp_path):
    """Every notebook's first cell: keywords, or the parameters cell's names as one dict."""
    by_keywords = X.context(profile="quick", results_dir=str(tmp_path / "res"),
                            runs_dir=str(tmp_path), seeds="0,5", lsq_init="mse")
    by_dict = X.context({"PROFILE": "quick", "RESULTS_DIR": str(tmp_path / "res"),
                         "RUNS_DIR": str(tmp_path), "SEEDS": "0,5", "LSQ_INIT": "mse"})
    assert by_keywords == by_dict and by_dict.seeds == (0, 5) and by_dict.lsq_init == "mse"
    with pytest.raises(TypeError, match="keyword"):
        X.context("quick")
    with pytest.raises(TypeError, match="positional"):
        X.context("quick", str(tmp_path))  # as the notebooks once called it
    with pytest.raises(ValueError, match="SEED"):
        X.context({"PROFILE": "quick", "SEED": 3})


def test_the_profiles_are_the_ones_everything_else_names():
    from uniq.repro.config import PROFILE_NAMES

    assert tuple(X.PROFILES) == PROFILE_NAMES
