"""MNIST -- the bundled IDX digits or any class-folder image tree -- as a PyTorch dataset of images in [-1, 1].

``MNISTDataset("train")`` reads the IDX digits; ``MNISTDataset(split, data_root)`` reads the class-folder tree
``data_root`` (e.g. ``"data/MNIST/mnist_images"`` after ``python scripts/prepare_mnist.py``), as the seed
repository did. :func:`load_training_set` picks between the two for training's ``--data-path``.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from common.progress import progress_bar
from dataset.errors import BadImageError
from dataset.folder_scan import DEFAULT_EXTENSIONS, scan_class_folders
from dataset.idx import MNIST_FILES, load_mnist_idx, mnist_idx_paths
from dataset.image_io import SKIP_HINT, convert_image, load_image, probe_image, to_model_range
from dataset.paths import DEFAULT_DATA_PATH, DEFAULT_RAW_DIR, PREPARE_COMMAND, SPLIT_DIRS

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


def _holds_idx(folder: Path, split: str | None) -> bool:
    """Whether ``folder`` holds the IDX image and label files of ``split`` ("train" or "test")."""
    return split in MNIST_FILES and all(p.is_file() for p in mnist_idx_paths(split, folder))


class MNISTDataset(Dataset):
    """MNIST's digits from its IDX files, or the images of a class-folder tree, as
    ``(float32 tensor (C, H, W) in [-1, 1], int label)``.

    Args:
        split: "train" or "test": which IDX digits to read; only recorded for a class-folder tree.
        data_root: None for the bundled IDX files in ``data/MNIST/raw``, a folder of MNIST's IDX files, or a
            class-folder tree ``<data_root>/<class>/<image>``.
        channels: 1 (grayscale) or 3 (RGB); :mod:`dataset.image_io` says how other modes are converted.
        image_size: None keeps the stored size (every image must match the first); ``s`` or ``(H, W)`` resizes.
        cache: decode every image now into a uint8 (N, C, H, W) tensor (~47 MB for MNIST's 60,000).
        skip_bad: skip files raising :class:`BadImageError` (warned, listed in ``skipped``) instead of failing.

    IDX digits are always in memory, in the order and with the pixels of the PNG tree ``scripts/prepare_mnist.py``
    writes (by digit, then by position in the file), so a run can switch source and continue bit-identically.
    Without ``cache`` or ``skip_bad`` only headers are read up front, and pixel data truncated after a valid
    header raises :class:`BadImageError` from ``__getitem__``.
    """

    def __init__(
        self, split: str | None = "train", data_root: str | Path | None = None,
        extensions: Iterable[str] = DEFAULT_EXTENSIONS, channels: int = 1,
        image_size: int | tuple[int, int] | None = None, cache: bool = False, skip_bad: bool = False,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB); got {channels!r}")
        self.root: Path = DEFAULT_RAW_DIR if data_root is None else Path(data_root)
        self.split: str | None = split
        self.channels: int = channels
        self.skip_bad: bool = skip_bad
        self._resize_to = _parse_image_size(image_size)
        self.image_size: tuple[int, int] | None = self._resize_to
        self._size_source = ""  # what fixed image_size when it was None, for the size-mismatch message
        self._images: torch.Tensor | None = None  # uint8 (N, C, H, W) when cached
        self.indices: np.ndarray | None = None  # IDX digits: position of each sample in the IDX file
        self.skipped: list[tuple[Path, str]] = []

        if data_root is None or _holds_idx(self.root, split):
            if split not in MNIST_FILES:
                raise ValueError(f"split must be 'train' or 'test' to read MNIST's IDX files in {self.root}; "
                                 f"got {split!r}. A class-folder tree is read with data_root=<its folder>")
            self._load_idx()
            return
        self.classes, self.samples = scan_class_folders(self.root, extensions)
        if skip_bad and self._resize_to is None:
            self._fix_size_by_majority()
        self._check_all(decode=skip_bad, cache=cache)

    @classmethod
    def from_folder(cls, path: str | Path, **options) -> MNISTDataset:
        """Dataset of the class-folder tree at ``path`` (``path/<class>/<image>``) with ``split`` None; ``options``
        are the other arguments of :class:`MNISTDataset`."""
        return cls(None, path, **options)

    # ---- construction -------------------------------------------------------------------------
    def _load_idx(self) -> None:
        """The split's IDX digits, in the order of their PNG tree: by digit, then by position in the file."""
        images, labels = load_mnist_idx(self.split, self.root)  # (N, 28, 28) uint8, (N,) int64
        self.indices = np.argsort(labels, kind="stable")  # stable: file positions ascend within each digit
        digits, targets = np.unique(labels[self.indices], return_inverse=True)
        self.classes = [str(d) for d in digits]
        images_file = mnist_idx_paths(self.split, self.root)[0]
        self.samples = [(images_file, label) for label in targets.tolist()]
        pixels = images[self.indices][:, None]  # (N, 1, 28, 28)
        if self._resize_to not in (None, pixels.shape[2:]):  # as load_image resizes each digit's PNG
            pixels = np.stack([convert_image(Image.fromarray(d[0]), 1, self._resize_to) for d in pixels])
        if self.channels == 3:
            pixels = pixels.repeat(3, axis=1)  # gray -> RGB copies the value into every channel, as Pillow does
        self._images = torch.from_numpy(np.ascontiguousarray(pixels))  # (N, C, H, W) uint8
        self.image_size = (self._images.shape[2], self._images.shape[3])

    def _fix_size_by_majority(self) -> None:
        """With skip_bad, the expected size is the most common one, not the first file's: one odd file listed
        first must not get every good image skipped. Reads headers only; unreadable files are left to the
        main pass, which skips them."""
        counts: Counter[tuple[int, int]] = Counter()
        for path, _ in self.samples:
            with contextlib.suppress(BadImageError):
                counts[probe_image(path)] += 1
        if counts:
            self.image_size = counts.most_common(1)[0][0]
            self._size_source = "most images"

    def _check_size(self, path: Path, size: tuple[int, int]) -> None:
        """First image fixes image_size (when None and not resizing); later ones must match it."""
        if self._resize_to is not None:
            return
        if self.image_size is None:
            self.image_size, self._size_source = size, f"the first image {path}"
        elif size != self.image_size:
            (h, w), (eh, ew) = size, self.image_size
            raise BadImageError(
                path,
                f"size {h}x{w} (HxW) differs from {eh}x{ew}, the size of {self._size_source}",
                "Resize or remove it, pass --image-size N to resize every image, or --skip-bad to skip it "
                "(image_size=, skip_bad=True in Python)",
            )

    def _check_all(self, decode: bool, cache: bool) -> None:
        """Check every file by its header (fast) or, with ``decode`` or ``cache``, by decoding it (finds truncated
        pixel data); ``cache`` keeps the decoded images as a uint8 tensor (N, C, H, W). With ``skip_bad`` a bad
        file is warned about, listed in ``skipped`` and dropped from ``samples``."""
        kept: list[int] = []
        arrays: list[np.ndarray] = []
        desc = f"{'caching' if cache else 'checking'} {self.root.name}"
        samples = progress_bar(self.samples, desc=desc, unit="img", disable=len(self.samples) < _PROGRESS_MIN_IMAGES)
        for i, (path, _) in enumerate(samples):
            try:
                if decode or cache:
                    pixels = load_image(path, self.channels, self._resize_to)  # (C, H, W)
                    self._check_size(path, tuple(pixels.shape[1:]))
                else:
                    self._check_size(path, probe_image(path))
            except BadImageError as err:
                if not self.skip_bad:
                    raise
                self.skipped.append((err.path, err.reason))
                if len(self.skipped) <= _MAX_SKIP_WARNINGS:
                    logger.warning("skipping %s", err)
                continue
            kept.append(i)
            if cache:
                arrays.append(pixels)
        if len(kept) < len(self.samples):
            self.samples = [self.samples[i] for i in kept]
            extra = len(self.skipped) - _MAX_SKIP_WARNINGS
            logger.warning("skipped %d of %d image files under %s%s", len(self.skipped),
                           len(self.samples) + len(self.skipped), self.root,
                           f" ({extra} not listed above; see dataset.skipped)" if extra > 0 else "")
            if not self.samples:
                raise BadImageError(self.root, "every image file was bad; nothing left to load", SKIP_HINT)
        if cache:
            self._images = torch.from_numpy(np.stack(arrays))  # (N, C, H, W) uint8
            logger.info("cached %d images %s from %s (%.1f MB)", len(arrays), tuple(self._images.shape[1:]),
                        self.root, self._images.numel() / 1e6)

    # ---- access -------------------------------------------------------------------------------
    @property
    def num_skipped(self) -> int:
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
        self._check_size(path, tuple(pixels.shape[1:]))  # the file may have changed since it was checked
        return to_model_range(torch.from_numpy(pixels)), label

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images (N, C, H, W), int64 labels (N,)) for batching from memory without a DataLoader.

        Builds the cache if there is none. The images are the dataset's own storage: do not modify them in place.
        """
        if self._images is None:
            logger.info("as_tensors() on an uncached dataset: decoding all %d images now", len(self))
            self._check_all(decode=True, cache=True)
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


def load_training_set(
    data_path: str | Path = DEFAULT_DATA_PATH, extensions: Iterable[str] = DEFAULT_EXTENSIONS, channels: int = 1,
    image_size: int | tuple[int, int] | None = None, cache: bool = True, skip_bad: bool = False,
    *, raw_dir: str | Path = DEFAULT_RAW_DIR,
) -> MNISTDataset:
    """The training images at ``data_path`` (training's ``--data-path``), as an :class:`MNISTDataset`.

    The default path (``raw_dir``'s sibling ``mnist_images``, where ``scripts/prepare_mnist.py`` writes the PNG
    tree) stands for MNIST's training digits: while that folder is missing or empty they come straight from the
    IDX files in ``raw_dir``. Any other path, or the default one once it holds files, is a class-folder tree.
    """
    path = Path(data_path).expanduser().resolve()
    raw_dir = Path(raw_dir).expanduser().absolute()
    bundled = (raw_dir.parent / SPLIT_DIRS["train"]).resolve()  # resolved beside raw_dir, which may be a link
    if path == bundled and not (path.is_dir() and any(path.iterdir())):
        if not _holds_idx(raw_dir, "train"):  # the test MNISTDataset applies: without them it would scan raw_dir
            raise FileNotFoundError(
                f"MNIST's training IDX files ({' and '.join(MNIST_FILES['train'])}) are not in {raw_dir}, and the "
                f"default data path {path} stands for them. Copy them there or run `{PREPARE_COMMAND} --download`")
        logger.info("reading the MNIST training digits from the IDX files in %s (%s holds no tree)", raw_dir, path)
        return MNISTDataset("train", raw_dir, channels=channels, image_size=image_size)
    return MNISTDataset("train", path, extensions, channels, image_size, cache, skip_bad)
