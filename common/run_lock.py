"""One live training run per folder: an exclusive ``fcntl.flock`` on ``task_name/.lock``.

The kernel releases the lock however its process exits (Ctrl-C, SIGKILL, a crash), so a killed run never blocks
the next one; the file stays, holding the last owner's PID for the message a second run gets. flock is advisory,
which is enough: it keeps a second run of this program out of the folder.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live process is training into the same folder."""


class RunLock:
    """``with RunLock(run_dir):`` — raises :class:`RunLockedError` naming the holder's PID if the folder is taken."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(f"{self.path.parent} is in use by another training run (PID {holder}); wait for it "
                                 "to finish, stop it, or pass another --task-name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
