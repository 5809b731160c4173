"""Multi-head self- and cross-attention over token sequences ``[B, N, C]``.

The fast path is ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels on CPU and GPU);
when the per-head weights are asked for (to draw them), the same softmax(QKᵀ/√d)·V is computed explicitly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(QKᵀ/√d [+ causal mask: query i sees keys j ≤ i]) · V for q ``(B, h, Nq, d)``, k, v ``(B, h, Nk, d)``.

    Returns ``(out (B, h, Nq, d), weights (B, h, Nq, Nk) if return_weights else None)``.
    """
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"a causal mask needs as many queries as keys, got {q.shape[-2]} and {k.shape[-2]}")
    if not return_weights:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal), None
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, h, Nq, Nk)
    if causal:
        n = q.shape[-2]
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(diagonal=1)
        scores = scores.masked_fill(mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def _check_heads(dim: int, num_heads: int) -> None:
    if num_heads < 1 or dim % num_heads != 0:
        raise ValueError(f"attention width {dim} must be divisible by num_heads={num_heads} (num_heads >= 1)")


class MultiHeadSelfAttention(nn.Module):
    """Tokens attend to each other: ``[B, N, dim] → [B, N, dim]``, optionally causally masked."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, causal: bool = False, return_weights: bool = False):
        """Returns ``out`` or, with ``return_weights``, ``(out, weights (B, h, N, N))``."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out, weights = attention(q, k, v, causal, return_weights)
        out = self.proj(out.transpose(1, 2).reshape(B, N, C))  # (B, h, N, d) → (B, N, C)
        return (out, weights) if return_weights else out


class MultiHeadCrossAttention(nn.Module):
    """Queries from ``x [B, N, dim]`` attend to ``context [B, M, context_dim]`` (any M, any width)."""

    def __init__(self, dim: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.context_dim = context_dim
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, return_weights: bool = False):
        """Returns ``out`` or, with ``return_weights``, ``(out, weights (B, h, N, M))``."""
        B, N, C = x.shape
        if context.dim() != 3 or context.shape[0] != B or context.shape[-1] != self.context_dim:
            raise ValueError(f"context must have shape [B={B}, M, context_dim={self.context_dim}], "
                             f"got {tuple(context.shape)}")
        M, h = context.shape[1], self.num_heads
        q = self.q(x).view(B, N, h, C // h).transpose(1, 2)  # (B, h, N, d)
        k, v = self.kv(context).view(B, M, 2, h, C // h).permute(2, 0, 3, 1, 4)  # each (B, h, M, d)
        out, weights = attention(q, k, v, False, return_weights)
        out = self.proj(out.transpose(1, 2).reshape(B, N, C))
        return (out, weights) if return_weights else out
