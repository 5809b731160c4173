"""What rank 0 records of a run, for people: ``metrics.csv`` and the ``loss.png`` curve, the log line,
TensorBoard, denoising-progress frames and their GIF, the resolved ``config.json`` and the samples drawn at the end
(the README's "Training" lists the files). :class:`Monitor` bundles them for the training loop.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from common.progress import progress_bar
from sampling import (
    DEFAULT_SAMPLER,
    DEFAULT_SAMPLER_STEPS,
    SamplerConfig,
    labels_in_rows,
    sample_model,
    save_grid_png,
    save_samples_npz,
)
from sampling.images import make_grid, to_uint8
from scheduler import LinearNoiseScheduler

logger = logging.getLogger(__name__)

FRAME_PREFIX = "denoise_progress_"
_SCALE = 2  # 28×28 digits are upscaled (nearest) so a frame is readable without zooming
_PAD = 2
_LABEL_W = 40
_TITLE_H = 16
_ROW_LABELS = ("x0", "x_t", "pred")


COLUMNS = {"step": "d", "epoch": "d", "loss": ".6g", "lr": ".6g", "images_per_s": ".1f", "elapsed_s": ".1f",
           "grad_norm": ".4g"}  # metrics.csv: column -> how it is written


class MetricsLog:
    """Append-only CSV of training metrics, one row per logging interval (``loss``, ``grad_norm``: its means;
    ``elapsed_s``: the training clock). On resume, rows after ``resume_step`` (written before a crash, then
    redone) are dropped, so the file describes exactly one history; ``None`` starts a fresh file."""

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, float]] = []
        if resume_step is not None and self.path.exists():
            self.rows = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self._format(r) for r in self.rows)
        os.replace(tmp, self.path)

    @staticmethod
    def _format(row: dict) -> dict:
        return {k: format(row[k], spec) for k, spec in COLUMNS.items()}

    def append(self, step: int, epoch: int, loss: float, lr: float, images_per_s: float, elapsed_s: float,
               grad_norm: float = math.nan) -> None:
        row = {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "images_per_s": images_per_s,
               "elapsed_s": elapsed_s, "grad_norm": grad_norm}
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow(self._format(row))
            f.flush()


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a metrics.csv as dicts of numbers; a torn last line (crash mid-write) is skipped."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            try:
                row = {k: float(raw[k]) for k in COLUMNS}
            except (TypeError, ValueError, KeyError):
                continue
            row["step"], row["epoch"] = int(row["step"]), int(row["epoch"])
            rows.append(row)
    return rows


def plot_loss(rows: list[dict[str, float]], out_path: str | Path) -> Path | None:
    """Write the loss curve (log scale, with a running mean) to ``out_path``; None when there is no data.
    matplotlib's object API with the Agg canvas never touches pyplot or a live window."""
    points = [(r["step"], r["loss"]) for r in rows if math.isfinite(r["loss"]) and r["loss"] > 0]
    if not points:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps, losses = zip(*points)
    window = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
              for i in range(len(losses))]
    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss (per log interval)")
    if window > 1:
        ax.plot(steps, smooth, lw=1.5, label=f"running mean ({window} points)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("L_simple (ε-MSE)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, out_path)
    return out_path


class TensorBoardLog:
    """Scalars and image grids for TensorBoard, in ``log_dir`` (``task_name/tb``); needs the optional
    ``tensorboard`` package, checked when this is built so a run never fails half-way for want of it."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            hint = "pip install -r requirements/tensorboard.txt"
            raise ValueError(f"--tensorboard needs the tensorboard package: {hint}") from None
        # purge_step: on resume, TensorBoard hides events after the checkpoint's step (redone after a crash)
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, step: int, **values: float) -> None:
        for name, value in values.items():
            if math.isfinite(value):
                self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.flush()

    def image(self, tag: str, image_path: str | Path, step: int) -> None:
        pixels = np.asarray(Image.open(image_path).convert("RGB"))
        self.writer.add_image(tag, pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------------------------- progress frames
def frame_path(viz_dir: Path, epoch: int, step: int, end_of_epoch: bool = False) -> Path:
    """``ep<epoch>_it<step>[_end]``, zero-padded so that file names sort in training order (an epoch's end frame
    after the frame of the same step: "." < "_")."""
    return viz_dir / f"{FRAME_PREFIX}ep{epoch:03d}_it{step:07d}{'_end' if end_of_epoch else ''}.png"


def make_frame(rows: list[torch.Tensor], title: str) -> np.ndarray:
    """Grid with one row per tensor of ``rows`` (each [B, C, H, W] in [−1, 1]), row labels and a title: uint8
    [H, W] (grayscale) or [H, W, 3]."""
    tiles = to_uint8(torch.cat(rows)).repeat(_SCALE, axis=1).repeat(_SCALE, axis=2)  # nearest-neighbour upscale
    grid = make_grid(tiles, num_rows=len(rows), padding=_PAD, pad_value=32)  # one row per tensor
    h, C = tiles.shape[1], 1 if tiles.ndim == 3 else 3
    canvas = Image.new("L" if C == 1 else "RGB", (_LABEL_W + grid.shape[1], _TITLE_H + grid.shape[0]), color=32)
    canvas.paste(Image.fromarray(grid), (_LABEL_W, _TITLE_H))
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
                import matplotlib
                import matplotlib.pyplot as plt

                backend = matplotlib.get_backend().lower()  # agg where there is no display (DISPLAY unset)
                if backend in {"agg", "pdf", "ps", "svg", "cairo", "template"} or backend.endswith("inline"):
                    return self._disable(f"no display window (matplotlib backend {backend!r})")
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
        if self._fig is not None:
            with contextlib.suppress(Exception):
                self._plt.close(self._fig)


class ProgressVisualizer:
    """Frames of a fixed batch: clean x0 ``[N, C, H, W]`` | x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε at the 0-based timestep ``t``
    (Eq. 4) | the model's x̂0, clamped to [−1, 1]. ε is drawn once on the CPU from ``seed``, never from the
    training RNG, so frames differ only by the model, on any device. A conditional model sees ``labels`` [N]."""

    def __init__(self, scheduler: LinearNoiseScheduler, x0: torch.Tensor, t: int, seed: int, viz_dir: Path,
                 save: bool, live: bool, labels: torch.Tensor | None = None) -> None:
        self.labels = labels.to(scheduler.device) if labels is not None else None
        self.t = t
        self.x0 = x0.to(scheduler.device)
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(scheduler.device)
        self.x_t = scheduler.add_noise(self.x0, eps, t)
        self.scheduler = scheduler
        self.viz_dir = viz_dir
        self.save = save
        self.window = LiveWindow() if live else None
        if save:
            self.viz_dir.mkdir(parents=True, exist_ok=True)

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, epoch: int, step: int, end_of_epoch: bool = False) -> Path | None:
        """Render, save as ``frame_path(...)`` and show; ``epoch`` is 1-based. Returns the file written."""
        conditional = getattr(model, "label_embedding", None) is not None
        eps_pred = model(self.x_t, self.t, context=model.label_context(self.labels) if conditional else None)
        x0_pred = self.scheduler.predict_x0(self.x_t, eps_pred, self.t).clamp(-1.0, 1.0)
        label = f"epoch {epoch} end" if end_of_epoch else f"epoch {epoch}"
        frame = make_frame([self.x0, self.x_t, x0_pred], f"{label}  step {step}  t={self.t}")
        path = None
        if self.save:
            path = frame_path(self.viz_dir, epoch, step, end_of_epoch)
            Image.fromarray(frame).save(path)
        if self.window is not None:
            self.window.show(frame, f"{label}, step {step}")
        return path

    def close(self) -> None:
        if self.window is not None:
            self.window.close()


def assemble_gif(viz_dir: Path, max_frames: int = 200) -> Path | None:
    """Animate the saved frames in ``viz_dir`` in training order into ``progress.gif``; None if no frames. At most
    ``max_frames`` frames, evenly subsampled (always keeping the last), so long runs stay small."""
    import imageio.v3 as iio

    out_path = viz_dir / "progress.gif"
    paths = sorted(viz_dir.glob(f"{FRAME_PREFIX}ep*_it*.png"))
    if not paths:
        return None
    if len(paths) > max_frames:
        keep = np.linspace(0, len(paths) - 1, max_frames).round().astype(int)
        paths = [paths[i] for i in sorted(set(keep.tolist()))]
    frames = [np.asarray(Image.open(p).convert("L")) for p in paths]
    shape = frames[-1].shape
    frames = [f for f in frames if f.shape == shape]  # frames from an earlier run with other --viz-num
    tmp = out_path.with_name(f".{out_path.name}.tmp.gif")
    iio.imwrite(tmp, np.stack(frames), duration=400, loop=0)  # ms per frame
    os.replace(tmp, out_path)
    logger.info("wrote %s (%d frames)", out_path, len(frames))
    return out_path


def draw_final_samples(model: torch.nn.Module, scheduler: LinearNoiseScheduler, num_samples: int, model_config,
                       out_dir: Path, seed: int, device: torch.device) -> Path:
    """What the trained model draws: ``num_samples`` images with the default sampler (a class-conditional model
    draws one class per grid row, at the default guidance scale) → ``out_dir/grid.png`` and ``samples.npz``."""
    config = SamplerConfig(DEFAULT_SAMPLER, min(DEFAULT_SAMPLER_STEPS, scheduler.num_timesteps))
    labels = labels_in_rows(list(range(model_config.num_classes)), num_samples) if model_config.conditional else None
    with torch.inference_mode():  # the EMA model is always in eval mode
        result = sample_model(model, scheduler, num_samples, config, labels, device=device,
                              generator=torch.Generator().manual_seed(seed))
    rows = model_config.num_classes if model_config.conditional else round(num_samples ** 0.5)
    grid = save_grid_png(result.images, out_dir / "grid.png", max(1, min(rows, num_samples)))
    save_samples_npz(result.images, out_dir / "samples.npz",
                     {"sampler": config.describe(scheduler.num_timesteps), "seed": seed,
                      "labels": labels.tolist() if labels is not None else None})
    logger.info("%d samples (%s, EMA weights) → %s", num_samples, config.describe(scheduler.num_timesteps), grid)
    return grid


# ---------------------------------------------------------------------------------------------- the loop's view
class Monitor:
    """The training loop's recorder: progress bar, log lines and metrics every ``log_every`` steps, TensorBoard,
    frames every ``viz_interval`` steps. Every rank keeps the loss window (so every rank reports the same last
    loss); only the one built with ``write=True`` (rank 0) writes files or shows a bar."""

    def __init__(self, config, write: bool, resume_step: int | None, steps_per_epoch: int,
                 visualizer: ProgressVisualizer | None = None) -> None:
        self.config, self.write, self.steps_per_epoch = config, write, steps_per_epoch
        run = config.run_dir
        self.tb = TensorBoardLog(run / "tb", purge_step=None if resume_step is None else resume_step + 1) \
            if write and config.tensorboard else None
        self.metrics = MetricsLog(run / "metrics.csv", resume_step) if write else None
        self.visualizer = visualizer
        self.last_loss = math.nan
        self.bar = None
        self._reset()

    def _reset(self) -> None:
        self.loss_sum, self.grad_norm_sum, self.steps, self.images = 0.0, 0.0, 0, 0
        self.t_window = time.perf_counter()

    def start_epoch(self, state, global_batch: int) -> None:
        of_epochs = "" if self.config.epoch_limit is None else f"/{self.config.epoch_limit}"
        self.bar = progress_bar(total=self.steps_per_epoch, initial=state.offset // global_batch, unit="step",
                                desc=f"epoch {state.epoch + 1}{of_epochs}", dynamic_ncols=True,
                                leave=False, disable=not self.write)

    def step(self, state, loss: float, grad_norm: float, images: int, lr: float) -> None:
        """After optimizer step ``state.step``: add it to the window; log and draw a frame when due."""
        self.loss_sum, self.grad_norm_sum = self.loss_sum + loss, self.grad_norm_sum + grad_norm
        self.steps, self.images = self.steps + 1, self.images + images
        self.bar.update(1)
        if state.step % self.config.log_every == 0:
            self.flush(state, lr)
        if self.visualizer is not None and state.step % self.config.viz_interval == 0:
            frame = self.visualizer(state.ema.model, state.epoch + 1, state.step)
            if self.tb is not None and frame is not None:
                self.tb.image("denoising_progress", frame, state.step)

    def flush(self, state, lr: float) -> None:
        """Record the window since the last flush (nothing if it is empty)."""
        if self.steps == 0:
            return
        images_per_s = self.images / max(time.perf_counter() - self.t_window, 1e-9)
        self.last_loss, grad_norm = self.loss_sum / self.steps, self.grad_norm_sum / self.steps
        if self.metrics is not None:
            self.metrics.append(state.step, state.epoch + 1, self.last_loss, lr, images_per_s, state.clock, grad_norm)
        if self.tb is not None:
            self.tb.scalars(state.step, loss=self.last_loss, lr=lr, images_per_s=images_per_s, grad_norm=grad_norm)
        self.bar.set_postfix(loss=f"{self.last_loss:.4f}", img_s=f"{images_per_s:.0f}")
        logger.info("step %d epoch %d loss %.4f lr %.2e %.0f img/s", state.step, state.epoch + 1, self.last_loss,
                    lr, images_per_s)
        self._reset()

    def end_epoch(self, state, complete: bool) -> None:
        """The epoch's batches are done (``complete``) or the run stops mid-epoch."""
        self.bar.close()
        if complete and self.visualizer is not None:
            self.visualizer(state.ema.model, state.epoch + 1, state.step, end_of_epoch=True)

    def saved(self) -> None:
        """A checkpoint was written: redraw the loss curve beside it."""
        if self.metrics is not None:
            plot_loss(self.metrics.rows, self.config.run_dir / "loss.png")

    def close(self) -> None:
        if self.visualizer is not None:
            self.visualizer.close()
        if self.tb is not None:
            self.tb.close()


def write_config_json(path: Path, resolved: dict) -> None:
    """The run's resolved configuration, logged and written atomically to ``config.json``."""
    logger.info("resolved configuration: %s", json.dumps(resolved))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(resolved, indent=2) + "\n")
    os.replace(tmp, path)


def log_where_things_are(config, grid: Path | None, stop_reason: str) -> None:
    run = config.run_dir
    logger.info("checkpoint:  %s", config.ckpt_path)
    if grid is not None:
        logger.info("samples:     %s (and samples.npz)", grid)
    logger.info("loss curve:  %s (metrics.csv beside it)", run / "loss.png")
    if config.viz_save:
        logger.info("progress:    %s", run / "viz" / "progress.gif")
    if config.tensorboard:
        logger.info("tensorboard: tensorboard --logdir %s", run / "tb")
    if stop_reason == "interrupted":  # every flag again (--conditional, the budget, ...): the recipe must match
        logger.info("continue:    the same command with --resume")
    else:
        logger.info("continue:    the same command with --resume and a larger --max-steps, --num-epochs or "
                    "--max-minutes")
    logger.info("sample:      python main.py --eval-ddpm-model --ckpt-file %s --num-samples 100", config.ckpt_path)
