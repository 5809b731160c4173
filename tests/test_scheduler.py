"""LinearNoiseScheduler: analytic identities, then agreement with diffusers' DDPMScheduler."""

import pytest
import torch

from scheduler import DiffusionConfig, LinearNoiseScheduler, extract

T = 1000


@pytest.fixture(scope="module")
def sched():
    return LinearNoiseScheduler(T, 1e-4, 0.02)


@pytest.fixture(scope="module")
def reference():
    diffusers = pytest.importorskip("diffusers")
    return diffusers.DDPMScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        variance_type="fixed_small", clip_sample=False,
    )


# ----------------------------------------------------------------------------- identities
def test_schedule_values_and_shapes(sched):
    names = ["betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
             "sqrt_one_minus_alphas_cumprod", "posterior_variance"]
    for name in names:
        value = getattr(sched, name)
        assert value.shape == (T,) and value.dtype == torch.float32, name
    assert sched.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert sched.betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    assert torch.allclose(sched.betas.diff(), torch.full((T - 1,), (0.02 - 1e-4) / (T - 1)), atol=1e-9)
    assert sched.alphas_cumprod_prev[0].item() == 1.0
    assert torch.equal(sched.alphas_cumprod_prev[1:], sched.alphas_cumprod[:-1])
    assert (sched.alphas_cumprod.diff() < 0).all(), "ᾱ_t must decrease strictly"
    # ᾱ_T for this schedule is ≈ 4.04e-5: x_T is almost pure noise (Ho et al., Sec. 4).
    assert sched.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-3)


def test_posterior_variance_formula(sched):
    # Independent float64 computation: β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t).
    b = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    a = torch.cumprod(1 - b, 0)
    a_prev = torch.cat([torch.ones(1, dtype=torch.float64), a[:-1]])
    expected = b * (1 - a_prev) / (1 - a)
    assert torch.allclose(sched.posterior_variance.double(), expected, rtol=1e-6, atol=0)
    assert sched.posterior_variance[0].item() == 0.0  # no noise at the last reverse step
    assert (sched.posterior_variance[1:] <= sched.betas[1:]).all()  # β̃_t ≤ β_t


def test_add_noise_inverts_exactly_at_every_t(sched):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(T, 1, 4, 4, generator=g) * 2 - 1
    eps = torch.randn(T, 1, 4, 4, generator=g)
    t = torch.arange(T)
    x_t = sched.add_noise(x0, eps, t)
    a = sched.alphas_cumprod.double().view(-1, 1, 1, 1)
    assert torch.allclose(x_t.double(), a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=1e-6)
    # Eq. 4 solved for x0 recovers x0; solved for ε recovers ε.
    assert torch.allclose(sched.predict_x0(x_t, eps, t), x0, atol=2e-3)
    eps_back = (x_t - extract(sched.sqrt_alphas_cumprod, t, x_t) * x0) / extract(
        sched.sqrt_one_minus_alphas_cumprod, t, x_t)
    assert torch.allclose(eps_back, eps, atol=1e-4)


def test_add_noise_any_image_shape(sched):
    for shape in [(3, 5), (3, 1, 28, 28), (2, 3, 8, 8, 2)]:
        x0 = torch.ones(shape)
        out = sched.add_noise(x0, torch.zeros(shape), 0)
        assert out.shape == shape
        assert torch.allclose(out, torch.full(shape, sched.sqrt_alphas_cumprod[0].item()))


def test_reverse_mean_eq11_equals_posterior_mean_of_predicted_x0(sched):
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(16, 1, 6, 6, generator=g)
    eps = torch.randn(16, 1, 6, 6, generator=g) * 0.1
    t = torch.randint(1, T, (16,), generator=g)
    mean11 = sched.reverse_mean(x_t, eps, t)
    mean7 = sched.posterior_mean(sched.predict_x0(x_t, eps, t), x_t, t)
    assert torch.allclose(mean11, mean7, atol=1e-4)


def test_no_noise_at_t0(sched):
    x_t = torch.randn(4, 1, 5, 5)
    eps = torch.randn(4, 1, 5, 5)
    a, b = sched.sample_prev_timestep(x_t, eps, 0, generator=torch.Generator().manual_seed(0))
    c, _ = sched.sample_prev_timestep(x_t, eps, 0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, c)
    assert torch.allclose(a, sched.reverse_mean(x_t, eps, 0))
    assert b.min() >= -1 and b.max() <= 1


def test_per_sample_timesteps_match_single_steps(sched):
    x_t = torch.randn(3, 1, 4, 4)
    eps = torch.randn(3, 1, 4, 4)
    noise = torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 500, 999])
    batched, x0_batched = sched.sample_prev_timestep(x_t, eps, t, noise=noise)
    for i, ti in enumerate(t.tolist()):
        single, x0_single = sched.sample_prev_timestep(x_t[i:i + 1], eps[i:i + 1], ti, noise=noise[i:i + 1])
        assert torch.allclose(batched[i:i + 1], single) and torch.allclose(x0_batched[i:i + 1], x0_single)


def test_mean_from_clipped_x0_option():
    plain = LinearNoiseScheduler(T)
    clipped = LinearNoiseScheduler(T, mean_from_clipped_x0=True)
    x_t = torch.randn(8, 1, 4, 4)
    t = torch.full((8,), 10)
    # ε that needs no clamping: both forms agree.
    x0 = torch.rand(8, 1, 4, 4) * 1.6 - 0.8
    eps = torch.randn(8, 1, 4, 4)
    x_t = plain.add_noise(x0, eps, t)
    noise = torch.randn_like(x_t)
    assert torch.allclose(plain.sample_prev_timestep(x_t, eps, t, noise=noise)[0],
                          clipped.sample_prev_timestep(x_t, eps, t, noise=noise)[0], atol=1e-4)
    # At large t a wild ε gives |x̂0| > 1: the clipped mean lies closer to the data range.
    x_t = torch.randn(8, 1, 4, 4)
    eps = -5 * x_t
    t = torch.full((8,), 900)
    m_plain = plain.sample_prev_timestep(x_t, eps, t, noise=torch.zeros_like(x_t))[0]
    m_clip = clipped.sample_prev_timestep(x_t, eps, t, noise=torch.zeros_like(x_t))[0]
    assert not torch.allclose(m_plain, m_clip)


def test_sample_timesteps_uniform_and_seeded(sched):
    t1 = sched.sample_timesteps(20000, generator=torch.Generator().manual_seed(0))
    t2 = sched.sample_timesteps(20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t1, t2) and t1.min() >= 0 and t1.max() <= T - 1
    assert abs(t1.float().mean().item() - (T - 1) / 2) < 10


def test_to_moves_every_tensor():
    s = LinearNoiseScheduler(10).to("meta")
    for name in s._names:
        assert getattr(s, name).device.type == "meta"
    assert s.device.type == "meta"


def test_schedule_on_other_device_is_an_error_not_a_silent_move():
    s = LinearNoiseScheduler(10).to("meta")
    with pytest.raises(ValueError, match="scheduler.to"):
        s.add_noise(torch.zeros(2, 3), torch.zeros(2, 3), 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_timesteps": 0}, "num_timesteps"),
        ({"num_timesteps": 2.5}, "num_timesteps"),
        ({"beta_start": 0.0}, "beta_start"),
        ({"beta_end": 1.0}, "beta_end"),
        ({"beta_start": -0.1}, "beta_start"),
        ({"beta_start": 0.03, "beta_end": 0.02}, "must not exceed"),
    ],
)
def test_invalid_schedule_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinearNoiseScheduler(**kwargs)


def test_invalid_timesteps_and_shapes_raise(sched):
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        sched.add_noise(x, x, 1000)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        sched.add_noise(x, x, torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match="shape"):
        sched.add_noise(x, x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="integers"):
        sched.add_noise(x, x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="noise shape"):
        sched.add_noise(x, torch.zeros(3, 1, 4, 4), 1)
    with pytest.raises(ValueError, match="noise_pred shape"):
        sched.sample_prev_timestep(x, torch.zeros(1, 1, 4, 4), 1)


def test_config_round_trip():
    s = LinearNoiseScheduler.from_config({"num_timesteps": 50, "beta_start": 1e-3, "beta_end": 0.05})
    assert s.config == DiffusionConfig(50, 1e-3, 0.05)
    assert DiffusionConfig(**s.config.to_dict()) == s.config


# ----------------------------------------------------------------------------- vs. diffusers
def test_schedule_matches_diffusers(sched, reference):
    assert torch.allclose(sched.betas, reference.betas.float(), atol=1e-7)
    assert torch.allclose(sched.alphas, reference.alphas.float(), atol=1e-7)
    assert torch.allclose(sched.alphas_cumprod, reference.alphas_cumprod.float(), atol=1e-5)


def test_add_noise_matches_diffusers(sched, reference):
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(64, 1, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(64, 1, 8, 8, generator=g)
    t = torch.randint(0, T, (64,), generator=g)
    assert torch.allclose(sched.add_noise(x0, eps, t), reference.add_noise(x0, eps, t), atol=1e-5)


@pytest.fixture(scope="module")
def reference_f64(reference):
    """diffusers' scheduler run in float64.

    In float32 diffusers recovers β_t as 1 − ᾱ_t/ᾱ_{t−1}; at t = 1 that cancels to ~1e-4 relative error in
    β_t and moves its reverse mean by ~1e-4. Run in float64, it is an exact reference for our float32 step."""
    import copy

    ref = copy.deepcopy(reference)
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    ref.alphas_cumprod = torch.cumprod(1 - betas, 0)
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    return ref


@pytest.mark.parametrize("t", [0, 1, 10, 250, 500, 999])
def test_reverse_step_matches_diffusers(sched, reference_f64, t):
    """x̂0, the mean and the variance of one reverse step equal diffusers' within 1e-5.

    Both steps get the same z: diffusers draws it from a seeded generator, ours takes it as ``noise``. The mean
    is compared with diffusers' σz removed, the variance through (x_{t−1} − μ)/z."""
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(8, 1, 8, 8, generator=g)
    eps = torch.randn(8, 1, 8, 8, generator=g)
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    ref = reference_f64.step(eps.double(), t, x_t.double(), generator=torch.Generator().manual_seed(7))
    sigma_ref = reference_f64._get_variance(t) ** 0.5 if t > 0 else torch.tensor(0.0, dtype=torch.float64)
    ref_mean = ref.prev_sample - sigma_ref * z

    x_prev, x0_pred = sched.sample_prev_timestep(x_t, eps, t, noise=z.float())
    mean = sched.reverse_mean(x_t, eps, t)

    assert torch.allclose(sched.predict_x0(x_t, eps, t).double(), ref.pred_original_sample, atol=1e-5, rtol=1e-5)
    assert torch.allclose(x0_pred.double(), ref.pred_original_sample.clamp(-1, 1), atol=1e-5, rtol=1e-5)
    assert torch.allclose(mean.double(), ref_mean, atol=1e-5, rtol=1e-5)
    assert sched.posterior_variance[t].item() == pytest.approx(sigma_ref.item() ** 2, abs=1e-8, rel=1e-5)
    assert torch.allclose(x_prev.double(), ref.prev_sample, atol=1e-5, rtol=1e-5)


def test_reverse_step_matches_diffusers_float32_with_same_generator(sched, reference):
    """Unmodified diffusers (float32) and our step, each drawing z from an identically seeded generator."""
    g = torch.Generator().manual_seed(4)
    x_t = torch.randn(8, 1, 8, 8, generator=g)
    eps = torch.randn(8, 1, 8, 8, generator=g)
    for t in (250, 999):
        ref = reference.step(eps, t, x_t, generator=torch.Generator().manual_seed(9))
        ours, _ = sched.sample_prev_timestep(x_t, eps, t, generator=torch.Generator().manual_seed(9))
        assert torch.allclose(ours, ref.prev_sample, atol=1e-5)


def test_reverse_step_statistics(sched):
    """Over a large tensor the step's sample mean and variance are μ (Eq. 11) and β̃_t."""
    t = 300
    x_t = torch.full((1, 200_000), 0.3)
    eps = torch.full((1, 200_000), -0.2)
    x_prev, _ = sched.sample_prev_timestep(x_t, eps, t, generator=torch.Generator().manual_seed(0))
    mu = sched.reverse_mean(x_t[:, :1], eps[:, :1], t).item()
    var = sched.posterior_variance[t].item()
    assert x_prev.mean().item() == pytest.approx(mu, abs=4 * (var / 200_000) ** 0.5)
    assert x_prev.var().item() == pytest.approx(var, rel=0.02)


@pytest.mark.parametrize("T, beta_end, ok", [(1000, 0.02, True), (1000, 0.1, True), (1000, 0.3, False),
                                              (100_000, 0.02, False)])
def test_a_schedule_whose_alpha_bar_underflows_is_refused(T, beta_end, ok):
    if ok:
        DiffusionConfig(T, 1e-4, beta_end)
        return
    with pytest.raises(ValueError, match="Lower --beta-end or --num-timesteps"):
        DiffusionConfig(T, 1e-4, beta_end)
