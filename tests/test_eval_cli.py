"""`python main.py --eval-ddpm-model ...` end to end, on a tiny untrained checkpoint with T = 20."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main
import sampling
from evaluation import cli as eval_cli
from evaluation.classifier import ClassifierConfig, MNISTClassifier, save_classifier
from models import UNet
from sampling import SamplerConfig, load_samples_npz
from scheduler import DiffusionConfig

T = 20


@pytest.fixture(scope="module")
def ckpt_file(tmp_path_factory) -> Path:
    from common.checkpoint import FORMAT, save_checkpoint
    from training.config import TrainConfig

    torch.manual_seed(0)
    model = UNet.from_preset("tiny")
    ema = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("run") / "test_001.pth"
    save_checkpoint(path, {
        "format": FORMAT, "model_config": model.config.to_dict(), "diffusion_config": DiffusionConfig(T).to_dict(),
        "train_config": TrainConfig().to_dict(), "model": model.state_dict(), "ema": ema, "step": 7, "epoch": 1,
    })
    return path


def run_eval(*flags: str) -> int:
    return main.main(["--eval-ddpm-model", "--device", "cpu", *flags])


def read_samples(folder: Path) -> np.ndarray:
    return load_samples_npz(folder / "samples" / "samples.npz")[0]


# ---------------------------------------------------------------------------------------- parser
def test_flags_join_the_main_parser_without_clashes():
    args = main.build_parser().parse_args(["--eval-ddpm-model"])
    assert args.ckpt_file == eval_cli.DEFAULT_CKPT and args.num_samples == 100 and args.num_grid_rows == 10
    assert args.sampler is None and args.sample_steps is None and args.eta is None  # None: the default sampler
    assert not args.metrics and not args.save_trajectory and args.clip_x0 and args.use_ema
    args = main.build_parser().parse_args(["--sampler", "ddim", "--sample-steps", "5", "--eta", "1", "--no-ema"])
    assert (args.sampler, args.sample_steps, args.eta, args.use_ema) == ("ddim", 5, 1.0, False)
    args = main.build_parser().parse_args(["--sampler", "dpm-solver++", "--no-clip-x0"])
    assert eval_cli.sampler_config(args, main.build_parser()) == SamplerConfig("dpm-solver++", clip_x0=False)


def test_default_sampler_is_one_constant():
    parser = main.build_parser()
    config = eval_cli.sampler_config(parser.parse_args(["--eval-ddpm-model"]), parser)
    assert config == SamplerConfig(sampling.DEFAULT_SAMPLER, sampling.DEFAULT_SAMPLER_STEPS)
    assert config == SamplerConfig("ddpm", 50)
    args = parser.parse_args(["--eval-ddpm-model", "--sample-steps", "20"])  # the default sampler, other steps
    assert eval_cli.sampler_config(args, parser) == SamplerConfig(sampling.DEFAULT_SAMPLER, 20)
    args = parser.parse_args(["--eval-ddpm-model", "--sampler", "ddpm"])  # named: its own default, all T steps
    assert eval_cli.sampler_config(args, parser) == SamplerConfig("ddpm")


@pytest.mark.parametrize("flags", [["--num-samples", "0"], ["--eta", "x"], ["--sample-steps", "0"],
                                   ["--sampler", "euler"], ["--num-grid-rows", "-2"]])
def test_parser_rejects_bad_values(flags, capsys):
    with pytest.raises(SystemExit) as exc:
        main.build_parser().parse_args(["--eval-ddpm-model", *flags])
    assert exc.value.code == 2
    assert flags[0] in capsys.readouterr().err


@pytest.mark.parametrize("eta", ["1.5", "nan", "-0.1"])
def test_eta_is_validated_once_by_sampler_config(eta, capsys):
    parser = main.build_parser()  # --sampler ddim: the range check, not "--eta only applies to ddim", must refuse it
    with pytest.raises(SystemExit) as exc:
        eval_cli.sampler_config(parser.parse_args(["--eval-ddpm-model", "--sampler", "ddim", "--eta", eta]), parser)
    assert exc.value.code == 2
    assert "--eta" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- sampling runs
def test_ddim_run_writes_grid_npz_and_gif(ckpt_file, tmp_path):
    out = tmp_path / "eval"
    assert run_eval("--ckpt-file", str(ckpt_file), "--task-name", str(out), "--sampler", "ddim", "--sample-steps",
                    "4", "--eta", "0.5", "--num-samples", "6", "--num-grid-rows", "2", "--batch-size", "4",
                    "--save-trajectory", "--trajectory-frames", "3") == 0
    images, meta = load_samples_npz(out / "samples" / "samples.npz")
    assert images.shape == (6, 28, 28) and images.dtype == np.uint8
    assert meta["sampler"]["label"] == "ddim-4-eta0.5" and meta["weights"] == "ema" and meta["seed"] == 0
    with Image.open(out / "samples" / "grid.png") as grid:
        assert grid.size == (3 * 30 + 2, 2 * 30 + 2)  # 2 rows × 3 columns of 28 px tiles, 2 px padding
    with Image.open(out / "samples" / "trajectory.gif") as gif:
        assert gif.n_frames == 4
    assert not (out / "metrics.json").exists()


def test_seed_repeats_and_ema_flag_matters(ckpt_file, tmp_path):
    common = ["--ckpt-file", str(ckpt_file), "--sampler", "ddim", "--sample-steps", "3", "--eta", "1",
              "--num-samples", "3"]
    for name, extra in [("a", []), ("b", []), ("c", ["--seed", "1"]), ("raw", ["--no-ema"])]:
        assert run_eval(*common, "--task-name", str(tmp_path / name), *extra) == 0
    a, b, c, raw = (read_samples(tmp_path / n) for n in ("a", "b", "c", "raw"))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, raw)


@pytest.mark.parametrize("flags, label, nfe", [
    (["--sampler", "ddpm"], f"ddpm-{T}", T),
    (["--sampler", "ddpm", "--sample-steps", "5"], "ddpm-5", 5),
    (["--sampler", "ddpm", "--sample-steps", "4", "--ddim-spacing", "linspace"], "ddpm-4", 4),
    (["--sampler", "dpm-solver++", "--sample-steps", "5"], "dpm-solver++-5", 5),
    (["--sampler", "dpm-solver++"], f"dpm-solver++-{T - 1}", T - 1),  # the default 20, capped at T − 1
])
def test_sampler_runs_record_label_and_function_evals(ckpt_file, tmp_path, flags, label, nfe):
    assert run_eval("--ckpt-file", str(ckpt_file), "--task-name", str(tmp_path), "--num-samples", "2", *flags) == 0
    meta = load_samples_npz(tmp_path / "samples" / "samples.npz")[1]["sampler"]
    assert (meta["label"], meta["num_function_evals"]) == (label, nfe)


@pytest.mark.parametrize("flags, message", [
    (["--sampler", "ddim", "--sample-steps", str(T + 1)], f"T={T}"),
    (["--sampler", "ddpm", "--sample-steps", str(T + 1)], f"T={T}"),
    (["--sampler", "dpm-solver++", "--sample-steps", str(T)], f"T-1={T - 1}"),
    (["--sampler", "ddpm", "--eta", "0.5"], "--eta only applies to --sampler ddim (DDPM"),
    (["--sampler", "dpm-solver++", "--eta", "0"], "--eta only applies to --sampler ddim (DPM-Solver++"),
    (["--sampler", "dpm-solver++", "--ddim-spacing", "trailing"], "--ddim-spacing does not apply"),
    (["--sampler", "ddpm", "--no-clip-x0"], "--no-clip-x0 applies to --sampler ddim and dpm-solver++"),
    (["--metrics", "--num-samples", "1"], "--metrics needs --num-samples in [2, 60000]"),
])
def test_impossible_combinations_exit_2(ckpt_file, tmp_path, flags, message, capsys):
    with pytest.raises(SystemExit) as exc:
        run_eval("--ckpt-file", str(ckpt_file), "--task-name", str(tmp_path), *flags)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_or_bad_checkpoints_return_2(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(eval_cli, "DEFAULT_CKPT", tmp_path / "checkpoints" / "mnist_small.pth")
    assert run_eval() == 2
    assert "does not exist yet: train a model" in caplog.text
    assert run_eval("--ckpt-file", str(tmp_path / "nope.pth")) == 2
    assert "nope.pth does not exist" in caplog.text
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert run_eval("--ckpt-file", str(bad)) == 2
    assert "not a readable checkpoint" in caplog.text or "not a PyTorch checkpoint" in caplog.text


def test_output_folder_rules(tmp_path):
    parser = main.build_parser()
    args = parser.parse_args(["--ckpt-file", "runs/mnist_ddpm/test_001.pth"])
    assert eval_cli.output_dir(args, parser) == Path("runs/mnist_ddpm")
    args = parser.parse_args([])  # the shipped checkpoint: never write into checkpoints/
    assert eval_cli.output_dir(args, parser) == Path("runs/eval/mnist_small")
    args = parser.parse_args(["--ckpt-file", "runs/x/a.pth", "--task-name", str(tmp_path / "mine")])
    assert eval_cli.output_dir(args, parser) == tmp_path / "mine"


# ---------------------------------------------------------------------------------------- --metrics
def test_metrics_flag_writes_json_and_prints_table(ckpt_file, tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    clf_path = tmp_path / "clf.pth"
    save_classifier(clf_path, MNISTClassifier(ClassifierConfig(channels=(4,), feature_dim=8)), test_accuracy=0.1)
    rng = np.random.default_rng(0)
    fake = (rng.integers(0, 256, (200, 28, 28), dtype=np.uint8), rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
            np.arange(200) % 10)
    monkeypatch.setattr(eval_cli, "load_mnist_reference", lambda: fake)  # keep the test off the 70k digits
    out = tmp_path / "eval"
    assert run_eval("--ckpt-file", str(ckpt_file), "--task-name", str(out), "--sampler", "ddim", "--sample-steps",
                    "2", "--num-samples", "8", "--metrics", "--classifier-file", str(clf_path),
                    "--metrics-nn-reference", "50") == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["num_samples"] == 8 and report["sampler"]["label"] == "ddim-2-eta0"
    assert report["classifier"]["test_accuracy"] == 0.1 and len(report["classifier"]["sha256"]) == 64
    assert report["metrics"]["memorisation"]["num_test_reference"] == 50
    assert sum(report["metrics"]["class_histogram"]) == 8
    assert f"{report['metrics']['fid']:.4f}" in capsys.readouterr().out


def test_metrics_with_a_tampered_classifier_return_2(ckpt_file, tmp_path, caplog):
    clf_path = tmp_path / "clf.pth"
    save_classifier(clf_path, MNISTClassifier(ClassifierConfig(channels=(4,), feature_dim=8)))
    data = bytearray(clf_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    clf_path.write_bytes(bytes(data))
    assert run_eval("--ckpt-file", str(ckpt_file), "--task-name", str(tmp_path), "--sampler", "ddim",
                    "--sample-steps", "1", "--num-samples", "2", "--metrics", "--classifier-file", str(clf_path)) == 2
    assert "sha256 mismatch" in caplog.text
    assert not (tmp_path / "samples").exists()  # refused before sampling
