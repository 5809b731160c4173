"""Promises 8 and 9: a user's mistake never replaces their work, and never yields a wrong result without a word.

8. Overwrite protection: a new run into a folder holding a checkpoint, a ``--resume`` of another run's checkpoint
   into it, an export onto its own input / onto a resumable checkpoint / onto a folder, and an evaluation whose
   output is an existing file are each refused (exit 2) before anything in the way changes.
9. Silent wrong results: a β schedule whose ᾱ_T underflows, more labels than samples, a changed
   ``--weight-decay`` on resume, and a ``--skip-bad`` folder whose *first* file has the odd size each either get a
   refusal naming the problem or do what was asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import export_weights
import numpy as np
from PIL import Image

from common.checkpoint import load_checkpoint
from dataset import MNISTDataset
from fault_injection import CKPT_NAME, captured_logs, run_main, train_argv


@dataclass
class MistakeOutcome:
    name: str
    ok: bool
    detail: str


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def _trained(work: Path, data: Path, name: str, *flags: str) -> Path:
    run = work / name
    rc, log = run_main(train_argv(run, data, "--max-steps", "2", "--final-samples", "0", *flags))
    if rc != 0:
        raise RuntimeError(f"the set-up run {name} failed (rc {rc}): {log[-1000:]}")
    return run


def _refused_untouched(name: str, folder: Path, call: Callable[[], tuple[int, str]], expect: str) -> MistakeOutcome:
    before = _digest(folder)
    rc, log = call()
    ok = rc == 2 and expect in log and _digest(folder) == before
    return MistakeOutcome(name, ok, f"exit {rc}; folder unchanged: {_digest(folder) == before}; {log[-200:]}")


def _main(argv: list[str]) -> tuple[int, str]:
    """:func:`run_main` with what argparse writes to stderr (usage errors) added to the log text."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc, log = run_main(argv)
    return rc, log + "\n" + err.getvalue()


def _export(argv: list[str]) -> tuple[int, str]:
    with captured_logs() as messages:
        rc = export_weights.main(argv)
    return rc, "\n".join(messages)


def check_overwrites(work: Path, data: Path) -> list[MistakeOutcome]:
    """Promise 8."""
    run, other = _trained(work, data, "run"), _trained(work, data, "other")
    ckpt = run / CKPT_NAME
    taken = work / "taken"
    taken.write_text("keep me\n")
    eval_argv = ["--eval-ddpm-model", "--ckpt-file", str(ckpt), "--task-name", str(taken), "--num-samples", "2"]
    return [
        _refused_untouched("a new run into a folder holding a checkpoint", run,
                           lambda: run_main(train_argv(run, data, "--max-steps", "1")), "already holds a step-2"),
        _refused_untouched("--resume of another run's checkpoint into it", run,
                           lambda: run_main(train_argv(run, data, "--max-steps", "3", "--resume",
                                                       str(other / CKPT_NAME))), "already holds a step-2"),
        _refused_untouched("an export onto its own input", run, lambda: _export([str(ckpt), str(ckpt)]),
                           "is the input checkpoint"),
        _refused_untouched("an export onto a resumable checkpoint", other,
                           lambda: _export([str(ckpt), str(other / CKPT_NAME)]), "resumable training checkpoint"),
        _refused_untouched("an export onto a folder", run, lambda: _export([str(ckpt), str(other)]), "is a folder"),
        _refused_untouched("an evaluation whose output is an existing file", work,
                           lambda: run_main(eval_argv), "cannot write the samples"),
    ]


def check_silent_results(work: Path, data: Path) -> list[MistakeOutcome]:
    """Promise 9."""
    outcomes = []
    rc, log = _main(train_argv(work / "beta", data, "--num-timesteps", "1000", "--beta-end", "0.3", "--max-steps", "1"))
    outcomes.append(MistakeOutcome("--beta-end 0.3 (ᾱ_T underflows float32)", rc == 2 and "below float32" in log,
                                   f"exit {rc}: {log[-200:]}"))
    run = _trained(work, data, "labels", "--conditional", "--num-classes", "3")
    rc, log = run_main(["--eval-ddpm-model", "--ckpt-file", str(run / CKPT_NAME), "--labels", "0,1,2",
                        "--num-samples", "2", "--task-name", str(work / "labels_eval")])
    outcomes.append(MistakeOutcome("--labels 0,1,2 with --num-samples 2", rc == 2 and "cannot show the 3" in log,
                                   f"exit {rc}: {log[-200:]}"))
    run = _trained(work, data, "wd")
    rc, log = run_main(train_argv(run, data, "--max-steps", "3", "--final-samples", "0", "--resume",
                                  "--weight-decay", "0.05"))
    groups = load_checkpoint(run / CKPT_NAME)["optimizer"]["param_groups"] if rc == 0 else []
    outcomes.append(MistakeOutcome("--weight-decay changed on --resume is applied",
                                   rc == 0 and groups and all(g["weight_decay"] == 0.05 for g in groups),
                                   f"exit {rc}; weight decays {[g['weight_decay'] for g in groups]}"))
    odd = work / "odd_first"
    shutil.copytree(data, odd)
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(odd / "0" / "0.png")  # the first file is the odd one
    ds = MNISTDataset.from_folder(odd, skip_bad=True)
    outcomes.append(MistakeOutcome("--skip-bad keeps the majority size when the first file is odd",
                                   len(ds) == 47 and ds.image_size == (28, 28),
                                   f"{len(ds)} images of {ds.image_size}"))
    return outcomes
