"""Training a DDPM: the loop, its configuration, checkpoints, EMA, metrics and visualisation.

Other packages (sampling, evaluation) use the checkpoint API::

    from training import build_model_from_checkpoint, load_checkpoint, export_weights, CheckpointError
"""

from training.checkpoint import (
    FORMAT,
    CheckpointError,
    build_model_from_checkpoint,
    export_weights,
    load_checkpoint,
    save_checkpoint,
)
from training.config import TrainConfig
from training.ema import EMA
from training.trainer import TrainingDiverged, TrainResult, l_simple, train

__all__ = [
    "EMA",
    "FORMAT",
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "build_model_from_checkpoint",
    "export_weights",
    "l_simple",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
