"""Promise 1 at length: ``tiny`` runs SIGKILLed 12 times each at random moments (a fixed schedule per seed; about
half of the kills fire the moment a checkpoint write starts), resumed with ``--resume`` after every kill, end
with exactly the weights, optimizer state and loss history of an uninterrupted run.

Takes a few minutes, so it is marked ``stress`` and runs only when asked::

    pytest -m stress tests/stress
"""

from __future__ import annotations

import pytest
from fault_injection import write_digits
from fault_injection.kills import kill_and_resume

pytestmark = pytest.mark.stress
KILLS = 12


@pytest.fixture(autouse=True)
def only_when_selected(request):
    """Skip unless selected with ``-m stress`` (so a plain ``pytest`` stays fast even without the addopts)."""
    if "stress" not in (request.config.getoption("markexpr") or "").replace("not stress", ""):
        pytest.skip("long fault-injection run: select it with -m stress")


@pytest.mark.parametrize("seed, flags", [
    (0, ()),
    (1, ("--conditional", "--num-classes", "3", "--cond-drop", "0.3")),  # label dropping draws from the RNG too
    (2, ("--no-cache",)),  # the DataLoader path
], ids=["plain", "conditional", "dataloader"])
def test_twelve_random_kills_then_resume_ends_exactly_like_an_uninterrupted_run(tmp_path, seed, flags):
    data = write_digits(tmp_path / "data", per_class=32)  # 96 images: 12 steps per epoch at batch 8
    report = kill_and_resume(tmp_path, data, kills=KILLS, seed=seed, run_flags=("--num-epochs", "4", *flags))
    assert report.ok, report
    assert report.kills_tried == report.kills_survived == KILLS
    assert report.kills_in_write >= 2, report  # several kills really landed inside save_checkpoint
    assert report.max_abs_diff == 0.0 and report.metrics_equal
