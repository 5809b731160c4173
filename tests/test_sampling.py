"""Sampling loops (sampling/sampler.py) and the files they write (sampling/images.py).

The samplers are checked with analytic noise predictors, for which the right answer is known:
- data concentrated at one point c: the ideal ε̂ makes x̂0 = c at every step, so every sampler ends on c;
- Gaussian data N(μ, s²): the ideal ε̂ is linear in x_t, and samples must have mean μ and std s.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from models import UNet
from sampling import (
    SamplerConfig,
    Trajectory,
    load_samples_npz,
    make_grid,
    make_stepper,
    sample_images,
    save_grid_png,
    save_samples_npz,
    save_trajectory_gif,
    to_uint8,
)
from sampling.sampler import _frame_positions
from scheduler import LinearNoiseScheduler, ddim_timesteps

T = 1000


@pytest.fixture(scope="module")
def scheduler() -> LinearNoiseScheduler:
    return LinearNoiseScheduler(T)


def point_mass_eps(scheduler: LinearNoiseScheduler, c: float):
    """ε̂(x_t, t) = (x_t − √ᾱ_t c)/√(1−ᾱ_t): exact when every x0 equals c."""
    def eps_fn(x_t, t):
        a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * c) / (1 - a).sqrt()
    return eps_fn


def gaussian_eps(scheduler: LinearNoiseScheduler, mu: float, s: float):
    """ε̂ = √(1−ᾱ_t)(x_t − √ᾱ_t μ)/(ᾱ_t s² + 1 − ᾱ_t) = −√(1−ᾱ_t) ∇log q_t(x_t) for x0 ~ N(μ, s²)."""
    def eps_fn(x_t, t):
        a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x_t - a.sqrt() * mu) / (a * s**2 + 1 - a)
    return eps_fn


@pytest.fixture(scope="module")
def short_scheduler() -> LinearNoiseScheduler:
    """T = 200 with β from 5e-4 to 0.1 (ᾱ_T ≈ 4e-5, like T = 1000's): DDPM tests at a fifth of the cost."""
    return LinearNoiseScheduler(200, 5e-4, 0.1)


@pytest.mark.parametrize(
    "config",
    [SamplerConfig("ddpm"), SamplerConfig("ddim", 50), SamplerConfig("ddim", 10, eta=1.0),
     SamplerConfig("ddim", 7, spacing="leading"), SamplerConfig("ddim", 1), SamplerConfig("ddpm", 25),
     SamplerConfig("ddpm", 6, spacing="linspace"), SamplerConfig("dpm-solver++", 10), SamplerConfig("dpm-solver++", 2),
     SamplerConfig("dpm-solver++", 1, clip_x0=False)],
    ids=lambda c: f"{c.name}-{c.num_steps}-eta{c.eta}-{c.spacing}",
)
def test_point_mass_data_is_recovered_exactly(short_scheduler, config):
    c = 0.37
    g = torch.Generator().manual_seed(0)
    result = sample_images(point_mass_eps(short_scheduler, c), short_scheduler, 6, config, image_shape=(1, 3, 3),
                           batch_size=4, generator=g, progress=False)
    assert result.images.shape == (6, 1, 3, 3)
    torch.testing.assert_close(result.images, torch.full_like(result.images, c), atol=1e-4, rtol=0)


def test_ddpm_gaussian_data_moments(short_scheduler):
    """4,096 one-pixel DDPM samples with the exact ε of N(0.3, 0.2²).

    With y = x_t − √ᾱ_t μ, Eq. 11 gives y_prev = (1 − β_t/v_t)/√α_t · y + √β̃_t z, v_t = ᾱ_t s² + 1 − ᾱ_t, so
    the output is Gaussian with mean μ and a variance propagated in closed form (slightly below s², as
    β̃ ignores the uncertainty of x̂0). Mean and std are checked within 0.01 (≈ 4 s.e.).
    """
    mu, s, sch = 0.3, 0.2, short_scheduler
    a, alphas, post_var = (v.double() for v in (sch.alphas_cumprod, sch.alphas, sch.posterior_variance))
    var = 1.0
    for t in range(sch.num_timesteps - 1, -1, -1):
        v_t = float(a[t]) * s**2 + 1 - float(a[t])
        var = ((1 - (1 - float(alphas[t])) / v_t) ** 2 / float(alphas[t])) * var + float(post_var[t])
    assert 0.18 < var**0.5 < s  # the deficit is real at T = 200; the test pins it
    x = sample_images(gaussian_eps(sch, mu, s), sch, 4096, SamplerConfig("ddpm"), image_shape=(1, 1, 1),
                      batch_size=4096, generator=torch.Generator().manual_seed(1), progress=False).images.flatten()
    assert abs(float(x.mean()) - mu) < 0.01
    assert abs(float(x.std()) - var**0.5) < 0.01


def ddim_gain(a_t: float, a_prev: float, s: float, sigma: float = 0.0) -> float:
    """For x0 ~ N(μ, s²) and the exact ε̂, one DDIM step maps y = x_t − √ᾱ_t μ to f·y (+ σ z), where
    f = (√(ᾱ_prev ᾱ_t) s² + √(1 − ᾱ_prev − σ²) √(1 − ᾱ_t)) / (ᾱ_t s² + 1 − ᾱ_t)."""
    return ((a_prev * a_t) ** 0.5 * s**2 + (1 - a_prev - sigma**2) ** 0.5 * (1 - a_t) ** 0.5) / (a_t * s**2 + 1 - a_t)


@pytest.mark.parametrize("steps", [50, 10])
def test_ddim_eta0_gaussian_data_closed_form(scheduler, steps):
    """η = 0 is an affine map of x_T: x0 = μ + Π f_i · (x_T − √ᾱ_{τ_S} μ). Pinned per sample.

    (Π f_i < s: few-step DDIM shrinks the spread of low-variance data — 0.875 s at 50 steps for s = 0.2.)
    """
    mu, s = 0.3, 0.2
    a = scheduler.alphas_cumprod.double()
    config = SamplerConfig("ddim", steps)
    tau = ddim_timesteps(T, steps, "trailing").tolist()
    gain = 1.0
    for t, t_prev in zip(tau, tau[1:] + [-1]):
        gain *= ddim_gain(float(a[t]), 1.0 if t_prev < 0 else float(a[t_prev]), s)
    x_T = torch.randn((64, 1, 1, 1), generator=torch.Generator().manual_seed(1)).double()  # the sampler's x_T
    expected = mu + gain * (x_T - float(a[tau[0]]) ** 0.5 * mu)
    x = sample_images(gaussian_eps(scheduler, mu, s), scheduler, 64, config, image_shape=(1, 1, 1),
                      generator=torch.Generator().manual_seed(1), progress=False).images
    torch.testing.assert_close(x.double(), expected, atol=1e-5, rtol=0)


def test_ddim_eta1_gaussian_data_moments(scheduler):
    """η = 1, 20 steps: the output is Gaussian with variance propagated as V' = f² V + σ²; check mean and std."""
    mu, s, steps = 0.3, 0.2, 20
    a = scheduler.alphas_cumprod.double()
    tau = ddim_timesteps(T, steps, "trailing").tolist()
    var = 1.0  # Var y at τ_S, y = x − √ᾱ μ, x_T ~ N(0, 1)
    for t, t_prev in zip(tau, tau[1:] + [-1]):
        a_t, a_p = float(a[t]), 1.0 if t_prev < 0 else float(a[t_prev])
        sigma = ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)) ** 0.5  # Eq. 16, η = 1
        var = ddim_gain(a_t, a_p, s, sigma) ** 2 * var + sigma**2
    x = sample_images(gaussian_eps(scheduler, mu, s), scheduler, 4096, SamplerConfig("ddim", steps, eta=1.0),
                      image_shape=(1, 1, 1), batch_size=4096, generator=torch.Generator().manual_seed(2),
                      progress=False).images.flatten().double()
    assert abs(float(x.mean()) - mu) < 0.01
    assert abs(float(x.std()) - var**0.5) < 0.01


def test_seed_repeats_exactly_and_other_seeds_differ(scheduler):
    model = UNet.from_preset("tiny").eval()
    config = SamplerConfig("ddim", 5, eta=0.5)

    def draw(seed):
        return sample_images(model, scheduler, 5, config, image_shape=(1, 8, 8), batch_size=2,
                             generator=torch.Generator().manual_seed(seed), progress=False).images

    a, b, c = draw(3), draw(3), draw(4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (5, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    assert not a.is_inference()  # usable outside inference mode


def test_eps_fn_calls_and_function_evals(scheduler):
    """One ε̂ call per step and batch, with [B] timesteps in the sampler's order — what a guided eps_fn sees."""
    seen = []

    def guided(x_t, t):  # e.g. classifier-free guidance would mix two model calls here
        seen.append((x_t.shape[0], t.tolist()))
        return torch.zeros_like(x_t)

    result = sample_images(guided, scheduler, 5, SamplerConfig("ddim", 4), image_shape=(1, 2, 2), batch_size=3,
                           progress=False)
    assert result.num_function_evals == 4 and result.sampler == "ddim-4-eta0"
    assert len(seen) == 8  # 2 batches × 4 steps
    assert [s[0] for s in seen] == [3] * 4 + [2] * 4
    assert seen[0][1] == [999] * 3 and seen[3][1] == [249] * 3  # trailing: 999, 749, 499, 249


def test_batch_eps_fn_sees_each_batch_range(scheduler):
    """Per-sample conditioning: each batch gets the predictor for its own samples (here: a per-sample target)."""
    targets = torch.linspace(-0.9, 0.9, 7)
    ranges = []

    def per_sample_point_mass(start, stop):
        ranges.append((start, stop))
        c = targets[start:stop].view(-1, 1, 1, 1)
        return point_mass_eps(scheduler, c)

    result = sample_images(None, scheduler, 7, SamplerConfig("ddim", 5), image_shape=(1, 2, 2), batch_size=3,
                           batch_eps_fn=per_sample_point_mass, progress=False)
    assert ranges == [(0, 3), (3, 6), (6, 7)]
    torch.testing.assert_close(result.images.mean((1, 2, 3)), targets, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="exactly one"):
        sample_images(lambda x, t: x, scheduler, 2, batch_eps_fn=per_sample_point_mass)


def test_trajectory_frames(scheduler):
    c = -0.5
    result = sample_images(point_mass_eps(scheduler, c), scheduler, 10, SamplerConfig("ddim", 20),
                           image_shape=(1, 4, 4), batch_size=8, trajectory_frames=5, trajectory_images=3,
                           generator=torch.Generator().manual_seed(0), progress=False)
    traj = result.trajectory
    assert traj.t == [999, 749, 499, 299, 49, -1]  # steps round(i·19/4) of 20, then the final sample
    assert traj.x_t.shape == traj.x0_pred.shape == (6, 3, 1, 4, 4)
    assert torch.equal(traj.x_t[-1], result.images[:3])
    torch.testing.assert_close(traj.x0_pred[:-1], torch.full_like(traj.x0_pred[:-1], c), atol=1e-4, rtol=0)
    assert traj.x_t[0].std() > 0.5  # the first frame is (nearly) pure noise


def test_sampler_config_validation(scheduler):
    with pytest.raises(ValueError, match="eta only applies to DDIM"):
        SamplerConfig("ddpm", eta=0.5)
    with pytest.raises(ValueError, match="deterministic ODE solver"):
        SamplerConfig("dpm-solver++", eta=0.5)
    for name in ("ddpm", "ddim"):
        with pytest.raises(ValueError, match=r"\[1, T=1000\]"):
            SamplerConfig(name, 1001).describe(T)
    with pytest.raises(ValueError, match=r"\[1, T-1=999\]"):
        SamplerConfig("dpm-solver++", T).describe(T)
    with pytest.raises(ValueError, match="unknown sampler"):
        SamplerConfig("euler")
    with pytest.raises(ValueError, match="spacing"):
        SamplerConfig("ddpm", 50, spacing="uniform")
    with pytest.raises(ValueError, match="num_samples"):
        sample_images(lambda x, t: x, scheduler, 0)


@pytest.mark.parametrize("config, num_timesteps, label", [
    (SamplerConfig(), T, "ddpm-1000"),
    (SamplerConfig("ddpm", T), T, "ddpm-1000"),
    (SamplerConfig("ddpm", 250), T, "ddpm-250"),
    (SamplerConfig("ddim"), T, "ddim-50-eta0"),
    (SamplerConfig("ddim", 20, eta=0.5), T, "ddim-20-eta0.5"),
    (SamplerConfig("dpm-solver++"), T, "dpm-solver++-20"),
    (SamplerConfig("dpm-solver++", 10), T, "dpm-solver++-10"),
    (SamplerConfig("ddim"), 20, "ddim-20-eta0"),  # defaults are capped: DDIM at T
    (SamplerConfig("dpm-solver++"), 20, "dpm-solver++-19"),  # … and DPM-Solver++ at T − 1
])
def test_describe_and_default_steps(config, num_timesteps, label):
    assert config.describe(num_timesteps) == label


# ---------------------------------------------------------------------------------------- image files
def test_to_uint8_mapping():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 1.7, -3.0]).view(7, 1, 1, 1)
    np.testing.assert_array_equal(to_uint8(x).ravel(), [0, 64, 128, 191, 255, 255, 0])  # round((x+1)·127.5)


def test_to_uint8_inverts_the_dataset_scaling():
    from dataset import to_model_range

    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    np.testing.assert_array_equal(to_uint8(to_model_range(pixels))[0], pixels[0, 0].numpy())


def test_make_grid_layout():
    images = np.stack([np.full((2, 3), k, np.uint8) for k in range(1, 6)])  # 5 tiles of 2×3
    grid = make_grid(images, num_rows=2, padding=1)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1)  # 2 rows × 3 columns (⌈5/2⌉)
    assert grid[1, 1] == 1 and grid[1, 5] == 2 and grid[4, 1] == 4 and grid[4, 5] == 5
    assert (grid[4:6, 9:12] == 0).all()  # the empty sixth cell
    with pytest.raises(ValueError, match="num_rows"):
        make_grid(images, 0)


def test_files_round_trip(tmp_path):
    x = torch.rand(12, 1, 28, 28) * 2 - 1
    png = save_grid_png(x, tmp_path / "s" / "grid.png", num_rows=3)
    with Image.open(png) as im:
        assert im.mode == "L" and im.size == (4 * 30 + 2, 3 * 30 + 2)
    npz = save_samples_npz(x, tmp_path / "s" / "samples.npz", {"seed": 3})
    images, meta = load_samples_npz(npz)
    assert images.dtype == np.uint8 and images.shape == (12, 28, 28) and meta == {"seed": 3}
    np.testing.assert_array_equal(images, to_uint8(x))


def test_trajectory_gif(tmp_path, scheduler):
    result = sample_images(point_mass_eps(scheduler, 0.0), scheduler, 4, SamplerConfig("ddim", 6),
                           image_shape=(1, 28, 28), trajectory_frames=3, trajectory_images=4, progress=False)
    gif = save_trajectory_gif(result.trajectory, tmp_path / "traj.gif", num_rows=2)
    with Image.open(gif) as im:
        assert im.n_frames == 4  # 3 snapshots + the final sample


def test_non_finite_samples_are_an_error_naming_the_step():
    from sampling import NonFiniteSamplesError

    scheduler = LinearNoiseScheduler(num_timesteps=10)
    calls = []

    def eps_fn(x_t, t):  # one pixel of one sample turns NaN at the 4th network call
        calls.append(1)
        eps = torch.full_like(x_t, 0.1)
        if len(calls) == 4:
            eps[1, 0, 2, 3] = float("nan")
        return eps

    with pytest.raises(NonFiniteSamplesError, match=r"step 4 of 5 \(t = 3\)"):
        sample_images(eps_fn, scheduler, 2, SamplerConfig("ddim", 5), image_shape=(1, 4, 4),
                      generator=torch.Generator().manual_seed(0), progress=False)


# ---------------------------------------------------------------------------------------- settings and user errors
def test_sampler_config_bounds():
    for config in (SamplerConfig("ddim", 1), SamplerConfig("ddim", 3, eta=1.0)):
        assert config.resolved_steps(T) == config.num_steps
    steps = r"num_steps \(--sample-steps\) must be a positive int or None"
    for kwargs, message in [({"num_steps": 0}, f"{steps}, got 0"), ({"num_steps": True}, f"{steps}, got True"),
                            ({"eta": 1.5}, r"eta \(--eta\) must lie in \[0, 1\], got 1.5")]:
        with pytest.raises(ValueError, match=message):
            SamplerConfig("ddim", **kwargs)
    with pytest.raises(ValueError, match=r"^eta only applies to DDIM; DDPM's reverse variance is fixed to β̃_t \(use "
                                         r"--sampler ddim\)$"):
        SamplerConfig("ddpm", eta=0.5)
    with pytest.raises(ValueError, match=r"^eta only applies to DDIM; DPM-Solver\+\+\(2M\) is a deterministic "
                                         r"ODE solver$"):
        SamplerConfig("dpm-solver++", eta=0.5)
    with pytest.raises(ValueError, match=r"dpm-solver\+\+ num_steps must lie in \[1, T-1=1\], got 2"):
        SamplerConfig("dpm-solver++", 2).resolved_steps(2)


@pytest.mark.parametrize("name", ["ddim", "dpm-solver++"])
@pytest.mark.parametrize("clip", [False, True])
def test_make_stepper_passes_clip_x0_on(scheduler, name, clip):
    _, step = make_stepper(scheduler, SamplerConfig(name, 5, clip_x0=clip))
    assert step.__self__.clip_x0 is clip


def test_frame_positions():
    assert _frame_positions(10, 0) == set() and _frame_positions(10, 1) == {0}
    assert _frame_positions(10, 2) == {0, 9} and _frame_positions(20, 5) == {0, 5, 10, 14, 19}


def test_sample_images_defaults_and_argument_checks(caplog):
    """Defaults: DDPM over all T steps, batches of 100, no trajectory, a progress line. Bad arguments are named."""
    small = LinearNoiseScheduler(4)
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731

    def draw(**kwargs):
        return sample_images(zero, small, 101, image_shape=(1, 1, 1), generator=torch.Generator().manual_seed(0),
                             **kwargs)

    with caplog.at_level(logging.INFO):
        default = draw()
    assert default.sampler == "ddpm-4" and default.trajectory is None
    assert torch.equal(default.images, draw(config=SamplerConfig("ddpm"), batch_size=100).images)
    messages = [r.getMessage() for r in caplog.records]
    assert "sampling 101 images with ddpm-4 in 2 batch(es) of <= 100 on cpu" in messages
    assert any(m.startswith("ddpm-4: 8/8 (100%)") and m.endswith(" step/s]") for m in messages)  # the bar, logged
    caplog.clear()
    with caplog.at_level(logging.INFO):
        draw(progress=False)
    assert not any(r.getMessage().startswith("ddpm-4: ") for r in caplog.records)  # progress=False: no bar
    one = sample_images(zero, small, 1, batch_size=1, trajectory_frames=2, progress=False)
    assert one.images.shape == (1, 1, 28, 28) and one.trajectory.x_t.shape[1] == 1
    many = sample_images(zero, small, 20, image_shape=(1, 1, 1), trajectory_frames=2, progress=False)
    assert many.trajectory.x_t.shape[1] == 16  # trajectory_images defaults to 16
    for kwargs, message in [({"num_samples": True}, "num_samples must be a positive int, got True"),
                            ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
                            ({"batch_size": True}, "batch_size must be a positive int, got True"),
                            ({"device": "meta"}, r"the scheduler lives on cpu but sampling on meta; call "
                                                 r"scheduler.to\(\)")]:
        with pytest.raises(ValueError, match=message):
            sample_images(zero, small, **{"num_samples": 2, **kwargs})
    with pytest.raises(ValueError, match="^pass exactly one of eps_fn and batch_eps_fn$"):
        sample_images(None, small, 2)


# ---------------------------------------------------------------------------------------- image files, edge cases
def test_to_uint8_shapes():
    x = torch.rand(2, 1, 3, 5) * 2 - 1
    assert np.array_equal(to_uint8(x[:, 0]), to_uint8(x)) and to_uint8(x).shape == (2, 3, 5)  # [N, H, W] accepted
    rgb = torch.rand(2, 3, 3, 5) * 2 - 1
    assert to_uint8(rgb).shape == (2, 3, 5, 3) and np.array_equal(to_uint8(rgb)[..., 1], to_uint8(rgb[:, 1]))
    with pytest.raises(ValueError, match=r"expected images \[N, C, H, W\] or \[N, H, W\], got shape \(3, 5\)"):
        to_uint8(torch.zeros(3, 5))


def test_make_grid_edge_cases():
    one = np.full((1, 2, 3), 7, np.uint8)
    assert make_grid(one, num_rows=5, padding=1).shape == (4, 5)  # a single tile: one row, one column
    assert make_grid(np.full((3, 2, 3), 7, np.uint8), num_rows=1, padding=1).shape == (4, 13)
    rgb = np.stack([np.full((2, 2, 3), k, np.uint8) for k in (10, 20)])
    grid = make_grid(rgb, num_rows=1, padding=1, pad_value=255)
    assert grid.shape == (4, 7, 3) and (grid[1, 1] == 10).all() and (grid[1, 4] == 20).all() and (grid[0] == 255).all()
    # Floats with NaN gaps and no border: what the figures draw with one imshow.
    tiles = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    grid = make_grid(tiles, num_rows=2, padding=2, pad_value=np.nan, border=False)
    assert grid.dtype == np.float32 and grid.shape == (6, 2)
    np.testing.assert_array_equal(grid, [[0, 1], [2, 3], [np.nan] * 2, [np.nan] * 2, [4, 5], [6, 7]])
    for bad, message in [(one[0], r"expected images \[N, H, W\] or \[N, H, W, C\], got shape \(2, 3\)"),
                         (True, "num_rows must be a positive int, got True")]:
        with pytest.raises(ValueError, match=message):
            make_grid(one[0], 1) if bad is not True else make_grid(one, bad)


def test_image_files_in_new_folders_scaled_with_nearest(tmp_path):
    x = torch.rand(4, 1, 3, 3) * 2 - 1
    png = save_grid_png(x, tmp_path / "a" / "b" / "grid.png", num_rows=2, scale=2)
    with Image.open(png) as im:
        np.testing.assert_array_equal(np.asarray(im), make_grid(to_uint8(x), 2).repeat(2, 0).repeat(2, 1))
    with Image.open(save_grid_png(x, tmp_path / "grid1.png", num_rows=2, scale=1)) as im:
        assert im.size == (2 * 5 + 2, 2 * 5 + 2)
    with pytest.raises(ValueError, match="expected a model-space tensor or uint8 images, got float64"):
        save_grid_png(np.zeros((2, 3, 3)), tmp_path / "g.png", 1)
    npz = save_samples_npz(x, tmp_path / "c" / "d" / "samples.npz")
    assert load_samples_npz(npz)[1] == {}
    with pytest.raises(ValueError, match="samples must be uint8, got float64"):
        save_samples_npz(np.zeros((2, 3, 3)), tmp_path / "s.npz")


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((1, 2, 2), np.uint8)}, r"has no 'images' array \(keys: \['x'\]\)"),
    ({"images": np.zeros((1, 2, 2, 1), np.uint8)}, r"expected uint8 images \[N, H, W\], got uint8 \(1, 2, 2, 1\)"),
    ({"images": np.zeros((1, 2, 2), np.float32)}, r"expected uint8 images \[N, H, W\], got float32 \(1, 2, 2\)"),
    ({"images": np.array([None, 1], dtype=object)}, "allow_pickle=False"),  # pickles are never loaded
])
def test_load_samples_refuses_what_is_not_samples(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        load_samples_npz(path)
    with pytest.raises(FileNotFoundError, match=r"samples file .*missing.npz not found"):
        load_samples_npz(tmp_path / "missing.npz")


def test_trajectory_gif_frames_timing_and_size(tmp_path):
    k = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1, 1) / 3  # three different frames
    traj = Trajectory([5, 1, -1], k.expand(3, 2, 1, 4, 4).clone(), -k.expand(3, 2, 1, 4, 4).clone())
    gif = save_trajectory_gif(traj, tmp_path / "e" / "f" / "traj.gif", num_rows=1)
    with Image.open(gif) as im:
        assert im.n_frames == 3 and im.size == (2 * (2 * 14 + 8), 2 * 8) and im.info["loop"] == 0
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
        assert durations == [80, 80, 1500]
        im.seek(0)
        first = np.asarray(im.convert("L"))
    left = make_grid(to_uint8(traj.x_t[0]), 1)
    np.testing.assert_array_equal(first[:, :2 * 14], left.repeat(2, 0).repeat(2, 1))  # nearest, scale 2
    np.testing.assert_array_equal(first[:, 2 * 14:2 * 22], 255)  # the white gap between x_t and x̂0
    with Image.open(save_trajectory_gif(traj, tmp_path / "s3.gif", num_rows=2, scale=3)) as im:
        assert im.size == (3 * (2 * 8 + 8), 3 * 14)
    with pytest.raises(ValueError, match="^the trajectory has no frames$"):
        empty = torch.zeros(0, 1, 1, 2, 2)
        save_trajectory_gif(Trajectory([], empty, empty), tmp_path / "x.gif", 1)
