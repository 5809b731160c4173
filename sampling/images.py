"""Writing samples to disk: a grid PNG, the individual images as uint8 ``.npz``, and a trajectory GIF.

Model space is [−1, 1]; files hold uint8 pixels, u = round((x + 1) / 2 · 255) clamped to [0, 255] — the
inverse of the dataset's x = u / 255 · 2 − 1 up to rounding. The ``.npz`` is what the metrics read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sampling.sampler import Trajectory

NPZ_IMAGES_KEY = "images"


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` (or ``[N, H, W]``) floats in [−1, 1] → uint8 ``[N, H, W]`` (C = 1) or ``[N, H, W, C]``."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W] or [N, H, W], got shape {tuple(x.shape)}")
    u = ((x.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    u = u.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    return u[..., 0] if u.shape[-1] == 1 else u


def make_grid(images: np.ndarray, num_rows: int, padding: int = 2, pad_value: float = 0,
              border: bool = True) -> np.ndarray:
    """Tile ``[N, H, W]`` (or RGB ``[N, H, W, C]``) images into ``num_rows`` rows of ⌈N / num_rows⌉ columns
    (row-major), keeping their dtype: uint8 for image files, float with ``pad_value=np.nan`` for a figure's
    ``imshow``. Empty cells and the ``padding`` pixels between tiles (and around them, if ``border``) are
    ``pad_value``.
    """
    if images.ndim not in (3, 4):
        raise ValueError(f"expected images [N, H, W] or [N, H, W, C], got shape {images.shape}")
    if isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows < 1:
        raise ValueError(f"num_rows must be a positive int, got {num_rows!r}")
    n, h, w = images.shape[:3]
    num_rows = min(num_rows, max(n, 1))
    num_cols = max(math.ceil(n / num_rows), 1)
    edge = padding if border else 0
    grid = np.full((num_rows * (h + padding) - padding + 2 * edge, num_cols * (w + padding) - padding + 2 * edge,
                    *images.shape[3:]), pad_value, dtype=images.dtype)
    for k in range(n):
        r, c = divmod(k, num_cols)
        top, left = edge + r * (h + padding), edge + c * (w + padding)
        grid[top:top + h, left:left + w] = images[k]
    return grid


def save_grid_png(images: torch.Tensor | np.ndarray, path: str | Path, num_rows: int, scale: int = 1) -> Path:
    """Save a grid of images (model-space tensor or uint8 array) as a grayscale or RGB PNG, upscaled by ``scale``."""
    u8 = to_uint8(images) if isinstance(images, torch.Tensor) else images
    if u8.dtype != np.uint8:
        raise ValueError(f"expected a model-space tensor or uint8 images, got {u8.dtype}")
    grid = make_grid(u8, num_rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(grid)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)
    return path


def save_samples_npz(images: torch.Tensor | np.ndarray, path: str | Path, metadata: dict | None = None) -> Path:
    """Save uint8 ``[N, H, W]`` images (key ``images``) and JSON ``metadata`` (key ``metadata``), compressed."""
    u8 = to_uint8(images) if isinstance(images, torch.Tensor) else images
    if u8.dtype != np.uint8:
        raise ValueError(f"samples must be uint8, got {u8.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{NPZ_IMAGES_KEY: u8, "metadata": np.array(json.dumps(metadata or {}))})
    return path


def load_samples_npz(path: str | Path) -> tuple[np.ndarray, dict]:
    """Inverse of :func:`save_samples_npz`: ``(uint8 images [N, H, W], metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples file {path} not found")
    with np.load(path, allow_pickle=False) as data:
        if NPZ_IMAGES_KEY not in data:
            raise ValueError(f"{path} has no {NPZ_IMAGES_KEY!r} array (keys: {sorted(data.files)})")
        images = data[NPZ_IMAGES_KEY]
        metadata = json.loads(str(data["metadata"])) if "metadata" in data else {}
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    return images, metadata


def save_trajectory_gif(trajectory: Trajectory, path: str | Path, num_rows: int, frame_ms: int = 80,
                        final_ms: int = 1500, scale: int = 2) -> Path:
    """Animate the reverse chain: per frame the grid of x_t (left) beside that of x̂0 (right); the last frame is
    held ``final_ms``."""
    frames = []
    for k in range(len(trajectory.t)):
        left = make_grid(to_uint8(trajectory.x_t[k]), num_rows)
        right = make_grid(to_uint8(trajectory.x0_pred[k]), num_rows)
        gap = np.full((left.shape[0], 8), 255, dtype=np.uint8)
        img = Image.fromarray(np.concatenate([left, gap, right], axis=1))
        frames.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST))
    if not frames:
        raise ValueError("the trajectory has no frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durations = [frame_ms] * (len(frames) - 1) + [final_ms]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path
