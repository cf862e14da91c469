"""Golden run keys: the key (and run directory name) of every run ``python -m uniq runs`` lists,
for every profile and its seeds, and of representative CLI commands, frozen in
``tests/run_keys.json``. A restructure must leave every key where it was; a deliberate change of
the key scheme bumps ``uniq.engine.KEY_SCHEME`` and rewrites the file once, in one commit:

    UNIQ_REGENERATE_KEYS=1 python -m pytest tests/test_run_keys.py
"""

import json
import os
from pathlib import Path

import pytest

import uniq.experiments as X
from uniq.__main__ import build_parser, config_from_args

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
    ctx = X.context(profile, results_dir=str(tmp / "res"), runs_dir=str(tmp / "runs"))
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
        f"run keys of profile {profile} moved; if on purpose, bump uniq.engine.KEY_SCHEME and "
        "run UNIQ_REGENERATE_KEYS=1 python -m pytest tests/test_run_keys.py")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_representative_command_keeps_its_key(name):
    assert _command_key(COMMANDS[name]) == _frozen()["commands"][name]


def test_the_frozen_file_covers_every_command():
    assert set(_frozen()["commands"]) == set(COMMANDS)
