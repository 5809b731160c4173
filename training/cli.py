"""The ``--train-ddpm-model`` flags, turned into typed configs in one place (:func:`build_configs`), and the mode's
entry point :func:`run`, which every process runs under ``torchrun``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import torch

from common import argtypes as types
from common.argtypes import MAX_INT
from common.device import resolve_device
from common.run_lock import RunLockedError
from dataset import DEFAULT_DATA_PATH
from models import PRESETS, UNetConfig, preset_config
from scheduler import DiffusionConfig
from training.config import LOSS_WEIGHTINGS, LR_SCHEDULES, PRECISIONS, TrainConfig
from training.runtime import PeerSetupError, resolve_performance, setup_distributed, teardown_distributed
from training.trainer import TrainingDiverged, TrainResult, train

logger = logging.getLogger(__name__)

_DEFAULTS = TrainConfig()
_DIFFUSION = DiffusionConfig()
EXIT_OK, EXIT_DIVERGED, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


# ---------------------------------------------------------------------------------------------- flags
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the training-only flags to ``parser`` (main.py adds those both modes share)."""
    g = parser.add_argument_group("training (--train-ddpm-model)")
    g.add_argument("--data-path", default=str(DEFAULT_DATA_PATH),
                   help="class-folder image tree <path>/<class>/<image>; the default stands for the bundled MNIST "
                        "training digits, read straight from their IDX files")
    g.add_argument("--model", default=_DEFAULTS.model, choices=sorted(PRESETS),
                   help="UNet preset: tiny (tests), small (CPU default), medium (the shipped weights), base (GPU)")
    g.add_argument("--num-epochs", type=int, default=None,
                   help=f"passes over the data (default {_DEFAULTS.num_epochs}; with --max-minutes alone, as many as "
                        "the time allows)")
    g.add_argument("--lr", type=float, default=_DEFAULTS.lr,
                   help="peak AdamW learning rate (after the linear warm-up)")
    g.add_argument("--lr-schedule", default=_DEFAULTS.lr_schedule, choices=LR_SCHEDULES,
                   help="cosine: decay the lr to 0 at the end of the run (--max-steps, --num-epochs or --max-minutes, "
                        "whichever ends it first); constant: keep the peak")
    g.add_argument("--warmup-steps", type=int, default=_DEFAULTS.warmup_steps,
                   help="linear learning-rate warm-up steps")
    g.add_argument("--weight-decay", type=float, default=_DEFAULTS.weight_decay,
                   help="AdamW decoupled weight decay")
    g.add_argument("--ema-decay", type=float, default=_DEFAULTS.ema_decay,
                   help="cap on the decay of the power-law EMA of the weights used for sampling, "
                        "d_t = min(decay, (1 - 1/t)^(gamma+1))")
    g.add_argument("--ema-gamma", type=float, default=_DEFAULTS.ema_gamma,
                   help="gamma of the power-law EMA: 6.94 averages about the last 10%% of the run so far")
    g.add_argument("--loss-weighting", default=_DEFAULTS.loss_weighting, choices=LOSS_WEIGHTINGS,
                   help="min-snr: weight each t by min(SNR_t, gamma)/SNR_t (Hang et al. 2023), still predicting "
                        "the noise; uniform: the paper's L_simple")
    g.add_argument("--min-snr-gamma", type=float, default=_DEFAULTS.min_snr_gamma,
                   help="gamma of --loss-weighting min-snr")
    g.add_argument("--grad-clip", type=float, default=_DEFAULTS.grad_clip,
                   help="clip the global gradient norm to this value; 0 disables clipping")
    g.add_argument("--num-timesteps", type=int, default=_DIFFUSION.num_timesteps,
                   help="T, the number of diffusion steps")
    g.add_argument("--beta-start", type=float, default=_DIFFUSION.beta_start,
                   help="β_1 of the linear schedule")
    g.add_argument("--beta-end", type=float, default=_DIFFUSION.beta_end,
                   help="β_T of the linear schedule")
    g.add_argument("--num-workers", type=int, default=_DEFAULTS.num_workers,
                   help="DataLoader workers; 0 batches straight from the images cached in memory (fastest on CPU)")
    g.add_argument("--no-cache", action="store_true",
                   help="do not decode the whole dataset into memory first; read images from disk per batch")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable, corrupt or odd-sized image files (each is named in a warning) instead of "
                        "stopping at the first")
    g.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="resize every image to N×N; default: the data's own size (MNIST: 28), which the model "
                        "records and sampling draws")
    g.add_argument("--channels", type=int, choices=(1, 3), default=_DEFAULTS.channels,
                   help="convert images to 1 (grayscale) or 3 (RGB) channels")
    g.add_argument("--extensions", type=types.extension_list, default=_DEFAULTS.extensions, metavar=".png,.jpg",
                   help="image file extensions to read from the class folders (comma-separated)")
    g.add_argument("--final-samples", type=int, default=_DEFAULTS.final_samples, metavar="N",
                   help="at the end of the run the EMA model draws N samples into task-name/samples/ "
                        "(grid.png, samples.npz) with the default sampler; 0 turns it off")
    g.add_argument("--tensorboard", action="store_true",
                   help="write loss, lr, images/s, grad-norm and image grids for TensorBoard to task-name/tb/ "
                        "(pip install -r requirements/tensorboard.txt; view with tensorboard --logdir task-name/tb)")
    g.add_argument("--max-steps", type=int, default=None,
                   help="stop (with a checkpoint) once this many steps are done in total, e.g. for smoke runs")
    g.add_argument("--max-minutes", type=float, default=None,
                   help="stop (with a checkpoint) after this many minutes of training in total; a resumed run "
                        "continues the saved training clock, and the cosine lr reaches 0 when the budget is spent")
    g.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                   help="continue from a checkpoint: CKPT, or task-name/ckpt-save-name when given alone. "
                        "A missing or unreadable checkpoint is an error, never a fresh start")
    g.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start a new run (a fine-tune) from the weights of CKPT, a training checkpoint (its EMA) or "
                        "an export such as checkpoints/mnist_small.pth: the optimizer, step count, lr schedule and "
                        "random streams start afresh; the model and diffusion settings must match CKPT's. Read only "
                        "when the run starts: --resume continues the fine-tune from its own checkpoint")
    g.add_argument("--overwrite", action="store_true",
                   help="let a fresh run replace the checkpoint already in --task-name (refused otherwise: pass "
                        "--resume to continue it)")
    g.add_argument("--ckpt-save-name", default=_DEFAULTS.ckpt_save_name,
                   help="checkpoint file name inside --task-name")
    g.add_argument("--ckpt-every", type=int, default=_DEFAULTS.ckpt_every,
                   help="also checkpoint every this many steps (always at epoch ends, on Ctrl-C and when stopping)")
    g.add_argument("--log-every", type=int, default=_DEFAULTS.log_every,
                   help="log loss, lr and images/s to metrics.csv every this many steps")
    g.add_argument("--viz-save", action="store_true",
                   help="save denoising-progress frames to task-name/viz/ and assemble viz/progress.gif at the end")
    g.add_argument("--viz-live", action="store_true",
                   help="show the frames in a matplotlib window (warns once and carries on without a display)")
    g.add_argument("--viz-interval", type=int, default=_DEFAULTS.viz_interval,
                   help="steps between frames (one more at each epoch end)")
    g.add_argument("--viz-num", type=int, default=_DEFAULTS.viz_num, help="images per frame")
    g.add_argument("--viz-t", type=int, default=_DEFAULTS.viz_t,
                   help="timestep at which frames noise their images, in [0, T-1]; -1 is the last (T-1)")
    g.add_argument("--conditional", action="store_true",
                   help="train a class-conditional model: labels become context tokens for cross-attention, "
                        "with classifier-free guidance's null label (sample with --label/--guidance-scale)")
    g.add_argument("--cond-drop", type=float, default=_DEFAULTS.cond_drop,
                   help="with --conditional: probability of replacing a label by the null label in training")
    g.add_argument("--num-classes", type=types.positive_int, default=10,
                   help="with --conditional: number of classes (class folders) in --data-path")

    p = parser.add_argument_group(
        "performance (--train-ddpm-model); each defaults to the fastest safe choice for the device, logged at start. "
        "Multi-process: torchrun --nproc_per_node=N main.py --train-ddpm-model ... (--batch-size is per process)")
    p.add_argument("--precision", default=_DEFAULTS.precision, choices=PRECISIONS,
                   help="UNet arithmetic: bf16/fp16 autocast (fp16 with loss scaling) or fp32; the noise schedule "
                        "and the loss stay fp32. auto: bf16 on GPUs that support it, else fp32")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=_DEFAULTS.compile,
                   help="wrap the UNet in torch.compile (slow first step, faster after); default %(default)s = "
                        "decide by device: on for CUDA, off for CPU")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=_DEFAULTS.channels_last,
                   help="run the UNet in the channels_last memory layout; default %(default)s = decide by device: "
                        "on for CUDA and CPU")


# ---------------------------------------------------------------------------------------------- configs
def build_configs(args: argparse.Namespace) -> tuple[TrainConfig, UNetConfig, DiffusionConfig]:
    """The one place where flags become configs. Raises ValueError naming the bad value."""
    diffusion_config = DiffusionConfig(args.num_timesteps, args.beta_start, args.beta_end)
    model_config = preset_config(args.model, im_channels=args.channels, image_size=args.image_size)
    if args.conditional:  # label tokens as wide as the bottleneck, one token per label
        model_config = dataclasses.replace(model_config, num_classes=args.num_classes,
                                           context_dim=model_config.context_dim or model_config.channels[-1])
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    values.update(data_path=str(args.data_path), cache=not args.no_cache, grad_clip=args.grad_clip or None)
    if args.num_epochs is None:  # a time budget alone ends the run on time, not after the default epochs
        values["num_epochs"] = MAX_INT if args.max_minutes is not None else _DEFAULTS.num_epochs
    train_config = TrainConfig(**values)  # validates every value, naming the field
    try:
        train_config.resolved_viz_t(diffusion_config.num_timesteps)
    except ValueError as err:
        raise ValueError(f"--viz-t {args.viz_t}: {err}") from None
    return train_config, model_config, diffusion_config


def resume_path(args: argparse.Namespace, train_config: TrainConfig) -> Path | None:
    if args.resume is None:
        return None
    return Path(args.resume) if args.resume else train_config.ckpt_path


# ---------------------------------------------------------------------------------------------- entry point
def run(args: argparse.Namespace, parser: argparse.ArgumentParser, results: list[TrainResult] | None = None) -> int:
    """Train as the flags say; returns an exit code. A run that trained appends its :class:`TrainResult` to
    ``results`` if given."""
    try:
        train_config, model_config, diffusion_config = build_configs(args)
        device = resolve_device(train_config.device)
        resolve_performance(train_config.precision, train_config.compile, train_config.channels_last, device)
    except ValueError as err:
        parser.error(str(err))  # exits with status 2 and the usage line
    resume_from = resume_path(args, train_config)
    if train_config.num_threads:
        torch.set_num_threads(train_config.num_threads)
    try:  # under torchrun: join the process group (one process per rank); otherwise a no-op
        ctx = setup_distributed(train_config.device)
    except ValueError as err:
        logger.error("%s", err)
        return EXIT_USER_ERROR
    root_logger, root_level = logging.getLogger(), logging.getLogger().level
    if not ctx.is_main:  # rank 0 reports progress for all; the others only warn
        root_logger.setLevel(logging.WARNING)
    try:
        result = train(train_config, model_config, diffusion_config, resume_from=resume_from, distributed=ctx)
        if results is not None:
            results.append(result)
    except TrainingDiverged as err:
        logger.error("training diverged: %s", err)
        return EXIT_DIVERGED
    except (OSError, ValueError, RunLockedError, PeerSetupError) as err:  # CheckpointError is a ValueError
        logger.debug("details", exc_info=True)
        logger.error("%s", err)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        logger.error("interrupted (no checkpoint written by this interruption)")
        return EXIT_INTERRUPTED
    finally:
        teardown_distributed(ctx)
        root_logger.setLevel(root_level)
    return EXIT_INTERRUPTED if result.stop_reason == "interrupted" else EXIT_OK
