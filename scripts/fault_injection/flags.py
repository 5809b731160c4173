"""Promise 5: every numeric flag of ``main.py`` — found by introspecting the parser, so new flags are covered —
is tried with 0, a negative, a huge and non-numeric values (plus a few big-but-finite values and checkpoint
names that collide with the run folder's own files). Each must be rejected by the parser or the config
validation (``build_configs``, ``SamplerConfig``) with a message and exit code 2, no traceback, and no run
folder created; the few values that are meaningful (``--seed 0``, ``--grad-clip 0``, …) are listed in
:data:`ACCEPTED_BY_DESIGN` with the reason.

A value that passes the parser is never run here: it could start a real training (or allocate T=10⁹ floats).
"""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass
from pathlib import Path

import main as entry
from evaluation import cli as eval_cli
from fault_injection import train_argv
from training import cli

HUGE_INT = "1" + "0" * 30
HUGE_FLOAT = "1e308"

# Edge values that are meaningful and therefore accepted: (flag, value) -> why.
ACCEPTED_BY_DESIGN: dict[tuple[str, str], str] = {
    ("--seed", "0"): "0 is a seed like any other",
    ("--warmup-steps", "0"): "no warm-up",
    ("--weight-decay", "0"): "no weight decay (the default)",
    ("--grad-clip", "0"): "0 disables clipping (documented)",
    ("--grad-clip", HUGE_FLOAT): "a norm no gradient reaches: no clipping",
    ("--max-minutes", HUGE_FLOAT): "no time limit",
    ("--num-workers", "0"): "batch from memory (the default)",
    ("--num-threads", "0"): "torch's default thread count (documented)",
    ("--ema-decay", "0"): "EMA = the raw weights",
    ("--cond-drop", "0"): "never drop labels",
    ("--viz-t", "0"): "the first timestep",
    ("--viz-t", "-1"): "the last timestep (documented)",
    ("--eta", "0"): "deterministic DDIM",
    ("--guidance-scale", "0"): "unconditional sampling (documented)",
    ("--ema-gamma", "0"): "γ = 0: the EMA is the running mean of every weight so far",
    ("--final-samples", "0"): "no samples at the end of the run (documented)",
}

# Values that once passed the parser and config validation although they cannot work (they crashed, hung or
# only failed after the run folder existed), each with what it did. Now rejected up front (common/argtypes.py,
# TrainConfig.validate); kept as regression cases with their own test.
KNOWN_UNREJECTED: dict[tuple[str, str], str] = {
    **{(f, HUGE_INT): "no upper bound: ints beyond 2**31-1 overflow torch (seed: 2**63-1) or mean nothing"
       for f in ("--batch-size", "--num-epochs", "--warmup-steps", "--num-timesteps", "--seed", "--num-workers",
                 "--num-threads", "--max-steps", "--ckpt-every", "--log-every", "--viz-interval", "--viz-num",
                 "--num-classes", "--num-samples", "--num-grid-rows", "--sample-steps", "--trajectory-frames",
                 "--metrics-nn-reference")},
    ("--lr", HUGE_FLOAT): "no upper bound: the first step overflows (RuntimeError traceback)",
    ("--weight-decay", HUGE_FLOAT): "no bound on lr × weight_decay: the weights blow up at step 1",
    ("--num-epochs", "99999999999999999999"): "no upper bound (ints beyond 2**31-1)",
    ("--num-timesteps", "1000000000"): "T=10^9 allocates ~80 GB of schedule tensors",
    ("--num-workers", "100000"): "more DataLoader workers than CPUs: hangs",
    ("--num-threads", "100000"): "more torch threads than CPUs",
    ("--ckpt-save-name", ".lock"): "the checkpoint replaces the run lock; a later take-over deletes it",
    ("--ckpt-save-name", "config.json"): "config.json overwrites the checkpoint on --resume",
    ("--ckpt-save-name", "metrics.csv"): "metrics.csv overwrites the checkpoint",
    ("--ckpt-save-name", "loss.png"): "loss.png overwrites the checkpoint",
}

# Beyond 0 / negative / huge / non-numeric: big-but-finite values that must be refused before any work, and
# names that collide with the run folder's own files.
EXTRA_BAD_VALUES: list[tuple[str, str]] = [
    ("--num-timesteps", "1000000000"), ("--num-workers", "100000"), ("--num-threads", "100000"),
    ("--viz-t", "5000"), ("--beta-start", "2"), ("--lr", "inf"), ("--lr", "1e400"), ("--batch-size", "1e30"),
    ("--num-epochs", "99999999999999999999"),
    ("--ckpt-save-name", ".lock"), ("--ckpt-save-name", "config.json"), ("--ckpt-save-name", "metrics.csv"),
    ("--ckpt-save-name", "loss.png"), ("--ckpt-save-name", "../escape.pth"), ("--ckpt-save-name", ""),
]


def numeric_flags(parser=None) -> list[tuple[str, str]]:
    """(flag, "int" | "float") for every option of ``main.py`` whose ``type=`` turns text into a number."""
    parser = parser or entry.build_parser()
    found = []
    for action in parser._actions:
        if not action.option_strings or not callable(action.type) or action.type in (str, Path):
            continue
        kind = None
        for probe in ("3", "0.5"):
            try:
                value = action.type(probe)
            except Exception:
                continue
            kind = "int" if isinstance(value, int) and not isinstance(value, bool) else \
                "float" if isinstance(value, float) else None
            break
        if kind:
            found.append((action.option_strings[0], kind))
    return found


def bad_flag_values() -> list[tuple[str, str]]:
    """Every numeric flag with 0, a negative, a huge and non-numeric values, plus :data:`EXTRA_BAD_VALUES`."""
    values = []
    for flag, kind in numeric_flags():
        tries = ["0", "-1", HUGE_INT if kind == "int" else HUGE_FLOAT, "abc", ""]
        tries += ["1.5"] if kind == "int" else ["nan", "-inf"]
        values += [(flag, v) for v in tries]
    return values + [fv for fv in EXTRA_BAD_VALUES if fv not in values]


@functools.cache
def _eval_flags() -> frozenset[str]:
    return frozenset(a.option_strings[0] for g in entry.build_parser()._action_groups
                     if g.title and g.title.startswith("evaluation") for a in g._group_actions if a.option_strings)


def _mode(flag: str) -> str:
    return "--eval-ddpm-model" if flag in _eval_flags() else "--train-ddpm-model"


@dataclass
class FlagOutcome:
    flag: str
    value: str
    rejected: bool  # by the parser or the config validation, before any work
    clean: bool  # exit code 2, a message naming the problem, no traceback
    folder_untouched: bool  # the run folder was not created
    message: str

    @property
    def ok(self) -> bool:
        return self.rejected and self.clean and self.folder_untouched


def try_flag(flag: str, value: str, work: Path, data: Path) -> FlagOutcome:
    """Classify ``flag value`` without doing any work: if the parser and ``build_configs`` reject it, also run
    ``main.main`` with it (which must then exit 2 with a message and create nothing)."""
    mode = _mode(flag)
    run = work / f"run_{abs(hash((flag, value)))}"
    args = [mode, "--task-name", str(run), "--data-path", str(data), "--model", "tiny", f"{flag}={value}"]
    if mode == "--eval-ddpm-model":
        args[1:1] = ["--sampler", "ddim"]  # the sampler every evaluation flag applies to (--eta is DDIM's)
    parser, err = entry.build_parser(), io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parsed = parser.parse_args(args)
            if mode == "--train-ddpm-model":
                cli.build_configs(parsed)
            else:
                eval_cli.sampler_config(parsed, parser)
            return FlagOutcome(flag, value, False, False, not run.exists(), "accepted")
        except (SystemExit, ValueError):
            pass
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = entry.main(args)
        except SystemExit as exit_:
            rc = exit_.code
        except Exception as exc:  # escaped main(): the CLI would print a traceback
            rc = f"{type(exc).__name__}: {exc}"
    text = err.getvalue()
    message = next((line for line in text.splitlines() if "error:" in line), text[-300:])
    names = (flag.lstrip("-"), flag.lstrip("-").replace("-", "_"))
    clean = rc == 2 and "error:" in text and any(name in message for name in names)
    return FlagOutcome(flag, value, True, clean, not run.exists(), message)


def check_task_name_is_a_file(work: Path, data: Path) -> FlagOutcome:
    """``--task-name`` naming an existing file: the run folder cannot be made. Expected: exit 2 with a message
    naming it, no traceback, the file untouched."""
    target = work / "a_file_not_a_folder"
    work.mkdir(parents=True, exist_ok=True)
    target.write_text("keep me\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = entry.main(train_argv(target, data, "--max-steps", "1"))
        except SystemExit as exit_:
            rc = exit_.code
        except Exception as exc:  # escaped main(): the CLI would print a traceback
            rc = f"{type(exc).__name__}: {exc}"
    return FlagOutcome("--task-name", "<an existing file>", rc == 2, rc == 2,
                       target.read_text() == "keep me\n", str(rc) if rc != 2 else "rejected")
