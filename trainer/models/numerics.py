"""Numerics of a network: Keras' dtype policy for a block (mixed precision that does not leak),
and a float32 copy of a mixed-precision classifier for export."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional
import tf_keras as keras
from trainer.configs.config import Model
from trainer.models import classifier


@contextlib.contextmanager
def precision_policy(name: Optional[str]):
    """Keras' global dtype policy set to `name` inside the block (unchanged for None or "none")
    and restored on exit: a run's mixed precision does not leak into what runs after it."""
    previous = keras.mixed_precision.global_policy()
    if name and name != "none":
        keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_float32_copy(model: keras.Model, model_cfg: Model) -> keras.Model:
    """The same network and weights in float32, for export after mixed-precision training."""
    with precision_policy("float32"):
        copy = classifier.build_classifier(_without_weights(model_cfg), num_classes=int(model.output_shape[-1]),
                                image_size=int(model.input_shape[1]), multi_label=classifier.is_multi_label(model))
    copy_weights(src=model, dst=copy)
    return copy


def copy_weights(*, src: keras.Model, dst: keras.Model) -> None:
    """Copies layer by layer: a model's flat weight order depends on its trainable flags."""
    for a, b in zip(classifier.leaf_layers(src), classifier.leaf_layers(dst)):
        b.set_weights(a.get_weights())


def _without_weights(model_cfg: Model) -> Model:
    return dataclasses.replace(model_cfg, weights="none")
