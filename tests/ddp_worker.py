"""Test helper, not a test: run ``main.main`` once per argument list under torchrun, as every rank.

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py ARGS... [--next ARGS...]...

The worker joins the process group itself, once, and every run reuses it (``setup_distributed`` joins an
existing group and leaves it to its owner): re-creating a Gloo group in the same processes races when ranks
finish a run at different times. After each run, rank r saves ``{"rc": exit code, "ema": EMA state dict}`` to
``$DDP_TEST_DUMP/<i>_rank<r>.pt``, so a test can compare the ranks' EMA weights (only rank 0 writes
checkpoints); the EMA comes from the run's TrainResult. The process exits 0 once all runs are done (their
exit codes are in the dumps), so torchrun never stops a rank that is still writing.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import main as entry
from training import cli


def runs(argv: list[str]) -> list[list[str]]:
    groups = [[]]
    for arg in argv:
        if arg == "--next":
            groups.append([])
        else:
            groups[-1].append(arg)
    return groups


if __name__ == "__main__":
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dump, rank = Path(os.environ["DDP_TEST_DUMP"]), os.environ["RANK"]
    dist.init_process_group("gloo")
    for i, argv in enumerate(runs(sys.argv[1:])):
        parser, results = entry.build_parser(), []
        rc = cli.run(parser.parse_args(argv), parser, results)
        torch.save({"rc": rc, "ema": results[0].state.ema.state_dict() if results else None},
                   dump / f"{i}_rank{rank}.pt")
    dist.destroy_process_group()
