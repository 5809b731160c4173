"""Shared pieces of the benchmarks: the diffusers baseline matched to a preset, FLOP counting, the
CPU's matmul throughput, peak-memory sampling, MNIST's training digits held in memory, and the sampler specs and
timed, reusable sample draws of the sampling benchmarks. Benchmarks print tables; none is a test.

The benchmarks import the repository's packages because it is installed (``pip install -e .``); ``python
benchmarks/<script>.py`` puts this folder on the path, so they import this module as ``harness``."""

from __future__ import annotations

import argparse
import logging
import os
import re
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from dataset import load_mnist_idx
from models import UNet
from sampling import SamplerConfig, load_samples_npz, sample_images, save_samples_npz, to_uint8

REPO_ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)

# diffusers' UNet2DModel with the same layout as our `small` (28 → 14 → 7, attention only at 7×7) and block
# widths chosen so that its parameter count is within 10 % of small's: a comparison at equal size, so that a
# speed or quality difference comes from the architecture. When `small` changes, re-match the widths.
DIFFUSERS_MATCHED = {
    "small": dict(block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8),
}


def diffusers_unet(preset: str = "small", im_channels: int = 1, sample_size: int = 28,
                   **overrides) -> torch.nn.Module:
    """A diffusers UNet2DModel matched to one of our presets (``overrides`` replace its ``UNet2DModel``
    arguments), wrapped to take ``(x, t)`` like ours."""
    from diffusers import UNet2DModel

    cfg = {**DIFFUSERS_MATCHED[preset], **overrides}
    levels = len(cfg["block_out_channels"])
    model = UNet2DModel(
        sample_size=sample_size, in_channels=im_channels, out_channels=im_channels,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        **cfg,
    )
    return DiffusersEps(model)


class DiffusersEps(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t).sample


def parse_model_name(name: str) -> tuple[str, dict]:
    """``"small"`` → ("small", {}); ``"small[channels=16,16,64;mid_layers=2]"`` → a preset with UNetConfig
    overrides (ints, bools and comma-separated tuples), so candidate architectures run from the command line."""
    match = re.fullmatch(r"([\w-]+)(?:\[(.*)\])?", name)
    if match is None:
        raise ValueError(f"bad model name {name!r}; use PRESET or PRESET[field=value;field=v1,v2]")
    preset, body = match.group(1), match.group(2)
    overrides = {}
    for item in filter(None, (body or "").split(";")):
        field, _, value = item.partition("=")
        parts = [_literal(v) for v in value.split(",")]
        overrides[field.strip()] = tuple(parts) if "," in value else parts[0]
    return preset, overrides


def _literal(text: str):
    text = text.strip()
    if text in ("True", "False"):
        return text == "True"
    return int(text) if text.lstrip("-").isdigit() else text


def build_model(name: str) -> torch.nn.Module:
    """``tiny``/``small``/``base`` (ours) or ``diffusers-small`` (the matched baseline), each optionally with
    overrides (see :func:`parse_model_name`), e.g. ``diffusers-small[block_out_channels=16,32,64]``."""
    preset, overrides = parse_model_name(name)
    if preset.startswith("diffusers-"):
        return diffusers_unet(preset.removeprefix("diffusers-"), **overrides)
    return UNet.from_preset(preset, **overrides)


class MNISTFromIDX(torch.utils.data.Dataset):
    """MNIST's 60,000 training digits read straight from the bundled IDX files (no PNG tree to build), batched
    from memory by the trainer (``as_tensors``)."""

    def __init__(self) -> None:
        images, labels = load_mnist_idx("train")
        self.images = torch.from_numpy(images).unsqueeze(1)  # uint8 (60000, 1, 28, 28)
        self.labels = torch.from_numpy(labels).long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i].float() / 127.5 - 1.0, int(self.labels[i])

    def as_tensors(self):
        return self.images, self.labels


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def training_flops_per_image(model: torch.nn.Module, size: int = 28, channels: int = 1) -> float:
    """FLOPs of one forward + backward pass on one image, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, channels, size, size)
    with FlopCounterMode(display=False) as counter:
        model(x, torch.tensor([10])).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def matmul_gflops(n: int = 1024, seconds: float = 2.0) -> float:
    """This CPU's float32 matmul throughput (GFLOP/s) with torch's current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak resident memory above the level at entry (CPU, sampled every 2 ms) or peak CUDA allocation."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, _rss_bytes() - self._base)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes() - self._base)


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A GitHub-markdown table, so output pastes straight into benchmarks/RESULTS.md."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")


# ---------------------------------------------------------------------------------------- sampling benchmarks
SAMPLER_SPEC = ("ddpm (all T steps), ddpm:<steps> (respaced), ddim:<steps>[:<eta>] or dpm-solver++:<steps>, "
                "each optionally @<max samples>")


def parse_sampler(spec: str) -> tuple[SamplerConfig, int | None]:
    """``ddpm`` | ``ddpm:<steps>`` | ``ddim:<steps>[:<eta>]`` | ``dpm-solver++:<steps>``, optionally ``@<max N>``
    → (config, cap or None). The cap limits how many images that sampler draws, e.g. ``ddpm@1000``."""
    body, _, cap = spec.partition("@")
    name, *params = body.split(":")
    try:
        max_n = int(cap) if cap else None
        if max_n is not None and max_n < 2:
            raise ValueError("the @ cap must be >= 2")
        if name == "ddpm" and len(params) <= 1:
            return SamplerConfig("ddpm", int(params[0]) if params else None), max_n
        if name == "ddim" and len(params) in (1, 2):
            return SamplerConfig("ddim", int(params[0]), float(params[1]) if len(params) == 2 else 0.0), max_n
        if name == "dpm-solver++" and len(params) == 1:
            return SamplerConfig("dpm-solver++", int(params[0])), max_n
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"bad sampler {spec!r}: {err}") from None
    raise argparse.ArgumentTypeError(f"bad sampler {spec!r}; use {SAMPLER_SPEC}")


def draw_or_reuse(model: torch.nn.Module, scheduler, config: SamplerConfig, n: int, *, seed: int, batch_size: int,
                  out_dir: Path, ckpt_sha: str, reuse: bool = False) -> tuple[np.ndarray, dict]:
    """Draw ``n`` uint8 samples with ``config`` (timed) and save them to ``<out_dir>/samples_<label>.npz``; with
    ``reuse``, take them and their recorded speed from that file instead when it holds >= n samples of the same
    checkpoint and seed. Returns ``(images [n', 28, 28], metadata)``, n' >= n."""
    label = config.describe(scheduler.num_timesteps)
    path = Path(out_dir) / f"samples_{label}.npz"
    if reuse and path.is_file():
        images, meta = load_samples_npz(path)
        if meta.get("checkpoint_sha256") == ckpt_sha and meta.get("seed") == seed and len(images) >= n:
            logger.info("%s: reusing %d samples from %s", label, len(images), path)
            return images, meta
    start = time.perf_counter()
    result = sample_images(model, scheduler, n, config, image_shape=(model.config.im_channels, 28, 28),
                           batch_size=batch_size, generator=torch.Generator().manual_seed(seed),
                           device=scheduler.device)
    seconds = time.perf_counter() - start
    meta = {"checkpoint_sha256": ckpt_sha, "seed": seed, "sampler": label, "sampler_config": asdict(config),
            "num_function_evals": result.num_function_evals, "seconds": seconds, "images_per_second": n / seconds,
            "device": str(scheduler.device), "threads": torch.get_num_threads(), "batch_size": batch_size}
    images = to_uint8(result.images)
    save_samples_npz(images, path, meta)
    logger.info("%s: %d samples in %.0f s (%.2f images/s)", label, n, seconds, n / seconds)
    return images, meta
