"""Checkpoints: atomic writes, safe loads, and rebuilding a model from a checkpoint alone.

A checkpoint is a dict of tensors and plain Python containers/scalars only, so
``torch.load(path, weights_only=True)`` reads it without an allowlist and never executes code:

==================  =================================================================================
key                 value
==================  =================================================================================
format              ``"ddpm-mnist/1"``
model_config        ``UNetConfig.to_dict()`` — enough to rebuild the UNet with no flags
diffusion_config    ``DiffusionConfig.to_dict()`` (T, β_1, β_T)
train_config        ``TrainConfig.to_dict()``
model               the trained weights (state dict)
ema                 the EMA weights used for sampling (state dict), or ``None``
optimizer           AdamW state dict (``None`` in a sampling-only export)
step                optimizer steps done
epoch               epochs completed; the epoch in progress has 0-based index ``epoch``
data_offset         samples of epoch ``epoch``'s permutation already consumed (exact mid-epoch resume)
num_samples         dataset size the data order was drawn for
rng                 ``{"torch": uint8, "cuda": [uint8, ...], "noise": uint8, "noise_device": str}``
==================  =================================================================================

Every load in the repository goes through :func:`load_checkpoint`.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from models import UNet, UNetConfig
from scheduler import DiffusionConfig, LinearNoiseScheduler

logger = logging.getLogger(__name__)

FORMAT = "ddpm-mnist/1"
REQUIRED_KEYS = ("format", "model_config", "diffusion_config", "train_config", "model", "step", "epoch")
RESUME_KEYS = ("ema", "optimizer", "data_offset", "num_samples", "rng")
_MAX_LISTED = 8  # keys named in an error message before "... and N more"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint of this repository: the message says which and why."""


# ---------------------------------------------------------------------------------------------- writing
def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: temp file in the same folder, write, flush, fsync, rename.

    On any exception (including KeyboardInterrupt) the temp file is removed and an existing checkpoint at
    ``path`` is untouched. OSErrors are re-raised as OSError naming ``path``; other errors as CheckpointError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as err:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError):
            raise OSError(err.errno, f"could not write checkpoint {path}: {err.strerror or err}") from err
        if isinstance(err, Exception):
            raise CheckpointError(f"could not write checkpoint {path}: {type(err).__name__}: {err}") from err
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temp_files(path: str | Path) -> int:
    """Delete temp files a killed :func:`save_checkpoint` left beside ``path``; returns how many.

    Call only while holding the run folder's lock (nobody else may be writing there).
    """
    path = Path(path)
    removed = 0
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            tmp.unlink()
            removed += 1
        except OSError:
            pass
    if removed:
        logger.info("removed %d temp file(s) of an interrupted checkpoint write beside %s", removed, path)
    return removed


# ---------------------------------------------------------------------------------------------- reading
def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Read and check a checkpoint; always ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: empty, truncated, random or foreign file; a pickle holding arbitrary objects
            (refused, never executed); a dict without ``format == "ddpm-mnist/1"`` or a required key.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the write that made it did not finish")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it better
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused_global = re.search(r"GLOBAL (\S+)", str(err))
        if refused_global:
            raise CheckpointError(
                f"refusing to load {path}: it holds a Python object ({refused_global.group(1)}) besides tensors "
                "and plain containers, and unpickling it could execute code. Checkpoints of this repository "
                "never do; only load files you trust, and re-save them with training.checkpoint.save_checkpoint"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({size} bytes): it is truncated, corrupt or not a PyTorch file "
            f"of tensors and plain containers (safe loader: {detail.group(1).strip() if detail else 'refused'})"
        ) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, AttributeError,
            TypeError, IndexError, KeyError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({size} bytes): it is truncated, corrupt or not a "
            f"PyTorch file ({type(err).__name__}: {first})"
        ) from None
    check_checkpoint(ckpt, path)
    return ckpt


def check_checkpoint(ckpt: Any, source: str | Path = "checkpoint") -> None:
    """Raise CheckpointError unless ``ckpt`` is a dict in this repository's format with the required keys."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{source} holds a {type(ckpt).__name__}, not a checkpoint dict of this repository "
            f"(format {FORMAT!r})"
        )
    if ckpt.get("format") != FORMAT:
        found = ckpt.get("format", "<no 'format' key>")
        raise CheckpointError(
            f"{source} is not a {FORMAT!r} checkpoint (format: {found!r}; keys: {_names(sorted(map(str, ckpt)))}). "
            "It was not written by this repository's trainer or export_weights"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{source} lacks required key(s) {missing}")
    for key in ("model_config", "diffusion_config", "train_config"):
        if not isinstance(ckpt[key], dict):
            raise CheckpointError(f"{source}[{key!r}] must be a dict, got {type(ckpt[key]).__name__}")


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def _as_checkpoint(ckpt_or_path: dict | str | Path) -> tuple[dict, str]:
    if isinstance(ckpt_or_path, dict):
        check_checkpoint(ckpt_or_path)
        return ckpt_or_path, "checkpoint"
    return load_checkpoint(ckpt_or_path), str(ckpt_or_path)


def configs_from_checkpoint(ckpt: dict, source: str = "checkpoint") -> tuple[UNetConfig, DiffusionConfig]:
    try:
        model_config = UNetConfig.from_dict(dict(ckpt["model_config"]))
        diffusion_config = DiffusionConfig(**ckpt["diffusion_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source} holds an invalid configuration: {err}") from None
    return model_config, diffusion_config


def load_state_dict_checked(module: torch.nn.Module, state_dict: Any, what: str) -> None:
    """``module.load_state_dict(strict=True)`` with a CheckpointError naming missing/extra/mis-shaped keys."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{what} must be a state dict, got {type(state_dict).__name__}")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and (not torch.is_tensor(state_dict[k]) or state_dict[k].shape != v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_names(mismatched)}")
    if problems:
        raise CheckpointError(f"{what} does not fit the model its config describes; " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)


def build_model_from_checkpoint(
    ckpt_or_path: dict | str | Path, use_ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[UNet, LinearNoiseScheduler, dict]:
    """Rebuild ``(UNet in eval mode, LinearNoiseScheduler, checkpoint dict)`` from a checkpoint alone.

    ``use_ema`` loads the EMA weights (what sampling should use); a checkpoint without them falls back to
    ``"model"`` and logs it.
    """
    ckpt, source = _as_checkpoint(ckpt_or_path)
    model_config, diffusion_config = configs_from_checkpoint(ckpt, source)
    model = UNet(model_config)
    key = "ema" if use_ema and ckpt.get("ema") is not None else "model"
    if use_ema and key == "model":
        logger.info("%s has no EMA weights; using the raw model weights", source)
    load_state_dict_checked(model, ckpt[key], f"{source}[{key!r}]")
    model.to(device).eval()
    scheduler = LinearNoiseScheduler.from_config(diffusion_config, device=device)
    return model, scheduler, ckpt


def export_weights(ckpt_or_path: dict | str | Path, out_path: str | Path) -> None:
    """Write a slim, sampling-only checkpoint: EMA weights as ``"model"``, no optimizer or RNG state."""
    ckpt, source = _as_checkpoint(ckpt_or_path)
    weights = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    model_config, _ = configs_from_checkpoint(ckpt, source)
    load_state_dict_checked(UNet(model_config), weights, f"{source} weights")  # refuse to ship a broken file
    slim = {
        "format": FORMAT,
        "model_config": ckpt["model_config"],
        "diffusion_config": ckpt["diffusion_config"],
        "train_config": ckpt["train_config"],
        "model": {k: v.detach().to("cpu").clone() for k, v in weights.items()},
        "ema": None,
        "step": ckpt["step"],
        "epoch": ckpt["epoch"],
    }
    save_checkpoint(out_path, slim)
    logger.info("exported sampling weights of %s (step %d) to %s", source, ckpt["step"], out_path)

