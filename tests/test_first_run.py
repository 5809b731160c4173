"""A new user's first runs: samples at the end, logs that read well in a file, TensorBoard, data flags, and the
image size and class names travelling with the model."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main as entry
from common.checkpoint import load_checkpoint
from common.progress import LogLineBar, progress_bar
from dataset.folder_scan import scan_class_folders, sort_class_names

REPO = Path(__file__).resolve().parent.parent


def write_images(root: Path, classes: list[str], per_class: int, size: int = 28, channels: int = 1) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            shape = (size, size) if channels == 1 else (size, size, 3)
            Image.fromarray(rng.integers(0, 255, shape).astype(np.uint8)).save(root / c / f"{i}.png")
    return root


def train_argv(run: Path, data: Path, *extra: str) -> list[str]:
    return ["--train-ddpm-model", "--task-name", str(run), "--data-path", str(data), "--model", "tiny",
            "--batch-size", "4", "--num-timesteps", "50", "--max-steps", "2", "--final-samples", "4", *extra]


# ---------------------------------------------------------------------------------------------- progress
class _FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_is_a_tqdm_bar_on_a_terminal_and_log_lines_in_a_file(caplog):
    assert not isinstance(progress_bar(total=3, stream=_FakeStream(tty=True), disable=True), LogLineBar)
    with caplog.at_level(logging.INFO, logger="common.progress"):
        bar = progress_bar(total=1000, desc="sampling", unit="img", stream=_FakeStream(tty=False))
        assert isinstance(bar, LogLineBar)
        for _ in range(1000):
            bar.update(1)  # far faster than the 30 s interval: nothing logged until the end
        bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "common.progress"]
    assert lines == [lines[0]] and lines[0].startswith("sampling: 1000/1000 (100%)") and "img/s" in lines[0]


def test_log_line_bar_logs_at_most_once_per_interval(caplog, monkeypatch):
    clock = iter(float(i) for i in range(10_000))
    monkeypatch.setattr("tqdm.std.time", lambda: next(clock))  # each call advances 1 s
    with caplog.at_level(logging.INFO, logger="common.progress"):
        bar = LogLineBar(total=100, desc="x", mininterval=10)
        for _ in range(100):
            bar.update(1)
        bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "common.progress"]
    assert 3 <= len(lines) <= 12 and lines[-1].startswith("x: 100/100")


def test_evaluation_logged_to_a_file_has_few_progress_lines(tmp_path):
    run = tmp_path / "run"
    data = write_images(tmp_path / "data", ["0", "1"], per_class=4)
    assert entry.main(train_argv(run, data, "--final-samples", "0")) == 0
    log = tmp_path / "eval.log"
    with open(log, "w") as stderr:  # not a terminal, as under nohup or in CI
        proc = subprocess.run([sys.executable, "main.py", "--eval-ddpm-model", "--ckpt-file", str(run / "test_001.pth"),
                               "--task-name", str(tmp_path / "eval"), "--sampler", "ddpm", "--num-samples", "60",
                               "--batch-size", "20", "--num-threads", "1"],
                              cwd=REPO, stderr=stderr, stdout=subprocess.DEVNULL, timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "\r" not in text  # no carriage-return bar updates
    progress = [line for line in text.splitlines() if "common.progress" in line]
    assert 1 <= len(progress) <= 20 and "150/150 (100%)" in progress[-1]  # 3 batches × 50 DDPM steps


# ---------------------------------------------------------------------------------------------- the end of a run
def test_tensorboard_run_leaves_an_events_file_and_samples(tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    data = write_images(tmp_path / "data", ["0", "1"], per_class=4)
    assert entry.main(train_argv(run, data, "--tensorboard", "--log-every", "1", "--viz-save", "--viz-interval",
                                 "1", "--viz-num", "2")) == 0
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert {"train/loss", "train/lr", "train/images_per_s", "train/grad_norm"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert {"samples", "denoising_progress"} <= set(acc.Tags()["images"])
    assert (run / "samples" / "grid.png").exists()


def test_tensorboard_missing_is_a_one_line_error(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    data = write_images(tmp_path / "data", ["0", "1"], per_class=4)
    run = tmp_path / "run"
    with caplog.at_level(logging.ERROR):
        assert entry.main(train_argv(run, data, "--tensorboard")) == 2
    assert "pip install -r requirements/tensorboard.txt" in caplog.text
    assert not (run / "test_001.pth").exists()


def test_final_samples_zero_draws_nothing(tmp_path):
    run = tmp_path / "run"
    data = write_images(tmp_path / "data", ["0", "1"], per_class=4)
    assert entry.main(train_argv(run, data, "--final-samples", "0")) == 0
    assert not (run / "samples").exists()


# ---------------------------------------------------------------------------------------------- size and classes
@pytest.mark.parametrize("size, flags, expected", [(32, [], 32), (28, ["--image-size", "16"], 16)])
def test_the_model_records_the_image_size_and_samples_at_it(tmp_path, size, flags, expected):
    run = tmp_path / "run"
    data = write_images(tmp_path / "data", ["a", "b"], per_class=4, size=size)
    assert entry.main(train_argv(run, data, *flags)) == 0
    ckpt = load_checkpoint(run / "test_001.pth")
    assert ckpt["model_config"]["image_size"] == expected and ckpt["class_names"] == ["a", "b"]
    assert np.load(run / "samples" / "samples.npz")["images"].shape == (4, expected, expected)
    out = tmp_path / "eval"
    assert entry.main(["--eval-ddpm-model", "--ckpt-file", str(run / "test_001.pth"), "--task-name", str(out),
                       "--num-samples", "2", "--sampler", "ddim", "--sample-steps", "2"]) == 0
    assert np.load(out / "samples" / "samples.npz")["images"].shape == (2, expected, expected)


def test_rgb_data_trains_an_rgb_model(tmp_path):
    run = tmp_path / "run"
    data = write_images(tmp_path / "data", ["0", "1"], per_class=4, channels=3)
    assert entry.main(train_argv(run, data, "--channels", "3")) == 0
    assert load_checkpoint(run / "test_001.pth")["model_config"]["im_channels"] == 3
    assert np.load(run / "samples" / "samples.npz")["images"].shape == (4, 28, 28, 3)


def test_an_image_size_the_model_cannot_halve_is_a_clear_error(tmp_path, caplog):
    data = write_images(tmp_path / "data", ["0", "1"], per_class=4, size=30)  # tiny halves twice: 30 → 15 → odd
    with caplog.at_level(logging.ERROR):
        assert entry.main(train_argv(tmp_path / "run", data)) == 2
    assert "image_size" in caplog.text and "divisible by 4" in caplog.text and "--image-size" in caplog.text


def test_integer_class_folders_sort_numerically(tmp_path):
    assert sort_class_names(["10", "2", "0", "1"]) == ["0", "1", "2", "10"]
    assert sort_class_names(["dog", "cat", "10"]) == ["10", "cat", "dog"]  # not all integers: by name
    root = write_images(tmp_path / "data", [str(i) for i in range(11)], per_class=1)
    classes, samples = scan_class_folders(root)
    assert classes == [str(i) for i in range(11)]
    assert {p.parent.name: label for p, label in samples}["10"] == 10


# ---------------------------------------------------------------------------------------------- data flags
def test_skip_bad_flag_skips_a_corrupt_file_and_messages_name_the_flag(tmp_path, caplog):
    data = write_images(tmp_path / "data", ["0", "1"], per_class=4)
    (data / "0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with caplog.at_level(logging.ERROR):
        assert entry.main(train_argv(tmp_path / "a", data)) == 2
    assert "--skip-bad" in caplog.text and "skip_bad=True" not in caplog.text.replace("(skip_bad=True in Python)", "")
    assert entry.main(train_argv(tmp_path / "b", data, "--skip-bad")) == 0


def test_extensions_flag_reads_other_files(tmp_path):
    data = tmp_path / "data"
    for c in ("0", "1"):
        (data / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.zeros((28, 28), np.uint8)).save(data / c / f"{i}.bmp")
    assert entry.main(train_argv(tmp_path / "run", data, "--extensions", "bmp")) == 0
    assert torch.load(tmp_path / "run" / "test_001.pth", weights_only=True)["train_config"]["extensions"] == (".bmp",)


# ---------------------------------------------------------------------------------------------- mistakes
def test_a_changed_weight_decay_on_resume_is_applied(tmp_path):
    run = tmp_path / "run"
    data = write_images(tmp_path / "data", ["0", "1"], per_class=4)
    assert entry.main(train_argv(run, data, "--final-samples", "0")) == 0
    assert load_checkpoint(run / "test_001.pth")["optimizer"]["param_groups"][0]["weight_decay"] == 0.0
    assert entry.main(train_argv(run, data, "--final-samples", "0", "--max-steps", "3", "--weight-decay", "0.01",
                                 "--resume")) == 0
    ckpt = load_checkpoint(run / "test_001.pth")
    assert ckpt["train_config"]["weight_decay"] == 0.01
    assert {g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]} == {0.01}  # used, not only logged


@pytest.mark.parametrize("name, why", [(" ", "plain file name"), (" a.pth", "plain file name"),
                                       ("x" * 252 + ".pth", "at most 200 bytes")])
def test_bad_checkpoint_names_are_refused_before_training(tmp_path, capsys, name, why):
    data = write_images(tmp_path / "data", ["0", "1"], per_class=4)
    with pytest.raises(SystemExit) as exit_info:
        entry.main(train_argv(tmp_path / "run", data, "--ckpt-save-name", name))
    assert exit_info.value.code == 2 and why in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_eval_names_a_folder_given_as_checkpoint_and_too_few_samples_for_the_labels(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert entry.main(["--eval-ddpm-model", "--ckpt-file", str(tmp_path), "--task-name", str(tmp_path / "o")]) == 2
    assert "is a folder" in caplog.text
    from common.checkpoint import FORMAT, save_checkpoint
    from models import UNet
    from training.config import TrainConfig

    model = UNet.from_preset("tiny", attn=(False, True), context_dim=8, num_classes=10)
    ckpt = tmp_path / "cond.pth"
    save_checkpoint(ckpt, {"format": FORMAT, "model_config": model.config.to_dict(),
                           "diffusion_config": {"num_timesteps": 10, "beta_start": 1e-4, "beta_end": 0.02},
                           "train_config": TrainConfig(conditional=True).to_dict(), "model": model.state_dict(),
                           "ema": None, "step": 1, "epoch": 0})
    with caplog.at_level(logging.ERROR):
        assert entry.main(["--eval-ddpm-model", "--ckpt-file", str(ckpt), "--labels", "0,1,2,3,4,5",
                           "--num-samples", "2", "--task-name", str(tmp_path / "p")]) == 2
    assert "--num-samples 2 cannot show the 6 classes" in caplog.text and not (tmp_path / "p").exists()


def test_skip_bad_decides_the_size_by_majority_not_by_the_first_file(tmp_path, caplog):
    from dataset import MNISTDataset

    data = write_images(tmp_path / "data", ["0", "1"], per_class=20)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(data / "0" / "0.png")  # the first file listed: odd size
    for cache in (True, False):
        with caplog.at_level(logging.WARNING):
            ds = MNISTDataset.from_folder(data, cache=cache, skip_bad=True)
        assert len(ds) == 39 and ds.num_skipped == 1 and ds.skipped[0][0].name == "0.png"
        assert ds.image_size == (28, 28) and "the size of most images" in ds.skipped[0][1]


def test_eval_refuses_an_unwritable_output_before_sampling(tmp_path, caplog):
    run = tmp_path / "run"
    data = write_images(tmp_path / "data", ["0", "1"], per_class=4)
    assert entry.main(train_argv(run, data, "--final-samples", "0")) == 0
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    with caplog.at_level(logging.INFO):
        assert entry.main(["--eval-ddpm-model", "--ckpt-file", str(run / "test_001.pth"), "--task-name", str(a_file),
                           "--num-samples", "2"]) == 2
    assert f"cannot write the samples to {a_file / 'samples'}" in caplog.text
    assert "sampling 2 images" not in caplog.text  # refused before any sampling work


def test_resuming_a_conditional_checkpoint_without_conditional_says_so(tmp_path, caplog):
    run = tmp_path / "run"
    data = write_images(tmp_path / "data", ["0", "1", "2"], per_class=4)
    assert entry.main(train_argv(run, data, "--final-samples", "0", "--conditional", "--num-classes", "3")) == 0
    with caplog.at_level(logging.ERROR):
        assert entry.main(train_argv(run, data, "--final-samples", "0", "--max-steps", "3", "--resume")) == 2
    assert "is a class-conditional model: use it with --conditional --num-classes 3" in caplog.text
