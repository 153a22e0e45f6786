"""The one listing rule (docs/data.md, "Listing a folder"): every command that reads a folder
lists the same files through `fileio.list_folder`: WebP among the image names, each skipped file
reported, symbolic links read once (never around a cycle), class names compared in Unicode NFC.

Tiny by design: a few 32 px images, function calls rather than commands.
"""
import io
import json
import logging
import os
import unicodedata

import numpy as np
import pytest
from PIL import Image

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf  # noqa: E402

from trainer.data import discovery, preparing
from trainer.inference import labelled, prediction

NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")


def _image(path, *, seed: int, fmt: str = "JPEG") -> None:
    """A 32 px image of one random colour at `path` (folders made as needed)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    colour = tuple(int(v) for v in np.random.default_rng(seed).integers(0, 255, 3))
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, fmt)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def _client():
    from serving import client  # pylint: disable=import-outside-toplevel  # gRPC: only here
    return client


def _warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_webp_is_read_by_prepare_predict_the_client_and_the_reader(tmp_path):
    root = tmp_path / "in"
    for i, name in enumerate(("a/1.webp", "a/2.jpg", "b/3.WEBP", "b/4.png")):
        _image(str(root / name), seed=i, fmt="WEBP" if "webp" in name.lower() else "JPEG")
    info = preparing.prepare(input_dir=str(root), output_dir=str(tmp_path / "out"), validation_fraction=0,
                           num_shards=1)
    assert info["skipped"] == [] and info["formats"] == {"JPEG": 2, "WEBP": 2}
    expected = [str(root / n) for n in ("a/1.webp", "a/2.jpg", "b/3.WEBP", "b/4.png")]
    assert prediction.list_inputs([str(root)]) == expected
    assert _client().expand_inputs([str(root)]) == (expected, [])
    assert _client().check_image((root / "a/1.webp").read_bytes()) is None
    assert discovery.list_image_files(str(root), class_names=("a", "b")) == (expected, [0, 0, 1, 1])


def test_every_skipped_file_is_reported(tmp_path, caplog):
    _image(str(tmp_path / "a/1.jpg"), seed=0)
    _image(str(tmp_path / "b/2.jpg"), seed=1)
    (tmp_path / "b/notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert prediction.list_inputs([str(tmp_path)]) == [str(tmp_path / "a/1.jpg"), str(tmp_path / "b/2.jpg")]
    assert f"skipped {tmp_path / 'b/notes.txt'}: not an image name (.txt)" in _warnings(caplog)


def test_a_link_loop_in_a_class_folder_lists_each_file_once(tmp_path, caplog):
    root = tmp_path / "in"
    for i, name in enumerate(("a/1.jpg", "a/2.jpg", "b/3.jpg")):
        _image(str(root / name), seed=i)
    os.symlink("..", root / "a" / "loop")
    expected = [str(root / n) for n in ("a/1.jpg", "a/2.jpg", "b/3.jpg")]
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert discovery.list_image_files(str(root), class_names=("a", "b")) == (expected, [0, 0, 1])
    assert f"skipped {root / 'a/loop'}: the same folder as {root}" in _warnings(caplog)
    assert prediction.list_inputs([str(root)]) == expected
    assert _client().expand_inputs([str(root / "a")]) == (expected[:2], [])
    sources, skipped, _ = preparing.list_folder(str(root))
    assert [s.path for s in sources] == expected
    assert [s["path"] for s in skipped] == ["a/loop"]


def test_two_links_to_one_file_count_it_once(tmp_path, caplog):
    _image(str(tmp_path / "elsewhere/photo.jpg"), seed=0)
    _image(str(tmp_path / "in/b/2.jpg"), seed=1)
    for name in ("first.jpg", "second.jpg"):
        os.makedirs(tmp_path / "in/a", exist_ok=True)
        os.symlink(tmp_path / "elsewhere/photo.jpg", tmp_path / "in/a" / name)
    root = str(tmp_path / "in")
    with caplog.at_level(logging.WARNING, logger="absl"):
        paths, labels = discovery.list_image_files(root, class_names=("a", "b"))
    assert paths == [os.path.join(root, "a/first.jpg"), os.path.join(root, "b/2.jpg")] and labels == [0, 1]
    assert f"skipped {root}/a/second.jpg: the same file as {root}/a/first.jpg" in _warnings(caplog)
    info = preparing.prepare(input_dir=root, output_dir=str(tmp_path / "out"), validation_fraction=0, num_shards=1)
    assert info["splits"]["train"]["num_examples"] == 2
    assert [s["path"] for s in info["skipped"]] == ["a/second.jpg"]


@pytest.fixture
def nfd_folder(tmp_path):
    """Class folders `café` in decomposed form (as macOS writes it) and `tea`."""
    _image(str(tmp_path / "data" / NFD / "1.jpg"), seed=0)
    _image(str(tmp_path / "data" / NFD / "2.jpg"), seed=1)
    _image(str(tmp_path / "data" / "tea" / "3.jpg"), seed=2)
    assert NFD in os.listdir(tmp_path / "data")  # the file system keeps the form it was given
    return str(tmp_path / "data")


def test_an_nfd_folder_matches_its_nfc_label(nfd_folder):
    assert discovery.list_image_files(nfd_folder, class_names=(NFC, "tea"))[1] == [0, 0, 1]
    total, batches = labelled.labelled_batches(nfd_folder, class_names=(NFC, "tea"))  # trainer.evaluate's reader
    assert total == 3 and [label for batch in batches for (_, label), _, _ in batch] == [0, 0, 1]
    assert discovery.resolve_class_names(nfd_folder) == (NFC, "tea")


def test_prepare_writes_nfc_class_names(nfd_folder, tmp_path):
    csv = tmp_path / "list.csv"  # the same class, typed in NFC
    csv.write_text(f"{nfd_folder}/tea/3.jpg,{NFC}\n{nfd_folder}/{NFD}/1.jpg,{NFD}\n{nfd_folder}/{NFD}/2.jpg,tea\n")
    for name, source in (("folder", {"input_dir": nfd_folder}), ("csv", {"input_dir": None, "csv": str(csv)})):
        out = tmp_path / name
        info = preparing.prepare(output_dir=str(out), validation_fraction=0, num_shards=1, **source)
        assert (out / "labels.txt").read_text(encoding="utf-8") == f"{NFC}\ntea\n"
        assert info["class_names"] == [NFC, "tea"]
        assert json.loads((out / "dataset.json").read_text())["splits"]["train"]["per_class"][NFC] == 2


def test_names_that_still_differ_are_escaped_in_the_error(nfd_folder):
    lookalike = "c\u0430f\u00e9"  # a Cyrillic 'а': prints as café
    with pytest.raises(discovery.DataError) as error:
        discovery.list_image_files(nfd_folder, class_names=(lookalike, "tea"))
    message = str(error.value)
    assert "\\u0301" in message and "the closest label is" in message and "\\u0430" in message


def test_record_text_in_nfd_matches_an_nfc_labels_file(tmp_path):
    path = str(tmp_path / "train-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for label, text in ((0, NFD), (1, "tea")):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                "image/class/text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()])),
            })).SerializeToString())
    assert discovery.check_labels(path, class_names=(NFC, "tea")) is False
    escaped = r"says 'tea' but labels.txt line 2 is 'te.' \(escaped: 'te\\u0430'\)"
    with pytest.raises(discovery.DataError, match=escaped):
        discovery.check_labels(path, class_names=(NFC, "te\u0430"))
