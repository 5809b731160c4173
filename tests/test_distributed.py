"""Data-parallel training: the rank sharding of the data order, the single-process context, and a real 2-process
Gloo run under torchrun that trains exactly like one process with the same global batch.

The torchrun test launches ``tests/ddp_worker.py`` (which runs ``main.main`` once per argument list on every
rank) and compares with in-process runs of batch W·B; it takes ~10–30 s on a 2-core CPU.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fault_injection import max_difference, without_key_bias, write_digits
from torch.utils.data import DistributedSampler

import main as entry
from common.checkpoint import load_checkpoint
from common.run_lock import RunLock
from models import UNet, UNetConfig
from training.batching import (
    BatchSource,
    epoch_index_batches,
    epoch_permutation,
    rank_index_batches,
)
from training.monitor import read_metrics
from training.runtime import DistContext, setup_distributed, teardown_distributed

REPO = Path(__file__).resolve().parent.parent


class Pixels(torch.utils.data.Dataset):
    """``count`` random 28×28 uint8 images with labels, readable both ways BatchSource reads."""

    def __init__(self, count: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, generator=g)
        self.targets = torch.randint(0, 10, (count,), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i].float() / 127.5 - 1.0, int(self.targets[i])

    def as_tensors(self):
        return self.images, self.targets


# ---------------------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_split_each_global_batch_as_distributed_sampler_assigns_ranks(world_size):
    N, B, seed, epoch = 50, 4, 3, 2
    global_batches = epoch_index_batches(N, B * world_size, seed, epoch, 0)
    per_rank = [rank_index_batches(N, B, seed, epoch, 0, r, world_size) for r in range(world_size)]
    assert all(len(batches) == len(global_batches) == N // (B * world_size) for batches in per_rank)
    for k, global_batch in enumerate(global_batches):  # rank r holds rows r, r + W, ... of global batch k
        interleaved = torch.stack([per_rank[r][k] for r in range(world_size)], dim=1).reshape(-1)
        assert torch.equal(interleaved, global_batch)
    # The same assignment as torch's DistributedSampler applied to this epoch's permutation.
    end = len(global_batches) * B * world_size
    perm = epoch_permutation(N, seed, epoch)[:end]
    for r in range(world_size):
        positions = list(DistributedSampler(range(end), world_size, r, shuffle=False, drop_last=True))
        assert torch.cat(per_rank[r]).tolist() == perm[positions].tolist()


def test_ranks_resume_mid_epoch_from_a_global_offset():
    full = rank_index_batches(100, 4, seed=1, epoch=0, offset=0, rank=1, world_size=2)
    resumed = rank_index_batches(100, 4, seed=1, epoch=0, offset=3 * 8, rank=1, world_size=2)
    assert all(torch.equal(a, b) for a, b in zip(full[3:], resumed, strict=True))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_dataloader_and_memory_paths_shard_identically(num_workers):
    data = Pixels(40)
    single = list(BatchSource(data, 8, 7, torch.device("cpu"), in_memory=True)(1, 16))
    ranks = []
    for rank in range(2):
        memory = list(BatchSource(data, 4, 7, torch.device("cpu"), True, 0, rank, 2)(1, 16))
        loader = list(BatchSource(data, 4, 7, torch.device("cpu"), False, num_workers, rank, 2)(1, 16))
        assert len(memory) == len(loader) == 3  # 40 // 8 = 5 steps, 2 done (offset 16)
        for (xm, ym), (xl, yl) in zip(memory, loader, strict=True):
            assert torch.equal(xm, xl) and torch.equal(ym, yl)
        ranks.append(memory)
    for k, (x, y) in enumerate(single):  # the two ranks' batches interleave into the 1-process batch of 8
        assert torch.equal(torch.stack([ranks[0][k][0], ranks[1][k][0]], 1).reshape(x.shape), x)
        assert torch.equal(torch.stack([ranks[0][k][1], ranks[1][k][1]], 1).reshape(-1), y)


def test_a_dataset_smaller_than_one_global_batch_is_refused():
    with pytest.raises(ValueError, match="fewer than one global batch of 8 per rank × 2 ranks = 16"):
        BatchSource(Pixels(12), 8, 0, torch.device("cpu"), True, 0, rank=1, world_size=2)


# ---------------------------------------------------------------------------------------------- context
def test_without_torchrun_the_context_is_one_process():
    ctx = setup_distributed("cpu", env={})
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.enabled, ctx.device) == (0, 1, True, False, torch.device("cpu"))
    assert ctx.reduce_step(torch.tensor(0.25), True, False) == (0.25, [True, False])
    assert ctx.all_ok(True) and not ctx.all_ok(False)
    teardown_distributed(ctx)  # nothing to leave
    assert setup_distributed("cpu", env={"WORLD_SIZE": "1"}) == DistContext()


def test_a_world_size_without_ranks_says_to_use_torchrun():
    with pytest.raises(ValueError, match="torchrun"):
        setup_distributed("cpu", env={"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        setup_distributed("cpu", env={"WORLD_SIZE": "two"})


# ---------------------------------------------------------------------------------------------- 2 processes
@pytest.fixture(scope="module")
def data48(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits48"), per_class=16)  # 6 global batches of 8


# A constant lr: runs stopped at different --max-steps and resumed must train like one uninterrupted run, which a
# schedule whose end is the run's horizon would (rightly) change.
COMMON = ["--train-ddpm-model", "--model", "tiny", "--num-timesteps", "100", "--seed", "5", "--warmup-steps", "0",
          "--log-every", "1", "--ckpt-every", "2", "--num-threads", "1", "--lr-schedule", "constant", "--lr", "1e-3"]


def args(run: Path, data: Path, batch: int, *extra: str) -> list[str]:
    return [*COMMON, "--task-name", str(run), "--data-path", str(data), "--batch-size", str(batch), *extra]


def torchrun(tmp_path: Path, script: str, *argv: str) -> str:
    """Run ``script`` on 2 Gloo ranks under torchrun; returns the log (both ranks' output)."""
    env = {**os.environ, "DDP_TEST_DUMP": str(tmp_path), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / script), *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    return proc.stdout + proc.stderr


def assert_same_training(a_dir: Path, b_dir: Path) -> None:
    """The runs in ``a_dir`` (1 process × 8) and ``b_dir`` (2 ranks × 4) end alike, within float tolerance."""
    a, b = load_checkpoint(a_dir / "test_001.pth"), load_checkpoint(b_dir / "test_001.pth")
    assert (b["step"], b["epoch"], b["data_offset"], b["world_size"]) == (a["step"], a["epoch"], a["data_offset"], 2)
    assert b["train_config"]["batch_size"] == 4
    for key in ("model", "ema"):
        assert max_difference(without_key_bias(a[key]), without_key_bias(b[key])) < 1e-5, key
    for pid, state in a["optimizer"]["state"].items():
        assert max_difference(state, b["optimizer"]["state"][pid]) < 1e-5
    assert torch.equal(a["rng"]["noise"], b["rng"]["noise"])  # every rank drew the global batch's t and ε
    la, lb = read_metrics(a_dir / "metrics.csv"), read_metrics(b_dir / "metrics.csv")
    assert [r["step"] for r in la] == [r["step"] for r in lb] == list(range(1, a["step"] + 1))
    assert [r["loss"] for r in lb] == pytest.approx([r["loss"] for r in la], rel=1e-4)  # the global mean
    torch.manual_seed(5)
    init = UNet(UNetConfig.from_dict(a["model_config"])).state_dict()
    assert max_difference(init, b["model"]) > 1e-3  # the weights moved far more than the tolerance
    config = json.loads((b_dir / "config.json").read_text())
    assert (config["world_size"], config["global_batch_size"], config["train"]["batch_size"]) == (2, 8, 4)


VIZ = ["--viz-save", "--viz-interval", "2", "--viz-num", "3"]
COND = ["--conditional", "--num-classes", "3", "--max-steps", "4"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data48) -> Path:
    """One process, batch 8: 3 steps (kept as step3.pth), then resumed to step 8 (past the epoch end at 6); and
    a conditional run."""
    root = tmp_path_factory.mktemp("reference")
    assert entry.main(args(root / "run", data48, 8, "--max-steps", "3", *VIZ)) == 0
    shutil.copy(root / "run" / "test_001.pth", root / "step3.pth")
    assert entry.main(args(root / "run", data48, 8, "--max-steps", "8", "--resume", *VIZ)) == 0
    assert entry.main(args(root / "cond", data48, 8, *COND)) == 0
    return root


def test_two_gloo_ranks_train_like_one_process_with_the_global_batch(tmp_path, data48, reference):
    """2 ranks × batch 4 = 1 process × batch 8 through a fresh start, a resume (every rank loads the checkpoint)
    and an epoch boundary, and when resuming a 1-process checkpoint; EMA equal on both ranks; one set of
    artefacts; rank 1 logs warnings only; a rank that fails in setup makes the other fail instead of hanging."""
    ddp, crossed, locked = tmp_path / "ddp", tmp_path / "crossed", tmp_path / "locked"
    runs = [args(ddp, data48, 4, "--max-steps", "3", *VIZ), args(ddp, data48, 4, "--max-steps", "8", "--resume", *VIZ),
            args(crossed, data48, 4, "--max-steps", "8", "--resume", str(reference / "step3.pth")),
            args(locked, data48, 4, "--max-steps", "1")]
    with RunLock(locked):  # a live process that is not a rank holds the last folder: rank 0 must refuse it
        log = torchrun(tmp_path, "tests/ddp_worker.py", *[a for i, run in enumerate(runs)
                                                          for a in ["--next"][:i] + run])
    try:
        dumps = [[torch.load(tmp_path / f"{i}_rank{r}.pt", weights_only=True) for r in range(2)] for i in range(4)]
    except FileNotFoundError:
        pytest.fail(log[-5000:])
    assert [[d["rc"] for d in run] for run in dumps] == [[0, 0], [0, 0], [0, 0], [2, 2]], log[-5000:]
    assert f"another training run (PID {os.getpid()})" in log and "another rank failed while setting up" in log

    assert_same_training(reference / "run", ddp)
    # A 1-process checkpoint continues on 2 ranks with the same global batch, without a changed-recipe warning.
    ref = load_checkpoint(reference / "run" / "test_001.pth")
    assert max_difference(without_key_bias(ref["model"]),
                          without_key_bias(load_checkpoint(crossed / "test_001.pth")["model"])) < 1e-5
    assert "changed training recipe" not in log
    for run in dumps[:2]:  # EMA consistent across ranks: DDP keeps the weights identical, so the averages are too
        assert all(torch.equal(run[0]["ema"][k], run[1]["ema"][k]) for k in run[0]["ema"])
    final = load_checkpoint(ddp / "test_001.pth")["ema"]
    assert all(torch.equal(dumps[1][0]["ema"][k], final[k]) for k in final)

    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in (reference / "run").iterdir()) == \
        [".lock", "config.json", "loss.png", "metrics.csv", "samples", "test_001.pth", "viz"]
    frames = [sorted(p.name for p in (folder / "viz").iterdir()) for folder in (ddp, reference / "run")]
    assert frames[0] == frames[1] and "progress.gif" in frames[0]
    assert len(list(csv.DictReader(open(ddp / "metrics.csv")))) == 8
    assert log.count("world size 2, batch 4 per rank × 2 = 8 global") == 3  # rank 0 only, once per run
    assert log.count("resumed from") == 2


def test_torchrun_main_py_trains_class_conditional_through_the_dataloader_like_one_process(tmp_path, data48,
                                                                                          reference):
    """The real entry point (main.py joins and leaves the process group itself), labels dropped on the global
    batch, images read by DataLoaders over the same index batches."""
    run = tmp_path / "cond"
    log = torchrun(tmp_path, "main.py", *args(run, data48, 4, *COND, "--no-cache"))
    assert "stopped (max_steps) at step 4" in log, log[-5000:]
    assert_same_training(reference / "cond", run)
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.json", "loss.png", "metrics.csv", "samples",
                                                     "test_001.pth"]
