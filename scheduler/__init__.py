"""Noise schedules and samplers for DDPM."""

from scheduler.extract import extract
from scheduler.linear_noise_scheduler import DiffusionConfig, LinearNoiseScheduler

__all__ = ["DiffusionConfig", "LinearNoiseScheduler", "extract"]
