"""The benchmarks are scripts (timings are not tests), but the helpers that decide *what* they measure are
pinned here: a wrong model name, override or variant would silently benchmark the wrong network or settings,
and a training step that drifted from the trainer's loss would time the wrong work. (pytest finds ``benchmarks/``
through ``pythonpath`` in pyproject.toml.)"""

import argparse
import json
from dataclasses import replace

import bench_samplers
import harness
import pytest
import torch
from bench_train import Stepper, make_batches, parse_variant, variant_label
from harness import build_model, parse_model_name, parse_sampler

from models import PRESETS, UNet
from sampling import SamplerConfig
from scheduler import LinearNoiseScheduler
from training.runtime import Performance
from training.trainer import l_simple

CPU = torch.device("cpu")


def test_parse_model_name_reads_overrides():
    assert parse_model_name("small") == ("small", {})
    assert parse_model_name("small[channels=16,16,64;mid_layers=2;zero_init=False]") == (
        "small", {"channels": (16, 16, 64), "mid_layers": 2, "zero_init": False})


def test_build_model_applies_overrides_and_rejects_unknown_fields():
    model = build_model("tiny[channels=8,8,16]")
    assert model.config.channels == (8, 8, 16)
    assert model.config.num_heads == PRESETS["tiny"].num_heads
    with pytest.raises(ValueError, match="no_such_field"):
        build_model("tiny[no_such_field=1]")
    with pytest.raises(ValueError, match="bad model name"):
        build_model("tiny[channels=8")


@pytest.mark.parametrize("spec, config, cap", [
    ("ddpm", SamplerConfig("ddpm"), None),
    ("ddpm@200", SamplerConfig("ddpm"), 200),
    ("ddpm:250", SamplerConfig("ddpm", 250), None),
    ("ddim:50", SamplerConfig("ddim", 50), None),
    ("ddim:50:0.5", SamplerConfig("ddim", 50, eta=0.5), None),
    ("dpm-solver++:10@500", SamplerConfig("dpm-solver++", 10), 500),
])
def test_parse_sampler(spec, config, cap):
    assert parse_sampler(spec) == (config, cap)


@pytest.mark.parametrize("spec", ["euler:10", "ddim", "ddim:x", "ddpm:10:0.5", "dpm-solver++", "dpm-solver++:10:1",
                                  "ddim:10:2", "ddpm@1"])
def test_parse_sampler_rejects_bad_specs(spec):
    with pytest.raises(argparse.ArgumentTypeError, match="bad sampler"):
        parse_sampler(spec)


# ---------------------------------------------------------------------------------------------- bench_train
def test_parse_variant_auto_is_the_trainers_cpu_choice_and_both_layouts_for_diffusers():
    assert parse_variant("auto", "small", CPU) == [Performance("fp32", False, True)]
    assert parse_variant("auto", "diffusers-small[layers_per_block=2]", CPU) == [
        Performance("fp32", False, False), Performance("fp32", False, True)]


@pytest.mark.parametrize("name, perf", [
    ("fp32", Performance("fp32", False, False)),
    ("bf16+cl", Performance("bf16", False, True)),
    ("fp16+compile", Performance("fp16", True, False)),
    ("fp32+compile+cl", Performance("fp32", True, True)),
])
def test_parse_variant_reads_precision_layout_and_compile(name, perf):
    assert parse_variant(name, "tiny", CPU) == [perf]
    assert parse_variant(variant_label(perf), "tiny", CPU) == [perf]  # the printed label reads back


@pytest.mark.parametrize("name", ["fp8", "bf16cl", "fp32+nhwc", "fp32+cl+cl", "+cl", "AUTO"])
def test_parse_variant_rejects_bad_names(name):
    with pytest.raises(ValueError, match="bad variant"):
        parse_variant(name, "tiny", CPU)


def test_bench_train_step_is_the_trainers_step_on_the_same_draws_for_every_variant():
    """The timed step's loss is training.trainer.l_simple with the trainer's min-SNR-5 weighting, on the weights
    before the step and the t, ε it drew; the step then changes the weights; and two variants of one model draw the
    same t and ε (so their losses agree), whatever their layout."""
    torch.manual_seed(0)
    model = UNet.from_preset("tiny", zero_init=False)  # a zero-initialised output would hide the model's part
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    (x0, labels), = make_batches(images, torch.arange(16) % 10, 1, 32, CPU)
    assert x0.min() == -1 and x0.max() == 1 and labels.shape == (32,)  # pixels 0 and 255 land on the ends of [−1, 1]

    nchw, channels_last = (Stepper(model, Performance("fp32", False, cl), CPU) for cl in (False, True))
    drawn = []

    def spy(forward, scheduler, x0, t, eps, context, min_snr_gamma):
        drawn.append((t, eps, min_snr_gamma))
        return nchw_loss_fn(forward, scheduler, x0, t, eps, context, min_snr_gamma)

    nchw_loss_fn = nchw.ctx.loss_fn
    nchw.ctx = replace(nchw.ctx, loss_fn=spy)
    before = [p.detach().clone() for p in nchw.state.model.parameters()]
    loss = nchw.step(x0, labels).item()
    (t, eps, gamma), = drawn
    scheduler = LinearNoiseScheduler(device=CPU)
    assert gamma == 5.0 and (t < 100).any()  # a low-noise t (SNR_t > 5), where the weighting matters
    assert loss == pytest.approx(l_simple(model, scheduler, x0, t, eps, min_snr_gamma=5.0).item(), rel=1e-5)
    assert loss != pytest.approx(l_simple(model, scheduler, x0, t, eps).item(), rel=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(before, nchw.state.model.parameters()))
    assert channels_last.step(x0, labels).item() == pytest.approx(loss, rel=1e-5)


def test_draw_or_reuse_saves_the_draw_with_its_config_and_reuses_it_only_for_the_same_checkpoint(
        tmp_path, monkeypatch):
    model = UNet(replace(PRESETS["tiny"], zero_init=False)).eval()
    scheduler = LinearNoiseScheduler(num_timesteps=20)
    config = SamplerConfig("ddim", 2)
    images, meta = harness.draw_or_reuse(model, scheduler, config, 3, seed=0, batch_size=2, out_dir=tmp_path,
                                         ckpt_sha="abc")
    assert images.shape == (3, 28, 28) and images.dtype.name == "uint8"
    assert meta["sampler_config"] == {"name": "ddim", "num_steps": 2, "eta": 0.0, "spacing": "trailing",
                                      "clip_x0": True}
    assert meta["num_function_evals"] == 2 and (tmp_path / "samples_ddim-2-eta0.npz").is_file()

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled again instead of reusing the saved draw")

    monkeypatch.setattr(harness, "sample_images", no_sampling)
    again, _ = harness.draw_or_reuse(model, scheduler, config, 3, seed=0, batch_size=2, out_dir=tmp_path,
                                     ckpt_sha="abc", reuse=True)
    assert (again == images).all()
    with pytest.raises(AssertionError, match="sampled again"):  # another checkpoint's draw is not reused
        harness.draw_or_reuse(model, scheduler, config, 3, seed=0, batch_size=2, out_dir=tmp_path,
                              ckpt_sha="other", reuse=True)


def test_bench_samplers_runs_end_to_end_and_records_each_samplers_config(tmp_path):
    """A smoke run of the whole script on the shipped checkpoint (1 network call, 10 images): the table and the
    JSON it writes are what RESULTS.md quotes."""
    assert bench_samplers.main(["--samplers", "ddim:1", "--num-samples", "10", "--batch-size", "10",
                                "--out-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    (row,) = report["rows"]
    assert row["sampler"] == "ddim-1-eta0" and row["num_samples"] == 10 and row["num_function_evals"] == 1
    assert row["config"] == {"name": "ddim", "num_steps": 1, "eta": 0.0, "spacing": "trailing", "clip_x0": True}
    assert "| ddim-1-eta0 | 10 | 1 |" in (tmp_path / "bench.md").read_text()
