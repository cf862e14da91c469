"""Golden run keys: the key (and run directory name) of every run ``python -m uniq runs`` lists,
for every profile and its seeds, and of representative CLI commands, frozen in
``tests/run_keys.json``. A restructure must leave every key where it was; a deliberate change of
the key scheme bumps ``uniq.repro.config.KEY_SCHEME`` and rewrites the file once, in one commit:

    UNIQ_REGENERATE_KEYS=1 python -m pytest tests/test_run_keys.py
"""

import json
import os
from pathlib import Path

import pytest

import uniq.repro.study as X
from uniq.repro.cli import build_parser, config_from_args
from uniq.repro.tasks import make_model

FROZEN = Path(__file__).with_name("run_keys.json")

# (name, argv after "python -m uniq"): every kind of run a user types, in process.
COMMANDS = {
    "train-fp-default": ["train"],
    "train-2b": ["train", "--bits", "2"],
    "train-1b": ["train", "--bits", "1"],
    "train-4b-lsq": ["train", "--bits", "4", "--method", "lsq", "--init", "lsq"],
    "train-3b-lsq-mse-init": ["train", "--bits", "3", "--method", "lsq"],
    "train-2b-init0.1": ["train", "--bits", "2", "--init", "0.1"],
    "train-1b-sgd-warmup5-scaled": ["train", "--bits", "1", "--recipe", "sgd-warmup5",
                                    "--warmup-scale", "0.1", "--epochs", "30"],
    "train-3b-channel-unsigned": ["train", "--bits", "3", "--weight-granularity", "channel",
                                  "--signed-inputs", "unsigned", "--no-grad-scale"],
    "train-2b-synthetic-seed3": ["train", "--bits", "2", "--dataset", "synthetic", "--depth",
                                 "8", "--epochs", "2", "--seed", "3", "--fp-epochs", "6",
                                 "--synthetic-train", "512", "--synthetic-test", "250"],
    "train-2b-bf16-lr-wd": ["train", "--bits", "2", "--precision", "bf16", "--lr", "0.02",
                            "--weight-decay", "0", "--calib-batches", "10"],
    "train-2b-dataloader": ["train", "--bits", "2", "--loader", "dataloader"],
    "train-2b-compiled": ["train", "--bits", "2", "--compile", "default"],
    "train-2b-placement": ["train", "--bits", "2", "--device", "cpu", "--workers", "0",
                           "--runs-dir", "elsewhere", "--data-dir", "/tmp/x", "--log-every",
                           "7", "--stop-after", "1", "--no-wait", "--no-download"],
    "imagenet-4b": ["imagenet", "--bits", "4"],
    "imagenet-1b": ["imagenet", "--bits", "1"],
    "imagenet-fp": ["imagenet"],
    "imagenet-mobilenet-2b": ["imagenet", "--arch", "mobilenetv2_w1", "--bits", "2"],
    "imagenet-r34-3b-lsq": ["imagenet", "--arch", "preresnet34", "--bits", "3", "--method",
                            "lsq"],
    "imagenet-2b-scratch-short": ["imagenet", "--bits", "2", "--pretrained", "none",
                                  "--epochs", "1", "--batch-size", "8", "--image-size", "32"],
}


def _profile_keys(profile: str, tmp: Path) -> dict[str, str]:
    ctx = X.context(profile=profile, results_dir=str(tmp / "res"), runs_dir=str(tmp / "runs"))
    return {f"{r['experiment']} seed {r['seed']}": r["run"] for r in X.plan(ctx)}


def _command_key(argv: list[str]) -> str:
    cfg = config_from_args(build_parser().parse_args(argv))
    return cfg.run_dir().name


def _current(tmp: Path) -> dict:
    return {"profiles": {p: _profile_keys(p, tmp) for p in X.PROFILES},
            "commands": {name: _command_key(argv) for name, argv in COMMANDS.items()}}


def test_regenerate_when_asked(tmp_path):
    """``UNIQ_REGENERATE_KEYS=1`` rewrites the frozen file (then review and commit the diff)."""
    if os.environ.get("UNIQ_REGENERATE_KEYS") != "1":
        pytest.skip("set UNIQ_REGENERATE_KEYS=1 to rewrite tests/run_keys.json")
    FROZEN.write_text(json.dumps(_current(tmp_path), indent=1, sort_keys=True) + "\n")


def _frozen() -> dict:
    if not FROZEN.exists():  # first generation
        return {"profiles": {}, "commands": {}}
    return json.loads(FROZEN.read_text())


@pytest.mark.parametrize("profile", sorted(_frozen()["profiles"]))
def test_every_planned_run_keeps_its_key(tmp_path, profile):
    frozen = _frozen()["profiles"][profile]
    now = _profile_keys(profile, tmp_path)
    assert now == frozen, (
        f"run keys of profile {profile} moved; if on purpose, bump "
        "uniq.repro.config.KEY_SCHEME and "
        "run UNIQ_REGENERATE_KEYS=1 python -m pytest tests/test_run_keys.py")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_representative_command_keeps_its_key(name):
    assert _command_key(COMMANDS[name]) == _frozen()["commands"][name]


def test_the_frozen_file_covers_every_command():
    assert set(_frozen()["commands"]) == set(COMMANDS)


# --- identity: every field either changes the key or is placement -----------------

# A different valid value for every config field of both tasks: a new field fails the walk
# below until it is listed here (and then either hashed or in uniq.repro.config.PLACEMENT).
ALTERNATIVES = {
    "bits": 3, "method": "lsq", "init": 0.1, "grad_scale": False, "weight_granularity": "channel",
    "signed_inputs": "unsigned", "init_scope": "all", "first_last_bits": 6,
    "first_last_weight_granularity": "channel", "overrides": "FIRST=4", "recipe": "sgd-lr0.005",
    "lr": 0.02, "warmup_epochs": 1.0, "weight_decay": 0.0, "warmup_scale": 0.5, "epochs": 7,
    "schedule_epochs": 30.0,
    "batch_size": 64, "calib_batches": 3, "seed": 1, "precision": "bf16", "sync_bn": True,
    "init_from": "OTHER", "init_from_run": "FILE", "dynamics_per_epoch": 1,
    "compile": "default", "device": "cpu", "channels_last": True, "runs_dir": "elsewhere",
    "data_dir": "other-data", "workers": 0, "threads": 2, "log_every": 3, "stop_after": 1,
    "wait": False,
    # CIFAR
    "dataset": "cifar100", "cifar_stats": "exact", "data_fraction": 0.5, "synthetic_train": 256,
    "synthetic_test": 100,
    "depth": 14, "loader": "dataloader", "fp_epochs": 2, "fp_seed": 1, "fp_batch_size": 32,
    "download": False,
    "verify_data": False,
    # ImageNet
    "arch": "preresnet34", "pretrained": "pytorchcv", "image_size": 64, "augment": False,
}
TASK_ALTERNATIVES = {"imagenet": {"weight_granularity": "tensor",  # channel is its default
                                  "first_last_weight_granularity": "tensor"}}
# Fields whose alternative computes the same in one process (tests/test_identity.py shows
# where they do change the key)
SAME_HERE = {"sync_bn": "BatchNorm over one process is BatchNorm over the whole batch"}
WHERE_IT_MATTERS = {"warmup_scale": {"bits": 1}, "cifar_stats": {"dataset": "cifar100"}}
BASES = {"cifar": dict(bits=2, init=0.2, dataset="synthetic", depth=8, epochs=2, fp_epochs=1),
         "imagenet": dict(bits=2, init=0.2, pretrained="none", epochs=1)}


def _alternative(cfg, name, tmp_path):
    import dataclasses

    from uniq.repro.config import FULL_PRECISION

    value = {**ALTERNATIVES, **TASK_ALTERNATIVES.get(cfg.task, {})}[name]
    if name == "overrides":  # the first layer's name, at 4 bits
        from uniq.convert import probe_layers

        order, _ = probe_layers(_fp_model(cfg), cfg.example_input())
        value = f"{order[0]}=4"
    if name == "init_from":
        other = dataclasses.replace(cfg, bits=FULL_PRECISION, epochs=3, init=0.2,
                                    init_from=None)
        value = other.resolved().to_dict()
    if name == "init_from_run":
        path = tmp_path / "start.pt"
        path.write_bytes(b"weights")
        value = str(path)
    return value


def _fp_model(cfg):
    from uniq.repro.config import ImageNetConfig

    if isinstance(cfg, ImageNetConfig):
        from uniq.models import imagenet_model

        return imagenet_model(cfg.arch)
    from uniq.models import preact_resnet

    return preact_resnet(cfg.depth, 100)


@pytest.mark.parametrize("task", ["cifar", "imagenet"])
def test_every_field_is_hashed_or_placement_and_does_what_it_says(task, tmp_path):
    """Changing a hashed field changes the key; changing a placement field keeps it."""
    import dataclasses

    from uniq.repro.config import ENTERS_VIA, PLACEMENT, config_class

    cls = config_class(task)
    base = cls(**BASES[task], runs_dir=str(tmp_path))
    names = [f.name for f in dataclasses.fields(cls)]
    unlisted = sorted(set(names) - set(ALTERNATIVES))
    assert not unlisted, f"new config field(s) {unlisted}: add to ALTERNATIVES, then hash them " \
                         "or list them in uniq.repro.config.PLACEMENT with a reason"
    for f in dataclasses.fields(cls):
        hashed = f.metadata.get("hashed", True)
        assert hashed != (f.name in PLACEMENT or f.name in ENTERS_VIA), \
            (f.name, "a field is hashed, or placement, or enters the key through another")
        # a field whose effect needs a setting: warm-up scaling needs a recipe with warm-up
        start = dataclasses.replace(base, **WHERE_IT_MATTERS.get(f.name, {}))
        value = _alternative(start, f.name, tmp_path)
        if value == getattr(start, f.name) or f.name in SAME_HERE:
            continue  # e.g. ImageNet's own default
        changed = dataclasses.replace(start, **{f.name: value})
        if hashed or f.name in ENTERS_VIA:
            assert changed.key() != start.key(), f"{task}.{f.name} is hashed but moves no key"
        else:
            assert changed.key() == start.key(), \
                f"{task}.{f.name} is placement but moves the key"
    for reason in PLACEMENT.values():
        assert len(reason) > 20


def test_loader_and_its_workers_name_the_run(tmp_path):
    from conftest import tiny

    tensor, loader = tiny(tmp_path, bits=2), tiny(tmp_path, bits=2, loader="dataloader")
    assert tensor.key() != loader.key()
    assert tiny(tmp_path, bits=2, workers=0).key() == tensor.key()  # tensor: placement
    assert tiny(tmp_path, bits=2, loader="dataloader", workers=0).key() != loader.key()


def test_the_two_loaders_draw_different_batches():
    """Why the loader is hashed: the same seed and epoch give other images and labels."""
    import torch

    from uniq.repro import data as D

    data = D.load_dataset("synthetic", True, "unused", 0, (256, 10), False, False)
    batches = []
    for kind in ("tensor", "dataloader"):
        loader = D.make_loader(data, 32, True, "cpu", kind, seed=0, workers=0)
        loader.set_epoch(0)
        batches.append(next(iter(loader)))
    assert not torch.equal(batches[0][1], batches[1][1])


def _old_scheme_dir(cfg, finished=True):
    """A run directory as scheme 1 wrote it: same label, another key, no key_scheme."""
    old = cfg.run_dir().parent / f"{cfg.label()}-0123456789ab"
    old.mkdir(parents=True)
    (old / "config.json").write_text(json.dumps({"task": cfg.task, "config": cfg.to_dict(),
                                                 "key": "0123456789ab"}))
    if finished:
        (old / "result.json").write_text(json.dumps({"top1_final": 1.0}))
    return old


@pytest.mark.parametrize("finished", [True, False])
def test_a_run_of_an_older_key_scheme_is_reported_not_reused_or_retrained(tmp_path, finished):
    from conftest import tiny

    import uniq.repro.runs as RD
    import uniq.repro.train as E

    cfg = tiny(tmp_path, epochs=1)
    old = _old_scheme_dir(cfg, finished)
    with pytest.raises(ValueError, match="key scheme 1") as err:
        E.fit(cfg, quiet=True)
    text = str(err.value)
    assert str(old) in text and ("mv " in text) == finished and "--fresh" in text
    assert not cfg.run_dir().exists()  # nothing was trained
    with pytest.raises(RD.CorruptFile, match="made under key scheme 1"):
        RD.Run.load(old)
    # another config of the same label (another epoch count) is not taken for it
    assert RD.older_scheme_run(tiny(tmp_path, epochs=2)) is None


def test_a_renamed_old_run_is_found_under_its_new_key(tmp_path):
    from conftest import tiny

    import uniq.repro.runs as RD

    cfg = tiny(tmp_path, epochs=1)
    _old_scheme_dir(cfg).rename(cfg.run_dir())
    assert RD.Run.load(cfg.run_dir()).finished


def test_policy_fields_reach_the_conversion_from_the_command_line():
    from uniq.convert import conversion_report

    argv = ["train", "--bits", "2", "--depth", "8", "--first-last-bits", "4",
            "--first-last-weight-granularity", "channel", "--overrides", "FIRST=fp"]
    probe = config_from_args(build_parser().parse_args(argv[:5])).resolved()
    first = conversion_report(make_model(probe, 100)).layer.iloc[0]
    argv[-1] = f"{first}=fp"
    cfg = config_from_args(build_parser().parse_args(argv)).resolved()
    report = conversion_report(make_model(cfg, 100)).set_index("layer")
    assert report.loc[first, "weight_bits"] == 32  # the override wins
    last = report[report.role == "last"].iloc[0]
    assert last.weight_bits == 4 and last.granularity == "channel"
    assert cfg.overrides == f"{first}=fp" and cfg.key() != probe.key()


@pytest.mark.parametrize("scope,last_keeps_mse", [("low-bit", True), ("all", False)])
def test_table5_init_scope(scope, last_keeps_mse):
    """Table 5's constant init on the low-bit layers only (default), or on every layer."""
    import torch

    from uniq.mse import optimal_step
    from uniq.repro.config import CifarConfig

    cfg = CifarConfig(bits=2, depth=8, init=0.2, init_scope=scope).resolved()
    model = make_model(cfg, 100)
    last = next(m for m in model.modules() if getattr(m, "role", None) == "last")
    body = next(m for m in model.modules() if getattr(m, "role", None) == "body")
    assert torch.allclose(body.weight_quantizer.step, torch.tensor(0.2))
    w = last.weight.detach().double()
    mse = optimal_step(8, "weight") * w.std()
    step = last.weight_quantizer.step.double()
    assert torch.allclose(step, mse.to(step.dtype), rtol=1e-5) == last_keeps_mse
    assert torch.allclose(step, torch.tensor(0.2, dtype=step.dtype)) != last_keeps_mse


def test_runs_lists_an_old_scheme_run_as_such(tmp_path):
    ctx = X.context(profile="smoke", results_dir=str(tmp_path / "res"),
                    runs_dir=str(tmp_path / "runs"))
    fp = X.fp_config(ctx)
    _old_scheme_dir(fp)
    states = {r["experiment"]: r["state"] for r in X.plan(ctx) if r["seed"] == 0}
    assert states["t4/fp"] == "old-key" and states["t4/uniq/2b"] == "missing"


def test_an_old_table5_run_is_not_taken_for_the_new_init_scope(tmp_path):
    """Scheme 1 applied a constant init to the 8-bit layers too: not this run any more."""
    from conftest import tiny

    import uniq.repro.runs as RD

    new = tiny(tmp_path, bits=2, init=0.2)
    old = _old_scheme_dir(new)
    saved = json.loads((old / "config.json").read_text())
    del saved["config"]["init_scope"]
    (old / "config.json").write_text(json.dumps(saved))
    assert RD.older_scheme_run(new) is None
    assert RD.older_scheme_run(tiny(tmp_path, bits=2, init=0.2, init_scope="all")) == old
