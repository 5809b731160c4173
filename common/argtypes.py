"""argparse value types for the flags no config dataclass validates: bounds are checked when parsed, so that an
impossible value is a one-line usage error (exit 2) before any work."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

MAX_INT = 2**31 - 1  # counts and sizes beyond this are typos, and would overflow downstream (e.g. randperm)
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed's range
MAX_WORKERS = 4 * (os.cpu_count() or 1)  # DataLoader workers / threads: more only spawns processes until OOM


def _parse(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def number(kind: type, low: float, high: float, must: str | None = None, hint: str = "") -> Callable[[str], float]:
    """A type that parses ``kind`` (int or float) and requires ``low <= value <= high``.

    ``must`` phrases the lower bound for the error message ("be a positive integer"), and ``high`` is then a
    sanity cap ("must be at most …"); without it, both messages give the interval.
    """
    interval = f"[{low}, {high}]"
    requirement = must or f"lie in {interval}"

    def parse(text: str) -> int | float:
        value = _parse(text, kind)
        if must and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}{hint}, got {text}")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must {requirement}{hint}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} in {interval}"
    return parse


positive_int = number(int, 1, MAX_INT, must="be a positive integer")
seed = number(int, 0, MAX_SEED, must="be an integer >= 0")
workers = number(int, 0, MAX_WORKERS, must="be an integer >= 0", hint=" (at most 4 per CPU core)")


def extension_list(text: str) -> tuple[str, ...]:
    """``.png,.jpg`` (or ``png jpg``) → ``(".png", ".jpg")``."""
    parts = [p.strip().lower() for p in text.replace(" ", ",").split(",") if p.strip()]
    if not parts or any(not p.strip(".") or "/" in p for p in parts):
        raise argparse.ArgumentTypeError(f"expected file extensions such as .png,.jpg, got {text!r}")
    return tuple(p if p.startswith(".") else f".{p}" for p in parts)
