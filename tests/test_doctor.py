"""``python -m uniq doctor`` on the CPU: the table, doctor.json, GPU-only lines skipped, and clear
errors for bad flags."""

import json

import pytest
import torch

from uniq.repro.cli import main
from uniq.repro.doctor import GROUPS


def _run(tmp_path, capsys, *args):
    out = tmp_path / "doctor.json"
    code = main(["doctor", "--device", "cpu", "-o", str(out), *args])
    printed = capsys.readouterr().out
    return code, printed, json.loads(out.read_text())


def _check_structure(printed, report):
    assert printed.splitlines()[0].split()[:3] == ["check", "status", "result"]
    rows = report["checks"]
    assert rows and set(report["summary"]) == {"pass", "warn", "fail", "skipped"}
    assert sum(report["summary"].values()) == len(rows)
    for r in rows:
        assert set(r) == {"group", "name", "status", "value", "hint", "data"}
        assert r["status"] in ("pass", "warn", "fail", "skipped")
        assert f"{r['group']}: {r['name']}" in printed  # every check is a line of the table
    return {(r["group"], r["name"]): r for r in rows}


def test_versions_devices_and_tf32_on_the_cpu(tmp_path, capsys):
    code, printed, report = _run(tmp_path, capsys, "--only", "versions,devices,tf32")
    rows = _check_structure(printed, report)
    assert code == 0 and report["summary"]["fail"] == 0
    assert rows[("versions", "python, torch")]["data"]["torch"] == torch.__version__
    # what uniq.repro.train.set_precision is documented to do, and the switches are restored after
    tf32 = {name.split()[-1]: r["data"] for (g, name), r in rows.items() if g == "tf32"}
    assert set(tf32) == {"fp32", "tf32", "bf16", "fp64"}
    assert tf32["tf32"]["cudnn_allow_tf32"] and tf32["tf32"]["matmul_allow_tf32"]
    assert not tf32["fp32"]["cudnn_allow_tf32"] and not tf32["fp32"]["matmul_allow_tf32"]
    if not torch.cuda.is_available():
        assert rows[("devices", "GPUs, free memory")]["status"] == "skipped"
        assert "no CUDA" in rows[("versions", "CUDA, cuDNN, driver")]["value"]


@pytest.mark.parametrize("args,message", [(["--only", "speed"], "unknown check group"),
                                          (["--precisions", "fp16"], "unknown precision"),
                                          (["--modes", "fast"], "unknown mode")])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, args, message):
    assert main(["doctor", "-o", str(tmp_path / "d.json"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_quick_doctor_runs_every_group_on_the_cpu(tmp_path, capsys):
    """The CPU path of the whole doctor, as the default tier needs it (2-7 s on 2
    cores)."""
    torch.manual_seed(0)
    code, printed, report = _run(tmp_path, capsys, "--quick")
    rows = _check_structure(printed, report)
    assert code == 0 and report["summary"]["fail"] == 0
    assert {g for g, _ in rows} == set(GROUPS)
    train = rows[("training", "eager fp32: FP vs 2-bit UniQ")]["data"]
    assert train["finite"] and train["fp_ms"] > 0 and train["uniq_ms"] > 0
    assert train["ratio"] == pytest.approx(train["uniq_ms"] / train["fp_ms"])
    loaders = [r for (g, _), r in rows.items() if g == "loaders" and r["status"] == "pass"]
    assert len(loaders) >= 2 and all(r["data"]["images_per_s"] > 0 for r in loaders)
    if not torch.cuda.is_available():
        for key in [("memory", "the profile's batch fits"),
                    ("ddp", "2-process NCCL step = 1 process"),
                    ("loaders", "ImageNet JPEGs, GPU decode (decode_jpeg)")]:
            assert rows[key]["status"] == "skipped" and rows[key]["value"] == "no CUDA"


def test_memory_cases_build_and_take_a_step_on_the_cpu():
    """The models the GPU memory check builds: here one step at a tiny batch and size."""
    from uniq.repro.doctor import memory_cases
    from uniq.repro.train import train_step

    torch.manual_seed(0)
    for name, build, batch, size, classes in memory_cases("paper"):
        assert batch >= 128 and size >= 32
        model = build()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = torch.randn(2, 3, 32, 32), torch.randint(0, classes, (2,))
        loss, _ = train_step(model, opt, x, y)
        assert torch.isfinite(loss), name


def test_tensor_decode_runs_on_the_cpu(tmp_path):
    """The decode_jpeg path of the loader check (nvJPEG on a GPU), on the CPU."""
    from uniq.repro.doctor import _jpeg_folder, tensor_decode

    root = _jpeg_folder(tmp_path / "jpeg", 6, (64, 48))
    assert len(list((root / "train").rglob("*.JPEG"))) == 6
    row = tensor_decode(root, torch.device("cpu"))
    assert row.status == "pass" and row.data["images_per_s"] > 0


@pytest.mark.slow
def test_ddp_equivalence_check_with_gloo(tmp_path):
    """The doctor's 2-process check (NCCL on a GPU machine) through gloo on the CPU."""
    from uniq.repro.doctor import ddp_equivalence

    row = ddp_equivalence("cpu", tmp_path, port=29533)
    assert row.status == "pass", (row.value, row.data.get("stderr", "")[-2000:])
    # "pass" is the doctor's rule, allclose(rtol=1e-5, atol=1e-6) per tensor. The largest absolute
    # difference depends on the thread count (float64 sums split differently can move an 8-bit
    # input across a rounding tie, as in tests/test_imagenet.py): bounded, not pinned.
    assert 0 <= row.data["max_abs_diff"] < 1e-4
