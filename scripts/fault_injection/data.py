"""Promise 4: messy image folders. A file either loads with the right pixels or raises the documented
:class:`~dataset.BadImageError` naming it; with ``skip_bad=True`` exactly the bad files are skipped and counted.

Bad kinds cover random bytes named ``.png``, empty, truncated, bit-flipped and header-only PNGs, wrong sizes, a
header claiming 60000×60000 pixels, symlink loops, broken symlinks, FIFOs and unreadable files (checked as user
``nobody`` when run as root, since root reads any file). Good-but-unusual flavours: 16-bit, palette (with and
without a transparent index), RGB, RGBA, LA, 1-bit and a JPEG named ``.png``.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import shutil
import stat
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dataset import BadImageError, MNISTDataset

SIZE = (28, 28)
GOOD_FLAVOURS = ("L", "I;16", "P", "P+tRNS", "RGB", "RGBA", "LA", "1", "jpeg-named-png")
BAD_KINDS = ("random bytes", "empty", "truncated", "bit flips", "header only", "wrong size", "symlink loop",
             "broken symlink", "fifo", "unreadable", "huge header")


def png_bytes(pixels: np.ndarray, mode: str | None = None, fmt: str = "PNG", **save) -> bytes:
    img = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def flavoured_png(flavour: str, pixels: np.ndarray) -> tuple[bytes, np.ndarray]:
    """An unusual but valid encoding of the 8-bit grayscale ``pixels`` (H, W) and the (1, H, W) uint8 the loader
    must return for it (±1 for colour conversions and JPEG is allowed by the checker)."""
    expect = pixels[None]
    if flavour == "L":
        return png_bytes(pixels), expect
    if flavour == "I;16":
        return png_bytes(pixels.astype(np.uint16) * 257), expect  # v16 = 257·v8 → v8 exactly
    if flavour in ("P", "P+tRNS"):
        img = Image.fromarray(pixels).convert("P")  # the grayscale palette: exact
        buf = io.BytesIO()
        if flavour == "P+tRNS":
            img.info["transparency"] = int(pixels.flat[0])  # that palette index becomes transparent → black
            img.save(buf, format="PNG", transparency=int(pixels.flat[0]))
            return buf.getvalue(), np.where(pixels == pixels.flat[0], 0, pixels)[None]
        img.save(buf, format="PNG")
        return buf.getvalue(), expect
    if flavour == "RGB":
        return png_bytes(np.stack([pixels] * 3, -1)), expect
    if flavour in ("RGBA", "LA"):
        alpha = np.where(np.arange(pixels.size).reshape(pixels.shape) % 2 == 0, 255, 0).astype(np.uint8)
        channels = [pixels] * (3 if flavour == "RGBA" else 1) + [alpha]
        return png_bytes(np.stack(channels, -1)), np.where(alpha == 255, pixels, 0)[None]  # over black
    if flavour == "1":
        bits = np.where(pixels >= 128, 255, 0).astype(np.uint8)
        return png_bytes(bits, mode="1"), bits[None]
    if flavour == "jpeg-named-png":
        return png_bytes(pixels, fmt="JPEG", quality=100), expect
    raise ValueError(flavour)


def make_bad_file(kind: str, path: Path, rng: random.Random, size: tuple[int, int] = (28, 28)) -> None:
    """Write one file of kind ``kind`` at ``path`` (in a tree whose images are ``size``)."""
    good = png_bytes(np.frombuffer(rng.randbytes(size[0] * size[1]), np.uint8).reshape(size))
    if kind == "random bytes":
        path.write_bytes(rng.randbytes(rng.randrange(1, 2048)))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: rng.randrange(60, len(good) - 12)])  # past the header, before IEND
    elif kind == "bit flips":
        path.write_bytes(_flip_png(good, rng))
    elif kind == "header only":
        path.write_bytes(good[:33])  # signature + IHDR
    elif kind == "wrong size":
        path.write_bytes(png_bytes(np.zeros((size[0] + 1 + rng.randrange(5), size[1]), np.uint8)))
    elif kind == "symlink loop":
        os.symlink(path.name, path)
    elif kind == "broken symlink":
        os.symlink(path.with_name("does_not_exist.png"), path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "unreadable":
        path.write_bytes(good)
        path.chmod(0)
    elif kind == "huge header":  # IHDR claims 60000×60000: a decompression bomb if decoded
        ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
        chunk = b"IHDR" + ihdr
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk +
                         struct.pack(">I", zlib.crc32(chunk)) + good[33:])
    else:
        raise ValueError(kind)


def _flip_png(data: bytes, rng: random.Random) -> bytes:
    """Corrupt the compressed pixel data (not the signature): the decoder must notice via CRC or zlib."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(41, len(out) - 12)] ^= 1 << rng.randrange(8)
    return bytes(out)


def world_readable_tmpdir() -> Path:
    """A temp folder a dropped-privilege child can enter (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="reliability_"))
    folder.chmod(0o755)
    return folder


def as_unprivileged(fn: Callable, *args):
    """Run ``fn(*args)`` in a forked child as user ``nobody`` when we are root (root reads any file, so
    permission errors could not happen otherwise); directly when not root. Returns fn's result."""
    if os.name != "posix" or os.geteuid() != 0:
        return fn(*args)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                result = ("ok", fn(*args))
            except BaseException as err:  # noqa: BLE001 - ship any failure back to the parent
                result = ("raised", err)
            with os.fdopen(write, "wb") as f:
                pickle.dump(result, f)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    status, value = pickle.loads(data)
    if status == "raised":
        raise value
    return value


@dataclass
class DataOutcome:
    kind: str
    path: Path
    handled: bool  # BadImageError naming the file and skipped + counted with skip_bad, or (if allowed) loaded
    loaded: bool  # the file was accepted as an image
    detail: str


def make_tree(root: Path) -> Path:
    """``root/{0,1}/{0,1,2}.png``: six good 28×28 grayscale images."""
    for c in ("0", "1"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            (root / c / f"{i}.png").write_bytes(png_bytes(np.full(SIZE, 40 * i + int(c), np.uint8)))
    return root


def check_bad_file(kind: str, root: Path, rng: random.Random, cache: bool) -> DataOutcome:
    """A tree of six good images plus one file of ``kind`` (one of :data:`BAD_KINDS`): it must be refused."""
    bad = make_tree(root) / "1" / "bad.png"
    make_bad_file(kind, bad, rng)
    return as_unprivileged(check_tree, kind, root, bad, cache, True)


def check_tree(kind: str, root: Path, target: Path, cache: bool, must_fail: bool) -> DataOutcome:
    """Load the tree strictly and with ``skip_bad``: ``target`` must either be refused both ways (BadImageError
    naming it; skipped and counted) or — unless ``must_fail`` — load both ways as a (1, 28, 28) image."""
    try:
        ds = MNISTDataset.from_folder(root, cache=cache)
        item = ds[[p for p, _ in ds.samples].index(target)][0]  # without the cache, pixels are decoded here
        strict = "loaded" if item.shape == (1, *SIZE) and -1 <= item.min() <= item.max() <= 1 else "wrong"
        detail = f"loaded as {tuple(item.shape)}"
    except BadImageError as err:
        strict = "refused" if err.path == target and str(target) in str(err) else "wrong"
        detail = str(err)
    except Exception as err:  # any other exception breaks the promise
        strict, detail = "wrong", f"{type(err).__name__}: {err}"
    try:
        ds = MNISTDataset.from_folder(root, cache=cache, skip_bad=True)
        good = len(ds) in (6, 7) and all(ds[i][0].shape == (1, *SIZE) for i in range(len(ds)))
        lenient = "skipped" if good and ds.num_skipped == 1 and ds.skipped[0][0] == target and len(ds) == 6 else \
            "loaded" if good and ds.num_skipped == 0 and len(ds) == 7 else "wrong"
    except Exception as err:
        lenient, detail = "wrong", detail + f"; with skip_bad: {type(err).__name__}: {err}"
    handled = (strict, lenient) == ("refused", "skipped") or (not must_fail and (strict, lenient) == ("loaded",
                                                                                                        "loaded"))
    return DataOutcome(kind, target, handled, strict == "loaded", detail)


def check_good_flavour(flavour: str, root: Path, rng: random.Random) -> DataOutcome:
    """An unusual but valid file must load with the right pixels (exact, ±1 after colour conversion/JPEG)."""
    pixels = np.frombuffer(rng.randbytes(28 * 28), np.uint8).reshape(28, 28)
    data, expect = flavoured_png(flavour, pixels)
    (root / "0").mkdir(parents=True)
    path = root / "0" / "x.png"
    path.write_bytes(data)
    try:
        got = MNISTDataset.from_folder(root, cache=True).as_tensors()[0][0].numpy()
    except Exception as err:
        return DataOutcome(flavour, path, False, False, f"{type(err).__name__}: {err}")
    tolerance = 3 if flavour == "jpeg-named-png" else 1 if flavour in ("RGB", "RGBA") else 0
    diff = int(np.abs(got.astype(int) - expect.astype(int)).max())
    return DataOutcome(flavour, path, diff <= tolerance, True, f"max pixel difference {diff} (allowed {tolerance})")


def remove_tree(path: Path) -> None:
    """rmtree that also removes files made unreadable by a test."""
    def onerror(func, p, exc):
        os.chmod(p, stat.S_IRWXU)
        func(p)
    shutil.rmtree(path, onerror=onerror)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """1–4 random edits of ``data``: bit flips, overwritten, inserted or deleted bytes, or a truncation."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op, pos = rng.choice(["flip", "set", "insert", "delete", "truncate"]), rng.randrange(max(1, len(out)))
        if op == "flip" and out:
            out[pos] ^= 1 << rng.randrange(8)
        elif op == "set" and out:
            out[pos] = rng.randrange(256)
        elif op == "insert":
            out[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == "delete":
            del out[pos: pos + rng.randint(1, 16)]
        elif op == "truncate":
            del out[pos:]
    return bytes(out)


def check_mutated_png(root: Path, rng: random.Random, cache: bool) -> DataOutcome:
    """A randomly damaged PNG in a good tree: refused naming it, or loaded with exactly the original pixels."""
    pixels = np.frombuffer(rng.randbytes(SIZE[0] * SIZE[1]), np.uint8).reshape(SIZE)
    target = make_tree(root) / "1" / "target.png"
    target.write_bytes(mutate(png_bytes(pixels), rng))
    outcome = check_tree("mutated png", root, target, cache, must_fail=False)
    if outcome.handled and outcome.loaded:
        ds = MNISTDataset.from_folder(root, cache=True)
        got = ds.as_tensors()[0][[p for p, _ in ds.samples].index(target)][0].numpy()
        if not np.array_equal(got, pixels):
            return DataOutcome("mutated png", target, False, True, "loaded with silently wrong pixels")
    return outcome
