"""Denoising-progress frames: clean x0 | noised x_t at a fixed t | the model's prediction x̂0.

The batch, its noise ε and t are fixed for the whole run (drawn from their own generators, never from the
training RNG), so frames from different steps differ only by the model and can be compared or animated:

    x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε            (Eq. 4)
    x̂0 = (x_t − √(1−ᾱ_t) ε_θ(x_t, t)) / √ᾱ_t, clamped to [−1, 1]

Frames are saved as ``viz/denoise_progress_ep<epoch>_it<step>.png`` and ``..._ep<epoch>_end.png``,
optionally shown in a matplotlib window, and assembled into ``viz/progress.gif`` with imageio.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from sampling import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_SAMPLER,
    DEFAULT_SAMPLER_STEPS,
    SamplerConfig,
    class_conditional_eps_fns,
    labels_in_rows,
    model_eps_fn,
    sample_images,
    save_grid_png,
    save_samples_npz,
)
from scheduler import LinearNoiseScheduler

logger = logging.getLogger(__name__)

FRAME_PREFIX = "denoise_progress_"
_FRAME_RE = re.compile(r"^denoise_progress_ep(\d+)_(?:it(\d+)|end)\.png$")
_SCALE = 2  # 28×28 digits are upscaled (nearest) so a frame is readable without zooming
_PAD = 2
_LABEL_W = 40
_TITLE_H = 16
_ROW_LABELS = ("x0", "x_t", "pred")


def frame_path(viz_dir: Path, epoch: int, step: int | None) -> Path:
    """``ep<epoch>_it<step>`` during an epoch, ``ep<epoch>_end`` (step None) at its end; zero-padded to sort."""
    suffix = "end" if step is None else f"it{step:07d}"
    return viz_dir / f"{FRAME_PREFIX}ep{epoch:03d}_{suffix}.png"


def _frame_order(path: Path) -> tuple[int, int, int]:
    match = _FRAME_RE.match(path.name)
    assert match is not None
    epoch, step = int(match.group(1)), match.group(2)
    return (epoch, 1, 0) if step is None else (epoch, 0, int(step))  # an epoch's end frame comes last


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] in [−1, 1] → uint8 [B, H, W, C] in [0, 255]."""
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def make_frame(rows: list[torch.Tensor], title: str) -> np.ndarray:
    """Grid with one row per tensor of ``rows`` (each [B, C, H, W] in [−1, 1]), row labels and a title.

    Returns uint8 [H, W] (grayscale) or [H, W, 3].
    """
    tiles = [to_uint8(r) for r in rows]
    B, h, w, C = tiles[0].shape
    h, w = h * _SCALE, w * _SCALE
    height = _TITLE_H + len(rows) * (h + _PAD) + _PAD
    width = _LABEL_W + B * (w + _PAD) + _PAD
    canvas = Image.new("L" if C == 1 else "RGB", (width, height), color=32)
    for r, row in enumerate(tiles):
        y = _TITLE_H + _PAD + r * (h + _PAD)
        for b in range(B):
            tile = Image.fromarray(row[b, :, :, 0] if C == 1 else row[b]).resize((w, h), Image.NEAREST)
            canvas.paste(tile, (_LABEL_W + _PAD + b * (w + _PAD), y))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((_PAD, 2), title, fill=255 if C == 1 else (255, 255, 255), font=font)
    for r, label in enumerate(_ROW_LABELS[: len(rows)]):
        y = _TITLE_H + _PAD + r * (h + _PAD) + h // 2 - 6
        draw.text((_PAD, y), label, fill=255 if C == 1 else (255, 255, 255), font=font)
    return np.asarray(canvas)


class LiveWindow:
    """A matplotlib window updated in place. Without a display it warns once and does nothing."""

    def __init__(self) -> None:
        self._fig = self._image = self._plt = None
        self.enabled = True

    def _disable(self, why: str) -> None:
        logger.warning("--viz-live: %s; carrying on without the live window (frames are still saved "
                       "with --viz-save)", why)
        self.enabled = False

    def show(self, frame: np.ndarray, title: str) -> None:
        if not self.enabled:
            return
        try:
            if self._fig is None:
                if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                             or os.environ.get("WAYLAND_DISPLAY")):
                    return self._disable("no display (DISPLAY/WAYLAND_DISPLAY unset)")
                import matplotlib
                import matplotlib.pyplot as plt

                backend = matplotlib.get_backend().lower()
                if backend in {"agg", "pdf", "ps", "svg", "cairo", "template"} or backend.endswith("inline"):
                    return self._disable(f"matplotlib backend {backend!r} cannot open a window")
                plt.ion()
                self._plt = plt
                self._fig, ax = plt.subplots(figsize=(frame.shape[1] / 60, frame.shape[0] / 60))
                ax.axis("off")
                self._image = ax.imshow(frame, cmap="gray", vmin=0, vmax=255)
            else:
                self._image.set_data(frame)
            self._fig.suptitle(title)
            self._fig.canvas.draw_idle()
            self._plt.pause(0.001)
        except Exception as err:  # a broken GUI stack must never stop training
            self._disable(f"the window failed ({type(err).__name__}: {err})")

    def close(self) -> None:
        if self._fig is not None and self._plt is not None:
            try:
                self._plt.close(self._fig)
            except Exception:
                pass


class ProgressVisualizer:
    """Renders frames of a fixed batch at a fixed timestep with the (EMA) model.

    Args:
        scheduler: the noise schedule (on the model's device).
        x0: ``[N, C, H, W]`` clean images in [−1, 1].
        t: the 0-based timestep at which to noise them.
        seed: seeds ε, drawn once on the CPU (so frames are identical on any device).
        viz_dir: where frames are saved when ``save``.
        save, live: write PNGs / update a matplotlib window.
        labels: ``[N]`` class labels of ``x0``; a class-conditional model is shown them as its context.
    """

    def __init__(self, scheduler: LinearNoiseScheduler, x0: torch.Tensor, t: int, seed: int, viz_dir: Path,
                 save: bool, live: bool, labels: torch.Tensor | None = None) -> None:
        self.labels = labels.to(scheduler.device) if labels is not None else None
        generator = torch.Generator().manual_seed(seed)
        self.t = t
        self.x0 = x0.to(scheduler.device)
        self.eps = torch.randn(x0.shape, generator=generator).to(scheduler.device)
        self.x_t = scheduler.add_noise(self.x0, self.eps, t)
        self.scheduler = scheduler
        self.viz_dir = Path(viz_dir)
        self.save = save
        self.window = LiveWindow() if live else None
        if save:
            self.viz_dir.mkdir(parents=True, exist_ok=True)

    @torch.no_grad()
    def render(self, model: torch.nn.Module, title: str) -> np.ndarray:
        conditional = getattr(model, "label_embedding", None) is not None
        context = model.label_context(self.labels) if conditional else None
        eps_pred = model(self.x_t, self.t, context=context)
        x0_pred = self.scheduler.predict_x0(self.x_t, eps_pred, self.t).clamp(-1.0, 1.0)
        return make_frame([self.x0, self.x_t, x0_pred], title)

    def __call__(self, model: torch.nn.Module, epoch: int, step: int, end_of_epoch: bool = False) -> Path | None:
        """Render, save as ``frame_path(...)`` and show; ``epoch`` is 1-based. Returns the file written."""
        label = f"epoch {epoch} end" if end_of_epoch else f"epoch {epoch}"
        frame = self.render(model, f"{label}  step {step}  t={self.t}")
        path = None
        if self.save:
            path = frame_path(self.viz_dir, epoch, None if end_of_epoch else step)
            Image.fromarray(frame).save(path)
        if self.window is not None:
            self.window.show(frame, f"{label}, step {step}")
        return path

    def close(self) -> None:
        if self.window is not None:
            self.window.close()


def assemble_gif(viz_dir: str | Path, out_path: str | Path | None = None, max_frames: int = 200,
                 frame_ms: int = 400) -> Path | None:
    """Animate every saved frame in ``viz_dir`` in training order into ``progress.gif``; None if no frames.

    At most ``max_frames`` frames, evenly subsampled (always keeping the last), so long runs stay small.
    """
    import imageio.v3 as iio

    viz_dir = Path(viz_dir)
    out_path = Path(out_path) if out_path is not None else viz_dir / "progress.gif"
    paths = sorted((p for p in viz_dir.glob(f"{FRAME_PREFIX}*.png") if _FRAME_RE.match(p.name)), key=_frame_order)
    if not paths:
        return None
    if len(paths) > max_frames:
        keep = np.linspace(0, len(paths) - 1, max_frames).round().astype(int)
        paths = [paths[i] for i in sorted(set(keep.tolist()))]
    frames = [np.asarray(Image.open(p).convert("L")) for p in paths]
    shape = frames[-1].shape
    frames = [f for f in frames if f.shape == shape]  # frames from an earlier run with other --viz-num
    tmp = out_path.with_name(f".{out_path.name}.tmp.gif")
    iio.imwrite(tmp, np.stack(frames), duration=frame_ms, loop=0)
    os.replace(tmp, out_path)
    logger.info("wrote %s (%d frames)", out_path, len(frames))
    return out_path


def draw_final_samples(model: torch.nn.Module, scheduler: LinearNoiseScheduler, num_samples: int, model_config,
                       out_dir: Path, seed: int, device: torch.device) -> Path:
    """What the trained model draws: ``num_samples`` images with the default sampler (a class-conditional model
    draws one class per grid row, at the default guidance scale) → ``out_dir/grid.png`` and ``samples.npz``."""
    config = SamplerConfig(DEFAULT_SAMPLER, min(DEFAULT_SAMPLER_STEPS, scheduler.num_timesteps))
    size = model_config.image_size or 28
    eps_fn = batch_eps_fn = labels = None
    if model_config.conditional:
        labels = labels_in_rows(list(range(model_config.num_classes)), num_samples)
        batch_eps_fn = class_conditional_eps_fns(model, labels, DEFAULT_GUIDANCE_SCALE)
    else:
        eps_fn = model_eps_fn(model)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        result = sample_images(eps_fn, scheduler, num_samples, config, batch_eps_fn=batch_eps_fn, device=device,
                               image_shape=(model_config.im_channels, size, size),
                               generator=torch.Generator().manual_seed(seed))
    model.train(was_training)
    rows = model_config.num_classes if model_config.conditional else round(num_samples ** 0.5)
    grid = save_grid_png(result.images, out_dir / "grid.png", max(1, min(rows, num_samples)))
    save_samples_npz(result.images, out_dir / "samples.npz",
                     {"sampler": config.describe(scheduler.num_timesteps), "seed": seed,
                      "labels": labels.tolist() if labels is not None else None})
    logger.info("%d samples (%s, EMA weights) → %s", num_samples, config.describe(scheduler.num_timesteps), grid)
    return grid
