"""Throughput of MNISTDataset: one epoch through a DataLoader, uncached vs cached.

    python benchmarks/bench_dataset.py                    # data/MNIST/mnist_images, batch 128, 0 workers
    python benchmarks/bench_dataset.py --split test --epochs 2

Reports construction time (uncached: header scan; cached: full decode into memory), then images/s
of iterating whole epochs through ``DataLoader(batch_size, shuffle=True, num_workers)``, and, for
reference, of batching straight from ``as_tensors()`` without a DataLoader (what training can do).
The default training tree is prepared first if it is missing (scripts/prepare_mnist.py).
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from dataset import DEFAULT_DATA_ROOT, MNISTDataset, ensure_mnist_images, to_model_range  # noqa: E402
from dataset.folder_scan import resolve_split_dir  # noqa: E402
from dataset.paths import SPLIT_DIRS  # noqa: E402


def epoch_through_loader(ds: MNISTDataset, batch_size: int, workers: int, seed: int) -> tuple[float, int]:
    loader = DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(seed)
    )
    seen, start = 0, time.perf_counter()
    for x, y in loader:  # x: (B, C, H, W) float32 in [-1, 1], y: (B,)
        seen += min(len(x), len(y))
    return time.perf_counter() - start, seen


def epoch_from_tensors(ds: MNISTDataset, batch_size: int, seed: int) -> tuple[float, int]:
    images, labels = ds.as_tensors()  # uint8 (N, C, H, W), int64 (N,)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    seen, start = 0, time.perf_counter()
    for batch in order.split(batch_size):
        x, y = to_model_range(images[batch]), labels[batch]  # (B, C, H, W) float32, (B,)
        seen += min(len(x), len(y))
    return time.perf_counter() - start, seen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader num_workers")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.split in SPLIT_DIRS:
        ensure_mnist_images(args.data_root / SPLIT_DIRS[args.split])
    folder = resolve_split_dir(args.data_root, args.split)

    print(
        f"# {folder} | batch {args.batch_size}, num_workers {args.workers}, {args.epochs} epoch(s) | "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print("| mode | construct (s) | epoch (s) | images/s |")
    print("|---|---:|---:|---:|")
    for cache in (False, True):
        start = time.perf_counter()
        ds = MNISTDataset(args.split, args.data_root, cache=cache)
        construct = time.perf_counter() - start
        runs = [epoch_through_loader(ds, args.batch_size, args.workers, args.seed + e) for e in range(args.epochs)]
        seconds, seen = sum(r[0] for r in runs) / len(runs), runs[0][1]
        name = "cached" if cache else "uncached"
        print(f"| DataLoader, {name} | {construct:.2f} | {seconds:.2f} | {seen / seconds:,.0f} |")
    runs = [epoch_from_tensors(ds, args.batch_size, args.seed + e) for e in range(args.epochs)]
    seconds, seen = sum(r[0] for r in runs) / len(runs), runs[0][1]
    print(f"| as_tensors() batches, cached | - | {seconds:.3f} | {seen / seconds:,.0f} |")


if __name__ == "__main__":
    main()
