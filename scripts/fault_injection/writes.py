"""Promise 2: a checkpoint write that fails — the disk fills up half-way, fsync reports an I/O error, the rename
or the temp file is refused — never costs the previous checkpoint, and the error names the file and the cause.

The failures are real ``OSError``s raised from inside ``common.checkpoint`` (patched from outside)."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from common import checkpoint as ckpt_mod
from common.checkpoint import CheckpointError, load_checkpoint
from fault_injection import CKPT_NAME, checkpoint_temp_files, make_state, run_main, train_argv
from fault_injection.locks import lock_is_free
from training import trainer


@dataclass
class WriteFailure:
    name: str
    kept_previous: bool  # the previous checkpoint loads and is byte-identical
    reported: bool  # the error names the checkpoint and the cause
    no_temp_left: bool
    message: str

    @property
    def ok(self) -> bool:
        return self.kept_previous and self.reported and self.no_temp_left


def _half_then_disk_full(real_save: Callable) -> Callable:
    """torch.save that gets half the file onto the disk, then runs out of space."""
    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.flush()
        f.truncate(f.tell() // 2)
        raise OSError(errno.ENOSPC, "No space left on device")
    return save


WRITE_FAILURES: dict[str, tuple[str, Callable, str]] = {
    # name: (what inside common.checkpoint fails, replacement factory(original), the cause the message names)
    "disk full mid-write": ("torch.save", _half_then_disk_full, "No space left on device"),
    "I/O error at fsync": ("os.fsync", lambda real: _raiser(errno.EIO, "Input/output error"), "Input/output error"),
    "rename refused": ("os.replace", lambda real: _raiser(errno.EACCES, "Permission denied"), "Permission denied"),
    "no space for the temp file": ("os.open", lambda real: _raiser(errno.ENOSPC, "No space left on device"),
                                   "No space left on device"),
}


def _raiser(code: int, text: str) -> Callable:
    def fail(*args, **kwargs):
        raise OSError(code, text)
    return fail


@contextlib.contextmanager
def failing_write(name: str, after: int = 0) -> Iterator[None]:
    """Patch common.checkpoint so that save_checkpoint calls after the first ``after`` ones fail as ``name``."""
    target, factory, _ = WRITE_FAILURES[name]
    module_name, attr = target.split(".")
    module = getattr(ckpt_mod, module_name)
    real = getattr(module, attr)
    broken = factory(real)
    real_save_checkpoint, calls = ckpt_mod.save_checkpoint, []

    def counting_save_checkpoint(path, state):
        calls.append(path)
        if len(calls) <= after:
            return real_save_checkpoint(path, state)
        with mock.patch.object(module, attr, broken):
            return real_save_checkpoint(path, state)

    with mock.patch.object(ckpt_mod, "save_checkpoint", counting_save_checkpoint), \
            mock.patch.object(trainer, "save_checkpoint", counting_save_checkpoint):
        yield


def check_failed_write(folder: Path, name: str) -> WriteFailure:
    """save_checkpoint over a good checkpoint, failing as ``name``: the good one must survive byte for byte."""
    path = folder / CKPT_NAME
    ckpt_mod.save_checkpoint(path, make_state(step=1))
    before = path.read_bytes()
    message = ""
    with failing_write(name):
        try:
            ckpt_mod.save_checkpoint(path, make_state(step=2))
        except (OSError, CheckpointError) as err:
            message = str(err)
    cause = WRITE_FAILURES[name][2]
    kept = path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    return WriteFailure(name, kept, str(path) in message and cause in message,
                        sorted(os.listdir(folder)) == [CKPT_NAME], message)


def check_disk_full_during_training(work: Path, data: Path, fail_at_save: int = 2) -> WriteFailure:
    """A ``tiny`` run (checkpoint every 2 steps) whose save number ``fail_at_save`` hits a full disk: the run
    must stop with the error reported (a message, not a traceback) and the previous checkpoint intact."""
    run = work / "diskfull"
    rc, log, crashed = None, "", ""
    with failing_write("disk full mid-write", after=fail_at_save - 1):
        try:
            rc, log = run_main(train_argv(run, data, "--ckpt-every", "2", "--max-steps", str(2 * fail_at_save + 2)))
        except OSError as err:  # escaped main(): the CLI printed a traceback
            crashed = f"uncaught {type(err).__name__}: {err}"
    ckpt = load_checkpoint(run / CKPT_NAME) if (run / CKPT_NAME).exists() else None
    kept = ckpt is not None and ckpt["step"] == 2 * (fail_at_save - 1)
    message = crashed or log
    reported = not crashed and rc not in (0, None) and "No space left on device" in log and CKPT_NAME in log
    return WriteFailure("disk full during training", kept, reported,
                        not checkpoint_temp_files(run) and lock_is_free(run),
                        message.splitlines()[-1] if message else f"rc {rc}")


