"""The DDPM training loop (Ho et al. 2020, Algorithm 1), read top to bottom in labelled sections.

    repeat: x0 ~ q(x0);  t ~ Uniform{0, …, T−1};  ε ~ N(0, I)
            gradient step on  ‖ε − ε_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t)‖²      (L_simple, Eq. 14)

with AdamW, a linear LR warm-up and cosine decay, optional gradient clipping and an EMA of the weights (used for
visualisation and, through the checkpoint, for sampling). By default each sample's squared error is weighted by
min(SNR_t, γ)/SNR_t (min-SNR-γ, Hang et al. 2023; ``--loss-weighting uniform`` is exactly L_simple).

Exact resume: the data order is a function of (seed, epoch, offset) (see :mod:`training.batching`), t and
ε come from a dedicated generator whose state is checkpointed, the LR and EMA decay are functions of the
step, and the checkpoint holds model, EMA, optimizer and RNG states — so a run killed at any step and
resumed ends bit-identical (on CPU) to one that was never interrupted.

Data parallel (under torchrun, :mod:`training.distributed`): each of W ranks trains on its share of the global
batch of W·B images through DistributedDataParallel; the data order, t, ε and label drops are drawn for the
global batch and sliced per rank, so the run equals a one-process run with batch W·B up to float rounding, and
checkpoints (written by rank 0) resume under any W with the same global batch. Precision, ``torch.compile`` and
channels_last come from :mod:`training.performance`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.contrib.logging import logging_redirect_tqdm

from common.progress import progress_bar
from dataset import MNISTDataset, ensure_mnist_images
from models import UNet, UNetConfig
from scheduler import DiffusionConfig, LinearNoiseScheduler
from training.batching import BatchSource, derived_seed, epoch_end_offset, rank_slice
from training.checkpoint import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    load_state_dict_checked,
    remove_stale_temp_files,
    save_checkpoint,
)
from training.config import TrainConfig
from training.distributed import DistContext, PeerSetupError, resolve_device
from training.ema import EMA
from training.metrics_log import MetricsLog, TensorBoardLog, plot_loss
from training.performance import Performance, resolve_performance, to_memory_format
from training.resume import check_resumable, restore_rng
from training.run_lock import RunLock
from training.visualization import ProgressVisualizer, assemble_gif, draw_final_samples

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    step: int
    epoch: int  # epochs completed
    loss: float  # mean loss of the last logging interval (nan if none)
    stop_reason: str  # "completed", "max_steps", "max_minutes" or "interrupted"
    checkpoint: Path


def run_progress(step: int, last_step: int, seconds: float, max_seconds: float) -> float:
    """How far the run is towards its end, in [0, 1]: the larger of the step fraction and, under
    ``--max-minutes``, the fraction of the training clock spent (both are in the checkpoint)."""
    return min(1.0, max(step / last_step, seconds / max_seconds))


def lr_at(step: int, progress: float, config: TrainConfig) -> float:
    """Linear warm-up to the peak lr over ``warmup_steps`` steps, times ½(1 + cos(π·progress)) for ``cosine``."""
    lr = config.lr * min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else config.lr
    if config.lr_schedule == "cosine":
        lr *= 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr


def l_simple(model: torch.nn.Module, scheduler: LinearNoiseScheduler, x0: torch.Tensor, t: torch.Tensor,
             eps: torch.Tensor, context: torch.Tensor | None = None, min_snr_gamma: float | None = None
             ) -> torch.Tensor:
    """L_simple = E‖ε − ε_θ(x_t, t[, c])‖², x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε  (Eq. 14).

    x0, eps: [B, C, H, W]; t: [B]; context: [B, M, context_dim] for a conditional model. With ``min_snr_gamma``
    each sample's error is weighted by min(SNR_t, γ)/SNR_t, SNR_t = ᾱ_t/(1−ᾱ_t) (min-SNR-γ, Hang et al. 2023, in
    its ε-prediction form): the easy low-noise steps count less.

    Under ``torch.autocast`` only the model runs in reduced precision: x_t is elementwise arithmetic on the fp32
    schedule, x0 and ε (which autocast leaves in fp32), and the loss is taken in fp32."""
    x_t = scheduler.add_noise(x0, eps, t)
    eps_pred = model(x_t, t) if context is None else model(x_t, t, context=context)
    if min_snr_gamma is None:
        return torch.nn.functional.mse_loss(eps_pred.float(), eps)
    per_sample = (eps_pred.float() - eps).pow(2).flatten(1).mean(1)  # [B]
    snr = scheduler.alphas_cumprod[t] / (1.0 - scheduler.alphas_cumprod[t])
    return (per_sample * snr.clamp(max=min_snr_gamma) / snr).mean()


class _StopFlag:
    """First Ctrl-C (or SIGTERM) asks the loop to stop after the current step; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("%s received: stopping after this step and saving a checkpoint (Ctrl-C again to abort "
                       "without saving)", signal.Signals(signum).name)

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(config: TrainConfig, model_config: UNetConfig, diffusion_config: DiffusionConfig,
          resume_from: str | Path | None = None, dataset=None, distributed: DistContext | None = None) -> TrainResult:
    """Train (or resume) a DDPM as ``config`` says; writes everything under ``config.task_name``.

    Args:
        resume_from: a checkpoint to continue from; a missing or unreadable one raises (never a silent
            restart). Its model/diffusion config and seed must match the requested ones.
        dataset: use these images instead of reading ``config.data_path`` (an :class:`MNISTDataset` or any
            dataset of ``(image in [−1, 1], label)``; with ``as_tensors()`` it is batched from memory).
        distributed: this process's rank, world size and device from
            :func:`training.distributed.setup_distributed`; ``None`` trains in one process on ``config.device``.

    Raises:
        TrainingDiverged: NaN/inf loss; nothing is saved, the last good checkpoint stays.
        FileNotFoundError, CheckpointError, ValueError, RunLockedError: user errors, before any training.
        PeerSetupError: (data-parallel) another rank failed before training; its log says why.
    """
    # ---------------------------------------------------------------- setup
    t_v = config.resolved_viz_t(diffusion_config.num_timesteps)
    if config.conditional != model_config.conditional:
        raise ValueError(
            f"TrainConfig.conditional={config.conditional} but the model config has "
            f"num_classes={model_config.num_classes}: a class-conditional run needs a model with num_classes "
            "and context_dim (training.cli.build_configs sets them), an unconditional run a model without")
    if model_config.context_dim is not None and not model_config.conditional:
        raise ValueError(f"the model config has context_dim={model_config.context_dim} but no num_classes: the "
                         "trainer can only provide class labels as context")
    ctx = distributed if distributed is not None else DistContext(device=resolve_device(config.device))
    device, world = ctx.device, ctx.world_size
    perf = resolve_performance(config.precision, config.compile, config.channels_last, device)
    run_dir = config.run_dir
    ckpt_path = config.ckpt_path
    lock = RunLock(run_dir)  # taken by rank 0 only: the one process that writes
    visualize = tb = None
    setup_done = False
    try:
        # Rank 0 takes the lock; one rank per machine builds the MNIST PNG tree on first use, before any reads it.
        if ctx.is_main:
            lock.acquire()
            _refuse_to_replace(ckpt_path, resume_from, config.overwrite)
            remove_stale_temp_files(ckpt_path)
        if ctx.local_rank == 0 and dataset is None:
            ensure_mnist_images(config.data_path)
        ctx.agree()  # every rank, at the same points: raises PeerSetupError if another rank failed
        ckpt = None
        if resume_from is not None:  # read first: a bad checkpoint fails before the data is loaded
            ckpt = load_checkpoint(resume_from)  # every rank, to the CPU (RNG states must stay CPU tensors)
            check_resumable(ckpt, str(resume_from), config, model_config, diffusion_config, world)

        # ------------------------------------------------------------ data
        if dataset is None:
            data_path = ensure_mnist_images(config.data_path)
            dataset = MNISTDataset.from_folder(data_path, config.extensions, config.channels, config.image_size,
                                               config.cache, config.skip_bad)
        model_config = _fit_model_to_data(model_config, dataset, config.data_path,
                                          ckpt["model_config"] if ckpt is not None else None)
        class_names = [str(c) for c in getattr(dataset, "classes", [])] or None
        if config.conditional and hasattr(dataset, "classes") and len(dataset.classes) != model_config.num_classes:
            raise ValueError(f"{config.data_path} has {len(dataset.classes)} classes {dataset.classes} but the "
                             f"model is built for num_classes={model_config.num_classes}; pass --num-classes "
                             f"{len(dataset.classes)}")
        in_memory = config.num_workers == 0 and hasattr(dataset, "as_tensors") and config.cache
        batches = BatchSource(dataset, config.batch_size, config.seed, device, in_memory, config.num_workers,
                              ctx.rank, world)
        N = batches.num_samples
        global_batch = batches.global_batch_size  # images per step, all ranks together
        steps_per_epoch = batches.steps_per_epoch
        total_steps = config.num_epochs * steps_per_epoch
        last_step = min(total_steps, config.max_steps) if config.max_steps is not None else total_steps

        # ------------------------------------------------------------ model, EMA, optimizer, noise RNG
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        model = UNet(model_config).to(device)
        if perf.channels_last:
            model = model.to(memory_format=torch.channels_last)
        ema = EMA(model, config.ema_decay, config.ema_gamma)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scaler = perf.grad_scaler(device)  # loss scaling for fp16; a pass-through otherwise
        scheduler = LinearNoiseScheduler.from_config(diffusion_config, device=device)
        noise_gen = torch.Generator(device=device).manual_seed(derived_seed(config.seed, 2))  # t, ε, label drops
        step, epoch, offset = 0, 0, 0
        clock = 0.0  # seconds of training so far, over all resumes: drives --max-minutes and the LR schedule

        # ------------------------------------------------------------ resume
        if ckpt is not None:
            load_state_dict_checked(model, ckpt["model"], f"{resume_from}['model']")
            load_state_dict_checked(ema.model, ckpt["ema"], f"{resume_from}['ema']")
            try:
                optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError, RuntimeError) as err:
                raise CheckpointError(f"{resume_from}: optimizer state does not fit the model ({err})") from None
            for group in optimizer.param_groups:  # the requested recipe, not the saved one (logged if changed)
                group["weight_decay"] = config.weight_decay
            if ckpt.get("grad_scaler") and scaler.is_enabled():
                scaler.load_state_dict(ckpt["grad_scaler"])
            step, epoch, offset = int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["data_offset"])
            clock = float(ckpt.get("train_seconds", 0.0))
            restore_rng(ckpt["rng"], noise_gen, device, str(resume_from))
            if ckpt["num_samples"] != N:
                logger.warning("%s was trained on %d images, this dataset has %d: the data order differs from "
                               "the original run from here on", resume_from, ckpt["num_samples"], N)
            if offset >= epoch_end_offset(N, global_batch):
                epoch, offset = epoch + 1, 0
            logger.info("resumed from %s at step %d (epoch %d, %d samples into it)", resume_from, step,
                        epoch + 1, offset)
        metrics = None
        if ctx.is_main:
            if config.tensorboard:
                tb = TensorBoardLog(run_dir / "tb", purge_step=step + 1 if ckpt is not None else None)
            metrics = MetricsLog(run_dir / "metrics.csv", resume_step=step if ckpt is not None else None)
            _write_config_json(run_dir / "config.json", config, model_config, diffusion_config, ctx, perf, model,
                               resume_from)
        del ckpt
        logger.info("training %s on %s: %d images, %d steps/epoch, until step %d; run folder %s",
                    config.model, device, N, steps_per_epoch, last_step, run_dir)
        logger.info("device %s, world size %d, batch %d per rank × %d = %d global, precision %s, compile %s, "
                    "channels_last %s, %d CPU thread(s) per rank", device, world, config.batch_size, world,
                    global_batch, perf.precision, perf.compile, perf.channels_last, torch.get_num_threads())

        # ------------------------------------------------------------ visualisation
        if ctx.is_main and (config.viz_save or config.viz_live):
            viz_images, viz_labels = batches.fixed_batch(config.viz_num, config.seed)
            visualize = ProgressVisualizer(scheduler, viz_images, t_v, derived_seed(config.seed, 3), run_dir / "viz",
                                           config.viz_save, config.viz_live, viz_labels)

        # ------------------------------------------------------------ ranks agree, then DDP and compile
        ctx.agree()
        setup_done = True
        forward = model  # what computes ε_θ in the step; state, EMA and optimizer stay with `model`
        if ctx.enabled:  # broadcasts rank 0's weights, then all-reduces (averages) gradients in backward
            forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if perf.compile:
            forward = torch.compile(forward)

        def checkpoint(reason: str) -> None:
            if not ctx.is_main:
                return
            state = {
                "format": FORMAT,
                "model_config": model_config.to_dict(),
                "class_names": class_names,
                "diffusion_config": diffusion_config.to_dict(),
                "train_config": config.to_dict(),
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "step": step,
                "epoch": epoch,
                "data_offset": offset,
                "train_seconds": clock_now(),
                "num_samples": N,
                "world_size": world,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                    "noise": noise_gen.get_state(),
                    "noise_device": device.type,
                },
            }
            save_checkpoint(ckpt_path, state)
            plot_loss(metrics.rows, run_dir / "loss.png")
            logger.info("checkpoint %s at step %d (%s)", ckpt_path, step, reason)

        # ------------------------------------------------------------ loop
        end_offset = epoch_end_offset(N, global_batch)
        max_seconds = 60 * config.max_minutes if config.max_minutes is not None else math.inf
        min_snr_gamma = config.min_snr_gamma if config.loss_weighting == "min-snr" else None
        stop_reason = None  # set to "completed", "max_steps", "max_minutes" or "interrupted"
        last_saved = step if resume_from is not None else None
        last_loss = math.nan
        window = {"loss": 0.0, "steps": 0, "images": 0, "grad_norm": 0.0}
        share = functools.partial(rank_slice, rank=ctx.rank, world_size=world)  # this rank's rows of a global batch
        t_start = t_window = time.perf_counter()

        def clock_now() -> float:
            return clock + time.perf_counter() - t_start

        def log_window(lr: float) -> None:
            nonlocal last_loss, t_window
            if window["steps"] == 0:
                return
            now = time.perf_counter()
            last_loss = window["loss"] / window["steps"]
            ips = window["images"] / max(now - t_window, 1e-9)  # all ranks' images
            grad_norm = window["grad_norm"] / window["steps"]
            if metrics is not None:
                metrics.append(step, epoch + 1, last_loss, lr, ips, clock_now(), grad_norm)
            if tb is not None:
                tb.scalars(step, loss=last_loss, lr=lr, images_per_s=ips, grad_norm=grad_norm)
            bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{ips:.0f}")
            logger.info("step %d epoch %d loss %.4f lr %.2e %.0f img/s", step, epoch + 1, last_loss, lr, ips)
            window.update(loss=0.0, steps=0, images=0, grad_norm=0.0)
            t_window = now

        model.train()
        with _StopFlag() as stop, logging_redirect_tqdm():
            while stop_reason is None:
                if step >= last_step or epoch >= config.num_epochs:
                    stop_reason = "completed" if step >= total_steps or epoch >= config.num_epochs else "max_steps"
                    break
                if clock > max_seconds:  # resumed with the --max-minutes budget already spent
                    stop_reason = "max_minutes"
                    break
                bar = progress_bar(total=steps_per_epoch, initial=offset // global_batch, unit="step",
                           desc=f"epoch {epoch + 1}/{config.num_epochs}", dynamic_ncols=True, leave=False,
                           disable=not ctx.is_main)
                lr = math.nan
                for x0, labels in batches(epoch, offset):
                    lr = lr_at(step, run_progress(step, last_step, clock_now(), max_seconds), config)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    # t, ε (and label drops) are drawn for the global batch on every rank and sliced like the
                    # images, so W ranks see the noise one process with batch W·B would.
                    n = x0.shape[0] * world
                    t = share(scheduler.sample_timesteps(n, generator=noise_gen, device=device))
                    eps = share(torch.randn((n, *x0.shape[1:]), generator=noise_gen, device=device))
                    context = None
                    if config.conditional:  # classifier-free guidance: learn ε(x_t, t, ∅) on dropped labels
                        u = share(torch.rand(n, generator=noise_gen, device=device))
                        labels = model.label_embedding.drop_labels(labels, config.cond_drop, noise=u)
                        context = model.label_context(labels)
                    with perf.autocast(device):
                        loss = l_simple(forward, scheduler, to_memory_format(x0, perf), t, eps, context, min_snr_gamma)
                    # One all-reduce: the global mean loss, and whether any rank must stop after this step.
                    loss_value, (stop_requested, out_of_time) = ctx.reduce_step(
                        loss, stop.requested, clock_now() > max_seconds)
                    if not math.isfinite(loss_value):
                        _diverged(f"loss is {loss_value}", step + 1, epoch + 1, ckpt_path, last_saved)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)  # a no-op without fp16 loss scaling
                    if config.grad_clip is not None:
                        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                    else:  # still checked: an inf gradient must never reach the weights
                        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()
                                                                   if p.grad is not None])
                    if not torch.isfinite(grad_norm) and not scaler.is_enabled():  # fp16: the scaler skips
                        _diverged(f"gradient norm is {grad_norm.item()}", step + 1, epoch + 1, ckpt_path,
                                  last_saved)
                    scaler.step(optimizer)
                    scaler.update()
                    ema.update(model, step)
                    step += 1
                    offset += n
                    window["loss"] += loss_value
                    window["steps"] += 1
                    window["images"] += n
                    window["grad_norm"] += float(grad_norm)
                    bar.update(1)

                    if step % config.log_every == 0:
                        log_window(lr)
                    if visualize is not None and step % config.viz_interval == 0:
                        frame = visualize(ema.model, epoch + 1, step)
                        if tb is not None and frame is not None:
                            tb.image("denoising_progress", frame, step)
                    if step >= last_step:
                        stop_reason = "completed" if step >= total_steps else "max_steps"
                    elif out_of_time:
                        stop_reason = "max_minutes"
                    elif stop_requested:
                        stop_reason = "interrupted"
                    if stop_reason is not None:
                        break
                    if step % config.ckpt_every == 0 and offset < end_offset:  # an epoch end saves anyway
                        checkpoint("every --ckpt-every steps")
                        last_saved = step
                if stop_reason is not None:
                    log_window(lr)  # the partial interval, so metrics.csv reaches the final checkpoint
                bar.close()
                if offset >= end_offset:  # the epoch is complete
                    if visualize is not None:
                        visualize(ema.model, epoch + 1, step, end_of_epoch=True)
                    epoch, offset = epoch + 1, 0
                    if stop_reason is None and epoch < config.num_epochs:
                        checkpoint(f"end of epoch {epoch}")
                        last_saved = step

        # ------------------------------------------------------------ teardown
        if last_saved != step:
            checkpoint({"completed": "end of training", "max_steps": "reached --max-steps",
                        "max_minutes": "reached --max-minutes", "interrupted": "interrupted"}[stop_reason])
        if visualize is not None and config.viz_save:
            assemble_gif(run_dir / "viz")
        grid = None
        if ctx.is_main and config.final_samples and stop_reason != "interrupted":
            grid = draw_final_samples(ema.model, scheduler, config.final_samples, model_config, run_dir / "samples",
                                      config.seed, device)
            if tb is not None:
                tb.image("samples", grid, step)
        ctx.barrier()  # return once rank 0's files are complete, e.g. for a resume in the same program
        logger.info("stopped (%s) at step %d, %d epoch(s) complete; last loss %.4f", stop_reason, step, epoch,
                    last_loss)
        if ctx.is_main:
            _log_where_things_are(config, ckpt_path, grid, visualize is not None and config.viz_save)
        return TrainResult(step, epoch, last_loss, stop_reason, ckpt_path)
    except Exception as err:
        if not setup_done and not isinstance(err, PeerSetupError):
            ctx.all_ok(False)  # this rank failed in setup: the others, waiting in ctx.agree(), fail too
        raise
    finally:
        if visualize is not None:
            visualize.close()
        if tb is not None:
            tb.close()
        lock.release()


def _refuse_to_replace(ckpt_path: Path, resume_from: str | Path | None, overwrite: bool) -> None:
    """A run may only write over ``ckpt_path`` when it continues that very checkpoint or was told to replace it."""
    if overwrite or not ckpt_path.exists():
        return
    if resume_from is not None and Path(resume_from).resolve() == ckpt_path.resolve():
        return
    try:
        what = f"a step-{int(load_checkpoint(ckpt_path)['step'])} checkpoint"
    except (OSError, ValueError, KeyError, TypeError):
        what = "a checkpoint (unreadable)"
    continue_it = (f"--resume {resume_from} with another --task-name or --ckpt-save-name" if resume_from is not None
                   else "--resume to continue it")
    raise ValueError(f"{ckpt_path} already holds {what}; this run would replace it. Pass {continue_it}, or "
                     "--overwrite to start afresh over it")


def _fit_model_to_data(model_config: UNetConfig, dataset, data_path: str, saved: dict | None) -> UNetConfig:
    """The model config with the data's image size and channels recorded (sampling draws that size)."""
    shape = tuple(dataset[0][0].shape)  # (C, H, W)
    C, H, W = shape
    if H != W:
        raise ValueError(f"{data_path} holds {H}×{W} images; the model needs square ones: pass --image-size N to "
                         "resize them")
    if C != model_config.im_channels:
        raise ValueError(f"{data_path} gives {C}-channel images but the model expects {model_config.im_channels}; "
                         "pass --channels to match")
    if saved is not None and saved.get("image_size") not in (None, H):
        raise ValueError(f"the checkpoint was trained on {saved['image_size']}×{saved['image_size']} images, this "
                         f"data is {H}×{H}: resume with the same data or pass --image-size {saved['image_size']}")
    if model_config.image_size not in (None, H):
        raise ValueError(f"the model is configured for {model_config.image_size}×{model_config.image_size} images "
                         f"but {data_path} gives {H}×{H}")
    return dataclasses.replace(model_config, image_size=H)  # validates: H must survive the down-samples


def _log_where_things_are(config: TrainConfig, ckpt_path: Path, grid: Path | None, gif: bool) -> None:
    run = config.run_dir
    logger.info("checkpoint:  %s", ckpt_path)
    if grid is not None:
        logger.info("samples:     %s (and samples.npz)", grid)
    logger.info("loss curve:  %s (metrics.csv beside it)", run / "loss.png")
    if gif:
        logger.info("progress:    %s", run / "viz" / "progress.gif")
    if config.tensorboard:
        logger.info("tensorboard: tensorboard --logdir %s", run / "tb")
    logger.info("continue:    python main.py --train-ddpm-model --task-name %s --resume (with a larger --max-steps, "
                "--num-epochs or --max-minutes)", run)
    logger.info("sample:      python main.py --eval-ddpm-model --ckpt-file %s --num-samples 100", ckpt_path)


def _diverged(what: str, step: int, epoch: int, ckpt_path: Path, last_saved: int | None) -> None:
    kept = (f"the last good checkpoint {ckpt_path} (step {last_saved}) is kept; resume from it with --resume, "
            "perhaps with a lower --lr or --grad-clip" if last_saved is not None
            else "no checkpoint had been written yet")
    raise TrainingDiverged(f"{what} at step {step} (epoch {epoch}); stopping. {kept}")


def _write_config_json(path: Path, config: TrainConfig, model_config: UNetConfig,
                       diffusion_config: DiffusionConfig, ctx: DistContext, perf: Performance, model: UNet,
                       resume_from: str | Path | None) -> None:
    resolved = {
        "train": config.to_dict(),
        "model": model_config.to_dict(),
        "diffusion": diffusion_config.to_dict(),
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "global_batch_size": config.batch_size * ctx.world_size,
        "performance": perf.to_dict(),
        "num_threads": torch.get_num_threads(),
        "num_parameters": model.num_parameters(),
        "resumed_from": str(resume_from) if resume_from is not None else None,
        "torch_version": torch.__version__,
    }
    logger.info("resolved configuration: %s", json.dumps(resolved))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(resolved, indent=2) + "\n")
    os.replace(tmp, path)
