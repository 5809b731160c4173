"""Promise 6: a NaN/inf loss (or an infinite gradient) stops the run cleanly — exit code 1, a message naming the
step — and the checkpoint on disk is the last good one: finite, and bit-identical to a clean run stopped there."""

from __future__ import annotations

import functools
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from common.checkpoint import load_checkpoint
from dataset import MNISTDataset
from fault_injection import CKPT_NAME, run_main, train_argv, weights_max_abs_diff
from training import cli, trainer


@dataclass
class DivergenceOutcome:
    name: str
    rc: int
    message: str
    step_named: bool  # the log names the step that diverged and the step of the checkpoint kept
    kept_step: int | None  # step of the checkpoint on disk afterwards (None: no checkpoint)
    kept_equals_clean: bool  # that checkpoint equals a clean run stopped at the same step, and is finite

    @property
    def ok(self) -> bool:
        return self.rc == 1 and self.step_named and self.kept_equals_clean


def _poisoned_loss(kind: str, at_call: int) -> Callable:
    """trainer.l_simple, but the ``at_call``-th call returns a NaN/±inf loss (``kind``) or, for ``"inf-grad"``,
    a finite loss whose gradient is infinite."""
    real, calls = trainer.l_simple, []

    def loss_fn(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        if len(calls) != at_call:
            return loss
        if kind == "inf-grad":
            loss.register_hook(lambda grad: grad * float("inf"))
            return loss
        return loss * float(kind)
    return loss_fn


def _clean_run(run: Path, data: Path, flags: tuple[str, ...], steps: int) -> None:
    rc, log = run_main(train_argv(run, data, *flags, "--max-steps", str(steps)))
    if rc != 0:
        raise RuntimeError(f"the clean run to step {steps} failed (rc {rc}): {log[-1000:]}")


def check_divergence(work: Path, data: Path, kind: str, at_step: int, ckpt_every: int = 2, resume_at: int = 0,
                     extra: tuple[str, ...] = ()) -> DivergenceOutcome:
    """Inject a non-finite loss (``kind`` "nan", "inf", "-inf") or gradient ("inf-grad") at ``at_step``,
    optionally in a run resumed at ``resume_at``.

    Expected: exit code 1, a message "… at step <at_step> … (step <k>) is kept" and, on disk, the checkpoint of
    step ``k`` — the last multiple of ``ckpt_every``, epoch end or resume point before ``at_step`` — finite and
    bit-identical to a clean run stopped there (clean runs are cached in ``work`` by step and flags)."""
    name = f"{kind} at step {at_step}" + (f" after a resume at step {resume_at}" if resume_at else "") + \
        (f" ({' '.join(extra)})" if extra else "")
    run = work / re.sub(r"\W+", "_", name)
    # A constant lr: the clean reference stops at step k through --max-steps k, which would move a decaying
    # schedule's end (the lr is a function of the run's horizon) and change the weights it is compared with.
    flags = ("--ckpt-every", str(ckpt_every), "--num-epochs", "3", "--lr-schedule", "constant", *extra)
    flag_slug = re.sub(r"\W+", "_", " ".join(extra))
    clean_dir = lambda step: work / f"clean_{step}_{flag_slug}"  # noqa: E731
    if resume_at:
        _clean_run(run, data, flags, resume_at)
        clean_dir(resume_at).mkdir(parents=True, exist_ok=True)
        shutil.copy(run / CKPT_NAME, clean_dir(resume_at) / CKPT_NAME)
    poisoned_train = functools.partial(trainer.train, loss_fn=_poisoned_loss(kind, at_step - resume_at))
    with mock.patch.object(cli, "train", poisoned_train):  # the command line's train, with a poisoned loss
        rc, log = run_main(train_argv(run, data, *flags, *(["--resume"] if resume_at else [])))

    steps_per_epoch = len(MNISTDataset.from_folder(data)) // 8
    saves = [s for s in range(1, at_step) if s % ckpt_every == 0 or s % steps_per_epoch == 0] + \
        ([resume_at] if resume_at else [])
    kept = max(saves) if saves else None
    line = next((m for m in log.splitlines() if "diverged" in m or "refusing to write" in m), log[-300:])
    named = f"at step {at_step} " in line and (f"(step {kept})" in line if kept else "no checkpoint" in line)
    on_disk = load_checkpoint(run / CKPT_NAME) if (run / CKPT_NAME).exists() else None
    kept_step = on_disk["step"] if on_disk else None
    equal = on_disk is None and kept is None
    if on_disk is not None and kept_step == kept:
        if not (clean_dir(kept) / CKPT_NAME).exists():
            _clean_run(clean_dir(kept), data, flags, kept)
        equal = weights_max_abs_diff(load_checkpoint(clean_dir(kept) / CKPT_NAME), on_disk) == 0.0
    return DivergenceOutcome(name, rc, line, named, kept_step, equal)
