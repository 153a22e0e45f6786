"""Multi-label figures as pure numpy functions: average precision, per-class decision thresholds,
and the report's metrics.

A multi-label head gives an independent probability per class; deciding which classes an image
holds needs a threshold per class. 0.5 is rarely the best one (a rare class's probabilities stay
low), so each class gets the threshold that maximizes its F1 on the validation split, as
scikit-learn's and Vertex AI's multi-label evaluations report per class. Mean average precision
(the mean over classes of the area under each precision-recall curve, computed as the average of
the precision at each positive's rank) needs no threshold at all: it is the figure to compare
models by.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.5


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Average precision of one class: the mean, over its positives, of the precision among the
    examples scored at least as high (ties broken against the class); NaN without positives."""
    positives = np.asarray(positives, bool)
    if not positives.any():
        return float("nan")
    order = np.lexsort((positives, -np.asarray(scores, np.float64)))  # by score, negatives first on ties
    hits = positives[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def best_threshold(scores: np.ndarray, positives: np.ndarray) -> float:
    """The threshold t maximizing F1 of `scores >= t` (the midpoint between the last score taken
    and the next one, so it generalizes a little better than the score itself);
    DEFAULT_THRESHOLD for a class without positives."""
    positives = np.asarray(positives, bool)
    if not positives.any():
        return DEFAULT_THRESHOLD
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    sorted_scores, hits = np.asarray(scores, np.float64)[order], positives[order]
    true_pos = np.cumsum(hits)
    f1 = 2 * true_pos / (np.arange(1, len(hits) + 1) + positives.sum())
    # Only cut where the score changes: a threshold cannot separate equal scores.
    cut = np.append(sorted_scores[1:] < sorted_scores[:-1], True)
    best = int(np.argmax(np.where(cut, f1, -1.0)))
    below = sorted_scores[best + 1] if best + 1 < len(sorted_scores) else 0.0
    return float((sorted_scores[best] + below) / 2)


def choose_thresholds(probabilities: np.ndarray, labels: np.ndarray) -> List[float]:
    """A threshold per class (label order), each maximizing that class's F1 on these examples."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels) > 0
    return [best_threshold(probabilities[:, c], labels[:, c]) for c in range(labels.shape[1])]


def _f1(tp, fp, fn) -> np.ndarray:
    tp, fp, fn = (np.asarray(v, np.float64) for v in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def per_class(probabilities: np.ndarray, labels: np.ndarray, thresholds: Sequence[float]) -> Dict[str, np.ndarray]:
    """Per class: average precision, precision, recall, F1 at its threshold, support, predicted."""
    labels = np.asarray(labels) > 0
    predicted = np.asarray(probabilities) >= np.asarray(thresholds)[None, :]
    tp = (predicted & labels).sum(0)
    fp = (predicted & ~labels).sum(0)
    fn = (~predicted & labels).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
    return {"average_precision": np.array([average_precision(probabilities[:, c], labels[:, c])
                                           for c in range(labels.shape[1])]),
            "precision": precision, "recall": recall, "f1": _f1(tp, fp, fn),
            "support": labels.sum(0), "predicted": predicted.sum(0), "tp": tp, "fp": fp, "fn": fn}


def metrics(probabilities: np.ndarray, labels: np.ndarray, thresholds: Sequence[float]) -> dict:
    """The multi-label report's headline figures (metrics.json).

    mean_average_precision averages over the classes that have a positive here; micro F1 pools
    every (image, class) decision, macro F1 averages the per-class F1 (classes with support);
    subset_accuracy is the fraction of images whose predicted set is exactly right.
    """
    labels = np.asarray(labels) > 0
    table = per_class(probabilities, labels, thresholds)
    present = table["support"] > 0
    predicted = np.asarray(probabilities) >= np.asarray(thresholds)[None, :]
    tp, fp, fn = table["tp"].sum(), table["fp"].sum(), table["fn"].sum()
    return {
        "multi_label": True,
        "num_examples": int(len(labels)),
        "num_classes": int(labels.shape[1]),
        "mean_average_precision": float(np.nanmean(table["average_precision"][present])) if present.any() else 0.0,
        "micro_precision": float(tp / max(tp + fp, 1)),
        "micro_recall": float(tp / max(tp + fn, 1)),
        "micro_f1": float(_f1(tp, fp, fn)),
        "macro_f1": float(table["f1"][present].mean()) if present.any() else 0.0,
        "subset_accuracy": float((predicted == labels).all(axis=1).mean()) if len(labels) else 0.0,
        "labels_per_image": float(labels.sum(1).mean()) if len(labels) else 0.0,
        "thresholds": [float(t) for t in thresholds],
    }
