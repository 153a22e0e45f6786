"""Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391): which part of an image made the classifier
answer as it did, as Keras' own example (keras.io/examples/vision/grad_cam) computes it.

The heatmap of class c is ReLU(sum_k alpha_k A_k), where A is the backbone's last convolutional
feature map (the registry's `feature_map_layer`) and alpha_k the spatial mean of d(logit_c)/dA_k,
upsampled bilinearly to the model's input side and divided by its maximum: float32 in 0..1 over
exactly the pixels the model saw (the export's decode and center crop, `signatures.decode_batch`).

It runs on the run's Keras classifier (trainer.exporting.restore.restore_as_exported, or the
model a training run holds in memory), not on the SavedModel: the export's functions are traced
from image bytes to probabilities, and their intermediate feature map is not an output a
gradient can be taken to. Keeping it outside the export leaves the serving signatures as they
are; `check_matches` makes sure the Keras model is the network the export serves.

Explained classes: the predicted class (argmax); for a multi-label model each label at or over
its threshold (the top class where none is).
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras
from PIL import Image

from absl import logging
from effnet_common import fileio
from serving import signatures
from trainer.configs.config import ConfigError
from trainer.exporting import restore
from trainer.inference.exported import Export, PredictError
from trainer.models import classifier

# The overlay: the heatmap in matplotlib's "jet" colours over the image at this opacity, as in
# Keras' Grad-CAM example (0.4).
OVERLAY_ALPHA = 0.4


INDEX_FILE = "explanations.csv"


# The export computes in float32 too; its answers and the Keras model's agree within 1e-4
# (saved_model's own check), so a larger difference is another network.
MATCH_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class Explanation:
    """One class's Grad-CAM for one image.

    Attributes:
      class_index: the explained class.
      probability: the model's probability for it.
      heatmap: float32 [S, S] in 0..1 (S: the model's input side), over `pixels`.
      pixels: uint8 [S, S, 3], the image as the model saw it (decoded, center-cropped, resized).
    """
    class_index: int
    probability: float
    heatmap: np.ndarray
    pixels: np.ndarray

    def overlay(self) -> np.ndarray:
        """uint8 [S, S, 3]: the image with the heatmap in colour over it."""
        return overlay(self.pixels, self.heatmap)


class Explainer:
    """Grad-CAM of one classifier; built once, then called on batches of encoded images."""

    def __init__(self, model: keras.Model, *, thresholds: Optional[Sequence[float]] = None):
        """`model`: a classifier from trainer.models.classifier (0..255 pixels in); `thresholds`:
        a multi-label model's per-class decision thresholds (default 0.5 each)."""
        self.image_size = int(model.inputs[0].shape[1])
        self.multi_label = classifier.is_multi_label(model)
        classes = int(model.outputs[0].shape[-1])
        self.thresholds = np.asarray(thresholds if thresholds is not None else [0.5] * classes, np.float32)
        self._view = classifier.feature_map_view(model)
        self._step = tf.function(self._gradients, reduce_retracing=True)
        self._forward = tf.function(lambda pixels: self._view(pixels)[1], reduce_retracing=True)

    def _gradients(self, pixels: tf.Tensor, classes: tf.Tensor):
        with tf.GradientTape() as tape:
            feature_map, logits = self._view(pixels)
            score = tf.reduce_sum(tf.gather(logits, classes, axis=1, batch_dims=1))
        return feature_map, tape.gradient(score, feature_map)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """[N, C]: the classifier's answers for decoded pixels, as the export's `probabilities`."""
        logits = self._forward(tf.convert_to_tensor(pixels, tf.float32))
        return (tf.sigmoid(logits) if self.multi_label else tf.nn.softmax(logits)).numpy()

    def heatmaps(self, pixels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
        """Heatmaps float32 [N, S, S] in 0..1, of class classes[i] for image i."""
        feature_map, grads = self._step(tf.convert_to_tensor(pixels, tf.float32), tf.constant(list(classes), tf.int32))
        weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * feature_map, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, [self.image_size, self.image_size], method="bilinear")[..., 0].numpy()
        peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
        cam = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
        return np.clip(cam, 0.0, 1.0).astype(np.float32)

    def explained_classes(self, probabilities: np.ndarray) -> List[List[int]]:
        """The classes to explain per image: the argmax, or each label over its threshold."""
        if not self.multi_label:
            return [[int(np.argmax(p))] for p in probabilities]
        return [[int(c) for c in np.flatnonzero(p >= self.thresholds)] or [int(np.argmax(p))]
                for p in probabilities]

    def explain(self, images: Sequence[bytes], *, top_only: bool = False) -> List[List[Explanation]]:
        """The explanations of each encoded image, one per explained class (`top_only`: the top
        class alone). Undecodable bytes raise InvalidArgumentError, as the export does."""
        return self.explain_pixels(self.pixels(images), top_only=top_only)

    def explain_pixels(self, pixels: np.ndarray, *, probabilities: Optional[np.ndarray] = None,
                       top_only: bool = False) -> List[List[Explanation]]:
        """`explain` of decoded pixels (`self.pixels`), their `probabilities` given where known."""
        probabilities = self.probabilities(pixels) if probabilities is None else probabilities
        chosen = ([[int(np.argmax(p))] for p in probabilities] if top_only
                  else self.explained_classes(probabilities))
        results: List[List[Explanation]] = [[] for _ in pixels]
        for rank in range(max((len(c) for c in chosen), default=0)):
            rows = [i for i, c in enumerate(chosen) if len(c) > rank]
            heat = self.heatmaps(pixels[rows], [chosen[i][rank] for i in rows])
            for row, i in enumerate(rows):
                c = chosen[i][rank]
                results[i].append(Explanation(c, float(probabilities[i, c]), heat[row],
                                              pixels[i].round().astype(np.uint8)))
        return results

    def pixels(self, images: Sequence[bytes]) -> np.ndarray:
        """float32 [N, S, S, 3], 0..255: the images decoded and cropped as every signature does."""
        return signatures.decode_batch(tf.constant(list(images), tf.string), image_size=self.image_size).numpy()

    def overlay_pngs(self, images: Sequence[bytes]) -> List[bytes]:
        """Each image's top-class overlay as PNG bytes: the report's gallery of worst images."""
        return [png(found[0].overlay()) for found in self.explain(images, top_only=True)]


def run_folder(export: Export) -> str:
    """MODEL_DIR of an export at MODEL_DIR/export/N (where a run writes its exports)."""
    return os.path.dirname(os.path.dirname(export.export_dir.rstrip("/")))


def explainer_for_export(export: Export) -> Explainer:
    """The Explainer of the run an export was written by: MODEL_DIR/export/N -> MODEL_DIR's
    classifier as exported (trainer.exporting.restore), with the export's thresholds.

    Raises:
      PredictError: the export is not inside the folder of the run that wrote it.
    """
    model_dir = run_folder(export)
    if not fileio.exists(fileio.join(model_dir, "config.json")):
        raise PredictError(f"--explain_output needs the training run of the export {export.export_dir}: Grad-CAM "
                           "takes gradients through the run's Keras model (MODEL_DIR's config.json and checkpoints), "
                           "which a SavedModel alone does not expose; pass an export inside its run folder "
                           "(MODEL_DIR/export/N) or the MODEL_DIR")
    try:
        run = restore.restore_as_exported(model_dir)
    except ConfigError as e:
        raise PredictError(f"--explain_output: {e}") from None
    return Explainer(run.model, thresholds=export.thresholds)


def explain_files(explainer: Explainer, export: Export, batches: Iterable[List[Tuple[str, Optional[bytes], str]]],
                  *, expected: np.ndarray, output_dir: str) -> int:
    """`python -m trainer.predict --explain_output`: explains, with the Explainer of the export's
    run (`explainer_for_export`), the images the export predicted (`batches` of (path, bytes, why
    not) as prediction.read_files gives them; row i of `expected`, the export's probabilities for
    the i-th readable image) and writes them to `output_dir` (`write_explanations`). Returns the
    number of explanations written.

    Raises:
      PredictError: the run answers other than the export.
    """
    model_dir = run_folder(export)
    paths, found, row = [], [], 0
    for batch in batches:
        pixels = explainer.pixels([data for _, data, _ in batch if data is not None])
        probabilities = explainer.probabilities(pixels)
        check_matches(probabilities, expected[row:row + len(pixels)], export_dir=export.export_dir,
                      model_dir=model_dir)
        row += len(pixels)
        paths += [path for path, data, _ in batch if data is not None]
        found += explainer.explain_pixels(pixels, probabilities=probabilities)
    count = write_explanations(output_dir, paths=paths, explanations=found, class_names=export.class_names)
    logging.info("wrote %d Grad-CAM explanation(s) of %d image(s) to %s", count, len(paths), output_dir)
    return count


def check_matches(probabilities: np.ndarray, expected: np.ndarray, *, export_dir: str, model_dir: str,
                  tolerance: float = MATCH_TOLERANCE) -> None:
    """Refuses to explain with a Keras model that is not the export's network (a run trained
    again after the export was written): its heatmaps would explain other answers.

    Raises:
      PredictError: the Keras model's `probabilities` differ from the export's (`expected`) by
        more than `tolerance`.
    """
    differ = float(np.abs(probabilities - expected).max()) if len(expected) else 0.0
    if differ > tolerance:
        raise PredictError(f"the run in {model_dir} answers other than the export {export_dir} (probabilities differ "
                           f"by {differ:.2g}): it was trained again since; pass its newest export as --export_dir, "
                           "or re-export it (python -m trainer.export --model_dir=...)")


def overlay(pixels: np.ndarray, heatmap: np.ndarray, *, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 [S, S, 3]: `heatmap` (0..1) in "jet" colours blended over `pixels`."""
    import matplotlib  # pylint: disable=import-outside-toplevel  # colormaps only: no backend chosen
    colours = matplotlib.colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3] * 255.0
    return np.clip((1 - alpha) * pixels.astype(np.float32) + alpha * colours, 0, 255).round().astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array.astype(np.float32), allow_pickle=False)
    return buf.getvalue()


def file_stem(index: int, path: str, class_name: str) -> str:
    """`00003-photo-cat`: the row number keeps names unique (two folders may hold the same file
    name) and in input order; characters a file name cannot hold become '_'."""
    stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
    return re.sub(r"[^\w.-]+", "_", f"{index:05d}-{stem}-{class_name}")


def write_explanations(output_dir: str, *, paths: Sequence[str], explanations: Sequence[Sequence[Explanation]],
                       class_names: Sequence[str], progress: Optional[Callable[[int], None]] = None) -> int:
    """Writes, per image and explained class, STEM.png (the overlay) and STEM.npy (the heatmap,
    float32 [S, S] in 0..1), and explanations.csv listing them (path, class, probability, png,
    npy); each file atomically (local or gs://). Returns the number of explanations."""
    rows = []
    for index, (path, found) in enumerate(zip(paths, explanations)):
        for item in found:
            stem = file_stem(index, path, class_names[item.class_index])
            fileio.write_bytes_atomic(fileio.join(output_dir, stem + ".png"), png(item.overlay()))
            fileio.write_bytes_atomic(fileio.join(output_dir, stem + ".npy"), npy(item.heatmap))
            rows.append([path, class_names[item.class_index], f"{item.probability:.6f}", stem + ".png", stem + ".npy"])
        if progress:
            progress(index + 1)
    fileio.write_text_atomic(fileio.join(output_dir, INDEX_FILE),
                             fileio.csv_text(("path", "class", "probability", "overlay", "heatmap"), rows))
    return len(rows)
