"""Runs on disk: the only reader of a run directory (``uniq.rundir`` writes its files).

A run lives in ``<runs_dir>/<task>/<label>-<key>/`` (``RunConfig.run_dir``):

    config.json     the resolved config, its key, the recipe, the dataset, the environment
    metrics.csv     one row per epoch: losses, top-1, learning rate, time
    dynamics.csv    several rows per epoch and activation quantizer: step, input std, SQNR
    checkpoint.pt   written atomically every epoch: model, optimizer, epoch, step, RNG states and
                    the rows of both logs (the CSV files are rebuilt from it, never appended)
    model.pt        the final weights (state dict)
    result.json     written last; its presence means "finished" (one schema for every task)

``run_state`` says done / partial / missing; ``Run.load`` reads a finished run and checks that
its directory name is its config's key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .config import KEY_SCHEME, PLACEMENT, RunConfig, config_class, placement
from .rundir import CorruptFile, load_checkpoint, read_json
from .tasks import make_model


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


