"""LinearNoiseScheduler: analytic identities, then agreement with diffusers' DDPMScheduler."""

import pytest
import torch

from scheduler import DiffusionConfig, LinearNoiseScheduler, NoiseScheduler, draw_noise, extract
from scheduler.extract import as_timestep_tensor

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
    g = torch.Generator().manual_seed(0)
    # x0 inside [−1, 1] with the true ε: x̂0 needs no clamping, so both forms agree.
    t = torch.full((8,), 10)
    x0 = torch.rand(8, 1, 4, 4, generator=g) * 1.6 - 0.8
    eps = torch.randn(8, 1, 4, 4, generator=g)
    x_t = plain.add_noise(x0, eps, t)
    noise = torch.randn(8, 1, 4, 4, generator=g)
    assert torch.allclose(plain.sample_prev_timestep(x_t, eps, t, noise=noise)[0],
                          clipped.sample_prev_timestep(x_t, eps, t, noise=noise)[0], atol=1e-4)
    # At large t a wild ε gives |x̂0| > 1: the plain mean is Eq. 11, the clipped one Eq. 7 at clamp(x̂0).
    x_t = torch.randn(8, 1, 4, 4, generator=g)
    eps = -5 * x_t
    t = torch.full((8,), 900)
    x0_hat = plain.predict_x0(x_t, eps, t)
    assert (x0_hat.abs() > 1).any()
    m_plain = plain.sample_prev_timestep(x_t, eps, t, noise=torch.zeros_like(x_t))[0]
    m_clip = clipped.sample_prev_timestep(x_t, eps, t, noise=torch.zeros_like(x_t))[0]
    torch.testing.assert_close(m_plain, plain.reverse_mean(x_t, eps, t))
    torch.testing.assert_close(m_clip, plain.posterior_mean(x0_hat.clamp(-1, 1), x_t, t))
    assert not torch.allclose(m_plain, m_clip)


def test_sample_timesteps_uniform_and_seeded(sched):
    t1 = sched.sample_timesteps(20000, generator=torch.Generator().manual_seed(0))
    t2 = sched.sample_timesteps(20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t1, t2) and t1.min() == 0 and t1.max() == T - 1  # every t is drawn, 0 and T−1 included
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
    s = LinearNoiseScheduler.from_config(DiffusionConfig(50, 1e-3, 0.05))
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


# ----------------------------------------------------------------------------- timesteps, tables and user errors
@pytest.mark.parametrize("t, message", [
    (True, r"timestep must be an int or a LongTensor, got True"),
    ("3", r"timestep must be an int or a LongTensor, got str"),
    (torch.tensor([1.0, 2.0, 3.0]), r"timesteps must be integers, got a tensor of dtype torch.float32"),
    (torch.tensor([1, 2]), r"timesteps must have shape \[3\] to match the batch, got \(2,\)"),
    (torch.tensor([0, 4, 10]), r"timesteps must lie in \[0, 9\], got min 0, max 10"),
    (-1, r"timesteps must lie in \[0, 9\], got min -1, max -1"),
])
def test_bad_timesteps_are_value_errors_naming_the_problem(t, message):
    with pytest.raises(ValueError, match=message):
        as_timestep_tensor(t, 3, 10, "cpu")


def test_timesteps_become_one_long_per_sample():
    assert as_timestep_tensor(torch.tensor(4), 3, 10, "cpu").tolist() == [4, 4, 4]  # 0-d: one step for all
    t = as_timestep_tensor(torch.tensor([1, 2, 9], dtype=torch.int32), 3, 10, "cpu")
    assert t.dtype == torch.long and t.tolist() == [1, 2, 9]
    assert as_timestep_tensor(7, 2, 10, "cpu").tolist() == [7, 7]


def test_extract_refuses_images_on_another_device():
    with pytest.raises(ValueError, match=r"lives on meta but the images are on cpu; move the scheduler with "
                                         r"scheduler.to\(device\)"):
        extract(torch.zeros(5, device="meta"), torch.tensor([1]), torch.zeros(1, 2))


def test_noise_scheduler_from_any_betas():
    """The generic base: float64 tables from whatever dtype comes in, on the CPU and with Eq. 11 by default."""
    betas = torch.tensor([0.1, 0.3, 1.0], dtype=torch.float32)  # β = 1 is allowed: the last step is pure noise
    s = NoiseScheduler(betas)
    assert s.device == torch.device("cpu") and s.mean_from_clipped_x0 is False
    a = s.alphas_cumprod_float64()
    assert a.dtype == torch.float64
    assert torch.equal(a, torch.cumprod(1 - betas.double(), 0))
    assert repr(s) == "NoiseScheduler(num_timesteps=3, device=cpu)"


@pytest.mark.parametrize("betas", [[0.0, 0.5], [-0.1, 0.5], [0.5, 1.5], [], [[0.1, 0.2]]])
def test_bad_betas_are_refused(betas):
    with pytest.raises(ValueError, match=r"betas must be a non-empty 1-d sequence of values in \(0, 1\]"):
        NoiseScheduler(torch.tensor(betas))


@pytest.mark.parametrize("kwargs", [{"num_timesteps": 1}, {"beta_start": 0.01, "beta_end": 0.01}])
def test_diffusion_config_edge_cases_are_valid(kwargs):
    DiffusionConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"beta_start": 0.02, "beta_end": 0.01}, r"must not exceed beta_end \(0.01\): the linear schedule increases the "
                                             r"noise level with t$"),
    ({"num_timesteps": 100_001}, r"^num_timesteps=100001 is beyond any useful T \(the schedule is held in memory; "
                                 r"the paper uses 1000\)$"),
    ({"beta_end": 0.3}, r"zero and sampling would give NaN. Lower --beta-end or --num-timesteps \(the paper: 0.02, "
                        r"1000\)$"),
])
def test_bad_diffusion_configs_say_why(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiffusionConfig(**kwargs)


def test_linear_scheduler_defaults_and_config():
    s = LinearNoiseScheduler()
    assert (s.num_timesteps, s.beta_start, s.beta_end) == (1000, 1e-4, 0.02)
    assert repr(s) == "LinearNoiseScheduler(num_timesteps=1000, beta_start=0.0001, beta_end=0.02, device=cpu)"
    # β is linear in float64 (a float32 linspace would differ in the last bits of ᾱ).
    b = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert torch.equal(s.alphas_cumprod_float64(), torch.cumprod(1 - b, 0))
    assert LinearNoiseScheduler.from_config(DiffusionConfig(10), mean_from_clipped_x0=True).mean_from_clipped_x0


def test_built_on_a_device_every_table_lives_there():
    s = LinearNoiseScheduler(10, device="meta")
    assert {getattr(s, name).device.type for name in s._names} == {"meta"}


def test_sample_timesteps_follow_the_schedule_or_the_requested_device():
    g = torch.Generator().manual_seed(0)
    assert LinearNoiseScheduler(10, device="meta").sample_timesteps(4, generator=g).device.type == "meta"
    cpu = LinearNoiseScheduler(10)
    assert cpu.sample_timesteps(4, generator=g, device="meta").device.type == "meta"
    assert cpu.sample_timesteps(4, device="meta").device.type == "meta"
    assert cpu.sample_timesteps(4).device.type == "cpu"


def test_drawn_noise_is_the_generators_in_the_images_dtype(sched):
    """Without ``noise``, z is drawn from ``generator`` in x_t's dtype: the same as passing that draw."""
    x_t = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    eps = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    z = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    drawn = sched.sample_prev_timestep(x_t, eps, 500, generator=torch.Generator().manual_seed(5))[0]
    assert torch.equal(drawn, sched.sample_prev_timestep(x_t, eps, 500, noise=z)[0])


def test_draw_noise():
    z = draw_noise((2, 3), torch.Generator().manual_seed(1), "cpu", torch.float64)
    assert torch.equal(z, torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert draw_noise((2, 3), torch.Generator().manual_seed(1), "meta").device.type == "meta"  # drawn, then moved


@pytest.mark.parametrize("noise_pred, noise, message", [
    (torch.zeros(2, 1, 4, 5), None, r"noise_pred shape \(2, 1, 4, 5\) must equal x_t shape \(2, 1, 4, 4\)"),
    (torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4), r"noise shape \(2, 4, 4\) must equal x_t shape \(2, 1, 4, 4\)"),
])
def test_step_shape_errors(sched, noise_pred, noise, message):
    with pytest.raises(ValueError, match=message):
        sched.sample_prev_timestep(torch.zeros(2, 1, 4, 4), noise_pred, 5, noise=noise)
