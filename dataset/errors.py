"""Exceptions for bad input data; ``ValueError`` subclasses, so ``except ValueError`` catches them too.

A missing file or folder raises the built-in ``FileNotFoundError`` instead.
"""

from __future__ import annotations

from pathlib import Path


class BadImageError(ValueError):
    """One file that cannot be used as an image (undecodable, truncated, wrong size, unreadable, a broken symlink
    or loop, not a regular file); ``path`` names it, ``reason`` says why. ``skip_bad=True`` skips exactly these."""

    def __init__(self, path: str | Path, reason: str | None = None, fix: str = "") -> None:
        if reason is None:  # re-raised by a DataLoader worker as BadImageError(its traceback): keep the last line
            message = str(path).strip().splitlines()[-1].partition("BadImageError: ")[2] or str(path)
            self.path, self.reason = None, message
            super().__init__(message)
            return
        self.path = Path(path)
        self.reason = reason
        message = f"bad image file {self.path}: {reason}"
        if fix:
            message += f". {fix}"
        super().__init__(message)


class DatasetLayoutError(ValueError):
    """The folder tree does not have the ``root/<class>/<image>`` layout, holds no images, or cannot be listed."""


class IDXFormatError(ValueError):
    """An IDX file that is malformed, truncated, of the wrong kind or fails its md5 check."""
