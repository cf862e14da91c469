"""The CIFAR engine on the synthetic set: learning, caching, resume, NaN, recipes, bad configs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import uniq.train as T
from uniq.recipes import RECIPES, get_recipe, lr_at

REPO = Path(__file__).resolve().parent.parent
TINY = dict(dataset="synthetic", synthetic_train=1024, synthetic_test=500, depth=8,
            batch_size=64, calib_batches=2, log_every=1000)


def tiny(tmp_path, **kw):
    return T.TrainConfig(**{**TINY, "runs_dir": str(tmp_path / "runs"), **kw})


def test_synthetic_run_learns_far_above_chance(tmp_path):
    cfg = tiny(tmp_path, synthetic_train=2048, epochs=6)  # 192 steps
    run = T.train(cfg, quiet=True)
    assert run.summary["dataset"] == "synthetic"
    assert run.top1 > 25  # chance is 1%
    m = run.metrics()
    assert list(m.epoch) == list(range(6)) and m.train_loss.iloc[-1] < m.train_loss.iloc[0]


@pytest.fixture(scope="module")
def fp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fp")
    return T.train(tiny(tmp, epochs=2), quiet=True), tmp


def test_quantized_run_from_cache_and_dynamics(fp_run, monkeypatch):
    run, tmp = fp_run
    cfg = tiny(tmp, bits=2, epochs=1, init_from=run.config.to_dict())
    q = T.train(cfg, quiet=True)
    saved = json.loads((q.dir / "config.json").read_text())
    assert saved["dataset"] == "synthetic" and saved["config"]["grad_scale"] is True
    assert saved["recipe"]["optimizer"] == "sgd" and saved["recipe"]["lr"] == 0.01
    dyn = q.dynamics()
    for col in ("epoch_float", "layer", "step_size", "input_std", "sqnr_db", "optimal_sqnr_db"):
        assert col in dyn.columns
    assert dyn.layer.nunique() == 10  # every conv/linear of a ResNet-8 has an input quantizer
    assert (dyn.groupby("layer").size() == 4).all()  # 4 probes per epoch
    # asking again returns the finished run without training (setup is never called)
    monkeypatch.setattr(T, "setup", lambda *a, **k: pytest.fail("retrained a finished run"))
    again = T.train(cfg, quiet=True)
    assert again.top1 == q.top1 and again.dir == q.dir
    model = again.model()
    assert sum(1 for n, _ in model.named_modules() if n.endswith("act_quantizer")) == 10


def _train_cmd(runs, epochs):
    return [sys.executable, "-m", "uniq", "train", "--dataset", "synthetic",
            "--synthetic-size", "1024", "200", "--depth", "8", "--batch-size", "64",
            "--bits", "2", "--fp-epochs", "1", "--epochs", str(epochs), "--calib-batches", "2",
            "--runs-dir", str(runs), "--device", "cpu"]


def test_killed_and_resumed_run_is_bit_identical(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    straight = subprocess.run(_train_cmd(tmp_path / "a", 4), env=env, capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr
    run_dir = Path(json.loads(straight.stdout[straight.stdout.index("{"):])["run_dir"])

    proc = subprocess.Popen(_train_cmd(tmp_path / "b", 4), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    ckpt = tmp_path / "b" / run_dir.name / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (ckpt.parent / "summary.json").exists()
    epoch_at_kill = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= epoch_at_kill < 4

    resumed = subprocess.run(_train_cmd(tmp_path / "b", 4) + ["--resume"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch" in resumed.stdout
    a = torch.load(run_dir / "model.pt", weights_only=True)
    b = torch.load(ckpt.parent / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        if torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k
    ma, mb = (pd.read_csv(d / "metrics.csv") for d in (run_dir, ckpt.parent))
    assert list(mb.epoch) == [0, 1, 2, 3]
    assert ma.test_top1.tolist() == mb.test_top1.tolist()
    assert ma.train_loss.tolist() == mb.train_loss.tolist()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_step = T.train_step

    def poisoned(*args):
        calls["n"] += 1
        loss, correct = real_step(*args)
        return (loss * float("nan") if calls["n"] > 20 else loss), correct

    monkeypatch.setattr(T, "train_step", poisoned)
    cfg = tiny(tmp_path, epochs=3)  # 16 steps per epoch: epoch 2 goes bad
    with pytest.raises(T.TrainingDiverged, match="last good checkpoint") as err:
        T.train(cfg, quiet=True)
    assert "epoch 2" in str(err.value)
    ckpt = torch.load(cfg.run_dir() / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert not (cfg.run_dir() / "summary.json").exists()


def test_learning_rate_actually_used_follows_the_recipe(fp_run):
    run, _ = fp_run
    m = run.metrics()
    steps = 16
    for _, row in m.iterrows():
        expected = lr_at(get_recipe("fp"), row.epoch + (steps - 1) / steps, 2)
        assert row.lr == pytest.approx(expected)


@pytest.mark.parametrize("name,checks", [
    ("fp", {0: 0.1, 175: 0.05, 350: 0.0}),
    ("sgd", {0: 0.01, 175: 0.005, 262.5: 0.01 * 0.5 * (1 - 2**-0.5)}),
    ("adam-warmup5", {0: 0.001, 4.99: 0.001, 5: 0.004, 177.5: 0.002}),
    ("sgd-warmup5", {0: 0.001, 4.9: 0.001, 5: 0.01, 177.5: 0.005}),
    ("sgd-warmup10", {9.9: 0.001, 10: 0.01, 180: 0.005}),
    ("adam-warmup10", {9.9: 0.001, 10: 0.004, 180: 0.002}),
    ("sgd-lr0.01", {0: 0.01, 175: 0.005}),
    ("sgd-lr0.005", {0: 0.005, 175: 0.0025}),
    ("sgd-lr0.001", {0: 0.001, 175: 0.0005}),
    ("adam-lr0.004", {0: 0.004, 175: 0.002}),
    ("adam-lr0.001", {0: 0.001, 175: 0.0005}),
    ("adam-lr0.0005", {0: 0.0005, 175: 0.00025}),
])
def test_every_recipe_builds_its_schedule(name, checks):
    recipe = get_recipe(name)
    assert recipe.optimizer == name.split("-")[0] or name in ("fp",)
    for epoch, lr in checks.items():
        assert lr_at(recipe, epoch, 350) == pytest.approx(lr, abs=1e-12)


def test_recipes_cover_table6_and_steps_have_no_weight_decay():
    assert {"sgd-lr0.01", "sgd-lr0.005", "sgd-lr0.001", "sgd-warmup5", "sgd-warmup10",
            "adam-lr0.004", "adam-lr0.001", "adam-lr0.0005", "adam-warmup5",
            "adam-warmup10"} <= set(RECIPES)
    import uniq
    from uniq.models import preact_resnet
    from uniq.recipes import build_optimizer

    q = uniq.quantize_model(preact_resnet(8), 2, init=0.1)
    opt = build_optimizer(q, get_recipe("sgd"))
    steps = {id(p) for p in uniq.step_parameters(q)}
    for g in opt.param_groups:
        ids = {id(p) for p in g["params"]}
        assert (g["weight_decay"] == 0) == (ids <= steps)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(q.parameters()))


@pytest.mark.parametrize("kw,match", [
    ({"recipe": "rmsprop"}, "unknown recipe"),
    ({"bits": 0}, "bits"),
    ({"epochs": -1}, "epochs"),
    ({"method": "lsq", "bits": 1}, "1-bit"),
    ({"init": "median"}, "init"),
    ({"dataset": "mnist"}, "dataset"),
    ({"depth": 30}, "depth"),
])
def test_bad_configs(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        T.train(tiny(tmp_path, **kw), quiet=True)


def test_missing_cifar_offline_is_a_clear_error(tmp_path):
    cfg = tiny(tmp_path, dataset="cifar100", data_dir=str(tmp_path / "nothing"), download=False)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        T.train(cfg, quiet=True)


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "uniq", "train", "--bits", "0", "--runs-dir",
                          str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "bits" in out.stderr and "Traceback" not in out.stderr


def test_config_hash_ignores_placement_but_not_recipe(tmp_path):
    a = tiny(tmp_path, epochs=2)
    assert a.key() == tiny(tmp_path / "x", epochs=2, device="cpu", compile="default").key()
    assert a.key() != tiny(tmp_path, epochs=2, lr=0.05).key()
    assert a.key() != tiny(tmp_path, epochs=3).key()


def test_quantized_model_compiles_without_graph_breaks():
    import uniq
    from uniq.models import preact_resnet

    torch.manual_seed(0)
    q = uniq.quantize_model(preact_resnet(8), 2)
    uniq.calibrate(q, [torch.randn(8, 3, 32, 32)], 1)
    compiled = torch.compile(q, fullgraph=True, backend="aot_eager")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(100, (4,))
    opt = torch.optim.SGD(q.parameters(), lr=0.0)  # lr 0: the weights stay as they are
    loss_c, _ = T.train_step(compiled, opt, x, y, False)
    loss_e, _ = T.train_step(q, opt, x, y, False)
    assert torch.allclose(loss_c, loss_e, rtol=1e-5)
    explanation = torch._dynamo.explain(q)(x)
    assert explanation.graph_break_count == 0
