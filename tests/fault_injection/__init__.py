"""Fault injection for the README's "Reliability" promises, shared by ``tests/test_reliability.py``,
``tests/test_dataset_fuzz.py``, ``tests/stress/`` and ``scripts/reliability_report.py``.

Each promise has one module whose ``check_*`` functions *do* the fault and return what happened (dataclasses
with an ``ok`` property); the tests assert on those results and the report script counts them, so the published
figures and the tests cannot drift apart:

==========================  =====================================================================
module                      promise
==========================  =====================================================================
:mod:`.kills`               1. SIGKILL anywhere (also inside checkpoint writes), resume exactly; 7. live lock
:mod:`.writes`              2. a failed checkpoint write keeps the previous checkpoint
:mod:`.hostile`             3. hostile, broken and mismatching checkpoints are refused by name
:mod:`.data`                4. messy image folders: load correctly or BadImageError naming the file
:mod:`.flags`               5. bad flag values are rejected before any work
:mod:`.divergence`          6. a NaN/inf loss stops the run, keeps the last good checkpoint, names the step
:mod:`.locks`               7. the run lock under kills and races
==========================  =====================================================================

Nothing hooks into the training code: runs are real ``python main.py`` processes killed with SIGKILL, or
in-process ``main.main`` calls with one function patched from outside (``unittest.mock``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent.parent
REPO = TESTS.parent
for _path in (str(REPO), str(TESTS)):  # the script imports this package too
    if _path not in sys.path:
        sys.path.insert(0, _path)

from test_training import argv as _train_argv  # noqa: E402
from test_training import write_digits  # noqa: E402  (noisy 28×28 bars per class, the training tests' data)

import main as entry  # noqa: E402

CKPT_NAME = "test_001.pth"
TEMP_GLOB = f".{CKPT_NAME}.*.tmp"  # what save_checkpoint writes before its atomic rename
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}

__all__ = ["CKPT_NAME", "REPO", "SUBPROCESS_ENV", "TEMP_GLOB", "captured_logs", "checkpoint_temp_files",
           "run_main", "train_argv", "weights_max_abs_diff", "write_digits"]


def train_argv(run: Path, data: Path, *extra: str) -> list[str]:
    """``main.py`` arguments of a ``tiny`` run (batch 8, T=100) on one thread."""
    return [*_train_argv(run, data, "--num-threads", "1"), *extra]


def checkpoint_temp_files(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob(TEMP_GLOB))


def weights_max_abs_diff(a: dict, b: dict) -> float:
    """max |a − b| over the model, EMA and optimizer tensors of two checkpoints (inf if their keys differ)."""
    worst = 0.0
    for key in ("model", "ema"):
        if a[key].keys() != b[key].keys():
            return float("inf")
        for name, t in a[key].items():
            worst = max(worst, (t.double() - b[key][name].double()).abs().max().item())
    for pid, state in a["optimizer"]["state"].items():
        for name, t in state.items():
            if torch.is_tensor(t):
                worst = max(worst, (t.double() - b["optimizer"]["state"][pid][name].double()).abs().max().item())
    return worst


@contextlib.contextmanager
def captured_logs(level: int = logging.INFO) -> Iterator[list[str]]:
    """Collect the messages logged anywhere while the block runs."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    root = logging.getLogger()
    handler, before = Collect(level), root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield messages
    finally:
        root.removeHandler(handler)
        root.setLevel(before)


def run_main(argv: list[str]) -> tuple[int, str]:
    """``main.main(argv)`` in this process: (exit code, the log messages joined). SystemExit becomes its code."""
    with captured_logs() as messages:
        try:
            rc = entry.main(argv)
        except SystemExit as exit_:
            rc = exit_.code if isinstance(exit_.code, int) else 1
    return rc, "\n".join(messages)
