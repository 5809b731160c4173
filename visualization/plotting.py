"""Matplotlib helpers shared by the figure modules.

Figures are built with :class:`matplotlib.figure.Figure` directly, not through ``pyplot``: no backend is
selected and no global figure registry is touched, so importing or calling these functions changes no
global state and works without a display.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

DPI = 110


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure of ``width`` × ``height`` inches (labels and colour bars never overlap)."""
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (parents created); the PNG carries no version or date metadata, so the same
    figure gives the same bytes on every run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.1, metadata={"Software": None})
    logger.info("wrote %s", path)
    return path


def to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x)


def show_map(
    ax: Axes,
    image: torch.Tensor | np.ndarray,
    title: str,
    *,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: str | None = "value",
    xlabel: str = "x (pixel)",
    ylabel: str = "y (pixel)",
):
    """``imshow`` of a 2-D array with a title, axis labels and (unless ``colorbar`` is None) a labelled colour bar."""
    im = ax.imshow(to_numpy(image), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if colorbar is not None:
        ax.figure.colorbar(im, ax=ax, label=colorbar, shrink=0.85)
    return im


def symmetric_limit(*arrays: torch.Tensor | np.ndarray) -> float:
    """max |value| over ``arrays``, for a diverging colour map centred on 0."""
    return max(float(np.abs(to_numpy(a)).max()) for a in arrays) or 1.0


def tile_centres(count: int, size: int, gap: int = 1) -> list[float]:
    """Pixel coordinates of the centres of ``count`` tiles of ``size`` pixels in a
    :func:`sampling.images.make_grid` with ``padding=gap, border=False``."""
    return [i * (size + gap) + (size - 1) / 2 for i in range(count)]


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build modules inside this block to get the same random weights for the same ``seed``.

    ``nn.Module`` initialisers draw from torch's global CPU generator and take no ``generator``
    argument, so the global state is forked, seeded, and restored on exit: callers see no change.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU generator; tensors are drawn on the CPU and then moved, so every device sees the same values."""
    return torch.Generator().manual_seed(seed)
