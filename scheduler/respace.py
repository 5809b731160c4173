"""DDPM ancestral sampling over a subsequence of the training steps ("respacing", "strided sampling").

Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models", 2021, section 4
(https://arxiv.org/abs/2102.09672). Keep S of the T timesteps, τ_1 < … < τ_S, and treat them as a diffusion
process of its own: its ᾱ'_i must equal the trained ᾱ_{τ_i}, which fixes its β::

    β'_i = 1 − ᾱ_{τ_i} / ᾱ_{τ_{i−1}},     ᾱ_{τ_0} := 1,     so that ∏_{j≤i} (1 − β'_j) = ᾱ_{τ_i}.

DDPM's ancestral step (Algorithm 2, with β̃'_i = β'_i (1 − ᾱ'_{i−1})/(1 − ᾱ'_i)) then runs unchanged on the S
steps, while the model is called with τ_i, the timesteps it was trained on. The subsequence is chosen as for
DDIM (:func:`scheduler.ddim.ddim_timesteps`); S = T gives back every step and the same process.
"""

from __future__ import annotations

import torch

from scheduler.ddim import ddim_timesteps
from scheduler.extract import FewStepSampler, as_timestep_tensor
from scheduler.linear_noise_scheduler import NoiseScheduler


def respaced_betas(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """β'_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}} (ᾱ_{τ_0} := 1), float64, for the kept ``timesteps [S]`` (any order, no
    repeats) in ascending order of τ; ``alphas_cumprod [T]`` should be float64 for an exact identity."""
    tau = torch.as_tensor(timesteps).sort().values
    if len(tau) == 0 or bool((tau[1:] == tau[:-1]).any()):
        raise ValueError(f"respacing needs distinct timesteps, got {timesteps.tolist()}")
    kept = alphas_cumprod.double()[tau]  # ᾱ_{τ_i}
    prev = torch.cat([torch.ones(1, dtype=torch.float64), kept[:-1]])  # ᾱ_{τ_{i−1}}
    return 1.0 - kept / prev


class RespacedDDPMScheduler(FewStepSampler):
    """DDPM's ancestral step over S = ``num_steps`` of the T trained timesteps, chosen by ``spacing`` as for DDIM.

    ``timesteps`` are the kept original τ_S > … > τ_1 (what the model sees); ``respaced`` is the S-step
    :class:`NoiseScheduler` built from β' (keeping ``mean_from_clipped_x0``), whose step i is τ_{i+1}.
    """

    _tables = ("respaced", "_index_of")

    def __init__(self, scheduler: NoiseScheduler, num_steps: int, spacing: str = "trailing") -> None:
        T = scheduler.num_timesteps
        self.base = scheduler
        self.num_timesteps = T
        self.num_steps = num_steps
        self.spacing = spacing
        self.timesteps = ddim_timesteps(T, num_steps, spacing)  # τ_S, …, τ_1 (descending)
        self.respaced = NoiseScheduler(respaced_betas(scheduler.alphas_cumprod_float64(), self.timesteps),
                                       scheduler.device, scheduler.mean_from_clipped_x0)
        index = torch.full((T,), -1, dtype=torch.long)
        index[self.timesteps.flip(0)] = torch.arange(num_steps)  # τ_{i+1} → i
        self._index_of = index.to(scheduler.device)

    def __repr__(self) -> str:
        return f"RespacedDDPMScheduler(num_steps={self.num_steps}, spacing={self.spacing!r}, T={self.num_timesteps})"

    def respaced_index(self, t: torch.Tensor | int, batch_size: int = 1) -> torch.Tensor:
        """The respaced step i of each original timestep t = τ_{i+1}, as a ``[batch_size]`` LongTensor."""
        t = as_timestep_tensor(t, batch_size, self.num_timesteps, self._index_of.device)
        i = self._index_of[t]
        if bool((i < 0).any()):
            bad = sorted(set(t[i < 0].tolist()))
            raise ValueError(f"timesteps {bad} are not among the respaced timesteps {self.timesteps.tolist()}")
        return i

    def step(self, x_t: torch.Tensor, noise_pred: torch.Tensor, t: torch.Tensor | int,
             generator: torch.Generator | None = None, noise: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step x_{τ_i} → x_{τ_{i−1}}: ``t`` holds the original τ_i (what the model was called with),
        the step is the respaced schedule's :meth:`~NoiseScheduler.sample_prev_timestep` at τ_i's position."""
        i = self.respaced_index(t, x_t.shape[0])
        return self.respaced.sample_prev_timestep(x_t, noise_pred, i, generator=generator, noise=noise)
