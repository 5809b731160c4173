"""Noise schedules and samplers for DDPM."""

from scheduler.ddim import SPACINGS, DDIMScheduler, ddim_timesteps
from scheduler.dpm_solver import DPMSolverPlusPlusScheduler, dpm_solver_timesteps
from scheduler.extract import draw_noise, extract
from scheduler.linear_noise_scheduler import DiffusionConfig, LinearNoiseScheduler, NoiseScheduler
from scheduler.respace import RespacedDDPMScheduler, respaced_betas
