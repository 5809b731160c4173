"""Rerun every fault behind the README's "Reliability" figures and print them as a table.

    python scripts/reliability_report.py --kills 10            # ~2 minutes on a laptop CPU
    python scripts/reliability_report.py --kills 20 --seed 3 --json reliability.json

Each row is a promise, checked by the same code as ``tests/test_reliability.py`` and
``tests/test_dataset_fuzz.py`` (``scripts/fault_injection/``): kills survived / kills tried, bad inputs handled with
the documented error / tried, hostile checkpoints refused / tried, bad flag values rejected / tried, and the
disk-full, NaN and lock checks. Exits 1 if any promise fails (the failures are listed under the table), 0 otherwise.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in the subprocesses' (discarded) stderr

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from fault_injection import data as bad_data  # noqa: E402
from fault_injection import flags as bad_flags  # noqa: E402
from fault_injection import write_digits  # noqa: E402
from fault_injection.divergence import check_divergence  # noqa: E402
from fault_injection.hostile import CATALOGUE, check_hostile  # noqa: E402
from fault_injection.kills import kill_and_resume  # noqa: E402
from fault_injection.locks import check_kill_during_lock_creation, check_lock_race  # noqa: E402
from fault_injection.mistakes import check_overwrites, check_silent_results  # noqa: E402
from fault_injection.writes import WRITE_FAILURES, check_disk_full_during_training, check_failed_write  # noqa: E402

DIVERGENCE_CASES = [  # (kind, at step, resumed at, extra flags): see tests/test_reliability.py
    ("nan", 5, 0, ()), ("inf", 4, 0, ()), ("-inf", 6, 4, ()), ("inf-grad", 3, 0, ()), ("nan", 1, 0, ()),
    ("inf-grad", 4, 0, ("--grad-clip", "0")),
]


@dataclass
class Row:
    promise: str
    passed: int
    tried: int
    note: str = ""
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.passed == self.tried and not self.failures


def _timed(fn):
    def wrapper(*args, **kwargs) -> Row:
        t0 = time.monotonic()
        row = fn(*args, **kwargs)
        row.seconds = time.monotonic() - t0
        return row
    return wrapper


@_timed
def kills(work: Path, data: Path, count: int, seed: int) -> Row:
    epochs = max(4, count // 2 + 2)  # 6 steps each; an invocation advances ~1-3 steps before its kill
    report = kill_and_resume(work, data, kills=count, seed=seed, run_flags=("--num-epochs", str(epochs)))
    failures = list(report.problems)
    if report.max_abs_diff > 1e-6 or not report.metrics_equal:
        failures.append(f"final weights differ from the uninterrupted run by {report.max_abs_diff:g} "
                        f"(metrics equal: {report.metrics_equal})")
    if report.lock_refused is False:
        failures.append(f"a second run into the live folder was not refused: {report.lock_refusal}")
    modes = ", ".join(f"{n} {m}" for m, n in sorted(report.modes.items()))
    return Row("1. kills survived (SIGKILL, then --resume)", report.kills_survived, report.kills_tried,
               f"{report.kills_in_write} inside a checkpoint write ({modes}); final weights max abs diff "
               f"{report.max_abs_diff:g} from an uninterrupted run; a second run into the live folder refused: "
               f"{report.lock_refused}", failures)


@_timed
def failed_writes(work: Path, data: Path) -> Row:
    outcomes = [check_failed_write(_fresh(work / "write"), name) for name in WRITE_FAILURES]
    training = check_disk_full_during_training(work, data)
    failures = [f"{o.name}: kept {o.kept_previous}, reported {o.reported}, temp removed {o.no_temp_left}: "
                f"{o.message}" for o in [*outcomes, training] if not o.ok]
    kept = sum(o.kept_previous and o.no_temp_left for o in [*outcomes, training])
    return Row("2. failed checkpoint writes that kept the previous checkpoint", kept, len(outcomes) + 1,
               f"{len(outcomes)} injected write errors + a full disk during training; errors reported cleanly: "
               f"{sum(o.reported for o in [*outcomes, training])}/{len(outcomes) + 1}", failures)


@_timed
def hostile(work: Path, data: Path) -> Row:
    outcomes = [check_hostile(case, work / "hostile", data) for case in CATALOGUE]
    executed = sum(o.executed for o in outcomes)
    failures = [f"{o.name}: refused {o.refused}, named {o.named}, executed {o.executed}: {o.message[:200]}"
                for o in outcomes if not o.ok]
    code = sum("pickle" in o.name for o in outcomes)
    return Row("3. hostile checkpoints refused, naming the problem", sum(o.ok for o in outcomes),
               len(outcomes), f"{code} would run code: executed {executed}", failures)


@_timed
def messy_data(work: Path, reps: int, mutations: int, seed: int) -> Row:
    rng, outcomes = random.Random(seed), []
    root = bad_data.world_readable_tmpdir()
    try:
        for kind in bad_data.BAD_KINDS:
            for cache in (False, True):
                for _ in range(reps):
                    outcomes.append(bad_data.check_bad_file(kind, _fresh(root / "bad"), rng, cache))
        mutated = [bad_data.check_mutated_png(_fresh(root / "mut"), rng, cache=bool(i % 2)) for i in range(mutations)]
        good = [bad_data.check_good_flavour(flavour, _fresh(root / "good"), rng)
                for flavour in bad_data.GOOD_FLAVOURS for _ in range(reps)]
    finally:
        bad_data.remove_tree(root)
    failures = [f"{o.kind}: {o.detail[:200]}" for o in [*outcomes, *mutated, *good] if not o.handled]
    refused = sum(o.handled and not o.loaded for o in mutated)
    return Row("4. bad input files handled (BadImageError naming the file; skip_bad skips and counts them)",
               sum(o.handled for o in [*outcomes, *mutated]), len(outcomes) + len(mutated),
               f"{len(bad_data.BAD_KINDS)} kinds × {reps} × (cached, lazy) + {mutations} randomly damaged PNGs "
               f"({refused} refused, {mutations - refused} harmless: loaded the original pixels); unusual valid "
               f"PNGs loaded exactly: {sum(o.handled for o in good)}/{len(good)}", failures)


@_timed
def flags(work: Path, data: Path) -> Row:
    tried = [fv for fv in bad_flags.bad_flag_values() if fv not in bad_flags.ACCEPTED_BY_DESIGN]
    outcomes = [bad_flags.try_flag(flag, value, work / "flags", data) for flag, value in tried]
    outcomes.append(bad_flags.check_task_name_is_a_file(work / "flags", data))
    failures = [f"{o.flag}={o.value!r}: {o.message[:150]}" for o in outcomes if not o.ok]
    return Row("5. bad flag values rejected (exit 2, message, no run folder)", sum(o.ok for o in outcomes),
               len(outcomes), f"{len(bad_flags.numeric_flags())} numeric flags × 0, −1, huge, non-numeric, + "
               f"extras; {len(bad_flags.ACCEPTED_BY_DESIGN)} meaningful edge values accepted by design", failures)


@_timed
def divergence(work: Path, data: Path) -> Row:
    outcomes = [check_divergence(work / "nan", data, kind, at, resume_at=resume, extra=extra)
                for kind, at, resume, extra in DIVERGENCE_CASES]
    failures = [f"{o.name}: exit {o.rc}, step named {o.step_named}, kept step {o.kept_step} equal to a clean run "
                f"{o.kept_equals_clean}: {o.message[:200]}" for o in outcomes if not o.ok]
    kept = sum(o.kept_equals_clean for o in outcomes)
    return Row("6. NaN/inf: stopped (exit 1) naming the step, last good checkpoint kept",
               sum(o.ok for o in outcomes), len(outcomes),
               f"last good checkpoint bit-identical to a clean run: {kept}/{len(outcomes)}", failures)


@_timed
def locks(work: Path) -> Row:
    outcomes = [*check_kill_during_lock_creation(_fresh(work / "lock")), check_lock_race(_fresh(work / "race"))]
    failures = [f"{o.name}: {o.detail}" for o in outcomes if not o.ok]
    return Row("7. run lock: kills while taking it, simultaneous starts", sum(o.ok for o in outcomes), len(outcomes),
               "a live run refusing a second one is in row 1", failures)


def mistakes(work: Path, data: Path) -> list[Row]:
    rows = []
    for promise, check, folder in (("8. mistakes refused before they replace work", check_overwrites, "ow"),
                                   ("9. no wrong result without a word", check_silent_results, "silent")):
        t0 = time.monotonic()
        outcomes = check(work / folder, data)
        failures = [f"{o.name}: {o.detail[:200]}" for o in outcomes if not o.ok]
        rows.append(Row(promise, sum(o.ok for o in outcomes), len(outcomes), "; ".join(o.name for o in outcomes),
                        failures, time.monotonic() - t0))
    return rows


def _fresh(base: Path) -> Path:
    """A new empty folder under ``base`` that an unprivileged child can enter (see fault_injection.data)."""
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=base))
    folder.chmod(0o755)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the training run (at least 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule and the bad-file generator")
    parser.add_argument("--bad-files", type=int, default=3, help="files of each bad kind (×2: cached and lazy)")
    parser.add_argument("--mutations", type=int, default=200, help="randomly damaged PNGs")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--verbose", action="store_true", help="show the runs' logs and progress bars (stderr)")
    args = parser.parse_args(argv)
    if args.kills < 1 or args.bad_files < 1 or args.mutations < 0:
        parser.error("--kills and --bad-files must be >= 1, --mutations >= 0")

    logging.basicConfig(handlers=[logging.NullHandler()])  # the checks read the logs; nothing is printed
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    t0 = time.monotonic()
    quiet = contextlib.nullcontext() if args.verbose else contextlib.redirect_stderr(io.StringIO())
    with tempfile.TemporaryDirectory(prefix="reliability_report_") as tmp, quiet:
        work = Path(tmp)
        data = write_digits(work / "data", per_class=16)  # 48 noisy 28×28 bars: 6 steps per epoch
        rows = [kills(work / "kills", data, args.kills, args.seed), failed_writes(work / "writes", data),
                hostile(work, data), messy_data(work, args.bad_files, args.mutations, args.seed),
                flags(work, data), divergence(work, data), locks(work), *mistakes(work, data)]
        for path in work.rglob("*"):  # unreadable test files must not stop the clean-up
            if not path.is_symlink():
                path.chmod(0o755)

    print("| promise | passed / tried | | time | notes |\n|---|---:|---|---:|---|")
    for r in rows:
        print(f"| {r.promise} | {r.passed} / {r.tried} | {'ok' if r.ok else '**FAIL**'} | {r.seconds:.0f} s | "
              f"{r.note} |")
    print(f"\ntotal {time.monotonic() - t0:.0f} s (--kills {args.kills} --seed {args.seed} --bad-files "
          f"{args.bad_files} --mutations {args.mutations})")
    failed = [r for r in rows if not r.ok]
    for r in failed:
        print(f"\nFAILED: {r.promise}")
        for line in r.failures:
            print(f"  - {line}")
    if args.json:
        args.json.write_text(json.dumps([{**r.__dict__, "ok": r.ok} for r in rows], indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
