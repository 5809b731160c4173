"""Batched sampling loops: DDPM ancestral sampling (over all T steps or respaced to fewer), DDIM, and
DPM-Solver++(2M).

The noise predictor is any ``eps_fn(x_t [B, C, H, W], t LongTensor [B]) -> ε̂ [B, C, H, W]``: the plain model
itself or a guided mixture of model calls (:mod:`sampling.guidance`). Every sampler runs
:func:`run_chain`: x_T ~ N(0, I), then per timestep ``(x_prev, x0_pred) = step(x_t, ε̂, t, generator)`` with
``t`` an original timestep, so the model sees the timesteps it was trained on.

All noise (x_T and each step's z) comes from the one ``generator`` in a fixed order, batch by batch, so a run
repeats exactly for the same (seed, num_samples, batch_size, sampler settings) on the same device and torch
build. A CPU generator gives the same noise whatever device the model runs on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from common.progress import progress_bar
from scheduler import (
    SPACINGS,
    DDIMScheduler,
    DPMSolverPlusPlusScheduler,
    NoiseScheduler,
    RespacedDDPMScheduler,
    draw_noise,
)

logger = logging.getLogger(__name__)

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]

SAMPLERS = ("ddpm", "ddim", "dpm-solver++")
# Steps when SamplerConfig.num_steps is None, capped at the sampler's maximum; None for DDPM means all T steps.
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpm-solver++": 20}
# Used when no sampler is named: DDPM respaced to 50 steps had the lowest FID at <= 50 network calls
# (benchmarks/RESULTS.md).
DEFAULT_SAMPLER = "ddpm"
DEFAULT_SAMPLER_STEPS = 50


@dataclass(frozen=True)
class SamplerConfig:
    """Which reverse process to run: ``"ddpm"`` (Algorithm 2, over all T steps or respaced to ``num_steps``),
    ``"ddim"`` or ``"dpm-solver++"`` (2M), over ``num_steps`` = S network calls per image, in [1, T]
    (DPM-Solver++: [1, T−1]; None → :data:`DEFAULT_STEPS`).

    ``eta`` is DDIM's η and stays 0 for the others; ``spacing`` picks DDIM's and respaced DDPM's S timesteps
    (DPM-Solver++ always uses diffusers' rule); ``clip_x0`` clamps x̂0 for DDIM and DPM-Solver++ (DDPM's clamping
    is the scheduler's ``mean_from_clipped_x0``).
    """

    name: str = "ddpm"
    num_steps: int | None = None
    eta: float = 0.0
    spacing: str = "trailing"
    clip_x0: bool = True

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}; choose one of {SAMPLERS}")
        if self.num_steps is not None and (
            isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1
        ):
            raise ValueError(f"num_steps (--sample-steps) must be a positive int or None, got {self.num_steps!r}")
        if not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(f"eta (--eta) must lie in [0, 1], got {self.eta}")
        if self.name == "ddpm" and self.eta != 0.0:
            raise ValueError("eta only applies to DDIM; DDPM's reverse variance is fixed to β̃_t (use --sampler ddim)")
        if self.name == "dpm-solver++" and self.eta != 0.0:
            raise ValueError("eta only applies to DDIM; DPM-Solver++(2M) is a deterministic ODE solver")
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown timestep spacing {self.spacing!r}; choose one of {SPACINGS}")

    def describe(self, num_timesteps: int) -> str:
        """A short label: ``ddpm-1000`` (full), ``ddpm-250`` (respaced), ``ddim-50-eta0``, ``dpm-solver++-20``."""
        steps = self.resolved_steps(num_timesteps)
        if self.name == "ddim":
            return f"ddim-{steps}-eta{self.eta:g}"
        return f"{self.name}-{steps}"

    def resolved_steps(self, num_timesteps: int) -> int:
        """S, the number of steps (network calls per image) for a schedule of ``num_timesteps`` = T steps."""
        # DPM-Solver++'s S + 1 rounded linspace points repeat one for S = T, so it takes at most T − 1 steps.
        T = num_timesteps
        max_steps, bound = (max(T - 1, 1), f"T-1={T - 1}") if self.name == "dpm-solver++" else (T, f"T={T}")
        steps = self.num_steps
        if steps is None:
            steps = min(DEFAULT_STEPS[self.name] or max_steps, max_steps)
        if steps > max_steps:
            raise ValueError(f"{self.name} num_steps must lie in [1, {bound}], got {steps}")
        return steps


@dataclass
class Trajectory:
    """Snapshots of the reverse chain: ``t[k]`` is the timestep at frame k, ``x_t[k]`` the chain's state there
    and ``x0_pred[k]`` the clamped x̂0(x_t, t); the last frame (``t = -1``) is the final sample for both.
    Tensors are CPU float32 ``[frames, n, C, H, W]`` in model space (≈ [−1, 1]).
    """

    t: list[int]
    x_t: torch.Tensor
    x0_pred: torch.Tensor


@dataclass
class SampleResult:
    images: torch.Tensor  # [N, C, H, W] CPU float32, clamped to [−1, 1]
    trajectory: Trajectory | None
    sampler: str  # SamplerConfig.describe(T)
    num_function_evals: int  # ε_θ calls per image


def make_stepper(scheduler: NoiseScheduler, config: SamplerConfig) -> tuple[torch.Tensor, StepFn]:
    """The descending timesteps a sampler visits, and its step function ``(x_t, ε̂, t, generator) → (x_prev, x̂0)``."""
    T = scheduler.num_timesteps
    steps = config.resolved_steps(T)
    if config.name == "ddpm":
        if steps == T:
            return torch.arange(T - 1, -1, -1), scheduler.sample_prev_timestep
        respaced = RespacedDDPMScheduler(scheduler, steps, config.spacing)
        return respaced.timesteps.cpu(), respaced.step
    if config.name == "ddim":
        ddim = DDIMScheduler(scheduler, steps, config.eta, config.spacing, config.clip_x0)
        return ddim.timesteps.cpu(), ddim.step
    dpm = DPMSolverPlusPlusScheduler(scheduler, steps, clip_x0=config.clip_x0)
    return dpm.timesteps.cpu(), dpm.step


def _frame_positions(num_steps: int, num_frames: int) -> set[int]:
    """Indices (into the chain's steps) of ``num_frames`` snapshots spread evenly from the first step to the last
    (one frame: the first step; none for ``num_frames <= 0``)."""
    return {round(i * (num_steps - 1) / max(num_frames - 1, 1)) for i in range(num_frames)}


@torch.inference_mode()
def run_chain(eps_fn: EpsFn, x_T: torch.Tensor, timesteps: torch.Tensor, step: StepFn,
              generator: torch.Generator | None = None, trajectory_frames: int = 0, trajectory_images: int = 16,
              progress: tqdm | None = None) -> tuple[torch.Tensor, Trajectory | None]:
    """Run the reverse chain from ``x_T`` over ``timesteps`` (descending); return ``(x0 in [−1, 1], trajectory)``.
    ``progress`` is a bar to advance by one per step."""
    capture = _frame_positions(len(timesteps), trajectory_frames)
    frames_t: list[int] = []
    frames_x: list[torch.Tensor] = []
    frames_x0: list[torch.Tensor] = []
    x = x_T
    first_bad = torch.full((), -1, dtype=torch.long, device=x.device)  # on the device: no sync per step
    for i, t in enumerate(timesteps.tolist()):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = eps_fn(x, t_batch)
        x_prev, x0_pred = step(x, eps, t_batch, generator=generator)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(x_prev).all(), i, first_bad)
        if i in capture:
            frames_t.append(t)
            frames_x.append(x[:trajectory_images].float().cpu())
            frames_x0.append(x0_pred[:trajectory_images].clamp(-1, 1).float().cpu())
        x = x_prev
        if progress is not None:
            progress.update(1)
    if (i_bad := int(first_bad)) >= 0:
        raise NonFiniteSamplesError(
            f"sampling produced NaN/inf at step {i_bad + 1} of {len(timesteps)} (t = {int(timesteps[i_bad])}): the "
            "model's ε̂ or the schedule is broken (a diverged checkpoint, or a β schedule whose ᾱ underflows); "
            "nothing was written")
    x = x.clamp(-1.0, 1.0)
    trajectory = None
    if capture:
        final = x[:trajectory_images].float().cpu()
        trajectory = Trajectory(
            t=frames_t + [-1], x_t=torch.stack(frames_x + [final]), x0_pred=torch.stack(frames_x0 + [final])
        )
    return x, trajectory


class NonFiniteSamplesError(ValueError):
    """The reverse chain produced NaN or inf; saving the images would write black squares without a word."""


def sample_images(eps_fn: EpsFn | None, scheduler: NoiseScheduler, num_samples: int,
                  config: SamplerConfig | None = None, *, image_shape: tuple[int, int, int] = (1, 28, 28),
                  batch_size: int = 100, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None, trajectory_frames: int = 0, trajectory_images: int = 16,
                  progress: bool = True, batch_eps_fn: Callable[[int, int], EpsFn] | None = None) -> SampleResult:
    """Draw ``num_samples`` images ``[num_samples, *image_shape]`` in [−1, 1] in batches of ``batch_size``, on the
    scheduler's device (``device`` must match it).

    Pass either ``eps_fn`` or ``batch_eps_fn(start, stop)``, the noise predictor for samples ``start:stop``
    (per-sample conditioning: :func:`sampling.sample_model`). ``trajectory_frames > 0`` snapshots
    x_t and x̂0 at that many evenly spaced steps, for the first ``trajectory_images`` images of the first batch.
    """
    config = config if config is not None else SamplerConfig()
    if (eps_fn is None) == (batch_eps_fn is None):
        raise ValueError("pass exactly one of eps_fn and batch_eps_fn")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = scheduler.device if device is None else torch.empty(0, device=device).device  # "cuda" → "cuda:0"
    if scheduler.device != device:
        raise ValueError(f"the scheduler lives on {scheduler.device} but sampling on {device}; call scheduler.to()")
    timesteps, step = make_stepper(scheduler, config)
    label = config.describe(scheduler.num_timesteps)
    num_batches = -(-num_samples // batch_size)
    logger.info("sampling %d images with %s in %d batch(es) of <= %d on %s",
                num_samples, label, num_batches, batch_size, device)

    images, trajectory = [], None
    bar = progress_bar(total=num_batches * len(timesteps), desc=label, unit="step", disable=not progress)
    with bar, torch.inference_mode():
        for b in range(num_batches):
            start = b * batch_size
            stop = min(start + batch_size, num_samples)
            x_T = draw_noise((stop - start, *image_shape), generator, device)
            x0, traj = run_chain(eps_fn if eps_fn is not None else batch_eps_fn(start, stop), x_T, timesteps, step,
                                 generator, trajectory_frames=trajectory_frames if b == 0 else 0,
                                 trajectory_images=trajectory_images, progress=bar)
            images.append(x0.float().cpu())
            trajectory = traj if b == 0 else trajectory
    # Outside inference mode, clones are ordinary tensors (in-place edits and autograd work on them).
    if trajectory is not None:
        trajectory = Trajectory(trajectory.t, trajectory.x_t.clone(), trajectory.x0_pred.clone())
    return SampleResult(torch.cat(images).clone(), trajectory, label, len(timesteps))
