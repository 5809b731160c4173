"""Figures of the UNet's building blocks, each freshly initialised from ``seed`` (untrained): the time embedding,
self-/cross-attention weights, the down / bottleneck / up blocks and the whole UNet."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models import (
    BottleNeck,
    DownSamplingBlock,
    MultiHeadCrossAttention,
    MultiHeadSelfAttention,
    TimeEmbedding,
    UNet,
    UpSamplingBlock,
    get_time_embedding,
)
from visualization.plotting import new_figure, save_figure, seeded_init, show_map, symmetric_limit, to_numpy


# ---------------------------------------------------------------------------------------- time embedding
def time_embedding_figures(
    outdir: Path, timesteps: Sequence[int] = (0, 1, 10, 100), dim: int = 320, first: int = 64
) -> list[Path]:
    """``time_embedding_heatmap.png`` (all ``dim`` dimensions) and ``time_embedding_first64.png``."""
    t = torch.tensor(list(timesteps))
    emb = to_numpy(get_time_embedding(t, dim))  # (len(t), dim): sin half, then cos half
    labels = [f"t = {int(s)}" for s in timesteps]

    fig = new_figure(11, 3.2)
    ax = fig.add_subplot()
    im = ax.imshow(emb, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.axvline(dim / 2 - 0.5, color="k", lw=1, ls="--")
    ax.text(dim / 4, -0.6, "sin half", ha="center", va="bottom")
    ax.text(3 * dim / 4, -0.6, "cos half", ha="center", va="bottom")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel(f"embedding dimension (0 … {dim - 1})")
    ax.set_ylabel("timestep")
    ax.set_title(f"Sinusoidal time embedding, dim = {dim}: frequency falls from left to right in each half", pad=18)
    fig.colorbar(im, ax=ax, label="embedding value")
    paths = [save_figure(fig, outdir / "time_embedding_heatmap.png")]

    fig = new_figure(11, 6)
    top, bottom = fig.subplots(2, 1, height_ratios=(1, 1.4))
    im = top.imshow(emb[:, :first], aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    top.set_yticks(range(len(labels)), labels)
    top.set_xlabel("embedding dimension")
    top.set_ylabel("timestep")
    top.set_title(f"First {first} of {dim} dimensions (the fastest sines): each timestep gets its own pattern")
    fig.colorbar(im, ax=top, label="embedding value")
    dims = np.arange(first)
    for row, label in zip(emb[:, :first], labels):
        bottom.plot(dims, row, marker=".", lw=1, label=label)
    bottom.set_xlabel("embedding dimension")
    bottom.set_ylabel(f"sin(t · 10000^(−2i/{dim}))")
    bottom.set_ylim(-1.1, 1.1)
    bottom.set_xlim(-0.5, first - 0.5)
    bottom.grid(alpha=0.3)
    bottom.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=len(labels), frameon=False)
    bottom.set_title("Same values as curves: t = 0 is all zeros; larger t oscillates faster across dimensions")
    paths.append(save_figure(fig, outdir / "time_embedding_first64.png"))
    return paths


# ---------------------------------------------------------------------------------------- attention
def _tokens(num_tokens: int, dim: int, generator: torch.Generator, offset: int = 0) -> torch.Tensor:
    """``(1, N, dim)`` tokens: a sinusoidal position code (so neighbours look alike) plus a little noise."""
    pos = get_time_embedding(torch.arange(offset, offset + num_tokens), dim)
    return (3.0 * pos + 0.5 * torch.randn(num_tokens, dim, generator=generator))[None]


def self_attention_figures(
    outdir: Path, seed: int = 0, device: str | torch.device = "cpu", num_tokens: int = 12, dim: int = 64,
    num_heads: int = 2, heads: Sequence[int] = (0, 1),
) -> list[Path]:
    """``mhsa_head{h}.png``: the weights of one head without and with the causal mask, side by side."""
    with seeded_init(seed):
        attn = MultiHeadSelfAttention(dim, num_heads).to(device).eval()
    x = _tokens(num_tokens, dim, torch.Generator().manual_seed(seed)).to(device)
    with torch.no_grad():
        _, full = attn(x, causal=False, return_weights=True)  # (1, h, N, N)
        _, causal = attn(x, causal=True, return_weights=True)
    paths = []
    for h in heads:
        fig = new_figure(10, 4.4)
        names = ("no mask: every query sees every key", "causal mask: query i sees keys j ≤ i")
        for ax, weights, name in zip(fig.subplots(1, 2), (full, causal), names):
            show_map(ax, weights[0, h], name, cmap="magma", vmin=0, vmax=1,
                     colorbar="attention weight", xlabel="key token j", ylabel="query token i")
            ax.set_xticks(range(0, num_tokens, 2))
            ax.set_yticks(range(0, num_tokens, 2))
        fig.suptitle(f"MultiHeadSelfAttention, head {h} of {num_heads} ({num_tokens} tokens of width {dim}, "
                     "untrained): each row sums to 1")
        paths.append(save_figure(fig, outdir / f"mhsa_head{h}.png"))
    return paths


def cross_attention_figures(
    outdir: Path, seed: int = 0, device: str | torch.device = "cpu", num_tokens: int = 12, num_context: int = 6,
    dim: int = 64, context_dim: int = 32, num_heads: int = 2, heads: Sequence[int] = (0, 1),
) -> list[Path]:
    """``mhca_head{h}.png``: query tokens × context tokens weights of one head."""
    with seeded_init(seed):
        attn = MultiHeadCrossAttention(dim, context_dim, num_heads).to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    x = _tokens(num_tokens, dim, gen).to(device)
    context = _tokens(num_context, context_dim, gen, offset=num_tokens // 2).to(device)
    with torch.no_grad():
        _, weights = attn(x, context, return_weights=True)  # (1, h, N, M)
    paths = []
    for h in heads:
        fig = new_figure(6.4, 5.4)
        ax = fig.add_subplot()
        show_map(ax, weights[0, h], f"MultiHeadCrossAttention, head {h} of {num_heads} (untrained)\n"
                 f"{num_tokens} queries (width {dim}) × {num_context} context tokens (width {context_dim})",
                 cmap="magma", vmin=0, vmax=1, colorbar="attention weight (each row sums to 1)",
                 xlabel="context token j (key / value)", ylabel="query token i")
        ax.set_aspect("auto")
        ax.set_xticks(range(num_context))
        ax.set_yticks(range(num_tokens))
        paths.append(save_figure(fig, outdir / f"mhca_head{h}.png"))
    return paths


# ---------------------------------------------------------------------------------------- UNet blocks
def _feature_maps(channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``(1, channels, size, size)``: channel 0 is concentric rings on a diagonal ramp, in about [−1, 1], easy to
    follow through a block; the rest are random mixes of it, its mirror image and noise. The ring frequency
    scales with ``size`` (1.5 rings across 28 pixels), so small maps are not aliased."""
    coords = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    base = 0.7 * torch.cos(3 * math.pi * size / 28 * torch.sqrt(x**2 + y**2)) + 0.3 * (x + y) / 2
    mix = torch.randn(channels, 3, generator=generator)
    noise = torch.randn(channels, size, size, generator=generator)
    maps = mix[:, 0, None, None] * base + mix[:, 1, None, None] * base.flip(-1) + 0.3 * mix[:, 2, None, None] * noise
    maps[0] = base
    return maps[None]


def block_figures(
    outdir: Path, which: Sequence[str] = ("down", "bottleneck", "upsample"), seed: int = 0,
    device: str | torch.device = "cpu", t: int = 10, t_emb_dim: int = 64,
) -> list[Path]:
    """Channel 0 of each block's input(s) and output, with the tensor shapes in the titles. Each block draws its
    inputs from its own generator, so its figure does not depend on which other blocks are drawn."""
    # name: (block, its inputs as (title, channels, size), file name, suptitle)
    blocks = {
        "down": (lambda: DownSamplingBlock(16, 32, t_emb_dim, down_sample=True, num_heads=4),
                 [("input", 16, 28)], "downsample_block_channel0.png",
                 f"DownSamplingBlock(16 → 32 channels, t = {t}): residual + attention layer, then a stride-2 conv "
                 "halves H and W"),
        "bottleneck": (lambda: BottleNeck(64, 64, t_emb_dim, num_layers=1, num_heads=4),
                       [("input", 64, 7)], "bottleneck_block_channel0.png",
                       f"BottleNeck(64 channels, t = {t}): residual → attention → residual at the lowest resolution; "
                       "the shape is kept"),
        "upsample": (lambda: UpSamplingBlock(32, 16, 16, t_emb_dim, up_sample=True, num_heads=4),
                     [("input", 32, 14), ("skip (from the down path)", 16, 28)], "upsample_block_channel0.png",
                     f"UpSamplingBlock(32 + 16 skip → 16 channels, t = {t}): transposed conv doubles H and W, "
                     "concatenates the skip, then residual + attention"),
    }
    with seeded_init(seed), torch.no_grad():
        t_emb = TimeEmbedding(t_emb_dim).to(device)(torch.tensor([t], device=device))  # (1, t_emb_dim)
    paths = []
    for name in (name for name in blocks if name in which):
        make_block, inputs, filename, suptitle = blocks[name]
        with seeded_init(seed), torch.no_grad():
            block = make_block().to(device).eval()
            gen = torch.Generator().manual_seed(seed)
            xs = [_feature_maps(channels, size, gen).to(device) for _, channels, size in inputs]
            y = block(*xs, t_emb)
        panels = [(title, x) for (title, _, _), x in zip(inputs, xs)] + [("output", y)]
        limit = symmetric_limit(*(x[0, 0] for _, x in panels))  # one diverging scale for every panel
        fig = new_figure(4.6 * len(panels), 4.6)
        for ax, (title, x) in zip(fig.subplots(1, len(panels)), panels):
            show_map(ax, x[0, 0], f"{title} channel 0\nshape {tuple(x.shape)}", cmap="RdBu_r", vmin=-limit,
                     vmax=limit, colorbar="activation")
        fig.suptitle(suptitle)
        paths.append(save_figure(fig, outdir / filename))
    return paths


# ---------------------------------------------------------------------------------------- whole UNet
def rgb_gradient(size: int) -> torch.Tensor:
    """``(1, 3, size, size)`` in [−1, 1]: red grows left → right, green top → bottom, blue along the anti-diagonal."""
    ramp = torch.linspace(0, 1, size)
    y, x = torch.meshgrid(ramp, ramp, indexing="ij")
    rgb = torch.stack([x, y, 1 - (x + y) / 2])
    return (2 * rgb - 1)[None]


def unet_io_figure(
    outdir: Path, seed: int = 0, device: str | torch.device = "cpu", size: int = 28, t: int = 10
) -> Path:
    """``unet_io.png``: an RGB gradient through an untrained ``small`` UNet with 3 image channels at step t.

    Drawn with PyTorch's default init (``zero_init=False``): the training init starts ε_θ at exactly 0, which
    would show nothing of how the input travels through the network."""
    with seeded_init(seed):
        model = UNet.from_preset("small", im_channels=3, zero_init=False).to(device).eval()
    x = rgb_gradient(size).to(device)
    with torch.no_grad():
        eps = model(x, t)  # (1, 3, H, W): ε_θ(x_t, t)
    x, eps = to_numpy(x[0]), to_numpy(eps[0])
    limit = symmetric_limit(eps)

    fig = new_figure(17, 7.6)
    axes = fig.subplots(2, 4)
    axes[0, 0].imshow((x.transpose(1, 2, 0) + 1) / 2)
    axes[0, 0].set_title("input x_t as RGB\n([−1, 1] shown as [0, 1])")
    span = np.ptp(eps, axis=(1, 2), keepdims=True)
    axes[1, 0].imshow(((eps - eps.min(axis=(1, 2), keepdims=True)) / np.where(span > 0, span, 1)).transpose(1, 2, 0))
    axes[1, 0].set_title(f"output ε_θ(x_t, t = {t}) as RGB\n(each channel min–max scaled)")
    for ax in axes[:, 0]:
        ax.set_xlabel("x (pixel)")
        ax.set_ylabel("y (pixel)")
    for c, name in enumerate(("red", "green", "blue")):
        show_map(axes[0, c + 1], x[c], f"input channel {c} ({name})", cmap="RdBu_r", vmin=-1, vmax=1,
                 colorbar="pixel value")
        show_map(axes[1, c + 1], eps[c], f"output channel {c} ({name})", cmap="RdBu_r", vmin=-limit, vmax=limit,
                 colorbar="predicted ε")
    fig.suptitle("UNet.from_preset('small', im_channels=3, zero_init=False), untrained: "
                 f"input x_t of shape (1, 3, {size}, {size}) "
                 f"→ predicted noise ε_θ of the same shape (t = {t})")
    return save_figure(fig, outdir / "unet_io.png")
