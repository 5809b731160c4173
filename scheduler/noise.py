"""Drawing Gaussian noise reproducibly: the one place that decides where the numbers come from."""

from __future__ import annotations

import torch


def draw_noise(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """z ~ N(0, I) of ``shape``, drawn on the generator's device and then moved to ``device``.

    Drawing where the generator lives lets a CPU generator give the same numbers whatever device the model
    runs on (torch cannot draw on one device with another device's generator).
    """
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)
