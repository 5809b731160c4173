"""The training configuration: one typed, validated dataclass, saved in ``config.json`` and every checkpoint.

Everything a run needs besides the model and diffusion configs (:class:`models.UNetConfig`,
:class:`scheduler.DiffusionConfig`); built from the command line in one place (:func:`training.cli.build_configs`).
Why each default was chosen, with the measurements, is in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from common.argtypes import MAX_INT, MAX_SEED, MAX_WORKERS
from common.device import DEVICES
from dataset.paths import DEFAULT_DATA_PATH
from models.config_dict import DictConfig

MAX_NAME_BYTES = 200  # checkpoint names: the temporary file of an atomic write adds a suffix within 255 bytes
# Written beside the checkpoint:
RUN_FILES = frozenset({"config.json", "metrics.csv", "loss.png", "viz", "samples", "tb"})
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LR_SCHEDULES = ("cosine", "constant")
LOSS_WEIGHTINGS = ("uniform", "min-snr")


@dataclass(frozen=True)
class TrainConfig(DictConfig):
    """How to train. Each field is the ``--flag`` of ``main.py --train-ddpm-model`` with the same name (``python
    main.py --help`` says what it does); where the Python value differs from the flag: ``cache`` is
    ``not --no-cache``, ``grad_clip=None`` is ``--grad-clip 0``, ``num_epochs=MAX_INT`` means only ``max_minutes``
    bounds the run, and ``compile``/``channels_last=None`` decide by device."""

    task_name: str = "runs/mnist_ddpm"
    data_path: str = str(DEFAULT_DATA_PATH)
    model: str = "small"
    batch_size: int = 128
    num_epochs: int = 8
    lr: float = 4e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    ema_gamma: float = 6.94
    loss_weighting: str = "min-snr"
    min_snr_gamma: float = 5.0
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    num_threads: int = 0
    cache: bool = True
    skip_bad: bool = False
    image_size: int | None = None
    channels: int = 1
    extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg")
    final_samples: int = 100
    tensorboard: bool = False
    overwrite: bool = False
    max_steps: int | None = None
    max_minutes: float | None = None
    init_from: str | None = None
    ckpt_save_name: str = "test_001.pth"
    ckpt_every: int = 500
    log_every: int = 50
    viz_save: bool = False
    viz_live: bool = False
    viz_interval: int = 500
    viz_num: int = 8
    viz_t: int = -1
    conditional: bool = False
    cond_drop: float = 0.1
    precision: str = "auto"
    compile: bool | None = None
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "extensions", tuple(self.extensions))  # JSON round trips give lists
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"TrainConfig.{name}: {why} (got {getattr(self, name)!r})")

        def is_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        for name in ("batch_size", "num_epochs", "ckpt_every", "log_every", "viz_interval", "viz_num"):
            if not is_int(getattr(self, name)) or not 1 <= getattr(self, name) <= MAX_INT:
                raise bad(name, f"must be a positive int (at most {MAX_INT})")
        for name in ("warmup_steps", "final_samples"):
            if not is_int(getattr(self, name)) or not 0 <= getattr(self, name) <= MAX_INT:
                raise bad(name, f"must be an int >= 0 (at most {MAX_INT})")
        for name in ("num_workers", "num_threads"):
            if not is_int(getattr(self, name)) or not 0 <= getattr(self, name) <= MAX_WORKERS:
                raise bad(name, f"must be an int >= 0, at most {MAX_WORKERS} (4 per CPU core)")
        if not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise bad("seed", f"must be an int in [0, {MAX_SEED}]")
        if self.max_steps is not None and (not is_int(self.max_steps) or not 1 <= self.max_steps <= MAX_INT):
            raise bad("max_steps", "must be None or a positive int")
        if self.max_minutes is not None and (not is_number(self.max_minutes) or self.max_minutes <= 0):
            raise bad("max_minutes", "must be None or a positive number of minutes")
        if not is_number(self.lr) or not 0 < self.lr <= 1:
            raise bad("lr", "must be a positive number, at most 1")
        if not is_number(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", "must be a number >= 0")
        if not is_number(self.ema_decay) or not 0.0 <= self.ema_decay < 1.0:
            raise bad("ema_decay", "must lie in [0, 1): it caps the EMA decay, 0.999 ≈ an average over 1,000 steps")
        if not is_number(self.ema_gamma) or not 0 <= self.ema_gamma <= 1000:
            raise bad("ema_gamma", "must be a number in [0, 1000] (larger: the EMA averages a shorter part of the run)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad("lr_schedule", f"must be one of {LR_SCHEDULES}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise bad("loss_weighting", f"must be one of {LOSS_WEIGHTINGS}")
        if not is_number(self.min_snr_gamma) or not 0 < self.min_snr_gamma <= 1e6:
            raise bad("min_snr_gamma", "must be a positive number (5 in Hang et al. 2023)")
        if self.grad_clip is not None and (not is_number(self.grad_clip) or self.grad_clip <= 0):
            raise bad("grad_clip", "must be None (no clipping) or a positive gradient norm")
        if not is_number(self.cond_drop) or not 0.0 <= self.cond_drop < 1.0:
            raise bad("cond_drop", "must lie in [0, 1): the probability of dropping a label to the null label")
        if self.image_size is not None and (not is_int(self.image_size) or not 1 <= self.image_size <= 4096):
            raise bad("image_size", "must be None (the data's own size) or a side in [1, 4096] pixels")
        if self.channels not in (1, 3):
            raise bad("channels", "must be 1 (grayscale) or 3 (RGB)")
        if not self.extensions or not all(isinstance(e, str) and e.strip(". ") for e in self.extensions):
            raise bad("extensions", "must list file extensions such as .png,.jpg")
        if self.device not in DEVICES:
            raise bad("device", f"must be one of {DEVICES}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {PRECISIONS}")
        for name in ("compile", "channels_last"):
            if getattr(self, name) not in (None, True, False):
                raise bad(name, "must be None (decide by device), True or False")
        if not is_int(self.viz_t) or not -1 <= self.viz_t <= MAX_INT:
            raise bad("viz_t", "must be -1 (the last timestep) or a timestep in [0, T-1]")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from.strip()):
            raise bad("init_from", "must be None or the path of a checkpoint whose weights start the run")
        if not self.task_name or not str(self.task_name).strip():
            raise bad("task_name", "must name a folder")
        name = self.ckpt_save_name
        if not name or not name.strip() or name != name.strip() or Path(name).name != name or name in (".", ".."):
            raise bad("ckpt_save_name", "must be a plain file name (it is written inside task_name)")
        if len(name.encode()) > MAX_NAME_BYTES:
            raise bad("ckpt_save_name", f"must be at most {MAX_NAME_BYTES} bytes")
        if name in RUN_FILES or name.startswith("."):
            raise bad("ckpt_save_name", f"must not be hidden or one of the run's own files {sorted(RUN_FILES)}")
        if self.lr * self.weight_decay >= 1:  # AdamW multiplies the weights by 1 − lr·wd
            raise bad("weight_decay", f"lr × weight_decay must be < 1 (lr is {self.lr})")

    def resolved_viz_t(self, num_timesteps: int) -> int:
        """``viz_t`` as a 0-based timestep; raises ValueError if it does not exist for T = num_timesteps."""
        t = num_timesteps - 1 if self.viz_t == -1 else self.viz_t
        if not 0 <= t < num_timesteps:
            raise ValueError(f"viz_t={self.viz_t} is beyond the last timestep T-1={num_timesteps - 1}; "
                             "pass a value in [0, T-1] or -1 for the last step")
        return t

    @property
    def run_dir(self) -> Path:
        return Path(self.task_name)

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / self.ckpt_save_name

    @property
    def epoch_limit(self) -> int | None:
        """``num_epochs``, or None when it is MAX_INT: a time budget alone bounds the run."""
        return None if self.num_epochs == MAX_INT else self.num_epochs


# Fields that change the optimisation itself. Resuming with different values is allowed (e.g. a lower lr for
# a second phase) but logged as a warning: the continuation is then no longer the uninterrupted run.
# The run's end moves a decaying lr schedule, so with one these are recipe fields too.
HORIZON_FIELDS = ("max_steps", "max_minutes", "num_epochs")
RECIPE_FIELDS = ("batch_size", "lr", "lr_schedule", "warmup_steps", "weight_decay", "ema_decay", "ema_gamma",
                 "loss_weighting", "min_snr_gamma", "grad_clip", *HORIZON_FIELDS)
