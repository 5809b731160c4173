"""Listing a class-folder tree ``root/<class>/<image>`` (torchvision ``ImageFolder``'s rules where they overlap).

* every visible sub-folder of ``root`` is a class, labelled 0, 1, ... in :func:`sort_class_names` order;
* a class holds the files directly in its folder whose extension (case-insensitive) is in ``extensions``;
* names starting with "." are ignored;
* within a class, files are in :func:`natural_key` order (``2.png`` < ``10.png``), the same on every machine.

Symlinks are followed. An unreadable file stays in the listing so that opening it raises
:class:`~dataset.errors.BadImageError` (which ``skip_bad=True`` can skip); an unlistable folder raises
:class:`~dataset.errors.DatasetLayoutError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from dataset.errors import DatasetLayoutError
from dataset.paths import PREPARE_COMMAND

DEFAULT_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")


def natural_key(name: str) -> list[str | int]:
    """Sort key comparing digit runs as integers: ``"img10"`` sorts after ``"img2"``."""
    # re.split with a group alternates text and digit runs, so positions always hold the same type
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name))]


def normalize_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    """Lower-case extensions with a leading dot: ``["PNG", ".Jpg"]`` -> ``(".png", ".jpg")``."""
    if isinstance(extensions, str):
        extensions = (extensions,)
    normalized = tuple(sorted({"." + ext.lower().lstrip(".") for ext in extensions if ext.strip(". ")}))
    if not normalized:
        raise ValueError(f"extensions must name at least one file extension, e.g. ('.png',); got {extensions!r}")
    return normalized


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: natural_key(e.name))
    except PermissionError as err:
        raise DatasetLayoutError(f"cannot list folder {folder}: permission denied. Fix its permissions") from err
    except OSError as err:
        raise DatasetLayoutError(f"cannot list folder {folder}: {err}") from err


def _is_dir(entry: os.DirEntry) -> bool:
    """entry.is_dir() following symlinks; a broken link or symlink loop is an error naming it."""
    try:
        is_dir = entry.is_dir()
        if not is_dir and entry.is_symlink() and not os.path.exists(entry.path):
            raise FileNotFoundError(f"broken symlink {entry.path}")
    except OSError as err:
        raise DatasetLayoutError(
            f"cannot access {entry.path} ({err.strerror or err}); it is a broken symlink or a symlink loop. "
            "Remove it or point it at a real folder"
        ) from err
    return is_dir


def sort_class_names(names: Iterable[str]) -> list[str]:
    """Class names in label order: numerically when all are integers (``2`` < ``10``), else by name."""
    names = list(names)
    if all(re.fullmatch(r"[+-]?\d+", n) for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def scan_class_folders(
    root: str | Path, extensions: Iterable[str] = DEFAULT_EXTENSIONS
) -> tuple[list[str], list[tuple[Path, int]]]:
    """(classes, samples) of the tree at ``root``: sorted class names and (path, label) pairs.

    Raises FileNotFoundError if ``root`` is missing, DatasetLayoutError if it has no class folders or
    a class folder holds no image with one of ``extensions``.
    """
    root = Path(root)
    extensions = normalize_extensions(extensions)
    if not root.exists():
        raise FileNotFoundError(
            f"image folder {root} does not exist. Expected a class-folder tree {root}/<class>/<image>; "
            f"for MNIST create it with `{PREPARE_COMMAND}`"
        )
    if not root.is_dir():
        raise DatasetLayoutError(f"{root} is a file; expected a folder holding one sub-folder per class")

    entries = _visible_entries(root)
    class_entries = [e for e in entries if _is_dir(e)]
    if not class_entries:
        loose = sum(os.path.splitext(e.name)[1].lower() in extensions for e in entries)
        hint = f" It holds {loose} image file(s) directly; move them into one sub-folder per class." if loose else ""
        raise DatasetLayoutError(
            f"{root} has no class folders. Expected {root}/<class>/<image> (e.g. {root}/0/0.png).{hint} "
            f"For MNIST run `{PREPARE_COMMAND}`"
        )

    classes = sort_class_names(e.name for e in class_entries)
    samples: list[tuple[Path, int]] = []
    empty: list[str] = []
    for label, name in enumerate(classes):
        found = [
            Path(e.path)
            for e in _visible_entries(root / name)
            if os.path.splitext(e.name)[1].lower() in extensions and not _is_dir_quiet(e)
        ]
        if not found:
            empty.append(str(root / name))
        samples.extend((path, label) for path in found)
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        hint = ""
        if any(_has_subfolder(Path(folder)) for folder in empty):
            hint = (
                f" {root} looks like a data root holding split folders: pass one of them as --data-path "
                f"(e.g. --data-path {root / 'train'})"
            )
        raise DatasetLayoutError(
            f"class folder(s) {shown} hold no images with extensions {extensions}. Add images, remove "
            f"the empty folder(s), or pass --extensions (extensions=... in Python) to match your files.{hint}"
        )
    return classes, samples


def _has_subfolder(folder: Path) -> bool:
    try:
        return any(p.is_dir() for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return False


def _is_dir_quiet(entry: os.DirEntry) -> bool:
    """Like entry.is_dir() but an unreadable entry counts as a file (reported when it is opened)."""
    try:
        return entry.is_dir()
    except OSError:
        return False

