"""MNIST data: IDX reading, the PyTorch dataset, and (optional) PNG tree preparation.

``data/MNIST/raw/*.gz`` (IDX) --load_mnist_idx--> uint8 digits --MNISTDataset--> (image in [-1, 1], label).
"""

from dataset.errors import BadImageError, DatasetLayoutError, IDXFormatError
from dataset.idx import load_mnist_idx, read_idx_images, read_idx_labels
from dataset.image_io import to_model_range
from dataset.mnist_dataset import MNISTDataset, load_training_set
from dataset.paths import DEFAULT_DATA_PATH, DEFAULT_RAW_DIR
from dataset.prepare import prepare_mnist_images
