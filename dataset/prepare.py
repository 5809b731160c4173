"""Writing MNIST's IDX files out as class-folder PNG trees, for people who want the digits as image files.

``prepare_mnist_images(raw_dir, out_root)`` writes ``out_root/mnist_images/<digit>/<index>.png`` (60,000 training
digits) and ``out_root/mnist_images_test/...`` (10,000 test digits); ``<index>`` is the position in the IDX file,
so the tree read back gives the order :class:`~dataset.MNISTDataset` gives the IDX digits.

A split is written into a hidden folder beside its target (``.mnist_images.partial-<pid>``) and renamed into
place with ``os.replace`` only when complete, so a tree at the target is always whole; a killed run leaves the
hidden folder behind, never read.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common.progress import progress_bar
from dataset import paths
from dataset.idx import load_mnist_idx

logger = logging.getLogger(__name__)


def _write_split(images: np.ndarray, labels: np.ndarray, target: Path, force: bool) -> None:
    """Write images (N, H, W) as ``target/<label>/<index>.png`` into a hidden folder, then rename it to ``target``."""
    # the process id makes the name ours: a folder with it can only be left by a dead process that had the same id
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for digit in np.unique(labels):
            (partial / str(digit)).mkdir(parents=True)
        for index in progress_bar(range(len(labels)), desc=f"writing {target.name}", unit="img"):
            # compress_level=1: faster than the default 6, and each file stays under one 4 KiB disk block
            Image.fromarray(images[index]).save(partial / str(labels[index]) / f"{index}.png", compress_level=1)
        if force:
            shutil.rmtree(target, ignore_errors=True)  # os.replace cannot replace a non-empty folder
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def prepare_mnist_images(
    raw_dir: str | Path = paths.DEFAULT_RAW_DIR,
    out_root: str | Path = paths.DEFAULT_DATA_ROOT,
    splits: tuple[str, ...] = ("train", "test"),
    *,
    force: bool = False,
    verify_md5: bool = True,
) -> dict[str, Path]:
    """Write the PNG trees of ``splits`` from the IDX files in ``raw_dir``; returns split -> folder.

    Existing trees are kept unless ``force``. ``verify_md5=False`` is for IDX files other than the standard ones.
    """
    raw_dir, out_root = Path(raw_dir), Path(out_root)
    unknown = [s for s in splits if s not in paths.SPLIT_DIRS]
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of {tuple(paths.SPLIT_DIRS)}; got {splits!r}")
    out_root.mkdir(parents=True, exist_ok=True)
    folders = {split: out_root / paths.SPLIT_DIRS[split] for split in splits}
    for split, target in folders.items():
        if target.exists() and not force:
            logger.info("%s exists; nothing to do (use --force to rebuild it)", target)
            continue
        start = time.perf_counter()
        images, labels = load_mnist_idx(split, raw_dir, verify=verify_md5)  # type: ignore[arg-type]
        _write_split(images, labels, target, force)
        logger.info("wrote %d %s PNGs to %s in %.1f s", len(labels), split, target, time.perf_counter() - start)
    return folders
