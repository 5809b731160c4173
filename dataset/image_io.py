"""Decoding one image file into uint8 pixels, and mapping pixels to the model's [-1, 1] range.

Any failure to use a file as an image is raised as :class:`~dataset.errors.BadImageError` naming the file.

Pixel conversion (``channels=1`` gives grayscale "L", ``channels=3`` gives "RGB"):

* 16-bit grayscale (Pillow modes ``I;16*``, ``I``): v8 = round(v16 / 257), so 65535 -> 255; Pillow's own
  ``convert("L")`` would clip every value above 255 to white.
* Transparency (RGBA, LA, PA, or a tRNS chunk): composited over opaque black, MNIST's background, so a fully
  transparent pixel is 0 (-1 in model range) whatever colour it stores.
* Anything else goes through Pillow's ``convert``; RGB -> L uses ITU-R 601-2 luma.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dataset.errors import BadImageError

SKIP_HINT = "Delete or replace it, or pass --skip-bad (skip_bad=True in Python) to skip such files"
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _bad_image(path: Path, err: BaseException) -> BadImageError:
    """Translate an exception raised while opening/decoding ``path`` into a BadImageError."""
    if isinstance(err, BadImageError):
        return err
    if isinstance(err, PermissionError):
        return BadImageError(path, "permission denied", "Make it readable (chmod a+r) or remove it")
    if isinstance(err, FileNotFoundError):
        return BadImageError(
            path,
            "file not found (a broken symlink, or removed after the folder was listed)",
            "Remove the link or restore its target",
        )
    if isinstance(err, OSError) and err.errno == errno.ELOOP:
        return BadImageError(path, "symlink loop", "Remove the symlink or point it at a real image")
    if isinstance(err, UnidentifiedImageError):
        return BadImageError(path, "not a recognised image (wrong content for its extension?)", SKIP_HINT)
    if isinstance(err, Image.DecompressionBombError):
        return BadImageError(path, f"too large to decode safely ({err})", SKIP_HINT)
    return BadImageError(path, f"corrupt or truncated image data ({type(err).__name__}: {err})", SKIP_HINT)


def _require_regular_file(path: Path) -> None:
    """Raise unless ``path`` (after symlinks) is a regular file: opening a FIFO would block forever, and a
    device (``/dev/zero``, a terminal) is not an image. OSErrors (loops, permissions) propagate."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise BadImageError(path, "is a directory, not an image file", "Rename or remove it")
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise BadImageError(path, f"not a regular file but {kind}", "Remove it or replace it with an image file")


def probe_image(path: str | Path) -> tuple[int, int]:
    """(height, width) from the image header, without decoding pixels. Raises BadImageError."""
    path = Path(path)
    try:
        _require_regular_file(path)
        with Image.open(path) as img:
            width, height = img.size
    except Exception as err:  # any failure inside Pillow means "this file is not a usable image"
        raise _bad_image(path, err) from err
    return height, width


def load_image(path: str | Path, channels: int = 1, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``path`` into a uint8 array (C, H, W) as :func:`convert_image` does. Raises BadImageError."""
    path = Path(path)
    try:
        _require_regular_file(path)
        data = path.read_bytes()  # read once: verify() leaves the image unusable, so it is opened twice
        # Decoding alone skips the CRCs of the pixel (IDAT) chunks and accepts a file that stops after its last
        # pixel byte, so a bit flip can inflate into wrong pixels; verify() checks every chunk's CRC up to IEND.
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now, so truncation is reported here and not on first pixel access
            return convert_image(img, channels, size)
    except Exception as err:  # any failure inside Pillow means "this file is not a usable image"
        raise _bad_image(path, err) from err


def convert_image(img: Image.Image, channels: int = 1, size: tuple[int, int] | None = None) -> np.ndarray:
    """A decoded image as uint8 (C, H, W): converted as the module doc says, resized to ``size=(H, W)`` (Pillow
    bilinear, antialiased when shrinking) unless it is None."""
    if img.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(img).astype(np.int64)
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))  # 2-D uint8: "L"
    elif img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.uint8)
    if pixels.ndim == 2:
        return pixels[None].copy()  # (1, H, W)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))  # (H, W, C) -> (C, H, W)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255] -> float32 in [-1, 1]: x = p / 127.5 - 1 (0 -> -1, 255 -> 1 exactly).

    Works on one image (C, H, W) or a batch (B, C, H, W); the DDPM data range of Ho et al. (2020), §3.3.
    Only uint8 input is accepted, so already-scaled images cannot be scaled twice.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"to_model_range expects uint8 pixels in [0, 255], got dtype {images.dtype}")
    return images.to(torch.float32) / 127.5 - 1.0
