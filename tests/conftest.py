"""Shared helpers: tiny CIFAR configs on generated data, and a subprocess runner for the CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = dict(dataset="synthetic", synthetic_train=512, synthetic_test=200, depth=8,
            batch_size=64, calib_batches=2, log_every=1000, fp_epochs=1, device="cpu")


def tiny(tmp_path, **kw):
    from uniq.repro.config import CifarConfig

    return CifarConfig(**{**TINY, "runs_dir": str(tmp_path / "runs"), **kw})


def cli_args(**kw) -> list[str]:
    args = []
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + k.replace("_", "-"))
        elif v not in (None, ""):
            args += [flag, str(v)]
    return args


def env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "UNIQ_PROGRESS": "lines", **extra}


def uniq_cli(*args, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "uniq", *map(str, args)], env=env(),
                          capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def tiny_config():
    return tiny


# Fixtures that run a whole end-to-end job: every test that uses one is in the slow tier.
END_TO_END_FIXTURES = {"smoke"}


def pytest_collection_modifyitems(items):
    for item in items:
        if END_TO_END_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
