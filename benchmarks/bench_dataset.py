"""Loading the training images as training does (``load_training_set``), and iterating them.

    python benchmarks/bench_dataset.py                    # default --data-path: the bundled IDX digits
    python benchmarks/bench_dataset.py --data-path data/MNIST/mnist_images_test --epochs 2   # a PNG tree

Reports construction time of ``load_training_set(data_path, cache=...)`` (IDX digits: read and sorted; a PNG
tree: header scan uncached, full decode cached), then images/s of iterating whole epochs through
``DataLoader(batch_size, shuffle=True, num_workers)``, and, for reference, of batching straight from
``as_tensors()`` without a DataLoader (what training does).
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dataset import DEFAULT_DATA_PATH, MNISTDataset, load_training_set, to_model_range


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
    parser.add_argument("--data-path", type=Path, default=DEFAULT_DATA_PATH, help="as training's --data-path")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader num_workers")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    print(
        f"# --data-path {args.data_path} | batch {args.batch_size}, num_workers {args.workers}, {args.epochs} "
        f"epoch(s) | torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print("| source | mode | construct (s) | epoch (s) | images/s |")
    print("|---|---|---:|---:|---:|")
    for cache in (False, True):
        start = time.perf_counter()
        ds = load_training_set(args.data_path, cache=cache)
        construct = time.perf_counter() - start
        source = "IDX files" if ds.indices is not None else "PNG tree"
        runs = [epoch_through_loader(ds, args.batch_size, args.workers, args.seed + e) for e in range(args.epochs)]
        seconds, seen = sum(r[0] for r in runs) / len(runs), runs[0][1]
        mode = "DataLoader, " + ("cached" if cache else "uncached")
        print(f"| {source} | {mode} | {construct:.2f} | {seconds:.2f} | {seen / seconds:,.0f} |")
    runs = [epoch_from_tensors(ds, args.batch_size, args.seed + e) for e in range(args.epochs)]
    seconds, seen = sum(r[0] for r in runs) / len(runs), runs[0][1]
    print(f"| {source} | as_tensors() batches, cached | - | {seconds:.3f} | {seen / seconds:,.0f} |")


if __name__ == "__main__":
    main()
