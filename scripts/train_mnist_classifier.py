"""Train the MNIST classifier whose features define the classifier-FID (see evaluation/classifier.py).

    python scripts/train_mnist_classifier.py                      # → checkpoints/mnist_classifier.{pth,sha256}
    python scripts/train_mnist_classifier.py --epochs 1 --out /tmp/clf.pth

Seeded and CPU-only by default: Adam with a one-cycle learning rate over the 60,000 training digits
(random ±2 px shifts as augmentation), then accuracy on the 10,000 test digits, which is stored in the
checkpoint's metadata together with the seed, the epochs and the wall-clock training time. Exits with
status 1 if the test accuracy is below ``--min-accuracy`` (0.99), without writing the weights.

Replacing the shipped weights changes every classifier-FID and classifier score: numbers computed with
different classifier files (different sha256) are not comparable.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dataset import load_mnist_idx
from evaluation.classifier import (
    DEFAULT_CLASSIFIER_PATH,
    ClassifierConfig,
    MNISTClassifier,
    save_classifier,
)

logger = logging.getLogger("train_mnist_classifier")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_CLASSIFIER_PATH, help="where to write the weights")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--max-shift", type=int, default=2, help="random translation in pixels (0 = none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=0,
                        help="torch CPU threads; 0 keeps torch's default. Use 1 on a CPU shared with other jobs")
    parser.add_argument("--min-accuracy", type=float, default=0.99, help="refuse to save below this test accuracy")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_shift < 0:
        parser.error(f"--max-shift must be >= 0, got {args.max_shift}")
    return args


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in [−max_shift, max_shift]² (zero fill). x: (B, 1, H, W)."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(b, 1, h, w + 2 * max_shift)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(b, 1, h, w)
    return out.gather(3, cols)


@torch.inference_mode()
def accuracy(model: MNISTClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 2000) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size])
        correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    return correct / len(images)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)  # parameter initialisation
    generator = torch.Generator().manual_seed(args.seed)  # shuffling and augmentation

    # ------------------------------------------------------------------ data, [0, 1] floats (N, 1, 28, 28)
    train_u8, train_y = load_mnist_idx("train")
    test_u8, test_y = load_mnist_idx("test")
    x_train = torch.from_numpy(train_u8).float().div_(255.0).unsqueeze(1)
    y_train = torch.from_numpy(train_y)
    x_test = torch.from_numpy(test_u8).float().div_(255.0).unsqueeze(1)
    y_test = torch.from_numpy(test_y)

    # ------------------------------------------------------------------ model and optimiser
    config = ClassifierConfig()
    model = MNISTClassifier(config)
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15
    )
    logger.info("config %s, %s parameters, %s", config, f"{sum(p.numel() for p in model.parameters()):,}", vars(args))

    # ------------------------------------------------------------------ training
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total_loss = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            x = random_shift(x_train[idx], args.max_shift, generator)
            loss = F.cross_entropy(model(x), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(idx)
        test_acc = accuracy(model, x_test, y_test)
        logger.info(
            "epoch %d/%d: train loss %.4f, test accuracy %.4f, %.0f s",
            epoch + 1, args.epochs, total_loss / len(x_train), test_acc, time.perf_counter() - start,
        )
    train_seconds = time.perf_counter() - start

    # ------------------------------------------------------------------ evaluation and saving
    test_acc = accuracy(model, x_test, y_test)
    train_acc = accuracy(model, x_train, y_train)
    logger.info("test accuracy %.4f (train %.4f) after %.0f s", test_acc, train_acc, train_seconds)
    if test_acc < args.min_accuracy:
        logger.error("test accuracy %.4f is below --min-accuracy %.4f; weights not saved", test_acc, args.min_accuracy)
        return 1
    digest = save_classifier(
        args.out,
        model,
        test_accuracy=test_acc,
        train_accuracy=train_acc,
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_shift=args.max_shift,
        train_seconds=round(train_seconds, 1),
        torch_version=str(torch.__version__),
    )
    size_kb = args.out.stat().st_size / 1024
    logger.info("wrote %s (%.0f KiB, sha256 %s) and its .sha256 file", args.out, size_kb, digest)
    print(f"test accuracy: {test_acc:.4f}")  # the one line a caller of this script needs
    return 0


if __name__ == "__main__":
    sys.exit(main())
