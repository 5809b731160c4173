"""One live training run per folder: ``task_name/.lock`` names the owner (PID, host, process start time).

A lock whose process is gone (killed with SIGKILL, machine rebooted) is stale and is taken over with a
warning, so ``--resume`` after a crash needs no manual clean-up. Two runs started together cannot both
win, and a run killed at any instant never leaves a half-written lock behind:

* the owner line is written and fsynced to a private temp file first, then published with ``os.link``,
  which fails atomically if ``.lock`` exists — so ``.lock`` is never seen empty. (On a filesystem without
  hard links, ``O_CREAT | O_EXCL`` is used instead; an empty lock younger than a few seconds then counts as
  "being created".)
* the process start time guards against PID reuse: a lock whose PID now belongs to another process is
  stale. A lock written on another host (a shared filesystem) cannot be checked from here and is refused.

Lock file format (a plain PID on the first line is all older versions wrote; it is still understood)::

    12345
    host=node07
    start=8812345
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_FRESH_S = 10.0  # an empty lock younger than this is being written by its owner, not stale
_MAX_LOCK_BYTES = 1024  # a bigger ".lock" is some other file, not a lock


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


def process_start_time(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_text() -> str:
    lines = [str(os.getpid()), f"host={socket.gethostname()}"]
    start = process_start_time(os.getpid())
    if start is not None:
        lines.append(f"start={start}")
    return "\n".join(lines) + "\n"


def read_owner(path: Path) -> dict | None:
    """``{"pid": int (-1 if empty or unreadable), "host": str | None, "start": str | None}``, None if no file."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return None
    lines = text.split("\n")
    first = lines[0].strip()
    owner = {"pid": int(first) if first.isdigit() else -1, "host": None, "start": None}
    for line in lines[1:]:
        key, _, value = line.partition("=")
        if key in ("host", "start") and value.strip():
            owner[key] = value.strip()
    return owner


class RunLock:
    """``with RunLock(folder):`` — hold ``folder/.lock`` for the duration, or raise RunLockedError."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def _read_pid(self) -> int | None:
        owner = read_owner(self.path)
        return None if owner is None else owner["pid"]

    def _owner_alive(self, owner: dict) -> bool:
        pid = owner["pid"]
        if pid == os.getpid() and owner["host"] in (None, socket.gethostname()):
            return False  # our own leftover (e.g. PID reused after a container restart)
        if not pid_alive(pid):
            return False
        start = owner["start"]
        return start is None or process_start_time(pid) in (None, start)  # another start time: PID reused

    def _publish(self) -> bool:
        """Create ``.lock`` holding our owner lines; False if it already exists."""
        tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write(_owner_text())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self.path)  # atomic, and never leaves .lock empty
            return True
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            return self._publish_exclusive()  # no hard links here (FAT, some network filesystems)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def _publish_exclusive(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(_owner_text())
            f.flush()
            os.fsync(f.fileno())
        return True

    def _remove_orphaned_temp_files(self) -> None:
        """Temp owner files of processes killed between writing and publishing them."""
        for tmp in self.path.parent.glob(f"{LOCK_NAME}.*.tmp"):
            pid = tmp.name[len(LOCK_NAME) + 1:].split(".")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                try:
                    tmp.unlink()
                except FileNotFoundError:
                    pass

    def _take_over(self, stale: dict) -> None:
        """Remove the stale lock ``stale`` — but not a fresh one another process published meanwhile.

        The lock is first renamed away (atomic: only one process gets it); if what was moved is not the
        stale lock judged above, it is put back.
        """
        grave = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.stale.tmp")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return  # another process removed it first
        if read_owner(grave) == stale:
            logger.warning("taking over the stale lock %s (PID %s is not running)", self.path,
                           stale["pid"] if stale["pid"] != -1 else "unknown")
        else:  # a live process's lock slipped in between: restore it
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
        os.unlink(grave)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._publish():
                self.held = True
                self._remove_orphaned_temp_files()
                return
            owner = read_owner(self.path)
            if owner is None:
                continue  # released in between: try again
            pid = owner["pid"]
            if pid == -1:
                try:
                    info = self.path.stat()
                except FileNotFoundError:
                    continue
                if info.st_size > _MAX_LOCK_BYTES:  # e.g. --ckpt-save-name .lock: never delete such a file
                    raise RunLockedError(
                        f"{self.path} is not a lock file ({info.st_size} bytes; lock files hold a few lines). "
                        "Move it out of the way if it is yours, and do not name other files .lock")
                if time.time() - info.st_mtime < _FRESH_S:
                    raise RunLockedError(f"{self.path} is being created by another process; "
                                         "another run is starting in this folder")
            elif owner["host"] not in (None, socket.gethostname()):
                raise RunLockedError(
                    f"{self.path.parent} is locked by PID {pid} on host {owner['host']} (a shared filesystem); "
                    f"its liveness cannot be checked from {socket.gethostname()}. If that run is gone, delete "
                    f"{self.path}")
            elif self._owner_alive(owner):
                raise RunLockedError(
                    f"another training run (PID {pid}) is using {self.path.parent}; wait for it to finish, "
                    f"stop it, or pass another --task-name. If PID {pid} is not a training run, delete "
                    f"{self.path}")
            self._take_over(owner)
        raise RunLockedError(f"could not take {self.path}: other processes keep creating it")

    def release(self) -> None:
        if self.held and self._read_pid() == os.getpid():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as err:  # e.g. the folder became read-only: never hide the error that ended the run
                logger.warning("could not remove the run lock %s (%s); the next run takes it over", self.path, err)
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
