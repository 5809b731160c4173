"""Exceptions raised for bad input data.

Both are ``ValueError`` subclasses, so callers that only know the house rule ("bad user input raises
ValueError") still catch them; a missing file or folder raises the built-in ``FileNotFoundError``.

* :class:`BadImageError` -- one file that cannot be used as an image: not decodable, truncated, not an
  image at all despite its extension, the wrong size, unreadable (permission denied), a broken
  symlink, a symlink loop, or not a regular file (a FIFO, socket or device).
  ``MNISTDataset(skip_bad=True)`` skips exactly these.
* :class:`DatasetLayoutError` -- the folder structure is wrong: no class folders, a class folder
  without images, a folder that cannot be listed.
* :class:`IDXFormatError` -- an IDX file (gzip or plain) that is malformed, truncated, of the wrong
  kind, or whose md5 does not match.
"""

from __future__ import annotations

from pathlib import Path


class BadImageError(ValueError):
    """A single image file that cannot be used; ``path`` names it and ``reason`` says why."""

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
    """The folder tree does not have the ``root/<class>/<image>`` layout, or holds no images."""


class IDXFormatError(ValueError):
    """An IDX file that is malformed, truncated, of the wrong kind or fails its md5 check."""
