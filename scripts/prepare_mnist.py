"""Write MNIST's IDX files out as PNG class-folder trees, for people who want the digits as image files.

    python scripts/prepare_mnist.py                 # data/MNIST/raw/*.gz -> data/MNIST/mnist_images{,_test}/
    python scripts/prepare_mnist.py --force         # rebuild trees that exist
    python scripts/prepare_mnist.py --download      # fetch missing IDX files with torchvision first

Training does not need the trees: it reads the IDX files directly. Output:
``<out-root>/mnist_images/<digit>/<index>.png`` (60,000 training digits) and
``<out-root>/mnist_images_test/<digit>/<index>.png`` (10,000 test digits), which read back (e.g.
``MNISTDataset("train", "data/MNIST/mnist_images")``) in the same order and with the same pixels as the IDX
digits. A second run finds the trees there and does nothing. See dataset/prepare.py for how interrupted runs
are handled.

MNIST is by Yann LeCun, Corinna Cortes and Christopher J. C. Burges, distributed under CC BY-SA 3.0.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from dataset.errors import DatasetLayoutError, IDXFormatError
from dataset.idx import MNIST_FILES, mnist_idx_paths
from dataset.paths import DEFAULT_DATA_ROOT, DEFAULT_RAW_DIR, SPLIT_DIRS
from dataset.prepare import prepare_mnist_images

logger = logging.getLogger("prepare_mnist")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw-dir", type=Path, default=DEFAULT_RAW_DIR, help="folder with the IDX .gz files")
    parser.add_argument("--out-root", type=Path, default=DEFAULT_DATA_ROOT, help="folder to write the trees into")
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLIT_DIRS), default=["train", "test"])
    parser.add_argument("--download", action="store_true", help="download missing IDX files (torchvision)")
    parser.add_argument("--force", action="store_true", help="rebuild trees that exist")
    parser.add_argument(
        "--skip-md5",
        action="store_true",
        help="do not verify md5s (only for IDX files other than MNIST's own)",
    )
    return parser.parse_args(argv)


def download_mnist(raw_dir: Path, force: bool = False) -> None:
    """Fetch the four MNIST .gz files into ``raw_dir`` with torchvision (md5-checked by torchvision)."""
    wanted = [raw_dir / name for pair in MNIST_FILES.values() for name in pair]
    if not force and all(p.exists() for p in wanted):
        logger.info("all IDX files are already in %s; not downloading", raw_dir)
        return
    try:
        from torchvision.datasets import MNIST
    except ImportError as err:
        raise RuntimeError("--download needs torchvision: pip install -r requirements/base.txt") from err
    raw_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw_dir.parent, prefix=".mnist-download-") as tmp:
        try:
            MNIST(root=tmp, train=True, download=True)  # downloads all four files to tmp/MNIST/raw
        except Exception as err:  # urllib/http/socket errors differ by torchvision version
            raise RuntimeError(
                f"could not download MNIST ({type(err).__name__}: {err}). Are you offline? Copy "
                f"{', '.join(p.name for p in wanted)} into {raw_dir} by hand and rerun without --download"
            ) from err
        for path in wanted:
            shutil.move(str(Path(tmp) / "MNIST" / "raw" / path.name), path)
    logger.info("downloaded the MNIST IDX files into %s", raw_dir)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.download:
            download_mnist(args.raw_dir, force=args.force)
        missing = [str(p) for s in args.splits for p in mnist_idx_paths(s, args.raw_dir) if not p.exists()]
        if missing:
            logger.error("IDX files missing: %s. Copy them into %s or rerun with --download", missing, args.raw_dir)
            return 1
        prepare_mnist_images(
            args.raw_dir,
            args.out_root,
            tuple(args.splits),
            force=args.force,
            verify_md5=not args.skip_md5,
        )
    except (RuntimeError, ValueError, FileNotFoundError, IDXFormatError, DatasetLayoutError) as err:
        logger.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
