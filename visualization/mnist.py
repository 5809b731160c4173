"""Figures of the training data: a grid of the first images of each digit and the label histogram."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset import MNISTDataset
from visualization.plotting import new_figure, save_figure, show_tiles

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MNISTPreview:
    """The first ``per_class`` training images of every class, and the number of images per class."""

    images: np.ndarray  # (num_classes, per_class, H, W) in [0, 1]; NaN where a class has fewer images
    class_names: list[str]  # in label order
    counts: dict[str, int]  # class name → number of images

    def first_image(self, class_name: str = "7") -> np.ndarray:
        """``(H, W)`` in [0, 1]: the first image of ``class_name`` (of the first class if there is none)."""
        index = self.class_names.index(class_name) if class_name in self.class_names else 0
        return self.images[index, 0]


def load_mnist_preview(root: str | Path | None = None, per_class: int = 8) -> MNISTPreview:
    """Read the preview from ``root``: whatever :class:`dataset.MNISTDataset` reads (``None``: the bundled IDX
    files)."""
    dataset = MNISTDataset("train", root)
    targets = np.asarray(dataset.targets)
    firsts = [np.flatnonzero(targets == label)[:per_class] for label in range(len(dataset.classes))]
    height, width = dataset.image_size
    grid = np.full((len(firsts), per_class, height, width), np.nan, dtype=np.float32)
    for row, indices in enumerate(firsts):
        for col, i in enumerate(indices):
            grid[row, col] = (dataset[int(i)][0][0].numpy() + 1) / 2  # channel 0 of (C, H, W) in [−1, 1] → [0, 1]
    counts = dataset.class_counts()
    logger.info("MNIST preview: %d classes, %d images, from %s", len(counts), sum(counts.values()), dataset.root)
    return MNISTPreview(grid, list(dataset.classes), counts)


def mnist_grid_figure(outdir: Path, preview: MNISTPreview) -> Path:
    """``mnist_grid.png``: one row per class, its first images left to right, pixel values in [0, 1]."""
    rows, cols, h, w = preview.images.shape
    fig = new_figure(1.0 + 0.62 * cols, 0.9 + 0.62 * rows)
    ax = fig.add_subplot()
    im = show_tiles(ax, preview.images, [str(c) for c in range(cols)], preview.class_names)
    ax.set_xlabel("n-th image of the class")
    ax.set_ylabel("label")
    ax.set_title(f"First {cols} training images of each class ({h}×{w}, shown in [0, 1])")
    fig.colorbar(im, ax=ax, label="pixel value", shrink=0.8)
    return save_figure(fig, outdir / "mnist_grid.png")


def mnist_label_hist_figure(outdir: Path, preview: MNISTPreview) -> Path:
    """``mnist_label_hist.png``: number of training images per class, with the uniform count for reference."""
    names, counts = list(preview.counts), np.array(list(preview.counts.values()))
    total = int(counts.sum())
    fig = new_figure(8, 4.2)
    ax = fig.add_subplot()
    bars = ax.bar(np.arange(len(names)), counts, color="tab:blue", tick_label=names)
    ax.bar_label(bars, [f"{n:,}" for n in counts], label_type="center", color="white", fontsize=8)
    ax.axhline(total / len(names), color="k", ls="--", lw=1, label=f"uniform: {total / len(names):,.0f} per class")
    ax.set_ylim(0, counts.max() * 1.12)
    ax.set_xlabel("label (digit)")
    ax.set_ylabel("number of training images")
    ratio = counts.max() / max(counts.min(), 1)
    ax.set_title(f"Training labels: {total:,} images; the largest class is {ratio:.2f}× the smallest")
    ax.legend(loc="upper right")
    return save_figure(fig, outdir / "mnist_label_hist.png")
