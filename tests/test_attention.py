import math

import pytest
import torch

from models import MultiHeadCrossAttention, MultiHeadSelfAttention
from models.attention import attention


def explicit_attention(q, k, v, causal=False):
    """softmax(QKᵀ/√d)V written out, the reference for the SDPA fast path."""
    scores = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[-2]
        scores = scores + torch.full((n, n), float("-inf")).triu(1)
    return torch.einsum("bhnm,bhmd->bhnd", scores.softmax(-1), v)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_path_equals_explicit_softmax(causal):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 5, generator=g) for _ in range(3))
    fast, none = attention(q, k, v, causal)
    slow, weights = attention(q, k, v, causal, return_weights=True)
    ref = explicit_attention(q, k, v, causal)
    assert none is None
    assert torch.allclose(fast, ref, atol=1e-5) and torch.allclose(slow, ref, atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3, 7), atol=1e-6)


def test_self_attention_causal_mask_and_weights():
    torch.manual_seed(0)
    mhsa = MultiHeadSelfAttention(16, num_heads=4)
    x = torch.randn(2, 6, 16)
    out, w = mhsa(x, causal=True, return_weights=True)
    assert out.shape == (2, 6, 16) and w.shape == (2, 4, 6, 6)
    assert torch.all(w.triu(1) == 0), "a causal mask leaves zero weight above the diagonal"
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 6), atol=1e-6)
    assert torch.allclose(w[..., 0, 0], torch.ones(2, 4))  # the first token can only see itself
    # The fast path gives the same output.
    assert torch.allclose(mhsa(x, causal=True), out, atol=1e-5)
    # Causality: changing the last token does not change earlier outputs.
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert torch.allclose(mhsa(x2, causal=True)[:, :-1], out[:, :-1], atol=1e-5)
    assert not torch.allclose(mhsa(x2)[:, :-1], mhsa(x)[:, :-1], atol=1e-5)


def test_self_attention_is_permutation_equivariant_without_mask():
    torch.manual_seed(0)
    mhsa = MultiHeadSelfAttention(8, num_heads=2)
    x = torch.randn(1, 5, 8)
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert torch.allclose(mhsa(x)[:, perm], mhsa(x[:, perm]), atol=1e-5)


def test_cross_attention_other_width_and_length():
    torch.manual_seed(0)
    mhca = MultiHeadCrossAttention(dim=16, context_dim=10, num_heads=2)
    x, ctx = torch.randn(3, 9, 16), torch.randn(3, 4, 10)
    out, w = mhca(x, ctx, return_weights=True)
    assert out.shape == (3, 9, 16) and w.shape == (3, 2, 9, 4)
    assert torch.allclose(w.sum(-1), torch.ones(3, 2, 9), atol=1e-6)
    assert torch.allclose(mhca(x, ctx), out, atol=1e-5)
    # Against an explicit computation from the module's own projections.
    q = mhca.q(x).view(3, 9, 2, 8).transpose(1, 2)
    k, v = mhca.kv(ctx).view(3, 4, 2, 2, 8).permute(2, 0, 3, 1, 4)
    ref = mhca.proj(explicit_attention(q, k, v).transpose(1, 2).reshape(3, 9, 16))
    assert torch.allclose(out, ref, atol=1e-5)
    # A context of one token: every query gets weight 1 on it.
    _, w1 = mhca(x, ctx[:, :1], return_weights=True)
    assert torch.allclose(w1, torch.ones_like(w1))


def test_attention_errors():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadSelfAttention(10, num_heads=3)
    with pytest.raises(ValueError, match="context"):
        MultiHeadCrossAttention(8, 4, 2)(torch.randn(1, 3, 8), torch.randn(1, 2, 5))
    with pytest.raises(ValueError, match="causal"):
        attention(*(torch.randn(1, 1, 3, 4),) * 1, torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4), causal=True)


def test_spatial_attention_adds_both_attentions_as_residuals():
    """x + SelfAttn(norm(x)), then + CrossAttn(norm'(·), context), each over the H·W positions as tokens."""
    from models.blocks import SpatialAttention

    torch.manual_seed(0)
    block = SpatialAttention(8, num_heads=2, norm_groups=2, context_dim=6)
    x, context = torch.randn(2, 8, 3, 5), torch.randn(2, 4, 6)

    def as_map(tokens):  # (B, HW, C) → (B, C, H, W)
        return tokens.transpose(1, 2).reshape(2, 8, 3, 5)

    h = x + as_map(block.self_attn(block.norm(x).flatten(2).transpose(1, 2)))
    expected = h + as_map(block.cross_attn(block.cross_norm(h).flatten(2).transpose(1, 2), context))
    torch.testing.assert_close(block(x, context), expected)
    with pytest.raises(ValueError, match="cross-attends to a context of width 6; pass context"):
        block(x)
