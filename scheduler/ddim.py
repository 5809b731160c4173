"""DDIM: the non-Markovian reverse process of Song, Meng & Ermon, "Denoising Diffusion Implicit Models", 2021
(https://arxiv.org/abs/2010.02502), on top of a trained DDPM's :class:`LinearNoiseScheduler`.

DDIM reuses the DDPM's ε_θ unchanged and walks a decreasing subsequence τ_S > … > τ_1 of the T training
steps. One step τ_i → τ_{i−1} (Eq. 12, with σ from Eq. 16)::

    x̂0            = (x_τ − √(1−ᾱ_τ) ε_θ) / √ᾱ_τ
    σ_τ(η)        = η · √((1−ᾱ_prev)/(1−ᾱ_τ)) · √(1 − ᾱ_τ/ᾱ_prev)
    x_prev        = √ᾱ_prev · x̂0 + √(1 − ᾱ_prev − σ_τ²) · ε_θ + σ_τ · z,      z ~ N(0, I)

η = 0 is the deterministic DDIM sampler; η = 1 with S = T is exactly DDPM's ancestral step (σ² = β̃_t, the
mean is Eq. 11). Timesteps are 0-based, and the step from τ_1 lands on ᾱ_prev := 1, i.e. on x0 itself
(diffusers' ``set_alpha_to_one=True``).

**The subsequence** (``spacing``; definitions match diffusers' ``timestep_spacing``, see Lin et al.,
"Common Diffusion Noise Schedules and Sample Steps are Flawed", 2024, Table 2):

- ``"trailing"`` (default): τ = round(T − i·T/S) − 1 for i = 0…S−1. Always starts at t = T−1, the step whose
  marginal is closest to the N(0, I) we start from; the last step goes from τ_1 = round(T/S) − 1 to x0.
  T=1000, S=50: 999, 979, …, 19.
- ``"leading"``: τ = i·⌊T/S⌋, i = S−1…0. Always ends at t = 0 but starts below T−1 (980 for S = 50).
- ``"linspace"``: τ = round(linspace(0, T−1, S)). Contains both 0 and T−1; gaps differ by one step.

For S = T all three are T−1, …, 0.

**Clamping.** ``clip_x0=True`` (default) clamps x̂0 to [−1, 1] and re-derives ε' = (x_τ − √ᾱ_τ x̂0)/√(1−ᾱ_τ)
from it (improved-diffusion's ``ddim_sample``, diffusers' ``use_clipped_model_output=True``); with η = 1 and
S = T this is DDPM with ``mean_from_clipped_x0=True``. ``clip_x0=False`` is Eq. 12 verbatim.
"""

from __future__ import annotations

import torch

from scheduler.extract import FewStepSampler, as_timestep_tensor, check_same_shape, extract, step_noise
from scheduler.linear_noise_scheduler import NoiseScheduler

SPACINGS = ("trailing", "leading", "linspace")


def ddim_timesteps(num_timesteps: int, num_steps: int, spacing: str = "trailing") -> torch.Tensor:
    """The subsequence τ_S > … > τ_1 of {0, …, T−1} (``spacing``: see above), a descending ``[num_steps]``."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown DDIM timestep spacing {spacing!r}; choose one of {SPACINGS}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"the number of DDIM steps must be an int in [1, T={num_timesteps}], got {num_steps!r}")
    T, S = num_timesteps, num_steps
    i = torch.arange(S, dtype=torch.float64)
    if spacing == "trailing":
        tau = torch.round(T - i * (T / S)) - 1
    elif spacing == "leading":
        tau = (S - 1 - i) * (T // S)
    else:  # linspace
        tau = torch.round(torch.linspace(0, T - 1, S, dtype=torch.float64)).flip(0)
    tau = tau.long()
    assert bool((tau[:-1] > tau[1:]).all()) and int(tau.min()) >= 0 and int(tau.max()) <= T - 1, tau
    return tau


class DDIMScheduler(FewStepSampler):
    """DDIM steps (Eq. 12) over S = ``num_steps`` of a trained DDPM's T steps, with η = ``eta`` in [0, 1]."""

    _tables = ("sqrt_alphas_cumprod_prev", "sigmas", "dir_coef", "in_subsequence")

    def __init__(self, scheduler: NoiseScheduler, num_steps: int = 50, eta: float = 0.0, spacing: str = "trailing",
                 clip_x0: bool = True) -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta (η) must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta!r}")
        self.base = scheduler
        self.num_timesteps = T = scheduler.num_timesteps
        self.num_steps = num_steps
        self.eta = float(eta)
        self.spacing = spacing
        self.clip_x0 = clip_x0

        self.timesteps = ddim_timesteps(T, num_steps, spacing)  # τ_S, …, τ_1 (descending)
        self.prev_timesteps = torch.cat([self.timesteps[1:], torch.tensor([-1])])  # τ_{i−1}; −1 means x0

        # Coefficients in float64 from the schedule's definition (the scheduler stores float32), then stored
        # as dense [T] tables indexed by t, so `extract` serves per-sample timesteps; only entries at τ are used.
        f64 = torch.float64
        alphas_cumprod = scheduler.alphas_cumprod_float64()  # ᾱ_t
        a_t = alphas_cumprod[self.timesteps]  # ᾱ_τ
        a_prev = torch.where(self.prev_timesteps >= 0, alphas_cumprod[self.prev_timesteps.clamp(min=0)],
                             torch.ones((), dtype=f64))  # ᾱ_prev, := 1 after the last step
        sigma = self.eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)).sqrt()  # σ_τ(η), Eq. 16
        dir_coef = (1.0 - a_prev - sigma**2).clamp(min=0.0).sqrt()  # √(1 − ᾱ_prev − σ²), Eq. 12

        def dense(values: torch.Tensor) -> torch.Tensor:
            table = torch.zeros(T, dtype=f64)
            table[self.timesteps] = values
            return table.to(device=scheduler.device, dtype=torch.float32)

        self.sqrt_alphas_cumprod_prev = dense(a_prev.sqrt())  # √ᾱ_prev
        self.sigmas = dense(sigma)  # σ_τ
        self.dir_coef = dense(dir_coef)  # √(1 − ᾱ_prev − σ_τ²)
        self.in_subsequence = torch.zeros(T, dtype=torch.bool, device=scheduler.device)
        self.in_subsequence[self.timesteps] = True

    def __repr__(self) -> str:
        return (f"DDIMScheduler(num_steps={self.num_steps}, eta={self.eta}, spacing={self.spacing!r}, "
                f"clip_x0={self.clip_x0}, T={self.num_timesteps})")

    def step(self, x_t: torch.Tensor, noise_pred: torch.Tensor, t: torch.Tensor | int,
             generator: torch.Generator | None = None, noise: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step x_τ → x_prev (Eq. 12), every ``t`` in :attr:`timesteps`; arguments and result as for
        :meth:`NoiseScheduler.sample_prev_timestep`, but x0_pred is clamped only with ``clip_x0``."""
        check_same_shape(noise_pred, "noise_pred", x_t)
        if self.device != x_t.device:
            raise ValueError(f"the DDIM tables live on {self.device} but x_t is on {x_t.device}; call ddim.to(device)")
        t = as_timestep_tensor(t, x_t.shape[0], self.num_timesteps, x_t.device)
        if not bool(self.in_subsequence[t].all()):
            bad = sorted(set(t[~self.in_subsequence[t]].tolist()))
            raise ValueError(f"timesteps {bad} are not in this DDIM subsequence {self.timesteps.tolist()}")
        base = self.base

        # 1. x̂0 from ε_θ (Eq. 4 inverted); optionally clamp and re-derive ε so both terms agree.
        x0_pred = base.predict_x0(x_t, noise_pred, t)
        eps = noise_pred
        if self.clip_x0:
            x0_pred = x0_pred.clamp(-1.0, 1.0)
            eps = ((x_t - extract(base.sqrt_alphas_cumprod, t, x_t) * x0_pred)
                   / extract(base.sqrt_one_minus_alphas_cumprod, t, x_t))
        # 2. Eq. 12: "predicted x0" + "direction pointing to x_t".
        x_prev = extract(self.sqrt_alphas_cumprod_prev, t, x_t) * x0_pred + extract(self.dir_coef, t, x_t) * eps
        # 3. "random noise" σ_τ z, only for η > 0 (η = 0 draws nothing, so it leaves the generator untouched).
        if self.eta > 0.0:
            x_prev = x_prev + extract(self.sigmas, t, x_t) * step_noise(x_t, generator, noise)
        return x_prev, x0_pred

