"""UNet building blocks: a time-conditioned residual block, spatial attention, and the down /
bottleneck / up stages built from them. Feature maps are ``[B, C, H, W]``; the time embedding is
``[B, t_emb_dim]``; an optional context for cross-attention is ``[B, M, context_dim]``."""

from __future__ import annotations

import torch
from torch import nn

from models.attention import MultiHeadCrossAttention, MultiHeadSelfAttention


class ResidualBlock(nn.Module):
    """GroupNorm → SiLU → Conv3×3, + Linear(SiLU(t_emb)), GroupNorm → SiLU → Conv3×3, + 1×1 skip."""

    def __init__(self, in_channels: int, out_channels: int, t_emb_dim: int, norm_groups: int = 8) -> None:
        super().__init__()
        self.block1 = nn.Sequential(
            nn.GroupNorm(norm_groups, in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(t_emb_dim, out_channels))
        self.block2 = nn.Sequential(
            nn.GroupNorm(norm_groups, out_channels), nn.SiLU(), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.time_proj(t_emb)[:, :, None, None]
        return self.block2(h) + self.skip(x)


class SpatialAttention(nn.Module):
    """Self-attention over the H·W positions of a feature map, then (if ``context_dim``) cross-attention
    to a context sequence; each pre-normalised and residual."""

    def __init__(self, channels: int, num_heads: int, norm_groups: int = 8, context_dim: int | None = None):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.self_attn = MultiHeadSelfAttention(channels, num_heads)
        self.context_dim = context_dim
        if context_dim is not None:
            self.cross_norm = nn.GroupNorm(norm_groups, channels)
            self.cross_attn = MultiHeadCrossAttention(channels, context_dim, num_heads)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        x = x + self.self_attn(tokens).transpose(1, 2).reshape(B, C, H, W)
        if self.context_dim is not None:
            if context is None:
                raise ValueError(f"this block cross-attends to a context of width {self.context_dim}; pass context")
            tokens = self.cross_norm(x).flatten(2).transpose(1, 2)
            x = x + self.cross_attn(tokens, context).transpose(1, 2).reshape(B, C, H, W)
        return x


class _Stage(nn.Module):
    """``num_layers`` × (ResidualBlock [→ SpatialAttention])."""

    def __init__(self, channels_in, channels_out, t_emb_dim, num_layers, attn, num_heads, norm_groups, context_dim):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResidualBlock(channels_in if i == 0 else channels_out, channels_out, t_emb_dim, norm_groups)
            for i in range(num_layers)
        )
        self.attns = nn.ModuleList(
            SpatialAttention(channels_out, num_heads, norm_groups, context_dim) for _ in range(num_layers)
        ) if attn else None

    def run(self, x: torch.Tensor, t_emb: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, t_emb)
            if self.attns is not None:
                x = self.attns[i](x, context)
        return x


class DownSamplingBlock(_Stage):
    """Residual (+ attention) layers at one resolution, then a stride-2 4×4 conv that halves H and W."""

    def __init__(self, in_channels: int, out_channels: int, t_emb_dim: int, down_sample: bool = True,
                 num_layers: int = 1, attn: bool = True, num_heads: int = 4, norm_groups: int = 8,
                 context_dim: int | None = None) -> None:
        super().__init__(in_channels, out_channels, t_emb_dim, num_layers, attn, num_heads, norm_groups, context_dim)
        self.downsample = nn.Conv2d(out_channels, out_channels, 4, stride=2, padding=1) if down_sample else None

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.downsample is not None and (x.shape[-2] % 2 or x.shape[-1] % 2):
            raise ValueError(f"cannot halve a {x.shape[-2]}×{x.shape[-1]} feature map exactly; use an input size "
                             "divisible by 2^(number of down-sampling levels) or set down_sample=False for this level")
        x = self.run(x, t_emb, context)  # (B, out, H, W)
        return self.downsample(x) if self.downsample is not None else x  # (B, out, H/2, W/2)


class BottleNeck(nn.Module):
    """Lowest resolution: ResidualBlock, then ``num_layers`` × (attention → ResidualBlock)."""

    def __init__(self, in_channels: int, out_channels: int, t_emb_dim: int, num_layers: int = 1,
                 num_heads: int = 4, norm_groups: int = 8, context_dim: int | None = None, attn: bool = True):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResidualBlock(in_channels if i == 0 else out_channels, out_channels, t_emb_dim, norm_groups)
            for i in range(num_layers + 1)
        )
        self.attns = nn.ModuleList(
            SpatialAttention(out_channels, num_heads, norm_groups, context_dim) for _ in range(num_layers)
        ) if attn else None

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.resnets[0](x, t_emb)
        for i, resnet in enumerate(self.resnets[1:]):
            if self.attns is not None:
                x = self.attns[i](x, context)
            x = resnet(x, t_emb)
        return x


class UpSamplingBlock(_Stage):
    """A transposed 4×4 stride-2 conv that doubles H and W, concatenation with the skip from the down
    path, then residual (+ attention) layers."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, t_emb_dim: int,
                 up_sample: bool = True, num_layers: int = 1, attn: bool = True, num_heads: int = 4,
                 norm_groups: int = 8, context_dim: int | None = None) -> None:
        super().__init__(in_channels + skip_channels, out_channels, t_emb_dim, num_layers, attn, num_heads,
                         norm_groups, context_dim)
        self.upsample = nn.ConvTranspose2d(in_channels, in_channels, 4, stride=2, padding=1) if up_sample else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor, t_emb: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)  # (B, in, 2H, 2W)
        if x.shape[-2:] != skip.shape[-2:]:
            raise ValueError(f"skip of size {tuple(skip.shape[-2:])} does not match upsampled {tuple(x.shape[-2:])}")
        return self.run(torch.cat([x, skip], dim=1), t_emb, context)  # (B, out, 2H, 2W)
