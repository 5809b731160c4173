"""The README's "Reliability" promises, fast versions: kills (3, one landing inside a checkpoint write), failed
writes, hostile checkpoints, bad flags, NaN/inf and the run lock. Messy data is fuzzed in
``tests/test_dataset_fuzz.py``; ten-plus kills run in ``tests/stress/`` and ``scripts/reliability_report.py``.

The faults themselves live in ``scripts/fault_injection/`` (shared with the report script, so the published
figures come from the same code).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fault_injection import CKPT_NAME, make_state, write_digits
from fault_injection import flags as bad_flags
from fault_injection.divergence import check_divergence
from fault_injection.hostile import CASES, check_hostile
from fault_injection.kills import kill_and_resume
from fault_injection.locks import check_kill_during_lock_creation, check_lock_race
from fault_injection.mistakes import check_overwrites, check_silent_results
from fault_injection.writes import WRITE_FAILURES, check_disk_full_during_training, check_failed_write

from common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from common.run_lock import LOCK_NAME, RunLock, RunLockedError


@pytest.fixture(scope="module")
def data48(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits48"), per_class=16)  # 6 steps/epoch at batch 8


# ---------------------------------------------------------------------------------------------- 1. kill anywhere
def test_sigkill_anywhere_then_resume_ends_with_the_uninterrupted_weights(tmp_path, data48):
    """Two kills the moment a checkpoint write starts and one mid-training; a second run into the live run's
    folder is refused on the way. 12 steps, a checkpoint every step."""
    report = kill_and_resume(tmp_path, data48, kills=3, seed=0, run_flags=("--num-epochs", "2"),
                             modes=["write", "training", "write"])
    assert report.ok, report
    assert report.kills_tried == report.kills_survived == 3
    assert report.kills_in_write >= 1, report  # the process really died inside save_checkpoint
    assert report.max_abs_diff == 0.0 and report.metrics_equal
    assert report.lock_refused, report.lock_refusal


# ---------------------------------------------------------------------------------------------- 2. failed writes
@pytest.mark.parametrize("failure", list(WRITE_FAILURES))
def test_failed_write_keeps_the_previous_checkpoint_and_names_the_cause(tmp_path, failure):
    outcome = check_failed_write(tmp_path, failure)
    assert outcome.kept_previous and outcome.no_temp_left, outcome
    assert outcome.reported, outcome.message


@pytest.fixture(scope="module")
def disk_full(tmp_path_factory, data48):
    return check_disk_full_during_training(tmp_path_factory.mktemp("diskfull"), data48)


def test_disk_full_during_training_keeps_the_last_checkpoint(disk_full):
    assert disk_full.kept_previous and disk_full.no_temp_left, disk_full


def test_disk_full_during_training_is_reported_without_a_traceback(disk_full):
    assert disk_full.reported, disk_full.message


def test_weights_holding_nan_never_replace_a_checkpoint(tmp_path):
    path = tmp_path / CKPT_NAME
    save_checkpoint(path, make_state(step=1))
    state = make_state(step=2)
    state["ema"] = {**state["ema"], "conv_out.bias": torch.full_like(state["ema"]["conv_out.bias"], float("nan"))}
    with pytest.raises(CheckpointError, match=r"at step 2: ema weights hold NaN/inf values \(conv_out\.bias\)"):
        save_checkpoint(path, state)
    assert load_checkpoint(path)["step"] == 1 and os.listdir(tmp_path) == [CKPT_NAME]


def test_a_checkpoint_is_a_normal_file_not_private_to_its_writer(tmp_path):
    """mkstemp creates 0600 files; a checkpoint gets the mode open() would give it, or keeps its old mode."""
    umask = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "a.pth", make_state())
        assert (tmp_path / "a.pth").stat().st_mode & 0o777 == 0o644
        (tmp_path / "a.pth").chmod(0o640)
        save_checkpoint(tmp_path / "a.pth", make_state(step=2))
        assert (tmp_path / "a.pth").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)


# ---------------------------------------------------------------------------------------------- 3. hostile checkpoints
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_checkpoint_is_refused_naming_the_problem(name, tmp_path, data48):
    outcome = check_hostile(CASES[name], tmp_path, data48)
    assert not outcome.executed, "the payload ran"
    assert outcome.refused, outcome.message
    assert outcome.named, f"{outcome.message!r} does not match {CASES[name].expect!r}"


# ---------------------------------------------------------------------------------------------- 5. bad flags
@pytest.mark.parametrize("flag, value", [
    pytest.param(flag, value, id=f"{flag}={value[:12]}") for flag, value in bad_flags.bad_flag_values()
    if (flag, value) not in bad_flags.ACCEPTED_BY_DESIGN and (flag, value) not in bad_flags.KNOWN_UNREJECTED])
def test_bad_flag_value_is_rejected_before_any_work(flag, value, tmp_path, data48):
    outcome = bad_flags.try_flag(flag, value, tmp_path, data48)
    assert outcome.rejected, f"{flag}={value!r} was accepted"
    assert outcome.clean, outcome.message
    assert outcome.folder_untouched


def test_huge_values_and_colliding_checkpoint_names_are_rejected(tmp_path, data48):
    accepted = [f"{flag}={value}" for flag, value in bad_flags.KNOWN_UNREJECTED
                if not bad_flags.try_flag(flag, value, tmp_path, data48).ok]
    assert not accepted, f"accepted: {accepted}"


@pytest.mark.parametrize("flag, value", list(bad_flags.ACCEPTED_BY_DESIGN), ids=lambda v: str(v)[:12])
def test_meaningful_edge_values_are_accepted(flag, value, tmp_path, data48):
    assert not bad_flags.try_flag(flag, value, tmp_path, data48).rejected, bad_flags.ACCEPTED_BY_DESIGN[flag, value]


def test_every_numeric_flag_is_swept():
    """The sweep finds flags by introspection; this pins that it still sees them all (incl. the eval flags)."""
    found = dict(bad_flags.numeric_flags())
    assert {"--batch-size", "--lr", "--num-timesteps", "--seed", "--viz-t", "--num-samples", "--eta"} <= set(found)
    assert found["--lr"] == "float" and found["--batch-size"] == "int"
    tried = {(f, v) for f, v in bad_flags.bad_flag_values()}
    for flag, kind in found.items():
        huge = bad_flags.HUGE_INT if kind == "int" else bad_flags.HUGE_FLOAT
        assert {(flag, "0"), (flag, "-1"), (flag, huge), (flag, "abc")} <= tried


def test_task_name_that_is_a_file_is_an_error_message_not_a_traceback(tmp_path, data48):
    outcome = bad_flags.check_task_name_is_a_file(tmp_path, data48)
    assert outcome.folder_untouched  # the file is never overwritten, bug or not
    assert outcome.ok, outcome.message


# ---------------------------------------------------------------------------------------------- 6. NaN / inf
@pytest.fixture(scope="module")
def nan_work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nan")  # clean reference runs are cached here by step


@pytest.mark.parametrize("kind, at_step, resume_at", [
    ("inf", 4, 0),  # on a checkpoint step: the save of step 4 never happens, step 2 is kept
    ("inf-grad", 3, 0),  # finite loss, infinite gradient (caught by the clipping norm)
    ("nan", 1, 0),  # before any checkpoint
    ("-inf", 6, 4),  # after a resume; step 6 would also end the epoch
])
def test_non_finite_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(nan_work, data48, kind, at_step,
                                                                          resume_at):
    outcome = check_divergence(nan_work, data48, kind, at_step, resume_at=resume_at)
    assert outcome.rc == 1, outcome
    assert outcome.step_named, outcome.message
    assert outcome.kept_equals_clean, outcome


@pytest.fixture(scope="module")
def unclipped_inf_grad(nan_work, data48):
    return check_divergence(nan_work, data48, "inf-grad", 4, extra=("--grad-clip", "0"))


def test_infinite_gradient_without_clipping_never_reaches_the_checkpoint(unclipped_inf_grad):
    """Step 4's optimizer step turns the weights into NaN and step 4 is a checkpoint step; save_checkpoint's
    finiteness guard keeps the good step-2 checkpoint."""
    assert unclipped_inf_grad.kept_step == 2 and unclipped_inf_grad.kept_equals_clean, unclipped_inf_grad


def test_infinite_gradient_without_clipping_is_reported_as_divergence(unclipped_inf_grad):
    assert unclipped_inf_grad.ok, unclipped_inf_grad


# ---------------------------------------------------------------------------------------------- 7. the run lock
def test_a_kill_at_any_point_of_taking_the_lock_never_blocks_the_next_run(tmp_path):
    for outcome in check_kill_during_lock_creation(tmp_path):
        assert outcome.ok, outcome


def test_simultaneous_starts_over_a_stale_lock_elect_exactly_one_owner(tmp_path):
    outcome = check_lock_race(tmp_path, contenders=4, trials=5)
    assert outcome.ok, outcome.detail


def _dead_pid() -> int:
    dead = subprocess.Popen(["true"])
    dead.wait()
    return dead.pid


def test_the_lock_file_of_a_dead_run_is_taken_at_once_and_names_its_new_owner(tmp_path):
    (tmp_path / LOCK_NAME).write_text(f"{_dead_pid()}\n")
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    with RunLock(tmp_path):  # released on exit: the next run takes it too
        pass


def test_a_held_lock_refuses_a_second_run_naming_the_holders_pid(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from common.run_lock import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"in use by another training run \(PID {holder.pid}\)"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):  # the kernel dropped the killed holder's lock
        pass


# ---------------------------------------------------------------------------------------------- 8, 9. mistakes
@pytest.fixture(scope="module")
def overwrites(tmp_path_factory, data48):
    return {o.name: o for o in check_overwrites(tmp_path_factory.mktemp("overwrite"), data48)}


@pytest.mark.parametrize("name", ["a new run into a folder holding a checkpoint",
                                  "--resume of another run's checkpoint into it", "an export onto its own input",
                                  "an export onto a resumable checkpoint", "an export onto a folder",
                                  "an evaluation whose output is an existing file"])
def test_a_mistake_never_replaces_work(overwrites, name):
    assert overwrites[name].ok, overwrites[name].detail


@pytest.fixture(scope="module")
def silent(tmp_path_factory, data48):
    return {o.name: o for o in check_silent_results(tmp_path_factory.mktemp("silent"), data48)}


@pytest.mark.parametrize("name", ["--beta-end 0.3 (ᾱ_T underflows float32)", "--labels 0,1,2 with --num-samples 2",
                                  "--weight-decay changed on --resume is applied",
                                  "--skip-bad keeps the majority size when the first file is odd"])
def test_no_wrong_result_without_a_word(silent, name):
    assert silent[name].ok, silent[name].detail
