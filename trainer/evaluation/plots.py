"""Learning-curve plots, drawn with matplotlib's headless Agg backend and written via gfile."""
from __future__ import annotations

import io
from typing import List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from effnet_common import fileio  # pylint: disable=wrong-import-position
import math
from typing import Sequence, Tuple
import numpy as np
from trainer.evaluation import metrics


def plot_learning_curves(history: List[dict], path: str) -> None:
    """Loss and accuracy over the epochs of all phases, with each phase boundary marked."""
    if not history:
        return
    steps = list(range(1, len(history) + 1))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [h.get(prefix + metric) for h in history]
            if any(v is not None for v in values):
                ax.plot(steps, [float("nan") if v is None else v for v in values], style, marker="o",
                        label=("validation " if prefix else "training ") + metric)
        for i in range(1, len(history)):
            if history[i]["phase"] != history[i - 1]["phase"]:
                ax.axvline(i + 0.5, color="gray", linestyle=":")
                ax.text(i + 0.6, ax.get_ylim()[1], history[i]["phase"], va="top", fontsize=8, color="gray")
        ax.set_xlabel("epoch (all phases)")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: str) -> None:
    """Renders `fig` to PNG and writes it atomically (local or gs://)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    fileio.write_bytes_atomic(path, buf.getvalue())


# Beyond this many classes the confusion matrix shows every n-th label only, and beyond
# ANNOTATE_MAX_CLASSES its cells carry no numbers: text would overlap and read as noise.
MAX_TICK_LABELS = 40


ANNOTATE_MAX_CLASSES = 15


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
    idx = metrics.confusion_order(confusion, order=order)
    counts = confusion[np.ix_(idx, idx)]
    normalised = metrics.safe_ratio(counts, np.broadcast_to(counts.sum(axis=1, keepdims=True), counts.shape))
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
    save_figure(fig, path)
    return [names[i] for i in ticks]


def plot_reliability(*, confidence: np.ndarray, correct: np.ndarray, path: str,
                     bins: int = metrics.CALIBRATION_BINS, title: str = "") -> None:
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
    save_figure(fig, path)


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
    save_figure(fig, path)
