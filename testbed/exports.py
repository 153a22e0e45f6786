"""Small SavedModel exports, made one way for every test and benchmark: `build_export`.

Each is `trainer.exporting.saved_model.export_saved_model` on one of these networks:

* backbone="tiny" (the default): the product's own stand-in network (trainer/configs/backbones.py:
  a few convolutions with EfficientNet's layer names, the classifier's head): it exports and loads
  in seconds, for the SavedModel's plumbing rather than EfficientNet (`tiny_net` gives the Keras
  model alone);
* a registered backbone (efficientnet-b0 with weights="none": EfficientNet's signatures, 1280
  features, no download), its head as built or, with head="spread", scaled up so the
  probabilities spread out and the top-k order means something;
* head="fitted": the backbone's head fitted in closed form (`fit_head`: ridge regression) on the
  pooled features of the demo's shape images, seconds where a Keras fit would trace the network
  for minutes: with real ImageNet weights, an export whose accuracy means something.
"""
from __future__ import annotations

import tempfile
from typing import NamedTuple, Optional, Sequence

import numpy as np

import trainer  # noqa: F401  # sets TF_USE_LEGACY_KERAS before TensorFlow loads
import tensorflow as tf  # noqa: E402

from effnet_common import decode
from trainer.configs import config
from trainer.data import discovery, synthetic
from trainer.exporting import saved_model
from trainer.models import classifier, numerics

TINY = "tiny"
HEADS = ("as_built", "spread", "fitted")
CLASS_NAMES = ("cat", "dog", "fox", "owl", "bee", "ant", "elk", "emu", "yak", "gnu")
RIDGE = 1e-3
LOGIT_SCALE = 5.0


class Export(NamedTuple):
    model: object  # the Keras model the export was made from
    class_names: list
    base: str  # the folder TF Serving watches
    path: str  # base/<version>


def tiny_net(num_classes: int, *, image_size: int = 32, dtype_policy: Optional[str] = None):
    """The classifier on the `tiny` stand-in backbone (weights none), built under `dtype_policy`
    (e.g. mixed_float16; the global policy is restored after)."""
    with numerics.precision_policy(dtype_policy):
        return classifier.build_classifier(config.Model(backbone=TINY, weights="none"), num_classes=num_classes,
                                           image_size=image_size)


def fit_head(model, pixels: np.ndarray, labels: Sequence[int], *, scale: float = LOGIT_SCALE) -> None:
    """The head fitted in closed form: ridge regression of one-hot labels on the pooled features
    of `pixels` (0..255), the coefficients scaled by `scale` into logits."""
    feats = classifier.feature_model(model).predict(np.asarray(pixels, np.float32), verbose=0).astype(np.float64)
    x = np.c_[feats, np.ones(len(feats))]
    onehot = np.eye(model.output_shape[-1])[np.asarray(labels)]
    coef = np.linalg.solve(x.T @ x + RIDGE * np.eye(x.shape[1]), x.T @ onehot) * scale
    model.get_layer(classifier.HEAD_LAYER).set_weights([coef[:-1].astype(np.float32), coef[-1].astype(np.float32)])


def _fit_head_on_shapes(model, *, image_size: int) -> None:
    with tempfile.TemporaryDirectory() as images:
        synthetic.write_images(images, task="shapes", per_class=8, size=96, seed=7)
        paths, labels = discovery.list_image_files(images, class_names=synthetic.TASKS["shapes"])
        pixels = np.stack([decode.decode_for_eval(tf.io.read_file(p), image_size).numpy() for p in paths])
    fit_head(model, pixels, labels)


def _spread_head(model) -> None:
    head = model.get_layer(classifier.HEAD_LAYER)
    kernel, bias = head.get_weights()
    head.set_weights([np.random.default_rng(0).normal(0, 30, kernel.shape).astype(np.float32), bias])


def build_export(export_base: str, *, backbone: str = TINY, weights: str = "none", num_classes: int = 3,
                 image_size: int = 32, head: str = "as_built", class_names: Optional[Sequence[str]] = None,
                 verify: bool = False) -> Export:
    """Exports the next version under `export_base`.

    Args:
      export_base: the folder TF Serving would watch.
      backbone: a name from trainer.configs.backbones (built by trainer.models.classifier.build_classifier).
      weights: the backbone's starting weights (config.Model.weights), e.g. a notop weights file.
      num_classes: the head's width (4 with head="fitted": the demo's shapes).
      image_size: the input side in pixels.
      head: "as_built", "spread" or "fitted" (see the module docstring; a registered backbone only).
      class_names: the labels; default the demo's shapes when fitted, else CLASS_NAMES.
      verify: export_saved_model's own reload-and-compare (tests that compare the export with the
        model themselves leave it off).
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r}: choose one of {HEADS}")
    model = classifier.build_classifier(config.Model(backbone=backbone, weights=weights), num_classes=num_classes,
                                        image_size=image_size)
    if head == "spread":
        _spread_head(model)
    elif head == "fitted":
        _fit_head_on_shapes(model, image_size=image_size)
    if class_names is None:
        class_names = synthetic.TASKS["shapes"] if head == "fitted" else CLASS_NAMES[:num_classes]
    names = list(class_names)
    path = saved_model.export_saved_model(model, class_names=names, image_size=image_size, export_base=export_base,
                                     verify=verify)
    return Export(model, names, export_base, path)
