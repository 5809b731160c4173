"""Exponential moving average of a model's weights, used for sampling and visualisation.

    θ_ema ← d_t · θ_ema + (1 − d_t) · θ,   d_t = min(decay, (1 − 1/t)^(γ+1)),   t = step + 1

The power-law decay (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models",
Eq. 3) averages over a fixed *fraction* of the run so far instead of a fixed number of steps: the average's
relative width σ_rel = √(γ+1) / ((γ+2) √(γ+3)) is 0.10 at γ = 6.94. A 3,000-step run then averages over its
last few hundred steps and a 50,000-step run over its last few thousand, so one setting serves short CPU runs
and long ones alike; ``decay`` caps d_t. d_1 = 0: the average starts as a copy of the weights, never as a
memory of the random initialisation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float, gamma: float) -> float:
    """d_t for the update after optimizer step ``step`` (0-based): min(decay, (1 − 1/(step+1))^(γ+1))."""
    return min(decay, (1.0 - 1.0 / (step + 1)) ** (gamma + 1.0))


class EMA:
    """A frozen copy of ``model`` whose parameters track the average of ``model``'s.

    Args:
        model: the model being trained; the copy is made now (same device and dtype).
        decay: the cap on d_t, in [0, 1).
        gamma: the power-law exponent γ >= 0 (larger: a shorter average).
    """

    def __init__(self, model: nn.Module, decay: float, gamma: float = 6.94) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        if not gamma >= 0.0:
            raise ValueError(f"EMA gamma must be >= 0, got {gamma}")
        self.decay, self.gamma = decay, gamma
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        """Move the average towards ``model``'s current weights; returns the decay d used."""
        d = ema_decay_at(step, self.decay, self.gamma)
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        # θ_ema + (1 − d)(θ − θ_ema) = d·θ_ema + (1 − d)·θ
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for ema_buf, buf in zip(self.model.buffers(), model.buffers()):
            ema_buf.copy_(buf)
        return d

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict, strict=True)
