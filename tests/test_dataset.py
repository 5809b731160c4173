"""MNISTDataset on synthetic class-folder trees and on the bundled MNIST IDX files, and load_training_set."""

from __future__ import annotations

import gzip
import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataset import (
    DEFAULT_RAW_DIR,
    BadImageError,
    DatasetLayoutError,
    MNISTDataset,
    load_mnist_idx,
    load_training_set,
    prepare_mnist_images,
    to_model_range,
)
from dataset.idx import MNIST_FILES

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def gray(value: int, size: tuple[int, int] = (4, 4)) -> np.ndarray:
    return np.full(size, value, dtype=np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """(H, W) uint8 -> L, (H, W) uint16 -> I;16, (H, W, 3) -> RGB, (H, W, 4) -> RGBA."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_tree(root: Path, per_class: dict[str, list[int]], size: tuple[int, int] = (4, 4)) -> Path:
    """root/<class>/<i>.png, image i of a class filled with the given gray value."""
    for name, values in per_class.items():
        for i, value in enumerate(values):
            write_png(root / name / f"{i}.png", gray(value, size))
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "imgs", {"0": [0, 10, 20], "1": [255, 128], "2": [7]})


def truncated_png(path: Path) -> Path:
    """A 4x4 PNG whose header is intact but whose pixel data stops half-way through its IDAT chunk."""
    write_png(path, np.random.default_rng(0).integers(0, 256, (4, 4), dtype=np.uint8))
    data = path.read_bytes()
    idat_start = 8 + 25  # PNG signature, IHDR chunk
    assert data[idat_start + 4 : idat_start + 8] == b"IDAT"
    idat_len = int.from_bytes(data[idat_start : idat_start + 4], "big")
    path.write_bytes(data[: idat_start + 8 + idat_len // 2])
    return path


def model_value(pixel: int) -> float:
    """Expected model-range value of a uint8 pixel (float32 rounding allowed via ATOL)."""
    return pixel / 127.5 - 1


ATOL = 2e-7  # float32 rounding of p / 127.5 - 1


# ---- layout, labels, values --------------------------------------------------------------------
def test_classes_samples_and_counts(tree: Path) -> None:
    ds = MNISTDataset.from_folder(tree)
    assert ds.classes == ["0", "1", "2"]
    assert [(p.relative_to(tree).as_posix(), y) for p, y in ds.samples] == [
        ("0/0.png", 0),
        ("0/1.png", 0),
        ("0/2.png", 0),
        ("1/0.png", 1),
        ("1/1.png", 1),
        ("2/0.png", 2),
    ]
    assert ds.class_counts() == {"0": 3, "1": 2, "2": 1}
    assert len(ds) == 6 and ds.num_skipped == 0 and ds.image_size == (4, 4) and ds.split is None


@pytest.mark.parametrize("cache", [False, True])
def test_pixel_values_map_exactly_to_minus_one_one(tree: Path, cache: bool) -> None:
    ds = MNISTDataset.from_folder(tree, cache=cache)
    for i, pixel in enumerate([0, 10, 20, 255, 128, 7]):
        x, label = ds[i]
        assert x.dtype == torch.float32 and x.shape == (1, 4, 4)
        assert label == ds.samples[i][1] and isinstance(label, int)
        torch.testing.assert_close(x, torch.full((1, 4, 4), model_value(pixel)), atol=ATOL, rtol=0)
    assert ds[0][0].min().item() == -1.0 and ds[3][0].max().item() == 1.0  # exact ends: 0 -> -1, 255 -> 1
    assert ds[4][0][0, 0, 0].item() == pytest.approx(0.00392157, abs=1e-7)  # 128 -> 1/255


def test_cache_and_no_cache_give_identical_tensors(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for c in range(3):
        for i in range(4):
            write_png(tmp_path / str(c) / f"{i}.png", rng.integers(0, 256, (6, 5), dtype=np.uint8))
    plain, cached = MNISTDataset.from_folder(tmp_path), MNISTDataset.from_folder(tmp_path, cache=True)
    assert cached.is_cached and not plain.is_cached
    for i in range(len(plain)):
        (a, la), (b, lb) = plain[i], cached[i]
        assert torch.equal(a, b) and la == lb
    images, labels = cached.as_tensors()
    assert images.dtype == torch.uint8 and images.shape == (12, 1, 6, 5)
    assert labels.dtype == torch.int64 and labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(to_model_range(images), torch.stack([cached[i][0] for i in range(12)]))
    with pytest.raises(ValueError, match="uint8"):
        to_model_range(to_model_range(images))  # scaling twice is caught
    plain_images, plain_labels = plain.as_tensors()  # builds the cache on demand
    assert torch.equal(plain_images, images) and torch.equal(plain_labels, labels) and plain.is_cached


def test_data_root_is_the_class_folder_tree(tree: Path) -> None:
    """The seed's meaning: MNISTDataset(split, data_root) reads the tree at data_root; split is only recorded."""
    ds = MNISTDataset("train", tree, cache=True)
    assert ds.root == tree and ds.split == "train" and ds.classes == ["0", "1", "2"] and ds.indices is None
    same = MNISTDataset.from_folder(tree, cache=True)
    assert same.split is None and same.samples == ds.samples and torch.equal(same.as_tensors()[0], ds.as_tensors()[0])


def test_idx_split_must_be_train_or_test() -> None:
    with pytest.raises(ValueError, match="split must be 'train' or 'test'.*data_root=<its folder>"):
        MNISTDataset("valid")


def test_missing_root(tmp_path: Path) -> None:
    for make in (MNISTDataset.from_folder, lambda path: MNISTDataset("train", path)):
        with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'}.*prepare_mnist.py"):
            make(tmp_path / "nope")


def test_root_without_class_folders(tmp_path: Path) -> None:
    write_png(tmp_path / "loose.png", gray(1))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DatasetLayoutError, match="no class folders.*1 image file"):
        MNISTDataset.from_folder(tmp_path)


def test_class_folder_without_images_is_named(tmp_path: Path) -> None:
    make_tree(tmp_path, {"0": [1]})
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetLayoutError, match=f"{tmp_path / '7'}.*no images"):
        MNISTDataset.from_folder(tmp_path)


def test_data_root_given_to_from_folder_suggests_split(tmp_path: Path) -> None:
    make_tree(tmp_path / "mnist_images", {"0": [1]})
    with pytest.raises(DatasetLayoutError, match="looks like a data root.*--data-path"):
        MNISTDataset.from_folder(tmp_path)


def test_hidden_files_other_extensions_and_case(tmp_path: Path) -> None:
    make_tree(tmp_path, {"0": [1]})
    write_png(tmp_path / "0" / ".hidden.png", gray(2))
    write_png(tmp_path / ".cache" / "x.png", gray(2))  # hidden folder: not a class
    write_png(tmp_path / "0" / "UPPER.PNG", gray(3))
    Image.fromarray(gray(4)).save(tmp_path / "0" / "photo.jpg", quality=100)
    Image.fromarray(gray(5)).save(tmp_path / "0" / "skip.bmp")
    (tmp_path / "0" / "labels.csv").write_text("a,b")
    (tmp_path / "0" / "sub.png").mkdir()  # a folder with an image extension is not an image
    ds = MNISTDataset.from_folder(tmp_path)
    assert ds.classes == ["0"]
    assert sorted(p.name for p, _ in ds.samples) == ["0.png", "UPPER.PNG", "photo.jpg"]
    assert len(MNISTDataset.from_folder(tmp_path, extensions=["BMP"])) == 1


def test_files_sort_numerically(tmp_path: Path) -> None:
    for i in (10, 2, 1):
        write_png(tmp_path / "0" / f"{i}.png", gray(i))
    assert [p.name for p, _ in MNISTDataset.from_folder(tmp_path).samples] == ["1.png", "2.png", "10.png"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": 2}, "channels"),
        ({"image_size": 0}, "image_size"),
        ({"image_size": (4,)}, "image_size"),
        ({"extensions": []}, "extensions"),
    ],
)
def test_bad_arguments(tree: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MNISTDataset.from_folder(tree, **kwargs)


# ---- bad files ---------------------------------------------------------------------------------
def _bad_corrupt(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(40))


def _bad_text(path: Path) -> None:
    path.write_text("this is not an image")


def _bad_empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("make_bad", [_bad_corrupt, _bad_text, _bad_empty, truncated_png])
@pytest.mark.parametrize("cache", [False, True])
def test_bad_file_fails_naming_it_or_is_skipped(tree: Path, make_bad, cache: bool, caplog) -> None:
    bad = tree / "1" / "bad.png"
    make_bad(bad)
    if make_bad is truncated_png and not cache:
        ds = MNISTDataset.from_folder(tree)  # header is fine: found when the pixels are read
        index = [p for p, _ in ds.samples].index(bad)
        with pytest.raises(BadImageError, match=f"{bad}.*(corrupt or truncated).*skip_bad=True"):
            ds[index]
    else:
        with pytest.raises(BadImageError, match=str(bad)) as info:
            MNISTDataset.from_folder(tree, cache=cache)
        assert info.value.path == bad and isinstance(info.value, ValueError)
    with caplog.at_level(logging.WARNING, logger="dataset.mnist_dataset"):
        ds = MNISTDataset.from_folder(tree, cache=cache, skip_bad=True)
    assert ds.num_skipped == 1 and ds.skipped[0][0] == bad and len(ds) == 6
    assert ds.class_counts() == {"0": 3, "1": 2, "2": 1}
    assert str(bad) in caplog.text and "skipped 1 of 7" in caplog.text
    assert all(ds[i][0].shape == (1, 4, 4) for i in range(len(ds)))
    assert ds.as_tensors()[0].shape == (6, 1, 4, 4) and ds.num_skipped == 1  # no double counting


def _png_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(start, type, end) of every chunk of the PNG ``data``."""
    chunks, pos = [], 8
    while pos < len(data):
        end = pos + 12 + int.from_bytes(data[pos : pos + 4], "big")
        chunks.append((pos, data[pos + 4 : pos + 8], end))
        pos = end
    return chunks


def _pixels_swapped_under_old_crc(path: Path) -> None:
    """Another image's pixel data (valid zlib, same size) under the original IDAT checksum: decodes to wrong
    pixels unless the IDAT CRC is checked."""
    buffer = io.BytesIO()
    Image.fromarray(gray(99)).save(buffer, format="PNG")
    data, other = path.read_bytes(), buffer.getvalue()
    (start, _, end), (o_start, _, o_end) = ([c for c in _png_chunks(d) if c[1] == b"IDAT"][0] for d in (data, other))
    swapped = data[:start] + other[o_start : o_end - 4] + data[end - 4 : end] + data[end:]
    path.write_bytes(swapped)


def _no_iend(path: Path) -> None:
    """A write cut short after the pixel data: every pixel is there, the IEND chunk is not."""
    data = path.read_bytes()
    path.write_bytes(data[: [c for c in _png_chunks(data) if c[1] == b"IEND"][0][0]])


@pytest.mark.parametrize("damage", [_pixels_swapped_under_old_crc, _no_iend])
def test_png_damage_that_still_decodes_is_refused(tree: Path, damage) -> None:
    target = tree / "1" / "0.png"
    damage(target)
    with Image.open(target) as img:  # the damage is invisible to decoding alone
        assert np.asarray(img).shape == (4, 4)
    with pytest.raises(BadImageError, match=f"{target}: corrupt or truncated"):
        MNISTDataset.from_folder(tree, cache=True)
    assert MNISTDataset.from_folder(tree, skip_bad=True).skipped[0][0] == target


@pytest.mark.parametrize("cache", [False, True])
def test_size_mismatch_names_file_and_both_sizes(tree: Path, cache: bool) -> None:
    odd = write_png(tree / "1" / "big.png", gray(9, (5, 6)))
    with pytest.raises(BadImageError, match=rf"{odd}.*5x6 \(HxW\) differs from 4x4.*{tree / '0' / '0.png'}"):
        MNISTDataset.from_folder(tree, cache=cache)
    ds = MNISTDataset.from_folder(tree, cache=cache, skip_bad=True)
    assert ds.num_skipped == 1 and "5x6" in ds.skipped[0][1]


def test_image_size_resizes_every_image(tree: Path) -> None:
    write_png(tree / "1" / "big.png", gray(200, (8, 8)))
    ds = MNISTDataset.from_folder(tree, image_size=(6, 5), cache=True)
    assert ds.image_size == (6, 5) and ds.as_tensors()[0].shape == (7, 1, 6, 5)
    big = [p.name for p, _ in ds.samples].index("big.png")
    flat = torch.full((1, 6, 5), model_value(200))
    torch.testing.assert_close(ds[big][0], flat, atol=ATOL, rtol=0)  # a flat image stays flat
    assert torch.equal(MNISTDataset.from_folder(tree, image_size=(6, 5))[big][0], ds[big][0])
    assert MNISTDataset.from_folder(tree, image_size=6)[big][0].shape == (1, 6, 6)


def test_symlink_loop_and_broken_symlink(tree: Path) -> None:
    loop = tree / "0" / "loop.png"
    os.symlink(loop, loop)
    with pytest.raises(BadImageError, match=f"{loop}: symlink loop"):
        MNISTDataset.from_folder(tree)
    loop.unlink()
    broken = tree / "0" / "gone.png"
    os.symlink(tree / "nowhere.png", broken)
    with pytest.raises(BadImageError, match=f"{broken}: file not found"):
        MNISTDataset.from_folder(tree)
    assert MNISTDataset.from_folder(tree, skip_bad=True).num_skipped == 1
    os.symlink(tree / "missing_dir", tree / "9")  # broken link where a class folder would be
    with pytest.raises(DatasetLayoutError, match=f"{tree / '9'}"):
        MNISTDataset.from_folder(tree)


def test_symlinked_image_is_followed(tree: Path) -> None:
    os.symlink(tree / "1" / "0.png", tree / "2" / "link.png")
    ds = MNISTDataset.from_folder(tree)
    assert ds[[p.name for p, _ in ds.samples].index("link.png")][0].max().item() == 1.0


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file_real_permissions(tree: Path) -> None:
    locked = tree / "0" / "0.png"
    locked.chmod(0)
    with pytest.raises(BadImageError, match=f"{locked}: permission denied"):
        MNISTDataset.from_folder(tree)


def test_unreadable_file_permission_error(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tree / "0" / "1.png"
    real_read = Path.read_bytes

    def fake_read(path: Path) -> bytes:
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path)

    monkeypatch.setattr(Path, "read_bytes", fake_read)
    with pytest.raises(BadImageError, match=f"{locked}: permission denied.*chmod"):
        MNISTDataset.from_folder(tree, cache=True)
    assert MNISTDataset.from_folder(tree, skip_bad=True).num_skipped == 1


def test_every_file_bad_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    (tmp_path / "0").mkdir()
    _bad_text(tmp_path / "0" / "a.png")
    with pytest.raises(BadImageError, match="every image file was bad"):
        MNISTDataset.from_folder(tmp_path, skip_bad=True)


# ---- PNG flavours ------------------------------------------------------------------------------
def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    wide = np.array([[0, 257 * 128, 65535, 1000]], dtype=np.uint16)  # 1000 / 257 = 3.89 -> 4
    write_png(tmp_path / "0" / "a.png", wide)
    assert Image.open(tmp_path / "0" / "a.png").mode.startswith("I")
    x = MNISTDataset.from_folder(tmp_path)[0][0]
    expected = torch.tensor([[[model_value(p) for p in (0, 128, 255, 4)]]])
    torch.testing.assert_close(x, expected, atol=ATOL, rtol=0)


def test_palette_png(tmp_path: Path) -> None:
    img = Image.new("P", (3, 1))
    img.putpalette([0, 0, 0, 255, 255, 255, 100, 100, 100] + [0] * 759)
    img.putdata([0, 1, 2])
    img.save(write_dir(tmp_path / "0") / "p.png")
    x = MNISTDataset.from_folder(tmp_path)[0][0]
    assert x.flatten().tolist() == pytest.approx([-1.0, 1.0, model_value(100)], abs=ATOL)


def write_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_rgba_is_composited_over_black(tmp_path: Path) -> None:
    # transparent white, opaque white, half-transparent gray 200 (alpha 128 -> 200*128/255 = 100.4)
    rgba = np.array([[[255, 255, 255, 0], [255, 255, 255, 255], [200, 200, 200, 128]]], dtype=np.uint8)
    write_png(tmp_path / "0" / "a.png", rgba)
    gray_x = MNISTDataset.from_folder(tmp_path)[0][0]
    assert gray_x.shape == (1, 1, 3)
    assert gray_x.flatten().tolist() == pytest.approx([-1.0, 1.0, model_value(100)], abs=ATOL)
    rgb_x = MNISTDataset.from_folder(tmp_path, channels=3)[0][0]
    assert rgb_x.shape == (3, 1, 3) and torch.equal(rgb_x[0], rgb_x[2]) and torch.equal(rgb_x[:1], gray_x)


def test_grayscale_png_with_transparent_colour(tmp_path: Path) -> None:
    write_dir(tmp_path / "0")
    Image.fromarray(np.array([[255, 100]], dtype=np.uint8)).save(tmp_path / "0" / "t.png", transparency=255)
    x = MNISTDataset.from_folder(tmp_path)[0][0]  # tRNS marks 255 transparent: composited to black
    assert x.flatten().tolist() == pytest.approx([-1.0, model_value(100)], abs=ATOL)


def test_grayscale_to_rgb_and_rgb_to_gray(tmp_path: Path) -> None:
    write_png(tmp_path / "0" / "g.png", gray(77, (2, 2)))
    write_png(tmp_path / "1" / "c.png", np.full((2, 2, 3), (255, 0, 0), dtype=np.uint8))
    ds3 = MNISTDataset.from_folder(tmp_path, channels=3)
    torch.testing.assert_close(ds3[0][0], torch.full((3, 2, 2), model_value(77)), atol=ATOL, rtol=0)
    red = MNISTDataset.from_folder(tmp_path)[1][0]  # ITU-R 601-2 luma: 255 * 299/1000 = 76.2 -> 76
    torch.testing.assert_close(red, torch.full((1, 2, 2), model_value(76)), atol=ATOL, rtol=0)


# ---- the bundled MNIST -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("split", "counts", "first_labels"),
    [
        ("train", TRAIN_COUNTS, [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]),
        ("test", TEST_COUNTS, [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]),
    ],
)
def test_bundled_idx_files(split: str, counts: list[int], first_labels: list[int]) -> None:
    images, labels = load_mnist_idx(split, DEFAULT_RAW_DIR)  # md5-verified
    assert images.dtype == np.uint8 and images.shape == (sum(counts), 28, 28)
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == counts
    assert labels[:10].tolist() == first_labels
    if split == "train":  # the well-known normalisation constants of MNIST
        assert images.mean() / 255 == pytest.approx(0.1307, abs=1e-4)
        assert (images / 255).std() == pytest.approx(0.3081, abs=1e-4)


def test_bundled_digits_as_a_dataset() -> None:
    ds = MNISTDataset()  # the bundled training digits, straight from IDX
    assert len(ds) == 60000 and ds.classes == [str(d) for d in range(10)] and ds.is_cached
    assert list(ds.class_counts().values()) == TRAIN_COUNTS and ds.image_size == (28, 28) and ds.channels == 1
    # by digit, then by position in the file: the first 0s are at 1, 21, 34, 37, 51; the last 9 at 59992
    assert ds.indices[:5].tolist() == [1, 21, 34, 37, 51] and ds.indices[-1] == 59992
    images, labels = load_mnist_idx("train")
    x, y = ds[TRAIN_COUNTS[0]]  # the first 1: IDX position 3
    assert y == 1 and torch.equal(x, to_model_range(torch.from_numpy(images[3])[None]))
    tensors, targets = ds.as_tensors()
    assert tensors.shape == (60000, 1, 28, 28) and targets.dtype == torch.int64
    assert torch.equal(targets, torch.from_numpy(labels[ds.indices]))


def _real_subset_tree(tmp_path: Path, split: str, n: int) -> Path:
    """The PNG tree scripts/prepare_mnist.py writes for the first ``n`` real digits of ``split``."""
    images, labels = load_mnist_idx(split)
    (tmp_path / "raw").mkdir()
    for name, array in zip(MNIST_FILES[split], (images[:n], labels[:n].astype(np.uint8))):
        header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
        (tmp_path / "raw" / name).write_bytes(gzip.compress(header + array.tobytes()))
    return prepare_mnist_images(tmp_path / "raw", tmp_path, (split,), verify_md5=False)[split]


@pytest.mark.parametrize(("channels", "image_size"), [(1, None), (3, None), (1, 32), (3, 20)])
def test_idx_digits_equal_their_prepared_png_tree(tmp_path: Path, channels: int, image_size: int | None) -> None:
    """Same order and pixels from IDX as from the PNG tree, so a run resumes bit-identically on either."""
    n = 300
    tree = MNISTDataset("test", _real_subset_tree(tmp_path, "test", n), channels=channels, image_size=image_size,
                        cache=True)
    idx = MNISTDataset("test", channels=channels, image_size=image_size)
    first_n = np.flatnonzero(idx.indices < n)  # the subset keeps its relative order inside the whole file
    assert idx.indices[first_n].tolist() == [int(p.stem) for p, _ in tree.samples]
    (tree_x, tree_y), (idx_x, idx_y) = tree.as_tensors(), idx.as_tensors()
    assert torch.equal(idx_x[first_n], tree_x) and torch.equal(idx_y[first_n], tree_y)
    assert idx.classes == tree.classes and idx.image_size == tree.image_size
    assert idx_x.shape[1:] == (channels, image_size or 28, image_size or 28)


def test_load_training_set_reads_idx_until_the_default_folder_holds_a_tree(tmp_path: Path, caplog) -> None:
    raw = tmp_path / "data" / "raw"  # the bundled files, seen from a folder whose default path can be missing
    raw.parent.mkdir()
    os.symlink(DEFAULT_RAW_DIR, raw)  # a link: its sibling mnist_images is still the default path
    default = tmp_path / "data" / "mnist_images"
    with caplog.at_level(logging.INFO, logger="dataset.mnist_dataset"):
        ds = load_training_set(default, channels=3, raw_dir=raw)
    assert "from the IDX files" in caplog.text
    assert ds.indices is not None and ds.as_tensors()[0].shape == (60000, 3, 28, 28)
    default.mkdir()
    assert load_training_set(default, raw_dir=raw).indices is not None  # an empty folder holds no tree
    make_tree(default, {"4": [1, 2], "7": [3]})
    ds = load_training_set(default, image_size=2, raw_dir=raw)  # now the tree rules, with the other options
    assert ds.indices is None and ds.class_counts() == {"4": 2, "7": 1} and ds.is_cached and ds.image_size == (2, 2)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'elsewhere'}.*prepare_mnist.py"):
        load_training_set(tmp_path / "elsewhere", raw_dir=raw)  # only the default path stands for the IDX files
    (tmp_path / "bare" / "raw").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'bare' / 'raw'}.*--download"):
        load_training_set(tmp_path / "bare" / "mnist_images", raw_dir=tmp_path / "bare" / "raw")
