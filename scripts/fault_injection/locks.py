"""Promise 7, the parts a training run cannot show: a process SIGKILLed while taking or holding the lock never
blocks the next run (the kernel drops a dead process's flock), and runs started at the same instant elect exactly
one owner. (A live run refusing a second one, and a run after a SIGKILLed one, are exercised by
:mod:`fault_injection.kills`.)"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from common import run_lock
from common.run_lock import LOCK_NAME, RunLock, RunLockedError


@dataclass
class LockOutcome:
    name: str
    ok: bool
    detail: str


def _die(*args, **kwargs) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def lock_is_free(folder: Path) -> bool:
    """True if a new run could take ``folder``'s lock now."""
    try:
        with RunLock(folder):
            return True
    except RunLockedError:
        return False


def check_kill_during_lock_creation(work: Path) -> list[LockOutcome]:
    """A process SIGKILLed at each point of taking the lock, or while holding it, must not block the next run."""
    outcomes = []
    for point in ("ftruncate", "write", "holding"):
        folder = work / f"lock_kill_{point}"
        folder.mkdir(parents=True)
        pid = os.fork()
        if pid == 0:  # the child: dies inside RunLock.acquire, or right after it
            try:
                if point != "holding":
                    setattr(run_lock.os, point, _die)  # this child's os.ftruncate / os.write
                RunLock(folder).acquire()
                _die()
            finally:
                os._exit(3)  # not reached when the kill landed
        _, status = os.waitpid(pid, 0)
        died = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        free = lock_is_free(folder)
        detail = "taken at once" if free else "still locked"
        outcomes.append(LockOutcome(f"killed at {point} while taking the lock: next run proceeds", died and free,
                                    detail if died else f"the child was not killed (status {status})"))
    return outcomes


def check_lock_race(work: Path, contenders: int = 4, trials: int = 8) -> LockOutcome:
    """``contenders`` processes take the lock at the same instant, over a dead run's lock file: exactly one
    wins."""
    ctx = mp.get_context("fork")
    bad_trials = []
    for trial in range(trials):
        folder = work / f"race_{trial}"
        folder.mkdir(parents=True)
        dead = subprocess.Popen(["true"])
        dead.wait()
        (folder / LOCK_NAME).write_text(f"{dead.pid}\n")  # stale: every contender wants to take it over
        barrier, results = ctx.Barrier(contenders), ctx.Queue()

        def contend(folder=folder, barrier=barrier, results=results):
            barrier.wait()
            lock = RunLock(folder)
            try:
                lock.acquire()
            except RunLockedError:
                results.put("lost")
                return
            results.put("won")
            time.sleep(0.3)  # hold it while the others try
            lock.release()

        procs = [ctx.Process(target=contend) for _ in range(contenders)]
        for p in procs:
            p.start()
        outcome = sorted(results.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(60)
        if outcome.count("won") != 1:
            bad_trials.append((trial, outcome))
    return LockOutcome(f"{contenders} runs started at once over a stale lock: exactly one wins ({trials} trials)",
                       not bad_trials, f"bad trials: {bad_trials}" if bad_trials else "one winner every time")


