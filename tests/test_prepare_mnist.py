"""IDX reading and scripts/prepare_mnist.py on tiny hand-made IDX files."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dataset.prepare as prepare
from dataset import (
    IDXFormatError,
    MNISTDataset,
    ensure_mnist_images,
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


def test_expected_md5_is_checked(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels.gz", np.array([1, 2], dtype=np.uint8))
    good = hashlib.md5(path.read_bytes()).hexdigest()
    assert read_idx_labels(path, expected_md5=good).tolist() == [1, 2]
    with pytest.raises(IDXFormatError, match=f"md5 mismatch for {path}.*expected 0+"):
        read_idx_labels(path, expected_md5="0" * 32)


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
        (bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 0]), "unknown IDX type"),
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
def test_prepare_writes_exact_pngs_and_marker(raw_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    folders = prepare_mnist_images(raw_dir, out, verify_md5=False, workers=1)
    assert folders == {"train": out / "mnist_images", "test": out / "mnist_images_test"}
    images, labels = load_mnist_idx("train", raw_dir, verify=False)
    for index in (0, 5, N_TRAIN - 1):
        png = out / "mnist_images" / str(labels[index]) / f"{index}.png"
        assert np.array_equal(np.asarray(Image.open(png)), images[index])  # lossless, index-addressed
    marker = json.loads((out / "mnist_images" / prepare.MARKER_NAME).read_text())
    assert marker["count"] == N_TRAIN and sum(marker["class_counts"].values()) == N_TRAIN
    ds = MNISTDataset("train", out, cache=True)
    order = [int(p.stem) for p, _ in ds.samples]  # by class, then index
    assert ds.as_tensors()[1].tolist() == labels[order].tolist()
    assert torch.equal(ds.as_tensors()[0][:, 0], torch.from_numpy(images[order]))
    assert torch.equal(ds[0][0], to_model_range(torch.from_numpy(images[order[0]])[None]))
    assert len(MNISTDataset("test", out)) == N_TEST and ds.num_skipped == 0


def test_pool_of_workers_writes_the_same_tree(raw_dir: Path, tmp_path: Path) -> None:
    one = prepare_mnist_images(raw_dir, tmp_path / "one", ("test",), verify_md5=False, workers=1)["test"]
    two = prepare_mnist_images(raw_dir, tmp_path / "two", ("test",), verify_md5=False, workers=2)["test"]
    names = sorted(str(p.relative_to(one)) for p in one.rglob("*"))
    assert names == sorted(str(p.relative_to(two)) for p in two.rglob("*"))
    assert all((one / n).read_bytes() == (two / n).read_bytes() for n in names if n.endswith(".png"))


def test_second_run_does_nothing(raw_dir: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    prepare_mnist_images(raw_dir, out, verify_md5=False, workers=1)
    before = tree_snapshot(out)
    with caplog.at_level(logging.INFO, logger="dataset.prepare"):
        prepare_mnist_images(raw_dir, out, verify_md5=False, workers=1)
    assert tree_snapshot(out) == before
    assert caplog.text.count("nothing to do") == 2


def test_interrupted_run_leaves_no_tree(raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    real_write = prepare._write_chunk
    monkeypatch.setattr(prepare, "_CHUNK", 5)

    def write_then_die(task):
        if int(task[2][0]) >= 10:  # after two chunks have been written
            raise KeyboardInterrupt
        return real_write(task)

    monkeypatch.setattr(prepare, "_write_chunk", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare_mnist_images(raw_dir, out, ("train",), verify_md5=False, workers=1)
    assert sorted(os.listdir(out)) == []  # neither a target nor a temporary folder
    monkeypatch.setattr(prepare, "_write_chunk", real_write)
    prepare_mnist_images(raw_dir, out, ("train",), verify_md5=False, workers=1)
    assert MNISTDataset("train", out).class_counts() == {str(d): N_TRAIN // 10 + (d < N_TRAIN % 10) for d in range(10)}


def test_killed_run_leftovers_are_removed(raw_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    dead_pid = 2**22 + 12345  # above Linux's pid_max default: no such process
    partial = out / f".mnist_images.partial-{dead_pid}"
    (partial / "3").mkdir(parents=True)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(partial / "3" / "0.png")
    (out / f".mnist_images.old-{dead_pid}").mkdir()
    prepare_mnist_images(raw_dir, out, ("train",), verify_md5=False, workers=1)
    assert sorted(os.listdir(out)) == ["mnist_images"]


def test_incomplete_target_needs_force(raw_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    target = prepare_mnist_images(raw_dir, out, ("train",), verify_md5=False, workers=1)["train"]
    victim = next(target.glob("*/*.png"))
    victim.unlink()  # a PNG lost after preparation: counts no longer match the marker
    with pytest.raises(ValueError, match=f"{target} exists but is not a complete train tree.*--force"):
        prepare_mnist_images(raw_dir, out, ("train",), verify_md5=False, workers=1)
    (target / "notes.txt").write_text("user file")
    prepare_mnist_images(raw_dir, out, ("train",), force=True, verify_md5=False, workers=1)
    assert victim.exists() and not (target / "notes.txt").exists()
    assert sorted(os.listdir(out)) == ["mnist_images"]


def test_bad_splits_argument(raw_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="splits"):
        prepare_mnist_images(raw_dir, tmp_path, ("validation",))


# ---- ensure_mnist_images -----------------------------------------------------------------------
@pytest.fixture
def fake_defaults(raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default paths at tmp_path/repo/data/MNIST and accept the fake files' md5s."""
    root = tmp_path / "repo" / "data" / "MNIST"
    root.mkdir(parents=True)
    os.replace(raw_dir, root / "raw")
    monkeypatch.setattr(data_paths, "DEFAULT_RAW_DIR", root / "raw")
    monkeypatch.setattr(data_paths, "DEFAULT_DATA_PATH", root / "mnist_images")
    monkeypatch.setattr(data_paths, "DEFAULT_TEST_DATA_PATH", root / "mnist_images_test")
    for name in (n for pair in MNIST_FILES.values() for n in pair):
        monkeypatch.setitem(KNOWN_MD5, name, (hashlib.md5((root / "raw" / name).read_bytes()).hexdigest(),))
    return root


def test_ensure_prepares_default_path_once(fake_defaults: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.chdir(fake_defaults.parent.parent)  # the fake repo root: relative default path
    with caplog.at_level(logging.INFO, logger="dataset"):
        path = ensure_mnist_images("data/MNIST/mnist_images")
    assert path == fake_defaults / "mnist_images" and len(MNISTDataset.from_folder(path)) == N_TRAIN
    assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 1
    assert "first use" in caplog.text
    assert not (fake_defaults / "mnist_images_test").exists()  # only the split asked for
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dataset"):
        assert ensure_mnist_images(fake_defaults / "mnist_images") == path
    assert caplog.records == []


def test_ensure_non_default_missing_path_raises(fake_defaults: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'elsewhere'} does not exist.*prepare_mnist.py"):
        ensure_mnist_images(tmp_path / "elsewhere")


def test_ensure_default_without_idx_files(fake_defaults: Path) -> None:
    (fake_defaults / "raw" / MNIST_FILES["test"][0]).unlink()
    with pytest.raises(FileNotFoundError, match="t10k-images.*--download"):
        ensure_mnist_images(fake_defaults / "mnist_images_test")


# ---- the script --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("prepare_mnist_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_runs_and_is_idempotent(script, raw_dir: Path, tmp_path: Path, caplog) -> None:
    argv = ["--raw-dir", str(raw_dir), "--out-root", str(tmp_path / "out"), "--skip-md5", "--workers", "1"]
    caplog.set_level(logging.INFO)
    assert script.main(argv) == 0 and "wrote 23 train PNGs" in caplog.text
    caplog.clear()
    assert script.main(argv) == 0 and caplog.text.count("nothing to do") == 2
    assert script.main(argv[:4]) == 1 and "md5 mismatch" in caplog.text  # md5 checked by default


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
