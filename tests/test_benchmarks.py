"""Every script in benchmarks/ runs on a tiny setting, so that none can ship broken. No timing
is asserted (speed depends on the machine); the outputs' structure and checks are."""

import importlib.util
import json
import os
import runpy
import subprocess
import sys

import pytest
import torch
from conftest import REPO

BENCHMARKS = REPO / "benchmarks"
needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason='needs the export extra: pip install "uniq[export]"')


def run_script(name, *args, monkeypatch):
    """``python benchmarks/NAME ARGS`` in this process (no second torch import)."""
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / name), *map(str, args)])
    previous = torch.get_num_threads()
    try:
        runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    finally:
        torch.set_num_threads(previous)


def test_every_benchmark_script_has_a_smoke_test():
    here = (REPO / "tests" / "test_benchmarks.py").read_text()
    scripts = sorted(p.name for p in BENCHMARKS.iterdir() if p.suffix in (".py", ".sh"))
    assert scripts and all(f'"{s}"' in here for s in scripts), scripts


@needs_onnx
def test_onnx_latency_runs_on_a_tiny_network(tmp_path, monkeypatch, capsys):
    out = tmp_path / "rows.json"
    run_script("onnx_latency.py", "--models", "resnet8", "--bits", "2", "--batches", "1",
               "--threads", "1", "--repeats", "1", "--json", out, monkeypatch=monkeypatch)
    printed = capsys.readouterr().out
    assert "CPU:" in printed and "instruction sets" in printed
    result = json.loads(out.read_text())
    assert result["instruction_sets"] and len(result["rows"]) == 1
    row = result["rows"][0]
    assert row["checked"] is True and row["batch"] == 1
    for graph in ("float32", "integer", "fused", "bitserial"):
        assert row[f"{graph}_ms"] > 0
    assert row["integer_speedup"] == pytest.approx(row["float32_ms"] / row["integer_ms"])
    assert result["kernels"] and all(k["exact"] for k in result["kernels"])


def test_train_step_runs_on_a_tiny_network(tmp_path, monkeypatch, capsys):
    out = tmp_path / "train_step.json"
    run_script("train_step.py", "--device", "cpu", "--depth", "8", "--batch-size", "8",
               "--train-size", "32", "--warmup", "1", "--steps", "1", "--profile",
               "--out", out, monkeypatch=monkeypatch)
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["finite"] and row["fp_ms"] > 0 and row["uniq_ms"] > 0
    assert result["profile"]["ops"] and result["profile"]["quantizers"]
    assert "where the time goes" in capsys.readouterr().out


def test_gpu_preflight_refuses_a_machine_without_a_gpu_clearly(tmp_path):
    """``gpu_preflight.sh`` with every GPU hidden: one line naming the problem, exit code 2,
    nothing written; a bad stage name is refused the same way."""
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "",
           "RESULTS": str(tmp_path / "results"), "PYTHONPATH": str(REPO)}
    script = str(BENCHMARKS / "gpu_preflight.sh")
    done = subprocess.run(["bash", script, "doctor"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert "no CUDA GPU" in done.stderr and not (tmp_path / "results").exists()
    bad = subprocess.run(["bash", script, "everything"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "stage must be" in bad.stderr
