"""Everything a run must carry across a crash, in one object: :class:`TrainState`, with ``state_dict()`` and
``load_state_dict()`` (the training part of a checkpoint), and the EMA of the weights it holds.

The EMA follows the power-law profile of Karras et al. 2024 ("Analyzing and Improving the Training Dynamics of
Diffusion Models", Eq. 3):

    θ_ema ← d_t · θ_ema + (1 − d_t) · θ,   d_t = min(decay, (1 − 1/t)^(γ+1)),   t = step + 1

It averages over a fixed *fraction* of the run so far (relative width σ_rel = √(γ+1) / ((γ+2) √(γ+3)), 0.10 at
γ = 6.94) instead of a fixed number of steps, so one setting serves a short CPU run and a long one; ``decay`` caps
d_t. d_1 = 0: the average starts as a copy of the weights, never as a memory of the random initialisation.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn

from common.checkpoint import (
    RESUME_KEYS,
    CheckpointError,
    configs_from_checkpoint,
    load_state_dict_checked,
    weights_key,
)
from models import UNet, UNetConfig
from scheduler import DiffusionConfig
from training.batching import derived_seed
from training.config import HORIZON_FIELDS, RECIPE_FIELDS, TrainConfig
from training.runtime import Performance

logger = logging.getLogger(__name__)


def ema_decay_at(step: int, decay: float, gamma: float) -> float:
    """d_t for the update after optimizer step ``step`` (0-based): min(decay, (1 − 1/(step+1))^(γ+1))."""
    return min(decay, (1.0 - 1.0 / (step + 1)) ** (gamma + 1.0))


class EMA:
    """A frozen copy of ``model`` whose parameters track the power-law average of ``model``'s; ``decay`` caps d_t."""

    def __init__(self, model: nn.Module, decay: float, gamma: float = 6.94) -> None:
        self.decay, self.gamma = decay, gamma
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        """Move the average towards ``model``'s current weights; returns the decay d used."""
        d = ema_decay_at(step, self.decay, self.gamma)
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)  # θ_ema + (1 − d)(θ − θ_ema) = d·θ_ema + (1 − d)·θ
        for ema_buf, buf in zip(self.model.buffers(), model.buffers()):
            ema_buf.copy_(buf)
        return d

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict, strict=True)


@dataclass(eq=False)
class TrainState:
    """The weights θ, their EMA, AdamW, the fp16 loss scaler, the generator of t, ε and label drops, and where
    the run stands. A checkpoint is :meth:`state_dict` plus the configs (see :mod:`common.checkpoint`)."""

    model: UNet
    ema: EMA
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    noise_gen: torch.Generator
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs completed; the one in progress has 0-based index `epoch`
    offset: int = 0  # samples of that epoch's permutation consumed, all ranks together
    clock: float = 0.0  # seconds of training, over all resumes: drives --max-minutes and the LR schedule

    @classmethod
    def create(cls, config: TrainConfig, model_config: UNetConfig, device: torch.device,
               perf: Performance) -> TrainState:
        """A fresh run: θ from ``config.seed`` (the same on every rank), its EMA, AdamW at the peak lr."""
        torch.manual_seed(config.seed)
        model = UNet(model_config).to(device)
        if perf.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return cls(model=model, ema=EMA(model, config.ema_decay, config.ema_gamma),
                   optimizer=torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay),
                   scaler=perf.grad_scaler(device),
                   noise_gen=torch.Generator(device=device).manual_seed(derived_seed(config.seed, 2)))

    def state_dict(self) -> dict:
        device = self.noise_gen.device
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "step": self.step,
            "epoch": self.epoch,
            "data_offset": self.offset,
            "train_seconds": self.clock,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                "noise": self.noise_gen.get_state(),
                "noise_device": device.type,
            },
        }

    def init_weights(self, ckpt: dict, source: str = "checkpoint") -> None:
        """Start θ and its EMA from ``ckpt``'s weights (its EMA where it has one: the better weights of a training
        checkpoint, and what an export holds as ``"model"``); the optimizer, step and RNG stay fresh."""
        key = weights_key(ckpt)
        load_state_dict_checked(self.model, ckpt[key], f"{source}[{key!r}]")
        self.ema.model.load_state_dict(self.model.state_dict())

    def load_state_dict(self, ckpt: dict, source: str = "checkpoint") -> None:
        """Continue from ``ckpt``; a CheckpointError names whatever does not fit. The weight decay stays the one
        this state was created with (the requested recipe), the rest is the checkpoint's."""
        load_state_dict_checked(self.model, ckpt["model"], f"{source}['model']")
        load_state_dict_checked(self.ema.model, ckpt["ema"], f"{source}['ema']")
        weight_decay = [group["weight_decay"] for group in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{source}: optimizer state does not fit the model ({err})") from None
        for group, wd in zip(self.optimizer.param_groups, weight_decay):
            group["weight_decay"] = wd
            betas, eps = group.get("betas", (0.0, 0.0)), group.get("eps", 1.0)
            if not (all(0.0 <= b < 1.0 for b in betas) and 0.0 < eps < 1.0):
                raise CheckpointError(f"{source}: optimizer settings out of range (betas {betas}, eps {eps})")
        for p in self.model.parameters():
            for name, value in self.optimizer.state.get(p, {}).items():
                if name != "step" and (value.shape != p.shape or not bool(torch.isfinite(value).all())):
                    raise CheckpointError(f"{source}: optimizer state {name} {tuple(value.shape)} does not fit a "
                                          f"{tuple(p.shape)} weight or holds NaN/inf")
        if ckpt.get("grad_scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["grad_scaler"])
        self.step, self.epoch, self.offset = int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["data_offset"])
        self.clock = float(ckpt.get("train_seconds", 0.0))
        _restore_rng(ckpt["rng"], self.noise_gen, source)


def _restore_rng(rng: dict, noise_gen: torch.Generator, source: str) -> None:
    device = noise_gen.device
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


def _differences(saved: dict, requested: dict) -> list[str]:
    keys = sorted(set(saved) | set(requested))
    return [f"{k}: checkpoint {saved.get(k)!r} vs requested {requested.get(k)!r}"
            for k in keys if saved.get(k) != requested.get(k)]


def check_resumable(ckpt: dict, source: str, config: TrainConfig, model_config: UNetConfig,
                    diffusion_config: DiffusionConfig, world_size: int = 1) -> None:
    """Refuse a checkpoint of another model, diffusion process or seed (the seed fixes the data order); warn about
    a changed training recipe. The batch compared is the global one: 2 ranks × 64 continue 1 process × 128."""
    missing = [k for k in RESUME_KEYS if ckpt.get(k) is None]
    if missing:
        raise CheckpointError(f"{source} cannot be resumed: it has no {missing} (a sampling-only export? Start a "
                              "new run from its weights with --init-from)")
    check_same_model(ckpt, source, model_config, diffusion_config)
    _resume_recipe_checks(ckpt, source, config, world_size)


def check_same_model(ckpt: dict, source: str, model_config: UNetConfig, diffusion_config: DiffusionConfig) -> None:
    """Refuse a checkpoint of another model or diffusion process (for --resume and --init-from alike)."""
    saved_model, saved_diffusion = configs_from_checkpoint(ckpt, source)
    requested_model = model_config.to_dict()
    if requested_model["image_size"] is None:  # not known before the data is read; checked against it then
        requested_model["image_size"] = saved_model.image_size
    if saved_model.conditional != model_config.conditional:
        raise CheckpointError(
            f"{source} is a {'class-conditional' if saved_model.conditional else 'unconditional'} model: use it "
            + (f"with --conditional --num-classes {saved_model.num_classes}" if saved_model.conditional
               else "without --conditional"))
    diffs = _differences(saved_model.to_dict(), requested_model)
    if diffs:
        raise CheckpointError(f"{source} holds a different model (pass the --model it was trained with, "
                              f"{(ckpt.get('train_config') or {}).get('model')!r}?): " + "; ".join(diffs))
    diffs = _differences(saved_diffusion.to_dict(), diffusion_config.to_dict())
    if diffs:
        raise CheckpointError(f"{source} was trained with another diffusion schedule: " + "; ".join(diffs))


def _resume_recipe_checks(ckpt: dict, source: str, config: TrainConfig, world_size: int) -> None:
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
    changed = _differences(saved, requested)
    if changed:
        logger.warning("resuming with a changed training recipe (the result will differ from an uninterrupted "
                       "run): %s", "; ".join(changed))
