"""The engine on the CIFAR task (generated data): learning, caching, resolution and hashing,
resume, NaN handling, recipes, precision, 1 bit from 2 bits, and bad configs."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY, cli_args, env, tiny

import uniq.repro.train as E
from uniq.repro.config import CifarConfig
from uniq.repro.recipes import RECIPES, get_recipe, lr_at
from uniq.repro.tasks import cifar_splits


def test_synthetic_run_learns_far_above_chance(tmp_path):
    run = E.fit(tiny(tmp_path, synthetic_train=2048, epochs=6), quiet=True)  # 192 steps
    assert run.result["dataset"] == "synthetic" and run.result["precision"] == "fp32"
    assert run.top1 > 25  # chance is 1%
    m = run.metrics()
    assert list(m.epoch) == list(range(6)) and m.train_loss.iloc[-1] < m.train_loss.iloc[0]
    assert run.result["top1_best"] == pytest.approx(m.eval_top1.max())
    assert run.result["top1_final"] == pytest.approx(m.eval_top1.iloc[-1])


@pytest.fixture(scope="module")
def fp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fp")
    return E.fit(tiny(tmp, epochs=2), quiet=True), tmp


def test_quantized_run_from_cache_and_dynamics(fp_run, monkeypatch):
    run, tmp = fp_run
    cfg = tiny(tmp, bits=2, epochs=1, fp_epochs=2)
    q = E.fit(cfg, quiet=True)
    saved = json.loads((q.dir / "config.json").read_text())
    assert saved["task"] == "cifar" and saved["config"]["grad_scale"] is True
    assert saved["config"]["precision"] == "fp32"
    assert saved["recipe"]["optimizer"] == "sgd" and saved["recipe"]["lr"] == 0.01
    assert saved["config"]["init_from"]["epochs"] == 2  # the parent: the FP run above
    assert len(list((tmp / "runs" / "cifar").iterdir())) == 2  # the FP parent was reused
    dyn = q.dynamics()
    for col in ("epoch_float", "layer", "step_size", "input_std", "sqnr_db", "optimal_sqnr_db"):
        assert col in dyn.columns
    assert dyn.layer.nunique() == 10  # every conv/linear of a ResNet-8 has an input quantizer
    assert (dyn.groupby("layer").size() == 4).all()  # 4 probes per epoch
    # asking again returns the finished run without loading data or building anything
    monkeypatch.setattr(E, "prepare", lambda *a, **k: pytest.fail("retrained a finished run"))
    again = E.fit(cfg, quiet=True)
    assert again.top1 == q.top1 and again.dir == q.dir
    assert sum(1 for n, _ in again.model().named_modules() if n.endswith("act_quantizer")) == 10


def test_learning_rate_actually_used_follows_the_recipe(fp_run):
    run, _ = fp_run
    steps = len(range(0, 512 - 63, 64))
    for _, row in run.metrics().iterrows():
        expected = lr_at(get_recipe("fp"), row.epoch + (steps - 1) / steps, 2)
        assert row.lr == pytest.approx(expected)


def _train_cmd(runs, epochs):
    return [sys.executable, "-m", "uniq", "train", *cli_args(
        dataset="synthetic", synthetic_train=512, synthetic_test=200, depth=8, batch_size=64,
        bits=2, fp_epochs=1, epochs=epochs, calib_batches=2, runs_dir=runs, device="cpu")]


STOP_AFTER_CHECKPOINT = """
import os, runpy, signal, sys
import uniq.repro.train as engine
save = engine.save_atomic
def save_then_stop(obj, path):
    save(obj, path)
    if path.name == "checkpoint.pt" and obj.get("epoch") == 2:
        os.kill(os.getpid(), signal.SIGSTOP)
engine.save_atomic = save_then_stop
sys.argv = ["uniq", *sys.argv[1:]]
runpy.run_module("uniq", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_killed_and_resumed_run_is_bit_identical(tmp_path):
    straight = subprocess.run(_train_cmd(tmp_path / "a", 4), env=env(), capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr
    run_dir = Path(json.loads(straight.stdout[straight.stdout.rindex("{\n"):])["run_dir"])

    # Killed at an observed event, whatever the machine's speed: the process stops itself right
    # after the checkpoint of epoch 2 is written, and is killed while stopped.
    cmd = _train_cmd(tmp_path / "b", 4)
    proc = subprocess.Popen([sys.executable, "-c", STOP_AFTER_CHECKPOINT, *cmd[3:]], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the run ended (status {status}) before its checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = tmp_path / "b" / "cifar" / run_dir.name / "checkpoint.pt"
    assert not (ckpt.parent / "result.json").exists()
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2

    resumed = subprocess.run(_train_cmd(tmp_path / "b", 4) + ["--resume"], env=env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch" in resumed.stdout
    a = torch.load(run_dir / "model.pt", weights_only=True)
    b = torch.load(ckpt.parent / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k], k
    ma, mb = (pd.read_csv(d / "metrics.csv") for d in (run_dir, ckpt.parent))
    assert list(mb.epoch) == [0, 1, 2, 3]  # rebuilt from the checkpoint: each epoch once
    assert ma.eval_top1.tolist() == mb.eval_top1.tolist()
    assert ma.train_loss.tolist() == mb.train_loss.tolist()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_step = E.train_step

    def poisoned(*args):
        calls["n"] += 1
        loss, correct = real_step(*args)
        return (loss * float("nan") if calls["n"] > 12 else loss), correct

    monkeypatch.setattr(E, "train_step", poisoned)
    cfg = tiny(tmp_path, epochs=3)  # 8 steps per epoch: epoch 2 goes bad
    with pytest.raises(E.TrainingDiverged, match="last good checkpoint") as err:
        E.fit(cfg, quiet=True)
    assert "epoch 2" in str(err.value) and "--init-from-run" in str(err.value)
    ckpt = torch.load(cfg.run_dir() / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert not (cfg.run_dir() / "result.json").exists()


def test_non_finite_weights_at_the_end_of_an_epoch_are_never_checkpointed(tmp_path,
                                                                           monkeypatch):
    real_step = E.train_step
    calls = {"n": 0}

    def last_step_breaks_a_weight(net, optimizer, x, y, precision):
        calls["n"] += 1
        out = real_step(net, optimizer, x, y, precision)
        if calls["n"] == 16:  # the last step of epoch 2: the loss read before it was fine
            with torch.no_grad():
                next(net.parameters()).fill_(float("inf"))
        return out

    monkeypatch.setattr(E, "train_step", last_step_breaks_a_weight)
    cfg = tiny(tmp_path, epochs=3, log_every=4)
    with pytest.raises(E.TrainingDiverged, match="epoch 2"):
        E.fit(cfg, quiet=True)
    ckpt = torch.load(cfg.run_dir() / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values()
               if torch.is_tensor(v) and v.is_floating_point())


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
    from uniq.repro.train import build_optimizer

    q = uniq.quantize_model(preact_resnet(8), 2, init=0.1)
    opt = build_optimizer(q, get_recipe("sgd"))
    steps = {id(p) for p in uniq.step_parameters(q)}
    for g in opt.param_groups:
        ids = {id(p) for p in g["params"]}
        assert (g["weight_decay"] == 0) == (ids <= steps)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(q.parameters()))


# --- resolution and hashing ------------------------------------------------------------------


def test_resolution_is_complete_and_idempotent(tmp_path):
    cfg = tiny(tmp_path, bits=1, warmup_scale=0.1, epochs=3)
    r = cfg.resolved()
    assert r.recipe == "adam-warmup5" and r.lr == 0.004 and r.warmup_epochs == pytest.approx(0.5)
    assert r.weight_decay == 5e-4 and r.warmup_scale == 1.0 and r.weight_granularity == "tensor"
    assert r.init_from is not None and r.init_from["bits"] == 32
    assert r.resolved() == r and r.key() == cfg.key()


def test_one_experiment_is_one_run_whoever_asks(tmp_path):
    # Table 4's 1-bit run (default recipe) and Table 6's "Adam, warm-up 5" row
    default = tiny(tmp_path, bits=1, warmup_scale=0.05)
    named = tiny(tmp_path, bits=1, recipe="adam-warmup5", warmup_scale=0.05)
    spelled = tiny(tmp_path, bits=1, recipe="adam-lr0.004", warmup_epochs=5.0,
                   warmup_scale=0.05)
    assert default.key() == named.key()
    assert spelled.recipe_obj().warmup_lr == 0.0  # adam-lr0.004 has no warm-up rate: differs
    # an FP run is one run whatever the quantizer fields say
    assert tiny(tmp_path, calib_batches=7, init=0.2).key() == tiny(tmp_path).key()


def test_config_hash_ignores_placement_but_not_what_is_computed(tmp_path):
    a = tiny(tmp_path, epochs=2)
    assert a.key() == tiny(tmp_path / "x", epochs=2, device="auto", log_every=3, workers=0,
                           stop_after=1).key()
    for change in ({"lr": 0.05}, {"epochs": 3}, {"precision": "bf16"}, {"seed": 1},
                   {"weight_decay": 0.0}, {"compile": "default"}, {"loader": "dataloader"}):
        assert a.key() != tiny(tmp_path, **{"epochs": 2, **change}).key(), change
    q = tiny(tmp_path, bits=2)
    assert q.key() != tiny(tmp_path, bits=2, fp_epochs=3).key()  # another parent
    assert q.key() != tiny(tmp_path, bits=2, signed_inputs="unsigned").key()
    assert q.key() != tiny(tmp_path, bits=2, grad_scale=False).key()


@pytest.mark.parametrize("kw,match", [
    ({"recipe": "rmsprop"}, "unknown recipe"),
    ({"bits": 0}, "bits"),
    ({"bits": 2.0}, "bits must be an integer"),
    ({"bits": True}, "bits must be an integer"),
    ({"epochs": -1}, "epochs"),
    ({"epochs": 2.5}, "epochs must be an integer"),
    ({"batch_size": "128"}, "batch_size must be an integer"),
    ({"method": "lsq", "bits": 1}, "1-bit"),
    ({"method": "dorefa"}, "method must be one of"),
    ({"init": "median"}, "init"),
    ({"init": -0.1}, "init"),
    ({"dataset": "mnist"}, "dataset"),
    ({"depth": 30}, "depth"),
    ({"lr": float("nan")}, "lr must be a finite number"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"weight_decay": float("nan")}, "weight_decay must be a finite"),
    ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
    ({"warmup_epochs": float("inf")}, "warmup_epochs must be a finite"),
    ({"precision": "fp16"}, "precision must be one of"),
    ({"data_fraction": 0.0}, "data_fraction"),
    ({"data_fraction": float("nan")}, "data_fraction must be a finite"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"compile": "fast"}, "compile must be one of"),
    ({"signed_inputs": "maybe"}, "signed_inputs must be one of"),
    ({"weight_granularity": "row"}, "weight_granularity must be one of"),
    ({"device": "tpu"}, "device"),
    ({"init_from_run": "/nonexistent/run"}, "no run directory"),
])
def test_bad_configs(tmp_path, kw, match, monkeypatch):
    monkeypatch.setattr(E, "prepare", lambda *a, **k: pytest.fail("a bad config was trained"))
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        E.fit(tiny(tmp_path, **{"epochs": 1, **kw}), quiet=True)


def test_missing_cifar_offline_is_a_clear_error(tmp_path):
    cfg = tiny(tmp_path, dataset="cifar100", data_dir=str(tmp_path / "nothing"), download=False)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        E.fit(cfg, quiet=True)


# --- precision, 1 bit from 2 bits, compile -----------------------------------------------------


def test_bf16_is_an_explicit_choice_recorded_in_the_run(fp_run):
    run, tmp = fp_run
    assert run.config.precision == "fp32" and run.result["precision"] == "fp32"
    bf = E.fit(tiny(tmp, epochs=1, precision="bf16"), quiet=True)
    assert bf.result["precision"] == "bf16" and bf.dir != run.dir


def _weights_digest(state: dict) -> str:
    """sha256 of the weights and buffers, quantizer state left out (a new run calibrates anew)."""
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        if "quantizer" not in k and torch.is_tensor(v):
            raw = v.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
            h.update(k.encode() + raw)
    return h.hexdigest()


def test_one_bit_from_a_two_bit_run_is_binary_with_one_bit_steps(fp_run, monkeypatch):
    from uniq.modules import quantizers

    run, tmp = fp_run
    two = E.fit(tiny(tmp, bits=2, epochs=1, fp_epochs=2), quiet=True)
    started = []
    prepare = E.prepare

    def prepare_and_record(*args, **kwargs):
        session = prepare(*args, **kwargs)
        started.append(_weights_digest(session.model.state_dict()))
        return session

    monkeypatch.setattr(E, "prepare", prepare_and_record)
    one = E.fit(tiny(tmp, bits=1, epochs=1, init_from_run=str(two.dir)), quiet=True)
    # the 1-bit run started from the 2-bit run's weights, not from the FP run's
    parent = torch.load(two.dir / "model.pt", weights_only=True)
    assert started == [_weights_digest(parent)]
    assert started[0] != _weights_digest(torch.load(run.dir / "model.pt", weights_only=True))
    model, parent = one.model(), two.model()
    x = torch.randn(4, 3, 32, 32)
    levels = {}
    for name, q in quantizers(model):
        layer = model.get_submodule(name.rsplit(".", 1)[0])
        if q.bits != 1:
            continue
        if name.endswith("weight_quantizer"):
            wq = q(layer.weight).detach()
            per = wq.reshape(-1) if q.step.dim() == 0 else wq.reshape(wq.shape[0], -1)[0]
            levels[name] = per.unique().numel()
            assert levels[name] == 2, name
            assert not torch.equal(q.step, dict(quantizers(parent))[name].step), name
    assert levels, "the 1-bit model has no 1-bit layer"
    acts = {}

    def grab(name):
        def hook(mod, args, out):
            acts[name] = out.detach()
        return hook

    hooks = [q.register_forward_hook(grab(n)) for n, q in quantizers(model)
             if n.endswith("act_quantizer") and q.bits == 1]
    model.eval()(x)
    for h in hooks:
        h.remove()
    for name, out in acts.items():
        assert out.unique().numel() <= 2, name


def test_quantized_model_compiles_without_graph_breaks():
    import uniq
    from uniq.models import preact_resnet

    torch.manual_seed(0)
    q = uniq.quantize_model(preact_resnet(8), 2)
    uniq.calibrate(q, [torch.randn(8, 3, 32, 32)], 1)
    compiled = torch.compile(q, fullgraph=True, backend="aot_eager")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(100, (4,))
    opt = torch.optim.SGD(q.parameters(), lr=0.0)  # lr 0: the weights stay as they are
    loss_c, _ = E.train_step(compiled, opt, x, y)
    loss_e, _ = E.train_step(q, opt, x, y)
    assert torch.allclose(loss_c, loss_e, rtol=1e-5)
    explanation = torch._dynamo.explain(q)(x)
    assert explanation.graph_break_count == 0


def test_cli_prints_the_resolved_config_and_its_state(tmp_path):
    from conftest import uniq_cli

    out = uniq_cli("train", *cli_args(**{**TINY, "bits": 1, "warmup_scale": 0.1,
                                         "runs_dir": tmp_path}), "--print-config")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    cfg = CifarConfig(**{**TINY, "bits": 1, "warmup_scale": 0.1, "runs_dir": str(tmp_path)})
    assert info["key"] == cfg.key() and info["state"] == "missing"
    assert info["recipe_spelled_out"]["warmup_epochs"] == pytest.approx(0.5)


def test_every_seed_trains_on_the_same_data(tmp_path):
    """The seed varies order and augmentation, not the data: a quantized run of seed 1 starts
    from the full-precision run of seed 0 and must see the data that run was trained on."""
    a_train, a_test = cifar_splits(tiny(tmp_path, seed=0, data_fraction=0.5))
    b_train, b_test = cifar_splits(tiny(tmp_path, seed=1, data_fraction=0.5))
    assert torch.equal(a_train.images, b_train.images) and torch.equal(a_test.labels,
                                                                        b_test.labels)
