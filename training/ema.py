"""Exponential moving average of a model's weights, used for sampling and visualisation.

    θ_ema ← d · θ_ema + (1 − d) · θ,   d = min(decay, (1 + step) / (10 + step))

The warm-up of d lets the average follow the fast early changes of the weights instead of remembering the
random initialisation for ~1/(1 − decay) steps (the schedule of TensorFlow's ExponentialMovingAverage
with ``num_updates``, also used by improved-diffusion's predecessors).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float) -> float:
    """The decay used for the update after optimizer step ``step`` (0-based)."""
    return min(decay, (1.0 + step) / (10.0 + step))


class EMA:
    """A frozen copy of ``model`` whose parameters track the average of ``model``'s.

    Args:
        model: the model being trained; the copy is made now (same device and dtype).
        decay: the long-run decay in [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        """Move the average towards ``model``'s current weights; returns the decay d used."""
        d = ema_decay_at(step, self.decay)
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
