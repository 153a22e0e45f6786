"""Decoding: encoded image bytes -> float32 pixels in 0..255, for evaluation, serving and training.

`decode_for_eval` is the single preprocessing source for evaluation and serving (the eval
pipeline and serving/signatures.py both call it), so a served image is seen exactly as in
evaluation. `decode_for_train` is the Inception-style random crop. Both decode only their window
of a JPEG, scaled in the DCT where the window is large; `random_flip` and `to_uint8` are the
cheap steps after them. Pixels are not normalized: each backbone normalizes inside the model,
so the exported SavedModel stands alone.

Photos come out the right way up: a JPEG's EXIF Orientation tag (EXIF 2.3, CIPA DC-008, tag
0x0112 in IFD0; phone cameras store a portrait photo sideways with Orientation=6) is read in the
graph (`exif_orientation`, plain TensorFlow ops, so it runs in tf.data and in TF Serving's C++
runtime alike) and applied to the decoded window (`apply_orientation`, as PIL's
`ImageOps.exif_transpose`). Crop windows are chosen in upright coordinates and mapped back to the
stored ones, so the fast window decode is kept and every crop is the crop of the upright photo.
Other formats are taken as stored (orientation 1): EXIF in PNG/WebP is rare, and TensorFlow's
decoders ignore it. `decode_upright` is the whole upright image, for checks that need every pixel.
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

# Inception-style evaluation: a square center crop of 87.5 % of the shorter side
# (tf.image.central_crop(0.875) in the Inception/slim preprocessing), resized to the model input.
EVAL_CENTRAL_FRACTION = 0.875
# Inception-style training crop (Szegedy et al. 2015, as in the EfficientNet reference input
# pipeline): 8-100 % of the area, aspect ratio 3/4-4/3.
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
CROP_MIN_OBJECT_COVERED = 0.1
CROP_MAX_ATTEMPTS = 10

# EXIF orientation (EXIF 2.3, CIPA DC-008-2012: tag 274 = 0x0112 "Orientation", type SHORT, count
# 1, in IFD0 of the APP1 segment "Exif\0\0" that follows a JPEG's SOI marker). Only a bounded prefix
# of the file is read: the APP1 header and IFD0's entries must lie in the first 64 KiB (APP1 is
# at most 64 KiB and comes first or right after the JFIF APP0; cameras put IFD0 right after the
# 8-byte TIFF header), and IFD0's first 64 entries are searched (tags are sorted, and 0x0112
# comes among the first ten in practice).
EXIF_PREFIX_BYTES = 64 * 1024
EXIF_MAX_ENTRIES = 64
_EXIF_HEADER = b"Exif\x00\x00"  # after FF E1 (APP1) and the segment's two length bytes
_TIFF_LITTLE, _TIFF_BIG = b"II*\x00", b"MM\x00*"  # byte order and the magic 42
_EXIF_ORIENTATION_TAG, _EXIF_SHORT = 0x0112, 3
_IFD_BYTES = 2 + 12 * EXIF_MAX_ENTRIES  # entry count, entries
_PADDING = b"\x00" * _IFD_BYTES  # zeros read past the end: no entry, no tag
# Per orientation 1..8 (index 0 unused, as 1): [transposes, reverses rows, reverses columns];
# orientation k is a transpose (k >= 5) followed by these flips, as PIL's ImageOps.exif_transpose:
# 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90
# counter-clockwise.
_ORIENTATIONS = ((0, 0, 0), (0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0),
                 (1, 0, 0), (1, 0, 1), (1, 1, 1), (1, 1, 0))

# Written in TensorFlow's own control flow (tf.cond, tf.switch_case): nothing for AutoGraph to
# convert, and skipping its source transformation saves seconds in every process that traces
# a decode (an export, each tf.data pipeline).
_plain_tf = tf.autograph.experimental.do_not_convert


def _words(data: tf.Tensor, little: tf.Tensor, dtype) -> tf.Tensor:
    """`data` (a string whose length is a multiple of the word size) as int32 words of `dtype`,
    in the TIFF byte order."""
    words = tf.where(little, tf.io.decode_raw(data, dtype, little_endian=True),
                     tf.io.decode_raw(data, dtype, little_endian=False))
    return tf.cast(words, tf.int32)


@_plain_tf
def exif_orientation(image_bytes) -> tf.Tensor:
    """EXIF Orientation (1..8) of encoded image bytes; 1 when absent, not a JPEG, malformed or out
    of range. Plain TensorFlow ops (no py_function, no control flow), so it runs in tf.data and
    inside the exported SavedModel, where TF Serving's C++ runtime serves raw phone photos
    upright too; it never raises on garbage. Reads the first `EXIF_PREFIX_BYTES` bytes only.

    Args:
      image_bytes: scalar string tensor (or bytes).

    Returns:
      int32 scalar in 1..8.
    """
    prefix = tf.strings.substr(image_bytes, 0, EXIF_PREFIX_BYTES)
    size = tf.strings.length(prefix)
    padded = tf.strings.join([prefix, _PADDING])  # every read below fits, clamped to [0, size]
    ifd, ok, little = _exif_ifd0(prefix, padded, size)
    words = _words(tf.strings.substr(padded, ifd, _IFD_BYTES), little, tf.uint16)
    entries = tf.reshape(words[1:], [EXIF_MAX_ENTRIES, 6])  # tag, type, count (2), value (2)
    index = tf.range(EXIF_MAX_ENTRIES)
    match = tf.reduce_all(tf.stack([  # counted, read whole, Orientation, SHORT
        index < words[0], ifd + 2 + 12 * (index + 1) <= size,
        tf.equal(entries[:, 0], _EXIF_ORIENTATION_TAG), tf.equal(entries[:, 1], _EXIF_SHORT)]), 0)
    value = tf.gather(entries[:, 4], tf.argmax(tf.cast(match, tf.int32), output_type=tf.int32))
    ok = tf.reduce_all(tf.stack([ok, tf.reduce_any(match), value >= 1, value <= 8]))
    return tf.where(ok, value, 1)


def _exif_ifd0(prefix: tf.Tensor, padded: tf.Tensor, size: tf.Tensor):
    """(offset of IFD0 in the file, clamped to [0, size]; whether the Exif header is sound; whether
    it is little-endian). The first "Exif\\0\\0" is found by one byte search (StringSplitV2: FF E1
    never occurs in entropy-coded data, where an FF is followed by 00 or a restart marker), then
    checked: SOI at the start, FF E1 before it, a TIFF byte order with the magic 42."""
    _, parts, _ = tf.raw_ops.StringSplitV2(input=tf.reshape(prefix, [1]), sep=_EXIF_HEADER, maxsplit=1)
    tiff = tf.strings.length(tf.concat([parts, [""]], 0)[0]) + len(_EXIF_HEADER)  # "" has no part
    head = tf.strings.substr(padded, tf.maximum(tiff - 10, 0), 18)  # FF E1 .. IFD0 offset
    mark = tf.strings.substr(head, 10, 4)
    little = tf.equal(mark, _TIFF_LITTLE)
    offset = _words(tf.strings.substr(head, 14, 4), little, tf.int32)[0]  # negative past 2**31
    ok = tf.reduce_all(tf.stack([
        tf.equal(tf.size(parts), 2), tiff >= 10, little | tf.equal(mark, _TIFF_BIG),
        tf.equal(tf.strings.substr(head, 0, 2), b"\xff\xe1"), offset >= 0, offset <= size,
        tf.equal(tf.strings.substr(prefix, 0, 3), b"\xff\xd8\xff")]))
    return tf.minimum(tiff + tf.clip_by_value(offset, 0, size), size), ok, little


def _orientation_row(orientation) -> tf.Tensor:
    """[transposes, reverses rows, reverses columns] (int32 0/1) of an orientation; 1 for anything
    outside 1..8."""
    orientation = tf.convert_to_tensor(orientation, tf.int32)
    index = tf.where((orientation >= 1) & (orientation <= 8), orientation, 1)
    return tf.gather(tf.constant(_ORIENTATIONS, tf.int32), index)


@_plain_tf
def apply_orientation(image: tf.Tensor, orientation) -> tf.Tensor:
    """The stored pixels [H, W, C] turned upright for an EXIF orientation (1..8; anything else
    is taken as 1)."""
    return _turn(image, _orientation_row(orientation))


def _turn(image: tf.Tensor, row: tf.Tensor) -> tf.Tensor:
    """`image` transposed and reversed as an `_ORIENTATIONS` row says, without control flow: a
    transpose with a data-dependent permutation, then a reverse of data-dependent axes.
    Measured on a 328 px uint8 window: transpose ~0.5 ms, reverse ~0.1 ms; a strided slice
    with a stride of -1 instead took 10 ms."""
    perm = tf.where(row[0] > 0, tf.constant([1, 0, 2]), tf.constant([0, 1, 2]))
    return tf.reverse(tf.transpose(image, perm), tf.boolean_mask(tf.constant([0, 1]), row[1:] > 0))


def _upright_shape(stored: tf.Tensor, row: tf.Tensor) -> tf.Tensor:
    """[H, W, C] of the upright image: the stored [H, W, C] with H and W swapped when the
    orientation (its `_ORIENTATIONS` row) transposes."""
    return tf.where(row[0] > 0, tf.gather(stored, [1, 0, 2]), stored)


def _stored_window(window: tf.Tensor, upright: tf.Tensor, row: tf.Tensor) -> tf.Tensor:
    """The window [y, x, h, w] of the upright image (of shape `upright`, [H, W, ...]) in stored
    coordinates, for the orientation of the `_ORIENTATIONS` row: the flips undone, then the
    transpose, so `_turn` of the stored window's pixels is exactly the upright window's."""
    begin, size = window[:2], window[2:]
    begin = tf.where(row[1:] > 0, upright[:2] - begin - size, begin)
    return tf.gather(tf.concat([begin, size], 0), tf.where(row[0] > 0, [1, 0, 3, 2], [0, 1, 2, 3]))


@_plain_tf
def decode_upright(image_bytes) -> tf.Tensor:
    """The whole image, uint8 [H, W, 3], the right way up (for a JPEG with an EXIF Orientation;
    other formats as stored): for checks that need every pixel, such as a duplicate's fingerprint."""
    image = _decode_any(image_bytes)
    image = apply_orientation(image, exif_orientation(image_bytes))
    image.set_shape([None, None, 3])
    return image


def _decode_any(image_bytes: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, 3] from JPEG, PNG, GIF (first frame) or BMP bytes."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Bilinear resize to [S, S, 3] float32; bilinear never leaves the input's 0..255 range.

    The uint8 image is cast to float32 first: the result is bit-identical, and the float kernel
    is faster (measured here on a 328 px window to 224 px: 0.27 ms instead of 0.39 per image)."""
    image = tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size], method="bilinear")
    image.set_shape([image_size, image_size, 3])
    return image


def _center_window(shape: tf.Tensor) -> tf.Tensor:
    """[y, x, h, w] of the square center crop of `EVAL_CENTRAL_FRACTION` of the shorter side."""
    height, width = shape[0], shape[1]
    side = tf.cast(tf.cast(tf.minimum(height, width), tf.float32) * EVAL_CENTRAL_FRACTION, tf.int32)
    side = tf.maximum(side, 1)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


@_plain_tf
def decode_for_eval(image_bytes, image_size: int) -> tf.Tensor:
    """Deterministic preprocessing for evaluation and serving: decode, center crop, resize.

    The single source of evaluation preprocessing: the eval pipeline, the frozen phase's views
    and the exported serving signatures all call it, so a served image is seen exactly as in
    evaluation. For JPEG only the crop window is decoded, at the largest DCT scaling that keeps
    it at least `image_size` (`_decode_jpeg_window`, as the training crop does); other formats
    are decoded whole, then cropped. A JPEG is turned upright by its EXIF orientation, and the
    crop is the center crop of the upright photo, pixel for pixel (`_decode_window`).

    Args:
      image_bytes: scalar string tensor of JPEG, PNG, GIF (first frame) or BMP bytes.
      image_size: side of the square output.

    Returns:
      float32 [image_size, image_size, 3] with values in 0..255.
    """
    return _decode_window(image_bytes, image_size, _center_window)


def _decode_window(image_bytes, image_size: int, window_of) -> tf.Tensor:
    """Decodes the window `window_of(shape)` ([y, x, h, w]) of an image and resizes it to
    [S, S, 3]: only the window of a JPEG, scaled in the DCT; other formats whole, then cropped.

    A JPEG with an EXIF orientation other than 1 takes its own branch: `window_of` sees the
    upright shape, the window is mapped to stored coordinates, decoded, then turned upright (on
    the small decoded window, before the resize), so the crop is exactly the upright photo's
    crop (the center crop's rounding, the random crop's aspect ratio distribution). Everything
    else decodes as before orientation was read: a cond, since mapping every window
    (a few dozen scalar ops) measured ~0.3 ms more per image in a tf.data map, the cond ~0.03."""
    orientation = exif_orientation(image_bytes)  # 1 for every format but JPEG

    def jpeg():
        return _decode_jpeg_window(image_bytes, window_of(tf.io.extract_jpeg_shape(image_bytes)), image_size)

    def other():
        image = _decode_any(image_bytes)
        y, x, h, w = tf.unstack(window_of(tf.shape(image)))
        return tf.image.crop_to_bounding_box(image, y, x, h, w)

    def oriented():  # a JPEG
        row = _orientation_row(orientation)
        upright = _upright_shape(tf.io.extract_jpeg_shape(image_bytes), row)
        return _decode_jpeg_window(image_bytes, window_of(upright), image_size, orientation_row=row,
                                   upright=upright)

    def as_stored():
        return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)

    image = tf.cond(tf.equal(orientation, 1), as_stored, oriented)
    image.set_shape([None, None, 3])
    return _resize(image, image_size)


def _random_window(shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """[y, x, h, w] of an Inception-style random crop inside an image of `shape`."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=CROP_MIN_OBJECT_COVERED, aspect_ratio_range=CROP_ASPECT_RANGE,
        area_range=CROP_AREA_RANGE, max_attempts=CROP_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])


@_plain_tf
def decode_for_train(image_bytes, image_size: int, seed) -> tf.Tensor:
    """Random-crop decode for training: float32 [S, S, 3] in 0..255.

    For JPEG only the crop window is decoded (`tf.image.decode_and_crop_jpeg`: rows below the
    window are never decoded), which keeps the reader near the speed of decoding; other formats
    are decoded whole, then cropped. The window is drawn on the upright shape of a JPEG with an
    EXIF orientation, so its distribution is the upright photo's (the aspect ratio is drawn
    uniformly in 3/4..4/3, which a transpose would turn into a different distribution of 1/r),
    and untagged images get exactly the crops they got before orientation was read.
    """
    return _decode_window(image_bytes, image_size, lambda shape: _random_window(shape, seed))


_DCT_RATIOS = (1, 2, 4, 8)


def _decode_jpeg_window(image_bytes: tf.Tensor, window: tf.Tensor, image_size: int, *,
                        orientation_row: Optional[tf.Tensor] = None,
                        upright: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Decodes only `window` ([y, x, h, w]) of a JPEG, at the largest DCT scaling (1/2, 1/4,
    1/8, done by libjpeg inside the decoder) that keeps the window's shorter side at least
    `image_size`. Entropy decoding still reads the file, but the IDCT, upsampling and colour
    conversion run on up to 64x fewer pixels, and the resize starts near the target size
    (less aliasing too). Measured on a 4000x3000 photo, 2800x3600 window, 224 px: the decode
    1.5x faster, the resize from 350x450 instead of 2800x3600. The window is given in the
    scaled image's coordinates, since TensorFlow's decoder crops after scaling.

    With an `orientation_row` (`_ORIENTATIONS`), `window` is in the `upright` shape's
    coordinates and the result is upright: the window is scaled there, mapped to the stored
    scaled image (ceil(H / ratio) x ceil(W / ratio)), decoded and turned, so the scaled pixel
    grid is flipped with the image, not shifted by the rounding."""
    shorter = tf.minimum(window[2], window[3])
    index = tf.reduce_sum(tf.cast(shorter >= image_size * tf.constant(_DCT_RATIOS[1:]), tf.int32))
    ratio = tf.gather(tf.constant(_DCT_RATIOS), index)
    scaled = tf.maximum(window // ratio, tf.constant([0, 0, 1, 1]))
    if orientation_row is not None:
        scaled = _stored_window(scaled, (upright + ratio - 1) // ratio, orientation_row)

    def at(r):
        return lambda: tf.image.decode_and_crop_jpeg(image_bytes, scaled, channels=3, ratio=r)

    image = tf.switch_case(index, [at(r) for r in _DCT_RATIOS])
    return image if orientation_row is None else _turn(image, orientation_row)


@_plain_tf
def random_flip(image: tf.Tensor, seed) -> tf.Tensor:
    """Flips left-right with probability 1/2 (stateless). A cond, so the unflipped half costs
    nothing; done on the uint8 image (a quarter of the bytes of float32). Measured here: a
    per-batch broadcast `tf.where` instead cost ~1.7 ms per 224 px image, as much as a decode."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


@_plain_tf
def to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Rounds a 0..255 float image to uint8: batches move a quarter of the bytes, and the cast
    back to float happens once per batch (measured: ~0.2 ms less per 224 px image)."""
    return tf.cast(image + 0.5, tf.uint8)  # bilinear output (and RandAugment's) is in 0..255
