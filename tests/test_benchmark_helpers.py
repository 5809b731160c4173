"""The benchmarks are scripts (timings are not tests), but the helpers that decide *what* they measure are
pinned here: a wrong model name or override would silently benchmark the wrong network."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import build_model, parse_model_name  # noqa: E402

from models import PRESETS  # noqa: E402


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
