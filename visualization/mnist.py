"""Figures of the training data: a grid of the first images of each digit and the label histogram.

The images come from a class-folder tree (``data/MNIST/mnist_images``, made by
``scripts/prepare_mnist.py``) or straight from MNIST's IDX files (the copy bundled in
``data/MNIST/raw``), so the figures can be drawn before any PNG is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset import DEFAULT_RAW_DIR, MNISTDataset, load_mnist_idx
from dataset.idx import mnist_idx_paths
from sampling import make_grid
from visualization.plotting import new_figure, save_figure, tile_centres

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MNISTPreview:
    """The first ``per_class`` training images of every class, and the number of images per class.

    Attributes:
        images: ``(num_classes, per_class, H, W)`` float in [0, 1]; NaN where a class has fewer images.
        class_names: one name per class, in label order.
        counts: class name → number of images.
        source: where the images were read, for titles and logs.
    """

    images: np.ndarray
    class_names: list[str]
    counts: dict[str, int]
    source: str

    def first_image(self, class_name: str = "7") -> np.ndarray:
        """``(H, W)`` in [0, 1]: the first image of ``class_name`` (of the first class if there is none)."""
        index = self.class_names.index(class_name) if class_name in self.class_names else 0
        return self.images[index, 0]


def is_idx_dir(path: Path) -> bool:
    """Whether ``path`` holds MNIST's training IDX files (``.gz`` or plain)."""
    return all(p.is_file() for p in mnist_idx_paths("train", path))


def load_mnist_preview(root: str | Path | None = None, per_class: int = 8) -> MNISTPreview:
    """Read the preview from ``root``: a class-folder tree, a folder of IDX files, or (``None``) the
    bundled IDX files."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    root = DEFAULT_RAW_DIR if root is None else Path(root)
    if is_idx_dir(root):
        images, labels = load_mnist_idx("train", root)  # (N, 28, 28) uint8, (N,)
        names = [str(c) for c in range(10)]
        firsts = [np.flatnonzero(labels == c)[:per_class] for c in range(10)]
        pick = [images[idx].astype(np.float32) / 255.0 for idx in firsts]
        counts = {name: int(n) for name, n in zip(names, np.bincount(labels, minlength=10))}
        source = f"MNIST IDX files in {root}"
    else:
        dataset = MNISTDataset.from_folder(root)
        names = list(dataset.classes)
        targets = np.asarray(dataset.targets)
        firsts = [np.flatnonzero(targets == label)[:per_class] for label in range(len(names))]
        # dataset items are (C, H, W) in [−1, 1]; the grid shows channel 0 in [0, 1]
        pick = [np.stack([(dataset[int(i)][0][0].numpy() + 1) / 2 for i in idx]) if len(idx) else None
                for idx in firsts]
        counts = dataset.class_counts()
        source = f"class folders under {root}"
    height, width = next(p.shape[1:] for p in pick if p is not None)
    grid = np.full((len(names), per_class, height, width), np.nan, dtype=np.float32)
    for row, images_of_class in enumerate(pick):
        if images_of_class is not None:
            grid[row, : len(images_of_class)] = images_of_class
    logger.info("MNIST preview: %d classes, %d images, from %s", len(names), sum(counts.values()), source)
    return MNISTPreview(grid, names, counts, source)


def mnist_grid_figure(outdir: Path, preview: MNISTPreview) -> Path:
    """``mnist_grid.png``: one row per class, its first images left to right, pixel values in [0, 1]."""
    rows, cols, h, w = preview.images.shape
    fig = new_figure(1.0 + 0.62 * cols, 0.9 + 0.62 * rows)
    ax = fig.add_subplot()
    grid = make_grid(preview.images.reshape(-1, h, w), rows, padding=1, pad_value=np.nan, border=False)
    im = ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(tile_centres(cols, w), [str(c) for c in range(cols)])
    ax.set_yticks(tile_centres(rows, h), preview.class_names)
    ax.tick_params(length=0)
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
