"""Promise 7, the parts a training run cannot show: a process SIGKILLed at each point of taking the lock never
blocks the next run (the lock is never left empty), and runs started at the same instant over a stale lock
elect exactly one owner. (A live run refusing a second one, and stale take-over after SIGKILL, are exercised
by :mod:`fault_injection.kills`.)"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from training import run_lock
from training.run_lock import LOCK_NAME, RunLock, RunLockedError


@dataclass
class LockOutcome:
    name: str
    ok: bool
    detail: str


def _die(*args, **kwargs) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _open_then_die(path, mode="r", *args, **kwargs):
    """``open`` that SIGKILLs the process right after creating a file for writing (before anything is in it)."""
    f = open(path, mode, *args, **kwargs)
    if "w" in mode:
        _die()
    return f


def check_kill_during_lock_creation(work: Path) -> list[LockOutcome]:
    """A process SIGKILLed at each point of taking the lock must not block the next run (no empty lock)."""
    outcomes = []
    for point in ("fsync", "link", "write"):
        folder = work / f"lock_kill_{point}"
        folder.mkdir(parents=True)
        pid = os.fork()
        if pid == 0:  # the child: dies inside RunLock.acquire
            try:
                if point == "write":
                    run_lock.open = _open_then_die  # a module global shadows the builtin
                else:
                    setattr(run_lock.os, point, _die)  # this child's os.fsync / os.link
                RunLock(folder).acquire()
            finally:
                os._exit(3)  # not reached when the kill landed
        _, status = os.waitpid(pid, 0)
        died = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        try:
            lock = RunLock(folder)
            lock.acquire()
            lock.release()
            ok, detail = died, "taken at once" if died else f"the child was not killed (status {status})"
        except RunLockedError as err:
            ok, detail = False, str(err)
        leftovers = sorted(os.listdir(folder))
        outcomes.append(LockOutcome(f"killed at {point} while taking the lock: next run proceeds",
                                    ok and not leftovers, detail + (f"; left {leftovers}" if leftovers else "")))
    return outcomes


def check_lock_race(work: Path, contenders: int = 4, trials: int = 8) -> LockOutcome:
    """``contenders`` processes take the lock at the same instant, over a stale lock: exactly one wins."""
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


