"""Every DDPM checkpoint shipped in checkpoints/ still loads into the current code and samples sensibly.

Parametrised over ``checkpoints/*.pth`` except the metric classifier; skips cleanly while none is shipped.
A failure here means a change to models/ or scheduler/ broke the published weights: keep the old
behaviour, or retrain and re-export the checkpoint in the same change.
"""

from __future__ import annotations

import pytest
import torch

from dataset.paths import REPO_ROOT
from evaluation.classifier import DEFAULT_CLASSIFIER_PATH

SHIPPED = sorted(
    p for p in (REPO_ROOT / "checkpoints").glob("*.pth") if p.resolve() != DEFAULT_CLASSIFIER_PATH.resolve()
)
PARAMS = [pytest.param(p, id=p.name) for p in SHIPPED] or [
    pytest.param(None, id="none", marks=pytest.mark.skip(reason="no DDPM checkpoint shipped in checkpoints/ yet"))
]


def eps_fn_for(model, n: int):
    """Plain ε_θ for an unconditional model; for a conditional one, every digit in turn at guidance 2."""
    from sampling import guided_eps_fn, labels_in_rows

    if not model.config.conditional:
        return model
    return guided_eps_fn(model, labels_in_rows(list(range(model.config.num_classes)), n), 2.0)


@pytest.mark.parametrize("path", PARAMS)
def test_loads_and_samples(path):
    from common.checkpoint import FORMAT, build_model_from_checkpoint
    from sampling import SamplerConfig, sample_images

    model, scheduler, ckpt = build_model_from_checkpoint(path, use_ema=True)
    assert ckpt["format"] == FORMAT and not model.training
    assert path.stat().st_size < 20 * 1024 * 1024, "shipped checkpoints should be sampling-only exports"
    x = torch.randn(2, model.config.im_channels, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        eps = eps_fn_for(model, 2)(x, torch.tensor([0, scheduler.num_timesteps - 1]))
    assert eps.shape == x.shape and torch.isfinite(eps).all()

    images = sample_images(eps_fn_for(model, 8), scheduler, 8, SamplerConfig("ddim", 10), batch_size=8,
                           generator=torch.Generator().manual_seed(0), progress=False).images
    assert torch.isfinite(images).all() and images.std() > 0.1  # not collapsed to a constant


@pytest.mark.slow
@pytest.mark.parametrize("path", PARAMS)
def test_samples_look_like_digits(path):
    """64 DDIM-20 samples: the metric classifier is confident on them and sees at least 6 classes."""
    from common.checkpoint import build_model_from_checkpoint
    from evaluation.classifier import classify_uint8, load_classifier
    from evaluation.metrics import class_histogram, mean_max_prob
    from sampling import SamplerConfig, sample_images, to_uint8

    model, scheduler, _ = build_model_from_checkpoint(path, use_ema=True)
    images = sample_images(eps_fn_for(model, 64), scheduler, 64, SamplerConfig("ddim", 20), batch_size=64,
                           generator=torch.Generator().manual_seed(0), progress=False).images
    classifier, _ = load_classifier()
    _, probs = classify_uint8(classifier, torch.from_numpy(to_uint8(images)))
    assert mean_max_prob(probs) > 0.8
    assert (class_histogram(probs) > 0).sum() >= 6
