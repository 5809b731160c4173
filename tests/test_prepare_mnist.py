"""IDX reading, PNG tree preparation and scripts/prepare_mnist.py on tiny hand-made IDX files."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataset import (
    IDXFormatError,
    MNISTDataset,
    load_mnist_idx,
    prepare_mnist_images,
    read_idx_images,
    read_idx_labels,
    to_model_range,
)
from dataset import paths as data_paths
from dataset.idx import KNOWN_MD5, MNIST_FILES

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "prepare_mnist.py"
N_TRAIN, N_TEST = 23, 7


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(idx_bytes(array)) if gz else idx_bytes(array))
    return path


def fake_split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % 10  # every digit present
    rng.shuffle(labels)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), labels.astype(np.uint8)


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    """Fake MNIST raw folder with the standard file names (their md5s are not MNIST's)."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        images, labels = fake_split(rng, n)
        write_idx(raw / MNIST_FILES[split][0], images)
        write_idx(raw / MNIST_FILES[split][1], labels)
    return raw


def tree_snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


# ---- IDX reading -------------------------------------------------------------------------------
def test_idx_roundtrip_gz_and_plain(tmp_path: Path) -> None:
    images = np.random.default_rng(3).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    for gz in (True, False):
        path = write_idx(tmp_path / f"imgs{'.gz' if gz else ''}", images, gz=gz)
        read = read_idx_images(path)  # unknown name: no md5 to check
        assert read.dtype == np.uint8 and np.array_equal(read, images) and read.flags.writeable
    labels = write_idx(tmp_path / "labels.gz", np.array([3, 1, 4], dtype=np.uint8))
    assert read_idx_labels(labels).tolist() == [3, 1, 4] and read_idx_labels(labels).dtype == np.int64


def test_known_file_name_with_wrong_md5_fails_unless_verify_is_off(raw_dir: Path) -> None:
    with pytest.raises(IDXFormatError, match=f"md5 mismatch for {raw_dir / 'train-images-idx3-ubyte.gz'}"):
        load_mnist_idx("train", raw_dir)
    images, labels = load_mnist_idx("train", raw_dir, verify=False)
    assert images.shape == (N_TRAIN, 28, 28) and np.bincount(labels, minlength=10).sum() == N_TRAIN


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2]) + bytes(7), "truncated: header shape"),
        (bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]) + bytes(2), "longer than its header"),
        (bytes([1, 2, 8, 3]), "not an IDX file"),
        (bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 0]), "type code 0x42; only 0x08"),
        (bytes([0, 0, 0x0C, 1, 0, 0, 0, 1]) + bytes(4), "type code 0x0c"),  # int32: not MNIST
        (bytes([0, 0, 8, 3, 0, 0]), "truncated inside its header"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 1, 5]), "does not hold MNIST images"),  # a labels file
    ],
)
def test_malformed_idx_is_named(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(content))
    with pytest.raises(IDXFormatError, match=match) as info:
        read_idx_images(path)
    assert str(path) in str(info.value)


def test_bad_gzip_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(IDXFormatError, match=f"cannot decompress {bad}"):
        read_idx_images(bad)
    with pytest.raises(FileNotFoundError, match="prepare_mnist.py --download"):
        read_idx_images(tmp_path / "missing.gz")


def test_images_and_labels_of_different_length(raw_dir: Path) -> None:
    write_idx(raw_dir / MNIST_FILES["test"][1], np.zeros(N_TEST + 1, dtype=np.uint8))
    with pytest.raises(IDXFormatError, match="do not belong together"):
        load_mnist_idx("test", raw_dir, verify=False)


def test_bundled_files_match_known_md5() -> None:
    for name in (n for pair in MNIST_FILES.values() for n in pair):
        digest = hashlib.md5((data_paths.DEFAULT_RAW_DIR / name).read_bytes()).hexdigest()
        assert digest == KNOWN_MD5[name][0]


# ---- preparing PNG trees -----------------------------------------------------------------------
def test_prepare_writes_exact_pngs(raw_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    folders = prepare_mnist_images(raw_dir, out, verify_md5=False)
    assert folders == {"train": out / "mnist_images", "test": out / "mnist_images_test"}
    images, labels = load_mnist_idx("train", raw_dir, verify=False)
    for index in (0, 5, N_TRAIN - 1):
        png = out / "mnist_images" / str(labels[index]) / f"{index}.png"
        assert np.array_equal(np.asarray(Image.open(png)), images[index])  # lossless, index-addressed
    ds = MNISTDataset("train", out / "mnist_images", cache=True)
    order = [int(p.stem) for p, _ in ds.samples]  # by class, then index
    assert order == np.argsort(labels, kind="stable").tolist()
    assert ds.as_tensors()[1].tolist() == labels[order].tolist()
    assert torch.equal(ds.as_tensors()[0][:, 0], torch.from_numpy(images[order]))
    assert torch.equal(ds[0][0], to_model_range(torch.from_numpy(images[order[0]])[None]))
    assert len(MNISTDataset("test", out / "mnist_images_test")) == N_TEST and ds.num_skipped == 0


def test_second_run_does_nothing(raw_dir: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    prepare_mnist_images(raw_dir, out, verify_md5=False)
    before = tree_snapshot(out)
    with caplog.at_level(logging.INFO, logger="dataset.prepare"):
        prepare_mnist_images(raw_dir, out, verify_md5=False)
    assert tree_snapshot(out) == before
    assert caplog.text.count("nothing to do") == 2


def test_interrupted_run_leaves_no_tree(raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    real_save, saved = Image.Image.save, []

    def save_then_die(img, fp, *args, **kwargs):
        if len(saved) == 10:
            raise KeyboardInterrupt
        saved.append(fp)
        return real_save(img, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare_mnist_images(raw_dir, out, ("train",), verify_md5=False)
    assert len(saved) == 10 and sorted(os.listdir(out)) == []  # neither a target nor a temporary folder
    monkeypatch.setattr(Image.Image, "save", real_save)
    prepare_mnist_images(raw_dir, out, ("train",), verify_md5=False)
    counts = MNISTDataset.from_folder(out / "mnist_images").class_counts()
    assert counts == {str(d): N_TRAIN // 10 + (d < N_TRAIN % 10) for d in range(10)}


def test_another_runs_temporary_folder_is_left_alone(raw_dir: Path, tmp_path: Path) -> None:
    """It may belong to a run still writing; a killed run's leftover is hidden and never read."""
    out = tmp_path / "out"
    other = out / f".mnist_images.partial-{os.getpid() + 1}"
    (other / "3").mkdir(parents=True)
    prepare_mnist_images(raw_dir, out, ("train",), verify_md5=False)
    assert sorted(os.listdir(out)) == [other.name, "mnist_images"] and (other / "3").is_dir()
    assert len(MNISTDataset.from_folder(out / "mnist_images")) == N_TRAIN


def test_force_rebuilds_an_existing_tree(raw_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    target = prepare_mnist_images(raw_dir, out, ("train",), verify_md5=False)["train"]
    victim = next(target.glob("*/*.png"))
    victim.unlink()
    (target / "notes.txt").write_text("user file")
    prepare_mnist_images(raw_dir, out, ("train",), verify_md5=False)  # exists: left alone
    assert not victim.exists() and (target / "notes.txt").exists()
    prepare_mnist_images(raw_dir, out, ("train",), force=True, verify_md5=False)
    assert victim.exists() and not (target / "notes.txt").exists()
    assert sorted(os.listdir(out)) == ["mnist_images"]


def test_bad_splits_argument(raw_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="splits"):
        prepare_mnist_images(raw_dir, tmp_path, ("validation",))


# ---- the script --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("prepare_mnist_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_runs_and_is_idempotent(script, raw_dir: Path, tmp_path: Path, caplog) -> None:
    argv = ["--raw-dir", str(raw_dir), "--out-root", str(tmp_path / "out"), "--skip-md5"]
    caplog.set_level(logging.INFO)
    assert script.main(argv) == 0 and "wrote 23 train PNGs" in caplog.text
    caplog.clear()
    assert script.main(argv) == 0 and caplog.text.count("nothing to do") == 2
    fresh = ["--raw-dir", str(raw_dir), "--out-root", str(tmp_path / "fresh")]
    assert script.main(fresh) == 1 and "md5 mismatch" in caplog.text  # md5 checked by default


def test_script_missing_raw_files(script, tmp_path: Path, caplog) -> None:
    assert script.main(["--raw-dir", str(tmp_path / "empty"), "--out-root", str(tmp_path)]) == 1
    assert "IDX files missing" in caplog.text and "--download" in caplog.text


def test_script_download_offline_message(script, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    import torchvision.datasets

    class OfflineMNIST:
        def __init__(self, *args, **kwargs):
            raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", OfflineMNIST)
    argv = ["--raw-dir", str(tmp_path / "raw"), "--out-root", str(tmp_path), "--download"]
    assert script.main(argv) == 1
    assert "could not download MNIST" in caplog.text and "offline" in caplog.text
    assert "train-images-idx3-ubyte.gz" in caplog.text
    assert not any(p.name.startswith(".mnist-download") for p in tmp_path.iterdir())
