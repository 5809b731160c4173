"""What every sampler step shares: validated inputs and timesteps, per-timestep coefficients broadcast over a
batch of images (one way to gather them), Gaussian noise drawn reproducibly, and the few-step samplers' base."""

from __future__ import annotations

import torch


def as_timestep_tensor(t: torch.Tensor | int, batch_size: int, num_timesteps: int, device) -> torch.Tensor:
    """``t`` (an int or 0-d tensor for the whole batch, or a ``[batch_size]`` tensor) as a validated ``[batch_size]``
    LongTensor on ``device``."""
    if isinstance(t, bool):
        raise ValueError(f"timestep must be an int or a LongTensor, got {t!r}")
    if isinstance(t, int):
        t = torch.full((batch_size,), t, dtype=torch.long, device=device)
    elif isinstance(t, torch.Tensor):
        if t.is_floating_point() or t.is_complex():
            raise ValueError(f"timesteps must be integers, got a tensor of dtype {t.dtype}")
        if t.dim() == 0:
            t = t.expand(batch_size)
        if t.dim() != 1 or t.shape[0] != batch_size:
            raise ValueError(f"timesteps must have shape [{batch_size}] to match the batch, got {tuple(t.shape)}")
        t = t.to(device=device, dtype=torch.long)
    else:
        raise ValueError(f"timestep must be an int or a LongTensor, got {type(t).__name__}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_timesteps):
        raise ValueError(f"timesteps must lie in [0, {num_timesteps - 1}], got min {int(t.min())}, max {int(t.max())}")
    return t


def extract(coeffs: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``coeffs[t]`` reshaped to ``[B, 1, ..., 1]`` so it broadcasts against ``x`` of shape ``[B, ...]``.

    The coefficients keep their float32 dtype, so the schedule's arithmetic stays in fp32 even when
    ``x`` is bf16/fp16 (the product promotes).
    """
    if coeffs.device != x.device:
        raise ValueError(f"the schedule lives on {coeffs.device} but the images are on {x.device}; "
                         "move the scheduler with scheduler.to(device)")
    return coeffs[t].view(t.shape[0], *([1] * (x.dim() - 1)))


def draw_noise(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, device: torch.device | str,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """z ~ N(0, I) of ``shape``, drawn on the generator's device and then moved to ``device``: a CPU generator
    gives the same numbers whatever device the model runs on (torch cannot draw with another device's generator).
    """
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def check_same_shape(tensor: torch.Tensor, name: str, x: torch.Tensor, x_name: str = "x_t") -> None:
    if tensor.shape != x.shape:
        raise ValueError(f"{name} shape {tuple(tensor.shape)} must equal {x_name} shape {tuple(x.shape)}")


def step_noise(x_t: torch.Tensor, generator: torch.Generator | None, noise: torch.Tensor | None) -> torch.Tensor:
    """z for a stochastic step from ``x_t``: ``noise`` itself (checked, moved to x_t's device) or drawn."""
    if noise is None:
        return draw_noise(x_t.shape, generator, x_t.device, x_t.dtype)
    check_same_shape(noise, "noise", x_t)
    return noise.to(x_t.device)


class FewStepSampler:
    """Base of the samplers that step over S of a trained DDPM's T timesteps: they keep the DDPM schedule as
    ``base`` and move with it; ``_tables`` names their own tensors (None allowed) that :meth:`to` moves too."""

    _tables: tuple[str, ...] = ()
    base: object

    @property
    def device(self) -> torch.device:
        return self.base.device

    def to(self, device: str | torch.device):
        """Move the DDPM schedule and this sampler's tables to ``device``; return ``self``."""
        self.base.to(device)
        for name in self._tables:
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self
