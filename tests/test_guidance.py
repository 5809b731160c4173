"""Classifier-free guidance: the arithmetic, label layout, and conditional sampling from the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import main
from evaluation.metrics import label_accuracy
from models import UNet
from sampling import (
    SamplerConfig,
    guided_eps_fn,
    labels_in_rows,
    sample_images,
    sample_model,
)
from scheduler import DiffusionConfig, LinearNoiseScheduler

T = 20


@pytest.fixture(scope="module")
def cond_model():
    torch.manual_seed(0)
    # zero_init=False: a zero-initialised UNet outputs exactly 0 for every label, so ε_cond = ε_null and no
    # guidance arithmetic could be told apart from its mistakes.
    return UNet.from_preset("tiny", attn=(False, True), context_dim=8, num_classes=10, zero_init=False).eval()


@torch.no_grad()
def test_guidance_arithmetic(cond_model):
    x = torch.randn(3, 1, 28, 28)
    t = torch.tensor([1, 10, 19])
    labels = torch.tensor([2, 5, 7])
    eps_cond = cond_model(x, t, context=cond_model.label_context(labels))
    eps_null = cond_model(x, t, context=cond_model.label_context(torch.full((3,), 10)))
    assert torch.allclose(guided_eps_fn(cond_model, labels, 0.0)(x, t), eps_null)  # w = 0: unconditional
    assert torch.allclose(guided_eps_fn(cond_model, labels, 1.0)(x, t), eps_cond)  # w = 1: conditional
    for w in (0.5, 3.0):  # one batched 2B evaluation equals the two separate ones
        expected = eps_null + w * (eps_cond - eps_null)
        assert torch.allclose(guided_eps_fn(cond_model, labels, w)(x, t), expected, atol=1e-5)


def test_unconditional_model_cannot_be_guided():
    with pytest.raises(ValueError, match="unconditional"):
        guided_eps_fn(UNet.from_preset("tiny"), torch.tensor([1]), 2.0)


def test_labels_in_rows():
    assert labels_in_rows(list(range(10)), 20).tolist() == [d for d in range(10) for _ in range(2)]
    assert labels_in_rows([7], 4).tolist() == [7, 7, 7, 7]
    assert labels_in_rows([1, 2], 3).tolist() == [1, 1, 2]
    with pytest.raises(ValueError):
        labels_in_rows([], 3)


def test_per_batch_labels_reach_the_sampler(cond_model):
    """Sampling in batches of 2 with per-sample labels equals sampling each label's block alone."""
    sched = LinearNoiseScheduler(T)
    labels = torch.tensor([3, 3, 8, 8])
    config = SamplerConfig("ddim", num_steps=5)
    all_at_once = sample_model(cond_model, sched, 4, config, labels, 2.0, batch_size=2,
                               generator=torch.Generator().manual_seed(0), progress=False)
    generator = torch.Generator().manual_seed(0)
    first = sample_images(guided_eps_fn(cond_model, labels[:2], 2.0), sched, 2, config, batch_size=2,
                          generator=generator, progress=False)
    second = sample_images(guided_eps_fn(cond_model, labels[2:], 2.0), sched, 2, config, batch_size=2,
                           generator=generator, progress=False)
    assert torch.allclose(all_at_once.images, torch.cat([first.images, second.images]), atol=1e-6)


@pytest.mark.parametrize("conditional", [False, True])
def test_sample_model_draws_the_models_size_with_its_labels_and_guidance(cond_model, conditional):
    """What both the end-of-training samples and --eval-ddpm-model call: the recorded image size, and for a
    conditional model each sample's label at the given guidance scale."""
    sched, config = LinearNoiseScheduler(T), SamplerConfig("ddim", num_steps=4)
    torch.manual_seed(1)
    plain = UNet.from_preset("tiny", image_size=20, zero_init=False).eval()
    model, labels = (cond_model, torch.tensor([1, 1, 6])) if conditional else (plain, None)
    drawn = sample_model(model, sched, 3, config, labels, 3.0, generator=torch.Generator().manual_seed(5),
                         progress=False)
    eps_fn = guided_eps_fn(model, labels, 3.0) if conditional else model
    size = 28 if conditional else 20
    expected = sample_images(eps_fn, sched, 3, config, image_shape=(1, size, size),
                             generator=torch.Generator().manual_seed(5), progress=False)
    assert drawn.images.shape == (3, 1, size, size)
    torch.testing.assert_close(drawn.images, expected.images)


def test_label_accuracy():
    probs = np.eye(10)[[1, 1, 2, 3]]
    acc = label_accuracy(probs, np.array([1, 1, 2, 9]))
    assert acc["overall"] == 0.75 and acc["per_class"] == {1: 1.0, 2: 1.0, 9: 0.0}


# ---------------------------------------------------------------------------------------------- CLI
def _save(path: Path, model: UNet, class_names: list[str] | None = None) -> Path:
    from common.checkpoint import FORMAT, save_checkpoint
    from training.config import TrainConfig

    save_checkpoint(path, {
        "format": FORMAT, "model_config": model.config.to_dict(), "diffusion_config": DiffusionConfig(T).to_dict(),
        "train_config": TrainConfig(conditional=model.config.conditional).to_dict(), "model": model.state_dict(),
        "ema": model.state_dict(), "step": 1, "epoch": 0, "class_names": class_names,
    })
    return path


def test_cli_conditional_sampling_writes_labelled_samples(tmp_path, cond_model):
    ckpt = _save(tmp_path / "cond.pth", cond_model)
    out = tmp_path / "out"
    rc = main.main(["--eval-ddpm-model", "--device", "cpu", "--ckpt-file", str(ckpt), "--task-name", str(out),
                    "--num-samples", "6", "--num-grid-rows", "3", "--labels", "0,4,9", "--guidance-scale", "1.5",
                    "--sampler", "ddim", "--sample-steps", "3"])
    assert rc == 0
    meta = json.loads(np.load(out / "samples" / "samples.npz")["metadata"].item())
    assert meta["labels"] == [0, 0, 4, 4, 9, 9] and meta["guidance_scale"] == 1.5 and meta["conditional"]


def test_cli_refuses_labels_for_an_unconditional_model(tmp_path, caplog):
    torch.manual_seed(0)
    ckpt = _save(tmp_path / "uncond.pth", UNet.from_preset("tiny"))
    with caplog.at_level(logging.ERROR):
        rc = main.main(["--eval-ddpm-model", "--device", "cpu", "--ckpt-file", str(ckpt), "--task-name",
                        str(tmp_path / "o"), "--label", "7", "--num-samples", "2"])
    assert rc == 2 and "unconditional" in caplog.text
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_class_the_model_does_not_know(tmp_path, cond_model, caplog):
    ckpt = _save(tmp_path / "cond.pth", cond_model)
    with caplog.at_level(logging.ERROR):
        rc = main.main(["--eval-ddpm-model", "--device", "cpu", "--ckpt-file", str(ckpt), "--label", "12",
                        "--num-samples", "2", "--task-name", str(tmp_path / "o")])
    assert rc == 2 and "class 12 does not exist" in caplog.text and "0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in caplog.text


def test_cli_labels_are_class_names_stored_in_the_checkpoint(tmp_path, cond_model, caplog):
    """Folders 0 … 10 are labels 0 … 10 (numeric order); a checkpoint with named classes takes the names."""
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    ckpt = _save(tmp_path / "cond.pth", cond_model, class_names=names)
    out = tmp_path / "o"
    assert main.main(["--eval-ddpm-model", "--device", "cpu", "--ckpt-file", str(ckpt), "--task-name", str(out),
                      "--sampler", "ddim", "--sample-steps", "2", "--labels", "seven,two", "--num-samples", "4"]) == 0
    assert json.loads(np.load(out / "samples" / "samples.npz")["metadata"].item())["labels"] == [7, 7, 2, 2]
    with caplog.at_level(logging.ERROR):
        assert main.main(["--eval-ddpm-model", "--device", "cpu", "--ckpt-file", str(ckpt), "--label", "7",
                          "--num-samples", "2", "--task-name", str(tmp_path / "p")]) == 2
    assert "class 7 does not exist" in caplog.text and "zero, one" in caplog.text


@pytest.mark.parametrize("flags", [["--guidance-scale", "-1"], ["--guidance-scale", "nan"], ["--labels", ","],
                                   ["--label", "1", "--labels", "2,3"]])
def test_bad_guidance_flags_are_parser_errors(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--eval-ddpm-model", *flags])
    assert exit_info.value.code == 2 and "error" in capsys.readouterr().err


def test_only_a_model_with_a_label_embedding_can_be_guided():
    for model in (UNet.from_preset("tiny"), torch.nn.Linear(1, 1)):  # label_embedding None, or no such attribute
        with pytest.raises(ValueError, match=r"this model is unconditional \(trained without --conditional\); it "
                                             r"cannot take labels or a guidance scale"):
            guided_eps_fn(model, torch.tensor([1]), 2.0)
    with pytest.raises(ValueError, match="^need at least one class label$"):
        labels_in_rows([], 3)
