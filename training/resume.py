"""What a resumed run checks and restores beyond the weights: matching configs, and the RNG streams.

A checkpoint can continue a run only if it describes the same model (every UNetConfig field), the same
diffusion process and the same seed (the seed fixes the data order). The training recipe (lr, batch size,
EMA decay, ...) may change — a warning says the run is then no longer the uninterrupted one.
"""

from __future__ import annotations

import logging

import torch

from models import UNetConfig
from scheduler import DiffusionConfig
from training.checkpoint import RESUME_KEYS, CheckpointError, configs_from_checkpoint
from training.config import HORIZON_FIELDS, RECIPE_FIELDS, TrainConfig

logger = logging.getLogger(__name__)


def config_differences(saved: dict, requested: dict) -> list[str]:
    keys = sorted(set(saved) | set(requested))
    return [f"{k}: checkpoint {saved.get(k)!r} vs requested {requested.get(k)!r}"
            for k in keys if saved.get(k) != requested.get(k)]


def check_resumable(ckpt: dict, source: str, config: TrainConfig, model_config: UNetConfig,
                     diffusion_config: DiffusionConfig, world_size: int = 1) -> None:
    """Refuse checkpoints that cannot continue this run; warn about changed training recipe.

    The batch compared is the global one, ``batch_size × world_size``: 2 ranks × 64 continue a 1-process run
    with batch 128 exactly (see :mod:`training.distributed`)."""
    missing = [k for k in RESUME_KEYS if ckpt.get(k) is None]
    if missing:
        raise CheckpointError(f"{source} cannot be resumed: it has no {missing} (a sampling-only export?)")
    saved_model, saved_diffusion = configs_from_checkpoint(ckpt, source)
    requested_model = model_config.to_dict()
    if requested_model["image_size"] is None:  # not known before the data is read; checked against it then
        requested_model["image_size"] = saved_model.image_size
    if saved_model.conditional != model_config.conditional:
        raise CheckpointError(
            f"{source} is a {'class-conditional' if saved_model.conditional else 'unconditional'} model: resume it "
            + (f"with --conditional --num-classes {saved_model.num_classes}" if saved_model.conditional
               else "without --conditional"))
    diffs = config_differences(saved_model.to_dict(), requested_model)
    if diffs:
        raise CheckpointError(f"{source} holds a different model (pass the --model it was trained with, "
                              f"{ckpt['train_config'].get('model')!r}?): " + "; ".join(diffs))
    diffs = config_differences(saved_diffusion.to_dict(), diffusion_config.to_dict())
    if diffs:
        raise CheckpointError(f"{source} was trained with another diffusion schedule: " + "; ".join(diffs))
    saved_train = ckpt["train_config"]
    if saved_train.get("seed") != config.seed:
        raise CheckpointError(f"{source} was trained with --seed {saved_train.get('seed')}, not {config.seed}; "
                              "the seed fixes the data order, so pass the same --seed to resume")
    fields = [k for k in RECIPE_FIELDS if k not in HORIZON_FIELDS or config.lr_schedule != "constant"]
    saved = {k: saved_train.get(k) for k in fields}
    requested = {k: getattr(config, k) for k in fields}
    if isinstance(saved["batch_size"], int):
        saved["batch_size"] *= int(ckpt.get("world_size", 1))
    requested["batch_size"] *= world_size
    changed = config_differences(saved, requested)
    if changed:
        logger.warning("resuming with a changed training recipe (the result will differ from an uninterrupted "
                       "run): %s", "; ".join(changed))


def restore_rng(rng: dict, noise_gen: torch.Generator, device: torch.device, source: str) -> None:
    try:
        torch.set_rng_state(rng["torch"])
        if device.type == "cuda" and rng.get("cuda"):
            torch.cuda.set_rng_state_all(rng["cuda"])
        if rng.get("noise_device") == device.type:
            noise_gen.set_state(rng["noise"])
        else:
            logger.warning("%s was trained on %s, now on %s: the t/ε random stream restarts (training continues "
                           "correctly but not bit-identically)", source, rng.get("noise_device"), device.type)
    except (KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{source}: unusable RNG state ({type(err).__name__}: {err})") from None
