"""Precision, torch.compile and channels_last: the defaults per device, the flags, bf16/fp16 steps on the CPU,
the schedule staying fp32 under autocast, and compiled or channels_last training matching eager NCHW fp32."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from fault_injection import max_difference, without_key_bias, write_digits

import main as entry
from common.checkpoint import load_checkpoint
from models import UNet, preset_config
from scheduler import LinearNoiseScheduler
from training import TrainConfig, cli, runtime
from training.monitor import read_metrics
from training.runtime import Performance, resolve_performance
from training.trainer import l_simple

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module")
def data24(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits24"), per_class=8)


def argv(run: Path, data: Path, *extra: str) -> list[str]:
    return ["--train-ddpm-model", "--task-name", str(run), "--data-path", str(data), "--model", "tiny",
            "--batch-size", "8", "--num-timesteps", "100", "--warmup-steps", "0", "--log-every", "1", *extra]


# ---------------------------------------------------------------------------------------------- defaults, flags
def test_cpu_defaults_are_fp32_eager_channels_last_and_explicit_choices_stand():
    assert resolve_performance("auto", None, None, CPU) == Performance("fp32", False, True)
    assert resolve_performance("bf16", True, False, CPU) == Performance("bf16", True, False)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")  # validated once, in the config


def test_cuda_defaults_follow_what_the_gpu_supports(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a test GPU")
    monkeypatch.setattr(runtime, "_triton_usable", lambda device: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_performance("auto", None, None, CUDA) == Performance("bf16", True, True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_performance("auto", None, None, CUDA) == Performance("fp32", True, True)
    with pytest.raises(ValueError, match="a test GPU does not support bfloat16; use --precision fp16"):
        resolve_performance("bf16", None, None, CUDA)
    monkeypatch.setattr(runtime, "_triton_usable", lambda device: False)
    assert not resolve_performance("fp16", None, None, CUDA).compile
    with pytest.raises(ValueError, match="needs Triton"):
        resolve_performance("fp16", True, None, CUDA)


def test_grad_scaler_only_for_fp16():
    assert [Performance(p, False, False).grad_scaler(CPU).is_enabled() for p in ("fp32", "bf16", "fp16")] == \
        [False, False, True]


def test_flags_parse_into_the_config_and_default_to_auto():
    parser = entry.build_parser()
    config = cli.build_configs(parser.parse_args(["--train-ddpm-model"]))[0]
    assert (config.precision, config.compile, config.channels_last) == ("auto", None, None)
    config = cli.build_configs(parser.parse_args(["--train-ddpm-model", "--precision", "bf16", "--compile",
                                                  "--no-channels-last"]))[0]
    assert (config.precision, config.compile, config.channels_last) == ("bf16", True, False)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--train-ddpm-model", "--precision", "fp64"])
    assert exit_info.value.code == 2


# ---------------------------------------------------------------------------------------------- mixed precision
def test_under_bf16_autocast_only_the_unet_runs_in_bf16():
    torch.manual_seed(0)
    model, scheduler = UNet(preset_config("tiny")), LinearNoiseScheduler(num_timesteps=100)
    x0, eps, t = torch.rand(4, 1, 28, 28) * 2 - 1, torch.randn(4, 1, 28, 28), torch.tensor([0, 10, 50, 99])
    with Performance("bf16", False, True).autocast(CPU):
        x_t = scheduler.add_noise(x0, eps, t)
        eps_pred = model(x_t, t)
        loss = l_simple(model, scheduler, x0, t, eps)
    assert (x_t.dtype, eps_pred.dtype, loss.dtype) == (torch.float32, torch.bfloat16, torch.float32)
    exact = l_simple(model, scheduler, x0, t, eps)
    assert loss.item() == pytest.approx(exact.item(), rel=0.05)  # bf16 keeps ~3 significant digits
    loss.backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_on_cpu_with_finite_loss_and_fp32_weights(tmp_path, data24, precision, caplog):
    run = tmp_path / precision
    with caplog.at_level(logging.INFO):
        assert entry.main(argv(run, data24, "--precision", precision, "--max-steps", "2")) == 0
        assert entry.main(argv(run, data24, "--precision", precision, "--max-steps", "3", "--resume")) == 0
    losses = [r["loss"] for r in read_metrics(run / "metrics.csv")]
    assert len(losses) == 3 and all(0.1 < loss < 3 for loss in losses)
    ckpt = load_checkpoint(run / "test_001.pth")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in ckpt["model"].values())
    if precision == "fp16":  # the loss scale is part of the state an exact resume needs
        assert ckpt["grad_scaler"]["scale"] > 0 and ckpt["grad_scaler"]["_growth_tracker"] == 3
    else:
        assert ckpt["grad_scaler"] is None
    assert json.loads((run / "config.json").read_text())["performance"]["precision"] == precision
    assert f"precision {precision}, compile False, channels_last True" in caplog.text


def test_the_start_line_names_every_choice(tmp_path, data24, caplog):
    with caplog.at_level(logging.INFO):
        assert entry.main(argv(tmp_path / "run", data24, "--max-steps", "1", "--num-threads", "1")) == 0
    assert "device cpu, world size 1, batch 8 per rank × 1 = 8 global, precision fp32, compile False, " \
           "channels_last True, 1 CPU thread(s) per rank" in caplog.text
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["performance"] == {"precision": "fp32", "compile": False, "channels_last": True}


# ---------------------------------------------------------------------------------------------- layout, compile
def test_channels_last_trains_like_nchw(tmp_path, data24):
    runs = {flag: tmp_path / flag for flag in ("--channels-last", "--no-channels-last")}
    for flag, run in runs.items():
        assert entry.main(argv(run, data24, flag, "--max-steps", "4")) == 0
    a, b = (load_checkpoint(run / "test_001.pth") for run in runs.values())
    assert max_difference(without_key_bias(a["model"]), without_key_bias(b["model"])) < 1e-5
    assert a["model"]["conv_out.weight"].is_contiguous(memory_format=torch.channels_last)  # [1, 8, 3, 3]
    assert b["model"]["conv_out.weight"].is_contiguous()


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, data24):
    """--compile (inductor, C++ kernels on the CPU) gives the eager run's losses (the UNet's outputs) and weights
    (its gradients). About a minute on a 2-core CPU, nearly all of it compiling."""
    for flag in ("--compile", "--no-compile"):
        assert entry.main(argv(tmp_path / flag, data24, flag, "--max-steps", "2")) == 0
    compiled, eager = (tmp_path / flag for flag in ("--compile", "--no-compile"))
    assert json.loads((compiled / "config.json").read_text())["performance"]["compile"] is True
    assert [r["loss"] for r in read_metrics(compiled / "metrics.csv")] == pytest.approx(
        [r["loss"] for r in read_metrics(eager / "metrics.csv")], rel=1e-5)
    a, b = (load_checkpoint(run / "test_001.pth") for run in (compiled, eager))
    assert max_difference(without_key_bias(a["model"]), without_key_bias(b["model"])) < 1e-5
