"""Reading MNIST's IDX files, with md5 verification.

IDX layout (http://yann.lecun.com/exdb/mnist/): a big-endian 4-byte magic ``0x00 0x00 <type> <ndim>``,
then one big-endian uint32 per dimension, then the raw values in C order. MNIST uses type 0x08
(unsigned byte): images have magic 0x00000803 (N, 28, 28), labels 0x00000801 (N,).

Files may be gzip-compressed (``.gz``) or plain. The md5 of the stored bytes is checked for the eight known
MNIST file names (:data:`KNOWN_MD5`) and no others; ``verify=False`` skips it.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from dataset.errors import IDXFormatError
from dataset.paths import DEFAULT_RAW_DIR, PREPARE_COMMAND

# split -> (images file, labels file)
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# file name -> accepted md5 digests. The shipped .gz files were compressed differently from the ones
# torchvision downloads, so both are accepted; the decompressed files are identical.
KNOWN_MD5: dict[str, tuple[str, ...]] = {
    # bundled copy, torchvision download
    "train-images-idx3-ubyte.gz": ("c7dfcf1bfd3481a40f7b3aedbdbd083c", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte.gz": ("d289298a347a2cc65765a3c81043ba88", "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte.gz": ("ecff87aa27c74fbc2c1f97e89c19221d", "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte.gz": ("a38049bc042dc6e683842a84160daae1", "ec29112dd5afa0611ce80d1b7f02629c"),
    # decompressed
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb",),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624",),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea",),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637",),
}


def _read_bytes(path: Path, verify: bool) -> bytes:
    """Bytes of ``path`` (decompressed if it ends in .gz), md5-checked on the stored bytes first."""
    if not path.is_file():
        raise FileNotFoundError(
            f"IDX file {path} not found. Copy the MNIST IDX files into {path.parent} or run "
            f"`{PREPARE_COMMAND} --download`"
        )
    stored = path.read_bytes()
    accepted = KNOWN_MD5.get(path.name)
    if verify and accepted is not None and (actual := hashlib.md5(stored).hexdigest()) not in accepted:
        raise IDXFormatError(
            f"md5 mismatch for {path}: got {actual}, expected {' or '.join(accepted)}. The file is "
            f"corrupt or not the standard MNIST file; replace it (copy the original file again, or "
            f"`{PREPARE_COMMAND} --download --force`)"
        )
    if not path.name.endswith(".gz"):
        return stored
    try:
        return gzip.decompress(stored)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise IDXFormatError(f"cannot decompress {path}: {err}. Replace the file") from err


def _read_idx(path: Path, what: str, ndim: int, verify: bool) -> np.ndarray:
    """The uint8 array of an IDX file of unsigned bytes (type 0x08) holding MNIST ``what`` in ``ndim`` dimensions;
    md5 as the module doc says."""
    data = _read_bytes(path, verify)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IDXFormatError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    if data[2] != 0x08:
        raise IDXFormatError(f"{path} has IDX type code 0x{data[2]:02x}; only 0x08 (unsigned byte) is read")
    if data[3] != ndim:
        raise IDXFormatError(f"{path} does not hold MNIST {what}: magic 0x{data[:4].hex()} has {data[3]} "
                             f"dimension(s), expected 0x000008{ndim:02x} ({ndim})")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IDXFormatError(f"{path} is truncated inside its header ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_len = header_len + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected_len:
        kind = "truncated" if len(data) < expected_len else "longer than its header says"
        raise IDXFormatError(f"{path} is {kind}: header shape {shape} needs {expected_len} bytes, file has {len(data)}")
    # bytearray makes the array writable (torch.from_numpy warns on read-only buffers)
    return np.frombuffer(bytearray(data), dtype=np.uint8, offset=header_len).reshape(shape)


def read_idx_images(path: str | Path, *, verify: bool = True) -> np.ndarray:
    """Images of an IDX3 file: uint8 array (N, H, W) -- (N, 28, 28) for MNIST."""
    return _read_idx(Path(path), "images", 3, verify)


def read_idx_labels(path: str | Path, *, verify: bool = True) -> np.ndarray:
    """Labels of an IDX1 file: int64 array (N,)."""
    return _read_idx(Path(path), "labels", 1, verify).astype(np.int64)


def mnist_idx_paths(split: str, raw_dir: str | Path = DEFAULT_RAW_DIR) -> tuple[Path, Path]:
    """(images, labels) file paths of ``split`` in ``raw_dir``; plain files are used if no .gz exists."""
    if split not in MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(MNIST_FILES)}, got {split!r}")
    raw_dir = Path(raw_dir)
    paths = []
    for name in MNIST_FILES[split]:
        gz, plain = raw_dir / name, raw_dir / name.removesuffix(".gz")
        paths.append(plain if not gz.exists() and plain.exists() else gz)
    return paths[0], paths[1]


def load_mnist_idx(
    split: Literal["train", "test"], raw_dir: str | Path = DEFAULT_RAW_DIR, *, verify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split`` straight from the IDX files: (images uint8 (N, 28, 28), labels int64 (N,))."""
    images_path, labels_path = mnist_idx_paths(split, raw_dir)
    images = read_idx_images(images_path, verify=verify)
    labels = read_idx_labels(labels_path, verify=verify)
    if len(images) != len(labels):
        raise IDXFormatError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
            "the files do not belong together"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise IDXFormatError(f"{labels_path} holds labels outside 0..9 (min {labels.min()}, max {labels.max()})")
    return images, labels
