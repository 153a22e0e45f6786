"""EXIF orientation: a photo stored sideways with an Orientation tag is seen the right way up
everywhere (effnet_common.decode, prepare's recorded size, the export's signatures).

The reference is PIL's `ImageOps.exif_transpose`. Each tagged file stores the inverse transform
of a real photo (matplotlib's grace_hopper.jpg, scaled down) with Orientation = k, so its upright
pixels are the upright file's, up to JPEG (quality 100, no chroma subsampling).
"""
import io
import os
import struct

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image, ImageOps

import trainer  # noqa: F401  # sets TF_USE_LEGACY_KERAS before TensorFlow loads
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from effnet_common import decode
from effnet_common.decode import _center_window as center_window, _resize as resize
from testbed import exports
from trainer.data import preparing
from trainer.exporting import saved_model

SIZE = 32
ORIENTATION = 0x0112
# Upright W x H: the eval crop (side 49) leaves odd margins (7 and 23 px), where the rounding of
# the center offset differs between a window and its mirror image.
UPRIGHT = (56, 72)
# The PIL transpose that stores an upright image as orientation k (the inverse of exif_transpose's).
STORE = {1: None, 2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM,
         5: Image.TRANSPOSE, 6: Image.ROTATE_90, 7: Image.TRANSVERSE, 8: Image.ROTATE_270}
# JPEG tolerance between a tagged file and the upright file (different encodings of one photo).
MEAN_TOLERANCE, MAX_TOLERANCE = 1.0, 12.0
HEAD_SCALE = 30.0


def photo(size=UPRIGHT) -> Image.Image:
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with Image.open(path) as image:
        return image.convert("RGB").resize(size, Image.LANCZOS)


def jpeg(image: Image.Image, orientation=None) -> bytes:
    """Quality 100, no chroma subsampling; `orientation` written as EXIF (PIL writes it 'MM')."""
    exif = Image.Exif()
    if orientation:
        exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=100, subsampling=0, exif=exif)
    return buffer.getvalue()


def tagged(k: int, size=UPRIGHT) -> bytes:
    """The upright photo stored as orientation k, tag included."""
    upright = photo(size)
    return jpeg(upright if STORE[k] is None else upright.transpose(STORE[k]), k)


def pil_upright(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def assert_close(actual, expected):
    diff = np.abs(np.asarray(actual, np.float32) - np.asarray(expected, np.float32))
    assert diff.mean() < MEAN_TOLERANCE and diff.max() < MAX_TOLERANCE, (diff.mean(), diff.max())


def app1(order: str, orientation: int) -> bytes:
    """A hand-made APP1 Exif segment in byte order 'II' or 'MM': IFD0 holds ImageWidth,
    ImageLength, Make (an ASCII value stored after the IFD) and Model before Orientation, and
    XResolution's slot after it, as a camera writes them."""
    e = "<" if order == "II" else ">"
    make = b"Phone\x00\x00\x00"
    count = 6
    data_at = 8 + 2 + 12 * count + 4
    entries = [struct.pack(e + "HHI", 0x0100, 4, 1) + struct.pack(e + "I", 4000),
               struct.pack(e + "HHI", 0x0101, 4, 1) + struct.pack(e + "I", 3000),
               struct.pack(e + "HHII", 0x010F, 2, 6, data_at),
               struct.pack(e + "HHI", 0x0110, 2, 4) + b"X1\x00\x00",
               struct.pack(e + "HHI", ORIENTATION, 3, 1) + struct.pack(e + "HH", orientation, 0),
               struct.pack(e + "HHI", 0x0128, 3, 1) + struct.pack(e + "HH", 2, 0)]
    tiff = (order.encode() + struct.pack(e + "HI", 42, 8) + struct.pack(e + "H", count)
            + b"".join(entries) + struct.pack(e + "I", 0) + make)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def with_app1(data: bytes, segment: bytes, *, after_app0: bool) -> bytes:
    """`data` (a JPEG without EXIF, starting SOI then PIL's JFIF APP0) with `segment` inserted
    right after SOI or after the APP0."""
    at = 2 + (2 + struct.unpack(">H", data[4:6])[0] if after_app0 else 0)
    return data[:at] + segment + data[at:]


def orientation_of(data: bytes) -> int:
    return int(decode.exif_orientation(tf.constant(data)))


@pytest.mark.parametrize("k", range(1, 9))
def test_each_orientation_is_read_and_applied_as_pil_does(k):
    data = tagged(k)
    assert orientation_of(data) == k
    with Image.open(io.BytesIO(data)) as image:
        stored = np.asarray(image.convert("RGB"))
    reference = pil_upright(data)
    assert reference.shape[:2] == (UPRIGHT[1], UPRIGHT[0])
    np.testing.assert_array_equal(decode.apply_orientation(tf.constant(stored), k).numpy(), reference)
    whole = decode.apply_orientation(tf.io.decode_jpeg(data, channels=3), k)  # TF's decoder, not PIL's
    np.testing.assert_array_equal(decode.decode_upright(tf.constant(data)).numpy(), whole.numpy())


@pytest.mark.parametrize("k", range(1, 9))
def test_the_eval_crop_of_a_tagged_photo_is_the_upright_photos(k):
    data = tf.constant(tagged(k))
    got = decode.decode_for_eval(data, SIZE).numpy()
    # Exact: the window decode equals turning the whole decoded image upright, then cropping
    # its center (odd margins included).
    upright = decode.apply_orientation(tf.io.decode_jpeg(data, channels=3), k)
    y, x, h, w = center_window(tf.shape(upright)).numpy()
    np.testing.assert_array_equal(got, resize(upright[y:y + h, x:x + w], SIZE).numpy())
    assert_close(got, decode.decode_for_eval(tf.constant(jpeg(photo())), SIZE))
    big = (280, 360)  # window 245 px: decoded at 1/4 scale in the DCT
    assert_close(decode.decode_for_eval(tf.constant(tagged(k, big)), SIZE),
                 decode.decode_for_eval(tf.constant(jpeg(photo(big))), SIZE))


@pytest.mark.parametrize("k", (2, 6, 7, 8))
def test_the_training_crop_is_drawn_on_the_upright_photo(k):
    """The same seed draws the same upright window from the tagged and the upright file."""
    for seed in ([1, 2], [3, 4], [5, 6]):
        assert_close(decode.decode_for_train(tf.constant(tagged(k)), SIZE, tf.constant(seed)),
                     decode.decode_for_train(tf.constant(jpeg(photo())), SIZE, tf.constant(seed)))


@pytest.mark.parametrize("order, k, after_app0", [("II", 6, False), ("MM", 8, True), ("II", 3, True),
                                                  ("MM", 5, False)])
def test_both_byte_orders_and_a_tag_after_other_entries(order, k, after_app0):
    upright = photo()
    data = with_app1(jpeg(upright.transpose(STORE[k])), app1(order, k), after_app0=after_app0)
    with Image.open(io.BytesIO(data)) as image:
        assert image.getexif()[ORIENTATION] == k  # PIL reads the hand-made segment too
    assert orientation_of(data) == k
    assert_close(decode.decode_for_eval(tf.constant(data), SIZE),
                 decode.decode_for_eval(tf.constant(jpeg(upright)), SIZE))


_ENTRY = struct.pack("<HHI", ORIENTATION, 3, 1)  # Orientation, SHORT, count 1 ('II')
_HEAD = b"II*\x00\x08\x00\x00\x00"  # TIFF header, IFD0 at 8
# (bytes of a good 'II' segment, what replaces them, the orientation read then)
BREAKAGES = ((b"II*\x00", b"XX*\x00", 1),  # no byte order
             (b"II*\x00", b"II+\x00", 1),  # not TIFF's magic 42
             (b"\xff\xe1", b"\xff\xe2", 1),  # not APP1
             (_HEAD, b"II*\x00\xf0\xff\xff\xff", 1),  # IFD0 past the end
             (_HEAD + b"\x06\x00", _HEAD + b"\x00\x00", 1),  # no entry
             (_HEAD + b"\x06\x00", _HEAD + b"\xff\xff", 6),  # count 65535: the entries read still count
             (_ENTRY + b"\x06", _ENTRY + b"\x09", 1), (_ENTRY + b"\x06", _ENTRY + b"\x00", 1),  # out of range
             (_ENTRY, struct.pack("<HHI", ORIENTATION, 2, 1), 1),  # ASCII, not SHORT
             (_ENTRY, struct.pack("<HHI", ORIENTATION, 4, 1), 1))  # LONG: not the spec's SHORT (PIL takes it)


def _broken() -> list:
    """(bytes, expected orientation) for garbage and malformed EXIF, and every truncation of a
    tagged file's head: 1 until the Orientation entry is whole, then its value."""
    base = jpeg(photo())
    good = with_app1(base, app1("II", 6), after_app0=False)
    entry_end = good.index(struct.pack("<HHI", ORIENTATION, 3, 1)) + 12
    rng = np.random.default_rng(0)
    cases = [(b"", 1), (b"\xff\xd8\xff", 1), (good, 6), (b"Exif\x00\x00II*\x00" + good, 1)]
    cases += [(rng.bytes(n), 1) for n in (1, 7, 100, 5000)]
    cases += [(b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00" + rng.bytes(n), 1) for n in (0, 3, 8, 200)]
    cases += [(good[:n], 6 if n >= entry_end else 1) for n in range(0, entry_end + 16)]
    for old, new, expected in BREAKAGES:
        assert old in good
        cases.append((good.replace(old, new, 1), expected))
    return cases


def test_garbage_and_broken_exif_give_1_and_never_raise():
    cases = _broken()
    assert [orientation_of(data) for data, _ in cases] == [k for _, k in cases]
    # In a graph too (tf.data, as the reader and a SavedModel run it).
    ds = tf.data.Dataset.from_tensor_slices([data for data, _ in cases]).map(decode.exif_orientation)
    assert [int(k) for k in ds] == [k for _, k in cases]


def test_png_is_taken_as_stored():
    """TensorFlow's decoders ignore EXIF outside JPEG, and so does decode.py (documented)."""
    stored = photo().transpose(STORE[6])
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "PNG", exif=exif)
    png = buffer.getvalue()
    with Image.open(io.BytesIO(png)) as image:
        assert image.getexif()[ORIENTATION] == 6  # the tag is there (an eXIf chunk)
    assert orientation_of(png) == 1 and orientation_of(jpeg(stored, 6)) == 6
    assert decode.decode_upright(tf.constant(png)).shape == (UPRIGHT[0], UPRIGHT[1], 3)


def test_prepare_records_the_upright_size_and_keeps_the_bytes(tmp_path):
    files = {"a/sideways.jpg": tagged(6), "a/plain.jpg": jpeg(photo()), "b/plain.jpg": jpeg(photo().rotate(10))}
    for name, data in files.items():
        os.makedirs(tmp_path / "in" / os.path.dirname(name), exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data)
    out = str(tmp_path / "out")
    preparing.prepare(input_dir=str(tmp_path / "in"), output_dir=out, validation_fraction=0.0, num_shards=1)
    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
                "image/filename": tf.io.FixedLenFeature([], tf.string),
                "image/height": tf.io.FixedLenFeature([], tf.int64),
                "image/width": tf.io.FixedLenFeature([], tf.int64)}
    records = {}
    for record in tf.data.TFRecordDataset(tf.io.gfile.glob(os.path.join(out, "train-*"))):
        r = tf.io.parse_single_example(record, features)
        records[r["image/filename"].numpy().decode()] = r
    assert set(records) == set(files)
    for name, r in records.items():
        assert (int(r["image/height"]), int(r["image/width"])) == (UPRIGHT[1], UPRIGHT[0]), name
        assert r["image/encoded"].numpy() == files[name]  # the original bytes, tag and all


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    """The tiny stand-in network with its head scaled up, so its probabilities tell orientations apart."""
    keras.utils.set_random_seed(0)
    model = exports.tiny_net(3, image_size=SIZE)
    head = model.layers[-1]
    kernel, bias = head.get_weights()
    head.set_weights([kernel * HEAD_SCALE, bias])
    base = str(tmp_path_factory.mktemp("orientation") / "export")
    return saved_model.export_saved_model(model, class_names=["a", "b", "c"], image_size=SIZE, export_base=base)


def test_the_export_serves_a_tagged_photo_as_the_upright_one(small_export):
    """A raw TF Serving client sending the phone's bytes gets the upright answer."""
    upright = photo()
    sideways = upright.transpose(STORE[6])
    images = [jpeg(upright), jpeg(sideways, 6), tagged(8), tagged(3), jpeg(sideways)]
    serve = tf.saved_model.load(small_export).signatures["serving_default"]
    log_probabilities = np.log(serve(image_bytes=tf.constant(images))["probabilities"].numpy())
    for row in log_probabilities[1:4]:  # measured: within 0.002
        np.testing.assert_allclose(row, log_probabilities[0], atol=0.01)
    # The check can tell: the same sideways pixels without the tag answer differently (by 0.097 on the
    # tiny stand-in network, 45 times the tagged photos' 0.002).
    assert np.abs(log_probabilities[4] - log_probabilities[0]).max() > 0.05
