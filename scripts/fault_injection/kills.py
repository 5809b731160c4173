"""Promise 1: a ``tiny`` run SIGKILLed at random moments — during start-up, mid-step and inside checkpoint
writes — and resumed with ``--resume`` each time always finds a loadable checkpoint and ends with the weights
of an uninterrupted run. Promise 7 rides along: while the killed run is live, a second run into its folder is
refused, and each resume takes over the stale lock of the killed process."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.checkpoint import CheckpointError, load_checkpoint
from common.run_lock import LOCK_NAME
from fault_injection import (
    CKPT_NAME,
    REPO,
    SUBPROCESS_ENV,
    checkpoint_temp_files,
    run_main,
    train_argv,
    weights_max_abs_diff,
)
from fault_injection.locks import lock_is_free
from training.monitor import read_metrics

MODES = ("write", "training", "startup")


@dataclass
class KillReport:
    """What :func:`kill_and_resume` did. A kill is *survived* when the folder then holds a loadable checkpoint
    at least as far as the previous one (or none had been written yet) and the resumed run starts from it."""

    kills_tried: int = 0
    kills_survived: int = 0
    kills_in_write: int = 0  # a temp checkpoint was left behind: the process died inside save_checkpoint
    modes: dict = field(default_factory=dict)  # kill mode -> count
    steps_at_kills: list = field(default_factory=list)
    lock_refusal: str | None = None  # a second run started into the live run's folder: refused? (message)
    lock_refused: bool | None = None
    max_abs_diff: float = float("nan")  # final weights vs the uninterrupted run
    metrics_equal: bool = False  # the metrics.csv loss history equals the uninterrupted one
    problems: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (not self.problems and self.kills_survived == self.kills_tried and self.max_abs_diff <= 1e-6
                and self.metrics_equal and self.lock_refused is not False)


def _popen(argv: list[str], log: Path) -> subprocess.Popen:
    """``python main.py argv`` with stderr to ``log`` (a pipe nobody reads could fill up and stall the run)."""
    with open(log, "wb") as stderr:
        return subprocess.Popen([sys.executable, "main.py", *argv], cwd=REPO, env=SUBPROCESS_ENV,
                                stdout=subprocess.DEVNULL, stderr=stderr)


def _tail(log: Path) -> str:
    return log.read_bytes().decode(errors="replace")[-1000:] if log.exists() else ""


def _wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float, poll: float) -> bool:
    """Poll ``predicate`` until true (True), the process exits or the time is up (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return -1


def _second_run_is_refused(run: Path, data: Path, live_pid: int) -> tuple[bool, str]:
    owner = (run / LOCK_NAME).read_text().split("\n")[0] if (run / LOCK_NAME).exists() else ""
    rc, log = run_main(train_argv(run, data, "--max-steps", "1"))
    line = next((m for m in log.splitlines() if "another training run" in m), log[-300:])
    return rc == 2 and owner == str(live_pid) and f"another training run (PID {live_pid})" in line, line


def kill_and_resume(work: Path, data: Path, kills: int, seed: int = 0, run_flags: tuple[str, ...] = (),
                    write_share: float = 0.5, modes: list[str] | None = None,
                    step_timeout: float = 120.0) -> KillReport:
    """SIGKILL a ``tiny`` run ``kills`` times, resume it with ``--resume`` each time, and compare it at the end
    with an uninterrupted run of the same seed.

    The kill schedule comes from ``random.Random(seed)``. Each kill is one of three modes, drawn with
    probabilities ``write_share`` and 60 % / 40 % of the rest:

    * ``write``: poll the run folder and kill the moment save_checkpoint's temp file ``.test_001.pth.*.tmp``
      appears (plus 0–2 ms) for the first or second time, so the process dies inside a checkpoint write;
    * ``training``: kill within 2.5 steps' time after the (re)started run has written its config.json;
    * ``startup``: kill before that, at a random moment of the start-up (imports, lock take-over, loading the
      checkpoint, the data).

    ``modes`` fixes the sequence of modes instead. ``run_flags`` must make the run long enough to absorb the
    kills (every invocation does a little work). While the first run is live, a second ``main.py`` into the same
    folder is started once (promise 7): it must be refused, naming the live run's PID.
    """
    t0 = time.monotonic()
    report = KillReport()
    rng = random.Random(seed)
    straight, killed = work / "straight", work / "killed"
    flags = ("--ckpt-every", "1", "--log-every", "1", "--seed", str(seed), *run_flags)
    t_ref = time.monotonic()
    rc, log = run_main(train_argv(straight, data, *flags))  # in this process: no second start-up to pay
    if rc != 0:
        report.problems.append(f"the uninterrupted run failed (rc {rc}): {log[-2000:]}")
        return report
    # Delays scale with this machine's speed, so each invocation advances a few steps, not the whole run.
    step_s = (time.monotonic() - t_ref) / max(1, load_checkpoint(straight / CKPT_NAME)["step"])
    startup_s = 3.0  # until measured: spawn to config.json
    ckpt_path, config_path = killed / CKPT_NAME, killed / "config.json"
    last_step = -1

    for k in range(kills):
        mode = modes[k] if modes else rng.choices(MODES, [write_share, 0.6 * (1 - write_share),
                                                          0.4 * (1 - write_share)])[0]
        resume = ckpt_path.exists()
        config_before = _mtime(config_path)
        log_path = work / f"invocation_{k}.log"
        spawned = time.monotonic()
        proc = _popen(train_argv(killed, data, *flags, *(["--resume"] if resume else [])), log_path)
        try:
            if mode == "startup":
                time.sleep(rng.uniform(0.0, startup_s))
            else:
                started = _wait_for(lambda before=config_before: _mtime(config_path) != before, proc,
                                    step_timeout, 0.002)
                startup_s = time.monotonic() - spawned if started else startup_s
                if started and report.lock_refused is None:
                    report.lock_refused, report.lock_refusal = _second_run_is_refused(killed, data, proc.pid)
                if started and mode == "training":
                    time.sleep(rng.uniform(0.0, 2.5 * step_s))
                elif started:  # the first or second checkpoint write of this invocation
                    for nth in range(rng.randint(1, 2)):
                        if nth:
                            _wait_for(lambda: not checkpoint_temp_files(killed), proc, step_timeout, 0.0002)
                        _wait_for(lambda: bool(checkpoint_temp_files(killed)), proc, step_timeout, 0.0002)
                    time.sleep(rng.uniform(0.0, 0.002))
            if proc.poll() is not None:  # it finished (or failed) before the kill: the run was too short
                report.problems.append(f"the run ended (rc {proc.returncode}) before kill "
                                       f"{report.kills_tried + 1} ({mode}); give it more steps. {_tail(log_path)}")
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        report.kills_tried += 1
        report.modes[mode] = report.modes.get(mode, 0) + 1
        if checkpoint_temp_files(killed):
            report.kills_in_write += 1
        # What a user finds after the crash: a loadable checkpoint, never older than the one before.
        if not ckpt_path.exists():
            if last_step >= 0:
                report.problems.append(f"kill {report.kills_tried} ({mode}): the checkpoint disappeared")
                continue
            report.steps_at_kills.append(None)
            report.kills_survived += 1  # nothing had been saved yet: a fresh start loses nothing
            continue
        try:
            step = int(load_checkpoint(ckpt_path)["step"])
        except (CheckpointError, OSError) as err:
            report.problems.append(f"kill {report.kills_tried} ({mode}): checkpoint unreadable: {err}")
            continue
        report.steps_at_kills.append(step)
        if step < last_step:
            report.problems.append(f"kill {report.kills_tried} ({mode}): checkpoint went back from step "
                                   f"{last_step} to {step}")
            continue
        last_step = step
        report.kills_survived += 1

    resume = ["--resume"] if ckpt_path.exists() else []
    final = subprocess.run([sys.executable, "main.py", *train_argv(killed, data, *flags, *resume)], cwd=REPO,
                           env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=step_timeout * 10)
    if final.returncode != 0:
        report.problems.append(f"the final --resume failed (rc {final.returncode}): {final.stderr[-2000:]}")
        report.kills_survived = 0
    else:
        a, b = load_checkpoint(straight / CKPT_NAME), load_checkpoint(ckpt_path)
        if a["step"] != b["step"]:
            report.problems.append(f"final step {b['step']} != uninterrupted {a['step']}")
        report.max_abs_diff = weights_max_abs_diff(a, b)
        losses = [[(r["step"], r["loss"]) for r in read_metrics(run / "metrics.csv")] for run in (straight, killed)]
        report.metrics_equal = losses[0] == losses[1]
        leftovers = checkpoint_temp_files(killed) + ([] if lock_is_free(killed) else [f"{LOCK_NAME} (still held)"])
        if leftovers:
            report.problems.append(f"left behind after the final run: {leftovers}")
    report.seconds = time.monotonic() - t0
    return report


