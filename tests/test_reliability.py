"""Faults and bad input with real processes: two jobs on one run, stale locks, --fresh and shared
parents, divergence on the command line, corrupt and hand-edited run files."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, cli_args, env, tiny, uniq_cli

import uniq.repro.runs as RD
import uniq.repro.train as E
from uniq.repro.runs import CorruptFile, RunBusy, RunLock

RUN = {**TINY, "bits": 2, "epochs": 2}


def _cmd(runs, **kw):
    return [sys.executable, "-m", "uniq", "train", *cli_args(**{**RUN, "runs_dir": runs, **kw})]


@pytest.mark.slow
def test_two_processes_on_one_run_train_it_once(tmp_path):
    procs = [subprocess.Popen(_cmd(tmp_path), env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    results = [json.loads(out[out.rindex("{\n"):]) for out, _ in outs]
    assert results[0] == results[1]
    logs = "".join(out for out, _ in outs)
    # each of the two runs (the FP parent and the 2-bit run) was prepared exactly once
    for run in {Path(results[0]["run_dir"]).name, "resnet8-fp"}:
        assert sum(run in line and "preparing" in line for line in logs.splitlines()) == 1, logs
    run_dir = Path(results[0]["run_dir"])
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("epoch") and len(metrics) == 3  # header + 2 epochs, once each
    assert not list(run_dir.glob(".*.tmp"))
    assert not (run_dir / ".holder").exists()  # released


def test_a_stale_lock_of_a_dead_process_is_recovered(tmp_path, capsys):
    cfg = tiny(tmp_path, epochs=1)
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / ".holder").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                                 "since": "2026-01-01T00:00:00"}))
    run = E.fit(cfg)
    assert run.finished
    assert f"recovered a stale lock left by pid {dead.pid}" in capsys.readouterr().out


@pytest.mark.slow
def test_a_busy_run_waits_by_default_or_stops_with_no_wait(tmp_path):
    cfg = tiny(tmp_path, epochs=1)
    with RunLock(cfg.run_dir(), say=lambda *a, **k: None):
        with pytest.raises(RunBusy, match=f"pid {os.getpid()}"):
            E.fit(tiny(tmp_path, epochs=1, wait=False), quiet=True)
        out = uniq_cli("train", *cli_args(**{**TINY, "epochs": 1, "runs_dir": tmp_path / "runs",
                                              "wait": False}))
        assert out.returncode == 4 and "being trained by" in out.stderr
        assert "Traceback" not in out.stderr


def test_the_run_lock_is_released_when_its_block_raises(tmp_path):
    quiet = {"say": lambda *a, **k: None}
    with pytest.raises(KeyError), RunLock(tmp_path, **quiet):
        assert RunLock(tmp_path).holder()["pid"] == os.getpid()
        raise KeyError
    assert not (tmp_path / ".holder").exists()
    with RunLock(tmp_path, wait=False, **quiet):  # free again: no RunBusy
        pass


def _stamps(run_dir: Path) -> dict:
    """Identity of each file of a run: a rewritten file (atomic replace) gets a new one."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in run_dir.iterdir()
            if p.suffix in (".pt", ".json")}


@pytest.mark.slow
def test_fresh_retrains_the_run_asked_for_and_keeps_its_shared_parent(tmp_path):
    kw = {**TINY, "bits": 2, "epochs": 1, "runs_dir": tmp_path / "runs"}
    first = uniq_cli("train", *cli_args(**kw))
    assert first.returncode == 0, first.stderr
    run_dir = Path(json.loads(first.stdout[first.stdout.rindex("{\n"):])["run_dir"])
    parent_dir = next(p for p in run_dir.parent.iterdir() if p.name.startswith("resnet8-fp"))
    run_before, parent_before = _stamps(run_dir), _stamps(parent_dir)
    assert {"checkpoint.pt", "model.pt", "result.json"} <= set(run_before)

    again = uniq_cli("train", *cli_args(**kw), "--fresh")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout[again.stdout.rindex("{\n"):])["run_dir"] == str(run_dir)
    assert "epoch 1/1" in again.stdout  # it trained, not answered from the cache
    run_after = _stamps(run_dir)
    for name in ("checkpoint.pt", "model.pt", "result.json"):
        assert run_after[name] != run_before[name], f"{name} was not written again"
    assert _stamps(parent_dir) == parent_before  # the shared parent is untouched


@pytest.mark.slow
def test_divergence_on_the_cli_is_a_message_with_the_way_on(tmp_path):
    out = uniq_cli("train", *cli_args(**{**RUN, "runs_dir": tmp_path, "lr": 1e8,
                                         "epochs": 3}))
    assert out.returncode == 3, out.stderr
    assert "training diverged in epoch" in out.stderr and "Traceback" not in out.stderr
    assert "step must be positive" not in out.stderr.split("diverged")[0]


@pytest.mark.slow
def test_a_diverged_run_continues_from_its_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, bits=2, epochs=3)
    real_step = E.train_step
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        loss, correct = real_step(*args)
        return (loss * float("inf") if calls["n"] > 20 else loss), correct  # after epoch 1

    monkeypatch.setattr(E, "train_step", poisoned)
    with pytest.raises(E.TrainingDiverged, match="--init-from-run") as err:
        E.fit(cfg, quiet=True)
    monkeypatch.setattr(E, "train_step", real_step)
    hint = str(err.value)
    run_dir = hint.split("--init-from-run ")[1].split()[0]
    lr = float(hint.split("--lr ")[1].split()[0].rstrip("(."))
    assert Path(run_dir) == cfg.run_dir() and lr < 0.01
    after = E.fit(tiny(tmp_path, bits=2, epochs=2, init_from_run=run_dir, lr=lr), quiet=True)
    assert after.finished and after.dir != cfg.run_dir()
    saved = json.loads((after.dir / "config.json").read_text())["config"]
    assert saved["init_from_run"] == run_dir and saved["init_from"] is None


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("done")
    return E.fit(tiny(tmp, epochs=1), quiet=True)


@pytest.mark.parametrize("damage,match", [
    (lambda d: (d / "config.json").write_text("{not json"), "config.json is not valid JSON"),
    (lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"epochs": 1', '"epochs": 7')),
     "config.json was changed after the run was made"),
    (lambda d: (d / "model.pt").write_bytes((d / "model.pt").read_bytes()[:100]),
     "model.pt cannot be loaded"),
])
def test_corrupt_run_files_give_the_file_and_the_remedy(finished, tmp_path, damage, match):
    import shutil

    copy = tmp_path / finished.dir.name
    shutil.copytree(finished.dir, copy)
    damage(copy)
    with pytest.raises(CorruptFile, match=match):
        RD.Run.load(copy).state_dict()


@pytest.mark.slow
def test_a_truncated_checkpoint_names_the_file_and_fresh(tmp_path):
    cfg = tiny(tmp_path, epochs=2, stop_after=1)
    assert E.fit(cfg, quiet=True) is None
    ckpt = cfg.run_dir() / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    out = uniq_cli("train", *cli_args(**{**TINY, "epochs": 2, "runs_dir": tmp_path / "runs"}))
    assert out.returncode == 2 and str(ckpt) in out.stderr and "--fresh" in out.stderr
    ok = uniq_cli("train", *cli_args(**{**TINY, "epochs": 2, "runs_dir": tmp_path / "runs"}),
                  "--fresh")
    assert ok.returncode == 0, ok.stderr
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2


@pytest.mark.parametrize("args,match", [
    (["train", "--lr", "nan"], "not a finite number"),
    (["train", "--weight-decay", "abc"], "not a number"),
    (["train", "--epochs", "2.5"], "invalid int value"),
    (["train", "--bits", "9"], "bits must be from"),
    (["train", "--precision", "fp16"], "invalid choice"),
    (["train", "--depth", "30"], "depth must be 6n+2"),
    (["train", "--resume", "--fresh"], "contradict"),
    (["train", "--evaluate", "/nonexistent/model.pt", "--dataset", "synthetic"], "no file at"),
    (["train", "--init-from-run", "/nonexistent/run"], "no run directory"),
    (["imagenet", "--data-dir", "/nonexistent", "--pretrained", "none"], "train/ folder"),
    (["imagenet", "--arch", "resnet50"], "invalid choice"),
    (["imagenet", "--batch-size", "x"], "invalid int value"),
    (["reproduce", "--only", "abc"], "comma-separated integers"),
    (["reproduce", "--only", "42"], "do not exist"),
    (["reproduce", "-p", "NOPE=1", "--only", "1"], "unknown parameter"),
    (["runs", "--seeds", "two"], "seeds must be"),
    (["table1", "--max-bits", "12"], "max-bits"),
])
def test_cli_bad_input_is_one_clear_line(tmp_path, args, match, capsys):
    """In process (the real-process cases are the divergence and busy tests above)."""
    from uniq.repro.cli import main

    where = ["--runs-dir", str(tmp_path)] if args[0] in ("train", "imagenet", "runs") else []
    try:
        code = main([*args, *where])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, (args, err)
    assert match in err and "Traceback" not in err, err


def test_imagenet_config_type_errors_are_clear():
    from uniq.repro.config import ImageNetConfig

    with pytest.raises(ValueError, match="epochs must be an integer"):
        ImageNetConfig(epochs=2.5).resolved()
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        ImageNetConfig(batch_size="256").resolved()
    with pytest.raises(ValueError, match="arch must be one of"):
        ImageNetConfig(arch="vgg").resolved()


@pytest.mark.slow
def test_lock_waiter_returns_the_finished_run(tmp_path):
    """A second process that finds the run in progress waits, then returns it untouched."""
    cfg = tiny(tmp_path, epochs=1)
    first = subprocess.Popen(_cmd(tmp_path / "runs", bits=32, epochs=1), env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    holder = cfg.run_dir() / ".holder"
    deadline = time.time() + 120
    while time.time() < deadline and not holder.exists():
        time.sleep(0.05)
    second = uniq_cli("train", *cli_args(**{**TINY, "epochs": 1,
                                            "runs_dir": tmp_path / "runs"}))
    first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert "waiting for it to finish" in second.stdout or "finished before" in second.stdout
    assert "preparing" not in second.stdout


# --- bad files never become numbers, never tracebacks --------------------------------


class _Payload:
    """A pickle that would create a file when unpickled (torch refuses it: weights_only)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bad_weight_file(kind: str, path: Path) -> Path:
    if kind == "text":
        path.write_text("these are not weights\n")
    elif kind == "list":
        torch.save([torch.zeros(3), torch.ones(2)], path)
    elif kind == "other model":
        torch.save({"conv.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(10)}, path)
    elif kind == "truncated":
        from uniq.models import imagenet_model

        torch.save(imagenet_model("preresnet18").state_dict(), path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "reduce payload":
        torch.save(_Payload(path.with_name("executed")), path)
    return path


def _main(args, capsys):
    from uniq.repro.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def _one_clear_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, err)


@pytest.mark.parametrize("kind,match", [
    ("text", "not a torch weights file"), ("list", "not a state dict"),
    ("other model", "not a state dict of preresnet18"), ("truncated", "not a torch weights"),
    ("reduce payload", "would run code"),
])
def test_a_bad_pretrained_file_is_one_line_and_runs_nothing(tmp_path, capsys, kind, match):
    bad = _bad_weight_file(kind, tmp_path / "weights.pth")
    code, err = _main(["imagenet", "--pretrained", bad, "--runs-dir", tmp_path, "--bits", "2"],
                      capsys)
    assert code == 2
    _one_clear_line(err, match, str(bad), "state_dict")
    assert not (tmp_path / "executed").exists()


def test_a_pretrained_file_counts_by_its_content(tmp_path):
    from uniq.models import imagenet_model
    from uniq.repro.config import ImageNetConfig

    state = imagenet_model("preresnet18").state_dict()
    a, b, c = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "c.pth"
    torch.save(state, a)
    b.write_bytes(a.read_bytes())  # the same content under another name
    state["output.bias"] += 1
    torch.save(state, c)

    def key(p):
        return ImageNetConfig(bits=2, pretrained=str(p)).key()

    assert key(a) == key(b) != key(c)
    assert key(a) not in (ImageNetConfig(bits=2).key(),
                          ImageNetConfig(bits=2, pretrained="none").key())


def test_export_output_below_a_file_and_batch_zero(tmp_path, capsys):
    blocker = tmp_path / "plain"
    blocker.write_text("x")
    code, err = _main(["export", tmp_path, "-o", blocker / "m.onnx"], capsys)
    assert code == 2
    _one_clear_line(err, str(blocker), "is a file")
    code, err = _main(["export", tmp_path, "-o", tmp_path / "m.onnx", "--batch", "0"], capsys)
    assert code == 2
    _one_clear_line(err, "--batch must be a positive integer")


def test_a_read_only_runs_dir_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    real = Path.mkdir

    def read_only(self, *a, **k):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", read_only)
    code, err = _main(["train", *cli_args(**{**TINY, "epochs": 1}), "--runs-dir",
                       tmp_path / "ro"], capsys)
    assert code == 2
    _one_clear_line(err, "Read-only file system", str(tmp_path / "ro"), "--runs-dir")


def test_a_corrupt_cifar_archive_without_the_checksum_is_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    archive = data / "cifar-100-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 8)  # a gzip header, then junk
    code, err = _main(["train", "--epochs", "1", "--device", "cpu", "--data-dir", data,
                       "--no-verify-data", "--no-download", "--runs-dir", tmp_path / "runs"],
                      capsys)
    assert code == 2
    _one_clear_line(err, str(archive), "cannot be extracted", "download it again")


def test_reproduce_with_an_unknown_profile_parameter_says_so_last(capsys):
    code, err = _main(["reproduce", "-p", "PROFILE=nope", "--only", "1"], capsys)
    assert code == 2
    _one_clear_line(err, "PROFILE=nope", "unknown profile", "--profile")


def test_stale_temporaries_of_dead_processes_are_removed_when_a_run_is_taken_up(tmp_path):
    cfg = tiny(tmp_path, epochs=2, stop_after=1)
    assert E.fit(cfg, quiet=True) is None
    run_dir = cfg.run_dir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = [run_dir / f".checkpoint.pt.{host}.{dead.pid}.tmp",
             run_dir / f".dynamics.csv.{host}.{dead.pid}.tmp"]
    alive = run_dir / f".metrics.csv.{host}.{os.getppid()}.tmp"  # a live process's: kept
    other_host = run_dir / f".model.pt.elsewhere.{dead.pid}.tmp"  # cannot tell: kept
    for p in [*stale, alive, other_host]:
        p.write_bytes(b"partial")
    assert E.fit(tiny(tmp_path, epochs=2), quiet=True).finished
    assert not any(p.exists() for p in stale)
    assert alive.exists() and other_host.exists()
    # a finished run asked for again is tidied too
    stale[0].write_bytes(b"partial")
    assert E.fit(tiny(tmp_path, epochs=2), quiet=True).finished and not stale[0].exists()


def test_a_checkpoint_is_kept_only_if_its_evaluation_is_finite(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, epochs=3)
    real = E.evaluate
    calls = {"n": 0}

    def poisoned(*args, **kw):
        calls["n"] += 1
        loss, top1, n = real(*args, **kw)
        return (float("nan") if calls["n"] == 2 else loss), top1, n  # epoch 2's evaluation

    monkeypatch.setattr(E, "evaluate", poisoned)
    with pytest.raises(E.TrainingDiverged, match="evaluation loss is nan") as err:
        E.fit(cfg, quiet=True)
    ckpt = torch.load(cfg.run_dir() / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1  # epoch 2 (NaN evaluation) was not written
    assert all(np.isfinite(r["eval_loss"]) for r in ckpt["history"]["metrics"])
    assert "last good checkpoint" in str(err.value)


def test_the_suggested_restart_rate_is_on_the_recipes_scale(tmp_path):
    assert E.restart_lr(tiny(tmp_path, lr=1e6)) == pytest.approx(0.05)  # fp recipe: 0.1
    assert E.restart_lr(tiny(tmp_path, bits=2)) == pytest.approx(0.005)  # sgd: 0.01
    assert E.restart_lr(tiny(tmp_path, bits=2, lr=0.001)) == pytest.approx(0.0005)
