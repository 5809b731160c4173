"""The benchmarks are scripts (timings are not tests), but the helpers that decide *what* they measure are
pinned here: a wrong model name or override would silently benchmark the wrong network."""

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from harness import build_model, parse_model_name, parse_sampler  # noqa: E402

from models import PRESETS  # noqa: E402
from sampling import SamplerConfig  # noqa: E402


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
