"""DDIM (scheduler/ddim.py): the subsequence, the η = 1 ↔ DDPM identity, determinism at η = 0, and agreement
with diffusers' DDIMScheduler step by step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scheduler import DDIMScheduler, LinearNoiseScheduler, ddim_timesteps

T = 1000


@pytest.fixture(scope="module")
def ddpm() -> LinearNoiseScheduler:
    return LinearNoiseScheduler(T)


def stand_in_eps(x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
    """A deterministic, t-dependent 'noise prediction' (no model needed)."""
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, *([1] * (x.dim() - 1)))
    return torch.tanh(0.8 * x + 0.3) * (0.5 + t / (2 * T))


def gaussian_data_eps(ddpm: LinearNoiseScheduler, x: torch.Tensor, t: int, s: float = 0.6) -> torch.Tensor:
    """Near-ideal ε for data x0 ~ N(0, s²): √(1−ᾱ_t) x_t / (ᾱ_t s² + 1 − ᾱ_t), slightly perturbed.

    Keeps a chain bounded (unlike :func:`stand_in_eps`) while x̂0 still leaves [−1, 1] now and then.
    """
    a = float(ddpm.alphas_cumprod[t])
    return 1.05 * (1 - a) ** 0.5 * x / (a * s**2 + 1 - a) + 0.05 * torch.sin(3 * x)


# ---------------------------------------------------------------------------------------- subsequence
@pytest.mark.parametrize(
    "spacing, steps, expected_head, expected_tail",
    [
        ("trailing", 50, [999, 979, 959], [39, 19]),
        ("leading", 50, [980, 960, 940], [20, 0]),
        ("linspace", 4, [999, 666, 333], [0]),
        ("trailing", 1, [999], [999]),
        ("leading", 1, [0], [0]),
        ("trailing", 3, [999, 666, 332], [332]),  # round(1000 - 2·333.33) - 1 = 333 - 1
    ],
)
def test_timesteps_golden(spacing, steps, expected_head, expected_tail):
    tau = ddim_timesteps(T, steps, spacing).tolist()
    assert len(tau) == steps
    assert tau[: len(expected_head)] == expected_head
    assert tau[-len(expected_tail):] == expected_tail


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 10, 30, 50, 333, 999, 1000])
def test_timesteps_match_diffusers(spacing, steps):
    from diffusers import DDIMScheduler as HFDDIMScheduler

    hf = HFDDIMScheduler(num_train_timesteps=T, beta_schedule="linear", timestep_spacing=spacing)
    hf.set_timesteps(steps)
    ours = ddim_timesteps(T, steps, spacing)
    assert ours.tolist() == hf.timesteps.tolist()
    assert len(set(ours.tolist())) == steps  # strictly decreasing, no repeats


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_full_subsequence_is_every_step(spacing):
    assert ddim_timesteps(T, T, spacing).tolist() == list(range(T - 1, -1, -1))


@pytest.mark.parametrize("bad", [0, T + 1, -3, 2.5, True])
def test_bad_num_steps_raise(bad):
    with pytest.raises(ValueError, match="DDIM steps"):
        ddim_timesteps(T, bad)


def test_bad_spacing_and_eta_raise(ddpm):
    with pytest.raises(ValueError, match="spacing"):
        ddim_timesteps(T, 10, "uniform")
    for eta in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="eta"):
            DDIMScheduler(ddpm, 10, eta=eta)


def test_prev_timesteps_chain(ddpm):
    """τ_{i−1} beside each τ_i; −1 after the last step (which lands on x0)."""
    ddim = DDIMScheduler(ddpm, 50)
    assert ddim.prev_timesteps[:2].tolist() == [979, 959] and ddim.prev_timesteps[-2:].tolist() == [19, -1]
    assert torch.equal(ddim.prev_timesteps[:-1], ddim.timesteps[1:])
    assert DDIMScheduler(ddpm, T).prev_timesteps.tolist() == list(range(T - 2, -2, -1))


def test_step_rejects_timesteps_outside_the_subsequence(ddpm):
    ddim = DDIMScheduler(ddpm, 10)
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"\[500\] are not in this DDIM subsequence"):
        ddim.step(x, x, torch.tensor([899, 500]))


# ---------------------------------------------------------------------------------------- η = 1, S = T is DDPM
def test_eta1_variance_is_posterior_variance(ddpm):
    ddim = DDIMScheduler(ddpm, T, eta=1.0)
    torch.testing.assert_close(ddim.sigmas**2, ddpm.posterior_variance, atol=1e-7, rtol=1e-5)
    assert float(ddim.sigmas[0]) == 0.0  # the last step adds no noise


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("t", [T - 1, 700, 250, 1, 0])
def test_eta1_full_step_equals_ddpm_step(t, clip):
    """With a fixed z, DDIM(η=1, S=T) and DDPM's ancestral step give the same x_{t−1} (mean and σ z).

    clip=False: Eq. 12 verbatim vs Eq. 11; clip=True: clamped x̂0 with ε re-derived vs μ̃(x_t, clamp(x̂0)).
    """
    g = torch.Generator().manual_seed(t)
    ddpm = LinearNoiseScheduler(T, mean_from_clipped_x0=clip)
    ddim = DDIMScheduler(ddpm, T, eta=1.0, clip_x0=clip)
    x_t = 1.5 * torch.randn(4, 1, 8, 8, generator=g)  # wide enough that x̂0 leaves [−1, 1] at large t
    eps = torch.randn(4, 1, 8, 8, generator=g)
    z = torch.randn(4, 1, 8, 8, generator=g)

    mean_ddpm, _ = ddpm.sample_prev_timestep(x_t, eps, t, noise=torch.zeros_like(z))
    mean_ddim, _ = ddim.step(x_t, eps, t, noise=torch.zeros_like(z))
    torch.testing.assert_close(mean_ddim, mean_ddpm, atol=1e-5, rtol=0)

    x_ddpm, x0_ddpm = ddpm.sample_prev_timestep(x_t, eps, t, noise=z)
    x_ddim, x0_ddim = ddim.step(x_t, eps, t, noise=z)
    torch.testing.assert_close(x_ddim, x_ddpm, atol=1e-5, rtol=0)
    if clip:
        torch.testing.assert_close(x0_ddim, x0_ddpm, atol=1e-5, rtol=0)


def test_eta1_full_step_equals_ddpm_for_mixed_timesteps(ddpm):
    """Per-sample timesteps go through the same tables as a shared one."""
    ddim = DDIMScheduler(ddpm, T, eta=1.0, clip_x0=False)
    g = torch.Generator().manual_seed(0)
    x_t, eps, z = (torch.randn(5, 1, 6, 6, generator=g) for _ in range(3))
    t = torch.tensor([999, 400, 37, 1, 0])
    torch.testing.assert_close(ddim.step(x_t, eps, t, noise=z)[0], ddpm.sample_prev_timestep(x_t, eps, t, noise=z)[0],
                               atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------- η = 0 is deterministic
def test_eta0_is_deterministic_and_draws_no_noise(ddpm):
    ddim = DDIMScheduler(ddpm, 20, eta=0.0)
    x = torch.randn(3, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    state = g1.get_state()
    a, _ = ddim.step(x, stand_in_eps(x, 999), 999, generator=g1)
    b, _ = ddim.step(x, stand_in_eps(x, 999), 999, generator=g2)
    c, _ = ddim.step(x, stand_in_eps(x, 999), 999, noise=torch.randn_like(x))
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(g1.get_state(), state)  # η = 0 leaves the RNG untouched


def test_eta0_single_step_lands_on_clamped_x0(ddpm):
    """S = 1 goes straight from t = T−1 to ᾱ = 1: the output is x̂0 itself."""
    ddim = DDIMScheduler(ddpm, 1, eta=0.0)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    eps = stand_in_eps(x, 999)
    x_prev, x0 = ddim.step(x, eps, 999)
    torch.testing.assert_close(x_prev, x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(x0, ddpm.predict_x0(x, eps, 999).clamp(-1, 1))


# ---------------------------------------------------------------------------------------- vs diffusers
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [False, True])
def test_matches_diffusers_ddim(spacing, steps, eta, clip):
    """Step ours and diffusers' DDIMScheduler from the same x_t with the same stand-in ε and z.

    diffusers accumulates ᾱ in float32 (ours in float64, stored as float32); we give it our ᾱ so the test
    compares the step, not the cumprod's rounding. (linspace is left out: diffusers steps every spacing by
    ⌊T/S⌋, which skips its own timesteps when the gaps are uneven; ours steps to the next τ.)
    """
    from diffusers import DDIMScheduler as HFDDIMScheduler

    ddpm = LinearNoiseScheduler(T)
    ours = DDIMScheduler(ddpm, steps, eta=eta, spacing=spacing, clip_x0=clip)
    hf = HFDDIMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         clip_sample=clip, set_alpha_to_one=True, timestep_spacing=spacing, steps_offset=0)
    hf.alphas_cumprod = ddpm.alphas_cumprod.clone()
    hf.set_timesteps(steps)
    assert hf.timesteps.tolist() == ours.timesteps.tolist()

    g = torch.Generator().manual_seed(steps)
    x = torch.randn(3, 1, 8, 8, generator=g)
    for t in ours.timesteps.tolist()[:6] + ours.timesteps.tolist()[-3:]:  # first steps and the last ones
        eps, z = gaussian_data_eps(ddpm, x, t), torch.randn(3, 1, 8, 8, generator=g)
        x_ours, x0_ours = ours.step(x, eps, t, noise=z)
        out = hf.step(eps, t, x, eta=eta, use_clipped_model_output=clip, variance_noise=z if eta > 0 else None)
        torch.testing.assert_close(x0_ours, out.pred_original_sample, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x_ours, out.prev_sample, atol=1e-5, rtol=0)
        x = x_ours  # both continue from the same state, so each step is compared on its own


def test_to_moves_every_table_and_the_base_schedule():
    """``meta`` is a second device even on a CPU-only machine: every table a step reads must follow ``.to``."""
    ddim = DDIMScheduler(LinearNoiseScheduler(T), 10)
    assert ddim.to("meta") is ddim and ddim.device.type == "meta"
    tables = [ddim.sqrt_alphas_cumprod_prev, ddim.sigmas, ddim.dir_coef, ddim.in_subsequence]
    assert {x.device.type for x in tables + [getattr(ddim.base, n) for n in ddim.base._names]} == {"meta"}
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"live on meta but x_t is on cpu; call ddim.to\(device\)"):
        ddim.step(x, x, 999)


# ---------------------------------------------------------------------------------------- settings and user errors
def test_defaults_and_repr(ddpm):
    ddim = DDIMScheduler(ddpm)
    assert repr(ddim) == "DDIMScheduler(num_steps=50, eta=0.0, spacing='trailing', clip_x0=True, T=1000)"
    assert ddim.timesteps.tolist() == ddim_timesteps(T, 50).tolist() and float(ddim.sigmas.max()) == 0.0


@pytest.mark.parametrize("eta", [True, -0.1, 1.5, "0.5"])
def test_bad_eta_is_refused(ddpm, eta):
    with pytest.raises(ValueError, match=r"eta \(η\) must be a number in \[0, 1\]"):
        DDIMScheduler(ddpm, 10, eta=eta)


def test_built_on_a_device_every_table_lives_there():
    ddim = DDIMScheduler(LinearNoiseScheduler(T, device="meta"), 10)
    assert {x.device.type for x in (ddim.sqrt_alphas_cumprod_prev, ddim.sigmas, ddim.dir_coef,
                                    ddim.in_subsequence)} == {"meta"}


@pytest.mark.parametrize("noise_pred, noise, message", [
    (torch.zeros(2, 1, 4, 5), None, r"noise_pred shape \(2, 1, 4, 5\) must equal x_t shape \(2, 1, 4, 4\)"),
    (torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4), r"noise shape \(2, 4, 4\) must equal x_t shape \(2, 1, 4, 4\)"),
])
def test_step_shape_errors(ddpm, noise_pred, noise, message):
    with pytest.raises(ValueError, match=message):
        DDIMScheduler(ddpm, 10, eta=0.5).step(torch.zeros(2, 1, 4, 4), noise_pred, 999, noise=noise)


def test_drawn_noise_is_the_generators_in_the_images_dtype(ddpm):
    ddim = DDIMScheduler(ddpm, 10, eta=0.7)
    x_t, eps = (torch.randn(2, 1, 3, 3, dtype=torch.float64) for _ in range(2))
    z = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    drawn = ddim.step(x_t, eps, 899, generator=torch.Generator().manual_seed(5))[0]
    assert torch.equal(drawn, ddim.step(x_t, eps, 899, noise=z)[0])


@pytest.mark.parametrize("num_timesteps, steps", [(100, 24), (100, 48), (1000, 50)])
def test_trailing_subsequence_is_computed_in_float64(num_timesteps, steps):
    """τ = round(T − i·T/S) − 1 in float64; float32 rounds T=100, S=24's 37.4999… up to 38 (τ = 37, not 36)."""
    expected = np.round(num_timesteps - np.arange(steps) * (num_timesteps / steps)) - 1
    assert ddim_timesteps(num_timesteps, steps).tolist() == expected.astype(np.int64).tolist()
