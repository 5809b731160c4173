"""Figures of the diffusion process itself: the linear-β schedule, the forward process q(x_t | x0) on a
real digit, and (with a trained model) the reverse process along sampling."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sampling import Trajectory
from scheduler import LinearNoiseScheduler
from visualization.plotting import new_figure, save_figure, show_tiles, to_numpy

FORWARD_TIMESTEPS = (0, 50, 100, 250, 500, 750, 999)


def schedule_curves_figure(
    outdir: Path, scheduler: LinearNoiseScheduler, marks: Sequence[int] = FORWARD_TIMESTEPS
) -> Path:
    """``schedule_curves.png``: β_t and β̃_t; ᾱ_t, √ᾱ_t and √(1−ᾱ_t); the signal-to-noise ratio ᾱ_t/(1−ᾱ_t)."""
    t = np.arange(scheduler.num_timesteps)
    curve = {name: to_numpy(getattr(scheduler, name)).astype(np.float64) for name in (
        "betas", "posterior_variance", "alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod")}
    snr = curve["alphas_cumprod"] / (1.0 - curve["alphas_cumprod"])
    marks = [m for m in marks if 0 <= m < scheduler.num_timesteps]

    fig = new_figure(16, 4.4)
    left, middle, right = fig.subplots(1, 3)
    beta_label = "β̃_t = β_t (1−ᾱ_{t−1}) / (1−ᾱ_t)  (reverse step)"
    left.plot(t, curve["betas"], label="β_t  (variance added by forward step t)")
    left.plot(t, curve["posterior_variance"], ls="--", label=beta_label)
    left.set_ylabel("variance")
    left.set_title(f"β_t linear from {scheduler.beta_start:g} to {scheduler.beta_end:g}; β̃_t ≈ β_t")
    zoom = left.inset_axes((0.1, 0.45, 0.38, 0.35))  # the first steps, where β̃_t < β_t
    first = t[:21]
    zoom.plot(first, curve["betas"][first], marker=".", ms=3)
    zoom.plot(first, curve["posterior_variance"][first], ls="--", marker=".", ms=3)
    zoom.set_title("t ≤ 20: β̃_0 = 0 < β̃_t < β_t", fontsize=8)
    zoom.tick_params(labelsize=7)
    zoom.grid(alpha=0.3)
    middle.plot(t, curve["alphas_cumprod"], label="ᾱ_t = ∏ (1−β_s)")
    middle.plot(t, curve["sqrt_alphas_cumprod"], label="√ᾱ_t  (weight of x0)")
    middle.plot(t, curve["sqrt_one_minus_alphas_cumprod"], label="√(1−ᾱ_t)  (weight of ε)")
    middle.set_ylabel("coefficient")
    middle.set_ylim(-0.02, 1.02)
    middle.set_title("x_t = √ᾱ_t · x0 + √(1−ᾱ_t) · ε")
    right.semilogy(t, snr, color="tab:purple", label="SNR = ᾱ_t / (1−ᾱ_t)")
    right.axhline(1.0, color="k", lw=0.8, ls=":")
    right.set_ylabel("signal-to-noise ratio (log scale)")
    decades = math.log10(snr[0] / snr[-1])
    right.set_title(f"SNR falls {decades:.1f} orders of magnitude (dotted: SNR = 1)")
    for ax in (left, middle, right):
        for m in marks:
            ax.axvline(m, color="0.85", lw=0.8, zorder=0)
        ax.set_xlabel(f"timestep t (0 … {scheduler.num_timesteps - 1}); grey: the steps of forward_diffusion.png")
        ax.set_xlim(0, scheduler.num_timesteps - 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is left else "best", fontsize=8)
    return save_figure(fig, outdir / "schedule_curves.png")


def forward_diffusion_figure(
    outdir: Path, image: np.ndarray, scheduler: LinearNoiseScheduler,
    timesteps: Sequence[int] = FORWARD_TIMESTEPS, seed: int = 0,
) -> Path:
    """``forward_diffusion.png``: one ``(H, W)`` digit in [0, 1] noised by ``scheduler.add_noise`` with a single
    fixed ε at each of ``timesteps`` (top), and the histogram of its pixel values against N(0, 1) (bottom)."""
    x0 = torch.as_tensor(2.0 * np.asarray(image, dtype=np.float32) - 1.0)[None, None]  # (1, 1, H, W)
    x0 = x0.expand(len(timesteps), -1, -1, -1)
    eps = torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(seed)).expand_as(x0)  # one ε for every t
    x_t = to_numpy(scheduler.add_noise(x0, eps, torch.tensor(timesteps)))[:, 0]  # (len(t), H, W)
    abar = to_numpy(scheduler.alphas_cumprod)

    n = len(timesteps)
    fig = new_figure(2.3 * n + 1.2, 5.4)
    axes = fig.subplots(2, n, height_ratios=(1.25, 1))
    bins = np.linspace(-4, 4, 41)
    grid = np.linspace(-4, 4, 200)
    gauss = np.exp(-grid**2 / 2) / math.sqrt(2 * math.pi)
    for i, t in enumerate(timesteps):
        top, bottom = axes[0, i], axes[1, i]
        im = top.imshow(x_t[i], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        top.set_title(f"t = {t}\n√ᾱ={math.sqrt(abar[t]):.3f}, √(1−ᾱ)={math.sqrt(1 - abar[t]):.3f}", fontsize=9)
        top.set_xticks([])
        top.set_yticks([])
        bottom.hist(x_t[i].ravel(), bins=bins, density=True, color="tab:blue", alpha=0.7, label="pixels of x_t")
        bottom.plot(grid, gauss, "k--", lw=1, label="N(0, 1)")
        bottom.set_xlabel("pixel value")
        bottom.set_ylim(0, 1.0)
        if i == 0:
            top.set_ylabel("x_t (shown clipped to [−1, 1])")
            bottom.set_ylabel("density (y cut at 1)")
            bottom.legend(fontsize=7, loc="upper left")
        else:
            bottom.tick_params(labelleft=False)
    fig.colorbar(im, ax=axes[0, :], label="pixel value", shrink=0.9, pad=0.01)
    fig.suptitle(f"Forward process q(x_t | x0) with one fixed ε ({scheduler.num_timesteps} linear-β steps): "
                 "the digit fades into Gaussian noise")
    return save_figure(fig, outdir / "forward_diffusion.png")


def reverse_process_figure(
    outdir: Path, trajectory: Trajectory, title: str = "", sample_names: Sequence[str] | None = None
) -> Path:
    """``reverse_process.png``: for each sampled image (named by ``sample_names``, e.g. its class), a row of x_t
    and a row of the x̂0 predicted from it at the trajectory's steps (noisiest first), then the final sample."""
    steps = trajectory.t[:-1]
    frames, num_samples = trajectory.x_t.shape[:2]
    names = list(sample_names) if sample_names is not None else [f"#{s}" for s in range(num_samples)]
    x_t = to_numpy((trajectory.x_t[:, :, 0].clamp(-1, 1) + 1) / 2)  # (frames, n, H, W) in [0, 1]
    x0 = to_numpy((trajectory.x0_pred[:, :, 0].clamp(-1, 1) + 1) / 2)
    x0[-1] = np.nan  # the last frame is the final sample; show it once, in the x_t row
    tiles = np.stack([x_t, x0], axis=2).reshape(frames, 2 * num_samples, *x_t.shape[2:])  # rows: x_t, x̂0 of #0, …

    fig = new_figure(0.75 * frames + 2.4, 0.78 * 2 * num_samples + 1.6)
    ax = fig.add_subplot()
    im = show_tiles(ax, tiles.transpose(1, 0, 2, 3), [str(t) for t in steps] + ["final\nsample"],
                    [f"{name}: {row}" for name in names for row in ("x_t", "x̂0")])
    ax.set_xlabel(f"timestep t: sampling runs left to right, from pure noise (t = {steps[0]}) to the final sample")
    ax.set_title(title or "Reverse process: x_t and the x̂0 predicted from it along DDPM sampling")
    fig.colorbar(im, ax=ax, label="pixel value ((x + 1) / 2, clipped to [0, 1])", shrink=0.8)
    return save_figure(fig, outdir / "reverse_process.png")
