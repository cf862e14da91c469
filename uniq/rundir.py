"""A run directory on disk: atomic writes, a lock per run, and loads that fail clearly.

* Writes go to a temporary file unique to the process, then ``os.replace``: a reader never sees a
  half-written file, and two processes never write the same temporary file.
* ``RunLock`` claims a run for one process (``filelock.FileLock`` on ``<run>/.lock``, an OS lock
  the kernel releases when the process dies, also on ``kill -9``); ``<run>/.holder`` names the
  holder's host and pid. A second process waits for the holder (or, with ``wait=False``, stops
  with a message); a holder file left by a dead process is recovered with a message.
* ``load_checkpoint``/``load_weights`` use ``torch.load(weights_only=True)`` and ``read_json``
  names the file and the remedy when it is truncated or corrupt.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout


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
