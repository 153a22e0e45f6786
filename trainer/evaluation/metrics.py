"""Classification metrics, computed from raw predictions.

Pure functions of (labels, probabilities) and of the confusion matrix, so that evaluation
(trainer.evaluation.evaluator), training's end-of-run report, calibration and the tests all compute
one definition of each number. Averages follow scikit-learn's conventions, so figures compare with
what users know: precision of a class never predicted is 0, F1 of a class with precision + recall
= 0 is 0, and macro averages run over the classes present in the labels or the predictions (a
class absent from the evaluation data and never predicted says nothing about the model).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence
import numpy as np
from effnet_common import fileio


DEFAULT_TOP_K = 5
CALIBRATION_BINS = 15


# The probability floor for the log loss, so one confident mistake is large but finite.
LOG_LOSS_EPSILON = 1e-7


CONFUSION_ORDERS = ("recall", "label")


def confusion_matrix(*, labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [C, C]: row = true class, column = predicted class."""
    flat = np.asarray(labels, np.int64) * num_classes + np.asarray(predictions, np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def top_k_indices(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Class indices [N, k], most probable first; ties go to the lower index, as tf.math.top_k."""
    order = np.argsort(-np.asarray(probabilities), axis=1, kind="stable")
    return order[:, :k]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, computed stably (the row maximum subtracted first)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """softmax over the last axis: the one used by the head fit, calibration and the audit's probe."""
    return np.exp(log_softmax(logits))


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """log p with p floored at LOG_LOSS_EPSILON (float64): what calibration treats as logits."""
    return np.log(np.maximum(np.asarray(probabilities, np.float64), LOG_LOSS_EPSILON))


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true class), p floored at LOG_LOSS_EPSILON: the report's and calibration's one log loss."""
    labels = np.asarray(labels, np.int64)
    true = np.asarray(probabilities, np.float64)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(true, LOG_LOSS_EPSILON))))


def safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def per_class_metrics(confusion: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-class precision, recall, F1, support (true count) and predicted count, each [C]."""
    true_positive = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = safe_ratio(true_positive, predicted)
    recall = safe_ratio(true_positive, support)
    f1 = safe_ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support,
            "predicted": predicted}


def expected_calibration_error(*, confidence: np.ndarray, correct: np.ndarray,
                               bins: int = CALIBRATION_BINS) -> float:
    """Top-1 ECE (Guo et al. 2017): the example-weighted gap between confidence and accuracy
    over equal-width confidence bins. A well calibrated model's 0.8 means right 80 % of the time."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(confidence[mask].mean() - correct[mask].mean())
    return float(total / max(len(confidence), 1))


def classification_metrics(*, labels: np.ndarray, probabilities: np.ndarray,
                           top_k: int = DEFAULT_TOP_K) -> dict:
    """The headline numbers of a classifier on labelled data.

    Args:
      labels: true class indices [N].
      probabilities: predicted class probabilities [N, C].
      top_k: k of the top-k accuracy; capped at C.

    Returns:
      A JSON-ready dict: num_examples, num_classes, top_k, accuracy, top_<k>_accuracy,
      macro/weighted precision, recall and F1, balanced_accuracy, log_loss,
      expected_calibration_error.
    """
    labels = np.asarray(labels, np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    n, num_classes = probabilities.shape
    if n == 0 or labels.shape != (n,):
        raise ValueError(f"need one label per prediction row, got {labels.shape} labels for {n} rows")
    k = max(1, min(int(top_k), num_classes))
    top = top_k_indices(probabilities, k)
    predictions = top[:, 0]
    confusion = confusion_matrix(labels=labels, predictions=predictions, num_classes=num_classes)
    per_class = per_class_metrics(confusion)
    present = (per_class["support"] + per_class["predicted"]) > 0
    weights = per_class["support"] / per_class["support"].sum()
    metrics = {
        "num_examples": int(n), "num_classes": int(num_classes), "top_k": k,
        "accuracy": float(np.mean(predictions == labels)),
        f"top_{k}_accuracy": float(np.mean((top == labels[:, None]).any(axis=1))),
        "balanced_accuracy": float(per_class["recall"][per_class["support"] > 0].mean()),
        "log_loss": log_loss(probabilities, labels),
        "expected_calibration_error": expected_calibration_error(
            confidence=probabilities[np.arange(n), predictions], correct=predictions == labels),
    }
    for name in ("precision", "recall", "f1"):
        metrics[f"macro_{name}"] = float(per_class[name][present].mean())
        metrics[f"weighted_{name}"] = float(np.sum(per_class[name] * weights))
    return metrics


def most_confused_pairs(confusion: np.ndarray, *, class_names: Sequence[str],
                        top: int = 20) -> List[dict]:
    """The largest off-diagonal cells: which true class is most often taken for which.

    Each entry: true, predicted, count, and fraction (of the true class's examples).
    """
    off = np.array(confusion, np.int64)
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:top]
    support = confusion.sum(axis=1)
    pairs = []
    for index in flat:
        true, predicted = divmod(int(index), off.shape[1])
        if off[true, predicted] == 0:
            break
        pairs.append({"true": class_names[true], "predicted": class_names[predicted],
                      "count": int(off[true, predicted]),
                      "fraction": float(off[true, predicted] / support[true])})
    return pairs


def per_class_csv(confusion: np.ndarray, *, class_names: Sequence[str]) -> str:
    """per_class.csv: class, precision, recall, f1, support, predicted, in label order."""
    m = per_class_metrics(confusion)
    rows = [(name, f"{m['precision'][i]:.6f}", f"{m['recall'][i]:.6f}", f"{m['f1'][i]:.6f}",
             int(m["support"][i]), int(m["predicted"][i])) for i, name in enumerate(class_names)]
    return fileio.csv_text(("class", "precision", "recall", "f1", "support", "predicted"), rows)


def confusion_order(confusion: np.ndarray, *, order: str = "recall") -> np.ndarray:
    """Class indices in display order: `recall` puts the worst-recognised classes first (their
    rows hold the confusions worth reading), `label` keeps labels.txt's order."""
    if order not in CONFUSION_ORDERS:
        raise ValueError(f"order={order!r}: choose one of {', '.join(CONFUSION_ORDERS)}")
    if order == "label":
        return np.arange(confusion.shape[0])
    return np.argsort(per_class_metrics(confusion)["recall"], kind="stable")


def scalar_metrics(metrics: Mapping) -> Dict[str, float]:
    """The top-level numbers of a metrics dict (booleans and nested values left out)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}
