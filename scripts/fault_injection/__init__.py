"""Fault injection for the README's "Reliability" promises, shared by ``tests/test_reliability.py``,
``tests/test_dataset_fuzz.py``, ``tests/stress/`` and ``scripts/reliability_report.py`` (it lives beside the
script so that neither imports from ``tests/``; pytest finds it through ``pythonpath`` in pyproject.toml).

Each promise has one module whose ``check_*`` functions *do* the fault and return what happened (dataclasses
with an ``ok`` property); the tests assert on those results and the report script counts them, so the published
figures and the tests cannot drift apart:

==========================  =====================================================================
module                      promise
==========================  =====================================================================
:mod:`.kills`               1. SIGKILL anywhere (also inside checkpoint writes), resume exactly; 7. live lock
:mod:`.writes`              2. a failed checkpoint write keeps the previous checkpoint
:mod:`.hostile`             3. hostile, broken and mismatching checkpoints are refused by name
:mod:`.data`                4. messy image folders: load correctly or BadImageError naming the file
:mod:`.flags`               5. bad flag values are rejected before any work
:mod:`.divergence`          6. a NaN/inf loss stops the run, keeps the last good checkpoint, names the step
:mod:`.locks`               7. the run lock under kills and races
==========================  =====================================================================

Nothing hooks into the training code: runs are real ``python main.py`` processes killed with SIGKILL, or
in-process ``main.main`` calls with one function patched from outside (``unittest.mock``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import main as entry
from common.checkpoint import FORMAT
from models import UNet, preset_config
from scheduler import DiffusionConfig
from training.config import TrainConfig
from training.state import EMA

REPO = Path(__file__).resolve().parents[2]  # where main.py is: the cwd of the killed runs
CKPT_NAME = "test_001.pth"
TEMP_GLOB = f".{CKPT_NAME}.*.tmp"  # what save_checkpoint writes before its atomic rename
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def write_digits(root: Path, per_class: int, classes: int = 3) -> Path:
    """``per_class`` noisy 28×28 bars per class folder: a bar at a class-specific height."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / str(c)
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 40, (28, 28))
            pixels[4 + 6 * c: 10 + 6 * c, 4:24] += 215
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def train_argv(run: Path, data: Path, *extra: str) -> list[str]:
    """``main.py`` arguments of a ``tiny`` run (batch 8, T=100) on one thread."""
    return ["--train-ddpm-model", "--task-name", str(run), "--data-path", str(data), "--model", "tiny",
            "--batch-size", "8", "--num-timesteps", "100", "--num-threads", "1", *extra]


def make_state(step: int = 1, seed: int = 0) -> dict:
    """A checkpoint like the trainer's: tiny UNet after one AdamW step, an EMA that differs from it."""
    torch.manual_seed(seed)
    model = UNet(preset_config("tiny"))
    ema = EMA(model, 0.9)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(2, 1, 28, 28)
    (model(x, torch.tensor([3, 7])) - torch.randn_like(x)).pow(2).mean().backward()  # moves the zero-init conv_out
    optimizer.step()
    ema.update(model, 9)  # d = min(0.9, 0.9^7.94): the average stays between the initial and the trained weights
    return {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "diffusion_config": DiffusionConfig(num_timesteps=50).to_dict(),
        "train_config": TrainConfig(model="tiny").to_dict(),
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "epoch": 0,
        "data_offset": 16,
        "num_samples": 48,
        "rng": {"torch": torch.get_rng_state(), "cuda": [], "noise": torch.Generator().get_state(),
                "noise_device": "cpu"},
    }


def checkpoint_temp_files(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob(TEMP_GLOB))


def weights_max_abs_diff(a: dict, b: dict) -> float:
    """max |a − b| over the model, EMA and optimizer tensors of two checkpoints (inf if their keys differ)."""
    worst = 0.0
    for key in ("model", "ema"):
        if a[key].keys() != b[key].keys():
            return float("inf")
        for name, t in a[key].items():
            worst = max(worst, (t.double() - b[key][name].double()).abs().max().item())
    for pid, state in a["optimizer"]["state"].items():
        for name, t in state.items():
            if torch.is_tensor(t):
                worst = max(worst, (t.double() - b["optimizer"]["state"][pid][name].double()).abs().max().item())
    return worst


@contextlib.contextmanager
def captured_logs(level: int = logging.INFO) -> Iterator[list[str]]:
    """Collect the messages logged anywhere while the block runs."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    root = logging.getLogger()
    handler, before = Collect(level), root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield messages
    finally:
        root.removeHandler(handler)
        root.setLevel(before)


def run_main(argv: list[str]) -> tuple[int, str]:
    """``main.main(argv)`` in this process: (exit code, the log messages joined). SystemExit becomes its code."""
    with captured_logs() as messages:
        try:
            rc = entry.main(argv)
        except SystemExit as exit_:
            rc = exit_.code if isinstance(exit_.code, int) else 1
    return rc, "\n".join(messages)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def without_key_bias(state: dict) -> dict:
    """``state`` without attention's key biases. Their gradient is identically zero — softmax over the keys
    ignores q·b_k, the same for every key — so the computed gradient is float noise, which Adam scales to steps
    of size lr and random sign: there the two runs may differ by up to lr per step, elsewhere by float noise."""
    kept = {}
    for name, value in state.items():
        if name.endswith("self_attn.qkv.bias"):  # [b_q | b_k | b_v]
            third = len(value) // 3
            value = torch.cat([value[:third], value[2 * third:]])
        elif name.endswith("cross_attn.kv.bias"):  # [b_k | b_v]
            value = value[len(value) // 2:]
        kept[name] = value
    return kept
