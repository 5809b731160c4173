"""Class labels as cross-attention context (classifier-free guidance, model side)."""

import pytest
import torch

from models import LabelEmbedding, UNet, UNetConfig


@pytest.fixture(scope="module")
def cond_model():
    torch.manual_seed(0)
    # PyTorch's default init: with zero_init the untrained output would be 0 whatever the label.
    return UNet.from_preset("tiny", attn=(False, True), context_dim=8, num_classes=10, zero_init=False).eval()


def test_label_tokens_reach_cross_attention(cond_model):
    """Changing only the label changes an untrained model's output."""
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        out = {y: cond_model(x, 50, context=cond_model.label_context(torch.full((2,), y))) for y in (3, 7, 10)}
    assert not torch.allclose(out[3], out[7], atol=1e-6)
    assert not torch.allclose(out[3], out[10], atol=1e-6)


def test_null_label_and_range(cond_model):
    emb = cond_model.label_embedding
    assert emb.null_label == 10
    assert cond_model.label_context(torch.tensor([0, 9, 10])).shape == (3, 1, 8)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        cond_model.label_context(torch.tensor([11]))
    with pytest.raises(ValueError, match="not class-conditional"):
        UNet.from_preset("tiny").label_context(torch.tensor([1]))


def test_several_tokens_per_label():
    emb = LabelEmbedding(num_classes=10, context_dim=4, num_tokens=3)
    ctx = emb(torch.tensor([2, 2, 5]))
    assert ctx.shape == (3, 3, 4)
    assert torch.equal(ctx[0], ctx[1]) and not torch.equal(ctx[0], ctx[2])


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_label_dropout_rate(p):
    emb = LabelEmbedding(10, 4)
    labels = torch.randint(0, 10, (50_000,), generator=torch.Generator().manual_seed(0))
    dropped = emb.drop_labels(labels, p, generator=torch.Generator().manual_seed(1))
    is_null = dropped == emb.null_label
    assert is_null.float().mean().item() == pytest.approx(p, abs=0.01)
    assert torch.equal(dropped[~is_null], labels[~is_null])  # kept labels are untouched


def test_conditional_config_validation():
    with pytest.raises(ValueError, match="UNetConfig.num_classes"):
        UNetConfig(num_classes=10)  # no context_dim for the label tokens
    with pytest.raises(ValueError, match="UNetConfig.label_tokens"):
        UNetConfig(context_dim=8, num_classes=10, label_tokens=0)
    assert UNetConfig(context_dim=8, num_classes=10).conditional and not UNetConfig().conditional


def test_drop_labels_takes_its_uniform_draws_as_noise():
    """Label i is dropped where u_i < p; passing u (a slice of a larger batch's draws) equals drawing it."""
    emb = LabelEmbedding(num_classes=3, context_dim=4)
    labels = torch.tensor([0, 1, 2, 1])
    assert emb.drop_labels(labels, 0.5, noise=torch.tensor([0.1, 0.9, 0.49, 0.5])).tolist() == [3, 1, 3, 1]
    drawn = emb.drop_labels(labels, 0.3, generator=torch.Generator().manual_seed(4))
    given = emb.drop_labels(labels, 0.3, noise=torch.rand(4, generator=torch.Generator().manual_seed(4)))
    assert torch.equal(drawn, given)
    with pytest.raises(ValueError, match="noise shape"):
        emb.drop_labels(labels, 0.3, noise=torch.rand(8))
