"""trainer.prepare --import_file: Vertex AI image-classification import files (CSV and JSON Lines)
-> shards whose given splits are kept, a test split of its own, multi-label records.

Tiny inputs: a few 16x16 JPEGs per class written into tmp_path.
"""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import trainer  # noqa: F401
import tensorflow as tf  # noqa: E402  # gcs_bucket: the conftest plugin (testbed/gcs_front.py)

from trainer.data import discovery, importfile, preparing
from tests.testing.presets import REPO_DIR as REPO

FEATURES = {
    "image/filename": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.VarLenFeature(tf.int64),
    "image/class/text": tf.io.VarLenFeature(tf.string),
}


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def _images(folder, names, *, write=None) -> None:
    """A small JPEG at each relative name under `folder` (local, or gs:// with `write`)."""
    for seed, name in enumerate(names):
        path = os.path.join(str(folder), name)
        if write is None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(_jpeg(seed))
        else:
            write(path, _jpeg(seed))


def _import_file(tmp_path, name: str, lines, *, images=()) -> str:
    _images(tmp_path, images)
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _records(folder: str, split: str) -> dict:
    """{image/filename: (labels, texts)} of a split's shards."""
    files = sorted(tf.io.gfile.glob(os.path.join(folder, f"{split}-*")))
    out = {}
    for record in tf.data.TFRecordDataset(files):
        feats = tf.io.parse_single_example(record, FEATURES)
        out[feats["image/filename"].numpy().decode()] = (
            [int(v) for v in tf.sparse.to_dense(feats["image/class/label"]).numpy()],
            [t.decode() for t in tf.sparse.to_dense(feats["image/class/text"]).numpy()])
    return out


def _prepare(import_file: str, out, **kwargs) -> dict:
    kwargs.setdefault("validation_fraction", 0.0)
    return preparing.prepare(input_dir=None, import_file=import_file, output_dir=str(out), **kwargs)


def test_csv_ml_use_is_kept_exactly_and_test_gets_its_own_shards(tmp_path):
    given = {"TRAINING": ["cat/g0.jpg", "dog/g1.jpg"], "Validation": ["cat/g2.jpg", "dog/g3.jpg"],
             "test": ["cat/g4.jpg"], "TeSt": ["dog/g5.jpg"]}
    free = [f"{c}/f{i}.jpg" for c in ("cat", "dog") for i in range(4)]  # no ML_USE: split by fraction
    lines = [f"{use},{n},{n.split('/')[0]}" for use, names in given.items() for n in names]
    lines += [f"{n},{n.split('/')[0]}" for n in free]
    csv = _import_file(tmp_path, "import.csv", lines, images=sum(given.values(), []) + free)
    out = tmp_path / "out"
    info = _prepare(csv, out, validation_fraction=0.25, num_shards=2)

    assert sorted(os.listdir(out)) == ["dataset.json", "labels.txt", "test-00000-of-00001.tfrecord",
                                       "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
                                       "validation-00000-of-00001.tfrecord"]
    assert list(info["splits"]) == ["train", "validation", "test"] and info["multi_label"] is False
    names = {split: set(_records(str(out), split)) for split in ("train", "validation", "test")}
    assert names["test"] == {"cat/g4.jpg", "dog/g5.jpg"}
    assert {"cat/g0.jpg", "dog/g1.jpg"} <= names["train"]
    assert {"cat/g2.jpg", "dog/g3.jpg"} <= names["validation"]
    # The rows without ML_USE: one of each class's 4 to validation (round(4 x 0.25)), 3 to train.
    assert sorted(n.split("/")[0] for n in names["validation"] - {"cat/g2.jpg", "dog/g3.jpg"}) == ["cat", "dog"]
    assert len(names["train"]) == 2 + 6 and names["train"] | names["validation"] >= set(free)
    assert info["splits"]["test"] == {"num_examples": 2, "num_shards": 1, "files": ["test-00000-of-00001.tfrecord"],
                                      "per_class": {"cat": 1, "dog": 1}}
    assert discovery.count_examples(str(out / "test-*")) == 2
    single = _records(str(out), "test")["cat/g4.jpg"]
    assert single == ([0], ["cat"])  # single-label records: one value each, as before
    assert info["warnings"] == [] and info["skipped"] == []


def test_multi_label_csv_writes_label_lists(tmp_path):
    lines = ["training,a.jpg,dog,cat", "training,b.jpg,dog", "training,c.jpg", "training,d.jpg,eel,cat,cat,",
             "validation,e.jpg,cat,eel,dog", "validation,f.jpg,dog"]
    csv = _import_file(tmp_path, "multi.csv", lines, images=[f"{x}.jpg" for x in "abcdef"])
    out = str(tmp_path / "out")
    info = _prepare(csv, out)

    assert info["multi_label"] is True and info["class_names"] == ["cat", "dog", "eel"]
    assert open(os.path.join(out, "labels.txt")).read() == "cat\ndog\neel\n"
    assert _records(out, "train") == {"a.jpg": ([0, 1], ["cat", "dog"]), "b.jpg": ([1], ["dog"]),
                                      "c.jpg": ([], []), "d.jpg": ([0, 2], ["cat", "eel"])}
    assert _records(out, "validation") == {"e.jpg": ([0, 1, 2], ["cat", "dog", "eel"]), "f.jpg": ([1], ["dog"])}
    assert info["splits"]["train"]["per_class"] == {"cat": 2, "dog": 2, "eel": 1}  # images holding the class
    assert info["splits"]["validation"]["per_class"] == {"cat": 1, "dog": 2, "eel": 1}
    glob = os.path.join(out, "train-*")
    assert discovery.check_labels(glob, class_names=info["class_names"]) is True  # the reader's view
    assert discovery.dataset_multi_label(glob) is True


def test_single_label_rows_become_multi_label_with_the_flag_and_unlabelled_rows(tmp_path):
    lines = ["a.jpg,cat", "b.jpg,cat", "c.jpg,dog", "d.jpg,dog", "e.jpg"]
    csv = _import_file(tmp_path, "single.csv", lines, images=[f"{x}.jpg" for x in "abcde"])
    info = _prepare(csv, tmp_path / "single")
    assert info["multi_label"] is False and info["num_skipped"] == 1
    assert info["skipped"][0]["path"] == "e.jpg" and info["skipped"][0]["reason"].startswith("no label")

    info = _prepare(csv, tmp_path / "multi", multi_label=True, validation_fraction=0.4, seed=3)
    assert info["multi_label"] is True and info["num_skipped"] == 0
    records = {**_records(str(tmp_path / "multi"), "train"), **_records(str(tmp_path / "multi"), "validation")}
    assert records["e.jpg"] == ([], []) and records["a.jpg"] == ([0], ["cat"])
    assert info["splits"]["validation"]["num_examples"] == 2  # round(5 x 0.4), all rows together
    again = _prepare(csv, tmp_path / "again", multi_label=True, validation_fraction=0.4, seed=3)
    assert set(_records(str(tmp_path / "again"), "validation")) == set(_records(str(tmp_path / "multi"), "validation"))
    assert again["splits"] == info["splits"]


def test_jsonl_single_and_multi_label_with_ml_use(tmp_path):
    def line(name, label=None, labels=None, use=None):
        obj = {"imageGcsUri": name}
        if label:
            obj["classificationAnnotation"] = {"displayName": label, "annotationResourceLabels": {"x": "y"}}
        if labels is not None:
            obj["classificationAnnotations"] = [{"displayName": n} for n in labels]
        if use:
            obj["dataItemResourceLabels"] = {importfile.ML_USE_KEY: use}
        return json.dumps(obj)

    single = _import_file(tmp_path, "single.jsonl", [
        line("a.jpg", "cat", use="training"), line("b.jpg", "dog", use="TRAINING"), "",
        line("c.jpg", "cat", use="test"), line("d.jpg", "dog", use="Validation"),
        line("e.jpg", "cat", use="validation"), line("f.jpg", "dog")], images=[f"{x}.jpg" for x in "abcdef"])
    info = _prepare(single, tmp_path / "s")
    assert info["multi_label"] is False
    assert {s: set(_records(str(tmp_path / "s"), s)) for s in info["splits"]} == {
        "train": {"a.jpg", "b.jpg", "f.jpg"}, "validation": {"d.jpg", "e.jpg"}, "test": {"c.jpg"}}
    assert _records(str(tmp_path / "s"), "validation")["d.jpg"] == ([1], ["dog"])

    multi = _import_file(tmp_path, "multi.jsonl", [
        line("a.jpg", labels=["dog", "cat"], use="training"), line("b.jpg", labels=[], use="training"),
        line("c.jpg", labels=["dog"], use="test")])
    info = _prepare(multi, tmp_path / "m")
    assert info["multi_label"] is True and list(info["splits"]) == ["train", "test"]
    assert _records(str(tmp_path / "m"), "train") == {"a.jpg": ([0, 1], ["cat", "dog"]), "b.jpg": ([], [])}
    assert info["warnings"] == ["class 'cat' has no image in the test split of " + multi +
                                ": its test figures will be missing; add test images of it"]


@pytest.mark.parametrize("name, lines, line, message", [
    ("a.csv", ["training,a.jpg,cat", "Train,b.jpg,dog"], 2, "'Train' is neither an ML_USE nor an image path"),
    ("a.csv", ["training,a.jpg,cat", "", "validation,,dog"], 3, "the image path is empty"),
    ("a.csv", ["ml_use,path,label", "training,a.jpg,cat"], 1, "'ml_use' is neither an ML_USE"),
    ("a.jsonl", ['{"imageGcsUri": "a.jpg"}', '{"imageGcsUri": "b.jpg",}'], 2, "is not JSON"),
    ("a.jsonl", ['{"classificationAnnotation": {"displayName": "cat"}}'], 1, "imageGcsUri is missing"),
    ("a.jsonl", ['{"imageGcsUri": "a.jpg", "dataItemResourceLabels": '
                 '{"aiplatform.googleapis.com/ml_use": "train"}}'], 1, "unknown ML_USE 'train'"),
    ("a.jsonl", ['{"imageGcsUri": "a.jpg", "classificationAnnotation": {"name": "cat"}}'], 1, "has no displayName"),
])
def test_a_bad_row_names_the_file_and_the_line(tmp_path, name, lines, line, message):
    path = _import_file(tmp_path, name, lines)
    with pytest.raises(discovery.DataError) as raised:
        _prepare(path, tmp_path / "out")
    text = str(raised.value)
    assert f"--import_file {path} line {line}: " in text and message in text and "\n" not in text
    assert not (tmp_path / "out").exists()


def test_an_unknown_extension_or_two_inputs_is_one_line(tmp_path):
    path = _import_file(tmp_path, "list.txt", ["a.jpg,cat"])
    with pytest.raises(discovery.DataError, match=r"list.txt ends in '.txt': name a Vertex AI import file .csv"):
        _prepare(path, tmp_path / "out")
    with pytest.raises(discovery.DataError, match=r"^pass exactly one of --input_dir .* --csv .* and --import_file"):
        preparing.prepare(input_dir=str(tmp_path), import_file=path, output_dir=str(tmp_path / "out"),
                        validation_fraction=0.0)


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    lines = ["a.jpg,cat", "b.jpg,cat", "c.jpg,dog", "d.jpg,dog", "missing.jpg,dog", "broken.jpg,cat"]
    csv = _import_file(tmp_path, "import.csv", lines, images=[f"{x}.jpg" for x in "abcd"])
    (tmp_path / "broken.jpg").write_bytes(_jpeg(9)[:40])
    info = _prepare(csv, tmp_path / "out")
    reasons = {s["path"]: s["reason"] for s in info["skipped"]}
    assert info["num_skipped"] == 2 and set(reasons) == {"missing.jpg", "broken.jpg"}
    assert reasons["missing.jpg"].startswith("unreadable") and "does not decode" in reasons["broken.jpg"]
    assert info["splits"]["train"]["num_examples"] == 4


def test_a_class_without_training_images_is_an_error(tmp_path):
    lines = ["training,a.jpg,cat", "training,b.jpg,dog", "validation,c.jpg,eel", "c.jpg,cat"]
    path = _import_file(tmp_path, "import.csv", lines, images=["a.jpg", "b.jpg", "c.jpg"])
    with pytest.raises(discovery.DataError, match=r"^class 'eel' has no image in the training split of "):
        _prepare(path, tmp_path / "out")
    # The same rule for --csv: a 1-image class that --validation_fraction sends to validation.
    (tmp_path / "list.csv").write_text("a.jpg,cat\nb.jpg,cat\nc.jpg,dog\n")
    with pytest.raises(discovery.DataError, match=r"^class 'dog' has no image in the training split"):
        preparing.prepare(input_dir=None, csv=str(tmp_path / "list.csv"), output_dir=str(tmp_path / "out"),
                        validation_fraction=0.6)
    assert not (tmp_path / "out").exists()


def test_a_class_missing_from_validation_is_a_warning(tmp_path):
    lines = ["training,a.jpg,cat", "training,b.jpg,dog", "validation,c.jpg,cat"]
    path = _import_file(tmp_path, "import.csv", lines, images=["a.jpg", "b.jpg", "c.jpg"])
    info = _prepare(path, tmp_path / "out")
    assert info["warnings"] == [f"class 'dog' has no image in the validation split of {path}: its validation "
                                "figures will be missing; add validation images of it"]
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["warnings"] == info["warnings"]
    assert info["splits"]["validation"]["per_class"] == {"cat": 1, "dog": 0}


@pytest.mark.slow
def test_cli_bad_row_is_one_error_line_and_exit_2(tmp_path):
    path = _import_file(tmp_path, "import.jsonl", ['{"imageGcsUri": "a.jpg"}', "not json"])
    result = subprocess.run([sys.executable, "-m", "trainer.prepare", f"--import_file={path}",
                             f"--output_dir={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --import_file {path} line 2: is not JSON (Expecting value at column 1): "
                      "write one JSON object a line"]


def test_import_file_and_images_on_gcs(tmp_path, gcs_bucket):
    def write(path, content):
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(content)

    names = ["cat/0.jpg", "cat/1.jpg", "dog/2.jpg", "dog/3.jpg", "dog/4.jpg"]
    _images(f"{gcs_bucket}/images", names, write=write)
    uses = ["training", "validation", "training", "test", ""]
    lines = [f"{use},{gcs_bucket}/images/{n},{n.split('/')[0]}".lstrip(",") for use, n in zip(uses, names)]
    lines.append("TRAINING,images/cat/0.jpg,cat,dog")  # relative to the file's gs:// folder; multi-label
    import_path = f"{gcs_bucket}/import.csv"
    write(import_path, "".join(line + "\n" for line in lines).encode())
    out = f"{gcs_bucket}/data"
    info = _prepare(import_path, out)
    assert info["multi_label"] is True and info["num_skipped"] == 0
    assert {s: v["num_examples"] for s, v in info["splits"].items()} == {"train": 4, "validation": 1, "test": 1}
    train = _records(out, "train")
    assert train["images/cat/0.jpg"] == ([0, 1], ["cat", "dog"])
    assert train[f"{gcs_bucket}/images/dog/2.jpg"] == ([1], ["dog"])
    assert discovery.count_examples(f"{out}/test-*") == 1
