"""One live training run per folder: ``task_name/.lock`` holds the owner's PID.

A lock whose process is gone (killed with SIGKILL, machine rebooted) is stale and is taken over with a
warning, so ``--resume`` after a crash needs no manual clean-up. Two runs started together cannot both
win: the lock file is created with ``O_CREAT | O_EXCL``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_FRESH_S = 10.0  # an empty lock younger than this is being written by its owner, not stale


class RunLockedError(RuntimeError):
    """Another live process is training into the same folder."""


def pid_alive(pid: int) -> bool:
    """True if a process with this PID exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RunLock:
    """``with RunLock(folder):`` — hold ``folder/.lock`` for the duration, or raise RunLockedError."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def _read_pid(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else -1

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = self._read_pid()
                if pid is None:
                    continue  # released in between: try again
                if pid == -1:
                    try:
                        fresh = time.time() - self.path.stat().st_mtime < _FRESH_S
                    except FileNotFoundError:
                        continue
                    if fresh:
                        raise RunLockedError(f"{self.path} is being created by another process; "
                                             "another run is starting in this folder") from None
                elif pid != os.getpid() and pid_alive(pid):
                    raise RunLockedError(
                        f"another training run (PID {pid}) is using {self.path.parent}; wait for it to finish, "
                        f"stop it, or pass another --task-name. If PID {pid} is not a training run, delete "
                        f"{self.path}"
                    ) from None
                logger.warning("taking over the stale lock %s (PID %s is not running)", self.path,
                               pid if pid != -1 else "unknown")
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return
        raise RunLockedError(f"could not take {self.path}: other processes keep creating it")

    def release(self) -> None:
        if self.held and self._read_pid() == os.getpid():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
