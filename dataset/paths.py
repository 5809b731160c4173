"""Where the MNIST data lives inside the repository.

All defaults are absolute paths anchored at the repository root (the parent of the ``dataset/``
package), so they point at the same files whatever the current working directory is.

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
DEFAULT_TEST_DATA_PATH = DEFAULT_DATA_ROOT / "mnist_images_test"  # test class-folder tree

# split name -> the folder under a data root that scripts/prepare_mnist.py writes its PNG tree to
SPLIT_DIRS: dict[str, str] = {"train": "mnist_images", "test": "mnist_images_test"}

PREPARE_COMMAND = "python scripts/prepare_mnist.py"
