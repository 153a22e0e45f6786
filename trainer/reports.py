"""Classification metrics and report plots, computed from raw predictions.

Pure functions of (labels, probabilities) and of the confusion matrix, so that evaluation
(`trainer.evaluate`), training's end-of-run report and the tests all compute one definition of
each number. Averages follow scikit-learn's conventions, so figures compare with what users
know: precision of a class never predicted is 0, F1 of a class with precision + recall = 0 is 0,
and macro averages run over the classes present in the labels or the predictions (a class absent
from the evaluation data and never predicted says nothing about the model).

Plots use matplotlib's headless Agg backend (through `trainer.plots`) and are written atomically
with `plots.save_figure`; `write_tensorboard` puts the scalars and the PNGs into a TensorBoard
log.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from trainer import plots
from trainer.plots import plt

DEFAULT_TOP_K = 5
CALIBRATION_BINS = 15
# The probability floor for the log loss, so one confident mistake is large but finite.
LOG_LOSS_EPSILON = 1e-7
# Beyond this many classes the confusion matrix shows every n-th label only, and beyond
# ANNOTATE_MAX_CLASSES its cells carry no numbers: text would overlap and read as noise.
MAX_TICK_LABELS = 40
ANNOTATE_MAX_CLASSES = 15
CONFUSION_ORDERS = ("recall", "label")


# --------------------------------------------------------------------------- metrics

def top_k_indices(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Class indices [N, k], most probable first; ties go to the lower index, as tf.math.top_k."""
    order = np.argsort(-np.asarray(probabilities), axis=1, kind="stable")
    return order[:, :k]


def confusion_matrix(*, labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [C, C]: row = true class, column = predicted class."""
    flat = np.asarray(labels, np.int64) * num_classes + np.asarray(predictions, np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def per_class_metrics(confusion: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-class precision, recall, F1, support (true count) and predicted count, each [C]."""
    true_positive = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _ratio(true_positive, predicted)
    recall = _ratio(true_positive, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
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
    true_probability = probabilities[np.arange(n), labels]
    metrics = {
        "num_examples": int(n), "num_classes": int(num_classes), "top_k": k,
        "accuracy": float(np.mean(predictions == labels)),
        f"top_{k}_accuracy": float(np.mean((top == labels[:, None]).any(axis=1))),
        "balanced_accuracy": float(per_class["recall"][per_class["support"] > 0].mean()),
        "log_loss": float(-np.mean(np.log(np.maximum(true_probability, LOG_LOSS_EPSILON)))),
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


# --------------------------------------------------------------------------- tables

def csv_text(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A CSV document (RFC 4180 quoting, so class names with commas survive)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def per_class_csv(confusion: np.ndarray, *, class_names: Sequence[str]) -> str:
    """per_class.csv: class, precision, recall, f1, support, predicted, in label order."""
    m = per_class_metrics(confusion)
    rows = [(name, f"{m['precision'][i]:.6f}", f"{m['recall'][i]:.6f}", f"{m['f1'][i]:.6f}",
             int(m["support"][i]), int(m["predicted"][i])) for i, name in enumerate(class_names)]
    return csv_text(("class", "precision", "recall", "f1", "support", "predicted"), rows)


# --------------------------------------------------------------------------- plots

def confusion_order(confusion: np.ndarray, *, order: str = "recall") -> np.ndarray:
    """Class indices in display order: `recall` puts the worst-recognised classes first (their
    rows hold the confusions worth reading), `label` keeps labels.txt's order."""
    if order not in CONFUSION_ORDERS:
        raise ValueError(f"order={order!r}: choose one of {', '.join(CONFUSION_ORDERS)}")
    if order == "label":
        return np.arange(confusion.shape[0])
    return np.argsort(per_class_metrics(confusion)["recall"], kind="stable")


def _thinned_ticks(count: int, max_labels: int) -> np.ndarray:
    return np.arange(0, count, max(1, math.ceil(count / max_labels)))


def plot_confusion_matrix(confusion: np.ndarray, *, class_names: Sequence[str], path: str,
                          order: str = "recall", max_labels: int = MAX_TICK_LABELS,
                          title: str = "") -> List[str]:
    """Row-normalised confusion matrix (each row: where a true class's examples went).

    Readable with hundreds of classes: rows and columns sorted by `order`, at most `max_labels`
    tick labels per axis (every n-th class), a square-root colour scale so that a 2 % confusion
    is still visible next to the diagonal, and numbers in the cells only for a few classes.

    Returns:
      The class names labelled on each axis, top to bottom.
    """
    from matplotlib import colors  # pylint: disable=import-outside-toplevel
    idx = confusion_order(confusion, order=order)
    counts = confusion[np.ix_(idx, idx)]
    normalised = _ratio(counts, np.broadcast_to(counts.sum(axis=1, keepdims=True), counts.shape))
    c = len(idx)
    side = float(np.clip(3.0 + 0.16 * c, 5.0, 22.0))
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(normalised, cmap="Blues", norm=colors.PowerNorm(0.5, vmin=0.0, vmax=1.0),
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ticks = _thinned_ticks(c, max_labels)
    fontsize = 9 if c <= max_labels else 7
    names = [class_names[i] for i in idx]
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class" + (f" (every {ticks[1] - ticks[0]}th label shown)" if len(ticks) > 1
                                  and ticks[1] > 1 else ""))
    if c <= ANNOTATE_MAX_CLASSES:
        for (row, col), value in np.ndenumerate(normalised):
            if counts[row, col]:
                ax.text(col, row, f"{value:.0%}", ha="center", va="center", fontsize=8,
                        color="white" if value > 0.5 else "black")
    ax.set_title(title or f"confusion matrix, {c} classes, sorted by {order}")
    fig.tight_layout()
    plots.save_figure(fig, path)
    return [names[i] for i in ticks]


def plot_reliability(*, confidence: np.ndarray, correct: np.ndarray, path: str,
                     bins: int = CALIBRATION_BINS, title: str = "") -> None:
    """Reliability diagram: accuracy against mean confidence per equal-width confidence bin (bar
    width = the bin's share of the examples); a calibrated model sits on the diagonal."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for b in range(bins):
        mask = which == b
        if mask.any():
            ax.bar(confidence[mask].mean(), correct[mask].mean(), width=max(0.01, mask.mean() / 2),
                   color="tab:blue", alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "reliability")
    fig.tight_layout()
    plots.save_figure(fig, path)


def plot_image_grid(images: Sequence[Tuple[bytes, str, bool]], *, path: str, columns: int = 5,
                    thumbnail: int = 160) -> None:
    """Encoded images in a grid, each captioned (e.g. 'true -> predicted'); captions flagged
    True (e.g. misclassified) are red, so the mistakes stand out among the near misses."""
    from PIL import Image, ImageOps  # pylint: disable=import-outside-toplevel
    rows = max(1, math.ceil(len(images) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (encoded, caption, flagged) in zip(axes.flat, images):
        with Image.open(io.BytesIO(encoded)) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")  # upright, as the model saw it
            im.thumbnail((thumbnail, thumbnail))
            ax.imshow(np.asarray(im))
        ax.set_title(caption, fontsize=7, color="tab:red" if flagged else "black")
    fig.tight_layout()
    plots.save_figure(fig, path)


# --------------------------------------------------------------------------- TensorBoard

def scalar_metrics(metrics: Mapping) -> Dict[str, float]:
    """The top-level numbers of a metrics dict (booleans and nested values left out)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}


def _pairs_markdown(pairs: Sequence[Mapping]) -> str:
    lines = ["| true | predicted | count | fraction of true |", "|---|---|---|---|"]
    lines += [f"| {p['true']} | {p['predicted']} | {p['count']} | {p['fraction']:.1%} |" for p in pairs]
    return "\n".join(lines)


def write_tensorboard(log_dir: str, *, metrics: Mapping, images: Optional[Mapping[str, str]] = None,
                      step: int = 0, prefix: str = "eval") -> None:
    """Writes a report to a TensorBoard log: its numbers as scalars, PNGs as images, and the
    most-confused pairs as a text table, all under `prefix/`.

    Args:
      log_dir: the event folder (local or gs://), e.g. MODEL_DIR/logs/eval.
      metrics: a metrics dict (as `classification_metrics` or metrics.json).
      images: tag -> path of a PNG (local or gs://), e.g. the confusion matrix.
      step: the step the summaries are recorded at (e.g. the epoch count of the run).
      prefix: the tag prefix.
    """
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default(step=step):
        for name, value in sorted(scalar_metrics(metrics).items()):
            tf.summary.scalar(f"{prefix}/{name}", value)
        for tag, png_path in sorted((images or {}).items()):
            with tf.io.gfile.GFile(png_path, "rb") as f:
                pixels = tf.image.decode_png(f.read(), channels=3)
            tf.summary.image(f"{prefix}/{tag}", pixels[None])
        if metrics.get("most_confused"):
            tf.summary.text(f"{prefix}/most_confused", _pairs_markdown(metrics["most_confused"]))
    writer.flush()
    writer.close()
