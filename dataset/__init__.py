"""MNIST data: IDX reading, the PyTorch dataset, and (optional) PNG tree preparation.

Data flow: ``data/MNIST/raw/*.gz`` (IDX, shipped) --load_mnist_idx--> uint8 digits --MNISTDataset--> (image in
[-1, 1], label). Training calls :func:`load_training_set`, which reads the digits straight from the IDX files
for the default ``--data-path`` and any other ``--data-path`` as a class-folder tree ``<path>/<class>/<image>``.
``scripts/prepare_mnist.py`` (:func:`prepare_mnist_images`) writes the digits out as such a tree, in the same
order and with the same pixels, for people who want the image files.
"""

from dataset.errors import BadImageError, DatasetLayoutError, IDXFormatError
from dataset.folder_scan import DEFAULT_EXTENSIONS
from dataset.idx import load_mnist_idx, read_idx, read_idx_images, read_idx_labels
from dataset.image_io import load_image, to_model_range
from dataset.mnist_dataset import MNISTDataset, load_training_set
from dataset.paths import (
    DEFAULT_DATA_PATH,
    DEFAULT_DATA_ROOT,
    DEFAULT_RAW_DIR,
    DEFAULT_TEST_DATA_PATH,
    REPO_ROOT,
)
from dataset.prepare import prepare_mnist_images

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
    "load_image",
    "load_mnist_idx",
    "load_training_set",
    "prepare_mnist_images",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "to_model_range",
]
