"""``main.py --train-ddpm-model`` flags: defaults, the README command, and rejection of impossible values
before any work is done."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import main as entry
from dataset import DEFAULT_DATA_PATH
from models import preset_config
from scheduler import DiffusionConfig
from training import cli
from training.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent

TRAIN_FLAGS = [
    "--train-ddpm-model", "--task-name", "--data-path", "--batch-size", "--num-epochs", "--lr", "--ckpt-save-name",
    "--viz-save", "--viz-live", "--viz-interval", "--viz-num", "--viz-t", "--model", "--num-timesteps",
    "--beta-start", "--beta-end", "--seed", "--device", "--num-workers", "--max-steps", "--ema-decay",
    "--grad-clip", "--resume", "--ckpt-every", "--log-every", "--max-minutes", "--warmup-steps", "--num-threads",
]


def parse(*flags: str):
    parser = entry.build_parser()
    args = parser.parse_args(["--train-ddpm-model", *flags])
    return parser, args


def test_defaults_build_the_documented_configs():
    _, args = parse()
    train_config, model_config, diffusion_config = cli.build_configs(args)
    assert train_config == TrainConfig(data_path=str(DEFAULT_DATA_PATH))
    assert (train_config.model, train_config.batch_size, train_config.lr) == ("small", 128, 4e-3)
    assert (train_config.ckpt_save_name, train_config.viz_interval, train_config.viz_num, train_config.viz_t) == \
        ("test_001.pth", 500, 8, -1)
    assert (train_config.ema_decay, train_config.grad_clip, train_config.warmup_steps) == (0.9999, 1.0, 200)
    assert model_config == preset_config("small")
    assert diffusion_config == DiffusionConfig(1000, 1e-4, 0.02)
    assert train_config.resolved_viz_t(diffusion_config.num_timesteps) == 999


def test_readme_command_parses():
    _, args = parse("--task-name", "runs/mnist_ddpm", "--data-path", "data/MNIST/mnist_images", "--batch-size",
                    "128", "--num-epochs", "40", "--lr", "1e-4")
    train_config, _, _ = cli.build_configs(args)
    assert (train_config.task_name, train_config.data_path, train_config.num_epochs, train_config.lr) == \
        ("runs/mnist_ddpm", "data/MNIST/mnist_images", 40, 1e-4)


def test_every_flag_parses_into_the_config():
    _, args = parse("--model", "tiny", "--num-timesteps", "50", "--beta-start", "0.001", "--beta-end", "0.05",
                    "--seed", "3", "--device", "cpu", "--num-workers", "2", "--max-steps", "7", "--ema-decay", "0.99",
                    "--grad-clip", "0", "--ckpt-every", "9", "--log-every", "4", "--max-minutes", "2.5",
                    "--viz-save", "--viz-live", "--viz-t", "49", "--viz-num", "3", "--viz-interval", "11",
                    "--warmup-steps", "0", "--weight-decay", "0.01", "--no-cache", "--num-threads", "1",
                    "--ckpt-save-name", "a.pth")
    train_config, model_config, diffusion_config = cli.build_configs(args)
    assert model_config == preset_config("tiny")
    assert diffusion_config == DiffusionConfig(50, 0.001, 0.05)
    assert train_config.grad_clip is None  # 0 disables clipping
    assert (train_config.seed, train_config.device, train_config.num_workers, train_config.max_steps) == \
        (3, "cpu", 2, 7)
    assert (train_config.viz_save, train_config.viz_live, train_config.viz_t, train_config.viz_num) == \
        (True, True, 49, 3)
    assert (train_config.cache, train_config.max_minutes, train_config.num_threads, train_config.ckpt_every) == \
        (False, 2.5, 1, 9)


def test_a_time_budget_alone_is_not_cut_short_by_the_default_epochs():
    assert cli.build_configs(parse()[1])[0].num_epochs == 8
    assert cli.build_configs(parse("--max-minutes", "15")[1])[0].num_epochs == 2**31 - 1  # time ends the run
    assert cli.build_configs(parse("--max-minutes", "15", "--num-epochs", "3")[1])[0].num_epochs == 3
    assert cli.build_configs(parse("--max-steps", "10")[1])[0].num_epochs == 8


def test_resume_alone_means_the_run_checkpoint():
    _, args = parse("--task-name", "runs/x", "--resume")
    assert cli.resume_path(args, cli.build_configs(args)[0]) == Path("runs/x/test_001.pth")
    _, args = parse("--resume", "elsewhere/ckpt.pth")
    assert cli.resume_path(args, cli.build_configs(args)[0]) == Path("elsewhere/ckpt.pth")
    _, args = parse()
    assert cli.resume_path(args, cli.build_configs(args)[0]) is None


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "must be a positive integer, got 0"),
    (["--batch-size", "-3"], "must be a positive integer, got -3"),
    (["--batch-size", "1.5"], "'1.5' is not an integer"),
    (["--num-epochs", "0"], r"num_epochs: must be a positive int .*got 0"),
    (["--num-epochs", "1" + "0" * 30], r"num_epochs: must be a positive int \(at most 2147483647\)"),
    (["--lr", "-0.0001"], "lr: must be a positive number"),
    (["--lr", "nan"], r"lr: must be a positive number.*got nan"),
    (["--model", "huge"], "invalid choice: 'huge'"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--viz-t", "-2"], r"viz_t: must be -1 .*got -2"),
    (["--viz-num", "0"], "viz_num: must be a positive int"),
    (["--viz-interval", "0"], "viz_interval: must be a positive int"),
    (["--beta-start", "0"], r"beta_start must lie in the open interval \(0, 1\)"),
    (["--beta-end", "1.5"], r"beta_end must lie in the open interval \(0, 1\)"),
    (["--ema-decay", "1"], r"must lie in \[0, 1\)"),
    (["--num-workers", "-1"], "num_workers: must be an int >= 0"),
    (["--max-minutes", "0"], "max_minutes: must be None or a positive number"),
    (["--grad-clip", "-1"], "grad_clip: must be None"),
    (["--num-timesteps", "0"], "num_timesteps must be a positive int, got 0"),
])
def test_impossible_values_are_a_usage_error_before_any_work(flags, message, capsys, tmp_path):
    """Rejected by the parser's type or by the config dataclasses (validated once, there), exit 2."""
    parser = entry.build_parser()
    argv = ["--train-ddpm-model", "--task-name", str(tmp_path / "run"), "--model", "tiny", "--max-steps", "1",
            "--final-samples", "0", *flags]
    with pytest.raises(SystemExit) as info:
        cli.run(parser.parse_args(argv), parser)
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    (["--viz-t", "1000"], r"--viz-t 1000: viz_t=1000 is beyond the last timestep T-1=999"),
    (["--num-timesteps", "50", "--viz-t", "50"], "beyond the last timestep T-1=49"),
    (["--beta-start", "0.1", "--beta-end", "0.01"], r"beta_start \(0.1\) must not exceed beta_end \(0.01\)"),
    (["--ckpt-save-name", "sub/dir.pth"], "must be a plain file name"),
])
def test_cross_flag_errors_are_parser_errors_before_any_work(flags, message, capsys, tmp_path):
    run = tmp_path / "run"
    parser, args = parse("--task-name", str(run), *flags)
    with pytest.raises(SystemExit) as info:
        cli.run(args, parser)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and not run.exists()  # nothing was created


def test_cuda_requested_without_cuda_is_a_parser_error(monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    parser, args = parse("--device", "cuda")
    with pytest.raises(SystemExit):
        cli.run(args, parser)
    assert "CUDA is not available" in capsys.readouterr().err


def test_help_documents_every_training_flag():
    out = subprocess.run([sys.executable, "main.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in TRAIN_FLAGS:
        assert flag in out.stdout, flag
    text = " ".join(out.stdout.split())
    for default in ("(default: test_001.pth)", "(default: 500)", "(default: 8)", "(default: -1)", "(default: small)"):
        assert default in text, default


def test_no_mode_prints_help_not_a_traceback(capsys):
    assert entry.main([]) == 0
    out = capsys.readouterr()
    assert "usage: main.py" in out.out and "--train-ddpm-model" in out.out and "Traceback" not in out.err


def test_a_signal_that_breaks_an_import_still_exits_130_with_a_message(capsys):
    """Seen in CI: Ctrl-C landed inside numpy's import, a library swallowed the KeyboardInterrupt, and the next
    import of numpy raised ImportError — a traceback instead of "interrupted"."""
    def entry_whose_import_breaks() -> int:
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:  # the library that swallows the interruption
            pass
        raise ImportError("cannot load module more than once per process")

    handler = signal.getsignal(signal.SIGINT)
    assert entry.run_process(entry_whose_import_breaks) == 130
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is handler  # restored

    def entry_with_a_real_error() -> int:  # no signal: an error stays an error
        raise ImportError("a missing package")

    with pytest.raises(ImportError, match="a missing package"):
        entry.run_process(entry_with_a_real_error)


def test_signals_wait_until_the_libraries_are_loaded(capsys):
    """Seen in CI: Ctrl-C inside torch's import aborted the interpreter (SIGABRT). While ``load`` runs a signal
    is only noted; it then stops the run before ``entry``, with exit 130."""
    loaded, entered = [], []

    def load() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt here without the hold
        loaded.append(True)

    assert entry.run_process(lambda: entered.append(True) or 0, load) == 130
    assert loaded == [True] and entered == []
    assert "interrupted" in capsys.readouterr().err
