"""SavedModel export for TF Serving: `export_base/<version>/` with the serving signatures.

`export_saved_model` is what training calls at the end; `python -m trainer.export
--model_dir=DIR [--checkpoint=CKPT] [--version=N]` re-exports a checkpoint without training, and
`--tflite=float16,dynamic,int8` writes scored .tflite files instead (trainer/tflite.py).

The export is written to a non-numeric sibling (`export_base/.tmp-<id>`) and moved into place
when complete: TF Serving only loads numeric folder names (its file-system source parses the
child names as int64), so it never sees a half-written version. Versions are integers; left
out, the next one after the highest numeric folder already there (1 for the first), so TF
Serving's default `latest` policy rolls to the new export on its own.

Contract (docs/serving.md): signatures `serving_default`, `classify`, `features`, labels in
`assets/labels.txt`, warmup records in `assets.extra/tf_serving_warmup_requests`, float32
throughout.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: prepare the process before TensorFlow loads
    from effnet_common import process
    process.prepare()

import os
import shutil
import tempfile
import uuid
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import flags, logging

from effnet_common import errors, fileio, flagutil, versions
from serving import signatures
from trainer import runlock, tflite
from trainer import model as model_lib

_VERIFY_TOLERANCE = 1e-4


class ExportError(errors.UserError):
    """An export that cannot be made as asked; the message says how to fix it."""


def export_saved_model(model: keras.Model, *, class_names: Sequence[str], image_size: int,
                       export_base: str, version: Optional[int] = None,
                       verify: bool = True, thresholds: Optional[Sequence[float]] = None) -> str:
    """Writes the serving SavedModel to `export_base/<version>/` and returns that path.

    Args:
      model: float32 classifier from `trainer.model.build_classifier` (0..255 pixels in,
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
    progress = keras.utils.Progbar(4, stateful_metrics=[], unit_name="step")
    try:
        _write_saved_model(model, class_names=class_names, image_size=image_size, path=tmp,
                           thresholds=_thresholds(model, thresholds, num_classes=len(class_names)))
        progress.update(1)
        _write_warmup(tmp, image_size=image_size)
        progress.update(2)
        if verify:
            _verify(tmp, model=model, class_names=class_names, image_size=image_size)
        progress.update(3)
        # On gs:// saved_model.pb goes last: a TF Serving poll that lands mid-copy finds no
        # SavedModel yet and retries, instead of loading half a model.
        fileio.move_folder(tmp, final, last="saved_model.pb")
        progress.update(4)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
    logging.info("Exported version %d to %s", version, final)
    return final


def _check_model(model: keras.Model, *, num_classes: int, image_size: int) -> None:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(f"the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                          "export a classifier from trainer.model.build_classifier")
    in_shape = tuple(model.inputs[0].shape)
    if in_shape[1:] != (image_size, image_size, 3):
        raise ExportError(f"the model takes images of shape {in_shape[1:]} but image_size={image_size}; "
                          "pass the image size the model was built with")
    out_classes = model.outputs[0].shape[-1]
    if out_classes != num_classes:
        raise ExportError(f"the model predicts {out_classes} classes but {num_classes} class names were "
                          "given; pass the labels.txt the model was trained with")
    mixed = sorted({layer.dtype_policy.name for layer in model_lib.leaf_layers(model)
                    if layer.dtype_policy.compute_dtype != "float32"})
    if mixed or model.outputs[0].dtype != tf.float32:
        raise ExportError(f"the model computes in {', '.join(mixed) or model.outputs[0].dtype.name}; export "
                          "the float32 copy (trainer.model.build_float32_copy): TF Serving's Classify needs "
                          "float scores and a mixed-precision graph is slower on CPU")


def _thresholds(model: keras.Model, thresholds: Optional[Sequence[float]], *,
                num_classes: int) -> Optional[List[float]]:
    """The thresholds a multi-label model's export carries (None for a softmax model)."""
    if not model_lib.is_multi_label(model):
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
        labels_path = os.path.join(labels_dir, signatures.LABELS_FILENAME)
        with open(labels_path, "w", encoding="utf-8") as f:
            f.write("".join(f"{name}\n" for name in class_names))
        thresholds_path = None
        if thresholds is not None:
            thresholds_path = os.path.join(labels_dir, signatures.THRESHOLDS_FILENAME)
            with open(thresholds_path, "w", encoding="utf-8") as f:
                f.write("".join(f"{t!r}\n" for t in thresholds))
        module = signatures.ServingModule(
            model, features_model=model_lib.feature_model(model), labels_path=labels_path,
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


# --------------------------------------------------------------------------- command line

def define_flags() -> None:
    """Defines this CLI's flags; only when it runs as a command, so that importing the module
    beside another entry point (tests, training) defines no clashing flags."""
    flagutil.define("string", "model_dir", None, "Training output folder (config.json, checkpoints).")
    flagutil.define("string", "checkpoint", None, "Checkpoint prefix; default: the last finished phase.")
    flagutil.define("integer", "version", None, "Version number; default: the next one.")
    flagutil.define("string", "export_base", None, "Where version folders go; default: MODEL_DIR/export.")
    flagutil.define("list", "tflite", [], "Instead of a SavedModel: .tflite variants (float16, dynamic, int8) "
                    "to write to MODEL_DIR/tflite, each scored by LiteRT on the run's validation split.")
    flagutil.define("float", "max_accuracy_drop", 0.01, "Refuse a .tflite variant that loses more accuracy than "
                    "this against the SavedModel.")


def reexport(*, model_dir: str, checkpoint: Optional[str] = None, version: Optional[int] = None,
             export_base: Optional[str] = None) -> str:
    """Exports a finished run's checkpoint again (after a failed or changed export); returns its path."""
    from trainer import rundir  # pylint: disable=import-outside-toplevel
    flagutil.check_folder("model_dir", model_dir)
    model, cfg = restore_as_exported(model_dir, checkpoint)
    thresholds = (rundir.RunDir(model_dir).read_thresholds() or {}).get("thresholds")
    return export_saved_model(model, class_names=list(cfg.data.class_names), image_size=cfg.data.image_size,
                              export_base=export_base or fileio.join(model_dir, "export"), version=version,
                              thresholds=thresholds)


def main(argv: Sequence[str]) -> None:
    """Prints the new export's path; a user mistake is one `error:` line and exit status 2."""
    f = flags.FLAGS
    if len(argv) > 1:
        raise flagutil.FlagError(f"unexpected argument(s) {' '.join(argv[1:])}: every setting is a flag, "
                                 "e.g. --model_dir=DIR")
    if not f.model_dir:
        raise flagutil.FlagError("--model_dir is required: pass the training run's output folder (config.json, "
                                 "checkpoints)")
    flagutil.check_folder("model_dir", f.model_dir)
    with runlock.held(f.model_dir, command="trainer.export"):  # not while a training run writes there
        try:
            if f.tflite:
                _print_tflite(export_tflite(model_dir=f.model_dir, variants=f.tflite, checkpoint=f.checkpoint,
                                            max_accuracy_drop=f.max_accuracy_drop))
                return
            path = reexport(model_dir=f.model_dir, checkpoint=f.checkpoint, version=f.version,
                            export_base=f.export_base)
        except (ValueError, OSError, tf.errors.OpError) as e:
            flagutil.fail(e if isinstance(e, tflite.TfliteError) else f"export failed: {flagutil.one_line(e)}")
    print(path)


def export_tflite(*, model_dir: str, variants: Sequence[str], checkpoint: Optional[str] = None,
                  max_accuracy_drop: float = 0.01) -> dict:
    """A finished run's .tflite variants under MODEL_DIR/tflite, scored; returns the report."""
    from trainer import rundir  # pylint: disable=import-outside-toplevel
    flagutil.check_folder("model_dir", model_dir)
    variants = tflite.parse_variants(",".join(variants))
    model, cfg = restore_as_exported(model_dir, checkpoint)
    return tflite.export_run(model, cfg, variants=variants, output_dir=rundir.RunDir(model_dir).tflite_dir,
                             max_accuracy_drop=max_accuracy_drop)


def restore_as_exported(model_dir: str, checkpoint: Optional[str] = None):
    """(model, config) of a run, the model as training exported it: the checkpoint's weights
    with the run's fitted temperature folded into the head (MODEL_DIR/calibration.json)."""
    from trainer import calibration, rundir  # pylint: disable=import-outside-toplevel
    model, cfg = model_lib.restore_trained_model(model_dir, checkpoint)
    calibration.fold_into_head(model, (rundir.RunDir(model_dir).read_calibration() or {}).get("temperature"))
    return model, cfg


def _print_tflite(report: dict) -> None:
    print(f"SavedModel accuracy {report['reference_accuracy']:.3f} on {report['num_examples']} validation images")
    for name, v in report["variants"].items():
        print(f"{name:8s} accuracy {v['accuracy']:.3f} (drop {v['accuracy_drop']:+.3f}), top-1 agreement "
              f"{v['top1_agreement']:.3f}, {v['size_bytes'] / 2 ** 20:.2f} MB, {v['median_latency_ms']:.2f} ms/image")


def run_main() -> None:
    """Console-script entry point (effnet-export)."""
    flagutil.run(main, define_flags)


if __name__ == "__main__":
    run_main()
