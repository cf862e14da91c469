"""Runs in parallel (``uniq.repro.jobs``): the same runs and bits as one at a time, parents first, a
failing run reported while the others finish; the SLURM script of a profile, parsed and
submitted to a stand-in ``sbatch``."""

import json
import os
import re
import shutil
import subprocess
import sys
import types

import pytest

import uniq.repro.jobs as J
import uniq.repro.study as X
from uniq.repro.cli import main
from uniq.repro.runs import run_state

# A study small enough to train five times over in seconds: 96 images, one epoch per run.
TINY = X.Profile("tiny", "synthetic", depth=8, batch_size=32, fp_epochs=1, epochs=1,
                 calib_batches=1, warmup_scale=0.1, seeds=(0, 1), synthetic_train=96,
                 synthetic_test=64, dynamics_per_epoch=1, threads=1)
KEYS = ["t4/uniq/2b", "t4/lsq/2b"]  # with the full-precision parent: 5 runs


def tiny_context(tmp_path, name, jobs):
    return X.Context(TINY, tmp_path / name / "results", tmp_path / name / "runs",
                     tmp_path / "data", "cpu", TINY.seeds, jobs=jobs)


@pytest.mark.slow  # trains 5 runs in worker processes
def test_two_at_a_time_trains_the_same_runs_to_the_same_bits_parents_first(tmp_path, capsys):
    one = X.ensure(tiny_context(tmp_path, "one", 1), KEYS)
    capsys.readouterr()
    two = X.ensure(tiny_context(tmp_path, "two", 2), KEYS)
    out = capsys.readouterr().out
    assert one.keys() == two.keys() and len(one) == 5
    for key, run in one.items():
        other = two[key]
        assert run.dir.name == other.dir.name  # the same key
        assert run.result["weights_sha256"] == other.result["weights_sha256"], key
        assert run.result["top1_final"] == other.result["top1_final"]
        assert run.result["environment"]["threads"] == other.result["environment"]["threads"] == 1
        assert json.loads((other.dir / "config.json").read_text())["config"]["threads"] == 1
    # the parent finished before any child started, and two children trained at once
    events = re.findall(r"^\[jobs\] (started|finished) (\S+) seed (\d)", out, re.M)
    assert events[:2] == [("started", "t4/fp", "0"), ("finished", "t4/fp", "0")]
    assert sorted((k, s) for e, k, s in events if e == "finished") == sorted(
        (k, str(s)) for k, s in one)
    assert "; 2 running" in out


@pytest.mark.slow  # trains runs in worker processes and kills one
def test_failing_and_killed_runs_are_reported_with_their_commands_while_the_others_finish(
        tmp_path, tiny_config, monkeypatch):
    good = tiny_config(tmp_path, bits=2, epochs=1, threads=1)
    bad = tiny_config(tmp_path, bits=2, epochs=1, threads=1, overrides="no_such_layer=4")
    victim = tiny_config(tmp_path, bits=2, epochs=1, threads=1, seed=1)  # its worker dies
    # a parent that cannot start (no CIFAR-100 here), and the run that starts from it
    orphan = tiny_config(tmp_path, bits=2, epochs=1, threads=1, dataset="cifar100",
                         download=False, data_dir=str(tmp_path / "empty"))
    submit = J.Worker.submit

    def kill_the_victim(self, job):
        submit(self, job)
        if job.run_dir == victim.run_dir():
            self.process.kill()

    monkeypatch.setattr(J.Worker, "submit", kill_the_victim)
    with pytest.raises(J.RunsFailed) as caught:
        J.train_all([bad, orphan, victim, good], jobs=2)
    message = str(caught.value)
    assert run_state(good.run_dir()) == "done"
    assert run_state(bad.run_dir()) != "done" and run_state(victim.run_dir()) != "done"
    # failed: bad, victim, orphan's parent; finished: the FP parent, good; not started: orphan
    assert "3 of 6 runs failed (2 finished and are kept; 1 not started" in message
    assert "no_such_layer" in message and "exit code 2" in message
    assert "killed by SIGKILL" in message
    for run in (bad, victim):
        assert J.shlex.join(["python", "-m", "uniq", *J.run_args(run)]) in message
    assert f"{orphan.run_dir().name}): not started" in message
    assert {j.run_dir for j in caught.value.failed} == {
        bad.run_dir(), victim.run_dir(), orphan.run_dir(), J.parent_config(orphan).run_dir()}
    log = next(j.log for j in caught.value.failed if j.run_dir == bad.run_dir())
    assert "no_such_layer" in log.read_text()


def test_jobs_count_and_errors(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setattr(J, "available_memory", lambda: None)  # the cores alone decide here
    assert J.parse_jobs("auto") == "auto" and J.parse_jobs("3") == 3 and J.parse_jobs(2) == 2
    for bad in (0, "0", "-1", "two", True, 1.5):
        with pytest.raises(ValueError, match="positive integer or 'auto'"):
            J.parse_jobs(bad)
    runs = [tiny_config(tmp_path, bits=2, epochs=1, seed=s, threads=1) for s in range(64)]
    if not J.visible_gpus():
        assert J.resolve_jobs("auto", runs) == min(J.available_cpus(), 64)
        unfixed = [tiny_config(tmp_path, bits=2, epochs=1, seed=s) for s in range(4)]
        assert J.resolve_jobs("auto", unfixed) == 1  # every core for each: one at a time
    assert J.resolve_jobs(8, runs[:3]) == 3 and J.resolve_jobs("auto", []) == 0
    assert X.context(profile="laptop", results_dir=str(tmp_path), jobs="2").jobs == 2


def test_a_container_s_cpu_quota_caps_the_workers(tmp_path):
    """``docker --cpus 1.5`` on a many-core host: the quota, not the host's cores, decides."""
    v2 = tmp_path / "v2"
    (v2 / "app" / "job").mkdir(parents=True)
    (v2 / "cpu.max").write_text("max 100000\n")
    (v2 / "app" / "cpu.max").write_text("150000 100000\n")  # a parent's quota binds too
    (v2 / "app" / "job" / "cpu.max").write_text("400000 100000\n")
    (tmp_path / "self2").write_text("0::/app/job\n")
    assert J.cpu_quota(v2, tmp_path / "self2") == 1.5
    assert J.available_cpus(v2, tmp_path / "self2") == 1
    v1 = tmp_path / "v1"
    (v1 / "cpu" / "docker" / "abc").mkdir(parents=True)
    (v1 / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "docker" / "abc" / "cpu.cfs_period_us").write_text("50000\n")
    (tmp_path / "self1").write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    assert J.cpu_quota(v1, tmp_path / "self1") == 4.0
    unlimited = J.available_cpus(tmp_path / "none", tmp_path / "missing")  # the CPU set alone
    assert J.available_cpus(v1, tmp_path / "self1") == min(4, unlimited)
    (v1 / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert J.cpu_quota(v1, tmp_path / "self1") is None
    assert J.cpu_quota(tmp_path / "none", tmp_path / "missing") is None


def test_auto_starts_no_more_workers_than_the_memory_holds(tmp_path, tiny_config, monkeypatch):
    runs = [tiny_config(tmp_path, bits=2, epochs=1, seed=s, threads=1) for s in range(64)]
    monkeypatch.setattr(J, "visible_gpus", lambda: [])
    monkeypatch.setattr(J, "available_cpus", lambda: 64)
    monkeypatch.setattr(J, "available_memory", lambda: int(3.5 * J.WORKER_MEMORY))
    assert J.resolve_jobs("auto", runs) == 3 and J.resolve_jobs(8, runs) == 8  # asked: obeyed
    monkeypatch.setattr(J, "available_memory", lambda: 1000)
    assert J.resolve_jobs("auto", runs) == 1


def test_available_memory_reads_the_machine_and_a_container_s_limit(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    8000000 kB\n")
    none = tmp_path / "none"
    assert J.available_memory(none, none, meminfo) == 8_000_000 * 1024
    v2 = tmp_path / "v2"
    (v2 / "box").mkdir(parents=True)
    (v2 / "box" / "memory.max").write_text("4294967296\n")
    (v2 / "box" / "memory.current").write_text("1073741824\n")
    (tmp_path / "self2").write_text("0::/box\n")
    assert J.available_memory(v2, tmp_path / "self2", meminfo) == 3 * 2**30
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)  # v1 at the root: "no limit" is a huge number
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text("5\n")
    (tmp_path / "self1").write_text("4:memory:/\n")
    assert J.available_memory(v1, tmp_path / "self1", meminfo) == 8_000_000 * 1024
    monkeypatch.setattr(J.os, "sysconf", {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 2**21}.get)
    assert J.available_memory(none, none, none) == 4 * 2**30  # no /proc/meminfo: half of 8 GiB

    def no_sysconf(name):
        raise ValueError(name)

    monkeypatch.setattr(J.os, "sysconf", no_sysconf)
    assert J.available_memory(none, none, none) is None


def test_a_worker_s_bar_follows_the_lines_a_real_run_prints(tmp_path, tiny_config, monkeypatch,
                                                             capsys):
    """In JupyterLab or a terminal each worker has a bar; it is drawn from the lines its run
    prints, so the parser is checked against a real run's output, not a copy of its format."""
    from uniq.repro.train import fit

    monkeypatch.setenv("UNIQ_PROGRESS", "lines")  # what a worker's run prints
    monkeypatch.setenv("UNIQ_PROGRESS_INTERVAL", "0")
    cfg = tiny_config(tmp_path, bits=2, epochs=2, threads=1, log_every=3)
    fit(J.parent_config(cfg), quiet=True)  # its full-precision parent, silently
    capsys.readouterr()
    fit(cfg)
    printed = capsys.readouterr().out.splitlines()
    steps = 512 // 64
    monkeypatch.setenv("UNIQ_PROGRESS", "auto")
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))  # a kernel
    display = J.Display(workers=2, total=3)
    assert display.bars is not None and len(display.bars) == 2
    job = J.Job(cfg, "t4/uniq/2b seed 0", slot=1)
    display.started(job)
    assert display.bars[1].desc.startswith("worker 2: t4/uniq/2b seed 0")
    seen = []
    for line in printed:
        display.line(job, line)
        seen.append(display.bars[1].n)
    bar = display.bars[1]
    assert bar.total == 2 * steps and bar.n == 2 * steps  # both epochs' steps
    assert sorted(set(seen)) == [0, 3, 6, 8, 11, 14, 16]  # every 3rd step and each epoch's end
    assert "epoch 2/2: train loss" in bar.postfix
    display.finished(job)
    assert display.overall.n == 1 and bar.desc.startswith("worker 2: idle")
    display.close()


def test_a_bad_jobs_value_is_one_line_before_any_work(tmp_path, capsys):
    assert main(["reproduce", "--profile", "smoke", "--jobs", "0", "--out-dir",
                 str(tmp_path / "res")]) == 2
    assert main(["runs", "--profile", "smoke", "--train", "--jobs", "many", "--runs-dir",
                 str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("positive integer or 'auto'" in line for line in err)
    assert not (tmp_path / "res").exists() and not (tmp_path / "runs").exists()


# --- SLURM ---------------------------------------------------------------------------------


def slurm_levels(script: str) -> list[dict]:
    """Each sbatch call of the script: its options and its array's commands by task id."""
    out = []
    for call, body in re.findall(r"^job=\$\(sbatch (.*?) <<'ARRAY'\n(.*?)\nARRAY\n\)$", script,
                                 re.M | re.S):
        tasks = dict(re.findall(r"^  (\d+)\) exec \$\{UNIQ_PYTHON:-python\} -m uniq (.*?) ;;",
                                body, re.M))
        out.append({"call": call, "tasks": {int(k): v for k, v in tasks.items()}})
    return out


def test_the_slurm_script_submits_one_array_per_level_parents_first(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert main(["runs", "--profile", "smoke", "--seeds", "1", "--runs-dir", runs,
                 "--slurm"]) == 0
    script = capsys.readouterr().out
    ctx = X.context(profile="smoke", results_dir=str(tmp_path / "res"), runs_dir=runs, seeds=1)
    commands = {r["command"].removeprefix("python -m uniq ") for r in X.plan(ctx)}
    levels = slurm_levels(script)
    assert len(levels) == 2
    fp, rest = levels
    assert fp["tasks"] == {0: X.train_command(X.fp_config(ctx)).removeprefix("python -m uniq ")}
    assert "--array=0-0" in fp["call"]
    assert f"--array=0-{len(rest['tasks']) - 1}" in rest["call"]
    assert "${previous:+--dependency=afterok:$previous}" in rest["call"]
    assert sorted(rest["tasks"]) == list(range(len(commands) - 1))
    assert set(fp["tasks"].values()) | set(rest["tasks"].values()) == commands
    assert all("--threads 1" in c for c in commands)  # the profile's thread count
    assert '"--cpus-per-task=1"' not in script and "SBATCH_OPTIONS=(--cpus-per-task=1)" in script


@pytest.mark.skipif(shutil.which("bash") is None, reason="runs the script with bash")
def test_the_slurm_script_runs_against_a_stand_in_sbatch(tmp_path, capsys):
    """A fake ``sbatch`` records each submission; each array task then runs the command its id
    names (a fake interpreter records the arguments)."""
    runs = str(tmp_path / "runs")
    main(["runs", "--profile", "smoke", "--seeds", "1", "--runs-dir", runs, "--slurm",
          "--sbatch-options", "--partition=x --time=1:00:00"])
    script = tmp_path / "submit.sh"
    script.write_text(capsys.readouterr().out)
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text(f"#!{sys.executable}\n" + (
        "import json, pathlib, sys\n"
        f"calls = pathlib.Path({str(calls)!r})\n"
        "n = len(list(calls.glob('*.json')))\n"
        "(calls / f'{n}.json').write_text(json.dumps({'argv': sys.argv[1:], "
        "'script': sys.stdin.read()}))\n"
        "print(f'{1000 + n};cluster')\n"))
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    submitted = [json.loads((calls / f"{i}.json").read_text()) for i in range(2)]
    assert not (calls / "2.json").exists()
    assert not any(a.startswith("--dependency") for a in submitted[0]["argv"])
    assert "--dependency=afterok:1000" in submitted[1]["argv"]  # the cluster suffix dropped
    assert {"--partition=x", "--time=1:00:00", "--parsable"} <= set(submitted[1]["argv"])
    # array task 0 of level 1 runs the first child's command
    recorder = bin_dir / "python-recorder"
    recorder.write_text(f"#!{sys.executable}\nimport sys\nprint(' '.join(sys.argv[1:]))\n")
    recorder.chmod(0o755)
    task = tmp_path / "task.sh"
    task.write_text(submitted[1]["script"])
    ran = subprocess.run(["bash", str(task)], capture_output=True, text=True,
                         env={**env, "SLURM_ARRAY_TASK_ID": "0", "UNIQ_PYTHON": str(recorder)})
    level1 = slurm_levels(script.read_text())[1]["tasks"]
    assert ran.returncode == 0 and ran.stdout.split() == ["-m", "uniq", *level1[0].split()]
    missing = subprocess.run(["bash", str(task)], capture_output=True, text=True,
                             env={**env, "SLURM_ARRAY_TASK_ID": "999"})
    assert missing.returncode == 2 and "names no run" in missing.stderr
