"""RandAugment (Cubuk et al. 2019, arXiv:1909.13719) on float32 0..255 images, stateless.

Per image, `RANDAUGMENT_LAYERS` operations drawn uniformly from a fixed list, each at one global
magnitude M out of 10; the magnitude scales follow the paper's table. Stateless seeds make an
element's augmentation a function of its seed, so a cached view can be drawn again.
"""
from __future__ import annotations

import math

import tensorflow as tf

RANDAUGMENT_LAYERS = 2
RANDAUGMENT_MAGNITUDE = 9
_FILL = 128.0


def _blend(a: tf.Tensor, b: tf.Tensor, factor) -> tf.Tensor:
    """a + factor * (b - a), clipped: factor 0 gives a, 1 gives b, >1 extrapolates."""
    return tf.clip_by_value(a + factor * (b - a), 0.0, 255.0)


def _affine(image: tf.Tensor, transform) -> tf.Tensor:
    """Applies a 3x3 projective transform given as its first 8 entries (output -> input)."""
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.cast(tf.reshape(transform, [1, 8]), tf.float32),
        output_shape=tf.shape(image)[:2], fill_value=_FILL, interpolation="BILINEAR",
        fill_mode="CONSTANT")
    return out[0]


def _rotate(image, level):
    angle = level * 30.0 * math.pi / 180.0
    h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    x0 = (w - 1) / 2 - (cos * (w - 1) / 2 - sin * (h - 1) / 2)
    y0 = (h - 1) / 2 - (sin * (w - 1) / 2 + cos * (h - 1) / 2)
    return _affine(image, [cos, -sin, x0, sin, cos, y0, 0.0, 0.0])


def _autocontrast(image, level):
    lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
    scaled = (image - lo) * 255.0 / tf.maximum(hi - lo, 1.0)
    return tf.where(hi > lo, scaled, image)


def _equalize(image, level):
    def channel(c):
        c8 = tf.cast(tf.clip_by_value(c, 0.0, 255.0), tf.int32)
        hist = tf.math.bincount(tf.reshape(c8, [-1]), minlength=256, maxlength=256)
        cdf = tf.cast(tf.cumsum(hist), tf.float32)
        cdf_min = tf.reduce_min(tf.where(cdf > 0, cdf, tf.reduce_max(cdf)))
        lut = (cdf - cdf_min) * 255.0 / tf.maximum(cdf[-1] - cdf_min, 1.0)
        return tf.gather(tf.clip_by_value(lut, 0.0, 255.0), c8)
    return tf.stack([channel(image[..., k]) for k in range(3)], axis=-1)


def _sharpness(image, level):
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    blurred = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "SAME")[0]
    return _blend(blurred, image, 1.0 + level * 0.9)


_RANDAUGMENT_OPS = (
    lambda im, v: im,                                                           # identity
    _autocontrast,
    _equalize,
    _rotate,
    lambda im, v: tf.where(im < 256.0 - tf.abs(v) * 256.0, im, 255.0 - im),     # solarize
    lambda im, v: _blend(tf.image.rgb_to_grayscale(im) * tf.ones([1, 1, 3]), im,
                         1.0 + v * 0.9),                                        # color
    lambda im, v: tf.floor(im / 2.0 ** tf.round(tf.abs(v) * 4.0)) * 2.0 ** tf.round(
        tf.abs(v) * 4.0),                                                       # posterize
    lambda im, v: _blend(tf.reduce_mean(tf.image.rgb_to_grayscale(im)) * tf.ones_like(im),
                         im, 1.0 + v * 0.9),                                    # contrast
    lambda im, v: _blend(tf.zeros_like(im), im, 1.0 + v * 0.9),                 # brightness
    _sharpness,
    lambda im, v: _affine(im, [1.0, v * 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),    # shear x
    lambda im, v: _affine(im, [1.0, 0.0, 0.0, v * 0.3, 1.0, 0.0, 0.0, 0.0]),    # shear y
    lambda im, v: _affine(im, [1.0, 0.0, v * 0.45 * tf.cast(tf.shape(im)[1], tf.float32),
                               0.0, 1.0, 0.0, 0.0, 0.0]),                       # translate x
    lambda im, v: _affine(im, [1.0, 0.0, 0.0, 0.0, 1.0,
                               v * 0.45 * tf.cast(tf.shape(im)[0], tf.float32), 0.0, 0.0]),
)


def rand_augment(image: tf.Tensor, *, seed, num_layers: int = RANDAUGMENT_LAYERS,
                 magnitude: int = RANDAUGMENT_MAGNITUDE) -> tf.Tensor:
    """RandAugment on a float32 0..255 image; deterministic for a given stateless `seed`.

    Each layer picks one operation uniformly and a random sign; the level is magnitude / 10
    (rotation up to 30 degrees, shear 0.3, translation 45 % of the side, enhancements 1 +/- 0.9).
    """
    seeds = tf.random.experimental.stateless_split(seed, 2 * num_layers)
    level = magnitude / 10.0

    def layer(i, image):  # one traced body for all layers: tracing 14 branches once, not per layer
        op = tf.random.stateless_uniform([], seeds[2 * i], 0, len(_RANDAUGMENT_OPS), tf.int32)
        sign = tf.where(tf.random.stateless_uniform([], seeds[2 * i + 1]) < 0.5, -1.0, 1.0)
        image = tf.switch_case(op, [lambda f=f: f(image, sign * level) for f in _RANDAUGMENT_OPS])
        return i + 1, tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), image.shape)

    _, image = tf.while_loop(lambda i, _: i < num_layers, layer, [tf.constant(0), image])
    return image
