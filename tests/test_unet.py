import dataclasses

import pytest
import torch

from models import PRESETS, BottleNeck, DownSamplingBlock, UNet, UNetConfig, UpSamplingBlock


@pytest.fixture(scope="module")
def tiny():
    """PyTorch's default init, so that the output depends on x and t from the start (zero_init gives ε_θ = 0)."""
    torch.manual_seed(0)
    return UNet.from_preset("tiny", zero_init=False).eval()


@pytest.mark.parametrize("size", [28, 32])
def test_output_shape(tiny, size):
    x = torch.randn(3, 1, size, size)
    assert tiny(x, torch.tensor([0, 500, 999])).shape == x.shape
    assert tiny(x, 7).shape == x.shape


def test_base_preset_handles_mnist_28_to_7():
    torch.manual_seed(0)
    model = UNet.from_preset("base")
    sizes = []
    hook = [d.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:]))) for d in model.downs]
    assert model(torch.randn(1, 1, 28, 28), 3).shape == (1, 1, 28, 28)
    assert sizes == [(14, 14), (7, 7), (7, 7)]
    for h in hook:
        h.remove()


def test_per_sample_timesteps(tiny):
    x = torch.randn(3, 1, 28, 28)
    t = torch.tensor([1, 400, 999])
    batched = tiny(x, t)
    for i in range(3):
        assert torch.allclose(batched[i:i + 1], tiny(x[i:i + 1], int(t[i])), atol=1e-5)
    assert not torch.allclose(tiny(x, 1), tiny(x, 999), atol=1e-4)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = UNet.from_preset("tiny", attn=(True, True), context_dim=6, zero_init=False)
    x = torch.randn(2, 1, 28, 28)
    model(x, torch.tensor([3, 700]), context=torch.randn(2, 2, 6)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reaches {missing}"


def test_zero_init_starts_at_identity_blocks_and_zero_output_then_trains_every_parameter():
    """Ho et al.'s init: the last layer of each residual branch and the output conv start at 0, so ε_θ = 0
    and each block is its skip path; after one optimizer step every parameter has been reached."""
    torch.manual_seed(0)
    model = UNet.from_preset("tiny", attn=(True, True), context_dim=6)
    x, t, ctx = torch.randn(2, 1, 28, 28), torch.tensor([3, 700]), torch.randn(2, 2, 6)
    assert torch.equal(model(x, t, context=ctx), torch.zeros_like(x))
    block = model.downs[0].resnets[0]
    h, t_emb = torch.randn(2, 8, 28, 28), torch.randn(2, 16)
    assert torch.allclose(block(h, t_emb), block.skip(h))
    h16 = torch.randn(2, 16, 28, 28)  # the attention of down level 0 runs on its output width
    assert torch.equal(model.downs[0].attns[0](h16, torch.randn(2, 2, 6)), h16)

    # A gradient crosses a zeroed layer once that layer has moved: step 1 moves conv_out, step 2 the ends of
    # the residual branches, and from step 3 on every parameter has a gradient.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        (model(x, t, context=ctx) - torch.randn_like(x)).square().mean().backward()
        no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        optimizer.step()
    assert not no_grad, f"no gradient at step 3: {no_grad}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_runs(name):
    torch.manual_seed(0)
    model = UNet.from_preset(name)
    assert model.num_parameters() > 0
    with torch.no_grad():
        assert model(torch.randn(1, 1, 28, 28), 5).shape == (1, 1, 28, 28)


def test_preset_overrides_and_parameter_counts():
    rgb = UNet.from_preset("small", im_channels=3)
    assert rgb.config.im_channels == 3 and rgb(torch.randn(1, 3, 28, 28), 1).shape == (1, 3, 28, 28)
    # Pinned so that an accidental architecture change is noticed (shipped checkpoints depend on it).
    assert {n: UNet.from_preset(n).num_parameters() for n in PRESETS} == {
        "tiny": 47_721, "small": 639_073, "medium": 963_601, "base": 9_888_449}


def test_small_preset_flop_budget():
    """The CPU default: 0.294 GFLOP per training image (forward + backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    model = UNet.from_preset("small")
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 1, 28, 28), torch.tensor([10])).square().mean().backward()
    assert counter.get_total_flops() / 1e9 == pytest.approx(0.294, abs=0.001)


def test_context_is_used_when_configured():
    torch.manual_seed(0)
    model = UNet.from_preset("tiny", attn=(False, True), context_dim=4, zero_init=False).eval()
    x = torch.randn(2, 1, 28, 28)
    a = model(x, 5, context=torch.zeros(2, 1, 4))
    b = model(x, 5, context=torch.ones(2, 3, 4))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="pass a context"):
        model(x, 5)
    with pytest.raises(ValueError, match="unconditional"):
        UNet.from_preset("tiny")(x, 5, context=torch.zeros(2, 1, 4))


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"channels": (8,)}, "channels"),
        ({"down_sample": (True,)}, "down_sample"),
        ({"attn": (True, True, True)}, "attn"),
        ({"norm_groups": 3}, "norm_groups"),
        ({"num_heads": 3, "attn": (True, True)}, "num_heads"),
        ({"time_emb_dim": 15}, "time_emb_dim"),
        ({"layers_per_block": 0}, "layers_per_block"),
        ({"im_channels": 0}, "im_channels"),
        ({"context_dim": 0}, "context_dim"),
    ],
)
def test_inconsistent_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"UNetConfig.{field}"):
        dataclasses.replace(PRESETS["tiny"], **overrides)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="tiny"):
        UNet.from_preset("huge")
    with pytest.raises(ValueError, match="unknown UNetConfig fields"):
        UNet.from_preset("tiny", widths=(1, 2))


def test_config_dict_round_trip():
    config = PRESETS["small"]
    data = config.to_dict()
    data["channels"] = list(data["channels"])  # as after a JSON round trip
    assert UNetConfig.from_dict(data) == config


def test_odd_feature_map_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="cannot halve"):
        tiny(torch.randn(1, 1, 30, 30), 1)  # 30 → 15 → 7.5


def test_blocks_change_resolution_as_documented():
    torch.manual_seed(0)
    t_emb = torch.randn(2, 16)
    x = torch.randn(2, 8, 28, 28)
    down = DownSamplingBlock(8, 16, 16, down_sample=True, num_layers=2, attn=True, num_heads=2, norm_groups=4)
    y = down(x, t_emb)
    assert y.shape == (2, 16, 14, 14)
    mid = BottleNeck(16, 16, 16, num_layers=1, num_heads=2, norm_groups=4)
    assert mid(y, t_emb).shape == (2, 16, 14, 14)
    up = UpSamplingBlock(16, 8, 8, 16, up_sample=True, num_layers=1, attn=True, num_heads=2, norm_groups=4)
    assert up(y, x, t_emb).shape == (2, 8, 28, 28)
    with pytest.raises(ValueError, match="skip"):
        up(y, x[..., :26, :26], t_emb)
