"""Promise 4, messy data: the loader either returns the right pixels or raises ``BadImageError`` naming the
file, and ``skip_bad=True`` skips and counts exactly the bad files — never another exception, never a hang,
never an image with silently wrong pixels.

First a catalogue of bad kinds and good-but-unusual flavours (also counted by ``scripts/reliability_report.py``),
then byte-level fuzzing with hypothesis: random bytes named ``.png``, mutated PNGs, random pixels in every
flavour, and trees mixing good and bad files. The fuzz runs are deterministic and small by default; set
``FUZZ_EXAMPLES=5000`` for a long, randomised search.

Trees live in world-readable temp folders so that, when the suite runs as root, the "unreadable" case can be
checked as user ``nobody`` (root reads any file).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fault_injection.data import (
    BAD_KINDS,
    GOOD_FLAVOURS,
    SIZE,
    check_bad_file,
    check_good_flavour,
    check_tree,
    flavoured_png,
    make_bad_file,
    make_tree,
    png_bytes,
    remove_tree,
    world_readable_tmpdir,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dataset import BadImageError, MNISTDataset
from dataset.folder_scan import natural_key

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))
fuzz = settings(max_examples=FUZZ_EXAMPLES or 40, deadline=None, derandomize=not FUZZ_EXAMPLES,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
def scratch():
    folder = world_readable_tmpdir()
    yield folder
    remove_tree(folder)


@pytest.fixture(scope="module")
def tree():
    """Six good 28×28 images in classes 0 and 1; tests write their file to ``1/target.png``."""
    folder = world_readable_tmpdir()
    yield make_tree(folder / "tree")
    remove_tree(folder)


def put(path: Path, content: bytes) -> Path:
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(content)
    return path


# ---------------------------------------------------------------------------------------------- the catalogue
@pytest.mark.parametrize("cache", [False, True], ids=["headers-then-getitem", "cache"])
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_file_is_refused_naming_it_and_skipped_when_asked(kind, cache, scratch):
    outcome = check_bad_file(kind, scratch / "tree", random.Random(f"{kind}-{cache}"), cache)
    assert outcome.handled, outcome.detail


@pytest.mark.parametrize("flavour", GOOD_FLAVOURS)
def test_unusual_but_valid_png_loads_the_right_pixels(flavour, scratch):
    outcome = check_good_flavour(flavour, scratch / "tree", random.Random(flavour))
    assert outcome.handled, outcome.detail


def test_a_fifo_named_png_is_refused_not_waited_on(scratch):
    """Opening a FIFO blocks until a writer appears: the loader must check the file type first."""
    fifo = make_tree(scratch / "tree") / "0" / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(BadImageError, match=f"{fifo}: not a regular file but a FIFO"):
        MNISTDataset.from_folder(scratch / "tree")
    assert MNISTDataset.from_folder(scratch / "tree", skip_bad=True).num_skipped == 1


# ---------------------------------------------------------------------------------------------- fuzzing
@fuzz
@given(content=st.binary(max_size=3000), cache=st.booleans())
def test_random_bytes_named_png(tree, content, cache):
    target = put(tree / "1" / "target.png", content)
    outcome = check_tree("random bytes", tree, target, cache, must_fail=False)
    assert outcome.handled, outcome.detail


@st.composite
def mutated_png(draw):
    """A valid 28×28 PNG and a copy with bit flips, overwritten, inserted or deleted bytes, or a truncation."""
    pixels = draw(arrays(np.uint8, SIZE))
    original = png_bytes(pixels)
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos: pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
    return pixels, original, bytes(data)


@fuzz
@given(case=mutated_png(), cache=st.booleans())
def test_mutated_png_never_loads_wrong_pixels(tree, case, cache):
    """Damage is either reported (BadImageError naming the file) or harmless: whatever loads has exactly the
    original pixels (PNG chunk CRCs catch flips that would inflate into other pixels)."""
    pixels, original, data = case
    target = put(tree / "1" / "target.png", data)
    outcome = check_tree("mutated png", tree, target, cache, must_fail=False)
    assert outcome.handled, outcome.detail
    if outcome.loaded:
        ds = MNISTDataset.from_folder(tree, cache=cache)
        got = ds[[p for p, _ in ds.samples].index(target)][0]
        assert np.array_equal(np.rint((got[0].numpy() + 1) * 127.5).astype(np.uint8), pixels), \
            f"silently wrong pixels (changed bytes: {data != original})"


@fuzz
@given(pixels=arrays(np.uint8, SIZE), flavour=st.sampled_from(GOOD_FLAVOURS))
def test_every_flavour_of_random_pixels_loads_exactly(tree, pixels, flavour):
    data, expect = flavoured_png(flavour, pixels)
    target = put(tree / "1" / "target.png", data)
    ds = MNISTDataset.from_folder(tree, cache=True)
    got = ds.as_tensors()[0][[p for p, _ in ds.samples].index(target)].numpy().astype(int)
    tolerance = 3 if flavour == "jpeg-named-png" else 1 if flavour in ("RGB", "RGBA") else 0
    assert np.abs(got - expect.astype(int)).max() <= tolerance


FUZZ_KINDS = [k for k in BAD_KINDS if k != "unreadable"]  # unreadable needs a forked unprivileged child


@fuzz
@given(kinds=st.lists(st.sampled_from([*FUZZ_KINDS, "good"]), min_size=1, max_size=6), seed=st.integers(0, 9),
       cache=st.booleans())
def test_a_tree_mixing_good_and_bad_files(scratch, kinds, seed, cache):
    """skip_bad skips exactly the bad files; without it, the first bad file in sample order is named."""
    root = make_tree(Path(tempfile.mkdtemp(dir=scratch)) / "tree")  # hypothesis replays examples: fresh folder
    rng, bad = random.Random(seed), []
    for i, kind in enumerate(kinds):
        path = root / str(i % 2) / f"z{i}.png"  # after the good 0..2.png in sample order
        if kind == "good":
            path.write_bytes(png_bytes(np.full(SIZE, 7 * i, np.uint8)))
        else:
            make_bad_file(kind, path, rng)
            bad.append(path)
    lenient = MNISTDataset.from_folder(root, cache=cache, skip_bad=True)
    assert sorted(p for p, _ in lenient.skipped) == sorted(bad)
    assert len(lenient) == 6 + len(kinds) - len(bad) and lenient.num_skipped == len(bad)
    if not bad:
        return
    first_bad = min(bad, key=lambda p: (int(p.parent.name), natural_key(p.name)))  # the sample order
    with pytest.raises(BadImageError) as info:
        ds = MNISTDataset.from_folder(root, cache=cache)
        for i in range(len(ds)):  # without the cache, pixel data is decoded on access
            ds[i]
    # The cache decodes in sample order; without it, headers are checked first and truncated pixel data is
    # found on access, so any bad file may be the first named.
    assert info.value.path == first_bad if cache else info.value.path in bad, info.value
