"""TFLite (LiteRT) files of a trained classifier, each scored by LiteRT before it is kept.

Variants: `float16` (weights in half precision, float compute), `dynamic` (int8 weights, float
activations) and `int8` (full-integer: int8 weights and activations, calibrated on a
representative set of training images; the input stays uint8 pixels and the output is
dequantized to float). Every file takes one image as uint8 RGB pixels [1, S, S, 3] that already
had the evaluation crop (`effnet_common.decode.decode_for_eval`: the 87.5 % center crop resized to S)
and returns class scores [1, C] in `labels.txt` order.

Quantization can cost accuracy: post-training int8 of EfficientNet-B0 loses much of it
(squeeze-and-excitation and swish quantize badly; tensorflow/tpu#549), which is why
EfficientNet-Lite exists. So no variant is kept unscored: each runs through LiteRT's own
interpreter (`ai_edge_litert`) on the validation split beside the Keras model (which equals the
SavedModel: the export verifies that), and one over `max_accuracy_drop` is refused.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from effnet_common import errors, fileio, flagutil
from trainer.configs.config import TFLITE_VARIANTS as VARIANTS
from trainer.data import pipelines
from trainer.exporting import restore
REPORT_FILE = "tflite_report.json"
REPRESENTATIVE_IMAGES = 100  # int8 quantization's representative images (TF's guide: ~100-500)


class TfliteError(errors.UserError):
    """A variant that cannot be made, or that loses too much accuracy; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Score:
    """One variant measured on the validation images."""
    variant: str
    accuracy: float
    accuracy_drop: float  # reference accuracy minus this one's
    top1_agreement: float  # share of images whose top-1 class equals the reference's
    size_bytes: int
    median_latency_ms: float


def parse_variants(value: str) -> Tuple[str, ...]:
    """`float16,int8` -> ("float16", "int8"); TfliteError naming an unknown one."""
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise TfliteError(f"--tflite={value}: choose from {', '.join(VARIANTS)} (comma-separated)")
    return names


def convert(model: keras.Model, *, variant: str, image_size: int,
            representative: np.ndarray = None) -> bytes:
    """The .tflite bytes of one variant of `model` (0..255 float pixels -> scores).

    Args:
      representative: uint8 [N, S, S, 3] training images with the evaluation crop; int8 only.
    """
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [_pixels_function(model, image_size=image_size, uint8_input=variant != "int8")], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        converter.representative_dataset = lambda: _calibration(representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    return converter.convert()


def _pixels_function(model: keras.Model, *, image_size: int, uint8_input: bool):
    """[1, S, S, 3] pixels -> scores. int8 converts from float pixels: the converter then puts a
    uint8 input in front, quantized with the calibration's range (pinned to 0..255 below)."""
    dtype = tf.uint8 if uint8_input else tf.float32

    @tf.function(input_signature=[tf.TensorSpec([1, image_size, image_size, 3], dtype, name="image")])
    def scores(image):
        return {"scores": model(tf.cast(image, tf.float32), training=False)}
    return scores.get_concrete_function()


def _calibration(images: np.ndarray):
    """One float image at a time; each has a 0 and a 255 pixel so that the uint8 input's scale is
    exactly 1 and its zero point 0: the file then takes raw pixels."""
    if images is None or not len(images):
        raise TfliteError("int8 needs representative training images; the run's --train_data gave none")
    for image in images:
        x = image.astype(np.float32)[None].copy()
        x[0, 0, 0, 0], x[0, -1, -1, -1] = 0.0, 255.0
        yield [x]


def score(tflite_bytes: bytes, *, variant: str, images: np.ndarray, labels: np.ndarray,
          reference: np.ndarray) -> Score:
    """Runs the file through LiteRT's interpreter image by image.

    Args:
      images: uint8 [N, S, S, 3] validation images with the evaluation crop.
      labels: int [N] true classes.
      reference: [N, C] the Keras model's scores on the same uint8 images.
    """
    scores, latencies = run_interpreter(tflite_bytes, images)
    top1 = scores.argmax(axis=1)
    reference_accuracy = float(np.mean(reference.argmax(axis=1) == labels))
    accuracy = float(np.mean(top1 == labels))
    return Score(variant=variant, accuracy=accuracy, accuracy_drop=reference_accuracy - accuracy,
                 top1_agreement=float(np.mean(top1 == reference.argmax(axis=1))), size_bytes=len(tflite_bytes),
                 median_latency_ms=float(np.median(latencies)) * 1000.0)


def run_interpreter(tflite_bytes: bytes, images: np.ndarray) -> Tuple[np.ndarray, List[float]]:
    """Scores [N, C] and per-image seconds from LiteRT, quantizing the input by the file's own
    parameters where it has any."""
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
    interpreter = Interpreter(model_content=tflite_bytes, num_threads=os.cpu_count() or 1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scores, latencies = [], []
    for image in images:
        x = image[None]
        scale, zero = inp["quantization"]
        if scale:
            x = np.clip(np.round(x / scale + zero), 0, 255)
        interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
        start = time.perf_counter()
        interpreter.invoke()
        latencies.append(time.perf_counter() - start)
        y = interpreter.get_tensor(out["index"]).astype(np.float32)
        scale, zero = out["quantization"]
        scores.append((y - zero) * scale if scale else y)
    return np.concatenate(scores), latencies


def export_variants(model: keras.Model, *, variants: Sequence[str], class_names: Sequence[str], image_size: int,
                    output_dir: str, validation: Tuple[np.ndarray, np.ndarray], representative: np.ndarray,
                    max_accuracy_drop: float) -> Dict[str, object]:
    """Converts, scores and writes `model_<variant>.tflite`, labels.txt and tflite_report.json.

    The report is written whatever the scores; a variant over `max_accuracy_drop` is not kept,
    and the first one is raised as a TfliteError after the others were written. Files are
    written to a temporary name and renamed, so a reader never sees half a file.
    """
    images, labels = validation
    reference = model.predict(images.astype(np.float32), batch_size=32, verbose=0)
    tf.io.gfile.makedirs(output_dir)
    results, refused = [], []
    for variant in variants:
        data = convert(model, variant=variant, image_size=image_size, representative=representative)
        result = score(data, variant=variant, images=images, labels=labels, reference=reference)
        results.append(result)
        logging.info("tflite %s: accuracy %.3f (drop %+.3f), top-1 agreement %.3f, %.2f MB, %.2f ms/image", variant,
                     result.accuracy, result.accuracy_drop, result.top1_agreement, result.size_bytes / 2 ** 20,
                     result.median_latency_ms)
        if result.accuracy_drop > max_accuracy_drop:
            refused.append(result)
            _remove(fileio.join(output_dir, f"model_{variant}.tflite"))
        else:
            fileio.write_bytes_atomic(fileio.join(output_dir, f"model_{variant}.tflite"), data)
    fileio.write_text_atomic(fileio.join(output_dir, fileio.LABELS_FILE), "".join(f"{n}\n" for n in class_names))
    report = _report(results, reference=reference, labels=labels, max_accuracy_drop=max_accuracy_drop,
                     refused=[r.variant for r in refused])
    fileio.write_json_atomic(fileio.join(output_dir, REPORT_FILE), report)
    if refused:
        r = refused[0]
        raise TfliteError(f"the {r.variant} .tflite loses {r.accuracy_drop:.3f} accuracy against the SavedModel "
                          f"({r.accuracy:.3f} vs {report['reference_accuracy']:.3f} on {len(labels)} validation "
                          f"images), over --max_accuracy_drop={max_accuracy_drop}; not kept: use float16 or "
                          "dynamic, or an efficientnet-lite backbone (built to quantize), or raise "
                          "--max_accuracy_drop (report: " + fileio.join(output_dir, REPORT_FILE) + ")")
    return report


def _report(results: List[Score], *, reference, labels, max_accuracy_drop: float, refused: List[str]) -> dict:
    return {"reference": "savedmodel", "reference_accuracy": float(np.mean(reference.argmax(axis=1) == labels)),
            "num_examples": int(len(labels)), "max_accuracy_drop": max_accuracy_drop, "refused": refused,
            "input": "uint8 RGB [1, S, S, 3] after the evaluation crop", "output": "float32 scores [1, C]",
            "variants": {r.variant: dataclasses.asdict(r) for r in results}}


def _remove(path: str) -> None:
    if tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


def export_run(model, cfg, *, variants: Sequence[str], output_dir: str, max_accuracy_drop: float,
               max_images: int = 500) -> Dict[str, object]:
    """`export_variants` for a training run: validation images from its --eval_data (its
    --train_data when it had none), int8's representative images from its --train_data, both with the
    evaluation crop."""
    eval_path = cfg.data.eval_data or cfg.data.train_data
    validation = _images(dataclasses.replace(cfg.data, eval_data=eval_path), limit=max_images)
    representative = None
    if "int8" in variants:
        train = dataclasses.replace(cfg.data, eval_data=cfg.data.train_data)
        representative = _images(train, limit=REPRESENTATIVE_IMAGES)[0]
    return export_variants(model, variants=variants, class_names=cfg.data.class_names,
                           image_size=cfg.data.image_size, output_dir=output_dir, validation=validation,
                           representative=representative, max_accuracy_drop=max_accuracy_drop)


def _images(data_cfg, *, limit: int) -> Tuple[np.ndarray, np.ndarray]:
    """Up to `limit` (uint8 images, labels) of a split's evaluation pipeline, in file order."""
    images, labels = [], []
    for x, y in pipelines.build_dataset(data_cfg, split="eval", batch_size=64).unbatch().take(limit):
        images.append(np.clip(np.round(x.numpy()), 0, 255).astype(np.uint8))
        labels.append(int(y.numpy()))
    return np.stack(images), np.array(labels)


def export_tflite(*, model_dir: str, variants: Sequence[str], checkpoint: Optional[str] = None,
                  max_accuracy_drop: float = 0.01) -> dict:
    """A finished run's .tflite variants under MODEL_DIR/tflite, scored; returns the report."""
    from trainer.runtime import rundir
    flagutil.check_folder("model_dir", model_dir)
    variants = parse_variants(",".join(variants))
    run = restore.restore_as_exported(model_dir, checkpoint)
    return export_run(run.model, run.config, variants=variants, output_dir=rundir.RunDir(model_dir).tflite_dir,
                             max_accuracy_drop=max_accuracy_drop)
