"""GPU check: train ``base`` on MNIST for a few minutes with bf16 autocast and torch.compile, then report
images/s, peak GPU memory and the loss.

    python benchmarks/gpu_train_check.py                          # 3 minutes, batch 128, bf16 + compile
    python benchmarks/gpu_train_check.py --minutes 5 --batch-size 256 --no-compile
    torchrun --standalone --nproc_per_node=4 benchmarks/gpu_train_check.py   # DDP; --batch-size is per GPU

It runs the real trainer (:func:`training.train`: AdamW, EMA, clipping, logging every ``--log-every`` steps,
checkpoints) on the 60,000 training digits read straight from the bundled IDX files (no PNG tree to build) and
stops after ``--minutes`` with a checkpoint in ``--task-name`` (a temporary folder by default). From the run's
metrics.csv it reports the steady images/s (median over the logging windows after the first, which holds the
compilation), the overall images/s including compilation, the time to the first window, the peak of
``torch.cuda.max_memory_allocated`` (rank 0's GPU) and the loss of the last window. Exits with status 2 and a
message when there is no CUDA device.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from harness import MNISTFromIDX

from models import preset_config
from scheduler import DiffusionConfig
from training import TrainConfig, train
from training.monitor import read_metrics
from training.runtime import setup_distributed, teardown_distributed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="training time (compilation included)")
    parser.add_argument("--model", default="base")
    parser.add_argument("--batch-size", type=int, default=128, help="per GPU")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--task-name", default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the summary to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not torch.cuda.is_available():
        print("gpu_train_check: no CUDA device is available (torch.cuda.is_available() is False); this check "
              "measures GPU training and needs a GPU. On a CPU, see benchmarks/bench_train.py.",
              file=sys.stderr)
        return 2

    ctx = setup_distributed("cuda")
    if not ctx.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.task_name or Path(tmp) / "gpu_check")
        config = TrainConfig(task_name=str(run_dir), model=args.model, batch_size=args.batch_size, device="cuda",
                             max_minutes=args.minutes, log_every=args.log_every, ckpt_every=10**9,
                             precision=args.precision, compile=args.compile, channels_last=args.channels_last)
        torch.cuda.reset_peak_memory_stats(ctx.device)
        try:
            result = train(config, preset_config(args.model), DiffusionConfig(), dataset=MNISTFromIDX(),
                           distributed=ctx)
        finally:
            teardown_distributed(ctx)
        if not ctx.is_main:
            return 0
        rows = read_metrics(run_dir / "metrics.csv")
        if not rows:
            print(f"gpu_train_check: no logging window completed in {args.minutes} min; raise --minutes or lower "
                  "--log-every", file=sys.stderr)
            return 1
        steady = [r["images_per_s"] for r in rows[1:]] or [r["images_per_s"] for r in rows]
        summary = {
            "gpu": torch.cuda.get_device_name(ctx.device),
            "torch": torch.__version__,
            "model": args.model,
            "world_size": ctx.world_size,
            "batch_per_gpu": args.batch_size,
            "precision": args.precision,
            "compile": args.compile,
            "channels_last": args.channels_last,
            "steps": result.step,
            "epochs_completed": result.epoch,
            "images_per_s_steady": statistics.median(steady),
            "images_per_s_overall": result.step * args.batch_size * ctx.world_size / rows[-1]["elapsed_s"],
            "first_window_s": rows[0]["elapsed_s"],
            "peak_memory_gib": torch.cuda.max_memory_allocated(ctx.device) / 2**30,
            "final_loss": rows[-1]["loss"],
            "loss_curve": [(r["step"], round(r["loss"], 5)) for r in rows[:: max(1, len(rows) // 10)]],
        }
    for key, value in summary.items():
        print(f"{key:>22}: {value:.4g}" if isinstance(value, float) else f"{key:>22}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
