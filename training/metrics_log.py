"""The run's metrics: ``metrics.csv`` (one row per logging interval) and the ``loss.png`` curve.

Columns: ``step`` (optimizer steps done), ``epoch`` (1-based epoch of that step), ``loss`` (mean L_simple
over the interval), ``lr``, ``images_per_s`` (over the interval, wall clock), ``elapsed_s`` (the run's
training clock, over resumes), ``grad_norm`` (mean global gradient norm before clipping).

With ``--tensorboard`` the same scalars, and image grids, also go to a :class:`TensorBoardLog`.

On resume, rows after the checkpoint's step (written before a crash, then redone) are dropped, so the
file describes exactly one history.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

logger = logging.getLogger(__name__)

COLUMNS = ("step", "epoch", "loss", "lr", "images_per_s", "elapsed_s", "grad_norm")
TENSORBOARD_HINT = "pip install -r requirements/tensorboard.txt"


class MetricsLog:
    """Append-only CSV of training metrics.

    Args:
        path: the CSV file.
        resume_step: ``None`` starts a fresh file; an int keeps existing rows with ``step <= resume_step``.
    """

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
        return {
            "step": int(row["step"]), "epoch": int(row["epoch"]), "loss": f"{row['loss']:.6g}",
            "lr": f"{row['lr']:.6g}", "images_per_s": f"{row['images_per_s']:.1f}",
            "elapsed_s": f"{row['elapsed_s']:.1f}", "grad_norm": f"{row['grad_norm']:.4g}",
        }

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
                row = {k: float(raw[k]) for k in COLUMNS if k != "grad_norm"}
                row["grad_norm"] = float(raw.get("grad_norm") or "nan")  # not in files of older runs
            except (TypeError, ValueError, KeyError):
                continue
            row["step"], row["epoch"] = int(row["step"]), int(row["epoch"])
            rows.append(row)
    return rows


def plot_loss(rows: list[dict[str, float]], out_path: str | Path) -> Path | None:
    """Write the loss curve (log scale, with a running mean) to ``out_path``; None when there is no data.

    Uses matplotlib's object API with the Agg canvas, so it never touches pyplot or a live window.
    """
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
            raise ValueError(f"--tensorboard needs the tensorboard package: {TENSORBOARD_HINT}") from None
        # purge_step: on resume, TensorBoard hides events after the checkpoint's step (redone after a crash)
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, step: int, **values: float) -> None:
        for name, value in values.items():
            if math.isfinite(value):
                self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.flush()

    def image(self, tag: str, image_path: str | Path, step: int) -> None:
        """A PNG written by the run (progress frame, sample grid), as TensorBoard shows images: HWC uint8."""
        import numpy as np
        from PIL import Image

        pixels = np.asarray(Image.open(image_path).convert("RGB"))
        self.writer.add_image(tag, pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
