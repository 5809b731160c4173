import math

import pytest
import torch

from models import TimeEmbedding, get_time_embedding


def test_values_at_t0_and_known_t():
    emb = get_time_embedding(torch.tensor([0, 1, 10, 999]), 8)
    assert emb.shape == (4, 8)
    assert torch.equal(emb[0, :4], torch.zeros(4)) and torch.equal(emb[0, 4:], torch.ones(4))
    # dim = 8: frequencies 1 / 10000^(2i/8), i = 0..3 → 1, 0.1, 0.01, 0.001
    for row, t in zip(emb[1:], [1, 10, 999]):
        freqs = [1.0, 0.1, 0.01, 0.001]
        expected = [math.sin(t * f) for f in freqs] + [math.cos(t * f) for f in freqs]
        assert torch.allclose(row, torch.tensor(expected), atol=1e-5)


def test_integer_and_float_timesteps_agree():
    t = torch.arange(0, 1000, 37)
    assert torch.allclose(get_time_embedding(t, 64), get_time_embedding(t.float(), 64))


@pytest.mark.parametrize("dim", [7, 0, -2])
def test_odd_or_nonpositive_dimension_raises(dim):  # UNetConfig checks time_emb_dim before a UNet is built
    with pytest.raises(ValueError, match="even"):
        get_time_embedding(torch.tensor([1]), dim)


def test_module_shape_and_distinct_embeddings():
    torch.manual_seed(0)
    module = TimeEmbedding(32)
    out = module(torch.tensor([0, 1, 500, 999]))
    assert out.shape == (4, 32)
    assert torch.cdist(out, out).fill_diagonal_(1).min() > 1e-3


def test_time_embedding_is_an_mlp_of_the_sinusoid():
    """TimeEmbedding = Linear → SiLU → Linear applied to the sinusoidal features (not a purely linear map)."""
    torch.manual_seed(0)
    emb = TimeEmbedding(8)
    t = torch.tensor([0, 7, 999])
    first, last = emb.mlp[0], emb.mlp[-1]
    expected = last(torch.nn.functional.silu(first(get_time_embedding(t, 8))))
    torch.testing.assert_close(emb(t), expected)
