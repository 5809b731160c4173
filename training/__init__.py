"""Training a DDPM: the loop (:mod:`training.trainer`), its state (:mod:`training.state`), configuration, data
order, data-parallel runtime and what a run records. Checkpoint I/O lives in :mod:`common.checkpoint`, shared with
sampling and evaluation."""

from training.config import TrainConfig
from training.state import EMA, TrainState
from training.trainer import TrainingDiverged, TrainResult, l_simple, train, train_step
