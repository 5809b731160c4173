"""Metrics (evaluation/metrics.py) against closed forms, and the classifier's checkpoint handling.

Plumbing tests use a stand-in classifier with random weights and small synthetic image sets; only
``test_shipped_classifier`` touches the real weights and MNIST.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evaluation.classifier import (
    DEFAULT_CLASSIFIER_PATH,
    ClassifierConfig,
    MNISTClassifier,
    classify_uint8,
    load_classifier,
    save_classifier,
    sha256_sidecar,
)
from evaluation.metrics import (
    MetricsConfig,
    class_histogram,
    classifier_score,
    compute_metrics,
    effective_num_classes,
    floor_digits,
    format_metrics_table,
    fraction_in_manifold,
    frechet_distance,
    gaussian_stats,
    knn_radii,
    mean_max_prob,
    memorisation_stats,
    nearest_neighbour_l2,
    pr_reference_indices,
    precision_recall,
    row_blocks,
    trace_sqrt_product,
)


def random_spd(d: int, rng: np.random.Generator, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


# ---------------------------------------------------------------------------------------- Fréchet distance
def test_fid_of_a_gaussian_with_itself_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), random_spd(16, rng)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_fid_of_a_feature_set_with_itself_is_zero():
    f = np.random.default_rng(1).normal(size=(200, 32))
    assert frechet_distance(*gaussian_stats(f), *gaussian_stats(f)) == pytest.approx(0.0, abs=1e-8)


def test_fid_diagonal_closed_form():
    """Σ₁ = diag(a), Σ₂ = diag(b): d² = ‖μ₁ − μ₂‖² + Σ (√a − √b)²."""
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.1, 3.0, 10), rng.uniform(0.1, 3.0, 10)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_fid_isotropic_closed_form():
    """N(0, I) vs N(0, c² I) in D dims: D (1 − c)²."""
    d, c = 128, 1.7
    assert frechet_distance(np.zeros(d), np.eye(d), np.zeros(d), c**2 * np.eye(d)) == pytest.approx(d * (1 - c) ** 2)


def test_trace_sqrt_product_non_commuting_2x2():
    """For 2×2 A with positive eigenvalues, Tr √A = √(Tr A + 2 √det A); A = Σ₁Σ₂ with Σ₁Σ₂ ≠ Σ₂Σ₁."""
    s1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 1.5]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    a = s1 @ s2
    expected = np.sqrt(np.trace(a) + 2 * np.sqrt(np.linalg.det(a)))
    assert trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-12)


def test_fid_is_symmetric_and_handles_rank_deficient_covariances():
    rng = np.random.default_rng(3)
    s1, s2 = random_spd(64, rng, rank=20), random_spd(64, rng, rank=30)  # as with N < D samples
    mu1, mu2 = rng.normal(size=64), rng.normal(size=64)
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert np.isfinite(d12) and d12 > 0
    assert d12 == pytest.approx(d21, rel=1e-8)


def test_gaussian_stats():
    f = np.random.default_rng(4).normal(size=(50, 3))
    mu, sigma = gaussian_stats(torch.from_numpy(f))
    np.testing.assert_allclose(mu, f.mean(0))
    np.testing.assert_allclose(sigma, np.cov(f.T))  # unbiased (N − 1)
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(f[:1])


# ---------------------------------------------------------------------------------------- p(y|x) statistics
def one_hot(labels: list[int], k: int = 10) -> np.ndarray:
    return np.eye(k)[labels]


@pytest.mark.parametrize(
    "probs, score",
    [
        (np.full((7, 10), 0.1), 1.0),  # uninformative
        (one_hot(list(range(10)) * 3), 10.0),  # confident and balanced
        (one_hot([4] * 12), 1.0),  # confident, one mode only
        (one_hot([1, 7] * 5), 2.0),  # two balanced modes
    ],
)
def test_classifier_score_closed_forms(probs, score):
    assert classifier_score(probs) == pytest.approx(score, rel=1e-12)


def test_classifier_score_partial_confidence():
    """Two balanced classes, each p(y|x) = (1−q, q): exp(log 2 − H(q))."""
    q = 0.2
    probs = np.zeros((4, 10))
    probs[:2, :2] = [1 - q, q]
    probs[2:, :2] = [q, 1 - q]
    h = -(q * np.log(q) + (1 - q) * np.log(1 - q))
    assert classifier_score(probs) == pytest.approx(np.exp(np.log(2) - h), rel=1e-12)


def test_histogram_effective_classes_and_max_prob():
    probs = one_hot([0, 0, 3, 9, 9, 9])
    np.testing.assert_array_equal(class_histogram(probs), [2, 0, 0, 1, 0, 0, 0, 0, 0, 3])
    assert effective_num_classes(np.full(10, 5)) == pytest.approx(10.0)
    assert effective_num_classes(np.eye(10)[2] * 40) == pytest.approx(1.0)
    assert mean_max_prob(np.full((3, 10), 0.1)) == pytest.approx(0.1)
    assert mean_max_prob(probs) == pytest.approx(1.0)


def test_invalid_probabilities_raise():
    with pytest.raises(ValueError, match="probability distribution"):
        classifier_score(np.ones((2, 10)))


# ---------------------------------------------------------------------------------------- precision / recall
def on_a_line(xs: list[float]) -> np.ndarray:
    """Points (x, 7) in 2-D: every distance is an exact |x − x'|."""
    return np.array([[x, 7.0] for x in xs])


LINE_REAL = on_a_line([0, 1, 2, 10, 11, 20])
LINE_FAKE = on_a_line([0.5, 3, 6, 10.5, 11.5, 12])


def test_knn_radii_on_a_line():
    np.testing.assert_array_equal(knn_radii(LINE_REAL, 1).numpy(), [1, 1, 1, 1, 1, 9])
    np.testing.assert_array_equal(knn_radii(LINE_REAL, 2).numpy(), [2, 1, 2, 8, 9, 10])
    np.testing.assert_array_equal(knn_radii(on_a_line([4, 4, 4, 9]), 1).numpy(), [0, 0, 0, 5])  # duplicates count


@pytest.mark.parametrize("k, precision, recall", [
    # k = 1: real balls [−1, 1], [0, 2], [1, 3], [9, 11], [10, 12], [11, 29]. Fake 3 and 12 sit exactly on a
    # boundary (inside: the balls are closed); 6 is outside. Fake radii 2.5, 2.5, 3, 1, 0.5, 0.5: real 20 is
    # 8 from the nearest fake point, outside; every other real point is within 0.5 or 1 of a fake one.
    (1, 5 / 6, 5 / 6),
    # k = 2: real radii 2, 1, 2, 8, 9, 10 cover 6 (4 from 10); fake radii 5.5, 3, 4.5, 1.5, 1, 1.5 still miss 20.
    (2, 1.0, 5 / 6),
])
def test_precision_recall_on_a_line(k, precision, recall):
    assert precision_recall(LINE_REAL, LINE_FAKE, k) == (precision, recall)


def test_identical_sets_have_precision_and_recall_one():
    f = np.random.default_rng(9).normal(size=(300, 16))
    assert precision_recall(f, f, 3) == (1.0, 1.0)


def test_far_away_samples_have_precision_and_recall_zero():
    f = np.random.default_rng(10).normal(size=(200, 8))
    assert precision_recall(f, f + 100.0, 3) == (0.0, 0.0)


def clusters(centres: np.ndarray, per_cluster: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([c + rng.normal(size=(per_cluster, centres.shape[1])) for c in centres])


def test_half_the_modes_give_recall_one_half():
    """Ten unit Gaussians 31 apart on a circle of radius 50; samples from five of them are realistic
    (precision ≈ 1) but cover half the real data (recall ≈ 0.5, and at most 0.5)."""
    rng = np.random.default_rng(11)
    angles = 2 * np.pi * np.arange(10) / 10
    centres = 50 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    real = clusters(centres, 100, rng)
    precision, recall = precision_recall(real, clusters(centres[:5], 200, rng), 3)
    assert precision > 0.95 and 0.45 < recall <= 0.5
    precision, recall = precision_recall(real, clusters(centres, 100, rng), 3)
    assert precision > 0.9 and recall > 0.9  # all modes: recall ≈ 1


def test_blocked_distances_equal_one_block_and_brute_force():
    rng = np.random.default_rng(12)
    real, fake = rng.normal(size=(61, 5)), rng.normal(size=(47, 5)) + 0.3
    whole = precision_recall(real, fake, 3)
    assert precision_recall(real, fake, 3, max_block=50) == whole  # one row per block
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=-1)
    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=-1)
    r_real, r_fake = np.sort(d_rr, axis=1)[:, 3], np.sort(d_ff, axis=1)[:, 3]
    np.testing.assert_allclose(knn_radii(real, 3, max_block=200).numpy(), r_real, rtol=1e-12)
    assert whole == ((d_fr <= r_real[None]).any(1).mean(), (d_fr.T <= r_fake[None]).any(1).mean())
    assert fraction_in_manifold(fake, real, torch.from_numpy(r_real), max_block=100) == whole[0]


def test_blocks_bound_memory():
    """At N = 10,000 no block of distances exceeds 2^23 float64 entries (64 MiB)."""
    blocks = list(row_blocks(10_000, 10_000))
    assert blocks[0] == (0, 838) and blocks[-1][1] == 10_000
    assert all((stop - start) * 10_000 <= 1 << 23 for start, stop in blocks)
    assert list(row_blocks(3, 10, max_block=5)) == [(0, 1), (1, 2), (2, 3)]  # a row larger than the budget


def test_knn_radii_needs_more_points_than_k():
    with pytest.raises(ValueError, match=r"k in \[1, N−1\]"):
        knn_radii(np.zeros((3, 2)), 3)


# ---------------------------------------------------------------------------------------- nearest neighbours
def test_nearest_neighbour_matches_brute_force():
    rng = np.random.default_rng(5)
    queries = rng.integers(0, 256, (37, 6, 6), dtype=np.uint8)
    refs = rng.integers(0, 256, (101, 6, 6), dtype=np.uint8)
    dist, idx = nearest_neighbour_l2(queries, refs, chunk_size=8)  # several chunks, a ragged last one
    diff = queries.reshape(37, 1, -1).astype(np.float64) / 255 - refs.reshape(1, 101, -1).astype(np.float64) / 255
    brute = np.sqrt((diff**2).sum(-1))
    np.testing.assert_array_equal(idx, brute.argmin(1))
    np.testing.assert_allclose(dist, brute.min(1), rtol=1e-12)


def test_exact_copies_have_distance_zero():
    rng = np.random.default_rng(6)
    refs = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    dist, idx = nearest_neighbour_l2(refs[[3, 17, 42]], refs)
    np.testing.assert_array_equal(idx, [3, 17, 42])
    assert (dist == 0).all()
    # one pixel off by one grey level: distance 1/255
    q = refs[[5]].copy()
    q[0, 0, 0] = q[0, 0, 0] + 1 if q[0, 0, 0] < 255 else 254
    assert nearest_neighbour_l2(q, refs)[0][0] == pytest.approx(1 / 255)


def test_memorisation_stats():
    test_nn = np.linspace(1.0, 3.0, 101)  # 5th percentile = 1.1
    stats = memorisation_stats(np.array([0.5, 1.05, 2.0, 3.0]), test_nn, 0.05)
    assert stats["threshold"] == pytest.approx(1.1)
    assert stats["fraction_below_threshold"] == pytest.approx(0.5)
    assert stats["nn_distance_min"] == 0.5 and stats["test_nn_distance_median"] == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------- compute_metrics
@pytest.fixture(scope="module")
def stand_in_classifier() -> MNISTClassifier:
    torch.manual_seed(0)
    return MNISTClassifier(ClassifierConfig(channels=(4, 8), feature_dim=16)).eval()


@pytest.fixture(scope="module")
def fake_mnist() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return (rng.integers(0, 256, (300, 28, 28), dtype=np.uint8),
            rng.integers(0, 256, (200, 28, 28), dtype=np.uint8))


def test_compute_metrics_plumbing(stand_in_classifier, fake_mnist):
    train, test = fake_mnist
    config = MetricsConfig(nn_reference_size=50, batch_size=64)
    samples = np.random.default_rng(8).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    m = compute_metrics(samples, stand_in_classifier, train, test, config)
    assert m["num_samples"] == 40 and sum(m["class_histogram"]) == 40 and len(m["class_histogram"]) == 10
    assert m["fid"] >= 0 and m["fid_real_floor"] >= 0
    assert 1.0 <= m["classifier_score"] <= 10.0 and 0.1 <= m["mean_max_prob"] <= 1.0
    assert m["memorisation"]["num_test_reference"] == 50
    assert all(0.0 <= m[key] <= 1.0 for key in ("precision", "recall", "precision_real", "recall_real"))
    assert m["precision_recall_reference"] == "40 MNIST test digits, k = 3"
    json.dumps(m)  # JSON-ready
    assert compute_metrics(samples, stand_in_classifier, train, test, config) == m  # deterministic
    table = format_metrics_table(m)
    assert "classifier-FID" in table and f"{m['fid']:.4f}" in table
    assert f"{m['precision']:.4f}" in table and f"{m['recall_real']:.4f}" in table


def test_precision_recall_in_compute_metrics(stand_in_classifier, fake_mnist):
    """Samples that are the test digits themselves get precision = recall = 1 against those same digits; the
    'real' column scores the FID floor's training digits against them."""
    train, test = fake_mnist
    samples = test[pr_reference_indices(len(test), 60, MetricsConfig().seed)]
    m = compute_metrics(samples, stand_in_classifier, train, test, MetricsConfig(nn_reference_size=20))
    assert (m["precision"], m["recall"]) == (1.0, 1.0)
    feats = lambda images: classify_uint8(stand_in_classifier, torch.from_numpy(images))[0]  # noqa: E731
    floor = floor_digits(train, 60, MetricsConfig().seed)
    assert (m["precision_real"], m["recall_real"]) == precision_recall(feats(samples), feats(floor), 3)
    small = compute_metrics(samples[:3], stand_in_classifier, train, test, MetricsConfig(nn_reference_size=20))
    assert small["precision"] is None and small["recall_real"] is None  # N <= k: not defined
    assert "precision" in format_metrics_table(small)


def test_conditional_samples_get_a_floor_of_training_digits_of_the_requested_classes(stand_in_classifier,
                                                                                     fake_mnist):
    """A class-balanced sample scores a lower FID than a random one, so the floor must have the same classes."""
    train, test = fake_mnist
    train_labels = np.arange(len(train)) % 10
    requested = np.random.default_rng(3).permutation(np.repeat(np.arange(10), 4))  # 4 of each class, shuffled
    floor = floor_digits(train, 40, 0, train_labels, requested)
    where = [int(np.flatnonzero((train == image).all(axis=(1, 2)))[0]) for image in floor]
    assert (train_labels[where] == requested).all() and len(set(where)) == 40  # place by place, no repeats
    assert (floor_digits(train, 40, 0) == train[np.random.default_rng([0, 0]).choice(300, 40, replace=False)]).all()

    samples = np.random.default_rng(8).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    m = compute_metrics(samples, stand_in_classifier, train, test, MetricsConfig(nn_reference_size=20),
                        requested_labels=requested, train_labels=train_labels)
    feats = lambda images: classify_uint8(stand_in_classifier, torch.from_numpy(images))[0]  # noqa: E731
    assert m["fid_real_floor"] == frechet_distance(*gaussian_stats(feats(floor)), *gaussian_stats(feats(test)))
    assert m["fid_real_floor_digits"] == "training digits of the requested classes"
    with pytest.raises(ValueError, match="need train_labels"):
        compute_metrics(samples, stand_in_classifier, train, test, requested_labels=requested)
    with pytest.raises(ValueError, match="needs 40 training digits of class 3, there are 30"):
        floor_digits(train, 40, 0, train_labels, np.full(40, 3))


def test_copies_of_training_digits_are_flagged(stand_in_classifier, fake_mnist):
    train, test = fake_mnist
    m = compute_metrics(train[:30], stand_in_classifier, train, test, MetricsConfig(nn_reference_size=50))
    assert m["memorisation"]["fraction_below_threshold"] == 1.0
    assert m["memorisation"]["nn_distance_median"] == 0.0


def test_compute_metrics_rejects_bad_samples(stand_in_classifier, fake_mnist):
    train, test = fake_mnist
    with pytest.raises(ValueError, match="uint8"):
        compute_metrics(train[:5].astype(np.float32), stand_in_classifier, train, test)
    with pytest.raises(ValueError, match="at least 2"):
        compute_metrics(train[:1], stand_in_classifier, train, test)


# ---------------------------------------------------------------------------------------- classifier files
def test_classifier_round_trip_and_checksum(tmp_path, stand_in_classifier):
    path = tmp_path / "clf.pth"
    digest = save_classifier(path, stand_in_classifier, test_accuracy=0.5, seed=1)
    assert sha256_sidecar(path).read_text().split() == [digest, "clf.pth"]
    model, meta = load_classifier(path)
    assert meta["test_accuracy"] == 0.5 and meta["sha256"] == digest and not model.training
    x = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    for a, b in zip(classify_uint8(model, x), classify_uint8(stand_in_classifier, x)):
        torch.testing.assert_close(a, b)

    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_classifier(path)
    sha256_sidecar(path).unlink()
    with pytest.raises(FileNotFoundError, match="checksum file"):
        load_classifier(path)
    with pytest.raises(FileNotFoundError, match="train_mnist_classifier"):
        load_classifier(tmp_path / "missing.pth")


def test_classifier_refuses_bad_input(stand_in_classifier):
    with pytest.raises(ValueError, match="got dtype torch.float32"):
        classify_uint8(stand_in_classifier, torch.rand(2, 28, 28))
    with pytest.raises(ValueError, match="got a ndarray; numpy arrays go through torch.from_numpy"):
        classify_uint8(stand_in_classifier, np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\]"):
        stand_in_classifier.features(torch.rand(2, 3, 28, 28))


def test_shipped_classifier():
    """The committed weights: checksum, recorded accuracy ≥ 99%, size, and accuracy on 2,000 test digits."""
    if not DEFAULT_CLASSIFIER_PATH.is_file():
        pytest.skip("checkpoints/mnist_classifier.pth not trained yet (scripts/train_mnist_classifier.py)")
    from dataset import load_mnist_idx

    model, meta = load_classifier()
    assert meta["test_accuracy"] >= 0.99
    assert DEFAULT_CLASSIFIER_PATH.stat().st_size < 1024 * 1024
    images, labels = load_mnist_idx("test")
    _, probs = classify_uint8(model, torch.from_numpy(images[:2000]))
    assert (probs.argmax(1).numpy() == labels[:2000]).mean() >= 0.985
