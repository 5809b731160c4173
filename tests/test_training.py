"""Training end to end: artefacts of a run, exact kill-and-resume, NaN and Ctrl-C handling, the lock, and the
pieces of the recipe (warm-up, EMA, data order, L_simple) pinned to numbers.

Runs use the ``tiny`` preset on a few dozen synthetic 28×28 PNGs and take a second or two each.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from fault_injection import write_digits
from PIL import Image

import main as entry
from common.argtypes import MAX_INT
from common.checkpoint import FORMAT, build_model_from_checkpoint, export_weights, load_checkpoint
from common.run_lock import RunLock
from training import cli, trainer
from training.batching import epoch_index_batches, epoch_permutation, steps_per_epoch
from training.config import TrainConfig
from training.monitor import MetricsLog, frame_path, read_metrics
from training.state import EMA, ema_decay_at

REPO = Path(__file__).resolve().parent.parent


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
    config = TrainConfig(lr=1e-3, warmup_steps=4, lr_schedule="constant")
    assert [trainer.lr_at(s, 0.5, config) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert trainer.lr_at(0, 0.0, TrainConfig(lr=1e-3, warmup_steps=0, lr_schedule="constant")) == 1e-3


@pytest.mark.parametrize("progress, factor", [(0.0, 1.0), (0.25, (1 + 2**-0.5) / 2), (0.5, 0.5), (1.0, 0.0)])
def test_cosine_lr_is_half_a_cosine_of_the_run_progress(progress, factor):
    config = TrainConfig(lr=2e-3, warmup_steps=10)
    assert trainer.lr_at(100, progress, config) == pytest.approx(2e-3 * factor, abs=1e-15)
    assert trainer.lr_at(4, progress, config) == pytest.approx(2e-3 * 0.5 * factor, abs=1e-15)  # × warm-up


def test_run_progress_is_the_larger_of_steps_and_clock_fractions():
    assert trainer.run_progress(25, 100, 0.0, math.inf) == 0.25  # steps only
    assert trainer.run_progress(25, 100, 30.0, 60.0) == 0.5  # --max-minutes ends it sooner
    assert trainer.run_progress(90, 100, 30.0, 60.0) == 0.9
    assert trainer.run_progress(10, 100, 120.0, 60.0) == 1.0  # budget spent: clipped


def test_the_run_horizon_names_a_last_step_only_when_one_bounds_the_run():
    assert trainer._horizon(TrainConfig(num_epochs=MAX_INT, max_minutes=15), 10**12) == "15 minutes"
    assert trainer._horizon(TrainConfig(num_epochs=MAX_INT, max_minutes=15, max_steps=900), 900) == \
        "step 900 or 15 minutes"
    assert trainer._horizon(TrainConfig(num_epochs=2, max_minutes=1.5), 936) == "step 936 or 1.5 minutes"
    assert trainer._horizon(TrainConfig(num_epochs=2), 936) == "step 936"


def test_power_law_ema_decay_and_its_cap():
    gamma = 6.94
    assert ema_decay_at(0, 0.9999, gamma) == 0.0  # t = 1: the average starts as a copy
    assert ema_decay_at(9, 0.9999, gamma) == pytest.approx(0.9 ** 7.94)
    assert ema_decay_at(2999, 0.9999, gamma) == pytest.approx((1 - 1 / 3000) ** 7.94)
    assert ema_decay_at(10**7, 0.9999, gamma) == 0.9999  # capped
    # A longer run averages over more steps: the effective window 1/(1 − d) grows ∝ t.
    w = [1 / (1 - ema_decay_at(s, 1 - 1e-12, gamma)) for s in (999, 9999)]
    assert w[1] / w[0] == pytest.approx(10.0, rel=5e-3)


def test_ema_update_is_the_convex_combination():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 1.0)
    ema = EMA(model, decay=0.5, gamma=1.0)
    torch.nn.init.constant_(model.weight, 3.0)
    d = ema.update(model, step=1)  # d = min(0.5, (1 − 1/2)²) = 0.25
    assert d == pytest.approx(0.25)
    assert ema.model.weight.item() == pytest.approx(0.25 * 1.0 + 0.75 * 3.0)
    ema.update(model, step=10**6)  # d = 0.5 (capped)
    assert ema.model.weight.item() == pytest.approx(0.5 * 2.5 + 0.5 * 3.0)
    assert not ema.model.weight.requires_grad


def test_min_snr_weighting_weights_each_sample_by_min_snr_gamma_over_snr():
    from scheduler import LinearNoiseScheduler

    scheduler = LinearNoiseScheduler()
    x0, eps = torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2)
    t = torch.tensor([0, 400, 999])

    def zero(x_t, t_):  # per-sample squared error = 1
        return torch.zeros_like(x_t)

    ab = scheduler.alphas_cumprod.double()[t]
    snr = ab / (1 - ab)
    expected = (snr.clamp(max=5.0) / snr).mean().item()
    assert snr[0] > 5 > snr[2]  # the test covers both sides of the clamp
    assert trainer.l_simple(zero, scheduler, x0, t, eps, min_snr_gamma=5.0).item() == pytest.approx(expected, rel=1e-5)
    assert trainer.l_simple(zero, scheduler, x0, t, eps).item() == pytest.approx(1.0)


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
    names = [frame_path(Path("v"), 2, 10), frame_path(Path("v"), 1, 6, end_of_epoch=True),
             frame_path(Path("v"), 1, 6), frame_path(Path("v"), 1, 3), frame_path(Path("v"), 2, 9)]
    assert [p.name for p in sorted(names)] == [
        "denoise_progress_ep001_it0000003.png", "denoise_progress_ep001_it0000006.png",
        "denoise_progress_ep001_it0000006_end.png", "denoise_progress_ep002_it0000009.png",
        "denoise_progress_ep002_it0000010.png"]


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
    # warm-up (step 2 of 200) × cosine at the progress 1/8 of the run when step 2 was taken
    assert float(rows[0]["lr"]) == pytest.approx(4e-3 * 2 / 200 * 0.5 * (1 + math.cos(math.pi / 8)))
    assert float(rows[-1]["lr"]) == pytest.approx(4e-3 * 8 / 200 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ckpt = load_checkpoint(run / "test_001.pth")
    assert ckpt["format"] == FORMAT
    assert (ckpt["step"], ckpt["epoch"], ckpt["data_offset"], ckpt["num_samples"]) == (8, 1, 16, 48)
    assert {"model", "ema", "optimizer", "rng", "train_config", "model_config", "diffusion_config"} <= set(ckpt)
    assert ckpt["rng"]["torch"].dtype == torch.uint8 and ckpt["rng"]["noise"].dtype == torch.uint8
    model, scheduler, _ = build_model_from_checkpoint(run / "test_001.pth")  # no flags needed
    assert scheduler.num_timesteps == 100 and not model.training

    viz = sorted(p.name for p in (run / "viz").iterdir())
    assert viz == ["denoise_progress_ep001_it0000003.png", "denoise_progress_ep001_it0000006.png",
                   "denoise_progress_ep001_it0000006_end.png", "progress.gif"]
    frame = np.asarray(Image.open(run / "viz" / viz[0]))
    assert frame.shape == (16 + 3 * (56 + 2) + 2, 40 + 4 * (56 + 2) + 2)  # title + 3 rows × 4 images of 56 px
    assert iio.imread(run / "viz" / "progress.gif", index=None).shape[0] == 3
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.json", "loss.png", "metrics.csv", "samples",
                                                     "test_001.pth", "viz"]
    samples = np.load(run / "samples" / "samples.npz")["images"]
    assert samples.shape == (100, 28, 28) and samples.dtype == np.uint8  # --final-samples 100 by default
    assert Image.open(run / "samples" / "grid.png").size == (10 * 30 + 2, 10 * 30 + 2)
    for where in ("checkpoint:", "samples:", "loss curve:", "progress:", "continue:", "--resume and a larger",
                  "sample:", "--eval-ddpm-model --ckpt-file"):
        assert where in caplog.text


KILL_IN_STEP_8 = """
import os, signal, sys
import main as entry
from training import cli, trainer
calls = []
def loss_fn(*args):
    calls.append(1)
    if len(calls) == 8:
        os.kill(os.getpid(), signal.SIGKILL)
    return trainer.l_simple(*args)
trainer.train(*cli.build_configs(entry.build_parser().parse_args(sys.argv[1:])), loss_fn=loss_fn)
"""


def test_sigkill_mid_epoch_then_resume_ends_bit_identical(tmp_path, data96):
    common = ["--num-epochs", "3", "--seed", "3", "--log-every", "1"]  # 36 steps of 12 per epoch
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert entry.main(argv(straight, data96, *common)) == 0

    # The child SIGKILLs itself inside step 8, after the step-6 checkpoint: mid-epoch, at the same step however
    # busy the machine is.
    proc = subprocess.run([sys.executable, "-c", KILL_IN_STEP_8, *argv(killed, data96, *common, "--ckpt-every", "3")],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ckpt_path = killed / "test_001.pth"
    at_kill = load_checkpoint(ckpt_path)
    assert (at_kill["step"], at_kill["data_offset"]) == (6, 48)  # killed mid-epoch, not at its end
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
def configs(run: Path, data: Path, *extra: str):
    """(TrainConfig, UNetConfig, DiffusionConfig) as the command line ``argv(run, data, *extra)`` builds them."""
    return cli.build_configs(entry.build_parser().parse_args(argv(run, data, *extra)))


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, data48):
    calls = []

    def loss_that_diverges_at_step_5(*args):
        calls.append(1)
        loss = trainer.l_simple(*args)
        return loss * float("nan") if len(calls) == 5 else loss

    run = tmp_path / "run"
    with pytest.raises(trainer.TrainingDiverged, match=r"loss is nan at step 5 \(epoch 1\); stopping\. the last "
                                                       r"good checkpoint .* \(step 4\) is kept"):
        trainer.train(*configs(run, data48, "--ckpt-every", "2", "--num-epochs", "2"),
                      loss_fn=loss_that_diverges_at_step_5)
    assert load_checkpoint(run / "test_001.pth")["step"] == 4
    with RunLock(run):  # released
        pass


def test_ctrl_c_stops_after_the_step_with_a_checkpoint(tmp_path, data48, caplog):
    caplog.set_level(logging.INFO)
    calls = []

    def loss_with_ctrl_c_at_step_3(*args):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only sets a flag; step 3 completes
        return trainer.l_simple(*args)

    # A shell starting the suite in the background (nohup, CI) may have set SIGINT to SIG_IGN; the trainer
    # installs its own handler either way and must restore whatever was there.
    handler_before = signal.getsignal(signal.SIGINT)
    run = tmp_path / "run"
    result = trainer.train(*configs(run, data48, "--num-epochs", "2"), loss_fn=loss_with_ctrl_c_at_step_3)
    assert result.stop_reason == "interrupted"
    ckpt = load_checkpoint(run / "test_001.pth")
    assert (ckpt["step"], ckpt["data_offset"]) == (3, 24)
    assert [r["step"] for r in read_metrics(run / "metrics.csv")] == [3]
    assert signal.getsignal(signal.SIGINT) is handler_before  # restored
    assert "continue:    the same command with --resume\n" in caplog.text  # the budget did not run out: keep it


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_damaged_image_met_mid_epoch_keeps_the_steps_done_before_it(tmp_path, data48, caplog, workers):
    """--no-cache reads pixels when a batch needs them: a file whose header is fine but whose pixel data is cut
    short fails in step 3 (its sample is in the third batch); the checkpoint then holds steps 1-2."""
    data = tmp_path / "data"
    shutil.copytree(data48, data)
    position = 20  # in the third batch of 8
    index = int(epoch_permutation(48, 0, 0)[position])
    bad = data / str(index // 16) / f"{index % 16}.png"  # sorted by class, then naturally by file name
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) * 2 // 3])
    run = tmp_path / "run"
    assert entry.main(argv(run, data, "--no-cache", "--num-workers", workers, "--ckpt-every", "100",
                           "--num-epochs", "1")) == 2
    assert str(bad) in caplog.text
    ckpt = load_checkpoint(run / "test_001.pth")
    assert (ckpt["step"], ckpt["data_offset"]) == (2, 16)


def test_a_batch_larger_than_the_data_says_each_step_uses_all_of_it(tmp_path, data48, caplog):
    assert entry.main(argv(tmp_path / "run", data48, "--batch-size", "100", "--max-steps", "2",
                           "--final-samples", "0")) == 0
    assert "the global batch of 100 is more than the 48 images: each step trains on all 48" in caplog.text
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r["step"] for r in rows] == [2] and rows[0]["epoch"] == 2  # one step per epoch


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_two_signals_during_start_up_exit_130_without_a_traceback(tmp_path, data48, delay, sig):
    """Ctrl-C (or SIGTERM) twice, 0.1 s apart, while torch is still loading (0.3 s) or during set-up (1.5 s)."""
    proc = subprocess.Popen([sys.executable, "main.py", *argv(tmp_path / "run", data48, "--max-steps", "3")],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    for _ in range(2):
        proc.send_signal(sig)
        time.sleep(0.1)
    _, err = proc.communicate(timeout=120)
    # 130: stopped by the first or second signal; −SIGINT / −sig: the second one came while the process was
    # already exiting, after its message (a shell shows 130 / 143); 0: it finished its 3 steps first
    assert proc.returncode in (130, -signal.SIGINT, -sig, 0), err[-2000:]
    assert proc.returncode == 0 or "interrupted" in err or "received" in err, err[-2000:]  # said, not silent
    assert "Traceback" not in err, err[-2000:]


def test_max_minutes_stops_with_a_checkpoint(tmp_path, data48):
    run = tmp_path / "run"
    assert entry.main(argv(run, data48, "--max-minutes", "1e-9")) == 0
    assert load_checkpoint(run / "test_001.pth")["step"] == 1


def test_the_training_clock_survives_resume_and_drives_lr_and_max_minutes(tmp_path, data48):
    """--max-minutes is a budget for the whole run: the checkpoint keeps the clock, and after a resume the cosine lr
    continues from the saved clock's fraction of the budget (here half of it), not from zero."""
    from common.checkpoint import save_checkpoint

    run = tmp_path / "run"
    flags = ["--max-minutes", "1000", "--log-every", "1", "--num-epochs", "100"]
    assert entry.main(argv(run, data48, "--max-steps", "2", *flags)) == 0
    ckpt = load_checkpoint(run / "test_001.pth")
    assert 0 < ckpt["train_seconds"] < 600
    ckpt["train_seconds"] = 0.5 * 1000 * 60
    save_checkpoint(run / "test_001.pth", ckpt)
    assert entry.main(argv(run, data48, "--max-steps", "100", *flags, "--resume")) == 0  # warns: recipe changed
    rows = read_metrics(run / "metrics.csv")
    step3 = next(r for r in rows if r["step"] == 3)
    assert step3["lr"] == pytest.approx(4e-3 * 3 / 200 * 0.5, rel=1e-3)  # warm-up × ½(1 + cos(π/2))
    assert load_checkpoint(run / "test_001.pth")["step"] == 100  # ran on to --max-steps: budget left
    ckpt = load_checkpoint(run / "test_001.pth")
    ckpt["train_seconds"] = 2000 * 60.0
    save_checkpoint(run / "test_001.pth", ckpt)
    step_before = ckpt["step"]
    assert entry.main(argv(run, data48, "--max-steps", "100", *flags, "--resume")) == 0
    assert load_checkpoint(run / "test_001.pth")["step"] == step_before  # budget already spent: no step


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


def test_a_new_run_never_replaces_a_checkpoint_without_resume_or_overwrite(tmp_path, data48, short_run, caplog):
    run = tmp_path / "run"
    assert entry.main(argv(run, data48, "--max-steps", "3")) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with caplog.at_level(logging.ERROR):
        assert entry.main(argv(run, data48, "--max-steps", "2")) == 2
        # resuming *another* run's checkpoint into this folder would replace this one too
        assert entry.main(argv(run, data48, "--resume", str(short_run / "test_001.pth"))) == 2
    assert "already holds a step-3 checkpoint" in caplog.text and "--overwrite" in caplog.text
    assert "--resume to continue it" in caplog.text
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k != ".lock"}  # nothing in the folder changed
    assert entry.main(argv(run, data48, "--max-steps", "2", "--overwrite")) == 0
    assert load_checkpoint(run / "test_001.pth")["step"] == 2


def test_export_refuses_to_write_over_its_input_or_a_training_checkpoint(tmp_path, short_run, caplog):
    import export_weights as export

    src = short_run / "test_001.pth"
    other = tmp_path / "other.pth"
    other.write_bytes(src.read_bytes())
    with caplog.at_level(logging.ERROR):
        assert export.main([str(src), str(src)]) == 2
        assert export.main([str(src), str(short_run / "." / "test_001.pth")]) == 2  # the same file by another path
        assert export.main([str(src), str(other)]) == 2  # a resumable checkpoint
        assert export.main([str(src), str(tmp_path)]) == 2  # a folder
    assert "is the input checkpoint" in caplog.text and "resumable training checkpoint" in caplog.text
    assert "is a folder" in caplog.text
    assert load_checkpoint(src)["optimizer"] is not None and load_checkpoint(other)["optimizer"] is not None
    assert export.main([str(src), str(other), "--force"]) == 0
    assert load_checkpoint(other).get("optimizer") is None


def test_a_live_run_refuses_a_second_one_and_a_dead_runs_lock_is_no_obstacle(tmp_path, data48, caplog):
    run = tmp_path / "run"
    with RunLock(run):  # a live run holds the folder
        assert entry.main(argv(run, data48, "--max-steps", "1")) == 2
    assert f"in use by another training run (PID {os.getpid()})" in caplog.text

    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / ".lock").write_text(f"{dead.pid}\n")
    assert entry.main(argv(run, data48, "--max-steps", "1")) == 0


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



# ---------------------------------------------------------------------------------------------- --init-from
def test_init_from_starts_a_fresh_run_from_the_weights_of_an_export(tmp_path, data48, short_run):
    exported = tmp_path / "weights.pth"
    export_weights(short_run / "test_001.pth", exported)
    source = load_checkpoint(short_run / "test_001.pth")["ema"]
    run = tmp_path / "fine_tune"
    # --lr 1e-12: one AdamW step moves each weight by ~1e-12, so θ after step 1 is the init to 1e-9; --seed 3 builds
    # random weights that differ from the source by far more than that.
    assert entry.main(argv(run, data48, "--init-from", str(exported), "--seed", "3", "--lr", "1e-12",
                           "--warmup-steps", "0", "--max-steps", "1", "--final-samples", "0")) == 0
    ckpt = load_checkpoint(run / "test_001.pth")
    assert ckpt["step"] == 1 and ckpt["train_config"]["init_from"] == str(exported)
    assert all(int(s["step"]) == 1 for s in ckpt["optimizer"]["state"].values())  # AdamW started afresh
    for key in ("model", "ema"):
        worst = max(float((ckpt[key][k] - source[k]).abs().max()) for k in source)
        assert worst < 1e-9, (key, worst)


def test_init_from_refuses_another_model_and_is_not_read_again_on_resume(tmp_path, data48, short_run, caplog):
    run = tmp_path / "fine_tune"
    init = tmp_path / "init.pth"
    shutil.copy(short_run / "test_001.pth", init)
    assert entry.main(argv(run, data48, "--init-from", str(init), "--model", "small")) == 2
    assert re.search(r"init\.pth holds a different model .*channels: checkpoint \(8, 16, 16\)", caplog.text)
    assert not (run / "test_001.pth").exists()
    assert entry.main(argv(run, data48, "--init-from", str(init), "--max-steps", "1", "--final-samples", "0")) == 0
    init.unlink()  # the fine-tune's own checkpoint carries the weights from here on
    assert entry.main(argv(run, data48, "--init-from", str(init), "--max-steps", "2", "--final-samples", "0",
                           "--resume")) == 0
    assert load_checkpoint(run / "test_001.pth")["step"] == 2


def test_resuming_an_export_points_to_init_from(tmp_path, data48, short_run, caplog):
    exported = tmp_path / "weights.pth"
    export_weights(short_run / "test_001.pth", exported)
    assert entry.main(argv(tmp_path / "run", data48, "--resume", str(exported))) == 2
    assert "a sampling-only export? Start a new run from its weights with --init-from" in caplog.text
