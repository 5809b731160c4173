"""MNIST data: IDX reading, PNG tree preparation and the PyTorch dataset.

Data flow: ``data/MNIST/raw/*.gz`` (IDX, shipped) --prepare_mnist_images--> ``data/MNIST/mnist_images``
(class-folder PNG tree) --MNISTDataset--> (image in [-1, 1], label).
"""

from dataset.errors import BadImageError, DatasetLayoutError, IDXFormatError
from dataset.folder_scan import DEFAULT_EXTENSIONS
from dataset.idx import load_mnist_idx, read_idx, read_idx_images, read_idx_labels, verify_md5
from dataset.image_io import load_image, to_model_range
from dataset.mnist_dataset import MNISTDataset
from dataset.paths import (
    DEFAULT_DATA_PATH,
    DEFAULT_DATA_ROOT,
    DEFAULT_RAW_DIR,
    DEFAULT_TEST_DATA_PATH,
    REPO_ROOT,
)
from dataset.prepare import ensure_mnist_images, prepare_mnist_images

__all__ = [
    "DEFAULT_DATA_PATH",
    "DEFAULT_DATA_ROOT",
    "DEFAULT_EXTENSIONS",
    "DEFAULT_RAW_DIR",
    "DEFAULT_TEST_DATA_PATH",
    "REPO_ROOT",
    "BadImageError",
    "DatasetLayoutError",
    "IDXFormatError",
    "MNISTDataset",
    "ensure_mnist_images",
    "load_image",
    "load_mnist_idx",
    "prepare_mnist_images",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "to_model_range",
    "verify_md5",
]
