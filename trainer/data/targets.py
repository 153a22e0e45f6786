"""What the head learns to predict: the labels' form, the loss, the metrics, the class weights.

Single-label data: one integer label per image, a softmax head, categorical cross-entropy and
accuracy. Multi-label data (`image/class/label` repeated, docs/data.md): a multi-hot vector per
image, an independent sigmoid per class, binary cross-entropy; `accuracy` is then the per-class
binary accuracy.

Class weights are per-example weights that the input pipelines attach to each training batch
(images and the frozen phase's embedding cache alike), so they hold under every strategy. Keras'
own `class_weight` argument of `fit` is rejected or silently ignored with distributed datasets
(tensorflow/tensorflow#41290, #37575, #33550). `balanced` weighs class c by N / (C * n_c), the
rule of scikit-learn's `compute_class_weight("balanced")`: every class then carries the same
total weight, and the mean weight over single-label examples is 1, so learning rates keep their
meaning.
"""
from __future__ import annotations

import csv
import io
import json
from typing import Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras as keras

from effnet_common import fileio
from trainer.data.discovery import DataError


def multi_hot(indices: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Class indices [n] (n >= 0) -> float32 [C] with ones at those classes."""
    hot = tf.one_hot(tf.cast(indices, tf.int32), num_classes, dtype=tf.float32)
    return tf.reduce_max(tf.concat([hot, tf.zeros([1, num_classes])], 0), axis=0)


# --------------------------------------------------------------------------- class weights

def balanced_weights(counts: Sequence[int], *, num_examples: int) -> Tuple[float, ...]:
    """N / (C * n_c) per class; a class without examples gets 0 (nothing to weigh)."""
    num_classes = len(counts)
    return tuple(float(num_examples) / (num_classes * n) if n else 0.0 for n in counts)


def read_weights_file(path: str, *, class_names: Sequence[str]) -> Tuple[float, ...]:
    """A per-class weights file: a JSON object {"class": weight, ...} or CSV rows class,weight.
    Classes it leaves out weigh 1.

    Raises:
      DataError: a missing file, a class labels.txt does not name, a weight that is no
        non-negative number.
    """
    if not fileio.exists(path):
        raise DataError(f"--class_weight={path}: no such file; pass none, balanced, or a JSON/CSV file of "
                        "class,weight pairs")
    text = fileio.read_text(path)
    try:
        pairs = list(json.loads(text).items()) if text.lstrip().startswith("{") else [
            (row[0].strip(), row[1]) for row in csv.reader(io.StringIO(text)) if row and row[0].strip()
            and row[0].strip().lower() != "class"]
    except (ValueError, IndexError, AttributeError) as e:
        raise DataError(f"--class_weight={path} is neither a JSON object nor class,weight rows ({e})") from None
    weights = dict.fromkeys(class_names, 1.0)
    for name, value in pairs:
        if name not in weights:
            raise DataError(f"--class_weight={path} names class {name!r}, which labels.txt does not list")
        try:
            weights[name] = float(value)
        except (TypeError, ValueError):
            weights[name] = -1.0
        if not weights[name] >= 0:
            raise DataError(f"--class_weight={path}: the weight of {name!r} is {value!r}; pass a number >= 0")
    return tuple(weights[name] for name in class_names)


def resolve_class_weights(setting: str, *, class_names: Sequence[str], counts: Optional[Sequence[int]],
                          num_examples: Optional[int]) -> Optional[Tuple[float, ...]]:
    """The weight per class that --class_weight asks for, or None for none.

    Raises:
      DataError: balanced without known class counts, or a bad weights file.
    """
    if setting in ("", "none"):
        return None
    if setting == "balanced":
        if counts is None or not num_examples:
            raise DataError("--class_weight=balanced needs the class counts of --train_data, which are unknown "
                            "for shards this large without dataset.json: pass a per-class weights file")
        return balanced_weights(counts, num_examples=num_examples)
    return read_weights_file(setting, class_names=class_names)


def example_weights(labels: tf.Tensor, class_weights: Sequence[float]) -> tf.Tensor:
    """Per-example weights [B] for a batch of labels: the weight of the example's class; for
    multi-hot labels [B, C], the largest weight among its classes (1 for an image with none), so
    that an image holding a rare class counts as that class does."""
    table = tf.constant(class_weights, tf.float32)
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 1:
        return tf.gather(table, tf.cast(labels, tf.int32))
    positive = tf.cast(labels, tf.float32) * table
    return tf.where(tf.reduce_any(labels > 0, axis=-1), tf.reduce_max(positive, axis=-1), 1.0)


# --------------------------------------------------------------------------- loss and metrics

class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy with label smoothing on integer labels (Keras 2's sparse loss
    has no label smoothing)."""

    def __init__(self, *, num_classes: int, label_smoothing: float, name: str = "sparse_categorical_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.label_smoothing = int(num_classes), float(label_smoothing)

    def call(self, y_true, y_pred):
        one_hot = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), self.num_classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return dict(super().get_config(), num_classes=self.num_classes, label_smoothing=self.label_smoothing)


def build_loss(*, multi_label: bool, num_classes: int, label_smoothing: float = 0.0) -> keras.losses.Loss:
    """The head's loss: binary cross-entropy per class, or (smoothed) categorical cross-entropy."""
    if multi_label:
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    if label_smoothing:
        return SmoothedSparseCrossentropy(num_classes=num_classes, label_smoothing=label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


def build_metrics(*, multi_label: bool, num_classes: int) -> list:
    """`accuracy` in both cases (history.json, the logs and tuning read it): top-1 accuracy, or
    for multi-label data the per-class binary accuracy at 0.5. The multi-label figures that matter
    (mAP, F1 at the chosen thresholds) come from the report. Keras' streaming AUC is left out: on
    oneDNN builds it prints a C++ fallback notice in the middle of the logs."""
    del num_classes
    if multi_label:
        return [keras.metrics.BinaryAccuracy(name="accuracy")]
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
