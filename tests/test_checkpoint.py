"""common/checkpoint.py: atomic writes, safe loads (weights_only, never executing code), rebuild and export."""

from __future__ import annotations

import ast
import logging
import os
import pickle
import random
from pathlib import Path

import pytest
import torch
from fault_injection import make_state

from common import checkpoint as ckpt_mod
from common.checkpoint import (
    FORMAT,
    CheckpointError,
    build_model_from_checkpoint,
    export_weights,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from models import preset_config


@pytest.fixture(scope="module")
def state() -> dict:
    return make_state()


def assert_states_equal(a, b) -> None:
    if torch.is_tensor(a):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_states_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_states_equal(x, y)
    else:
        assert a == b


# ---------------------------------------------------------------------------------------------- round trip
def test_round_trip_is_exact_and_weights_only_without_allowlist(state, tmp_path):
    path = tmp_path / "run" / "ckpt.pth"
    save_checkpoint(path, state)
    assert_states_equal(load_checkpoint(path), state)
    # plain torch.load with weights_only=True and no allowlist reads it too
    assert_states_equal(torch.load(path, weights_only=True), state)
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth"]  # no temp file left


# ---------------------------------------------------------------------------------------------- atomic writes
class Boom(RuntimeError):
    pass


def test_write_interrupted_midway_leaves_previous_checkpoint(state, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, {**state, "step": 1})
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(1000)  # a torn file on disk ...
        raise Boom("disk went away")  # ... and the write dies in the middle

    monkeypatch.setattr(ckpt_mod.torch, "save", half_then_fail)
    with pytest.raises(CheckpointError, match=str(path)):
        save_checkpoint(path, {**state, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pth"]


def test_keyboard_interrupt_during_write_removes_temp_and_propagates(state, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, {**state, "step": 1})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {**state, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pth"]


def test_os_error_names_the_path(state, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod.os, "replace", no_space)
    with pytest.raises(OSError, match=r"could not write checkpoint .*ckpt\.pth: No space left"):
        save_checkpoint(path, state)
    assert os.listdir(tmp_path) == []


def test_stale_temp_files_of_a_killed_write_are_removed(tmp_path):
    (tmp_path / ".ckpt.pth.abc123.tmp").write_bytes(b"partial")
    (tmp_path / "other.tmp").write_bytes(b"not ours")
    assert remove_stale_temp_files(tmp_path / "ckpt.pth") == 1
    assert sorted(os.listdir(tmp_path)) == ["other.tmp"]


# ---------------------------------------------------------------------------------------------- refusing bad files
def test_missing_file_is_file_not_found_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(tmp_path / "nope.pth")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        *[(random.Random(seed).randbytes(4096), "not a readable checkpoint") for seed in range(4)],
        (b"PK\x03\x04" + random.Random(9).randbytes(200), "not a readable checkpoint"),  # a zip header only
        (b"\x80\x02}q\x00.", "holds a dict|not a readable checkpoint"),  # a bare pickle of an empty dict
    ],
    ids=["empty", "random0", "random1", "random2", "random3", "fake-zip", "bare-pickle"],
)
def test_garbage_is_refused_with_a_message(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_truncated_checkpoint_is_refused(state, tmp_path):
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, state)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated, corrupt or not a PyTorch file"):
            load_checkpoint(path)


class _Pwn:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_that_would_execute_code_is_refused_and_not_executed(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"format": FORMAT, "model": _Pwn(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    expected = "refusing to load .* it holds a Python object" if writer == "torch.save" else "not a readable"
    with pytest.raises(CheckpointError, match=expected) as info:
        load_checkpoint(path)
    assert not marker.exists()
    assert "Traceback" not in str(info.value)


@pytest.mark.parametrize(
    "payload, message",
    [
        (torch.zeros(3), "holds a Tensor, not a checkpoint dict"),
        ({"state_dict": {"w": torch.zeros(1)}}, "is not a 'ddpm-mnist/1' checkpoint"),
        ({"format": "ddpm-mnist/0", "model": {}}, "format: 'ddpm-mnist/0'"),
        ({"format": FORMAT, "model": {}}, r"lacks required key\(s\) \['model_config'"),
    ],
    ids=["tensor", "foreign-dict", "other-version", "missing-keys"],
)
def test_foreign_files_are_refused(tmp_path, payload, message):
    path = tmp_path / "foreign.pth"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------- rebuilding
def test_build_model_loads_ema_weights_in_eval_mode(state, tmp_path):
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, state)
    model, scheduler, ckpt = build_model_from_checkpoint(path)
    assert not model.training
    assert model.config == preset_config("tiny")
    assert scheduler.num_timesteps == 50
    assert_states_equal(model.state_dict(), state["ema"])
    assert ckpt["step"] == state["step"]
    raw, _, _ = build_model_from_checkpoint(state, use_ema=False)  # a dict works as well as a path
    assert_states_equal(raw.state_dict(), state["model"])
    assert not torch.equal(raw.conv_out.weight, model.conv_out.weight)


def test_build_model_lays_weights_out_channels_last_with_the_same_outputs(state):
    model, _, _ = build_model_from_checkpoint(state)
    nchw, _, _ = build_model_from_checkpoint(state, channels_last=False)
    assert model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert nchw.conv_in.weight.is_contiguous()
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor([0, 20, 49])), nchw(x, torch.tensor([0, 20, 49])),
                                   atol=1e-5, rtol=1e-4)


def test_build_model_without_ema_falls_back_to_model_and_logs(state, caplog):
    with caplog.at_level(logging.INFO, logger="common.checkpoint"):
        model, _, _ = build_model_from_checkpoint({**state, "ema": None})
    assert_states_equal(model.state_dict(), state["model"])
    assert "no EMA weights" in caplog.text


@pytest.mark.parametrize("damage, message", [
    ("missing", r"missing keys: conv_out\.bias"),
    ("extra", r"unexpected keys: extra\.weight"),
    ("shape", r"mismatch: conv_out\.weight \(1, 8, 5, 5\) vs model \(1, 8, 3, 3\)"),
])
def test_state_dict_that_does_not_fit_is_refused_naming_keys(state, damage, message):
    weights = dict(state["ema"])
    if damage == "missing":
        del weights["conv_out.bias"]
    elif damage == "extra":
        weights["extra.weight"] = torch.zeros(1)
    else:
        weights["conv_out.weight"] = torch.zeros(1, 8, 5, 5)
    with pytest.raises(CheckpointError, match=message):
        build_model_from_checkpoint({**state, "ema": weights})


def test_invalid_model_config_is_a_checkpoint_error(state):
    with pytest.raises(CheckpointError, match="invalid configuration.*norm_groups"):
        build_model_from_checkpoint({**state, "model_config": {**state["model_config"], "norm_groups": 3}})


def test_export_weights_is_slim_and_samples_like_the_ema(state, tmp_path):
    full, slim = tmp_path / "full.pth", tmp_path / "slim.pth"
    save_checkpoint(full, state)
    export_weights(full, slim)
    exported = torch.load(slim, weights_only=True)
    assert sorted(exported) == sorted(
        ["format", "model_config", "diffusion_config", "train_config", "model", "ema", "step", "epoch", "class_names"]
    )
    assert exported["ema"] is None and exported["format"] == FORMAT
    assert_states_equal(exported["model"], state["ema"])
    assert slim.stat().st_size < 0.5 * full.stat().st_size  # no optimizer moments, no second weight copy
    a, _, _ = build_model_from_checkpoint(slim)
    b, _, _ = build_model_from_checkpoint(full)
    x, t = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 49])
    with torch.no_grad():
        assert torch.equal(a(x, t), b(x, t))


def test_export_command_line(state, tmp_path, caplog):
    import export_weights as export

    save_checkpoint(tmp_path / "full.pth", state)
    assert export.main([str(tmp_path / "full.pth"), str(tmp_path / "slim.pth")]) == 0
    assert load_checkpoint(tmp_path / "slim.pth")["ema"] is None
    assert export.main([str(tmp_path / "missing.pth"), str(tmp_path / "x.pth")]) == 2
    assert "missing.pth does not exist" in caplog.text


def test_every_torch_load_in_the_repository_is_weights_only():
    """The issue's rule, enforced: a new ``torch.load`` without ``weights_only=True`` fails this test."""
    repo = Path(__file__).resolve().parent.parent
    offenders = []
    for path in repo.rglob("*.py"):
        parts = path.relative_to(repo).parts
        if any(part.startswith(".") or part in {"venv", "build", "site-packages"} for part in parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe:
                    offenders.append(f"{path.relative_to(repo)}:{node.lineno}")
    assert not offenders, f"torch.load without weights_only=True: {offenders}"
