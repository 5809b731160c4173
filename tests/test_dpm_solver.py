"""DPM-Solver++(2M) (scheduler/dpm_solver.py): its timesteps and every step against diffusers'
DPMSolverMultistepScheduler, the paper's Algorithm 2 in float64, the first-order step = DDIM identity, and the
multistep state across chains and batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sampling import SamplerConfig, run_chain, sample_images
from scheduler import DPMSolverPlusPlusScheduler, LinearNoiseScheduler, dpm_solver_timesteps, draw_noise

T = 1000


@pytest.fixture(scope="module")
def ddpm() -> LinearNoiseScheduler:
    return LinearNoiseScheduler(T)


def stand_in_eps(ddpm: LinearNoiseScheduler, x: torch.Tensor, t: int, s: float = 0.6) -> torch.Tensor:
    """A fixed, t-dependent 'noise prediction' that is not 0: the exact ε of data N(0, s²), √(1−ᾱ_t) x/(ᾱ_t s² +
    1 − ᾱ_t), scaled by 1.05 and perturbed by 0.05 sin(3x). Keeps the chain bounded while x̂0 still leaves [−1, 1]."""
    a = float(ddpm.alphas_cumprod[t])
    return 1.05 * (1 - a) ** 0.5 * x / (a * s**2 + 1 - a) + 0.05 * torch.sin(3 * x)


def diffusers_dpm_solver(steps: int, clip: bool):
    from diffusers import DPMSolverMultistepScheduler

    hf = DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        algorithm_type="dpmsolver++", solver_order=2, prediction_type="epsilon",
        thresholding=clip, sample_max_value=1.0,  # with max 1, the dynamic threshold s is 1: clamp to [−1, 1]
    )
    hf.set_timesteps(steps)
    return hf


# ---------------------------------------------------------------------------------------- timesteps
def test_timesteps_golden():
    assert dpm_solver_timesteps(T, 10).tolist() == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]  # 499.5 → 500
    assert dpm_solver_timesteps(T, 1).tolist() == [999]
    assert dpm_solver_timesteps(T, 999).tolist() == list(range(999, 0, -1))


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 15, 20, 25, 50, 100, 250, 333, 500, 999])
def test_timesteps_match_diffusers(steps):
    assert dpm_solver_timesteps(T, steps).tolist() == diffusers_dpm_solver(steps, False).timesteps.tolist()


@pytest.mark.parametrize("bad", [0, T, T + 1, 2.5, True])
def test_bad_num_steps_raise(bad):
    with pytest.raises(ValueError, match="DPM-Solver"):
        dpm_solver_timesteps(T, bad)


# ---------------------------------------------------------------------------------------- vs diffusers
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("steps", [10, 20, 3, 1])
def test_matches_diffusers_step_by_step(ddpm, steps, clip):
    """Both solvers run their own chain from the same x_T with the same stand-in ε; every intermediate x and
    every x_θ agree within 1e-5 (measured: ≤ 2e-6).

    diffusers runs unmodified, in float32: unlike DDPM (tests/test_scheduler.py), DPM-Solver++ uses only ᾱ
    (through α, σ and λ), never β recovered as 1 − ᾱ_t/ᾱ_{t−1}, and diffusers' float32 cumprod of ᾱ is within
    4e-7 (relative) of our float64 one, so no float64 run is needed. clip=True is diffusers' thresholding with
    sample_max_value = 1, i.e. clamping x_θ to [−1, 1].
    """
    ours = DPMSolverPlusPlusScheduler(ddpm, steps, clip_x0=clip)
    hf = diffusers_dpm_solver(steps, clip)
    assert hf.timesteps.tolist() == ours.timesteps.tolist()

    x = 1.3 * torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(steps))
    x_hf = x.clone()
    largest_x0 = 0.0
    for t in ours.timesteps.tolist():
        x, x0 = ours.step(x, stand_in_eps(ddpm, x, t), t)
        x_hf = hf.step(stand_in_eps(ddpm, x_hf, t), t, x_hf).prev_sample
        # diffusers keeps x_θ in model_outputs; |x_θ| reaches ~10 at t = 999, hence the relative tolerance
        torch.testing.assert_close(x0, hf.model_outputs[-1], atol=1e-5, rtol=1e-5)
        # S = 1 lands on x_θ(x_T, 999) itself, ~10 in size: float32 resolves that to ~1e-6 relative
        torch.testing.assert_close(x, x_hf, atol=1e-5, rtol=1e-5 if steps == 1 else 0)
        largest_x0 = max(largest_x0, float(x0.abs().max()))
    assert largest_x0 == 1.0 if clip else largest_x0 > 1.0  # x̂0 leaves [−1, 1], so clamping is exercised


# ---------------------------------------------------------------------------------------- vs the paper
def algorithm_2_float64(ddpm: LinearNoiseScheduler, x: torch.Tensor, timesteps: list[int]) -> list[torch.Tensor]:
    """Lu et al.'s DPM-Solver++(2M) in their notation, in float64, ending with x_θ at the last timestep."""
    a_bar = ddpm.alphas_cumprod_float64()
    alpha = lambda t: math.sqrt(a_bar[t])  # noqa: E731
    sigma = lambda t: math.sqrt(1 - a_bar[t])  # noqa: E731
    lam = lambda t: math.log(alpha(t) / sigma(t))  # noqa: E731
    x = x.double()
    x_theta = lambda x, t: (x - sigma(t) * stand_in_eps(ddpm, x, t)) / alpha(t)  # noqa: E731
    xs, q = [], []
    for i, t in enumerate(timesteps):
        q.append(x_theta(x, t))
        if i == len(timesteps) - 1:  # to σ = 0: h = ∞, the first-order step is x_θ itself
            x = q[-1]
        else:
            t_next = timesteps[i + 1]
            h = lam(t_next) - lam(t)
            if i == 0:
                d = q[-1]
            else:
                r = (lam(t) - lam(timesteps[i - 1])) / h
                d = (1 + 1 / (2 * r)) * q[-1] - 1 / (2 * r) * q[-2]
            x = sigma(t_next) / sigma(t) * x - alpha(t_next) * (math.exp(-h) - 1) * d
        xs.append(x)
    return xs


@pytest.mark.parametrize("steps", [5, 20])
def test_matches_algorithm_2_in_float64(ddpm, steps):
    ours = DPMSolverPlusPlusScheduler(ddpm, steps)
    x = 1.3 * torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    expected = algorithm_2_float64(ddpm, x, ours.timesteps.tolist())
    for t, x_ref in zip(ours.timesteps.tolist(), expected):
        x, _ = ours.step(x, stand_in_eps(ddpm, x, t), t)
        torch.testing.assert_close(x.double(), x_ref, atol=1e-5, rtol=0)


def test_first_order_step_is_ddim(ddpm):
    """DPM-Solver++1 = DDIM(η = 0): (σ_s'/σ_s) x + α_s'(1 − e^{−h}) x̂0 = α_s' x̂0 + σ_s' ε̂ (Lu et al., §4)."""
    ours = DPMSolverPlusPlusScheduler(ddpm, 10)
    t, t_next = ours.timesteps[:2].tolist()
    x = torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    eps = stand_in_eps(ddpm, x, t)
    x_next, x0 = ours.step(x, eps, t)
    a = ddpm.alphas_cumprod_float64()
    x0_ref = (x.double() - math.sqrt(1 - a[t]) * eps.double()) / math.sqrt(a[t])
    ddim = math.sqrt(a[t_next]) * x0_ref + math.sqrt(1 - a[t_next]) * eps.double()
    torch.testing.assert_close(x0.double(), x0_ref, atol=1e-5, rtol=1e-5)  # x̂0 = x/0.0064 + …: ~10 in size
    torch.testing.assert_close(x_next.double(), ddim, atol=1e-5, rtol=0)


def test_point_mass_is_recovered_exactly(ddpm):
    """With the exact ε of data concentrated at c, x_θ = c at every step, so D = c and the sample is c."""
    c = 0.37
    ours = DPMSolverPlusPlusScheduler(ddpm, 7)
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    for t in ours.timesteps.tolist():
        a = float(ddpm.alphas_cumprod[t])
        x, x0 = ours.step(x, (x - a**0.5 * c) / (1 - a) ** 0.5, t)
        torch.testing.assert_close(x0, torch.full_like(x0, c), atol=1e-4, rtol=0)
    torch.testing.assert_close(x, torch.full_like(x, c), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------- multistep state
def test_steps_out_of_order_raise(ddpm):
    ours = DPMSolverPlusPlusScheduler(ddpm, 10)
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match="must run in order"):
        ours.step(x, x, 899)  # a chain must start at 999
    ours.step(x, x, 999)
    with pytest.raises(ValueError, match="must run in order"):
        ours.step(x, x, 799)  # skips 899
    with pytest.raises(ValueError, match="must run in order"):
        ours.step(x[:1], x[:1], 899)  # another batch
    with pytest.raises(ValueError, match="same timestep"):
        ours.step(x, x, torch.tensor([899, 799]))
    with pytest.raises(ValueError, match="not a DPM-Solver"):
        ours.step(x, x, 500 + 1)


def test_a_new_chain_starts_fresh(ddpm):
    """Reusing one scheduler for a second chain (even mid-way through the first) gives the fresh-scheduler result."""
    x_a = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    x_b = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(4))

    def chain(scheduler, x, stop=None):
        for t in scheduler.timesteps.tolist()[:stop]:
            x, _ = scheduler.step(x, stand_in_eps(ddpm, x, t), t)
        return x

    shared = DPMSolverPlusPlusScheduler(ddpm, 8)
    chain(shared, x_a, stop=4)  # an abandoned chain leaves state behind
    assert torch.equal(chain(shared, x_b), chain(DPMSolverPlusPlusScheduler(ddpm, 8), x_b))
    assert torch.equal(chain(shared, x_a), chain(DPMSolverPlusPlusScheduler(ddpm, 8), x_a))


def test_sampling_in_batches_equals_separate_chains(ddpm):
    """sample_images with 3 batches (the last one smaller) = one fresh solver chain per batch from the same x_T."""
    def eps_fn(x, t):
        return stand_in_eps(ddpm, x, int(t[0]))

    config = SamplerConfig("dpm-solver++", 6, clip_x0=False)
    result = sample_images(eps_fn, ddpm, 7, config, image_shape=(1, 3, 3), batch_size=3,
                           generator=torch.Generator().manual_seed(5), progress=False)
    assert result.sampler == "dpm-solver++-6" and result.num_function_evals == 6

    g = torch.Generator().manual_seed(5)
    expected = []
    for n in (3, 3, 1):
        solver = DPMSolverPlusPlusScheduler(ddpm, 6)
        x0, _ = run_chain(eps_fn, draw_noise((n, 1, 3, 3), g, "cpu"), solver.timesteps, solver.step, g)
        expected.append(x0)
    assert torch.equal(result.images, torch.cat(expected))


def test_deterministic_and_leaves_the_generator_alone(ddpm):
    ours = DPMSolverPlusPlusScheduler(ddpm, 4)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    x = torch.randn(2, 1, 3, 3)
    for t in ours.timesteps.tolist():
        x, _ = ours.step(x, stand_in_eps(ddpm, x, t), t, generator=g)
    assert torch.equal(g.get_state(), state) and np.isfinite(x.numpy()).all()


# ---------------------------------------------------------------------------------------- settings and user errors
def test_timestep_edge_cases():
    assert dpm_solver_timesteps(1, 1).tolist() == [0]  # T = 1: the one step goes from t = 0 to x0
    with pytest.raises(ValueError, match=r"S=10 of T=10 steps would repeat timesteps .*; use S <= 9"):
        dpm_solver_timesteps(10, 10)


def test_default_steps_and_moving_the_state(ddpm):
    assert DPMSolverPlusPlusScheduler(ddpm).num_steps == 20
    fresh = DPMSolverPlusPlusScheduler(LinearNoiseScheduler(T), 5)
    assert fresh.to("meta") is fresh and fresh.device.type == "meta" and fresh._x0_prev is None
    solver = DPMSolverPlusPlusScheduler(LinearNoiseScheduler(T), 5)
    x = torch.randn(2, 1, 3, 3)
    solver.step(x, stand_in_eps(ddpm, x, 999), 999)
    solver.to("meta")
    assert solver.base.device.type == "meta" and solver._x0_prev.device.type == "meta"


def test_step_errors_name_the_problem(ddpm):
    solver = DPMSolverPlusPlusScheduler(ddpm, 5)  # 999, 799, 599, 400, 200
    x = torch.zeros(1, 1, 3, 3)
    with pytest.raises(ValueError, match=r"noise_pred shape \(1, 1, 3, 4\) must equal x_t shape \(1, 1, 3, 3\)"):
        solver.step(x, torch.zeros(1, 1, 3, 4), 999)
    with pytest.raises(ValueError, match=r"t=5 is not a DPM-Solver\+\+ timestep"):
        solver.step(x, x, 5)
    with pytest.raises(ValueError, match=r"in order from t=999 on the same batch: got t=799 .* expected t=999"):
        solver.step(x, x, 799)  # a fresh chain must start at t = 999
    for t in solver.timesteps.tolist():
        solver.step(x, x, t)
    with pytest.raises(ValueError, match=r"got t=799 .* expected t=None"):
        solver.step(x, x, 799)  # the chain is over
