"""A split's report through an export (the library of `python -m trainer.evaluate`, also the
run's end-of-training report): metrics.json, per-class and confusion tables, the most confused
pairs, the worst images, a reliability diagram, and their TensorBoard summary."""
from __future__ import annotations

import dataclasses
import heapq
import itertools
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union
from absl import logging
import numpy as np
import tensorflow as tf  # pylint: disable=wrong-import-order
from effnet_common import fileio
from trainer.data import discovery
from trainer.evaluation import metrics as metrics_lib, multilabel, plots
from trainer.inference import exported, labelled, prediction


DEFAULT_BATCH_SIZE = prediction.DEFAULT_BATCH_SIZE


DEFAULT_WORST = 25


DEFAULT_PAIRS = 20


METRICS_FILE = "metrics.json"


PER_CLASS_FILE = "per_class.csv"


CONFUSION_CSV = "confusion_matrix.csv"


CONFUSION_PNG = "confusion_matrix.png"


RELIABILITY_PNG = "reliability.png"


PAIRS_FILE = "confused_pairs.csv"


WORST_CSV = "worst.csv"


WORST_PNG = "worst_images.png"


# The same images with their Grad-CAM overlays, where the report has the Keras model (a run's).
WORST_EXPLAINED_PNG = "worst_explained.png"


SKIPPED_FILE = "skipped.csv"


# TensorBoard image tag -> report file, for `report_images`.
REPORT_IMAGES = {"confusion_matrix": CONFUSION_PNG, "worst_images": WORST_PNG, "worst_explained": WORST_EXPLAINED_PNG,
                 "reliability": RELIABILITY_PNG}


@dataclasses.dataclass
class Evaluation:
    """Raw answers of the export on labelled data: row i belongs to ids[i]."""
    export_dir: str
    class_names: Tuple[str, ...]
    ids: List[str]
    labels: np.ndarray  # int [N], or multi-hot [N, C] for a multi-label export
    probabilities: np.ndarray
    skipped: List[Tuple[str, str]]
    # The worst-classified examples, worst first: (id, label, probabilities row, encoded image).
    worst: List[Tuple[str, Union[int, np.ndarray], np.ndarray, bytes]]
    thresholds: Optional[np.ndarray] = None  # a multi-label export's per-class thresholds


def _badness(label, probs: np.ndarray) -> float:
    """How wrong one answer is: minus the true class's probability, or for a multi-hot label
    the binary cross-entropy summed over the classes."""
    if np.ndim(label) == 0:
        return -float(probs[label])
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-(label * np.log(p) + (1 - label) * np.log(1 - p)).sum())


class _WorstKeeper:
    """Keeps the `n` worst-classified examples (`_badness`), with their bytes, so the report can
    show them without holding every image of the data in memory."""

    def __init__(self, n: int):
        self.n, self.heap, self.counter = n, [], itertools.count()

    def add(self, ids, labels, probabilities, images) -> None:
        for ident, label, probs, image in zip(ids, labels, probabilities, images):
            heapq.heappush(self.heap, (_badness(label, probs), next(self.counter), ident, label, probs, image))
            if len(self.heap) > self.n:
                heapq.heappop(self.heap)

    def worst_first(self) -> List[Tuple[str, int, np.ndarray, bytes]]:
        return [(ident, label, probs, image) for _, _, ident, label, probs, image in sorted(self.heap, reverse=True)]


def evaluate(model: Union[str, exported.Export], *, data_path: str, label_offset: int = 0,
             batch_size: int = DEFAULT_BATCH_SIZE, worst: int = DEFAULT_WORST,
             known_count: Optional[int] = None, max_image_side: int = 0) -> Evaluation:
    """Runs the export's serving_default over the labelled data at `data_path` (`known_count`:
    its records' count from a check already made, see `labelled.labelled_batches`).

    Memory: the probabilities of every example (N x C float32: 200 MB for 50,000 images of
    1,000 classes) and the bytes of the `worst` worst examples.
    """
    # The data is checked before the export loads (seconds to minutes), so a typo fails fast.
    thresholds = model.thresholds if isinstance(model, exported.Export) else exported.export_thresholds(model)
    total, batches = labelled.labelled_batches(data_path, class_names=exported.class_names_of(model),
                                      label_offset=label_offset, batch_size=batch_size,
                                      multi_label=thresholds is not None, known_count=known_count,
                                      max_image_side=max_image_side)
    export = exported.as_export(model)
    keys, probabilities, skipped, keeper = [], [], [], _WorstKeeper(worst)
    for batch in prediction.run_batches(export, batches, total=total):
        keeper.add([ident for ident, _ in batch.keys], [label for _, label in batch.keys],
                   batch.probabilities, batch.images)
        keys += batch.keys
        probabilities.append(batch.probabilities)
        skipped += [(ident, why) for (ident, _), why in batch.skipped]
    width = len(export.class_names)
    labels = [label for _, label in keys]
    if thresholds is not None:
        labels = np.stack(labels) if labels else np.zeros((0, width), np.float32)
    return Evaluation(
        export_dir=export.export_dir, class_names=export.class_names, ids=[ident for ident, _ in keys],
        labels=np.asarray(labels, np.float32 if thresholds is not None else np.int64),
        probabilities=prediction.stack_rows(probabilities, width=width),
        skipped=skipped, worst=keeper.worst_first(), thresholds=thresholds)


def _confusion_csv(confusion: np.ndarray, class_names: Sequence[str]) -> str:
    rows = [[name] + [int(v) for v in confusion[i]] for i, name in enumerate(class_names)]
    return fileio.csv_text(["true \\ predicted"] + list(class_names), rows)


def _label_text(label, class_names: Sequence[str], *, probs: Optional[np.ndarray] = None,
                thresholds: Optional[np.ndarray] = None) -> str:
    """A label as text: the class name, or a multi-hot row (or the classes over their
    thresholds) as names joined by '|'."""
    if probs is not None:
        return "|".join(n for n, p, t in zip(class_names, probs, thresholds) if p >= t)
    if np.ndim(label) == 0:
        return class_names[int(label)]
    return "|".join(n for n, v in zip(class_names, label) if v > 0)


def _worst_rows(ev: Evaluation, class_names: Sequence[str]) -> List[list]:
    rows = []
    for ident, label, probs, _ in ev.worst:
        if ev.thresholds is not None:
            rows.append([ident, _label_text(label, class_names),
                         _label_text(label, class_names, probs=probs, thresholds=ev.thresholds),
                         f"{_badness(label, probs):.6f}", f"{probs.max():.6f}"])
            continue
        predicted = int(np.argmax(probs))
        rows.append([ident, class_names[label], class_names[predicted], f"{probs[label]:.6f}",
                     f"{probs[predicted]:.6f}"])
    return rows


def _write_worst(ev: Evaluation, *, class_names: Sequence[str], output_dir: str,
                 explain: Optional[Callable[[Sequence[bytes]], Sequence[bytes]]] = None) -> None:
    """worst.csv, and worst_images.png when there is any example to show (and with `explain`,
    worst_explained.png: the same tiles as its overlays)."""
    multi = ev.thresholds is not None
    header = ("image", "true", "predicted") + (("log_loss", "max_probability") if multi else
                                               ("true_probability", "predicted_probability"))
    rows = _worst_rows(ev, class_names)
    fileio.write_text_atomic(fileio.join(output_dir, WORST_CSV), fileio.csv_text(header, rows))
    if not rows:
        return
    figure = "loss" if multi else "p(true)"
    tiles = [(image, f"{os.path.basename(r[0])[:24]}\n{r[1]} -> {r[2]}\n{figure}={float(r[3]):.2f}", r[1] != r[2])
             for (_, _, _, image), r in zip(ev.worst, rows)]
    plots.plot_image_grid(tiles, path=fileio.join(output_dir, WORST_PNG))
    if explain:
        overlays = explain([image for image, _, _ in tiles])
        plots.plot_image_grid([(png, caption, flagged) for png, (_, caption, flagged) in zip(overlays, tiles)],
                              path=fileio.join(output_dir, WORST_EXPLAINED_PNG))


def _write_tables(confusion: np.ndarray, *, class_names: Sequence[str], pairs: List[dict],
                  output_dir: str) -> None:
    fileio.write_text_atomic(fileio.join(output_dir, PER_CLASS_FILE),
                             metrics_lib.per_class_csv(confusion, class_names=class_names))
    fileio.write_text_atomic(fileio.join(output_dir, CONFUSION_CSV), _confusion_csv(confusion, class_names))
    fileio.write_text_atomic(fileio.join(output_dir, PAIRS_FILE), fileio.csv_text(
        ("true", "predicted", "count", "fraction"),
        [(p["true"], p["predicted"], p["count"], f"{p['fraction']:.6f}") for p in pairs]))


def write_report(model: Union[str, exported.Export], *, data_path: str, output_dir: str,
                 batch_size: int = DEFAULT_BATCH_SIZE, label_offset: int = 0,
                 top_k: int = metrics_lib.DEFAULT_TOP_K, worst: int = DEFAULT_WORST,
                 extra_metrics: Optional[dict] = None, known_count: Optional[int] = None,
                 max_image_side: int = 0,
                 explain: Optional[Callable[[Sequence[bytes]], Sequence[bytes]]] = None) -> dict:
    """Evaluates the export on labelled data and writes the report into `output_dir`.

    Args:
      model: an export folder, a MODEL_DIR (its newest export), or a loaded `exported.Export`.
      data_path: TFRecord glob or class-folder tree (local or gs://).
      output_dir: where the report goes (local or gs://).
      batch_size: images per serving call.
      label_offset: subtracted from TFRecord labels (1 for Google's ImageNet shards).
      top_k: k of the top-k accuracy.
      worst: how many worst-classified images to list and show.
      extra_metrics: merged into metrics.json (the run's calibration: temperature, ECE before).
      known_count: the data's record count from a check already made (a training run's data
        inspection): the data is not scanned again before the pass.
      max_image_side: a folder's photos over this side are downscaled first, as prepare stores
        records (0: as they are); records are read as stored.
      explain: encoded images -> their Grad-CAM overlays as encoded images, for
        worst_explained.png (trainer.analysis.gradcam.Explainer.overlay_pngs of the export's
        Keras model; the export alone has no gradients to give).

    Returns:
      The metrics, as written to metrics.json.

    Raises:
      DataError: bad data path, unknown classes or labels, or no decodable example.
      PredictError: no usable export at `model`.
    """
    ev = evaluate(model, data_path=data_path, label_offset=label_offset, batch_size=batch_size, worst=worst,
                  known_count=known_count, max_image_side=max_image_side)
    if not ev.ids:
        raise discovery.DataError(f"--data {data_path}: none of its {len(ev.skipped)} image(s) could be decoded; "
                             "check the files are JPEG, PNG, GIF, BMP or WebP")
    if ev.thresholds is not None:
        metrics = _multi_label_tables(ev, output_dir=output_dir)
    else:
        metrics = _single_label_tables(ev, output_dir=output_dir, top_k=top_k)
    missing = _classes_without_examples(ev)
    metrics.update(export_dir=ev.export_dir, data=data_path, skipped_images=len(ev.skipped),
                   classes_without_examples=missing, **(extra_metrics or {}))
    if ev.skipped:
        fileio.write_text_atomic(fileio.join(output_dir, SKIPPED_FILE),
                                 fileio.csv_text(("image", "reason"), ev.skipped))
    _write_worst(ev, class_names=ev.class_names, output_dir=output_dir, explain=explain)
    fileio.write_json_atomic(fileio.join(output_dir, METRICS_FILE), metrics)
    logging.info("report for %d example(s) (%d skipped) written to %s", len(ev.ids), len(ev.skipped), output_dir)
    return metrics


def _classes_without_examples(ev: Evaluation) -> List[str]:
    """The export's classes no example of the data holds (logged: their figures are empty)."""
    support = ev.labels.sum(axis=0) if ev.labels.ndim == 2 else np.bincount(ev.labels, minlength=len(ev.class_names))
    missing = [name for name, n in zip(ev.class_names, support) if n == 0]
    if missing:
        logging.warning("%d class(es) have no example in the evaluated data (%s): their recall and F1 are "
                        "not measured", len(missing), ", ".join(missing[:5]))
    return missing


def _single_label_tables(ev: Evaluation, *, output_dir: str, top_k: int) -> dict:
    """metrics (accuracy, F1, calibration...), per_class.csv, the confusion matrix and pairs, the
    reliability diagram."""
    names = ev.class_names
    metrics = metrics_lib.classification_metrics(labels=ev.labels, probabilities=ev.probabilities, top_k=top_k)
    confusion = metrics_lib.confusion_matrix(labels=ev.labels, predictions=np.argmax(ev.probabilities, axis=1),
                                         num_classes=len(names))
    pairs = metrics_lib.most_confused_pairs(confusion, class_names=names, top=DEFAULT_PAIRS)
    metrics["most_confused"] = pairs
    _write_tables(confusion, class_names=names, pairs=pairs, output_dir=output_dir)
    plots.plot_confusion_matrix(confusion, class_names=names, path=fileio.join(output_dir, CONFUSION_PNG),
                                  title=f"{len(names)} classes, accuracy {metrics['accuracy']:.1%}, "
                                        "rows sorted by recall")
    top1 = np.argmax(ev.probabilities, axis=1)
    plots.plot_reliability(confidence=ev.probabilities.max(axis=1), correct=top1 == ev.labels,
                             path=fileio.join(output_dir, RELIABILITY_PNG),
                             title=f"reliability, ECE {metrics['expected_calibration_error']:.3f}")
    return metrics


def _multi_label_tables(ev: Evaluation, *, output_dir: str) -> dict:
    """metrics (mAP, micro/macro F1 at the export's thresholds) and per_class.csv."""
    metrics = multilabel.metrics(ev.probabilities, ev.labels, ev.thresholds)
    table = multilabel.per_class(ev.probabilities, ev.labels, ev.thresholds)
    header = ("class", "average_precision", "threshold", "precision", "recall", "f1", "support", "predicted")
    rows = [(name, "" if np.isnan(table["average_precision"][c]) else f"{table['average_precision'][c]:.6f}",
             f"{ev.thresholds[c]:.6f}", f"{table['precision'][c]:.6f}", f"{table['recall'][c]:.6f}",
             f"{table['f1'][c]:.6f}", int(table["support"][c]), int(table["predicted"][c]))
            for c, name in enumerate(ev.class_names)]
    fileio.write_text_atomic(fileio.join(output_dir, PER_CLASS_FILE), fileio.csv_text(header, rows))
    return metrics


def report_images(output_dir: str) -> Dict[str, str]:
    """TensorBoard tag -> PNG path of a written report, for `reports.write_tensorboard`."""
    found = {tag: fileio.join(output_dir, name) for tag, name in REPORT_IMAGES.items()}
    return {tag: path for tag, path in found.items() if tf.io.gfile.exists(path)}


def summary_lines(metrics: dict) -> List[str]:
    """The headline numbers for a terminal."""
    if metrics.get("multi_label"):
        return [f"examples: {metrics['num_examples']} ({metrics['skipped_images']} skipped), classes: "
                f"{metrics['num_classes']}, multi-label ({metrics['labels_per_image']:.2f} labels per image)",
                f"mAP: {metrics['mean_average_precision']:.4f}  micro F1: {metrics['micro_f1']:.4f}  "
                f"macro F1: {metrics['macro_f1']:.4f}  subset accuracy: {metrics['subset_accuracy']:.4f}"]
    k = metrics["top_k"]
    lines = [f"examples: {metrics['num_examples']} ({metrics['skipped_images']} skipped), "
             f"classes: {metrics['num_classes']}",
             f"accuracy: {metrics['accuracy']:.4f}  top-{k}: {metrics[f'top_{k}_accuracy']:.4f}  "
             f"macro F1: {metrics['macro_f1']:.4f}  weighted F1: {metrics['weighted_f1']:.4f}"]
    lines += [f"confused: {p['true']} -> {p['predicted']} x{p['count']} ({p['fraction']:.1%} of {p['true']})"
              for p in metrics["most_confused"][:5]]
    return lines
