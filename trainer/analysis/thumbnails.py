"""A small grey view of each whole image: the pixels that confirm a near copy (trainer.analysis.findings).

An embedding alone cannot tell a re-encoded or resized copy from a distinct look-alike photo
(docs/data.md, "Auditing a dataset"); a 32 x 32 area average of the whole upright image can,
and it does not depend on which network made the embeddings: the audit computes it in the
decode pass that fingerprints the pixels, the run's report from the bytes it reads for the
export. 1 KB an image (uint8).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from effnet_common import decode

SIDE = 32  # copies correlate >= 0.995 at this side, distinct photos <= 0.990 (coarser: closer)


def thumbnail(pixels: tf.Tensor) -> tf.Tensor:
    """uint8 [SIDE, SIDE]: the whole image (uint8 [H, W, 3], upright) in grey, each cell the mean
    of the pixels it covers, so that a re-encode or a resize barely moves it."""
    grey = tf.image.rgb_to_grayscale(tf.cast(pixels, tf.float32))
    small = tf.image.resize(grey, [SIDE, SIDE], method="area")[..., 0]
    return tf.cast(tf.round(tf.clip_by_value(small, 0.0, 255.0)), tf.uint8)


def empty() -> np.ndarray:
    """No thumbnails: uint8 [0, SIDE, SIDE]."""
    return np.zeros((0, SIDE, SIDE), np.uint8)


@tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
def _of_encoded(images: tf.Tensor) -> tf.Tensor:
    return tf.map_fn(lambda b: thumbnail(decode.decode_upright(b)), images,
                     fn_output_signature=tf.TensorSpec([SIDE, SIDE], tf.uint8))


def of_encoded(images: Sequence[bytes]) -> np.ndarray:
    """uint8 [N, SIDE, SIDE] of encoded images (JPEG, PNG, GIF, BMP).

    Raises:
      tf.errors.InvalidArgumentError: an image does not decode.
    """
    return _of_encoded(tf.constant(list(images), tf.string)).numpy() if len(images) else empty()
