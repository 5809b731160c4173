"""Respaced ("strided") DDPM (scheduler/respace.py): the ᾱ' = ᾱ identity, one step against the posterior
computed independently in float64, the model's timesteps, the Gaussian-data moments of a whole chain, and that
S = T is today's DDPM chain bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from sampling import SamplerConfig, sample_images
from scheduler import LinearNoiseScheduler, RespacedDDPMScheduler, ddim_timesteps, draw_noise, respaced_betas

T = 1000


@pytest.fixture(scope="module")
def ddpm() -> LinearNoiseScheduler:
    return LinearNoiseScheduler(T)


# ---------------------------------------------------------------------------------------- the schedule
@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 50, 250, T])
def test_respaced_alphas_cumprod_equal_the_kept_ones(ddpm, steps, spacing):
    """∏_{j≤i}(1 − β'_j) = ᾱ_{τ_i}: the respaced process has the trained marginals at the kept timesteps."""
    a = ddpm.alphas_cumprod_float64()
    tau = ddim_timesteps(T, steps, spacing).flip(0)  # ascending
    betas = respaced_betas(a, tau)
    torch.testing.assert_close(torch.cumprod(1 - betas, 0), a[tau], atol=1e-15, rtol=1e-12)
    respaced = RespacedDDPMScheduler(ddpm, steps, spacing).respaced
    torch.testing.assert_close(respaced.alphas_cumprod, ddpm.alphas_cumprod[tau], atol=1e-7, rtol=1e-6)
    assert respaced.num_timesteps == steps and float(respaced.posterior_variance[0]) == 0.0


def test_all_timesteps_give_back_the_trained_betas(ddpm):
    """S = T: β'_t = 1 − ᾱ_t/ᾱ_{t−1} = β_t."""
    betas = respaced_betas(ddpm.alphas_cumprod_float64(), torch.arange(T))
    torch.testing.assert_close(betas, torch.linspace(1e-4, 0.02, T, dtype=torch.float64), atol=1e-15, rtol=1e-12)


def test_respaced_betas_reject_repeats(ddpm):
    with pytest.raises(ValueError, match="distinct"):
        respaced_betas(ddpm.alphas_cumprod_float64(), torch.tensor([5, 5, 9]))


# ---------------------------------------------------------------------------------------- one step
@pytest.mark.parametrize("clipped_mean", [False, True])
@pytest.mark.parametrize("t", [999, 519, 19])  # first, middle and last of trailing S = 50 (19 → x0)
def test_one_step_matches_the_float64_posterior(t, clipped_mean):
    """x_{τ_i} → x_{τ_{i−1}} with β' = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}}: mean (Eq. 11, or Eq. 7 at the clamped x̂0) and
    variance β̃' = β'(1 − ᾱ_{τ_{i−1}})/(1 − ᾱ_{τ_i}), computed here from ᾱ alone in float64."""
    ddpm = LinearNoiseScheduler(T, mean_from_clipped_x0=clipped_mean)
    respaced = RespacedDDPMScheduler(ddpm, 50)
    t_prev = t - 20 if t > 19 else None
    a = ddpm.alphas_cumprod_float64()
    a_t, a_p = float(a[t]), 1.0 if t_prev is None else float(a[t_prev])
    beta, alpha = 1 - a_t / a_p, a_t / a_p  # β', α' = 1 − β'
    variance = beta * (1 - a_p) / (1 - a_t)

    g = torch.Generator().manual_seed(t)
    x_t = 1.5 * torch.randn(4, 1, 6, 6, generator=g)  # wide enough that x̂0 leaves [−1, 1]
    eps = torch.randn(4, 1, 6, 6, generator=g)
    z = torch.randn(4, 1, 6, 6, generator=g)
    x, e = x_t.double(), eps.double()
    x0 = (x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
    if clipped_mean:
        mean = (math.sqrt(a_p) * beta * x0.clamp(-1, 1) + math.sqrt(alpha) * (1 - a_p) * x) / (1 - a_t)
    else:
        mean = (x - beta / math.sqrt(1 - a_t) * e) / math.sqrt(alpha)

    x_prev, x0_pred = respaced.step(x_t, eps, t, noise=z)
    torch.testing.assert_close(x0_pred.double(), x0.clamp(-1, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(respaced.step(x_t, eps, t, noise=torch.zeros_like(z))[0].double(), mean,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_prev.double(), mean + math.sqrt(variance) * z.double(), atol=1e-5, rtol=1e-5)
    if t_prev is None:  # the last step adds no noise and (unclamped) lands on x̂0
        assert variance == 0.0
        if not clipped_mean:
            torch.testing.assert_close(x_prev.double(), x0, atol=1e-4, rtol=1e-5)


def test_step_rejects_timesteps_outside_the_subsequence(ddpm):
    respaced = RespacedDDPMScheduler(ddpm, 10)
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"\[500\] are not among the respaced timesteps"):
        respaced.step(x, x, torch.tensor([899, 500]))


# ---------------------------------------------------------------------------------------- whole chains
@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_the_model_sees_the_original_timesteps(ddpm, spacing):
    seen = []

    def eps_fn(x_t, t):
        seen.append(t.tolist())
        return torch.zeros_like(x_t)

    result = sample_images(eps_fn, ddpm, 2, SamplerConfig("ddpm", 25, spacing=spacing), image_shape=(1, 2, 2),
                           progress=False)
    assert [s[0] for s in seen] == ddim_timesteps(T, 25, spacing).tolist() and all(len(set(s)) == 1 for s in seen)
    assert result.num_function_evals == 25 and result.sampler == "ddpm-25"


def test_full_length_is_todays_ddpm_chain_bit_for_bit(ddpm):
    """S = None and S = T both run Algorithm 2 over t = T−1 … 0 with DDPM's own step: the same bits as that loop."""
    def eps_fn(x, t):
        return torch.tanh(0.8 * x + 0.3) * (0.5 + t.view(-1, 1, 1, 1) / (2 * T))

    g = torch.Generator().manual_seed(11)
    expected = []
    for n in (3, 2):  # the batches of 5 samples at batch_size 3
        x = draw_noise((n, 1, 2, 2), g, "cpu")
        for t in range(T - 1, -1, -1):
            t_batch = torch.full((n,), t, dtype=torch.long)
            x, _ = ddpm.sample_prev_timestep(x, eps_fn(x, t_batch), t_batch, generator=g)
        expected.append(x.clamp(-1, 1))
    for config in (SamplerConfig("ddpm"), SamplerConfig("ddpm", T)):
        result = sample_images(eps_fn, ddpm, 5, config, image_shape=(1, 2, 2), batch_size=3,
                               generator=torch.Generator().manual_seed(11), progress=False)
        assert torch.equal(result.images, torch.cat(expected)) and result.sampler == f"ddpm-{T}"


def test_respacing_with_every_timestep_is_ddpm(ddpm):
    """The respaced scheduler over all T steps is DDPM up to float32 rounding of β' = β."""
    respaced = RespacedDDPMScheduler(ddpm, T)
    g = torch.Generator().manual_seed(0)
    x_t, eps, z = (torch.randn(3, 1, 5, 5, generator=g) for _ in range(3))
    for t in (999, 500, 1, 0):
        torch.testing.assert_close(respaced.step(x_t, eps, t, noise=z)[0],
                                   ddpm.sample_prev_timestep(x_t, eps, t, noise=z)[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("steps", [50, 10])
def test_gaussian_data_moments(ddpm, steps):
    """4,096 one-pixel samples with the exact ε of N(μ, s²): mean μ and the std propagated in closed form.

    With y = x − √ᾱ'_i μ and v_i = ᾱ'_i s² + 1 − ᾱ'_i, Eq. 11 on the respaced schedule gives
    y_prev = (1 − β'_i/v_i)/√α'_i · y + √β̃'_i z; checked within 0.01 (≈ 4 s.e.)."""
    mu, s = 0.3, 0.2
    a = ddpm.alphas_cumprod_float64()
    tau = ddim_timesteps(T, steps, "trailing").tolist()
    var = 1.0
    for t, t_prev in zip(tau, tau[1:] + [None]):
        a_t, a_p = float(a[t]), 1.0 if t_prev is None else float(a[t_prev])
        beta, v = 1 - a_t / a_p, a_t * s**2 + 1 - a_t
        var = (1 - beta / v) ** 2 / (1 - beta) * var + beta * (1 - a_p) / (1 - a_t)

    def eps_fn(x_t, t):
        a_t = ddpm.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (1 - a_t).sqrt() * (x_t - a_t.sqrt() * mu) / (a_t * s**2 + 1 - a_t)

    x = sample_images(eps_fn, ddpm, 4096, SamplerConfig("ddpm", steps), image_shape=(1, 1, 1), batch_size=4096,
                      generator=torch.Generator().manual_seed(3), progress=False).images.flatten().double()
    assert abs(float(x.mean()) - mu) < 0.01
    assert abs(float(x.std()) - var**0.5) < 0.01


# ---------------------------------------------------------------------------------------- settings and user errors
def test_repeated_timesteps_are_refused(ddpm):
    for tau in ([1, 5, 5], [3, 3], []):
        with pytest.raises(ValueError, match="respacing needs distinct timesteps"):
            respaced_betas(ddpm.alphas_cumprod_float64(), torch.tensor(tau, dtype=torch.long))


def test_repr_and_devices(ddpm):
    respaced = RespacedDDPMScheduler(ddpm, 10, spacing="leading")
    assert repr(respaced) == "RespacedDDPMScheduler(num_steps=10, spacing='leading', T=1000)"
    on_meta = RespacedDDPMScheduler(LinearNoiseScheduler(T, device="meta"), 10)
    assert on_meta.device.type == "meta" and on_meta._index_of.device.type == "meta"
    moved = RespacedDDPMScheduler(LinearNoiseScheduler(T), 10)
    assert moved.to("meta") is moved
    on = {moved.device, moved.base.device, moved.respaced.device, moved._index_of.device}
    assert {d.type for d in on} == {"meta"}


def test_respaced_index(ddpm):
    respaced = RespacedDDPMScheduler(ddpm, 10)  # τ = 999, 899, …, 99
    assert respaced.respaced_index(99).tolist() == [0] and respaced.respaced_index(999, 2).tolist() == [9, 9]
    with pytest.raises(ValueError, match=r"timesteps \[500\] are not among the respaced timesteps \[999, 899"):
        respaced.respaced_index(torch.tensor([99, 500]), 2)


def test_step_draws_from_the_generator(ddpm):
    respaced = RespacedDDPMScheduler(ddpm, 10)
    x_t, eps = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    z = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(3))
    drawn = respaced.step(x_t, eps, 899, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(drawn, respaced.step(x_t, eps, 899, noise=z)[0])
