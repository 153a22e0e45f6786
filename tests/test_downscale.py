"""--max_image_side: phone-size photos stored downscaled once, upright, by one rule
(effnet_common.downscale) that prepare, the readers and the client share."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageOps

import trainer  # noqa: F401  # sets TF_USE_LEGACY_KERAS before TensorFlow loads
import tensorflow as tf  # noqa: E402

from effnet_common import decode, downscale
from tests import test_orientation as orientation
from trainer.data import preparing

FEATURES = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/format": tf.io.FixedLenFeature([], tf.string),
            "image/filename": tf.io.FixedLenFeature([], tf.string),
            "image/height": tf.io.FixedLenFeature([], tf.int64),
            "image/width": tf.io.FixedLenFeature([], tf.int64)}


def _records(folder: str) -> dict:
    files = sorted(tf.io.gfile.glob(os.path.join(folder, "train-*")))
    out = {}
    for record in tf.data.TFRecordDataset(files):
        example = {k: v.numpy() for k, v in tf.io.parse_single_example(record, FEATURES).items()}
        out[example["image/filename"].decode()] = example
    return out


def _pil_resized(data: bytes, size) -> np.ndarray:
    """The upright photo downscaled by PIL's own antialiasing filter: an independent reference."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB").resize(size, Image.BILINEAR, reducing_gap=None),
                          np.float32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A folder with a big photo stored sideways (EXIF 6), a big PNG and a small JPEG in each of
    two classes, prepared with --max_image_side=64 and with 0."""
    root = tmp_path_factory.mktemp("downscale")
    files = {"big_tagged.jpg": orientation.tagged(6, size=(150, 200)),   # upright 150 wide, 200 high
             "big.png": _png(orientation.photo((160, 120))),
             "small.jpg": orientation.tagged(1, size=(56, 48))}
    for cls in ("a", "b"):
        os.makedirs(root / "in" / cls)
        for name, data in files.items():
            (root / "in" / cls / name).write_bytes(data)
    infos = {side: preparing.prepare(input_dir=str(root / "in"), output_dir=str(root / f"out{side}"),
                                     validation_fraction=0.0, num_shards=1, max_image_side=side)
             for side in (64, 0)}
    return root, files, infos


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_big_photos_are_stored_upright_downscaled_and_small_ones_keep_their_bytes(prepared):
    root, files, infos = prepared
    records = _records(str(root / "out64"))
    tagged, png, small = (records[f"a/{n}"] for n in ("big_tagged.jpg", "big.png", "small.jpg"))
    # The sideways phone photo: upright 150x200 -> 48x64, a JPEG without EXIF, its pixels the
    # upright photo's, resized (PIL's reference within JPEG re-encoding's tolerance).
    assert (tagged["image/height"], tagged["image/width"], tagged["image/format"]) == (64, 48, b"JPEG")
    pixels = tf.io.decode_jpeg(tagged["image/encoded"]).numpy().astype(np.float32)
    assert pixels.shape == (64, 48, 3)
    assert int(decode.exif_orientation(tagged["image/encoded"])) == 1
    reference = _pil_resized(files["big_tagged.jpg"], (48, 64)).round().astype(np.uint8)
    reference = tf.io.decode_jpeg(tf.io.encode_jpeg(reference, quality=downscale.JPEG_QUALITY)).numpy()
    diff = np.abs(pixels - reference)  # both re-encoded alike (a 48x64 JPEG keeps little detail)
    assert diff.mean() < 4.0, diff.mean()
    sideways = np.abs(pixels - reference[::-1, ::-1])  # the same photo turned 180 degrees is far
    assert sideways.mean() > 20, sideways.mean()
    # A PNG stays a lossless PNG: 160x120 -> 64x48.
    assert (png["image/height"], png["image/width"], png["image/format"]) == (48, 64, b"PNG")
    assert tf.io.decode_png(png["image/encoded"]).shape == (48, 64, 3)
    # Under the limit: the file itself, byte for byte, tag included.
    assert small["image/encoded"] == files["small.jpg"]


def test_dataset_json_counts_what_was_resized_and_from_which_sizes(prepared):
    root, _, infos = prepared
    assert infos[64]["resized"] == {"max_image_side": 64, "num_resized": 4,
                                    "from_sizes": {"150x200": 2, "160x120": 2}}
    on_disk = json.loads((root / "out64" / "dataset.json").read_text())
    assert on_disk["resized"] == infos[64]["resized"]
    assert on_disk["formats"] == {"JPEG": 4, "PNG": 2}
    assert infos[0]["resized"] == {"max_image_side": 0, "num_resized": 0, "from_sizes": {}}


def test_zero_keeps_every_original_byte_for_byte(prepared):
    root, files, _ = prepared
    records = _records(str(root / "out0"))
    assert {name: r["image/encoded"] for name, r in records.items()} == {
        f"{cls}/{name}": data for cls in ("a", "b") for name, data in files.items()}
    assert records["a/big_tagged.jpg"]["image/height"] == 200  # the upright size, as before


def test_readers_fit_applies_the_same_rule_and_passes_through_what_it_cannot_read():
    big = orientation.tagged(6, size=(150, 200))
    fitted = downscale.fit(big, max_side=64)
    assert tf.io.decode_jpeg(fitted).shape == (64, 48, 3)
    assert fitted == downscale.downscale(big, height=200, width=150, read_format="JPEG", max_side=64)
    small = orientation.tagged(1, size=(56, 48))
    assert downscale.fit(small, max_side=64) is small
    assert downscale.fit(big, max_side=0) is big
    truncated = big[:len(big) // 2]
    assert downscale.fit(truncated, max_side=64) == truncated  # the export's own check reports it
    assert downscale.fit(b"not an image", max_side=64) == b"not an image"


@pytest.mark.parametrize("height,width,side,expected", [
    (3000, 4000, 1024, (768, 1024)), (4000, 3000, 1024, (1024, 768)), (1024, 700, 1024, None),
    (1500, 2000, 0, None), (10, 5000, 1000, (2, 1000)), (1, 5000, 1000, (1, 1000))])
def test_target_size_keeps_the_aspect_ratio(height, width, side, expected):
    assert downscale.target_size(height, width, side) == expected


def test_the_audit_fingerprints_a_photo_and_its_downscaled_record_alike(prepared):
    from trainer.analysis import auditing
    root, files, _ = prepared
    sources = auditing.list_sources(str(root / "out64" / "train-*"), [str(root / "in")], class_names=("a", "b"))

    def fingerprints(side):
        images = auditing.embed_sources(sources, embed=lambda x: np.asarray(tf.reduce_mean(x, [1, 2])), total=None,
                                        num_classes=2, multi_label=False, image_size=32, max_image_side=side)
        by_split = {}
        for path, split, key in zip(images.paths, images.splits, images.keys):
            by_split.setdefault(split, {})[path.split("in/")[-1]] = key
        return list(by_split.values())
    records, folder = fingerprints(64)
    assert set(records) == set(folder) == {f"{c}/{n}" for c in "ab" for n in files}
    assert records == folder  # every file decodes to its record's pixels
    records, folder = fingerprints(0)  # originals against downscaled records: only the small ones match
    assert {n for n in records if records[n] == folder[n]} == {"a/small.jpg", "b/small.jpg"}


def test_the_client_sends_big_photos_downscaled(tmp_path):
    from serving import client
    big = orientation.tagged(6, size=(150, 200))
    (tmp_path / "big.jpg").write_bytes(big)
    good, bad = client.read_images([str(tmp_path / "big.jpg")], max_image_side=64)
    assert not bad and good == [(str(tmp_path / "big.jpg"), downscale.fit(big, max_side=64))]
    assert client.read_images([str(tmp_path / "big.jpg")], max_image_side=0)[0][0][1] == big


@pytest.mark.slow
def test_predict_reads_a_phone_photo_as_training_saw_it_and_answers_alike(loaded, tmp_path):
    """The export answers the photo downscaled by the rule as it answers the original (the same
    class; at 64 px the original's own window decode is ~24 dB from the exact crop, see
    test_the_eval_crop_of_a_downscaled_photo_is_nearer_the_exact_crop); the reader really sent
    fewer bytes."""
    from trainer.inference import prediction
    image = orientation.photo((1600, 1200))  # grace_hopper at a phone photo's 4:3
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    (tmp_path / "phone.jpg").write_bytes(buffer.getvalue())
    answers = {side: prediction.predict_files(loaded, [str(tmp_path / "phone.jpg")], max_image_side=side,
                                              with_features=True) for side in (1024, 0)}
    fitted, original = answers[1024], answers[0]
    assert np.argmax(fitted.probabilities) == np.argmax(original.probabilities)
    assert np.abs(fitted.probabilities - original.probabilities).max() < 0.1
    cosine = float(np.sum(fitted.features * original.features) /
                   (np.linalg.norm(fitted.features) * np.linalg.norm(original.features)))
    assert cosine > 0.95, cosine  # DESIGN.md: a DCT window decode against an antialiased resize, 0.94-1.0
    read = next(prediction.read_files([str(tmp_path / "phone.jpg")], batch_size=1, max_image_side=1024))
    assert len(read[0][1]) < len(buffer.getvalue())
    assert tf.io.decode_jpeg(read[0][1]).shape == (768, 1024, 3)


def _exact_eval_crop(content: bytes, size: int) -> np.ndarray:
    """The evaluation crop without shortcuts: the whole photo decoded, the 87.5 % center square
    cut at full resolution, resized with an antialiasing filter."""
    image = tf.io.decode_jpeg(content).numpy().astype(np.float32)
    height, width = image.shape[:2]
    side = int(min(height, width) * decode.EVAL_CENTRAL_FRACTION)
    y, x = (height - side + 1) // 2, (width - side + 1) // 2
    return tf.image.resize(image[y:y + side, x:x + side], [size, size], antialias=True).numpy()


def _psnr(a, b) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


@pytest.mark.parametrize("size", [64, 224])
def test_the_eval_crop_of_a_downscaled_photo_is_nearer_the_exact_crop(size):
    """What the model sees of a 1600x1200 photo stored at 1024: the reader's window decode of the
    downscaled file is within 30 dB of the exact crop, and nearer to it than the window decode of
    the original, whose DCT-scaled window starts up to 3 px off (bench/max_image_side.py
    measures real photos at every backbone's native size)."""
    buffer = io.BytesIO()
    orientation.photo((1600, 1200)).save(buffer, "JPEG", quality=92)
    original = buffer.getvalue()
    exact = _exact_eval_crop(original, size)
    fitted = _psnr(decode.decode_for_eval(downscale.fit(original, max_side=1024), size), exact)
    assert fitted > 30 and fitted > _psnr(decode.decode_for_eval(original, size), exact), fitted


@pytest.mark.slow
@pytest.mark.parametrize("module, args", [
    ("trainer.predict", ["--export_dir=E", "--output=o.csv", "--input=a.jpg"]),
    ("trainer.evaluate", ["--export_dir=E", "--data=D", "--output_dir=R"]),
    ("trainer.audit", ["--train_data=D", "--output_dir=R"]),
])
def test_a_negative_side_is_one_line(module, args, tmp_path):
    from tests.testing.cli import assert_one_error_line, run_module
    result = run_module(module, *args, "--max_image_side=-1")
    assert_one_error_line(result, "--max_image_side")
