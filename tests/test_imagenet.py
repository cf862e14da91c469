"""ImageNet path on CPU: policy of the three architectures, weights, data errors, DDP with gloo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import uniq.imagenet as I
from uniq.models import imagenet_model

REPO = Path(__file__).resolve().parent.parent


def make_image_folder(root: Path, classes=4, train=8, val=2, size=40):
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for i in range(n):
                px = (torch.rand(size, size, 3, generator=g) * 60 + c * 50).to(torch.uint8)
                Image.fromarray(px.numpy()).save(d / f"img_{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("imagenet"))


def test_policy_of_all_three_architectures():
    p = I.policy_summary((4, 3, 2, 1)).set_index(["arch", "bits"])
    for arch, layers, shortcuts in (("preresnet18", 21, 3), ("preresnet34", 37, 3),
                                    ("mobilenetv2_w1", 54, 0)):
        for bits in (4, 3, 2):
            row = p.loc[(arch, bits)]
            assert row.layers == layers and row.at_8 == 2 and row.full_precision == 0
            assert row.at_bits == layers - 2
        one = p.loc[(arch, 1)]
        assert one.full_precision == 2 + shortcuts and one.at_bits == layers - 2 - shortcuts
    assert (p.loc["mobilenetv2_w1"].granularity == "tensor").all()
    assert (p.loc["preresnet18"].granularity == "channel").all()
    assert (p.loc[("mobilenetv2_w1", 2)].signed_inputs) >= 16  # bottleneck outputs + image


def test_pretrained_weights_from_a_local_file(tmp_path):
    ref = imagenet_model("preresnet18")
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    loaded = imagenet_model("preresnet18", tmp_path / "w.pth")
    for (k, a), (_, b) in zip(ref.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(FileNotFoundError, match="not found"):
        imagenet_model("preresnet18", tmp_path / "missing.pth")
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(FileNotFoundError, match="preresnet18-0972-5651bc2d.pth"):
        imagenet_model("preresnet18", cache)
    torch.save(ref.state_dict(), cache / "preresnet18-0951-abcdef12.pth")
    from_cache = imagenet_model("preresnet18", cache)
    assert torch.equal(from_cache.output.weight, ref.output.weight)
    with pytest.raises(ValueError, match="unknown"):
        imagenet_model("resnet50")


def test_missing_or_malformed_data(tmp_path):
    cfg = I.ImageNetConfig(data=str(tmp_path / "nope"), pretrained="none", device="cpu")
    with pytest.raises(FileNotFoundError, match="train/"):
        I.run(cfg)
    (tmp_path / "bad" / "train").mkdir(parents=True)
    (tmp_path / "bad" / "val").mkdir()
    cfg = I.ImageNetConfig(data=str(tmp_path / "bad"), pretrained="none", device="cpu")
    with pytest.raises(FileNotFoundError, match="not a valid ImageFolder"):
        I.run(cfg)


def test_missing_init_from_checkpoint(folder, tmp_path):
    cfg = I.ImageNetConfig(data=str(folder), bits=1, init_from=str(tmp_path / "none"),
                           pretrained="none", device="cpu", workers=0, batch_size=8)
    with pytest.raises(FileNotFoundError, match="init-from"):
        I.run(cfg)


def small(folder, out, **kw):
    return I.ImageNetConfig(**{
        "arch": "preresnet18", "bits": 2, "data": str(folder), "pretrained": "none",
        "epochs": 1, "batch_size": 8, "calib_batches": 1, "image_size": 32, "augment": False,
        "sync_bn": True, "workers": 0, "output_dir": str(out), "device": "cpu", "lr": 0.005,
        "print_freq": 1, **kw})


def _cli(cfg):
    args = []
    for k, v in cfg.__dict__.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + k.replace("_", "-"))
        elif v not in (None, ""):
            args += [flag, str(v)]
    return args


def test_two_process_torchrun_matches_one_process_and_resumes(folder, tmp_path):
    two = small(folder, tmp_path / "two")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29517", "-m", "uniq", "imagenet", *_cli(two)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((two.run_dir() / "result.json").read_text())
    assert result["world_size"] == 2 and result["ranks_identical"] is True
    assert result["model"] == "resnet18" and result["method"] == "UniQ" and result["bits"] == 2

    one = small(folder, tmp_path / "one")
    assert one.key() == two.key()
    single = I.run(one)
    assert single["world_size"] == 1
    a = torch.load(two.run_dir() / "model.pt", weights_only=True)
    b = torch.load(one.run_dir() / "model.pt", weights_only=True)
    # Equal up to float reduction order (amplified a little where a value sits on a rounding
    # boundary of a 2-bit quantizer): parameters tightly, BatchNorm statistics to 1%.
    for k in a:
        if torch.is_tensor(a[k]) and a[k].is_floating_point():
            if k.endswith(("weight", "bias", "step")):
                assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5), k
            else:
                assert (a[k] - b[k]).abs().max() <= 1e-2 * b[k].abs().max() + 1e-6, k

    # preemption: leave after one of two epochs, come back, end where a straight run ends
    straight = I.run(small(folder, tmp_path / "straight", epochs=2))
    stopped = I.run(small(folder, tmp_path / "resumed", epochs=2, stop_after=1))
    assert stopped == {"stopped_at_epoch": 1}
    resumed = I.run(small(folder, tmp_path / "resumed", epochs=2))
    assert resumed["weights_sha256"] == straight["weights_sha256"]

    # evaluation-only mode on the saved checkpoint
    ev = I.run(one, evaluate_only=str(one.run_dir() / "model.pt"))
    assert ev["images"] == 8 and ev["top1"] == pytest.approx(single["top1"])


def test_tables_pick_up_result_rows(tmp_path):
    d = tmp_path / "imagenet" / "preresnet18-uniq2b-x"
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps(
        {"model": "resnet18", "method": "UniQ", "bits": 2, "top1": 66.9, "epochs": 90}))
    t2, t3 = I.tables(tmp_path)
    hit = t2[(t2.model == "resnet18") & (t2.method == "UniQ") & (t2.bits == 2)]
    assert hit.top1.iloc[0] == 66.9 and hit["diff"].iloc[0] == pytest.approx(66.9 - 67.8)
    assert t2.top1.notna().sum() == 1 and t3.top1.isna().all()
    assert len(t3) == 16


def test_one_bit_starts_from_a_two_bit_checkpoint(folder, tmp_path):
    two = I.run(small(folder, tmp_path, sync_bn=False, lr=None))  # the default 2-bit recipe
    cfg = small(folder, tmp_path, bits=1, init_from=str(tmp_path / two["run"]), sync_bn=False,
                lr=None)
    assert cfg.recipe == "adam-warmup5" and cfg.weight_decay == 0.0
    model = I.build(cfg, 4)
    start = torch.load(tmp_path / two["run"] / "model.pt", weights_only=True)
    name = "features.stage2.unit1.body.conv1.conv.weight"
    assert torch.equal(model.state_dict()[name], start[name])
    # without --init-from, 1 bit finds the finished 2-bit run of the same settings ...
    auto = small(folder, tmp_path, bits=1, sync_bn=False, lr=None)
    assert auto.start_from() == str(tmp_path / two["run"])
    # ... and says what to do when there is none
    with pytest.raises(FileNotFoundError, match="train it first"):
        small(folder, tmp_path / "empty", bits=1, sync_bn=False).start_from()
