"""MNIST (or any class-folder image tree) as a PyTorch dataset of images in [-1, 1].

Two ways to say where the images are:

* ``MNISTDataset(split, data_root)`` -- ``data_root`` (default ``<repo>/data/MNIST``) holds one folder
  per split: ``split="train"`` reads ``data_root/mnist_images``, ``split="test"`` reads
  ``data_root/mnist_images_test``, and any other name is read as the sub-folder ``data_root/<split>``.
* ``MNISTDataset.from_folder(path)`` -- ``path`` is the class-folder tree itself, e.g. training's
  ``--data-path data/MNIST/mnist_images``.

Either way the tree is ``<folder>/<class>/<image>``; see :mod:`dataset.folder_scan` for which files
count. Create the MNIST trees with ``python scripts/prepare_mnist.py``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from common.progress import progress_bar
from dataset.errors import BadImageError
from dataset.folder_scan import DEFAULT_EXTENSIONS, resolve_split_dir, scan_class_folders
from dataset.image_io import SKIP_HINT, load_image, probe_image, to_model_range
from dataset.paths import DEFAULT_DATA_ROOT

logger = logging.getLogger(__name__)

_PROGRESS_MIN_IMAGES = 1000  # no progress bar for small trees (tests, toy data)
_MAX_SKIP_WARNINGS = 10  # one warning per skipped file up to this many, then a summary


def _parse_image_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"image_size must be None, a positive int or (height, width); got {image_size!r}")
    return size  # type: ignore[return-value]


class MNISTDataset(Dataset):
    """Images of a class-folder tree as ``(float32 tensor (C, H, W) in [-1, 1], int label)``.

    Args:
        split: "train" (``data_root/mnist_images``), "test" (``data_root/mnist_images_test``) or the
            name of any other sub-folder of ``data_root``. Must be a plain non-empty name.
        data_root: folder holding the split folders.
        extensions: file extensions that count as images (case-insensitive); others are ignored.
        channels: 1 for grayscale (default), 3 for RGB. See :mod:`dataset.image_io` for how 16-bit,
            palette and transparent images are converted.
        image_size: None (default) keeps images as stored: every image must have the size of the
            first one, else :class:`BadImageError` naming the file and both sizes. An int ``s`` or
            ``(H, W)`` instead resizes every image of another size to it (Pillow bilinear).
        cache: decode every image once, now, into a uint8 tensor (N, C, H, W) kept in memory
            (about 47 MB for MNIST's 60,000 images); ``__getitem__`` and :meth:`as_tensors` then never
            touch the disk.
        skip_bad: skip files that raise :class:`BadImageError` (logged as warnings, counted in
            ``num_skipped``, listed in ``skipped``) instead of failing on the first one.

    When bad files are found: with ``cache=True`` or ``skip_bad=True`` every image is fully decoded
    here, so every bad file is found here. With neither, construction only reads image headers
    (missing, unreadable, non-image and wrong-size files fail here); pixel data truncated after
    a valid header is found when the image is first read, and ``__getitem__`` raises
    :class:`BadImageError` naming the file.

    Attributes:
        root: the class-folder tree read. classes: sorted class-folder names. class_to_idx: name ->
        label. samples: list of (path, label), by class then file name. targets: the labels.
        image_size: (H, W) of every item. num_skipped / skipped: files left out by ``skip_bad``.
    """

    def __init__(
        self,
        split: str = "train",
        data_root: str | Path = DEFAULT_DATA_ROOT,
        extensions: Iterable[str] = DEFAULT_EXTENSIONS,
        channels: int = 1,
        image_size: int | tuple[int, int] | None = None,
        cache: bool = False,
        skip_bad: bool = False,
    ) -> None:
        folder = resolve_split_dir(data_root, split)
        self._load(folder, split, extensions, channels, image_size, cache, skip_bad)

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        extensions: Iterable[str] = DEFAULT_EXTENSIONS,
        channels: int = 1,
        image_size: int | tuple[int, int] | None = None,
        cache: bool = False,
        skip_bad: bool = False,
    ) -> MNISTDataset:
        """Dataset of the class-folder tree at ``path`` (``path/<class>/<image>``); ``split`` is None."""
        dataset = cls.__new__(cls)
        dataset._load(Path(path), None, extensions, channels, image_size, cache, skip_bad)
        return dataset

    # ---- construction -------------------------------------------------------------------------
    def _load(
        self,
        root: Path,
        split: str | None,
        extensions: Iterable[str],
        channels: int,
        image_size: int | tuple[int, int] | None,
        cache: bool,
        skip_bad: bool,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB); got {channels!r}")
        self.root: Path = Path(root)
        self.split: str | None = split
        self.channels: int = channels
        self.skip_bad: bool = skip_bad
        self._resize_to = _parse_image_size(image_size)
        self.image_size: tuple[int, int] | None = self._resize_to
        self._first_path: Path | None = None  # the image that fixed image_size when it was None
        self._size_by_majority = False  # skip_bad: image_size is the most common size (see _fix_size_by_majority)
        self._images: torch.Tensor | None = None  # uint8 (N, C, H, W) when cached

        self.classes, samples = scan_class_folders(self.root, extensions)
        self.class_to_idx: dict[str, int] = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = samples
        self.skipped: list[tuple[Path, str]] = []

        if skip_bad and self._resize_to is None:
            self._fix_size_by_majority()
        if cache:
            self._build_cache()
        elif skip_bad:
            self._check_all(full_decode=True)
        else:
            self._check_all(full_decode=False)

    def _fix_size_by_majority(self) -> None:
        """With skip_bad, the expected size is the most common one, not the first file's: one odd file listed
        first must not get every good image skipped. Reads headers only; unreadable files are left to the
        main pass, which skips them."""
        counts: Counter[tuple[int, int]] = Counter()
        first: dict[tuple[int, int], Path] = {}
        for path, _ in self.samples:
            try:
                size = probe_image(path)
            except BadImageError:
                continue
            counts[size] += 1
            first.setdefault(size, path)
        if counts:
            self.image_size = counts.most_common(1)[0][0]
            self._first_path = first[self.image_size]
            self._size_by_majority = True

    def _check_size(self, path: Path, size: tuple[int, int]) -> None:
        """First image fixes image_size (when None and not resizing); later ones must match it."""
        if self._resize_to is not None:
            return
        if self.image_size is None:
            self.image_size, self._first_path = size, path
        elif size != self.image_size:
            (h, w), (eh, ew) = size, self.image_size
            raise BadImageError(
                path,
                f"size {h}x{w} (HxW) differs from {eh}x{ew}, the size of "
                + ("most images" if self._size_by_majority else f"the first image {self._first_path}"),
                "Resize or remove it, pass --image-size N to resize every image, or --skip-bad to skip it "
                "(image_size=, skip_bad=True in Python)",
            )

    def _skip(self, err: BadImageError) -> None:
        if not self.skip_bad:
            raise err
        self.skipped.append((err.path, err.reason))
        if len(self.skipped) <= _MAX_SKIP_WARNINGS:
            logger.warning("skipping %s", err)

    def _finish_skips(self, kept: list[int]) -> None:
        """Drop the samples not in ``kept`` (indices into self.samples) and summarise the skips."""
        if len(kept) == len(self.samples):
            return
        self.samples = [self.samples[i] for i in kept]
        extra = len(self.skipped) - _MAX_SKIP_WARNINGS
        logger.warning(
            "skipped %d of %d image files under %s%s",
            len(self.skipped),
            len(self.samples) + len(self.skipped),
            self.root,
            f" ({extra} not listed above; see dataset.skipped)" if extra > 0 else "",
        )
        if not self.samples:
            raise BadImageError(self.root, "every image file was bad; nothing left to load", SKIP_HINT)

    def _progress(self, desc: str) -> tqdm:
        return progress_bar(self.samples, desc=desc, unit="img", disable=len(self.samples) < _PROGRESS_MIN_IMAGES)

    def _check_all(self, full_decode: bool) -> None:
        """Validate every file: headers only (fast), or full decode (finds truncated pixel data)."""
        kept: list[int] = []
        for i, (path, _) in enumerate(self._progress(f"checking {self.root.name}")):
            try:
                if full_decode:
                    size = load_image(path, self.channels, self._resize_to).shape[1:]
                else:
                    size = probe_image(path)
                self._check_size(path, tuple(size))
                kept.append(i)
            except BadImageError as err:
                self._skip(err)
        self._finish_skips(kept)

    def _build_cache(self) -> None:
        """Decode every image once into a uint8 tensor (N, C, H, W)."""
        kept: list[int] = []
        arrays: list[np.ndarray] = []
        for i, (path, _) in enumerate(self._progress(f"caching {self.root.name}")):
            try:
                pixels = load_image(path, self.channels, self._resize_to)  # (C, H, W)
                self._check_size(path, tuple(pixels.shape[1:]))
            except BadImageError as err:
                self._skip(err)
                continue
            kept.append(i)
            arrays.append(pixels)
        self._finish_skips(kept)
        self._images = torch.from_numpy(np.stack(arrays))  # (N, C, H, W) uint8
        logger.info(
            "cached %d images %s from %s (%.1f MB)",
            len(arrays),
            tuple(self._images.shape[1:]),
            self.root,
            self._images.numel() / 1e6,
        )

    # ---- access -------------------------------------------------------------------------------
    @property
    def num_skipped(self) -> int:
        """Number of files left out because they raised BadImageError (only with skip_bad=True)."""
        return len(self.skipped)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    @property
    def is_cached(self) -> bool:
        return self._images is not None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """(image float32 (C, H, W) in [-1, 1], label)."""
        path, label = self.samples[index]
        if self._images is not None:
            return to_model_range(self._images[index]), label
        pixels = load_image(path, self.channels, self._resize_to)  # (C, H, W) uint8
        if self.image_size is not None and tuple(pixels.shape[1:]) != self.image_size:
            self._check_size(path, tuple(pixels.shape[1:]))  # raises: the file changed since scanning
        return to_model_range(torch.from_numpy(pixels)), label

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images (N, C, H, W), int64 labels (N,)) for batching from memory without a DataLoader.

        Builds the cache first if the dataset was made with ``cache=False``. The tensors are the
        dataset's own storage: do not modify them in place. Map a batch to [-1, 1] with
        :func:`dataset.to_model_range`.
        """
        if self._images is None:
            logger.info("as_tensors() on an uncached dataset: decoding all %d images now", len(self))
            self._build_cache()
        assert self._images is not None and len(self._images) == len(self.samples)
        return self._images, torch.tensor(self.targets, dtype=torch.int64)

    def class_counts(self) -> dict[str, int]:
        """Number of images per class name, in class order (classes emptied by skip_bad count 0)."""
        counts = dict.fromkeys(self.classes, 0)
        for _, label in self.samples:
            counts[self.classes[label]] += 1
        return counts

    def __repr__(self) -> str:
        split = f"split={self.split!r}, " if self.split is not None else ""
        return (
            f"{type(self).__name__}({split}root={str(self.root)!r}, n={len(self)}, "
            f"classes={len(self.classes)}, image_size={self.image_size}, channels={self.channels}, "
            f"cached={self.is_cached}, num_skipped={self.num_skipped})"
        )
