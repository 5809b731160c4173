"""Training end to end: artefacts of a run, exact kill-and-resume, NaN and Ctrl-C handling, the lock, and the
pieces of the recipe (warm-up, EMA, data order, L_simple) pinned to numbers.

Runs use the ``tiny`` preset on a few dozen synthetic 28×28 PNGs and take a second or two each.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

import main as entry
from training import trainer
from training.batching import epoch_index_batches, epoch_permutation, steps_per_epoch
from training.checkpoint import FORMAT, build_model_from_checkpoint, export_weights, load_checkpoint
from training.config import TrainConfig
from training.ema import EMA, ema_decay_at
from training.metrics_log import MetricsLog, read_metrics
from training.run_lock import RunLock, RunLockedError
from training.visualization import _frame_order, frame_path

REPO = Path(__file__).resolve().parent.parent


def write_digits(root: Path, per_class: int, classes: int = 3) -> Path:
    """``per_class`` noisy 28×28 bars per class folder: a bar at a class-specific height."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / str(c)
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 40, (28, 28))
            pixels[4 + 6 * c: 10 + 6 * c, 4:24] += 215
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def data48(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits48"), per_class=16)  # 6 steps/epoch at batch 8


@pytest.fixture(scope="module")
def data96(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits96"), per_class=32)  # 12 steps/epoch at batch 8


def argv(run: Path, data: Path, *extra: str) -> list[str]:
    return ["--train-ddpm-model", "--task-name", str(run), "--data-path", str(data), "--model", "tiny",
            "--batch-size", "8", "--num-timesteps", "100", *extra]


# ---------------------------------------------------------------------------------------------- recipe pieces
def test_lr_warmup_is_linear_then_constant():
    config = TrainConfig(lr=1e-3, warmup_steps=4)
    assert [trainer.lr_at(s, config) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert trainer.lr_at(0, TrainConfig(lr=1e-3, warmup_steps=0)) == 1e-3


def test_ema_decay_warms_up_to_its_ceiling():
    assert [ema_decay_at(s, 0.999) for s in (0, 1, 8, 90, 10**6)] == pytest.approx(
        [0.1, 2 / 11, 0.5, 91 / 100, 0.999])


def test_ema_update_is_the_convex_combination():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 1.0)
    ema = EMA(model, decay=0.5)
    torch.nn.init.constant_(model.weight, 3.0)
    d = ema.update(model, step=0)  # d = min(0.5, 1/10) = 0.1
    assert d == pytest.approx(0.1)
    assert ema.model.weight.item() == pytest.approx(0.1 * 1.0 + 0.9 * 3.0)
    ema.update(model, step=10**6)  # d = 0.5
    assert ema.model.weight.item() == pytest.approx(0.5 * 2.8 + 0.5 * 3.0)
    assert not ema.model.weight.requires_grad


def test_l_simple_is_zero_for_an_oracle_and_the_eps_mse_otherwise():
    from scheduler import LinearNoiseScheduler

    scheduler = LinearNoiseScheduler(num_timesteps=10)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0, 3, 6, 9])

    def oracle(x_t, t_):  # recovers ε exactly from x_t and the known x0 (Eq. 4)
        return (x_t - scheduler.sqrt_alphas_cumprod[t_].view(-1, 1, 1, 1) * x0) / \
            scheduler.sqrt_one_minus_alphas_cumprod[t_].view(-1, 1, 1, 1)

    assert trainer.l_simple(oracle, scheduler, x0, t, eps).item() == pytest.approx(0.0, abs=1e-10)
    assert trainer.l_simple(lambda x_t, t_: torch.zeros_like(x_t), scheduler, x0, t, eps).item() == \
        pytest.approx(eps.pow(2).mean().item())


def test_data_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    assert epoch_permutation(10, seed=0, epoch=0).tolist() == [7, 0, 9, 2, 1, 3, 8, 4, 6, 5]  # golden
    assert torch.equal(epoch_permutation(100, 5, 2), epoch_permutation(100, 5, 2))
    assert not torch.equal(epoch_permutation(100, 5, 2), epoch_permutation(100, 5, 3))
    assert not torch.equal(epoch_permutation(100, 5, 2), epoch_permutation(100, 6, 2))
    full = epoch_index_batches(100, 8, seed=1, epoch=0, offset=0)
    assert len(full) == steps_per_epoch(100, 8) == 12 and all(len(b) == 8 for b in full)  # tail of 4 dropped
    resumed = epoch_index_batches(100, 8, seed=1, epoch=0, offset=40)
    assert all(torch.equal(a, b) for a, b in zip(full[5:], resumed, strict=True))
    assert [len(b) for b in epoch_index_batches(5, 8, 0, 0, 0)] == [5]  # smaller than one batch: one batch


def test_frames_sort_in_training_order():
    names = [frame_path(Path("v"), 2, 9), frame_path(Path("v"), 1, None), frame_path(Path("v"), 1, 6),
             frame_path(Path("v"), 1, 3)]
    assert [p.name for p in sorted(names, key=_frame_order)] == [
        "denoise_progress_ep001_it0000003.png", "denoise_progress_ep001_it0000006.png",
        "denoise_progress_ep001_end.png", "denoise_progress_ep002_it0000009.png"]


def test_metrics_log_drops_rows_after_the_resumed_step(tmp_path):
    log = MetricsLog(tmp_path / "metrics.csv")
    for step in (2, 4, 6):
        log.append(step, 1, 1.0 / step, 1e-3, 100.0, float(step))
    MetricsLog(tmp_path / "metrics.csv", resume_step=4)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.csv")] == [2, 4]


# ---------------------------------------------------------------------------------------------- end to end
def test_tiny_run_writes_every_artefact(tmp_path, data48, monkeypatch, caplog):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        rc = entry.main(argv(run, data48, "--num-epochs", "5", "--max-steps", "8", "--ckpt-every", "4",
                             "--log-every", "2", "--viz-save", "--viz-live", "--viz-interval", "3", "--viz-num", "4"))
    assert rc == 0
    assert caplog.text.count("--viz-live: no display") == 1  # warned once, carried on

    config = json.loads((run / "config.json").read_text())
    assert config["train"]["max_steps"] == 8 and config["model"]["channels"] == [8, 16, 16]
    assert config["diffusion"] == {"num_timesteps": 100, "beta_start": 1e-4, "beta_end": 0.02}

    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]
    assert [int(r["epoch"]) for r in rows] == [1, 1, 1, 2]
    assert all(0.1 < float(r["loss"]) < 3 and float(r["images_per_s"]) > 0 for r in rows)
    assert float(rows[0]["lr"]) == pytest.approx(1e-3 * 2 / 200)  # warm-up: lr of step 2 of 200
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ckpt = load_checkpoint(run / "test_001.pth")
    assert ckpt["format"] == FORMAT
    assert (ckpt["step"], ckpt["epoch"], ckpt["data_offset"], ckpt["num_samples"]) == (8, 1, 16, 48)
    assert {"model", "ema", "optimizer", "rng", "train_config", "model_config", "diffusion_config"} <= set(ckpt)
    assert ckpt["rng"]["torch"].dtype == torch.uint8 and ckpt["rng"]["noise"].dtype == torch.uint8
    model, scheduler, _ = build_model_from_checkpoint(run / "test_001.pth")  # no flags needed
    assert scheduler.num_timesteps == 100 and not model.training

    viz = sorted(p.name for p in (run / "viz").iterdir())
    assert viz == ["denoise_progress_ep001_end.png", "denoise_progress_ep001_it0000003.png",
                   "denoise_progress_ep001_it0000006.png", "progress.gif"]
    frame = np.asarray(Image.open(run / "viz" / viz[0]))
    assert frame.shape == (16 + 3 * (56 + 2) + 2, 40 + 4 * (56 + 2) + 2)  # title + 3 rows × 4 images of 56 px
    assert iio.imread(run / "viz" / "progress.gif", index=None).shape[0] == 3
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "loss.png", "metrics.csv", "test_001.pth", "viz"]


def test_sigkill_mid_epoch_then_resume_ends_bit_identical(tmp_path, data96):
    common = ["--num-epochs", "3", "--seed", "3", "--log-every", "1"]  # 36 steps of 12 per epoch
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert entry.main(argv(straight, data96, *common)) == 0

    proc = subprocess.Popen([sys.executable, "main.py", *argv(killed, data96, *common, "--ckpt-every", "3")],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    ckpt_path = killed / "test_001.pth"
    deadline = time.monotonic() + 120
    while not ckpt_path.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the run wrote no checkpoint in time"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    at_kill = load_checkpoint(ckpt_path)
    assert 0 < at_kill["step"] < 36 and at_kill["data_offset"] > 0  # killed mid-epoch, not at its end
    assert (killed / ".lock").exists()  # left behind by the killed process: stale, taken over below

    assert entry.main(argv(killed, data96, *common, "--resume")) == 0
    a, b = load_checkpoint(straight / "test_001.pth"), load_checkpoint(ckpt_path)
    assert a["step"] == b["step"] == 36 and a["epoch"] == b["epoch"] == 3
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    for pid, state in a["optimizer"]["state"].items():
        for name, tensor in state.items():
            assert torch.equal(tensor, b["optimizer"]["state"][pid][name]), f"optimizer {pid}.{name}"
    assert torch.equal(a["rng"]["noise"], b["rng"]["noise"])
    losses = [[r["loss"] for r in read_metrics(run / "metrics.csv")] for run in (straight, killed)]
    assert losses[0] == losses[1] and len(losses[0]) == 36  # one history, no duplicated rows


@pytest.mark.parametrize("flags", [["--no-cache"], ["--num-workers", "1"]], ids=["uncached", "worker"])
def test_dataloader_path_trains_exactly_like_batching_from_memory(tmp_path, data48, flags):
    memory, loader = tmp_path / "memory", tmp_path / "loader"
    assert entry.main(argv(memory, data48, "--max-steps", "3")) == 0
    assert entry.main(argv(loader, data48, "--max-steps", "3", *flags)) == 0
    a, b = load_checkpoint(memory / "test_001.pth"), load_checkpoint(loader / "test_001.pth")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# ---------------------------------------------------------------------------------------------- failures
def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, data48, monkeypatch, caplog):
    real_loss, calls = trainer.l_simple, []

    def loss_that_diverges_at_step_5(*args):
        calls.append(1)
        loss = real_loss(*args)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(trainer, "l_simple", loss_that_diverges_at_step_5)
    run = tmp_path / "run"
    rc = entry.main(argv(run, data48, "--ckpt-every", "2", "--num-epochs", "2"))
    assert rc == 1
    assert "loss is nan at step 5 (epoch 1)" in caplog.text
    assert "last good checkpoint" in caplog.text and "(step 4)" in caplog.text
    assert load_checkpoint(run / "test_001.pth")["step"] == 4
    assert not (run / ".lock").exists()


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, data48, monkeypatch):
    real_loss, calls = trainer.l_simple, []

    def loss_with_ctrl_c_at_step_3(*args):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only sets a flag; step 3 completes
        return real_loss(*args)

    monkeypatch.setattr(trainer, "l_simple", loss_with_ctrl_c_at_step_3)
    # A shell starting the suite in the background (nohup, CI) may have set SIGINT to SIG_IGN; the trainer
    # installs its own handler either way and must restore whatever was there.
    handler_before = signal.getsignal(signal.SIGINT)
    run = tmp_path / "run"
    assert entry.main(argv(run, data48, "--num-epochs", "2")) == 130
    ckpt = load_checkpoint(run / "test_001.pth")
    assert (ckpt["step"], ckpt["data_offset"]) == (3, 24)
    assert [r["step"] for r in read_metrics(run / "metrics.csv")] == [3]
    assert signal.getsignal(signal.SIGINT) is handler_before  # restored


def test_max_minutes_stops_with_a_checkpoint(tmp_path, data48):
    run = tmp_path / "run"
    assert entry.main(argv(run, data48, "--max-minutes", "1e-9")) == 0
    assert load_checkpoint(run / "test_001.pth")["step"] == 1


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, data48) -> Path:
    run = tmp_path_factory.mktemp("short") / "run"
    assert entry.main(argv(run, data48, "--max-steps", "2")) == 0
    return run


@pytest.mark.parametrize("extra, message", [
    (["--model", "small"], r"different model .*channels: checkpoint \(8, 16, 16\) vs requested \(16, 16, 64, 64\)"),
    (["--num-timesteps", "50"], "another diffusion schedule.*num_timesteps: checkpoint 100 vs requested 50"),
    (["--seed", "7"], "trained with --seed 0, not 7"),
])
def test_resume_refuses_a_mismatching_checkpoint(short_run, data48, extra, message, caplog):
    before = load_checkpoint(short_run / "test_001.pth")["step"]
    assert entry.main([*argv(short_run, data48, "--resume"), *extra]) == 2
    assert any(r.levelno == logging.ERROR and re.search(message, r.getMessage())
               for r in caplog.records), caplog.text
    assert load_checkpoint(short_run / "test_001.pth")["step"] == before


def test_resume_never_silently_starts_from_scratch(tmp_path, data48, short_run, caplog):
    missing = tmp_path / "nothing_here.pth"
    assert entry.main(argv(tmp_path / "a", data48, "--resume", str(missing))) == 2
    assert f"checkpoint {missing} does not exist" in caplog.text
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes((short_run / "test_001.pth").read_bytes()[:5000])
    assert entry.main(argv(tmp_path / "b", data48, "--resume", str(corrupt))) == 2
    assert "truncated, corrupt" in caplog.text
    export_weights(short_run / "test_001.pth", tmp_path / "slim.pth")
    assert entry.main(argv(tmp_path / "c", data48, "--resume", str(tmp_path / "slim.pth"))) == 2
    assert "sampling-only export" in caplog.text
    assert not any((tmp_path / name / "test_001.pth").exists() for name in "abc")


def test_lock_refuses_a_live_owner_and_takes_over_a_stale_one(tmp_path, data48, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(f"{os.getppid()}\n")  # a live process that is not us
    assert entry.main(argv(run, data48, "--max-steps", "1")) == 2
    assert f"another training run (PID {os.getppid()})" in caplog.text
    with pytest.raises(RunLockedError):
        RunLock(run).acquire()

    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / ".lock").write_text(f"{dead.pid}\n")
    assert entry.main(argv(run, data48, "--max-steps", "1")) == 0
    assert "taking over the stale lock" in caplog.text
    assert not (run / ".lock").exists()


def test_conditional_flag_and_model_config_must_agree():
    from models import preset_config
    from scheduler import DiffusionConfig

    with pytest.raises(ValueError, match="num_classes"):
        trainer.train(TrainConfig(conditional=True), preset_config("tiny"), DiffusionConfig())
    with pytest.raises(ValueError, match="num_classes"):
        trainer.train(TrainConfig(), preset_config("tiny", context_dim=16, num_classes=3), DiffusionConfig())
    with pytest.raises(ValueError, match="can only provide class labels"):
        trainer.train(TrainConfig(), preset_config("tiny", context_dim=16), DiffusionConfig())


def test_conditional_run_round_trips_through_its_checkpoint(tmp_path, data48, caplog):
    run = tmp_path / "cond"
    rc = entry.main(argv(run, data48, "--conditional", "--num-classes", "3", "--cond-drop", "0.2",
                         "--max-steps", "4", "--viz-save", "--viz-interval", "2", "--viz-num", "3"))
    assert rc == 0
    ckpt = load_checkpoint(run / "test_001.pth")
    assert ckpt["train_config"]["conditional"] and ckpt["train_config"]["cond_drop"] == 0.2
    model, _, _ = build_model_from_checkpoint(run / "test_001.pth")
    assert model.config.conditional and model.config.num_classes == 3 and model.config.context_dim == 16
    ctx = model.label_context(torch.tensor([0, 3]))  # a class and the null label
    assert model(torch.zeros(2, 1, 28, 28), 5, context=ctx).shape == (2, 1, 28, 28)
    assert (run / "viz" / "progress.gif").exists()
    # The dataset's class count must match the model's.
    with caplog.at_level(logging.ERROR):
        assert entry.main(argv(tmp_path / "cond5", data48, "--conditional", "--num-classes", "5",
                               "--max-steps", "1")) == 2
    assert "--num-classes 3" in caplog.text

