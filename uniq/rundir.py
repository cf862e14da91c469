"""A run directory on disk: atomic writes, a lock per run, and loads that fail clearly.

* Writes go to a temporary file unique to the process, then ``os.replace``: a reader never sees a
  half-written file, and two processes never write the same temporary file.
* ``RunLock`` claims a run for one process (``fcntl.flock`` on ``<run>/.lock``, which the kernel
  releases when the process dies, also on ``kill -9``). The file names the holder's host and pid;
  a second process waits for the holder (or, with ``wait=False``, stops with a message). A lock
  file left by a dead process is recovered with a message.
* ``load_checkpoint``/``load_weights`` use ``torch.load(weights_only=True)`` and ``read_json``
  names the file and the remedy when it is truncated or corrupt.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch


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
        self.path = Path(run_dir) / ".lock"
        self.wait, self.poll_s, self.say = wait, poll_s, say
        self.fd: int | None = None

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                h = self.holder()
                who = (f"pid {h.get('pid', '?')} on {h.get('host', '?')} since "
                       f"{h.get('since', '?')}")
                if not self.wait:
                    os.close(fd)
                    raise RunBusy(
                        f"{self.path.parent.name} is being trained by {who}; wait for it (the "
                        "default without --no-wait) or use another --runs-dir") from None
                if not told:
                    self.say(f"[{self.path.parent.name}] in progress in another process ({who});"
                             " waiting for it to finish", flush=True)
                    told = True
                time.sleep(self.poll_s)
        stale = self.holder()
        if stale.get("pid"):
            self.say(f"[{self.path.parent.name}] recovered a stale lock left by pid "
                     f"{stale['pid']} on {stale.get('host', '?')} (that process ended without "
                     "releasing it); continuing from the last checkpoint", flush=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # an empty file: released cleanly
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
