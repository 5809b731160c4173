"""Training throughput (images/s) of the UNet presets, measured through the real training loop.

    python benchmarks/bench_train_presets.py                       # tiny, small, base at batch 128
    python benchmarks/bench_train_presets.py --presets small --threads 1 2 --steps 20

Each preset trains with :func:`training.train` (AdamW, EMA, clipping, logging every step) on random uint8
images held in memory — throughput does not depend on the pixels — for ``--warmup`` untimed steps and then
``--steps`` timed ones; images/s is read back from the run's metrics.csv. Results depend on what else the
machine runs: on a shared CPU compare ``--threads 1`` with the default.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import UNet, preset_config  # noqa: E402
from scheduler import DiffusionConfig  # noqa: E402
from training import TrainConfig, train  # noqa: E402
from training.metrics_log import read_metrics  # noqa: E402


class RandomImages(torch.utils.data.Dataset):
    """``count`` random 28×28 uint8 images, batched from memory like the cached MNIST."""

    def __init__(self, count: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index].float() / 127.5 - 1.0, 0

    def as_tensors(self):
        return self.images, torch.zeros(len(self.images), dtype=torch.int64)


def measure(preset: str, batch_size: int, warmup: int, steps: int, threads: int, device: str) -> dict:
    torch.set_num_threads(threads)
    total = warmup + steps
    with tempfile.TemporaryDirectory() as run_dir:
        config = TrainConfig(task_name=run_dir, model=preset, batch_size=batch_size, max_steps=total, log_every=1,
                             ckpt_every=10**9, device=device, seed=0)
        train(config, preset_config(preset), DiffusionConfig(), dataset=RandomImages(batch_size * (total + 1)))
        rows = read_metrics(Path(run_dir) / "metrics.csv")[warmup:]
    ips = [r["images_per_s"] for r in rows]
    params = UNet(preset_config(preset)).num_parameters()
    return {"preset": preset, "params": params, "batch": batch_size, "threads": threads,
            "img_s": statistics.median(ips), "ms_step": 1000 * batch_size / statistics.median(ips), "steps": len(ips)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per preset")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per preset (base: at most 3)")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    results = []
    for threads in args.threads:
        for preset in args.presets:
            steps = min(args.steps, 3) if preset == "base" and args.device == "cpu" else args.steps
            warmup = min(args.warmup, 1) if preset == "base" and args.device == "cpu" else args.warmup
            results.append(measure(preset, args.batch_size, warmup, steps, threads, args.device))
            r = results[-1]
            print(f"  {preset} threads={threads}: {r['img_s']:.1f} img/s", file=sys.stderr, flush=True)

    print(f"\ntraining throughput, device={args.device}, torch {torch.__version__}, median over the timed steps\n")
    print(f"| {'preset':6} | {'params':>10} | {'batch':>5} | {'threads':>7} | {'images/s':>9} | {'ms/step':>9} | "
          f"{'steps':>5} |")
    print(f"|{'-' * 8}|{'-' * 12}|{'-' * 7}|{'-' * 9}|{'-' * 11}|{'-' * 11}|{'-' * 7}|")
    for r in results:
        print(f"| {r['preset']:6} | {r['params']:>10,} | {r['batch']:>5} | {r['threads']:>7} | {r['img_s']:>9.1f} | "
              f"{r['ms_step']:>9.0f} | {r['steps']:>5} |")


if __name__ == "__main__":
    main()
