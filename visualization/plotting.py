"""Matplotlib helpers shared by the figure modules.

Figures are built with :class:`matplotlib.figure.Figure`, not ``pyplot``, so no global state changes and no
display is needed.
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

from sampling import make_grid

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
    ax: Axes, image: torch.Tensor | np.ndarray, title: str, *, cmap: str = "viridis", vmin: float | None = None,
    vmax: float | None = None, colorbar: str = "value", xlabel: str = "x (pixel)", ylabel: str = "y (pixel)",
) -> None:
    """``imshow`` of a 2-D array with a title, axis labels and a colour bar labelled ``colorbar``."""
    im = ax.imshow(to_numpy(image), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.figure.colorbar(im, ax=ax, label=colorbar, shrink=0.85)


def symmetric_limit(*arrays: torch.Tensor | np.ndarray) -> float:
    """max |value| over ``arrays``, for a diverging colour map centred on 0."""
    return max(float(np.abs(to_numpy(a)).max()) for a in arrays) or 1.0


def show_tiles(ax: Axes, tiles: np.ndarray, col_labels: list[str], row_labels: list[str]):
    """``imshow`` of ``(rows, cols, H, W)`` tiles in [0, 1] as one gray grid with 1 px gaps (NaN tiles stay blank),
    each column and row named by a tick label. One image is clearer and much faster than one axes per tile."""
    rows, cols, h, w = tiles.shape
    grid = make_grid(tiles.reshape(-1, h, w), rows, padding=1, pad_value=np.nan, border=False)
    im = ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([c * (w + 1) + (w - 1) / 2 for c in range(cols)], col_labels)  # tile centres
    ax.set_yticks([r * (h + 1) + (h - 1) / 2 for r in range(rows)], row_labels)
    ax.tick_params(length=0)
    return im


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build modules inside this block to get the same random weights for the same ``seed``.

    ``nn.Module`` initialisers take no ``generator``, so the global CPU generator is forked, seeded and restored.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
