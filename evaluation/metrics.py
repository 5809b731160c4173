"""Sample-quality metrics for MNIST generators, computed offline with the shipped classifier: classifier-FID
(Heusel et al., 2017, φ in place of Inception) with its real-vs-real floor, precision/recall (Kynkäänniemi et al.,
2019), classifier score (Salimans et al., 2016), class histogram, mean max-probability and memorisation. The
README ("Metrics", and "Class-conditional generation" for the floor of conditional samples) defines each.

φ = the classifier's 128-d penultimate features, p(y|x) its softmax; images in [0, 1]. Every "real" reference
is drawn at the samples' N with a fixed seed, so runs are comparable.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch

from evaluation.classifier import MNISTClassifier, classify_uint8

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricsConfig:
    """Knobs of :func:`compute_metrics` (the defaults are what the README's numbers use)."""

    nn_quantile: float = 0.05  # memorisation threshold: this quantile of test→train NN distances
    nn_reference_size: int = 1000  # test digits used to estimate that quantile
    seed: int = 0  # which real digits form the floor / NN reference (not the sampling seed)
    batch_size: int = 1000  # classifier batch size
    pr_k: int = 3  # precision / recall: the k of the k-NN balls (Kynkäänniemi et al. use 3)

    def __post_init__(self) -> None:
        if not 0.0 < self.nn_quantile < 1.0:
            raise ValueError(f"nn_quantile must lie in (0, 1), got {self.nn_quantile}")
        if self.nn_reference_size < 1 or self.batch_size < 1:
            raise ValueError("nn_reference_size and batch_size must be >= 1")


# ---------------------------------------------------------------------------------------- FID
def gaussian_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of features ``[N, D]``, N ≥ 2."""
    f = np.asarray(features.cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features of shape [N >= 2, D] to fit a Gaussian, got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((Σ₁Σ₂)^{1/2}) for symmetric PSD Σ₁, Σ₂, via the similar symmetric matrix Σ₁^{1/2} Σ₂ Σ₁^{1/2}.

    A general sqrtm of the non-symmetric Σ₁Σ₂ may return complex noise; ``eigh`` of the similar symmetric PSD
    matrix gives the trace stably (tiny negative eigenvalues from rounding are clipped to 0).
    """
    w1, v1 = np.linalg.eigh(sigma1)
    sqrt_sigma1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T  # Σ₁^{1/2}
    m = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    eig = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d² between N(μ₁, Σ₁) and N(μ₂, Σ₂): ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr((Σ₁Σ₂)^{1/2})."""
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return max(float(value), 0.0)  # rounding can leave −1e−12 for identical inputs


# ---------------------------------------------------------------------------------------- p(y|x) statistics
def _probs(probs: np.ndarray | torch.Tensor) -> np.ndarray:
    p = np.asarray(probs.cpu() if isinstance(probs, torch.Tensor) else probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 1:
        raise ValueError(f"expected class probabilities [N >= 1, K], got shape {p.shape}")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-6) or (p < 0).any():
        raise ValueError("each row of probs must be a probability distribution (non-negative, summing to 1)")
    return p


def classifier_score(probs: np.ndarray | torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) ‖ p(y))) with p(y) = E_x p(y|x); in [1, K]."""
    p = _probs(probs)
    p_y = p.mean(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 · log 0 := 0
        kl = np.where(p > 0, p * (np.log(p) - np.log(p_y)), 0.0).sum(axis=1)
    return float(np.exp(kl.mean()))


def class_histogram(probs: np.ndarray | torch.Tensor) -> np.ndarray:
    """Counts of argmax_y p(y|x), shape ``[K]`` (int64)."""
    p = _probs(probs)
    return np.bincount(p.argmax(axis=1), minlength=p.shape[1]).astype(np.int64)


def effective_num_classes(histogram: np.ndarray) -> float:
    """exp(entropy) of a count histogram: K for a perfectly balanced one, 1 when one class has everything."""
    h = np.asarray(histogram, dtype=np.float64)
    q = h[h > 0] / h.sum()
    return float(np.exp(-(q * np.log(q)).sum()))


def mean_max_prob(probs: np.ndarray | torch.Tensor) -> float:
    return float(_probs(probs).max(axis=1).mean())


# ---------------------------------------------------------------------------------------- precision / recall
PR_BLOCK_ELEMENTS = 1 << 23  # distances held at once: 8M float64 = 64 MiB (plus kthvalue's working copy)


def _as_features(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(features).detach().cpu().to(torch.float64)  # [N, D]


def row_blocks(num_rows: int, num_cols: int, max_block: int = PR_BLOCK_ELEMENTS):
    """``(start, stop)`` row ranges whose ``[rows, num_cols]`` distance blocks hold at most ``max_block`` entries
    (or one row, if a row alone is larger)."""
    step = max(1, max_block // max(num_cols, 1))
    for start in range(0, num_rows, step):
        yield start, min(start + step, num_rows)


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖a_i − b_j‖ ``[len(a), len(b)]`` from differences, not ‖a‖² + ‖b‖² − 2ab, so equal points are exactly 0."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(features: np.ndarray | torch.Tensor, k: int, max_block: int = PR_BLOCK_ELEMENTS) -> torch.Tensor:
    """For each point, the distance to its k-th nearest *other* point of the set: float64 ``[N]``, N > k.

    (The k+1-th smallest distance in its row, the first being the point itself — Kynkäänniemi et al.'s
    convention, under which duplicated points count as neighbours at distance 0.)
    """
    f = _as_features(features)
    if not 1 <= k < len(f):
        raise ValueError(f"k-NN radii need k in [1, N−1] for N = {len(f)} points, got k = {k}")
    radii = torch.empty(len(f), dtype=torch.float64)
    for start, stop in row_blocks(len(f), len(f), max_block):
        radii[start:stop] = _distances(f[start:stop], f).kthvalue(k + 1, dim=1).values
    return radii


def fraction_in_manifold(queries: np.ndarray | torch.Tensor, centres: np.ndarray | torch.Tensor,
                         radii: torch.Tensor, max_block: int = PR_BLOCK_ELEMENTS) -> float:
    """Fraction of ``queries`` within ``radii[j]`` (inclusive) of at least one ``centres[j]``."""
    q, c = _as_features(queries), _as_features(centres)
    inside = 0
    for start, stop in row_blocks(len(q), len(c), max_block):
        inside += int((_distances(q[start:stop], c) <= radii[None, :]).any(dim=1).sum())
    return inside / len(q)


def precision_recall(real_features: np.ndarray | torch.Tensor, fake_features: np.ndarray | torch.Tensor,
                     k: int = 3, max_block: int = PR_BLOCK_ELEMENTS) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of ``fake`` against ``real`` features ``[N, D]``.

    precision = fraction of fake points inside some real point's k-NN ball;
    recall = fraction of real points inside some fake point's k-NN ball. Both sets need more than k points.
    Distances are computed in blocks of at most ``max_block`` entries, never as one N × N matrix.
    """
    precision = fraction_in_manifold(fake_features, real_features, knn_radii(real_features, k, max_block), max_block)
    recall = fraction_in_manifold(real_features, fake_features, knn_radii(fake_features, k, max_block), max_block)
    return precision, recall


# ---------------------------------------------------------------------------------------- memorisation
def nearest_neighbour_l2(queries: np.ndarray, references: np.ndarray,
                         chunk_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """For each uint8 query image, the L2 distance (pixels in [0, 1]) to its nearest reference and that index.

    The argmin comes from ‖a‖² + ‖b‖² − 2a·b with chunked float32 matmuls (fast); the returned distance is then
    recomputed exactly as ‖a − b‖ for the chosen pair, so identical images give exactly 0.
    """
    q = torch.from_numpy(queries.reshape(len(queries), -1)).float().div_(255.0)
    r = torch.from_numpy(references.reshape(len(references), -1)).float().div_(255.0)
    r_sq = (r * r).sum(1)  # ‖b‖², (M,)
    idx = torch.empty(len(q), dtype=torch.long)
    for start in range(0, len(q), chunk_size):
        qc = q[start:start + chunk_size]
        d2 = (qc * qc).sum(1, keepdim=True) + r_sq[None, :] - 2.0 * qc @ r.T  # (chunk, M)
        idx[start:start + chunk_size] = d2.argmin(1)
    idx = idx.numpy()
    diff = queries.reshape(len(queries), -1).astype(np.int32) - references.reshape(len(references), -1)[idx]
    dist = np.sqrt((diff.astype(np.float64) ** 2).sum(axis=1)) / 255.0  # exact, from the integer pixels
    return dist, idx


def memorisation_stats(sample_nn: np.ndarray, test_nn: np.ndarray, quantile: float) -> dict:
    """Fraction of samples closer to the training set than the ``quantile`` of held-out test digits are."""
    threshold = float(np.quantile(test_nn, quantile))
    return {
        "threshold_quantile": quantile,
        "threshold": threshold,
        "fraction_below_threshold": float((sample_nn < threshold).mean()),
        "expected_fraction_for_real": quantile,
        "nn_distance_median": float(np.median(sample_nn)),
        "nn_distance_min": float(sample_nn.min()),
        "test_nn_distance_median": float(np.median(test_nn)),
        "num_test_reference": int(len(test_nn)),
    }


# ---------------------------------------------------------------------------------------- all together
def label_accuracy(probs: np.ndarray | torch.Tensor, requested: np.ndarray | torch.Tensor) -> dict:
    """How often the classifier's argmax is the class that was asked for: overall and per requested class."""
    predicted = _probs(probs).argmax(axis=1)
    requested = np.asarray(requested, dtype=np.int64)
    if requested.shape != predicted.shape:
        raise ValueError(f"need one requested label per sample, got {requested.shape} for {predicted.shape}")
    hit = predicted == requested
    per_class = {int(c): float(hit[requested == c].mean()) for c in np.unique(requested)}
    return {"overall": float(hit.mean()), "per_class": per_class}


def load_mnist_reference() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The md5-verified MNIST digits the metrics compare against: uint8 train [60000, 28, 28], test
    [10000, 28, 28], and the train labels [60000] (for the floor of class-conditional samples)."""
    from dataset import load_mnist_idx

    train_images, train_labels = load_mnist_idx("train")
    test_images, _ = load_mnist_idx("test")
    return train_images, test_images, train_labels


def floor_digits(train_images: np.ndarray, n: int, seed: int, train_labels: np.ndarray | None = None,
                 labels: np.ndarray | None = None) -> np.ndarray:
    """The N training digits of the real-vs-real FID floor, a fixed draw for each (N, seed): random ones, or
    with ``labels [N]`` one digit of class ``labels[i]`` in place i (``train_labels`` gives the classes)."""
    rng = np.random.default_rng([seed, 0])
    if labels is None:
        return train_images[rng.choice(len(train_images), size=n, replace=False)]
    index = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        places, pool = np.flatnonzero(labels == c), np.flatnonzero(train_labels == c)
        if len(places) > len(pool):
            raise ValueError(f"the floor needs {len(places)} training digits of class {c}, there are {len(pool)}")
        index[places] = rng.choice(pool, size=len(places), replace=False)
    return train_images[index]


def nn_reference_digits(test_images: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The test digits that set the memorisation threshold (independent of N, so thresholds compare)."""
    size = min(size, len(test_images))
    return test_images[np.random.default_rng([seed, 1]).choice(len(test_images), size=size, replace=False)]


def pr_reference_indices(num_test: int, n: int, seed: int) -> np.ndarray:
    """Indices of the test digits that are precision/recall's real set at N = ``n``: min(n, num_test) of them,
    a fixed draw for each (n, seed)."""
    return np.random.default_rng([seed, 2]).choice(num_test, size=min(n, num_test), replace=False)


def compute_metrics(samples: np.ndarray, classifier: MNISTClassifier, train_images: np.ndarray, test_images: np.ndarray,
                    config: MetricsConfig | None = None, requested_labels: np.ndarray | None = None,
                    train_labels: np.ndarray | None = None) -> dict:
    """All metrics for uint8 ``samples [N, 28, 28]`` against MNIST (uint8 train and test images).

    ``requested_labels [N]``: the classes a conditional model was asked for; adds ``label_accuracy`` and draws the
    floor's digits with the same classes, which needs the training digits' ``train_labels``.
    Returns a JSON-ready dict (see the module docstring for the definitions).
    """
    config = config if config is not None else MetricsConfig()
    if samples.dtype != np.uint8 or samples.ndim != 3:
        raise ValueError(f"samples must be uint8 [N, H, W], got {samples.dtype} {samples.shape}")
    n = len(samples)
    if n < 2:
        raise ValueError(f"FID needs at least 2 samples, got {n}")
    if n > len(train_images):
        raise ValueError(f"the real-vs-real floor needs N <= {len(train_images)} training digits, got N = {n}")
    if requested_labels is not None and (train_labels is None or len(train_labels) != len(train_images)):
        raise ValueError("class-conditional samples need train_labels (one per training digit) for their floor")
    if requested_labels is not None and len(requested_labels) != n:
        raise ValueError(f"requested_labels has {len(requested_labels)} labels for {n} samples")
    real = floor_digits(train_images, n, config.seed, train_labels, requested_labels)
    nn_ref = nn_reference_digits(test_images, config.nn_reference_size, config.seed)

    def classify(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return classify_uint8(classifier, torch.from_numpy(images), config.batch_size)

    feats_test, _ = classify(test_images)
    feats_gen, probs_gen = classify(samples)
    feats_real, probs_real = classify(real)
    stats_test = gaussian_stats(feats_test)
    hist = class_histogram(probs_gen)

    sample_nn, _ = nearest_neighbour_l2(samples, train_images)
    test_nn, _ = nearest_neighbour_l2(nn_ref, train_images)

    # Precision/recall against N test digits (the FID's reference at the samples' N); None when N <= k.
    feats_pr_ref = feats_test[torch.from_numpy(pr_reference_indices(len(test_images), n, config.seed))]
    k = config.pr_k
    if min(n, len(feats_pr_ref)) > k:
        precision, recall = precision_recall(feats_pr_ref, feats_gen, k)
        precision_real, recall_real = precision_recall(feats_pr_ref, feats_real, k)
    else:
        logger.warning("precision/recall need more than k=%d samples and reference digits; got N = %d", k, n)
        precision = recall = precision_real = recall_real = None

    extra = {} if requested_labels is None else {"label_accuracy": label_accuracy(probs_gen, requested_labels)}
    return {
        "num_samples": n,
        "fid_reference": f"MNIST test set ({len(test_images)} digits)",
        "fid": frechet_distance(*gaussian_stats(feats_gen), *stats_test),
        "fid_real_floor": frechet_distance(*gaussian_stats(feats_real), *stats_test),
        "fid_real_floor_digits": "random training digits" if requested_labels is None
        else "training digits of the requested classes",
        "classifier_score": classifier_score(probs_gen),
        "classifier_score_real": classifier_score(probs_real),
        "mean_max_prob": mean_max_prob(probs_gen),
        "mean_max_prob_real": mean_max_prob(probs_real),
        "class_histogram": hist.tolist(),
        "effective_num_classes": effective_num_classes(hist),
        "effective_num_classes_real": effective_num_classes(class_histogram(probs_real)),
        "precision": precision,
        "recall": recall,
        "precision_real": precision_real,
        "recall_real": recall_real,
        "precision_recall_reference": f"{len(feats_pr_ref)} MNIST test digits, k = {k}",
        "memorisation": memorisation_stats(sample_nn, test_nn, config.nn_quantile),
        "metrics_config": asdict(config),
        **extra,
    }


def _cell(value: float | None) -> str:
    return f"{'–':>10}" if value is None else f"{value:>10.4f}"


def format_metrics_table(metrics: dict) -> str:
    """A plain-text table: each metric for the samples and for real digits at the same N."""
    n = metrics["num_samples"]
    mem = metrics["memorisation"]
    rows = [
        ("classifier-FID vs MNIST test (lower is better)", metrics["fid"], metrics["fid_real_floor"]),
        ("classifier score (1..10)", metrics["classifier_score"], metrics["classifier_score_real"]),
        ("mean max-probability", metrics["mean_max_prob"], metrics["mean_max_prob_real"]),
        ("effective number of classes", metrics["effective_num_classes"], metrics["effective_num_classes_real"]),
        (f"precision (k={metrics['metrics_config']['pr_k']}, vs test digits)", metrics["precision"],
         metrics["precision_real"]),
        (f"recall (k={metrics['metrics_config']['pr_k']}, vs test digits)", metrics["recall"], metrics["recall_real"]),
        (f"fraction with NN distance < {mem['threshold']:.3f}", mem["fraction_below_threshold"],
         mem["expected_fraction_for_real"]),
        ("median NN distance to train", mem["nn_distance_median"], mem["test_nn_distance_median"]),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{width}}  {'samples':>10}  {'real':>10}", "-" * (width + 24)]
    lines += [f"{name:<{width}}  {_cell(a)}  {_cell(b)}" for name, a, b in rows]
    hist = metrics["class_histogram"]
    lines.append(f"{'class histogram (0..9)':<{width}}  {' '.join(str(c) for c in hist)}")
    if "label_accuracy" in metrics:
        acc = metrics["label_accuracy"]
        lines.append(f"{'label accuracy (classifier agrees)':<{width}}  {acc['overall']:>10.4f}")
        lines.append(f"{'  per requested class':<{width}}  "
                     + " ".join(f"{c}:{a:.2f}" for c, a in acc["per_class"].items()))
    lines.append(f"N = {n} samples; 'real' = {n} random MNIST train digits (the FID floor at this N), "
                 f"NN reference = {mem['num_test_reference']} test digits, precision/recall against "
                 f"{metrics['precision_recall_reference']}")
    return "\n".join(lines)

