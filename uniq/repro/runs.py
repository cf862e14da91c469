"""Runs on disk: the only reader and writer of a run directory.

A run lives in ``<runs_dir>/<task>/<label>-<key>/`` (``RunConfig.run_dir``):

    config.json     the resolved config, its key, the recipe, the dataset, the environment
    metrics.csv     one row per epoch: losses, top-1, learning rate, time
    dynamics.csv    several rows per epoch and activation quantizer: step, input std, SQNR
    checkpoint.pt   written atomically every epoch: model, optimizer, epoch, step, RNG states and
                    the rows of both logs (the CSV files are rebuilt from it, never appended)
    model.pt        the final weights (state dict)
    result.json     written last; its presence means "finished" (one schema for every task)

* Writes go to a temporary file unique to the process, then ``os.replace``: a reader never sees a
  half-written file, and two processes never write the same temporary file.
* ``RunLock`` claims a run for one process (``filelock.FileLock`` on ``<run>/.lock``, an OS lock
  the kernel releases when the process dies, also on ``kill -9``); ``<run>/.holder`` names the
  holder's host and pid. A second process waits for the holder (or, with ``wait=False``, stops
  with a message); a holder file left by a dead process is recovered with a message.
* ``load_checkpoint`` uses ``torch.load(weights_only=True)`` and ``read_json`` names the file and
  the remedy when it is truncated or corrupt.
* ``run_state`` says done / partial / missing; ``Run.load`` reads a finished run and checks that
  its directory name is its config's key.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from filelock import FileLock, Timeout
from torch import nn

from .config import KEY_SCHEME, PLACEMENT, RunConfig, config_class, placement
from .tasks import make_model


class RunBusy(RuntimeError):
    """Another process holds the run's lock and the caller asked not to wait."""


class CorruptFile(ValueError):
    """A file of a run cannot be read; the message names it and the remedy."""


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def save_atomic(obj: Any, path: Path) -> None:
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_text_atomic(text: str, path: Path) -> None:
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(obj: Any, path: Path) -> None:
    write_text_atomic(json.dumps(obj, indent=2, default=str), path)


def write_csv_atomic(rows: list[dict], path: Path) -> None:
    """The whole table, written at once (logs are rebuilt from the checkpoint, never appended)."""
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    tmp = _tmp(path)
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if fields:
            w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def read_json(path: Path, remedy: str = "delete the run directory to retrain it") -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFile(f"{path} is not valid JSON ({err}); {remedy}") from err


def load_checkpoint(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with a message that names the file and the remedy."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises several types for a bad file
        raise CorruptFile(
            f"{path} cannot be loaded ({type(err).__name__}: {str(err)[:200]}); it is truncated, "
            "corrupt or not a weights file. Start the run over with --fresh, or delete the "
            "file") from err


class RunLock:
    """Exclusive claim on a run directory for the life of a ``with`` block."""

    def __init__(self, run_dir: Path, wait: bool = True, poll_s: float = 2.0,
                 say=print) -> None:
        run_dir = Path(run_dir)
        self.lock, self.info = FileLock(run_dir / ".lock"), run_dir / ".holder"
        self.wait, self.poll_s, self.say = wait, poll_s, say

    def holder(self) -> dict:
        try:
            return json.loads(self.info.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    def __enter__(self) -> RunLock:
        name = self.info.parent.name
        self.info.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            h = self.holder()
            who = f"pid {h.get('pid', '?')} on {h.get('host', '?')} since {h.get('since', '?')}"
            if not self.wait:
                raise RunBusy(f"{name} is being trained by {who}; wait for it (the default "
                              "without --no-wait) or use another --runs-dir") from None
            self.say(f"[{name}] in progress in another process ({who}); waiting for it to "
                     "finish", flush=True)
            self.lock.acquire(poll_interval=self.poll_s)
        stale = self.holder()  # a holder file under a free lock: its process died holding it
        if stale.get("pid"):
            self.say(f"[{name}] recovered a stale lock left by pid {stale['pid']} on "
                     f"{stale.get('host', '?')} (that process ended without releasing it); "
                     "continuing from the last checkpoint", flush=True)
        write_json_atomic({"host": socket.gethostname(), "pid": os.getpid(),
                           "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "command": " ".join(sys.argv)[:300]}, self.info)
        return self

    def __exit__(self, *exc) -> None:
        self.info.unlink(missing_ok=True)  # no holder file: released cleanly
        self.lock.release()


# --- reading runs --------------------------------------------------------------------------


def run_state(run_dir: Path) -> str:
    """``done`` (result.json), ``partial`` (a checkpoint) or ``missing``."""
    return ("done" if (run_dir / "result.json").exists() else "partial"
            if (run_dir / "checkpoint.pt").exists() else "missing")


@dataclass
class Run:
    """A finished run on disk: its config and ``result.json``."""

    dir: Path
    config: RunConfig
    result: dict

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        run_dir = Path(run_dir)
        if not (run_dir / "config.json").exists():
            raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
        saved = read_json(run_dir / "config.json")
        try:
            cfg = config_class(saved.get("task", "cifar")).from_dict(saved["config"])
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptFile(f"{run_dir / 'config.json'} does not hold a valid config ({err}); "
                              "delete the run directory to retrain it") from err
        key = cfg.key()
        scheme = saved.get("key_scheme", 1)
        if scheme != KEY_SCHEME and not run_dir.name.endswith(key):
            raise CorruptFile(
                f"{run_dir} was made under key scheme {scheme}; this uniq names runs by scheme "
                f"{KEY_SCHEME}, so its name is no longer its config's key ({key}). If it is the "
                f"run you want, rename it to {run_dir.parent / (cfg.label() + '-' + key)}; "
                "otherwise delete it to retrain")
        if not run_dir.name.endswith(key):
            raise CorruptFile(
                f"{run_dir / 'config.json'} was changed after the run was made: its config "
                f"hashes to {key}, the directory name says {run_dir.name.rsplit('-', 1)[-1]}. "
                "Restore the file, or delete the directory to retrain")
        result = read_json(run_dir / "result.json") if (run_dir / "result.json").exists() else {}
        return cls(run_dir, cfg, result)

    @property
    def finished(self) -> bool:
        return bool(self.result)

    @property
    def top1(self) -> float:
        return self.result["top1_final"]

    def metrics(self) -> pd.DataFrame:
        return pd.read_csv(self.dir / "metrics.csv")

    def dynamics(self) -> pd.DataFrame:
        path = self.dir / "dynamics.csv"
        return pd.read_csv(path) if path.exists() and path.stat().st_size else pd.DataFrame()

    def state_dict(self) -> dict[str, torch.Tensor]:
        path = self.dir / "model.pt"
        state = load_checkpoint(path if path.exists() else self.dir / "checkpoint.pt")
        return state.get("model", state)

    def model(self) -> nn.Module:
        """The trained model, rebuilt and loaded on the CPU (eval mode)."""
        c = self.config.resolved()
        num_classes = int(self.result.get("num_classes") or read_json(
            self.dir / "config.json").get("data", {}).get("num_classes", 100))
        model = make_model(c, num_classes)
        load_weights_into(model, self.state_dict(), str(self.dir / "model.pt"))
        return model.eval()


def finished_runs(runs_dir: Path, task: str, latest: int | None = None) -> list[Run]:
    """Every finished run of a task under ``runs_dir``, by name; with ``latest``, only the
    ``latest`` most recently finished, oldest first. A run that cannot be loaded (another key
    scheme, a changed config) is left out with a warning that says why."""
    done = sorted(Path(runs_dir).glob(f"{task}/*/result.json"))
    if latest is not None:
        done = sorted(done, key=lambda p: p.stat().st_mtime)[-latest:]
    runs = []
    for path in done:
        try:
            runs.append(Run.load(path.parent))
        except CorruptFile as err:
            warnings.warn(f"left out: {err}", stacklevel=2)
    return runs


def load_weights_into(model: nn.Module, state: dict, where: str, strict: bool = True) -> None:
    """``load_state_dict`` with a message that names the file and what does not fit."""
    if strict:
        try:
            model.load_state_dict(state)
            return
        except RuntimeError as err:
            own = set(model.state_dict())
            missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
            detail = (f"missing {missing[:3]}, unexpected {unexpected[:3]}"
                      if missing or unexpected else str(err).splitlines()[-1][:200])
            raise ValueError(f"the weights in {where} do not fit this model ({detail}); check "
                             "--arch/--depth/--bits against the run that saved them") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = unexpected or [k for k in missing if "quantizer" not in k]
    if bad:
        raise ValueError(f"the weights in {where} do not fit this model (e.g. {bad[:3]}); "
                         "check that the start run has the same architecture")


def older_scheme_run(cfg: RunConfig) -> Path | None:
    """A run directory of this run's label made under another key scheme whose saved config is
    this config (every field but the placement ones): the same computation under an old name.
    None when there is none."""
    run_dir = cfg.run_dir()
    if run_dir.exists() or not run_dir.parent.is_dir():
        return None
    want = {k: v for k, v in cfg.resolved().to_dict().items() if k not in PLACEMENT}
    for other in sorted(run_dir.parent.glob(f"{cfg.label()}-*")):
        try:
            saved = read_json(other / "config.json")
        except (FileNotFoundError, CorruptFile):
            continue
        if saved.get("key_scheme", 1) == KEY_SCHEME:
            continue
        fields = dict(saved["config"])
        # Scheme 1 applied a non-MSE init to every layer (there was no init_scope field).
        fields.setdefault("init_scope", "all")
        try:
            old = type(cfg).from_dict({**fields, **placement(cfg)}).resolved()
        except (KeyError, TypeError, ValueError):
            continue
        if {k: v for k, v in old.to_dict().items() if k not in PLACEMENT} == want:
            return other
    return None


def check_key_scheme(cfg: RunConfig) -> None:
    """Stop with what to do when this run exists under an older key scheme."""
    old = older_scheme_run(cfg)
    if old is None:
        return
    scheme = read_json(old / "config.json").get("key_scheme", 1)
    what = (f"its saved config is this one, so rename it to reuse it (mv {old} "
            f"{cfg.run_dir()}), or delete it (or pass --fresh) to retrain"
            if (old / "result.json").exists() else "it is unfinished and its checkpoint is "
            "keyed by the old scheme: delete it, or pass --fresh to retrain")
    raise ValueError(f"{old} holds this run under key scheme {scheme} (this uniq names runs by "
                     f"scheme {KEY_SCHEME}, so it is not found under its new name): {what}")


def remove_stale_temporaries(run_dir: Path, say=print) -> None:
    """Temporary files (``.NAME.HOST.PID.tmp``) left by processes of this host that died
    mid-write; called under the run's lock, so no live writer owns them."""
    import os
    import socket

    host = socket.gethostname()
    for tmp in run_dir.glob(f".*.{host}.*.tmp"):
        pid_text = tmp.name.rsplit(".", 2)[1]
        if not pid_text.isdigit() or not tmp.name.endswith(f".{host}.{pid_text}.tmp"):
            continue
        pid = int(pid_text)
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only copy of the runs: nothing to tidy there
            continue
        say(f"[{run_dir.name}] removed {tmp.name}, left by pid {pid} that ended mid-write")


def finished_run(run_dir: Path) -> Run | None:
    if (run_dir / "result.json").exists():
        return Run.load(run_dir)
    return None


def start_weights(path: Path) -> dict[str, torch.Tensor]:
    """Weights of a run directory (``model.pt``, else the last good ``checkpoint.pt``) or a
    checkpoint file, without quantizer state: the new run converts and calibrates afresh (so a
    1-bit run started from a 2-bit one really has 2 levels and 1-bit steps)."""
    p = path
    if p.is_dir():
        p = p / "model.pt" if (p / "model.pt").exists() else p / "checkpoint.pt"
    if not p.is_file():
        raise FileNotFoundError(f"--init-from-run: no model.pt or checkpoint.pt in {path}")
    state = load_checkpoint(p)
    state = state.get("model", state) if isinstance(state, dict) else state
    return {k: v for k, v in state.items() if "quantizer" not in k}


