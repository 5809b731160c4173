"""The DDPM training loop (Ho et al. 2020, Algorithm 1):

    repeat: x0 ~ q(x0);  t ~ Uniform{0, …, T−1};  ε ~ N(0, I)
            gradient step on  ‖ε − ε_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t)‖²      (L_simple, Eq. 14)

with AdamW, a linear LR warm-up and cosine decay to 0 at the end of the run, gradient clipping, min-SNR-γ
weighting and a power-law EMA of the weights (used for sampling).

Exact resume: the data order is a function of (seed, epoch, offset) (:mod:`training.batching`), t and ε come from
a generator whose state is checkpointed, the LR and EMA decay are functions of the step (and of the training
clock under ``--max-minutes``), and :class:`~training.state.TrainState` holds everything else — so a run killed at
any step and resumed ends bit-identical (on CPU) to one never interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.contrib.logging import logging_redirect_tqdm

from common.checkpoint import FORMAT, load_checkpoint, remove_stale_temp_files, save_checkpoint
from common.device import resolve_device
from common.run_lock import RunLock
from dataset import BadImageError, load_training_set
from models import UNetConfig
from scheduler import DiffusionConfig, LinearNoiseScheduler
from training.batching import BatchSource, derived_seed, epoch_end_offset, rank_slice
from training.config import TrainConfig
from training.monitor import (
    Monitor,
    ProgressVisualizer,
    assemble_gif,
    draw_final_samples,
    log_where_things_are,
    write_config_json,
)
from training.runtime import DistContext, PeerSetupError, Performance, resolve_performance, to_memory_format
from training.state import TrainState, check_resumable, check_same_model

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
    state: TrainState | None = None  # the trained model, EMA and optimizer, for callers that go on using them


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
    its ε-prediction form): the easy low-noise steps count less. Under ``torch.autocast`` only the model runs in
    reduced precision; x_t and the loss are computed in fp32."""
    x_t = scheduler.add_noise(x0, eps, t)
    eps_pred = model(x_t, t) if context is None else model(x_t, t, context=context)
    if min_snr_gamma is None:
        return torch.nn.functional.mse_loss(eps_pred.float(), eps)
    per_sample = (eps_pred.float() - eps).pow(2).flatten(1).mean(1)  # [B]
    snr = scheduler.alphas_cumprod[t] / (1.0 - scheduler.alphas_cumprod[t])
    return (per_sample * snr.clamp(max=min_snr_gamma) / snr).mean()


@dataclass(frozen=True)
class StepContext:
    """What every step uses and no checkpoint holds: the schedule, the forward pass (the model, or its DDP /
    compiled wrapper), precision, this rank's share of the global batch, and the loss."""

    scheduler: LinearNoiseScheduler
    forward: Callable
    perf: Performance
    rank: int = 0
    world_size: int = 1
    grad_clip: float | None = 1.0
    cond_drop: float | None = None  # a conditional run: probability of the null label
    min_snr_gamma: float | None = None
    loss_fn: Callable = l_simple

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        return rank_slice(batch, self.rank, self.world_size)


def train_step(state: TrainState, x0: torch.Tensor, labels: torch.Tensor, lr: float,
               ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """One iteration of Algorithm 1 on this rank's rows of the global batch; returns (loss, gradient norm).

    t, ε (and the label drops of classifier-free guidance) are drawn for the *global* batch from
    ``state.noise_gen`` and sliced like the images, so W ranks see the noise one process with batch W·B would.
    A NaN/inf gradient raises TrainingDiverged before it reaches the weights (under fp16 the scaler skips it)."""
    n = x0.shape[0] * ctx.world_size
    t = ctx.share(ctx.scheduler.sample_timesteps(n, generator=state.noise_gen, device=x0.device))
    eps = ctx.share(torch.randn((n, *x0.shape[1:]), generator=state.noise_gen, device=x0.device))
    context = None
    if ctx.cond_drop is not None:  # learn ε(x_t, t, ∅) on the dropped labels
        u = ctx.share(torch.rand(n, generator=state.noise_gen, device=x0.device))
        context = state.model.label_context(state.model.label_embedding.drop_labels(labels, ctx.cond_drop, noise=u))
    with ctx.perf.autocast(x0.device):
        loss = ctx.loss_fn(ctx.forward, ctx.scheduler, to_memory_format(x0, ctx.perf), t, eps, context,
                           ctx.min_snr_gamma)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.unscale_(state.optimizer)  # a no-op without fp16 loss scaling
    params = list(state.model.parameters())
    grad_norm = (torch.nn.utils.clip_grad_norm_(params, ctx.grad_clip) if ctx.grad_clip is not None
                 else torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
    if not torch.isfinite(grad_norm) and not state.scaler.is_enabled():
        what = f"loss is {loss.item()}" if not torch.isfinite(loss) else f"gradient norm is {grad_norm.item()}"
        raise TrainingDiverged(f"{what} at step {state.step + 1} (epoch {state.epoch + 1})")
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.ema.update(state.model, state.step)
    state.step, state.offset = state.step + 1, state.offset + n
    return loss.detach(), grad_norm


def train(config: TrainConfig, model_config: UNetConfig, diffusion_config: DiffusionConfig,
          resume_from: str | Path | None = None, dataset=None, distributed: DistContext | None = None,
          loss_fn: Callable = l_simple) -> TrainResult:
    """Train (or resume) a DDPM as ``config`` says; writes everything under ``config.task_name``.

    ``dataset`` replaces ``config.data_path`` (a :class:`~training.batching.BatchSource` dataset); ``distributed``
    comes from :func:`training.runtime.setup_distributed` (``None``: one process); ``loss_fn`` is a seam for tests
    that inject failures. User errors (a bad checkpoint, data or folder) raise before any training."""
    ctx = distributed if distributed is not None else DistContext(device=resolve_device(config.device))
    with contextlib.ExitStack() as cleanup:  # releases the run lock and closes the monitor however train() ends
        run = _set_up(config, model_config, diffusion_config, resume_from, dataset, ctx, loss_fn, cleanup)
        state, batches, monitor = run.state, run.batches, run.monitor
        end_offset = epoch_end_offset(batches.num_samples, batches.global_batch_size)
        total_steps = config.num_epochs * batches.steps_per_epoch
        last_step = min(total_steps, config.max_steps or total_steps)
        max_seconds = 60 * config.max_minutes if config.max_minutes is not None else math.inf
        logger.info("training %s on %s: %d images, %d steps/epoch, until %s; run folder %s", config.model,
                    ctx.device, batches.num_samples, batches.steps_per_epoch, _horizon(config, last_step),
                    config.run_dir)

        def save(reason: str) -> int:
            if ctx.is_main:
                save_checkpoint(config.ckpt_path, {**run.header, **state.state_dict()})
                monitor.saved()
                logger.info("checkpoint %s at step %d (%s)", config.ckpt_path, state.step, reason)
            return state.step

        # ------------------------------------------------------------ Algorithm 1
        last_saved = state.step if run.resumed else None
        stop_reason = _end_reached(state, last_step, total_steps, config.num_epochs, state.clock > max_seconds)
        t0, clock0, lr = time.perf_counter(), state.clock, math.nan
        state.model.train()
        try:
            with _StopFlag() as stop, logging_redirect_tqdm():
                while stop_reason is None:
                    monitor.start_epoch(state, batches.global_batch_size)
                    for x0, labels in batches(state.epoch, state.offset):
                        lr = lr_at(state.step, run_progress(state.step, last_step, state.clock, max_seconds), config)
                        loss, grad_norm = train_step(state, x0, labels, lr, run.step_ctx)
                        state.clock = clock0 + time.perf_counter() - t0
                        # one all-reduce: the global mean loss, and whether any rank must stop after this step
                        loss_value, (interrupted, out_of_time) = ctx.reduce_step(loss, stop.requested,
                                                                                 state.clock > max_seconds)
                        if not math.isfinite(loss_value):
                            raise TrainingDiverged(f"loss is {loss_value} at step {state.step} (epoch "
                                                   f"{state.epoch + 1})")
                        monitor.step(state, loss_value, float(grad_norm), x0.shape[0] * ctx.world_size, lr)
                        stop_reason = _end_reached(state, last_step, total_steps, config.num_epochs, out_of_time,
                                                   interrupted)
                        if stop_reason is not None:
                            monitor.flush(state, lr)  # the partial interval, so metrics.csv reaches the checkpoint
                            break
                        if state.step % config.ckpt_every == 0 and state.offset < end_offset:  # epoch ends save anyway
                            last_saved = save("every --ckpt-every steps")
                    monitor.end_epoch(state, complete=state.offset >= end_offset)
                    if state.offset >= end_offset:
                        state.epoch, state.offset = state.epoch + 1, 0
                        if stop_reason is None and state.epoch < config.num_epochs:
                            last_saved = save(f"end of epoch {state.epoch}")
        except BadImageError:  # a damaged file met mid-epoch (--no-cache): keep the steps done before it
            if last_saved != state.step:
                save("before stopping at a damaged image")
            raise
        except TrainingDiverged as err:
            kept = (f"the last good checkpoint {config.ckpt_path} (step {last_saved}) is kept; resume from it with "
                    "--resume, perhaps with a lower --lr or --grad-clip" if last_saved is not None
                    else "no checkpoint had been written yet")
            raise TrainingDiverged(f"{err}; stopping. {kept}") from None

        # ------------------------------------------------------------ teardown
        if last_saved != state.step:
            save({"completed": "end of training", "max_steps": "reached --max-steps", "max_minutes":
                  "reached --max-minutes", "interrupted": "interrupted"}[stop_reason])
        grid = None
        if ctx.is_main:
            if config.viz_save:
                assemble_gif(config.run_dir / "viz")
            if config.final_samples and stop_reason != "interrupted":
                grid = draw_final_samples(state.ema.model, run.step_ctx.scheduler, config.final_samples,
                                          state.model.config, config.run_dir / "samples", config.seed, ctx.device)
                if monitor.tb is not None:
                    monitor.tb.image("samples", grid, state.step)
        ctx.barrier()  # return once rank 0's files are complete, e.g. for a resume in the same program
        logger.info("stopped (%s) at step %d, %d epoch(s) complete; last loss %.4f", stop_reason, state.step,
                    state.epoch, monitor.last_loss)
        if ctx.is_main:
            log_where_things_are(config, grid, stop_reason)
        return TrainResult(state.step, state.epoch, monitor.last_loss, stop_reason, config.ckpt_path, state)


@dataclass
class _Run:
    """What :func:`_set_up` hands the loop."""

    state: TrainState
    batches: BatchSource
    monitor: Monitor
    step_ctx: StepContext
    header: dict  # the checkpoint's keys besides the state: format, configs, data size, world size, class names
    resumed: bool


def _set_up(config: TrainConfig, model_config: UNetConfig, diffusion_config: DiffusionConfig,
            resume_from: str | Path | None, dataset, ctx: DistContext, loss_fn: Callable,
            cleanup: contextlib.ExitStack) -> _Run:
    """Lock the run folder, read the checkpoint to resume and the data, build the state, and agree with the other
    ranks that all of this worked; user errors raise here, before any training."""
    perf = resolve_performance(config.precision, config.compile, config.channels_last, ctx.device)
    try:
        if ctx.is_main:  # the one process that writes
            cleanup.enter_context(RunLock(config.run_dir))
            _refuse_to_replace(config.ckpt_path, resume_from, config.overwrite)
            remove_stale_temp_files(config.ckpt_path)
        ckpt = None
        if resume_from is not None:  # read first: a bad checkpoint fails before the data is loaded
            ckpt = load_checkpoint(resume_from)  # every rank, to the CPU (RNG states must stay CPU tensors)
            check_resumable(ckpt, str(resume_from), config, model_config, diffusion_config, ctx.world_size)
        init = None
        if config.init_from is not None and ckpt is None:  # a fine-tune starts here; its resume has its own weights
            init = load_checkpoint(config.init_from)
            check_same_model(init, config.init_from, model_config, diffusion_config)
        if dataset is None:
            dataset = load_training_set(config.data_path, config.extensions, config.channels, config.image_size,
                                        config.cache, config.skip_bad)
        model_config = _fit_model_to_data(model_config, dataset, config, ckpt if ckpt is not None else init)
        batches = BatchSource(dataset, config.batch_size, config.seed, ctx.device,
                              config.num_workers == 0 and hasattr(dataset, "as_tensors") and config.cache,
                              config.num_workers, ctx.rank, ctx.world_size)
        state = TrainState.create(config, model_config, ctx.device, perf)
        if ckpt is not None:
            state.load_state_dict(ckpt, str(resume_from))
            _log_resume(ckpt, resume_from, state, batches)
        elif init is not None:
            state.init_weights(init, config.init_from)
            logger.info("initialised θ and its EMA from %s (step %s of its run); the optimizer, lr schedule and step "
                        "count start afresh", config.init_from, init.get("step"))
        scheduler = LinearNoiseScheduler.from_config(diffusion_config, device=ctx.device)
        monitor = Monitor(config, ctx.is_main, state.step if ckpt is not None else None, batches.steps_per_epoch,
                          _visualizer(config, ctx, scheduler, batches, diffusion_config))
        cleanup.callback(monitor.close)
        ctx.agree()  # every rank got here: raises PeerSetupError if another failed
    except Exception as err:
        if not isinstance(err, PeerSetupError):
            ctx.all_ok(False)  # this rank failed in setup: the others, waiting in ctx.agree(), fail too
        raise
    header = {"format": FORMAT, "model_config": model_config.to_dict(), "diffusion_config": diffusion_config.to_dict(),
              "train_config": config.to_dict(), "num_samples": batches.num_samples, "world_size": ctx.world_size,
              "class_names": [str(c) for c in getattr(dataset, "classes", [])] or None}
    if ctx.is_main:
        write_config_json(config.run_dir / "config.json",
                          _resolved_config(config, header, ctx, perf, state, resume_from))
    if batches.num_samples < batches.global_batch_size:
        logger.warning("the global batch of %d is more than the %d images: each step trains on all %d",
                       batches.global_batch_size, batches.num_samples, batches.num_samples)
    logger.info("device %s, world size %d, batch %d per rank × %d = %d global, precision %s, compile %s, "
                "channels_last %s, %d CPU thread(s) per rank", ctx.device, ctx.world_size, config.batch_size,
                ctx.world_size, batches.global_batch_size, perf.precision, perf.compile, perf.channels_last,
                torch.get_num_threads())
    forward = state.model  # computes ε_θ in the step; the state, EMA and optimizer stay with the model itself
    if ctx.enabled:  # broadcasts rank 0's weights, then averages gradients in backward
        forward = DistributedDataParallel(forward, device_ids=[ctx.device.index] if ctx.device.type == "cuda"
                                          else None)
    step_ctx = StepContext(scheduler, torch.compile(forward) if perf.compile else forward, perf, ctx.rank,
                           ctx.world_size, config.grad_clip, config.cond_drop if config.conditional else None,
                           config.min_snr_gamma if config.loss_weighting == "min-snr" else None, loss_fn)
    return _Run(state, batches, monitor, step_ctx, header, ckpt is not None)


def _horizon(config: TrainConfig, last_step: int) -> str:
    """The run's end in words: a time budget alone has no meaningful last step."""
    ends = [] if config.epoch_limit is None and config.max_steps is None else [f"step {last_step}"]
    return " or ".join(ends + ([f"{config.max_minutes:g} minutes"] if config.max_minutes else []))


def _end_reached(state: TrainState, last_step: int, total_steps: int, num_epochs: int, out_of_time: bool,
                 interrupted: bool = False) -> str | None:
    """Why the run stops now, or None to go on."""
    if state.step >= last_step or state.epoch >= num_epochs:
        return "completed" if state.step >= total_steps or state.epoch >= num_epochs else "max_steps"
    return "max_minutes" if out_of_time else "interrupted" if interrupted else None


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


def _fit_model_to_data(model_config: UNetConfig, dataset, config: TrainConfig, ckpt: dict | None) -> UNetConfig:
    """The model config with the data's image size recorded (sampling draws that size), checked against the data
    and the checkpoint being resumed."""
    if config.conditional != model_config.conditional:
        raise ValueError(f"TrainConfig.conditional={config.conditional} but the model config has num_classes="
                         f"{model_config.num_classes}: a class-conditional run needs a model with num_classes")
    if model_config.context_dim is not None and not model_config.conditional:
        raise ValueError(f"context_dim={model_config.context_dim} without num_classes: the trainer can only provide "
                         "class labels as context")
    C, H, W = tuple(dataset[0][0].shape)
    where = config.data_path
    if H != W:
        raise ValueError(f"{where} holds {H}×{W} images; the model needs square ones: pass --image-size N to "
                         "resize them")
    if C != model_config.im_channels:
        raise ValueError(f"{where} gives {C}-channel images but the model expects {model_config.im_channels}; "
                         "pass --channels to match")
    saved = ckpt["model_config"].get("image_size") if ckpt is not None else None
    if saved not in (None, H):
        raise ValueError(f"the checkpoint was trained on {saved}×{saved} images, this data is {H}×{H}: use "
                         f"the same data or pass --image-size {saved}")
    if model_config.image_size not in (None, H):
        raise ValueError(f"the model is configured for {model_config.image_size}×{model_config.image_size} images "
                         f"but {where} gives {H}×{H}")
    classes = getattr(dataset, "classes", None)
    if config.conditional and classes is not None and len(classes) != model_config.num_classes:
        raise ValueError(f"{where} has {len(classes)} classes {classes} but the model is built for num_classes="
                         f"{model_config.num_classes}; pass --num-classes {len(classes)}")
    return dataclasses.replace(model_config, image_size=H)  # validates: H must survive the down-samples


def _log_resume(ckpt: dict, source: str | Path, state: TrainState, batches: BatchSource) -> None:
    if ckpt["num_samples"] != batches.num_samples:
        logger.warning("%s was trained on %d images, this dataset has %d: the data order differs from the original "
                       "run from here on", source, ckpt["num_samples"], batches.num_samples)
    if state.offset >= epoch_end_offset(batches.num_samples, batches.global_batch_size):
        state.epoch, state.offset = state.epoch + 1, 0
    logger.info("resumed from %s at step %d (epoch %d, %d samples into it)", source, state.step, state.epoch + 1,
                state.offset)


def _visualizer(config: TrainConfig, ctx: DistContext, scheduler: LinearNoiseScheduler, batches: BatchSource,
                diffusion_config: DiffusionConfig) -> ProgressVisualizer | None:
    if not (ctx.is_main and (config.viz_save or config.viz_live)):
        return None
    images, labels = batches.fixed_batch(config.viz_num, config.seed)
    return ProgressVisualizer(scheduler, images, config.resolved_viz_t(diffusion_config.num_timesteps),
                              derived_seed(config.seed, 3), config.run_dir / "viz", config.viz_save, config.viz_live,
                              labels)


def _resolved_config(config: TrainConfig, header: dict, ctx: DistContext, perf: Performance, state: TrainState,
                     resume_from: str | Path | None) -> dict:
    return {
        "train": config.to_dict(),
        "model": header["model_config"],
        "diffusion": header["diffusion_config"],
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "global_batch_size": config.batch_size * ctx.world_size,
        "performance": perf.to_dict(),
        "num_threads": torch.get_num_threads(),
        "num_parameters": state.model.num_parameters(),
        "resumed_from": str(resume_from) if resume_from is not None else None,
        "torch_version": torch.__version__,
    }
