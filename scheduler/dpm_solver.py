"""DPM-Solver++(2M): a second-order multistep solver of the diffusion ODE in its data-prediction form.

Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", 2022 (https://arxiv.org/abs/2211.01095), Algorithm 2, on top of a trained DDPM's ε_θ.

With α_t = √ᾱ_t, σ_t = √(1−ᾱ_t) and the half log-SNR λ_t = log(α_t/σ_t), the probability-flow ODE is solved
in λ from t_{i−1} to t_i (h_i = λ_{t_i} − λ_{t_{i−1}} > 0), using the data prediction
x_θ(x_t, t) = (x_t − σ_t ε_θ(x_t, t))/α_t::

    first order (= DDIM, η = 0):  x_{t_i} = (σ_{t_i}/σ_{t_{i−1}}) x_{t_{i−1}} − α_{t_i}(e^{−h_i} − 1) x_θ(t_{i−1})
    2M, i ≥ 2:                    the same with x_θ(t_{i−1}) replaced by
                                  D_i = (1 + 1/(2r_i)) x_θ(t_{i−1}) − 1/(2r_i) x_θ(t_{i−2}),  r_i = h_{i−1}/h_i

so each step reuses the previous step's x_θ and costs one network call. Choices, all diffusers' defaults for
``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)`` (the tests compare each step):

- **timesteps** (``timestep_spacing="linspace"``): round(linspace(0, T−1, S+1)) reversed, without its final 0:
  T = 1000, S = 10 → 999, 899, …, 100; the last step goes from the smallest (100) straight to x0.
- **the first step** is first order (there is no earlier x_θ yet);
- **the last step** goes to σ = 0 (``final_sigmas_type="zero"``), where h = ∞ and the first-order step is
  exactly x_θ: the sample is the last data prediction. (Lu et al. stop at a small t = ε instead.) diffusers'
  ``lower_order_final`` changes nothing for 2M: only the final step could be lowered, and it is first order.
- **no clamping** by default (diffusers' ``thresholding=False``). ``clip_x0=True`` clamps x_θ to [−1, 1]
  before it is used and kept for the next step — diffusers' ``thresholding=True, sample_max_value=1.0``,
  whose dynamic threshold s is clamped into [1, 1], i.e. static thresholding.

**State.** A multistep solver carries x_θ from one step to the next. The scheduler keeps it, and every chain
starts fresh: the step at ``timesteps[0]`` never reads the previous state (it is first order) and
replaces it, so sampling batch after batch with one scheduler is exact. Steps must come in order; a step
that does not follow the previous one (or changes the batch shape) raises ValueError.
"""

from __future__ import annotations

import numpy as np
import torch

from scheduler.extract import FewStepSampler, as_timestep_tensor, check_same_shape
from scheduler.linear_noise_scheduler import NoiseScheduler


def dpm_solver_timesteps(num_timesteps: int, num_steps: int) -> torch.Tensor:
    """diffusers' ``"linspace"`` timesteps: round(linspace(0, T−1, S+1)), descending, without the final 0.

    numpy's linspace and round (half to even), as diffusers uses them, so ties such as 499.5 round the same way.
    """
    T, S = num_timesteps, num_steps
    if isinstance(S, bool) or not isinstance(S, int) or not 1 <= S <= T:
        raise ValueError(f"the number of DPM-Solver++ steps must be an int in [1, T={T}], got {S!r}")
    tau = torch.from_numpy(np.linspace(0, T - 1, S + 1).round()[::-1][:-1].astype(np.int64))
    if len(tau) > 1 and not bool((tau[:-1] > tau[1:]).all()):
        raise ValueError(f"DPM-Solver++ with S={S} of T={T} steps would repeat timesteps {tau.tolist()}; "
                         f"use S <= {T - 1}")
    return tau


class DPMSolverPlusPlusScheduler(FewStepSampler):
    """DPM-Solver++(2M) steps over S = ``num_steps`` (network calls) timesteps of a trained DDPM."""

    _tables = ("_x0_prev",)  # the step coefficients are Python floats

    def __init__(self, scheduler: NoiseScheduler, num_steps: int = 20, clip_x0: bool = False) -> None:
        self.base = scheduler
        self.num_timesteps = T = scheduler.num_timesteps
        self.num_steps = num_steps
        self.clip_x0 = clip_x0
        self.timesteps = dpm_solver_timesteps(T, num_steps)  # t_0 > t_1 > … > t_{S−1}, then x0

        # Per-step coefficients in float64 from ᾱ at the visited timesteps, as Python floats; entry i belongs to
        # the step from timesteps[i] to timesteps[i + 1], i = 0 … S−2 (the last step, to σ = 0, needs none).
        alphas_cumprod = scheduler.alphas_cumprod_float64()[self.timesteps]
        alpha, sigma = alphas_cumprod.sqrt(), (1.0 - alphas_cumprod).sqrt()  # α_t = √ᾱ_t, σ_t = √(1−ᾱ_t)
        lam = alpha.log() - sigma.log()  # λ_t = log(α_t/σ_t)
        h = lam[1:] - lam[:-1]  # h_i > 0: λ grows as t falls
        self.sigma_ratio = (sigma[1:] / sigma[:-1]).tolist()  # σ_next/σ_t
        self.data_coef = (-alpha[1:] * torch.expm1(-h)).tolist()  # −α_next (e^{−h} − 1)
        self.half_inv_r = [float("nan")] + (0.5 * h[1:] / h[:-1]).tolist()  # 1/(2r_i), r_i = h_{i−1}/h_i; i ≥ 1
        self._position = {t: i for i, t in enumerate(self.timesteps.tolist())}
        self._x0_prev: torch.Tensor | None = None  # x_θ of the previous step of the current chain
        self._next_position = 0

    def __repr__(self) -> str:
        return f"DPMSolverPlusPlusScheduler(num_steps={self.num_steps}, clip_x0={self.clip_x0}, T={self.num_timesteps})"

    def step(self, x_t: torch.Tensor, noise_pred: torch.Tensor, t: torch.Tensor | int,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from ``t`` (one value for the whole batch) to the next timestep; returns ``(x_prev, x_θ(x_t, t))``.

        ``generator`` is unused (the solver is deterministic) but keeps run_chain's step signature.
        """
        check_same_shape(noise_pred, "noise_pred", x_t)
        t = as_timestep_tensor(t, x_t.shape[0], self.num_timesteps, x_t.device)
        if t.numel() == 0 or bool((t != t[0]).any()):
            raise ValueError(f"DPM-Solver++ is multistep: every sample must be at the same timestep, got {t.tolist()}")
        i = self._position.get(int(t[0]))
        if i is None:
            raise ValueError(f"t={int(t[0])} is not a DPM-Solver++ timestep of this schedule {self.timesteps.tolist()}")
        if i > 0 and (i != self._next_position or self._x0_prev is None or self._x0_prev.shape != x_t.shape):
            raise ValueError(
                f"DPM-Solver++ steps must run in order from t={int(self.timesteps[0])} on the same batch: got "
                f"t={int(t[0])} for a batch of shape {tuple(x_t.shape)}, expected t="
                f"{int(self.timesteps[self._next_position]) if self._next_position < self.num_steps else None}"
            )

        # 1. The data prediction x_θ = (x_t − σ_t ε_θ)/α_t, optionally clamped (static thresholding).
        x0_pred = self.base.predict_x0(x_t, noise_pred, t)
        if self.clip_x0:
            x0_pred = x0_pred.clamp(-1.0, 1.0)
        # 2. The last step goes to σ = 0, where the first-order step (h = ∞) is x_θ itself.
        if i == self.num_steps - 1:
            x_prev = x0_pred
        else:
            # 3. D = x_θ on the first step (first order), else (1 + 1/(2r)) x_θ(t_{i−1}) − 1/(2r) x_θ(t_{i−2}).
            d = x0_pred if i == 0 else x0_pred + self.half_inv_r[i] * (x0_pred - self._x0_prev)
            # 4. x_next = (σ_next/σ_t) x_t − α_next (e^{−h} − 1) D.
            x_prev = self.sigma_ratio[i] * x_t + self.data_coef[i] * d
        self._x0_prev, self._next_position = x0_pred, i + 1
        return x_prev, x0_pred
