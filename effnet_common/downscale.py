"""Phone-size photos made training-size, once: the one `--max_image_side` rule.

A 12-megapixel phone photo is 3-5 MB, and every pass that decodes it (each epoch without the
pixel cache, validation, the embedding cache, the audit) pays for entropy-decoding all of it,
while the model sees 224 to 600 px. `trainer.prepare` therefore stores a photo whose longer side
is over `max_side` px downscaled to that side, and predict, evaluate, the audit and the client
apply the same rule to the photos they read, so every command sees a photo the way training saw
it. The chosen default and the measurements behind it are in docs/data.md.

The rule, for bytes whose upright longer side exceeds `max_side` (0: never):
  1. decode (a JPEG at the largest DCT scaling that keeps both sides at least the target: libjpeg's
     scaled IDCT is itself a low-pass, and the IDCT runs on up to 64x fewer pixels);
  2. turn upright by the JPEG's EXIF orientation (`effnet_common.decode`), since the new file
     carries no EXIF: the stored photo is upright;
  3. resize with an antialiasing (area-weighted triangle) filter to `max_side` on the longer side,
     the aspect ratio kept (each side rounded);
  4. encode: a JPEG as a JPEG at `JPEG_QUALITY` (4:2:0 chroma, as cameras write), anything else
     as a PNG (lossless; GIF, BMP and WebP are read by TensorFlow's decoders as PNG is).
Smaller images keep their bytes, EXIF included. Bytes that do not decode are returned as they
are: the caller's own check (prepare's, the export's) counts and reports them.
"""
from __future__ import annotations

import functools
import threading
from typing import Optional, Tuple

# TensorFlow is imported where the rule runs, not here: commands that only name the default in
# a flag (trainer.cloud.batch_predict, whose --dry_run loads no TensorFlow) import this module.

# The longer side, in pixels, above which a photo is downscaled (docs/data.md: chosen from the
# input-pixel PSNR at every backbone's native size and the bytes kept, bench/max_image_side.py).
DEFAULT_MAX_IMAGE_SIDE = 1024
# Quality of the re-encoded JPEG (libjpeg's scale; cameras write about 90-95). Measured on real
# photos (bench/max_image_side.py, docs/data.md): 95 keeps 1.5x the bytes of 90 for the same
# PSNR at the model's input (37.7 dB at 1024 px either way): the resize, not the encoding, decides.
JPEG_QUALITY = 90
_DCT_RATIOS = (8, 4, 2, 1)


def target_size(height: int, width: int, max_side: int) -> Optional[Tuple[int, int]]:
    """(height, width) after the rule, or None when the image keeps its bytes (longer side at
    most `max_side`, or `max_side` 0). Integer arithmetic (each side rounded half up), the same
    in `fit_tensor`'s graph, so both ways to the rule give the same size and bytes."""
    longer = max(height, width)
    if max_side <= 0 or longer <= max_side:
        return None
    return tuple(max(1, (side * max_side + longer // 2) // longer) for side in (height, width))


def stored_format(read_format: str) -> str:
    """The format a downscaled image is stored in: JPEG stays JPEG, the rest become PNG."""
    return "JPEG" if read_format == "JPEG" else "PNG"


def _upright_jpeg_shape(content, orientation):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    stored = tf.io.extract_jpeg_shape(content)[:2]
    return tf.where(orientation >= 5, tf.reverse(stored, [0]), stored)


def _resize_encoded(content, size, is_jpeg):
    """content -> its upright pixels resized to `size` ([height, width]), re-encoded."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from effnet_common import decode  # pylint: disable=import-outside-toplevel
    orientation = decode.exif_orientation(content)

    def jpeg():
        upright = _upright_jpeg_shape(content, orientation)
        fits = [tf.reduce_all(upright // r >= size) for r in _DCT_RATIOS]
        index = tf.argmax(tf.cast(tf.stack(fits), tf.int32), output_type=tf.int32)  # the first that fits
        branches = [lambda r=r: tf.io.decode_jpeg(content, channels=3, ratio=r) for r in _DCT_RATIOS]
        return decode.apply_orientation(tf.switch_case(index, branches), orientation)

    def other():
        return tf.io.decode_image(content, channels=3, expand_animations=False)

    image = tf.cond(is_jpeg, jpeg, other)
    image.set_shape([None, None, 3])
    resized = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)
    pixels = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return tf.cond(is_jpeg, lambda: tf.io.encode_jpeg(pixels, quality=JPEG_QUALITY),
                   lambda: tf.io.encode_png(pixels))


def _fit_graph(content, max_side):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from effnet_common import decode  # pylint: disable=import-outside-toplevel
    is_jpeg = tf.io.is_jpeg(content)
    shape = tf.cond(is_jpeg, lambda: _upright_jpeg_shape(content, decode.exif_orientation(content)),
                    lambda: tf.shape(tf.io.decode_image(content, channels=3, expand_animations=False))[:2])
    shape, side = tf.cast(shape, tf.int64), tf.cast(max_side, tf.int64)  # no overflow in the product
    longer = tf.reduce_max(shape)
    target = tf.cast(tf.maximum((shape * side + longer // 2) // tf.maximum(longer, 1), 1), tf.int32)
    return tf.cond(tf.logical_and(side > 0, longer > side),
                   lambda: _resize_encoded(content, target, is_jpeg), lambda: content)


_TRACE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def _traced_once(name: str):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    string = tf.TensorSpec([], tf.string)
    if name == "resize":
        return tf.function(_resize_encoded).get_concrete_function(
            string, tf.TensorSpec([2], tf.int32), tf.TensorSpec([], tf.bool))
    return tf.function(_fit_graph).get_concrete_function(string, tf.TensorSpec([], tf.int32))


def _traced(name: str):
    """The function traced once into a graph, whichever thread asks first (the readers' pools
    call it from several): as eager ops, the few dozen ops would cost milliseconds an image."""
    with _TRACE_LOCK:
        return _traced_once(name)


def downscale(content: bytes, *, height: int, width: int, read_format: str, max_side: int) -> bytes:
    """The rule applied to an image already decoded once (prepare's check knows its upright
    `height` and `width` and its format): new bytes when it is over `max_side`, else its own."""
    target = target_size(height, width, max_side)
    if target is None:
        return content
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    fmt = stored_format(read_format)
    encoded = _traced("resize")(tf.constant(content), tf.constant(target, tf.int32), tf.constant(fmt == "JPEG"))
    return encoded.numpy()


def fit_tensor(content, max_side):
    """The rule as a graph, for tf.data readers (the audit): the scalar string tensor `content`
    downscaled when its upright longer side is over `max_side`, else `content` itself. Bytes that
    do not decode raise the decoder's error, for the reader's own skip-and-count."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return _traced("fit")(tf.convert_to_tensor(content, tf.string), tf.convert_to_tensor(max_side, tf.int32))


def fit(content: bytes, *, max_side: int) -> bytes:
    """The bytes a reader hands the model (predict, evaluate, the client, batch prediction): the
    image downscaled by the rule when it is over `max_side`, else `content` itself; bytes that do
    not decode are returned as they are, for the export's own check to report."""
    if max_side <= 0:
        return content
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    data = tf.constant(content)
    try:  # eagerly first: the longer side needs no orientation, and bad bytes raise here quietly
        # (a graph that fails logs a 'rendezvous is aborting' warning: noise in the command's log)
        shape = (tf.io.extract_jpeg_shape(data) if bool(tf.io.is_jpeg(data))
                 else tf.shape(tf.io.decode_image(data, channels=3, expand_animations=False)))
        if int(tf.reduce_max(shape[:2])) <= max_side:
            return content
        return fit_tensor(data, tf.constant(max_side, tf.int32)).numpy()
    except tf.errors.OpError:
        return content
