"""The SavedModel writer: the classifier and its serving signatures (trainer's side of
serving/signatures.py), warmup records, a check that the export answers as Keras does, and an
atomic publish into a numeric version folder (TF Serving's layout)."""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from typing import List, Optional, Sequence
import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging
from effnet_common import errors, fileio, flagutil, progress, versions
from serving import signatures
from trainer.exporting import restore
from trainer.models import classifier


_VERIFY_TOLERANCE = 1e-4


class ExportError(errors.UserError):
    """An export that cannot be made as asked; the message says how to fix it."""


def export_saved_model(model: keras.Model, *, class_names: Sequence[str], image_size: int,
                       export_base: str, version: Optional[int] = None,
                       verify: bool = True, thresholds: Optional[Sequence[float]] = None) -> str:
    """Writes the serving SavedModel to `export_base/<version>/` and returns that path.

    Args:
      model: float32 classifier from `trainer.models.classifier.build_classifier` (0..255 pixels in,
        softmax out); after mixed-precision training pass its float32 copy.
      class_names: class names in label order; written to assets/labels.txt.
      image_size: the model's input side in pixels.
      export_base: the folder TF Serving watches (local or gs://).
      version: the version number; None for the next integer after the existing ones.
      verify: reload the written export and check it answers like `model` before publishing.
      thresholds: a multi-label (sigmoid) model's per-class decision thresholds, written to
        assets/thresholds.txt; default 0.5 each. Ignored for a softmax model.

    Raises:
      ExportError: the model, the class names or the version do not fit.
    """
    _check_model(model, num_classes=len(class_names), image_size=image_size)
    _check_class_names(class_names)
    version = _choose_version(export_base, version)
    final = fileio.join(export_base, str(version))
    tmp = fileio.join(export_base, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
    bar = progress.Progress(4, label="exporting", unit="step")  # save, warmup, verify, publish
    try:
        _write_saved_model(model, class_names=class_names, image_size=image_size, path=tmp,
                           thresholds=_thresholds(model, thresholds, num_classes=len(class_names)))
        bar.update(1)
        _write_warmup(tmp, image_size=image_size)
        bar.update(2)
        if verify:
            _verify(tmp, model=model, class_names=class_names, image_size=image_size)
        bar.update(3)
        # On gs:// saved_model.pb goes last: a TF Serving poll that lands mid-copy finds no
        # SavedModel yet and retries, instead of loading half a model.
        fileio.move_folder(tmp, final, last="saved_model.pb")
        bar.update(4)
    finally:
        bar.close()
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
    logging.info("Exported version %d to %s", version, final)
    return final


def _check_model(model: keras.Model, *, num_classes: int, image_size: int) -> None:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(f"the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                          "export a classifier from trainer.models.classifier.build_classifier")
    in_shape = tuple(model.inputs[0].shape)
    if in_shape[1:] != (image_size, image_size, 3):
        raise ExportError(f"the model takes images of shape {in_shape[1:]} but image_size={image_size}; "
                          "pass the image size the model was built with")
    out_classes = model.outputs[0].shape[-1]
    if out_classes != num_classes:
        raise ExportError(f"the model predicts {out_classes} classes but {num_classes} class names were "
                          "given; pass the labels.txt the model was trained with")
    mixed = sorted({layer.dtype_policy.name for layer in classifier.leaf_layers(model)
                    if layer.dtype_policy.compute_dtype != "float32"})
    if mixed or model.outputs[0].dtype != tf.float32:
        raise ExportError(f"the model computes in {', '.join(mixed) or model.outputs[0].dtype.name}; export "
                          "the float32 copy (trainer.models.numerics.build_float32_copy): TF Serving's Classify needs "
                          "float scores and a mixed-precision graph is slower on CPU")


def _thresholds(model: keras.Model, thresholds: Optional[Sequence[float]], *,
                num_classes: int) -> Optional[List[float]]:
    """The thresholds a multi-label model's export carries (None for a softmax model)."""
    if not classifier.is_multi_label(model):
        return None
    values = [float(t) for t in thresholds] if thresholds is not None else [0.5] * num_classes
    if len(values) != num_classes or not all(0.0 <= t <= 1.0 for t in values):
        raise ExportError(f"{len(values)} thresholds for {num_classes} classes, or one outside [0, 1]: pass one "
                          "threshold per class (MODEL_DIR/thresholds.json), or none for 0.5")
    return values


def _check_class_names(class_names: Sequence[str]) -> None:
    bad = [repr(n) for n in class_names if not isinstance(n, str) or not n.strip() or "\n" in n or "\r" in n]
    if bad:
        raise ExportError(f"class names {', '.join(bad[:3])} cannot be lines of labels.txt: each class "
                          "name must be a non-empty single line")
    if len(set(class_names)) != len(class_names):
        raise ExportError("class names repeat: each line of labels.txt must name a different class")


def _existing_versions(export_base: str) -> list:
    if not tf.io.gfile.isdir(export_base):
        return []
    return versions.versions(tf.io.gfile.listdir(export_base))


def _choose_version(export_base: str, version: Optional[int]) -> int:
    existing = _existing_versions(export_base)
    following = (existing[-1] + 1) if existing else 1
    if version is None:
        return following
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
        raise ExportError(f"--version={version!r}: pass a non-negative integer (TF Serving loads only "
                          "numeric version folders)")
    if int(version) in existing:
        raise ExportError(f"{fileio.join(export_base, str(version))} already exists and TF Serving may be "
                          f"serving it: pass --version={following} or leave --version out")
    return int(version)


def _write_saved_model(model: keras.Model, *, class_names: Sequence[str], image_size: int,
                       path: str, thresholds: Optional[List[float]]) -> None:
    labels_dir = tempfile.mkdtemp(prefix="labels-")
    try:
        labels_path = os.path.join(labels_dir, fileio.LABELS_FILE)
        with open(labels_path, "w", encoding="utf-8") as f:
            f.write("".join(f"{name}\n" for name in class_names))
        thresholds_path = None
        if thresholds is not None:
            thresholds_path = os.path.join(labels_dir, signatures.THRESHOLDS_FILENAME)
            with open(thresholds_path, "w", encoding="utf-8") as f:
                f.write("".join(f"{t!r}\n" for t in thresholds))
        module = signatures.ServingModule(
            model, features_model=classifier.feature_model(model), labels_path=labels_path,
            image_size=image_size, num_classes=len(class_names), thresholds_path=thresholds_path)
        # Custom-gradient tracing is for fine-tuning a reloaded model; serving never takes
        # gradients, and skipping it saves a third of the save time.
        tf.saved_model.save(module, path, signatures=module.signatures(),
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
    finally:
        shutil.rmtree(labels_dir, ignore_errors=True)
    _rewrite_method_names(path)


def _rewrite_method_names(path: str) -> None:
    pb_path = fileio.join(path, "saved_model.pb")
    with tf.io.gfile.GFile(pb_path, "rb") as f:
        rewritten = signatures.set_classify_method_name(f.read())
    with tf.io.gfile.GFile(pb_path, "wb") as f:
        f.write(rewritten)
    # The fingerprint is a hash of saved_model.pb: rewrite it to match (the same call
    # tf.saved_model.save makes).
    from tensorflow.python.saved_model import fingerprinting_utils  # pylint: disable=import-outside-toplevel
    fingerprinting_utils.write_fingerprint(path)


def _write_warmup(path: str, *, image_size: int) -> None:
    extra = fileio.join(path, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.TFRecordWriter(fileio.join(extra, signatures.WARMUP_FILENAME)) as writer:
        for record in signatures.warmup_records(image_size=image_size):
            writer.write(record)


def _verify(path: str, *, model: keras.Model, class_names: Sequence[str], image_size: int) -> None:
    """Reloads the export and checks it answers like the in-memory model on the warmup image."""
    loaded = tf.saved_model.load(path)
    image = signatures.warmup_image(image_size=image_size)
    out = loaded.signatures[signatures.SERVING_DEFAULT](image_bytes=tf.constant([image]))
    pixels = signatures.decode_batch(tf.constant([image]), image_size=image_size)
    expected = model(pixels, training=False).numpy()
    got = out["probabilities"].numpy()
    if not np.allclose(got, expected, atol=_VERIFY_TOLERANCE):
        raise ExportError(f"the reloaded export differs from the model by {np.abs(got - expected).max():.2g}; "
                          "this is a bug, please report it with the model's config.json")
    best = class_names[int(np.argmax(expected[0]))]
    if out["classes"].numpy()[0, 0].decode("utf-8") != best:
        raise ExportError("the export's labels do not follow the class order; this is a bug, please report it")
    classify = loaded.signatures[signatures.CLASSIFY](inputs=tf.constant([signatures.image_example(image)]))
    features = loaded.signatures[signatures.FEATURES](image_bytes=tf.constant([image]))["features"]
    if classify["classes"].shape[0] != 1 or features.shape[0] != 1:
        raise ExportError("the export's classify or features signature answered the wrong batch; "
                          "this is a bug, please report it")


def reexport(*, model_dir: str, checkpoint: Optional[str] = None, version: Optional[int] = None,
             export_base: Optional[str] = None) -> str:
    """Exports a finished run's checkpoint again (after a failed or changed export); returns its path."""
    flagutil.check_folder("model_dir", model_dir)
    run = restore.restore_as_exported(model_dir, checkpoint)
    return export_saved_model(run.model, class_names=list(run.config.data.class_names),
                              image_size=run.config.data.image_size,
                              export_base=export_base or fileio.join(model_dir, "export"), version=version,
                              thresholds=run.thresholds)
