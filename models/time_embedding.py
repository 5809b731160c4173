"""Sinusoidal timestep embedding (Vaswani et al., 2017, as used by Ho et al., 2020) and its MLP."""

from __future__ import annotations

import torch
from torch import nn


def get_time_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` (float32) of timesteps ``t [B]`` (any numeric dtype), ``dim`` even:

    emb[:, i]         = sin(t / max_period^(2i/dim))   for i < dim/2
    emb[:, dim/2 + i] = cos(t / max_period^(2i/dim))

    so at t = 0 the sin half is 0 and the cos half is 1.
    """
    if dim % 2 != 0 or dim < 2:
        raise ValueError(f"time embedding dimension must be a positive even number, got {dim}")
    half = dim // 2
    # 1 / max_period^(2i/dim), i = 0 … dim/2 − 1
    inv_freq = torch.exp(-torch.log(torch.tensor(max_period)) * torch.arange(half, dtype=torch.float32) * 2 / dim)
    angles = t.to(torch.float32)[:, None] * inv_freq.to(t.device)[None, :]  # (B, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class TimeEmbedding(nn.Module):
    """t ↦ MLP(sinusoid(t)): ``[B]`` integer timesteps → ``[B, dim]`` features for every residual block."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(get_time_embedding(t, self.dim))
