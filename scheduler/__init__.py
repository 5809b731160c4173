"""Noise schedules and samplers for DDPM."""

from scheduler.ddim import SPACINGS, DDIMScheduler, ddim_timesteps
from scheduler.extract import extract
from scheduler.linear_noise_scheduler import DiffusionConfig, LinearNoiseScheduler

__all__ = [
    "SPACINGS",
    "DDIMScheduler",
    "DiffusionConfig",
    "LinearNoiseScheduler",
    "ddim_timesteps",
    "extract",
]
