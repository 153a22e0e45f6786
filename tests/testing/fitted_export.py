"""A tiny trained export for the report and prediction tests (tests/test_evaluate.py and
tests/test_predict.py share it through the conftest fixtures `export_base` and `loaded`).

EfficientNet-Lite0 at IMAGE_SIZE from its ImageNet weights, its head fitted in closed form on the
pooled features of demo images (seconds, where a Keras fit would trace the whole network for
minutes).
"""
from __future__ import annotations

import os

import numpy as np

import trainer  # noqa: F401  # sets TF_USE_LEGACY_KERAS before TensorFlow loads
import tensorflow as tf  # noqa: E402

from tests.testing.presets import IMAGE_SIZE, PRETRAINED  # noqa: E402
from trainer import config, data, demo  # noqa: E402
from trainer import model as model_lib  # noqa: E402

RIDGE = 1e-3
LOGIT_SCALE = 5.0


def fit_head(model, images_dir: str) -> None:
    """Ridge regression of one-hot labels on the pooled features, written into the head layer."""
    paths, labels = data.list_image_files(images_dir, class_names=demo.TASKS["shapes"])
    pixels = np.stack([data.decode_for_eval(tf.io.read_file(p), IMAGE_SIZE).numpy() for p in paths])
    feats = model_lib.feature_model(model).predict(pixels, verbose=0).astype(np.float64)
    x = np.c_[feats, np.ones(len(feats))]
    onehot = np.eye(len(demo.TASKS["shapes"]))[labels]
    coef = np.linalg.solve(x.T @ x + RIDGE * np.eye(x.shape[1]), x.T @ onehot) * LOGIT_SCALE
    model.get_layer(model_lib.HEAD_LAYER).set_weights([coef[:-1].astype(np.float32), coef[-1].astype(np.float32)])


def build(base: str, *, weights: str) -> str:
    """The export base (holding version 1) under `base`, built on first use."""
    from trainer import export  # pylint: disable=import-outside-toplevel
    export_base = os.path.join(base, "export")
    if os.path.isdir(os.path.join(export_base, "1")):
        return export_base
    images = os.path.join(base, "head_images")
    demo.write_images(images, task="shapes", per_class=8, size=96, seed=7)
    model = model_lib.build_classifier(config.Model(
        backbone=PRETRAINED, weights=weights, num_classes=4, image_size=IMAGE_SIZE))
    fit_head(model, images)
    export.export_saved_model(model, class_names=list(demo.TASKS["shapes"]), image_size=IMAGE_SIZE,
                              export_base=export_base, version=1, verify=False)
    return export_base
