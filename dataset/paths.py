"""Where the MNIST data lives: absolute paths anchored at the repository root, whatever the working directory.

Layout::

    data/MNIST/raw/                       the four IDX .gz files shipped with the repo; training reads them
    data/MNIST/mnist_images/<digit>/      60,000 training PNGs, only if scripts/prepare_mnist.py made them
    data/MNIST/mnist_images_test/<digit>/ 10,000 test PNGs, only if scripts/prepare_mnist.py made them
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_DATA_ROOT = REPO_ROOT / "data" / "MNIST"  # folder holding the split folders
DEFAULT_RAW_DIR = DEFAULT_DATA_ROOT / "raw"  # IDX .gz files
DEFAULT_DATA_PATH = DEFAULT_DATA_ROOT / "mnist_images"  # --data-path default: stands for the IDX digits

# split name -> the folder under a data root that scripts/prepare_mnist.py writes its PNG tree to
SPLIT_DIRS: dict[str, str] = {"train": "mnist_images", "test": "mnist_images_test"}

PREPARE_COMMAND = "python scripts/prepare_mnist.py"
