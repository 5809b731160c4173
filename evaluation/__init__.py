"""Evaluating a trained DDPM: the MNIST classifier behind the metrics, the metrics, and the `--eval-ddpm-model` CLI.

``evaluation.cli`` is not imported here (it pulls in the training package); import it explicitly.
"""

from evaluation.classifier import (
    DEFAULT_CLASSIFIER_PATH,
    ClassifierConfig,
    MNISTClassifier,
    classify_uint8,
    load_classifier,
    save_classifier,
)
from evaluation.metrics import (
    MetricsConfig,
    class_histogram,
    classifier_score,
    compute_metrics,
    effective_num_classes,
    fid_from_features,
    format_metrics_table,
    frechet_distance,
    gaussian_stats,
    mean_max_prob,
    nearest_neighbour_l2,
    precision_recall,
    trace_sqrt_product,
)

__all__ = [
    "DEFAULT_CLASSIFIER_PATH",
    "ClassifierConfig",
    "MNISTClassifier",
    "MetricsConfig",
    "class_histogram",
    "classifier_score",
    "classify_uint8",
    "compute_metrics",
    "effective_num_classes",
    "fid_from_features",
    "format_metrics_table",
    "frechet_distance",
    "gaussian_stats",
    "load_classifier",
    "mean_max_prob",
    "nearest_neighbour_l2",
    "precision_recall",
    "save_classifier",
    "trace_sqrt_product",
]
