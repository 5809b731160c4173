"""Promise 3: hostile, broken and mismatching checkpoints are refused with a message naming the problem.

:data:`CATALOGUE` lists every case by name (so tests can be parametrised without writing anything); each case
writes its file on demand. ``how="load"`` cases go through ``build_model_from_checkpoint`` (which calls
``load_checkpoint``); ``how="resume"`` cases through ``main.py --resume`` into a fresh ``tiny`` run, which must
exit 2 and write no checkpoint. A pickle payload that would run code creates a marker file if it ever runs.
"""

from __future__ import annotations

import builtins
import copy
import functools
import io
import os
import pickle
import random
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import CheckpointError, build_model_from_checkpoint
from fault_injection import CKPT_NAME, make_state, run_main, train_argv
from models import UNet, preset_config

CODE = r"refusing to load .* could execute code.*weights_only=True.*nothing in the file was run.*untrusted"
REFUSED_UNSAFE = r"refused it without running anything|could execute code"
UNREADABLE = r"not a readable checkpoint .*truncated, corrupt or not a PyTorch file"


@dataclass(frozen=True)
class HostileCase:
    name: str
    expect: str  # regex the CheckpointError message must match: it names the problem
    write: Callable[[Path, Path], None]  # write(path, marker)
    how: str = "load"  # "load" or "resume"


@dataclass
class HostileOutcome:
    name: str
    refused: bool
    named: bool  # the message matched the case's ``expect``
    executed: bool  # the payload ran (its marker file exists)
    message: str

    @property
    def ok(self) -> bool:
        return self.refused and self.named and not self.executed


class _Exploit:
    """Unpickling this calls ``func(*args)``: what a checkpoint from a stranger can do to ``torch.load``."""

    def __init__(self, func: Callable, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@functools.cache
def _good() -> dict:
    return make_state()


@functools.cache
def _good_bytes() -> bytes:
    with io.BytesIO() as buf:
        torch.save(_good(), buf)
        return buf.getvalue()


def _payloads(marker: Path) -> dict[str, _Exploit]:
    return {
        "os.system": _Exploit(os.system, f"touch {marker}"),
        "builtins.exec": _Exploit(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": _Exploit(subprocess.Popen, ["touch", str(marker)]),
    }


def _save(update: Callable[[dict], dict], **kwargs) -> Callable[[Path, Path], None]:
    """A writer saving ``update(good state)`` with torch.save."""
    return lambda path, marker: torch.save(update(_good()), path, **kwargs)


def _raw(data: Callable[[], bytes]) -> Callable[[Path, Path], None]:
    return lambda path, marker: path.write_bytes(data())


def _flip(data: bytes, seed: int, count: int) -> bytes:
    out, rng = bytearray(data), random.Random(seed)
    for _ in range(count):
        out[rng.randrange(64, len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _optimizer(good: dict, betas: tuple | None = None, exp_avg: float | torch.Tensor | None = None) -> dict:
    """The good optimizer state with its betas or the first weight's exp_avg replaced."""
    opt = copy.deepcopy(good["optimizer"])
    if betas is not None:
        opt["param_groups"][0]["betas"] = betas
    if exp_avg is not None:
        first = opt["state"][0]
        first["exp_avg"] = exp_avg if torch.is_tensor(exp_avg) else torch.full_like(first["exp_avg"], exp_avg)
    return opt


def _nan_like(weights: dict, key: str, value: float) -> dict:
    return {**weights, key: torch.full_like(weights[key], value)}


def _catalogue() -> list[HostileCase]:
    cases = []
    add = lambda name, expect, write, how="load": cases.append(HostileCase(name, expect, write, how))  # noqa: E731

    # -- pickles that would run code: refused by weights_only=True, never executed
    for label in ("os.system", "builtins.exec", "subprocess.Popen"):
        add(f"pickle runs {label} (torch.save)", CODE,
            lambda p, m, label=label: torch.save({**_good(), "model": _payloads(m)[label]}, p))
        add(f"pickle runs {label} (legacy torch.save)", CODE,
            lambda p, m, label=label: torch.save({**_good(), "ema": _payloads(m)[label]}, p,
                                                 _use_new_zipfile_serialization=False))
        for protocol in (0, 2, 5):
            add(f"raw pickle (protocol {protocol}) runs {label}", REFUSED_UNSAFE,
                lambda p, m, label=label, protocol=protocol: p.write_bytes(
                    pickle.dumps({"format": _good()["format"], "rng": _payloads(m)[label]}, protocol=protocol)))
    add("a numpy array inside", CODE, _save(lambda g: {**g, "rng": {"torch": np.zeros(3)}}))

    # -- files that are not checkpoints at all
    for frac in (0.0001, 0.25, 0.5, 0.9, 0.999):
        add(f"truncated to {frac:.2%}", UNREADABLE,
            _raw(lambda frac=frac: _good_bytes()[: max(1, int(len(_good_bytes()) * frac))]))
    for seed in range(3):
        add(f"random bytes #{seed}", UNREADABLE, _raw(lambda seed=seed: random.Random(seed).randbytes(4096)))
    add("random bytes after a zip header", UNREADABLE, _raw(lambda: b"PK\x03\x04" + random.Random(7).randbytes(4096)))
    add("64 flipped bits inside the zip", UNREADABLE, _raw(lambda: _flip(_good_bytes(), 3, 64)))
    add("zero-filled file", UNREADABLE, _raw(lambda: bytes(len(_good_bytes()))))
    add("empty file", r"empty \(0 bytes\)", _raw(lambda: b""))
    add("a folder named .pth", r"is a folder, not a file", lambda p, m: p.mkdir())
    add("a FIFO named .pth (would block a reader)", r"empty \(0 bytes\)", lambda p, m: os.mkfifo(p))
    add("a bare tensor", r"holds a Tensor, not a checkpoint dict", lambda p, m: torch.save(torch.zeros(3), p))

    # -- checkpoints of something else, or damaged inside
    add("wrong format key", r"not a 'ddpm-mnist/1' checkpoint \(format: 'stable-diffusion/2'",
        _save(lambda g: {**g, "format": "stable-diffusion/2"}))
    add("a plain state dict (no format key)", r"format: \"<no 'format' key>\"", _save(lambda g: dict(g["model"])))
    add("required keys missing", r"lacks required key\(s\) \['model_config'",
        _save(lambda g: {"format": g["format"], "model": g["model"]}))
    add("step is a string", r"\['step'\] must be an int in \[0, 2147483647\], got 'many'",
        _save(lambda g: {**g, "step": "many"}))
    add("negative epoch", r"\['epoch'\] must be an int in \[0, 2147483647\], got -1",
        _save(lambda g: {**g, "epoch": -1}))
    add("step 10^12", r"\['step'\] must be an int in \[0, 2147483647\], got 1000000000000",
        _save(lambda g: {**g, "step": 10**12}))
    add("more epochs than steps", r"impossible counters \(step 1, epoch 1000000",
        _save(lambda g: {**g, "epoch": 10**6}))
    add("data offset beyond the data", r"impossible counters .*data_offset 49 of 48",
        _save(lambda g: {**g, "data_offset": 49}))
    add("float64 weights", r"conv_out\.weight is torch\.float64, the model's is torch\.float32",
        _save(lambda g: {**g, "ema": {**g["ema"], "conv_out.weight": g["ema"]["conv_out.weight"].double()}}))
    add("complex weights", r"conv_out\.weight is torch\.complex64",
        _save(lambda g: {**g, "ema": {**g["ema"], "conv_out.weight": g["ema"]["conv_out.weight"].to(torch.complex64)}}))
    add("weights of 1e30 (black samples)", r"values beyond ±10000 in conv_out\.weight",
        _save(lambda g: {**g, "ema": _nan_like(g["ema"], "conv_out.weight", 1e30)}))
    add("a sparse tensor", r"conv_out\.weight is a torch\.sparse_coo tensor",
        _save(lambda g: {**g, "ema": {**g["ema"], "conv_out.weight": g["ema"]["conv_out.weight"].to_sparse()}}))
    add("zero-stride tensor (one value posing as many)", r"conv_out\.weight stores fewer values than its shape",
        _save(lambda g: {**g, "ema": {**g["ema"], "conv_out.weight": torch.zeros(1).expand(1, 8, 3, 3)}}))
    add("invalid model config", r"invalid configuration.*norm_groups",
        _save(lambda g: {**g, "model_config": {**g["model_config"], "norm_groups": 3}}))
    add("state dict: a key missing", r"missing keys: conv_out\.bias",
        _save(lambda g: {**g, "ema": {k: v for k, v in g["ema"].items() if k != "conv_out.bias"}}))
    add("state dict: an extra key", r"unexpected keys: extra\.weight",
        _save(lambda g: {**g, "ema": {**g["ema"], "extra.weight": torch.zeros(1)}}))
    add("state dict: a wrong shape", r"mismatch: conv_out\.weight \(1, 8, 5, 5\) vs model \(1, 8, 3, 3\)",
        _save(lambda g: {**g, "ema": {**g["ema"], "conv_out.weight": torch.zeros(1, 8, 5, 5)}}))
    add("state dict: an extra key holding a string", r"unexpected keys: extra\.weight",
        _save(lambda g: {**g, "ema": {**g["ema"], "extra.weight": "pwn"}}))
    add("state dict: an extra zero-stride tensor of 10^11 values", r"unexpected keys: extra\.weight",
        _save(lambda g: {**g, "ema": {**g["ema"], "extra.weight": torch.zeros(1).expand(10**6, 10**5)}}))
    add("state dict: a string for a tensor", r"conv_out\.weight is a str, not a tensor",
        _save(lambda g: {**g, "ema": {**g["ema"], "conv_out.weight": "pwn"}}))
    add("weights holding NaN", r"NaN/inf values in conv_out\.weight",
        _save(lambda g: {**g, "ema": _nan_like(g["ema"], "conv_out.weight", float("nan"))}))
    add("config of a 2^20-wide UNet (a memory bomb)", r"mismatch: .*\(1048576",
        _save(lambda g: {**g, "model_config": {**g["model_config"], "channels": [2**20, 2**21, 2**21]}}))
    add("config with 10^7 layers per block", r"layers_per_block=10000000.*more than the \d+ tensors",
        _save(lambda g: {**g, "model_config": {**g["model_config"], "layers_per_block": 10**7}}))

    # -- real checkpoints that cannot continue *this* run (main.py --resume, tiny, T=100)
    t100 = lambda g: {**g, "diffusion_config": {**g["diffusion_config"], "num_timesteps": 100}}  # noqa: E731
    add("a `small` checkpoint resumed as `tiny`",
        r"different model \(pass the --model it was trained with.*channels: checkpoint \(16, 16, 64, 64\) vs "
        r"requested \(8, 16, 16\)", _save(lambda g: {**t100(g), "model_config": preset_config("small").to_dict(),
                                                      "model": _small(), "ema": _small()}), "resume")
    add("another diffusion schedule", r"another diffusion schedule: num_timesteps: checkpoint 50 vs requested 100",
        _save(lambda g: g), "resume")
    add("a sampling-only export", r"cannot be resumed: it has no \['optimizer'",
        _save(lambda g: {**t100(g), "optimizer": None}), "resume")
    add("optimizer state of another model", r"optimizer state does not fit",
        _save(lambda g: {**t100(g), "optimizer": {"state": {}, "param_groups": [{"params": [0]}]}}), "resume")
    add("Adam beta = 5", r"optimizer settings out of range \(betas \(5",
        _save(lambda g: {**t100(g), "optimizer": _optimizer(g, betas=(5.0, 0.999))}), "resume")
    add("NaN in the optimizer state", r"optimizer state exp_avg .* or holds NaN/inf",
        _save(lambda g: {**t100(g), "optimizer": _optimizer(g, exp_avg=float("nan"))}), "resume")
    add("optimizer state of the wrong shape", r"optimizer state exp_avg \(3,\) does not fit",
        _save(lambda g: {**t100(g), "optimizer": _optimizer(g, exp_avg=torch.zeros(3))}), "resume")
    add("garbage RNG state", r"unusable RNG state",
        _save(lambda g: {**t100(g), "rng": {"torch": torch.zeros(3, dtype=torch.uint8)}}), "resume")
    add("resumed weights holding inf", r"NaN/inf values in conv_out\.weight",
        _save(lambda g: {**t100(g), "model": _nan_like(g["model"], "conv_out.weight", float("inf"))}), "resume")
    return cases


@functools.cache
def _small() -> dict:
    return UNet(preset_config("small")).state_dict()


CATALOGUE: list[HostileCase] = _catalogue()
CASES: dict[str, HostileCase] = {case.name: case for case in CATALOGUE}


def check_hostile(case: HostileCase, folder: Path, data: Path) -> HostileOutcome:
    """Write ``case`` into ``folder`` and load (or resume from) it: it must be refused, naming the problem."""
    slug = re.sub(r"\W+", "_", case.name).strip("_")
    path, marker = folder / f"{slug}.pth", folder / f"{slug}.executed"
    folder.mkdir(parents=True, exist_ok=True)
    case.write(path, marker)
    message, refused = "", False
    if case.how == "load":
        try:
            build_model_from_checkpoint(path)
            message = "loaded"
        except CheckpointError as err:
            message, refused = str(err), True
        except Exception as err:  # any other exception is a failure to refuse cleanly
            message = f"{type(err).__name__}: {err}"
    else:
        run = folder / f"run_{slug}"
        rc, log = run_main(train_argv(run, data, "--max-steps", "1", "--resume", str(path)))
        refused = rc == 2 and not (run / CKPT_NAME).exists()
        message = next((line for line in reversed(log.splitlines()) if str(path) in line), log[-500:])
    return HostileOutcome(case.name, refused, bool(re.search(case.expect, message, re.S)), marker.exists(), message)
