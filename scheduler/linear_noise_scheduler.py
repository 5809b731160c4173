"""DDPM's two processes over a noise schedule (:class:`NoiseScheduler`), and the linear-β schedule the models
are trained with (:class:`LinearNoiseScheduler`).

Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", 2020 (https://arxiv.org/abs/2006.11239).
Timesteps are 0-based: index ``t`` in ``[0, T-1]`` is the paper's step ``t + 1``; so ``betas[0]`` is β_1
and ``alphas_cumprod[0]`` is ᾱ_1 = 1 − β_1.

Every schedule tensor is computed in float64 and stored once as float32, shape ``[T]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from scheduler.extract import as_timestep_tensor, check_same_shape, extract, step_noise

MIN_ALPHA_BAR = 1e-30  # ᾱ_T below this leaves float32's normal range once square-rooted and inverted


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion process: T steps and a linear β schedule from ``beta_start`` to ``beta_end``."""

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        T = self.num_timesteps
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"num_timesteps must be a positive int, got {T!r}")
        for name in ("beta_start", "beta_end"):
            value = getattr(self, name)
            if not 0.0 < float(value) < 1.0:
                raise ValueError(f"{name} must lie in the open interval (0, 1), got {value}")
        if self.beta_start > self.beta_end:
            raise ValueError(f"beta_start ({self.beta_start}) must not exceed beta_end ({self.beta_end}): the linear "
                             "schedule increases the noise level with t")
        if T > 100_000:
            raise ValueError(f"num_timesteps={T} is beyond any useful T (the schedule is held in memory; the paper "
                             "uses 1000)")
        betas = torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float64)
        log_alpha_bar_T = float(torch.log1p(-betas).sum())  # log ᾱ_T = Σ log(1 − β_t)
        if log_alpha_bar_T < math.log(MIN_ALPHA_BAR):
            raise ValueError(
                f"this schedule (T={T}, β from {self.beta_start} to {self.beta_end}) drives ᾱ_T to "
                f"exp({log_alpha_bar_T:.0f}), below float32's range: x̂0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t would divide by "
                "zero and sampling would give NaN. Lower --beta-end or --num-timesteps (the paper: 0.02, 1000)")

    def to_dict(self) -> dict:
        return asdict(self)


class NoiseScheduler:
    """Forward (q) and reverse (p) steps of DDPM for any β_1 … β_T in (0, 1], ``betas [T]``: the linear training
    schedule, and DDPM respaced to fewer steps (:mod:`scheduler.respace`), whose β' are not linear.

    ``mean_from_clipped_x0`` picks the reverse mean of :meth:`sample_prev_timestep`: ``False`` — Eq. 11, as in
    Algorithm 2; ``True`` — Eq. 7's posterior mean μ̃(x_t, clamp(x̂0)), identical whenever x̂0 needs no clamping,
    which keeps early, noisy predictions inside the data range (improved-diffusion's default).
    """

    def __init__(self, betas: torch.Tensor, device: str | torch.device = "cpu",
                 mean_from_clipped_x0: bool = False) -> None:
        f64 = torch.float64
        betas = torch.as_tensor(betas).detach().to(device="cpu", dtype=f64)  # β_t
        if betas.dim() != 1 or len(betas) < 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError(f"betas must be a non-empty 1-d sequence of values in (0, 1], got {betas}")
        self.num_timesteps = len(betas)
        self.mean_from_clipped_x0 = mean_from_clipped_x0
        self._betas_float64 = betas

        alphas = 1.0 - betas  # α_t = 1 − β_t
        alphas_cumprod = torch.cumprod(alphas, dim=0)  # ᾱ_t = ∏_{s≤t} α_s
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=f64), alphas_cumprod[:-1]])  # ᾱ_{t−1}, ᾱ_0 := 1
        schedule = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),  # √ᾱ_t
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),  # √(1−ᾱ_t)
            "sqrt_recip_alphas": alphas.rsqrt(),  # 1/√α_t
            "sqrt_recip_alphas_cumprod": alphas_cumprod.rsqrt(),  # 1/√ᾱ_t
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),  # √(1/ᾱ_t − 1)
            "eps_coef": betas / (1.0 - alphas_cumprod).sqrt(),  # β_t/√(1−ᾱ_t), Eq. 11
            # β̃_t = β_t (1−ᾱ_{t−1})/(1−ᾱ_t), Eq. 7; β̃ at t=0 is 0 (no noise is added there).
            "posterior_variance": betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            # μ̃_t = coef1 · x0 + coef2 · x_t, Eq. 7
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
        }
        self._names = tuple(schedule)
        for name, value in schedule.items():
            setattr(self, name, value.to(device=device, dtype=torch.float32))

    def alphas_cumprod_float64(self) -> torch.Tensor:
        """ᾱ_t as a float64 CPU tensor ``[T]``, recomputed from β (the stored tables are float32), for samplers
        that derive coefficients of their own (DDIM, DPM-Solver++, respacing)."""
        return torch.cumprod(1.0 - self._betas_float64, dim=0)

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device: str | torch.device) -> NoiseScheduler:
        """Move every schedule tensor to ``device`` (in place) and return ``self``."""
        for name in self._names:
            setattr(self, name, getattr(self, name).to(device))
        return self

    def __repr__(self) -> str:
        return f"NoiseScheduler(num_timesteps={self.num_timesteps}, device={self.device})"

    # ------------------------------------------------------------------ forward process q
    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None,
                         device: str | torch.device = None) -> torch.Tensor:
        """t ~ Uniform{0, …, T−1}, shape ``[batch_size]`` (Algorithm 1, line 3)."""
        device = self.device if device is None else device
        gen_device = generator.device if generator is not None else device
        t = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=gen_device)
        return t.to(device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """x_t = √ᾱ_t · x0 + √(1−ᾱ_t) · ε  (Eq. 4, reparameterised), for ``x0, noise [B, ...]``."""
        check_same_shape(noise, "noise", x0, "x0")
        t = as_timestep_tensor(t, x0.shape[0], self.num_timesteps, x0.device)
        return (extract(self.sqrt_alphas_cumprod, t, x0) * x0
                + extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    # ------------------------------------------------------------------ reverse process p
    def predict_x0(self, x_t: torch.Tensor, noise_pred: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """x̂0 = (x_t − √(1−ᾱ_t) · ε_θ) / √ᾱ_t — Eq. 4 solved for x0 (not clamped)."""
        t = as_timestep_tensor(t, x_t.shape[0], self.num_timesteps, x_t.device)
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * noise_pred)

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """μ̃_t(x_t, x0) of q(x_{t−1} | x_t, x0), Eq. 7."""
        t = as_timestep_tensor(t, x_t.shape[0], self.num_timesteps, x_t.device)
        return extract(self.posterior_mean_coef1, t, x_t) * x0 + extract(self.posterior_mean_coef2, t, x_t) * x_t

    def reverse_mean(self, x_t: torch.Tensor, noise_pred: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """μ_θ(x_t, t) = (x_t − β_t/√(1−ᾱ_t) · ε_θ) / √α_t, Eq. 11."""
        t = as_timestep_tensor(t, x_t.shape[0], self.num_timesteps, x_t.device)
        return extract(self.sqrt_recip_alphas, t, x_t) * (x_t - extract(self.eps_coef, t, x_t) * noise_pred)

    def sample_prev_timestep(self, x_t: torch.Tensor, noise_pred: torch.Tensor, t: torch.Tensor | int,
                             generator: torch.Generator | None = None, noise: torch.Tensor | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step x_t → x_{t−1} (Algorithm 2, line 4); returns ``(x_prev, x0_pred)``.

        ``noise_pred`` is ε_θ(x_t, t); samples may sit at different steps ``t [B]``; ``noise`` is z itself (it
        overrides ``generator``).
        """
        check_same_shape(noise_pred, "noise_pred", x_t)
        t = as_timestep_tensor(t, x_t.shape[0], self.num_timesteps, x_t.device)

        # 1. x̂0 from the predicted noise (Eq. 4 inverted), clamped to the data range.
        x0_pred = self.predict_x0(x_t, noise_pred, t).clamp(-1.0, 1.0)
        # 2. the reverse mean: Eq. 11 by default, or Eq. 7 at the clamped x̂0.
        if self.mean_from_clipped_x0:
            mean = self.posterior_mean(x0_pred, x_t, t)
        else:
            mean = self.reverse_mean(x_t, noise_pred, t)
        # 3. add σ_t z with σ_t² = β̃_t. β̃ at t = 0 is exactly 0 (ᾱ_{t−1} := 1), so the last step adds no
        #    noise (Algorithm 2: z = 0 if t = 1) without a special case.
        x_prev = mean + extract(self.posterior_variance, t, x_t).sqrt() * step_noise(x_t, generator, noise)
        return x_prev, x0_pred


class LinearNoiseScheduler(NoiseScheduler):
    """DDPM with β_t linear in t from β_1 = ``beta_start`` to β_T = ``beta_end``: the training schedule."""

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 device: str | torch.device = "cpu", mean_from_clipped_x0: bool = False) -> None:
        self.config = DiffusionConfig(num_timesteps, beta_start, beta_end)
        self.beta_start = beta_start
        self.beta_end = beta_end
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)  # β_t
        super().__init__(betas, device, mean_from_clipped_x0)

    @classmethod
    def from_config(cls, config: DiffusionConfig, **kwargs) -> LinearNoiseScheduler:
        return cls(config.num_timesteps, config.beta_start, config.beta_end, **kwargs)

    def __repr__(self) -> str:
        return (f"LinearNoiseScheduler(num_timesteps={self.num_timesteps}, beta_start={self.beta_start}, "
                f"beta_end={self.beta_end}, device={self.device})")
