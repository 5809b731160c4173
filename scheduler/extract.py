"""What every sampler step shares: validated timesteps, per-timestep coefficients broadcast over a batch of
images (one way to gather them), and Gaussian noise drawn reproducibly."""

from __future__ import annotations

import torch


def as_timestep_tensor(t: torch.Tensor | int, batch_size: int, num_timesteps: int, device) -> torch.Tensor:
    """Validate ``t`` and return it as a LongTensor of shape ``[batch_size]`` on ``device``.

    ``t`` may be a Python int (the same step for every sample), a 0-d tensor, or a ``[batch_size]`` tensor.
    """
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
            raise ValueError(
                f"timesteps must have shape [{batch_size}] to match the batch, got {tuple(t.shape)}"
            )
        t = t.to(device=device, dtype=torch.long)
    else:
        raise ValueError(f"timestep must be an int or a LongTensor, got {type(t).__name__}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_timesteps):
        raise ValueError(
            f"timesteps must lie in [0, {num_timesteps - 1}], got min {int(t.min())}, max {int(t.max())}"
        )
    return t


def extract(coeffs: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``coeffs[t]`` reshaped to ``[B, 1, ..., 1]`` so it broadcasts against ``x`` of shape ``[B, ...]``.

    The coefficients keep their float32 dtype, so the schedule's arithmetic stays in fp32 even when
    ``x`` is bf16/fp16 (the product promotes).
    """
    if coeffs.device != x.device:
        raise ValueError(
            f"the schedule lives on {coeffs.device} but the images are on {x.device}; "
            "move the scheduler with scheduler.to(device)"
        )
    return coeffs[t].view(t.shape[0], *([1] * (x.dim() - 1)))


def draw_noise(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, device: torch.device | str,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """z ~ N(0, I) of ``shape``, drawn on the generator's device and then moved to ``device``: a CPU generator
    gives the same numbers whatever device the model runs on (torch cannot draw with another device's generator).
    """
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)
