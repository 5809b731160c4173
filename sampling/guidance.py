"""Classifier-free guidance (Ho & Salimans, 2022, https://arxiv.org/abs/2207.12598).

One network trained with label dropout predicts both ε_θ(x_t, t, c) and ε_θ(x_t, t, ∅) (∅ = the null
label). Guided sampling mixes them:

    ε̃ = ε_θ(x_t, t, ∅) + w · (ε_θ(x_t, t, c) − ε_θ(x_t, t, ∅))

so w = 0 is the unconditional model, w = 1 the conditional one, and w > 1 trades diversity for class
fidelity. (The paper writes the same mixture as (1 + w′)ε_c − w′ε_∅ with w′ = w − 1.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sampling.sampler import EpsFn, SamplerConfig, SampleResult, sample_images

# The shipped conditional checkpoint's balance of label accuracy and FID (bench_guidance.py; README).
DEFAULT_GUIDANCE_SCALE = 1.15


def guided_eps_fn(model: nn.Module, labels: torch.Tensor, guidance_scale: float) -> EpsFn:
    """The guided noise predictor for a batch whose samples have class ``labels [B]``.

    w = 0 and w = 1 need one network evaluation; other scales evaluate the conditional and unconditional
    branches together as one batch of 2B.
    """
    if getattr(model, "label_embedding", None) is None:
        raise ValueError("this model is unconditional (trained without --conditional); it cannot take labels "
                         "or a guidance scale")
    w = float(guidance_scale)
    null = torch.full_like(labels, model.label_embedding.null_label)
    ctx_cond, ctx_null = model.label_context(labels), model.label_context(null)

    def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if w == 0.0:
            return model(x_t, t, context=ctx_null)
        if w == 1.0:
            return model(x_t, t, context=ctx_cond)
        both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), context=torch.cat([ctx_cond, ctx_null]))
        eps_cond, eps_null = both.chunk(2)
        return eps_null + w * (eps_cond - eps_null)

    return eps


def labels_in_rows(classes: Sequence[int], num_samples: int) -> torch.Tensor:
    """Assign ``classes`` to ``num_samples`` samples in equal consecutive blocks (class i fills the i-th
    ``num_samples / len(classes)`` samples), so a grid with ``len(classes)`` rows shows one class per row."""
    if not classes:
        raise ValueError("need at least one class label")
    k = len(classes)
    return torch.tensor([classes[i * k // num_samples] for i in range(num_samples)], dtype=torch.long)


def sample_model(model: nn.Module, scheduler, num_samples: int, config: SamplerConfig,
                 labels: torch.Tensor | None = None, guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                 **kwargs) -> SampleResult:
    """``num_samples`` images of the size the model records: unconditional, or for a class-conditional model
    with class ``labels [num_samples]`` under guidance scale w. ``kwargs`` go to :func:`sampling.sample_images`."""
    c = model.config
    size = c.image_size or 28  # checkpoints from before the size was recorded are MNIST
    eps_fn, batch_eps_fn = model, None
    if c.conditional:
        labels = labels.to(next(model.parameters()).device)
        eps_fn, batch_eps_fn = None, lambda start, stop: guided_eps_fn(model, labels[start:stop], guidance_scale)
    return sample_images(eps_fn, scheduler, num_samples, config, image_shape=(c.im_channels, size, size),
                         batch_eps_fn=batch_eps_fn, **kwargs)
