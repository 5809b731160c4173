"""Which torch device a run uses: the one place ``--device auto|cpu|cuda`` is resolved."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` → ``cuda`` if available, else ``cpu``; ``cuda`` without CUDA is a ValueError. ``name`` is one of
    ``DEVICES`` (argparse's choices and TrainConfig check it)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but CUDA is not available; use --device cpu or auto")
    return torch.device(name)
