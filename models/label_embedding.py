"""Class labels as context tokens for cross-attention, with a learned "null" label for classifier-free
guidance (Ho & Salimans, 2022, https://arxiv.org/abs/2207.12598)."""

from __future__ import annotations

import torch
from torch import nn


class LabelEmbedding(nn.Module):
    """``[B]`` labels in ``{0, …, num_classes}`` → ``[B, num_tokens, context_dim]`` tokens.

    Label ``num_classes`` is the null label: the "no condition" the network learns when labels are dropped
    during training, and the unconditional branch ε(x_t, ∅) of guided sampling.
    """

    def __init__(self, num_classes: int, context_dim: int, num_tokens: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_tokens = num_tokens
        self.context_dim = context_dim
        self.table = nn.Embedding(num_classes + 1, num_tokens * context_dim)
        nn.init.normal_(self.table.weight, std=0.02)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() != 1:
            raise ValueError(f"labels must have shape [B], got {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}] (or {self.num_classes} for the null "
                             f"label), got min {int(labels.min())}, max {int(labels.max())}")
        return self.table(labels).view(labels.shape[0], self.num_tokens, self.context_dim)

    def drop_labels(self, labels: torch.Tensor, p_drop: float, generator: torch.Generator | None = None,
                    noise: torch.Tensor | None = None):
        """Replace each label by the null label with probability ``p_drop`` (classifier-free training).

        Label i is dropped where u_i < ``p_drop``, u ~ U[0, 1) drawn from ``generator`` — or given as ``noise``
        (shape ``[B]``), e.g. a slice of the draws for a larger batch (data-parallel training)."""
        if noise is None:
            device = generator.device if generator is not None else labels.device
            noise = torch.rand(labels.shape, generator=generator, device=device)
        elif noise.shape != labels.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} must equal labels shape {tuple(labels.shape)}")
        drop = noise.to(labels.device) < p_drop
        return torch.where(drop, torch.full_like(labels, self.null_label), labels)
