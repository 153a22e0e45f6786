"""trainer.prepare: image folders (or a CSV) -> shards, labels.txt, dataset.json.

Tiny inputs: 3 classes of a few 32x40 images.
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
import tensorflow as tf  # noqa: E402  # gcs / gcs_bucket: the conftest plugin (testbed/gcs_front.py)

from trainer.configs import config
from trainer.data import discovery, folderswap, pipelines, preparing, shards
from tests.testing.presets import REPO_DIR as REPO

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/class/text": tf.io.FixedLenFeature([], tf.string),
    "image/filename": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
}


def _pixels(seed: int, shape=(32, 40, 3)) -> np.ndarray:
    """A smooth image (JPEG-friendly, so the round-trip tolerance can be tight)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    base = rng.uniform(0, 255, 3)
    slope = rng.uniform(-3, 3, (2, 3))
    return np.clip(base + y[..., None] * slope[0] + x[..., None] * slope[1], 0, 255).astype(np.uint8)


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _make_folder(root, counts: dict, *, start_seed: int = 0) -> dict:
    """Class folders of JPEGs; returns {relative path: pixels}."""
    pixels, seed = {}, start_seed
    for name, n in counts.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(n):
            rel = os.path.join(name, f"img{i:03d}.jpg")
            pixels[rel] = _pixels(seed)
            with open(os.path.join(root, rel), "wb") as f:
                f.write(_encode(pixels[rel], "JPEG"))
            seed += 1
    return pixels


def _read_split(folder: str, split: str) -> list:
    files = sorted(tf.io.gfile.glob(os.path.join(folder, f"{split}-*")))
    return [{k: v.numpy() for k, v in tf.io.parse_single_example(r, FEATURES).items()}
            for r in tf.data.TFRecordDataset(files)]


def _snapshot(folder: str) -> dict:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def _run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.prepare", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_round_trip_counts_labels_and_pixels(tmp_path):
    pixels = _make_folder(tmp_path / "in", {"cat": 4, "dog": 4, "eel": 4})
    out = str(tmp_path / "out")
    info = preparing.prepare(input_dir=str(tmp_path / "in"), output_dir=out, validation_fraction=0.25,
                           num_shards=2)
    assert sorted(os.listdir(out)) == ["dataset.json", "labels.txt", "train-00000-of-00002.tfrecord",
                                       "train-00001-of-00002.tfrecord",
                                       "validation-00000-of-00001.tfrecord"]
    assert open(os.path.join(out, "labels.txt")).read() == "cat\ndog\neel\n"
    assert json.load(open(os.path.join(out, "dataset.json"))) == info
    seen = []
    for split, expected in (("train", 9), ("validation", 3)):
        records = _read_split(out, split)
        assert len(records) == expected == info["splits"][split]["num_examples"]
        for r in records:
            name = r["image/filename"].decode()
            seen.append(name)
            assert r["image/class/text"].decode() == name.split("/")[0]
            assert r["image/class/label"] == ["cat", "dog", "eel"].index(name.split("/")[0])
            assert r["image/format"] == b"JPEG" and (r["image/height"], r["image/width"]) == (32, 40)
            decoded = tf.io.decode_jpeg(r["image/encoded"]).numpy().astype(int)
            assert np.abs(decoded - pixels[name]).mean() < 2.0
    assert sorted(seen) == sorted(pixels)
    assert discovery.count_examples(os.path.join(out, "train-*")) == 9


def test_split_is_stratified_and_seeded(tmp_path):
    _make_folder(tmp_path / "in", {"a": 10, "b": 5, "c": 2})
    info = preparing.prepare(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "o1"),
                           validation_fraction=0.2, num_shards=1, seed=1)
    assert info["splits"]["validation"]["per_class"] == {"a": 2, "b": 1, "c": 1}
    assert info["splits"]["train"]["per_class"] == {"a": 8, "b": 4, "c": 1}
    again = preparing.prepare(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "o2"),
                            validation_fraction=0.2, num_shards=1, seed=1)
    names = lambda folder: sorted(r["image/filename"] for r in _read_split(folder, "validation"))
    assert names(str(tmp_path / "o1")) == names(str(tmp_path / "o2"))
    other = [preparing.prepare(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / f"s{s}"),
                             validation_fraction=0.2, num_shards=1, seed=s) for s in (2, 3)]
    assert len({tuple(names(str(tmp_path / f"s{s}"))) for s in (2, 3)} | {tuple(names(str(tmp_path / "o1")))}) > 1
    assert all(o["splits"]["validation"]["num_examples"] == 4 for o in other)


def test_bad_files_are_skipped_and_reported(tmp_path):
    _make_folder(tmp_path / "in", {"good": 3, "mixed": 2})
    mixed = tmp_path / "in" / "mixed"
    jpeg = _encode(_pixels(99), "JPEG")
    (mixed / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (mixed / "empty.jpg").write_bytes(b"")
    (mixed / "notes.txt").write_text("not an image")
    (mixed / "really_png.jpg").write_bytes(_encode(_pixels(7), "PNG"))
    (mixed / "frame.gif").write_bytes(_encode(_pixels(8), "GIF"))
    (mixed / "bitmap.bmp").write_bytes(_encode(_pixels(9), "BMP"))
    out = tmp_path / "out"
    result = _run_cli(f"--input_dir={tmp_path / 'in'}", f"--output_dir={out}",
                      "--validation_fraction=0", "--num_shards=1")
    assert result.returncode == 0, result.stderr
    assert "skipped 3 file(s)" in result.stdout
    info = json.loads((out / "dataset.json").read_text())
    reasons = {s["path"]: s["reason"] for s in info["skipped"]}
    assert set(reasons) == {"mixed/truncated.jpg", "mixed/empty.jpg", "mixed/notes.txt"}
    assert reasons["mixed/empty.jpg"] == "empty file"
    assert "not an image" in reasons["mixed/notes.txt"]
    assert "does not decode" in reasons["mixed/truncated.jpg"]
    assert info["num_skipped"] == 3 and info["splits"]["train"]["num_examples"] == 8
    formats = {r["image/filename"].decode(): r["image/format"].decode()
               for r in _read_split(str(out), "train")}
    assert formats["mixed/really_png.jpg"] == "PNG" and formats["mixed/frame.gif"] == "GIF"
    assert formats["mixed/bitmap.bmp"] == "BMP"
    assert [n["path"] for n in info["notes"]] == ["mixed/really_png.jpg"]


def test_no_valid_image_is_one_line_error(tmp_path):
    for name in ("a", "b"):
        os.makedirs(tmp_path / "in" / name)
        (tmp_path / "in" / name / "x.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = _run_cli(f"--input_dir={tmp_path / 'in'}", f"--output_dir={tmp_path / 'out'}",
                      "--validation_fraction=0.1", "--num_shards=1")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no valid image" in errors[0]
    assert not (tmp_path / "out").exists()


def test_class_left_without_valid_image_is_an_error(tmp_path):
    _make_folder(tmp_path / "in", {"a": 2, "b": 2})
    os.makedirs(tmp_path / "in" / "c")
    (tmp_path / "in" / "c" / "broken.jpg").write_bytes(b"")
    with pytest.raises(discovery.DataError, match="class 'c'.*no valid image"):
        preparing.prepare(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"),
                        validation_fraction=0.0)
    os.remove(tmp_path / "in" / "c" / "broken.jpg")  # an empty class folder: the same error
    with pytest.raises(discovery.DataError, match="class 'c'.*no valid image"):
        preparing.prepare(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"),
                        validation_fraction=0.0)
    assert not (tmp_path / "out").exists()


def test_interrupted_prepare_leaves_previous_output_intact(tmp_path, monkeypatch):
    _make_folder(tmp_path / "in", {"a": 3, "b": 3})
    out = str(tmp_path / "out")
    preparing.prepare(input_dir=str(tmp_path / "in"), output_dir=out, validation_fraction=0.0,
                    num_shards=1)
    before = _snapshot(out)
    _make_folder(tmp_path / "in", {"c": 3}, start_seed=50)
    written = []
    real_write_shard = shards.write_shard

    def crash_after_first_shard(path, members, **kwargs):
        if written:
            raise KeyboardInterrupt("killed")
        real_write_shard(path, members, **kwargs)
        written.append(path)

    monkeypatch.setattr(shards, "write_shard", crash_after_first_shard)
    with pytest.raises(KeyboardInterrupt):
        preparing.prepare(input_dir=str(tmp_path / "in"), output_dir=out, validation_fraction=0.0,
                        num_shards=3, num_workers=1)
    assert written and _snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]  # no temporary folder left behind


def test_rerun_replaces_output_and_recovers_from_a_killed_swap(tmp_path):
    _make_folder(tmp_path / "in", {"a": 3, "b": 3})
    out = str(tmp_path / "out")
    preparing.prepare(input_dir=str(tmp_path / "in"), output_dir=out, validation_fraction=0.0,
                    num_shards=3)
    preparing.prepare(input_dir=str(tmp_path / "in"), output_dir=out, validation_fraction=0.0,
                    num_shards=2)
    assert sorted(f for f in os.listdir(out) if f.startswith("train")) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    # A run killed between the swap's two renames leaves the old output aside: restored first.
    os.rename(out, str(tmp_path / ".out.prepare-old-deadbeef"))
    os.makedirs(tmp_path / ".out.prepare-tmp-cafecafe")
    folderswap.recover(out, marker=discovery.INFO_FILE)
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]
    assert discovery.count_examples(os.path.join(out, "train-*")) == 6


def test_csv_input_and_shard_size(tmp_path):
    pixels = _make_folder(tmp_path / "imgs", {"x": 3, "y": 3})
    rows = ["path,label"] + [f"imgs/{rel},{'left' if rel.startswith('x') else 'right'}" for rel in pixels]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    info = preparing.prepare(input_dir=None, csv=str(tmp_path / "list.csv"),
                           output_dir=str(tmp_path / "out"), validation_fraction=0.0,
                           shard_size_mb=0.0001)
    assert info["class_names"] == ["left", "right"]
    assert info["splits"]["train"]["num_shards"] == 6  # 100-byte shards: one image each
    labels = sorted(int(r["image/class/label"]) for r in _read_split(str(tmp_path / "out"), "train"))
    assert labels == [0, 0, 0, 1, 1, 1]


def test_test_fraction_holds_out_a_stratified_seeded_test_split(tmp_path):
    """--test_fraction: per class, after validation (which stays as it was), clamped so that every
    class keeps a training image; written as test-* shards and counted in dataset.json."""
    _make_folder(tmp_path / "in", {"a": 10, "b": 5, "c": 3, "d": 2})
    run = lambda out, **kw: preparing.prepare(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / out),
                                            validation_fraction=0.2, num_shards=2, seed=1, **kw)
    info = run("o1", test_fraction=0.2)
    per_class = {split: info["splits"][split]["per_class"] for split in ("train", "validation", "test")}
    assert per_class == {"train": {"a": 6, "b": 3, "c": 1, "d": 1}, "validation": {"a": 2, "b": 1, "c": 1, "d": 1},
                         "test": {"a": 2, "b": 1, "c": 1, "d": 0}}  # d's 2 images: one to train, one to validate
    assert info["test_fraction"] == 0.2 and info["splits"]["test"]["num_examples"] == 4
    assert info["splits"]["test"]["files"] == ["test-00000-of-00001.tfrecord"]
    assert any("'d' has no image in the test split" in w for w in info["warnings"])
    names = lambda out, split: sorted(r["image/filename"].decode() for r in _read_split(str(tmp_path / out), split))
    test = names("o1", "test")
    assert len(test) == 4 and not set(test) & set(names("o1", "train") + names("o1", "validation"))
    run("o2", test_fraction=0.2)
    assert names("o2", "test") == test and names("o2", "validation") == names("o1", "validation")  # same seed
    without = run("o3")  # no test split: validation as before, its images back in train
    assert "test" not in without["splits"] and names("o3", "validation") == names("o1", "validation")
    assert sorted(names("o3", "train")) == sorted(names("o1", "train") + test)


@pytest.mark.slow
def test_test_fraction_of_a_csv_and_a_bad_fraction_in_one_line(tmp_path):
    pixels = _make_folder(tmp_path / "imgs", {"x": 4, "y": 4})
    rows = [f"imgs/{rel},{'left' if rel.startswith('x') else 'right'}" for rel in pixels]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    info = preparing.prepare(input_dir=None, csv=str(tmp_path / "list.csv"), output_dir=str(tmp_path / "out"),
                           validation_fraction=0.25, test_fraction=0.25, num_shards=1)
    assert {s: v["per_class"] for s, v in info["splits"].items()} == {
        "train": {"left": 2, "right": 2}, "validation": {"left": 1, "right": 1}, "test": {"left": 1, "right": 1}}
    assert sorted(int(r["image/class/label"]) for r in _read_split(str(tmp_path / "out"), "test")) == [0, 1]
    result = _run_cli(f"--csv={tmp_path / 'list.csv'}", f"--output_dir={tmp_path / 'bad'}", "--test_fraction=1.5")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--test_fraction=1.5 must be in [0, 1)" in errors[0], result.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(validation_fraction=1.0), "validation_fraction"),
    (dict(num_shards=2, shard_size_mb=5.0), "not both"),
    (dict(num_shards=0), "num_shards"),
    (dict(test_fraction=-0.1), r"--test_fraction=-0.1 must be in \[0, 1\)"),
    (dict(validation_fraction=0.5, test_fraction=0.5), "nothing would be left to train on"),
    (dict(max_image_side=-1), r"--max_image_side=-1 is negative: .* or 0 to keep the originals"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    _make_folder(tmp_path / "in", {"a": 1, "b": 1})
    args = dict(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"),
                validation_fraction=0.1)
    with pytest.raises(discovery.DataError, match=message):
        preparing.prepare(**dict(args, **kwargs))


def test_output_dir_with_foreign_files_is_refused(tmp_path):
    _make_folder(tmp_path / "in", {"a": 1, "b": 1})
    os.makedirs(tmp_path / "out")
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    with pytest.raises(discovery.DataError, match="did not write"):
        preparing.prepare(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"),
                        validation_fraction=0.0)
    assert (tmp_path / "out" / "thesis.tex").read_text() == "precious"


def test_gcs_output_is_replaced_whole_and_read_back(tmp_path, gcs_bucket):
    _make_folder(tmp_path / "in", {"a": 3, "b": 3})
    out = f"{gcs_bucket}/data"
    for shards in (3, 2):
        info = preparing.prepare(input_dir=str(tmp_path / "in"), output_dir=out,
                               validation_fraction=0.0, num_shards=shards)
    assert sorted(n.rstrip("/") for n in tf.io.gfile.listdir(out)) == [
        "dataset.json", "labels.txt", "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    assert [n for n in tf.io.gfile.listdir(gcs_bucket) if "prepare-" in n] == []
    assert info["splits"]["train"]["files"] == ["train-00000-of-00002.tfrecord",
                                                "train-00001-of-00002.tfrecord"]
    glob = f"{out}/train-*"
    cfg = config.Data(train_data=glob, eval_data=glob, class_names=discovery.resolve_class_names(glob),
                      image_size=32)
    assert discovery.count_examples(glob) == 6
    labels = [int(v) for _, y in pipelines.build_dataset(cfg, split="eval", batch_size=4) for v in y]
    assert sorted(labels) == [0, 0, 0, 1, 1, 1]
