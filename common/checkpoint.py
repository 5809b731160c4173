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
grad_scaler         the fp16 loss scaler's state, ``None`` for fp32/bf16 runs (may be absent)
step                optimizer steps done
epoch               epochs completed; the epoch in progress has 0-based index ``epoch``
data_offset         samples of epoch ``epoch``'s permutation already consumed (exact mid-epoch resume)
num_samples         dataset size the data order was drawn for
world_size          data-parallel ranks of the run that wrote it (1 if absent); ``train_config.batch_size``
                    is per rank, so the global batch is their product and ``data_offset`` counts global samples
train_seconds       training clock over all sessions (``--max-minutes`` counts it)
class_names         the training data's class folders in label order, or ``None``
rng                 ``{"torch": uint8, "cuda": [uint8, ...], "noise": uint8, "noise_device": str}``
==================  =================================================================================
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import warnings
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
MAX_ABS = 1e4  # a weight beyond this is damage (trained weights are of order 1)
MAX_COUNT = 2**31 - 1  # steps, epochs and samples beyond this are damage


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint of this repository: the message says which and why."""


# ---------------------------------------------------------------------------------------------- writing
def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (temp file beside it, fsync, ``os.replace``); on any failure the
    temp file is removed and the old checkpoint kept. Weights holding NaN/inf are refused before anything is
    written: a diverged model must never replace the last good checkpoint."""
    path = Path(path)
    for key in ("model", "ema"):
        bad = _non_finite_keys(state.get(key))
        if bad:
            raise CheckpointError(f"refusing to write checkpoint {path} at step {state.get('step')}: {key} weights "
                                  f"hold NaN/inf values ({_names(bad)}); the training diverged. The previous "
                                  "checkpoint is kept")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # 0666 less the umask, like any new file
        with os.fdopen(fd, "wb") as f:
            if path.exists():
                os.chmod(f.fileno(), path.stat().st_mode & 0o777)  # replacing a checkpoint keeps its mode
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError):
            raise OSError(err.errno, f"could not write checkpoint {path}: {err.strerror or err}") from err
        if isinstance(err, Exception):
            raise CheckpointError(f"could not write checkpoint {path}: {type(err).__name__}: {err}") from err
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _non_finite_keys(state_dict: Any) -> list[str]:
    """Names of floating-point tensors in ``state_dict`` holding NaN or ±inf (empty if it is not a dict)."""
    if not isinstance(state_dict, dict):
        return []
    return [str(k) for k, v in state_dict.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def remove_stale_temp_files(path: str | Path) -> int:
    """Delete the temp files a killed :func:`save_checkpoint` left beside ``path``; returns how many.
    Call only while holding the run folder's lock."""
    path = Path(path)
    removed = 0
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed += 1
    if removed:
        logger.info("removed %d temp file(s) of an interrupted checkpoint write beside %s", removed, path)
    return removed


# ---------------------------------------------------------------------------------------------- reading
def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint onto the CPU, always with ``weights_only=True``, and :func:`check_checkpoint` it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the write that made it did not finish")
    unreadable = f"{path} is not a readable checkpoint ({size} bytes): it is truncated, corrupt or not a PyTorch file"
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it better
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # the safe loader refused the file before running anything in it
        if "GLOBAL" in str(err):
            raise CheckpointError(f"refusing to load {path}: it holds a Python object that could execute code; "
                                  "weights_only=True refused it, so nothing in the file was run. Treat it as "
                                  "untrusted") from None
        raise CheckpointError(f"{unreadable}; the safe loader refused it without running anything") from None
    except PermissionError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    except Exception as err:  # torch.load on a damaged file raises many kinds of error
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{unreadable} ({type(err).__name__}: {first})") from None
    check_checkpoint(ckpt, path)
    return ckpt


def check_checkpoint(ckpt: Any, source: str | Path = "checkpoint") -> None:
    """Raise CheckpointError unless ``ckpt`` is a dict in this repository's format with sane required keys."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{source} holds a {type(ckpt).__name__}, not a checkpoint dict of this repository")
    if ckpt.get("format") != FORMAT:
        found = ckpt.get("format", "<no 'format' key>")
        raise CheckpointError(f"{source} is not a {FORMAT!r} checkpoint (format: {found!r}; keys: "
                              f"{_names(sorted(map(str, ckpt)))})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{source} lacks required key(s) {missing}")
    for key in ("step", "epoch", "data_offset", "num_samples"):
        value = ckpt.get(key)
        if (key in REQUIRED_KEYS or value is not None) and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT):
            raise CheckpointError(f"{source}[{key!r}] must be an int in [0, {MAX_COUNT}], got {value!r}")
    if ckpt["epoch"] > ckpt["step"] or (ckpt.get("num_samples") is not None
                                        and (ckpt.get("data_offset") or 0) > ckpt["num_samples"]):
        raise CheckpointError(f"{source} holds impossible counters (step {ckpt['step']}, epoch {ckpt['epoch']}, "
                              f"data_offset {ckpt.get('data_offset')} of {ckpt.get('num_samples')} samples)")
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


def _check_weights(model_config: UNetConfig, state_dict: Any, what: str) -> None:
    """Raise CheckpointError naming whatever keeps ``state_dict`` from loading into the UNet ``model_config``
    describes: missing, extra or mis-fitting tensors, then NaN/inf or absurdly large values.

    That UNet is never allocated: a hostile or damaged config (channels=(2**20, ...), layers_per_block=10**7)
    would exhaust memory before the weights are compared. It is built on the ``meta`` device (shapes only), after
    a cheap depth bound — every layer and level holds at least one tensor."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{what} must be a state dict, got {type(state_dict).__name__}")
    depth = model_config.layers_per_block + model_config.mid_layers + len(model_config.channels)
    if depth > len(state_dict):
        raise CheckpointError(
            f"{what} does not fit the model its config describes: the config has layers_per_block="
            f"{model_config.layers_per_block}, mid_layers={model_config.mid_layers} and "
            f"{len(model_config.channels)} widths, more than the {len(state_dict)} tensors stored")
    with torch.device("meta"):
        expected = UNet(model_config).state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(map(str, set(state_dict) - set(expected)))
    mismatched = []
    for k, v in expected.items():
        if k not in state_dict:
            continue
        got = state_dict[k]
        if not torch.is_tensor(got):
            mismatched.append(f"{k} is a {type(got).__name__}, not a tensor")
        elif got.layout != torch.strided:
            mismatched.append(f"{k} is a {got.layout} tensor, not a dense one")
        elif got.shape != v.shape:
            mismatched.append(f"{k} {tuple(got.shape)} vs model {tuple(v.shape)}")
        elif got.dtype != v.dtype:
            mismatched.append(f"{k} is {got.dtype}, the model's is {v.dtype}")
        elif got.untyped_storage().nbytes() < got.numel() * got.element_size():  # zero strides: checking it allocates
            mismatched.append(f"{k} stores fewer values than its shape holds")
    problems = [f"{label}: {_names(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("mismatch", mismatched)) if keys]
    if not problems:  # values are only looked at in a state dict whose every tensor fits the model
        non_finite = _non_finite_keys(state_dict)
        huge = [str(k) for k, v in state_dict.items()
                if v.is_floating_point() and v.numel() and v.abs().max() > MAX_ABS]
        if non_finite:
            problems.append(f"NaN/inf values in {_names(non_finite)} (saved from a diverged run?)")
        elif huge:
            problems.append(f"values beyond ±{MAX_ABS:g} in {_names(huge)}: no trained model holds such weights")
    if problems:
        raise CheckpointError(f"{what} does not fit the model its config describes; " + "; ".join(problems))


def load_state_dict_checked(module: UNet, state_dict: Any, what: str) -> None:
    """``module.load_state_dict(strict=True)``, after :func:`_check_weights` has named whatever does not fit."""
    _check_weights(module.config, state_dict, what)
    module.load_state_dict(state_dict, strict=True)


def weights_key(ckpt: dict, use_ema: bool = True) -> str:
    """Which weights of ``ckpt`` to use: ``"ema"`` where it has an EMA and ``use_ema``, else ``"model"`` (an
    export keeps its EMA weights there)."""
    return "ema" if use_ema and ckpt.get("ema") is not None else "model"


def build_model_from_checkpoint(
    ckpt_or_path: dict | str | Path, use_ema: bool = True, device: str | torch.device = "cpu",
    channels_last: bool = True,
) -> tuple[UNet, LinearNoiseScheduler, dict]:
    """Rebuild ``(UNet in eval mode, LinearNoiseScheduler, checkpoint dict)`` from a checkpoint alone.

    ``use_ema`` loads the EMA weights, falling back to ``"model"`` (logged) where there are none.
    ``channels_last`` lays the convolution weights out NHWC, as training does: oneDNN's and cuDNN's NHWC
    kernels are the fast ones. Inputs may stay NCHW.
    """
    ckpt, source = _as_checkpoint(ckpt_or_path)
    model_config, diffusion_config = configs_from_checkpoint(ckpt, source)
    key = weights_key(ckpt, use_ema)
    if use_ema and key == "model":
        logger.info("%s has no EMA weights; using the raw model weights", source)
    _check_weights(model_config, ckpt[key], f"{source}[{key!r}]")  # before the UNet is allocated
    model = UNet(model_config)
    model.load_state_dict(ckpt[key], strict=True)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format).eval()
    scheduler = LinearNoiseScheduler.from_config(diffusion_config, device=device)
    return model, scheduler, ckpt


def export_weights(ckpt_or_path: dict | str | Path, out_path: str | Path) -> None:
    """Write a slim, sampling-only checkpoint: EMA weights as ``"model"``, no optimizer or RNG state."""
    ckpt, source = _as_checkpoint(ckpt_or_path)
    weights = ckpt[weights_key(ckpt)]
    model_config, _ = configs_from_checkpoint(ckpt, source)
    _check_weights(model_config, weights, f"{source} weights")  # refuse to ship a broken file
    slim = {
        "format": FORMAT,
        "model_config": ckpt["model_config"],
        "diffusion_config": ckpt["diffusion_config"],
        "train_config": ckpt["train_config"],
        "model": {k: v.detach().to("cpu").clone() for k, v in weights.items()},
        "ema": None,
        "step": ckpt["step"],
        "epoch": ckpt["epoch"],
        "class_names": ckpt.get("class_names"),
    }
    save_checkpoint(out_path, slim)
    logger.info("exported sampling weights of %s (step %d) to %s", source, ckpt["step"], out_path)
