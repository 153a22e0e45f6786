"""trainer.data.pipelines and the modules it is built from: locating data and label checks (discovery),
decoding (decode), RandAugment, the reader and its sharding, skipped records (skips).

Shards are written here record by record (not through prepare) so that tests can plant bad
records; images are 24x32 px, batches tiny.
"""
import io
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

import trainer  # noqa: F401
import tensorflow as tf

from effnet_common import decode
from trainer.configs import config
from trainer.data import discovery, pipelines as pipelines_lib, randaugment, skips

SIZE = 32


def _pixels(seed: int, shape=(24, 32, 3)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    base, slope = rng.uniform(30, 220, 3), rng.uniform(-2, 2, (2, 3))
    return np.clip(base + y[..., None] * slope[0] + x[..., None] * slope[1], 0, 255).astype(np.uint8)


def _encode(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def _example(image: bytes, label: int, text: str = "") -> bytes:
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    if text:
        feature["image/class/text"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_shards(folder, records_per_shard, *, classes, split="train"):
    """Writes shards of (image bytes, label[, text]) tuples, plus labels.txt."""
    os.makedirs(folder, exist_ok=True)
    n = len(records_per_shard)
    for i, records in enumerate(records_per_shard):
        with tf.io.TFRecordWriter(os.path.join(folder, f"{split}-{i:05d}-of-{n:05d}.tfrecord")) as w:
            for record in records:
                w.write(_example(*record))
    with open(os.path.join(folder, "labels.txt"), "w") as f:
        f.write("".join(c + "\n" for c in classes))
    return os.path.join(str(folder), f"{split}-*")


def _cfg(train, *, classes, eval_data=None, **kwargs):
    return config.Data(train_data=str(train), eval_data=eval_data and str(eval_data),
                       class_names=tuple(classes), image_size=SIZE, **kwargs)


def _labels(ds) -> list:
    return [int(v) for _, y in ds for v in y.numpy()]


@pytest.fixture
def unique_shards(tmp_path):
    """12 records, each the only one of its class (so a label identifies a record), in 4 shards."""
    classes = [f"c{i:02d}" for i in range(12)]
    shards = [[(_encode(_pixels(i)), i, classes[i]) for i in range(s, 12, 4)] for s in range(4)]
    return _write_shards(tmp_path / "u", shards, classes=classes), classes


# --------------------------------------------------------------------------- locating data

def test_class_names_from_labels_file_beside_shards_or_folders(tmp_path, unique_shards):
    glob, classes = unique_shards
    assert discovery.resolve_class_names(glob) == tuple(classes)
    (tmp_path / "mine.txt").write_text("x\n\ny\n")
    assert discovery.resolve_class_names(glob, str(tmp_path / "mine.txt")) == ("x", "y")
    for name in ("zebra", "ant"):
        os.makedirs(tmp_path / "folder" / name)
    assert discovery.resolve_class_names(str(tmp_path / "folder")) == ("ant", "zebra")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(discovery.DataError, match="is empty"):
        discovery.resolve_class_names(glob, str(tmp_path / "empty.txt"))
    os.makedirs(tmp_path / "bare")
    with pytest.raises(discovery.DataError, match="no labels.txt beside"):
        discovery.resolve_class_names(str(tmp_path / "bare" / "train-*"))


def test_count_examples_from_dataset_json_or_by_counting(tmp_path, unique_shards):
    glob, _ = unique_shards
    assert discovery.count_examples(glob) == 12
    folder = os.path.dirname(glob)
    files = sorted(os.listdir(folder))
    info = {"splits": {"train": {"num_examples": 99, "files": [f for f in files if f.startswith("train")]}}}
    (tmp_path / "u" / "dataset.json").write_text(json.dumps(info))
    assert discovery.read_dataset_info(glob)["splits"]["train"]["num_examples"] == 99
    assert discovery.count_examples(glob) == 99  # trusted when it names exactly the matched shards
    assert discovery.count_examples(os.path.join(folder, "train-0000[01]-*")) == 6  # a subset: counted


@pytest.mark.parametrize("path, message", [
    ("{tmp}/nowhere/train-*", "matches no file"),
    ("{tmp}/missing_folder", "does not exist"),
    ("{tmp}/empty_folder", "without class subfolders"),
])
def test_missing_or_empty_paths_fail_with_one_line(tmp_path, path, message):
    os.makedirs(tmp_path / "empty_folder")
    path = path.format(tmp=tmp_path)
    cfg = config.Data(train_data=path, eval_data=path, class_names=("a", "b"), image_size=SIZE)
    for call in (lambda: discovery.count_examples(path),
                 lambda: pipelines_lib.build_dataset(cfg, split="train", batch_size=2),
                 lambda: pipelines_lib.build_dataset(cfg, split="eval", batch_size=2)):
        with pytest.raises(discovery.DataError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
    with pytest.raises(discovery.DataError, match="empty"):
        discovery.count_examples("")


def test_check_labels_names_the_file(tmp_path, unique_shards):
    glob, classes = unique_shards
    discovery.check_labels(glob, class_names=classes)
    with pytest.raises(discovery.DataError, match=r"label 8 in .*train-00000-of-00004.tfrecord is outside \[0, 8\)"):
        discovery.check_labels(glob, class_names=classes[:8])
    renamed = classes[:5] + ["wrong"] + classes[6:]
    with pytest.raises(discovery.DataError, match=r"label 5 in .*train-00001-of-00004.tfrecord says 'c05' "
                                             r"but labels.txt line 6 is 'wrong'"):
        discovery.check_labels(glob, class_names=renamed)
    one_based = _write_shards(tmp_path / "ob", [[(_encode(_pixels(0)), 1), (_encode(_pixels(1)), 2)]],
                              classes=["a", "b"])
    discovery.check_labels(one_based, class_names=["a", "b"], label_offset=1)
    with pytest.raises(discovery.DataError, match="--label_offset=1"):
        discovery.check_labels(one_based, class_names=["a", "b"])


# --------------------------------------------------------------------------- the reader

@pytest.mark.slow
def test_train_and_eval_batches(tmp_path, unique_shards):
    glob, classes = unique_shards
    for augment in ("none", "flip"):
        cfg = _cfg(glob, classes=classes, eval_data=glob, augment=augment)
        images, labels = next(iter(pipelines_lib.build_dataset(cfg, split="train", batch_size=5)))
        assert images.shape == (5, SIZE, SIZE, 3) and images.dtype == tf.float32
        assert labels.dtype == tf.int32
        assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
        assert float(tf.reduce_max(images)) > 1.0  # 0..255, not normalized
    ds = pipelines_lib.build_dataset(cfg, split="eval", batch_size=5, drop_remainder=True)
    assert ds.element_spec[0].shape.as_list() == [5, SIZE, SIZE, 3]
    first, second = list(ds), list(ds)
    assert len(first) == 2  # 12 records, remainder dropped
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    train = pipelines_lib.build_dataset(cfg, split="train", batch_size=5, repeat=True)
    iterator = iter(train)
    assert len(_labels([next(iterator) for _ in range(5)])) == 25
    # Read while elements are in flight, then after the iterator died mid-decode: no phantoms.
    assert skips.skipped_records("train", path=glob) == 0
    del iterator
    assert skips.skipped_records("train", path=glob) == 0


def test_cache_records_serves_later_passes_from_memory(tmp_path):
    """--cache_records: the same batches, and a second pass reads no file (the shards are gone)."""
    glob = _write_shards(tmp_path / "cached", [[(_encode(_pixels(i)), i % 2) for i in range(6)]], classes="ab")
    plain = list(pipelines_lib.build_dataset(_cfg(glob, classes="ab", eval_data=glob), split="eval", batch_size=4))
    cached = pipelines_lib.build_dataset(_cfg(glob, classes="ab", eval_data=glob, cache_records=True), split="eval", batch_size=4)
    first = list(cached)
    for path in tf.io.gfile.glob(glob):
        os.remove(path)
    second = list(cached)
    assert len(first) == len(second) == len(plain) == 2
    for (x0, y0), (x1, y1), (x2, y2) in zip(plain, first, second):
        np.testing.assert_array_equal(x0.numpy(), x1.numpy())
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())
        np.testing.assert_array_equal(y0.numpy(), y2.numpy())


def _pass(ds) -> list:
    """(image, label) of every element of one pass over a dataset of batches."""
    return [(x, int(y)) for images, labels in ds for x, y in zip(images.numpy(), labels.numpy())]


def test_pixel_cache_serves_later_epochs_without_reading_or_decoding(tmp_path):
    """--cache_pixels: a phase's later epochs read no file (the shard rewritten after the first
    one with 3 other images changes nothing) and give the same pixels: validation exactly the
    serving crops, training those crops as uint8, each as itself or its mirror (--augment=flip,
    drawn anew every epoch)."""
    pixels = [_pixels(i) for i in range(6)]
    glob = _write_shards(tmp_path / "s", [[(_encode(p), i % 2) for i, p in enumerate(pixels)]], classes="ab")
    cfg = _cfg(glob, classes="ab", eval_data=glob, num_train_examples=6, num_eval_examples=6)
    crops = [decode.decode_for_eval(tf.constant(_encode(p)), SIZE).numpy() for p in pixels]
    evaluation = pipelines_lib.build_dataset(cfg, split="eval", batch_size=4, epochs=3)
    training = pipelines_lib.build_dataset(cfg, split="train", batch_size=4, epochs=3)
    passes = [(_pass(evaluation), _pass(training))]
    _write_shards(tmp_path / "s", [[(_encode(_pixels(10 + i)), 0) for i in range(3)]], classes="ab")
    passes += [(_pass(evaluation), _pass(training)) for _ in range(3)]
    # Training views: each crop rounded to uint8 (as decode.to_uint8 does), or its mirror.
    views = [(i, flip, np.floor((crop[:, ::-1] if flip else crop) + 0.5))
             for i, crop in enumerate(crops) for flip in (False, True)]
    mirrored = 0
    for eval_pass, train_pass in passes:
        assert [y for _, y in eval_pass] == [i % 2 for i in range(6)]
        for (image, _), crop in zip(eval_pass, crops):
            np.testing.assert_array_equal(image, crop)
        seen = []
        for image, label in train_pass:
            (index, flip), = [(i, flip) for i, flip, view in views if np.array_equal(image, view)]
            assert label == index % 2
            seen.append(index)
            mirrored += flip
        assert sorted(seen) == list(range(6))
    assert 0 < mirrored < 24


@pytest.mark.parametrize("setting", ["augment=crop", "count unknown", "--nocache_pixels", "one epoch",
                                     "RAM too small"])
def test_pixel_cache_stays_off_where_it_cannot_serve(tmp_path, monkeypatch, setting):
    """Random crops differ every epoch, a cache of unknown size may not fit, one epoch has no
    later one: there every pass reads the shards again (rewritten here with 3 images of 6)."""
    glob = _write_shards(tmp_path / "s", [[(_encode(_pixels(i)), i % 2) for i in range(6)]], classes="ab")
    kwargs = {"augment=crop": {"augment": "crop"}, "count unknown": {"num_train_examples": None},
              "--nocache_pixels": {"cache_pixels": False}}.get(setting, {})
    cfg = _cfg(glob, classes="ab", **{"num_train_examples": 6, **kwargs})
    if setting == "RAM too small":  # 6 crops of 32x32x3 bytes need 18 KB: a quarter of 40 KB is less
        monkeypatch.setattr(pipelines_lib.devices, "cpu_available_bytes", lambda: 40_000)
    ds = pipelines_lib.build_dataset(cfg, split="train", batch_size=4, epochs=1 if setting == "one epoch" else 3)
    assert len(_pass(ds)) == 6
    _write_shards(tmp_path / "s", [[(_encode(_pixels(i)), i % 2) for i in range(3)]], classes="ab")
    assert len(_pass(ds)) == 3


def test_a_shard_gone_mid_run_is_skipped_not_waited_on(tmp_path):
    """A shard deleted after the run listed it: later passes give the other shards' records
    (TFRecordDataset alone would retry opening it forever under ignore_errors). Read in a
    thread, so that a hang fails the test instead of the suite."""
    import threading
    folder = tmp_path / "s"
    glob = _write_shards(folder, [[(_encode(_pixels(3 * s + i)), s) for i in range(3)] for s in range(2)], classes="ab")
    cfg = _cfg(glob, classes="ab", eval_data=glob, augment="crop")
    datasets = [pipelines_lib.build_dataset(cfg, split=split, batch_size=4) for split in ("train", "eval")]
    assert [sorted(y for _, y in _pass(ds)) for ds in datasets] == [[0, 0, 0, 1, 1, 1]] * 2
    os.remove(sorted(tf.io.gfile.glob(glob))[1])
    later = []
    reader = threading.Thread(target=lambda: later.extend(sorted(y for _, y in _pass(ds)) for ds in datasets),
                              daemon=True)
    reader.start()
    reader.join(timeout=60)
    assert later == [[0, 0, 0]] * 2


def test_rand_augment_operations_keep_shape_and_range(tmp_path):
    image = tf.constant(_pixels(3, (SIZE, SIZE, 3)), tf.float32)
    for index, op in enumerate(randaugment._RANDAUGMENT_OPS):
        out = op(image, 0.9).numpy()
        assert out.shape == (SIZE, SIZE, 3) and 0.0 <= out.min() and out.max() <= 255.0
        assert index == 0 or np.abs(out - image.numpy()).mean() > 0.5, index
    seed = tf.constant([3, 4], tf.int64)
    once, again = (randaugment.rand_augment(image, seed=seed).numpy() for _ in range(2))
    np.testing.assert_array_equal(once, again)
    glob = _write_shards(tmp_path / "ra", [[(_encode(_pixels(i)), i % 2) for i in range(4)]], classes="ab")
    images, _ = next(iter(pipelines_lib.build_dataset(_cfg(glob, classes="ab", augment="randaugment"),
                                             split="train", batch_size=4)))
    assert images.shape == (4, SIZE, SIZE, 3) and float(tf.reduce_max(images)) <= 255.0


def test_eval_pixels_match_decode_for_eval(tmp_path):
    pixels = [_pixels(i) for i in range(3)]
    glob = _write_shards(tmp_path / "s", [[(_encode(p, "PNG"), i) for i, p in enumerate(pixels)]],
                         classes=["a", "b", "c"])
    images, labels = next(iter(pipelines_lib.build_dataset(
        _cfg(glob, classes="abc", eval_data=glob), split="eval", batch_size=3)))
    for image, label in zip(images.numpy(), labels.numpy()):
        expected = decode.decode_for_eval(tf.constant(_encode(pixels[label], "PNG")), SIZE).numpy()
        np.testing.assert_array_equal(image, expected)


def test_decode_for_eval_reads_every_format_alike():
    # Few colours, so GIF's palette is exact and every lossless format holds the same pixels.
    array = np.zeros((40, 48, 3), np.uint8)
    array[:, :24] = (200, 30, 30)
    array[10:30, 24:] = (20, 180, 90)
    outputs = {fmt: decode.decode_for_eval(tf.constant(_encode(array, fmt)), SIZE).numpy()
               for fmt in ("PNG", "GIF", "BMP", "JPEG")}
    for fmt in ("GIF", "BMP"):
        np.testing.assert_array_equal(outputs[fmt], outputs["PNG"])
    assert np.abs(outputs["JPEG"] - outputs["PNG"]).mean() < 4.0
    assert outputs["PNG"].shape == (SIZE, SIZE, 3) and outputs["PNG"].dtype == np.float32


def test_image_folder_reads_like_shards(tmp_path):
    for c, name in enumerate(("ant", "bee")):
        os.makedirs(tmp_path / "f" / name)
        for i in range(3):
            (tmp_path / "f" / name / f"{i}.png").write_bytes(_encode(_pixels(10 * c + i), "PNG"))
    (tmp_path / "f" / "ant" / "readme.txt").write_text("ignored: not an image extension")
    (tmp_path / "f" / "ant" / "._0.png").write_bytes(b"macOS resource fork: hidden, ignored")
    os.makedirs(tmp_path / "f" / "bee" / ".thumbnails")
    (tmp_path / "f" / "bee" / ".thumbnails" / "0.png").write_bytes(_encode(_pixels(99), "PNG"))
    folder = str(tmp_path / "f")
    classes = discovery.resolve_class_names(folder)
    assert discovery.count_examples(folder) == 6
    cfg = _cfg(folder, classes=classes, eval_data=folder)
    assert sorted(_labels(pipelines_lib.build_dataset(cfg, split="eval", batch_size=4))) == [0, 0, 0, 1, 1, 1]
    assert sorted(_labels(pipelines_lib.build_dataset(cfg, split="train", batch_size=4))) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(discovery.DataError, match="class folder 'bee'.*not in the labels"):
        pipelines_lib.build_dataset(_cfg(folder, classes=("ant", "cow")), split="train", batch_size=2)


@pytest.mark.parametrize("num_files, pipelines", [(4, 3), (1, 3)])
@pytest.mark.parametrize("split", ["train", "eval"])
def test_per_worker_sharding_is_disjoint_and_complete(unique_shards, num_files, pipelines, split):
    glob, classes = unique_shards
    expected = list(range(12))
    if num_files == 1:  # fewer files than pipelines: sharded by record
        glob, expected = glob.replace("train-*", "train-00000-*"), [0, 4, 8]
    parts = []
    for i in range(pipelines):
        ctx = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=i,
                                         num_replicas_in_sync=pipelines)
        ds = pipelines_lib.build_dataset(_cfg(glob, classes=classes, eval_data=glob), split=split,
                                batch_size=2, input_context=ctx)
        parts.append(_labels(ds))
    assert all(parts)
    assert sorted(sum(parts, [])) == expected  # complete, and no record twice


def test_bad_records_are_skipped_and_counted(tmp_path, caplog):
    good = [(_encode(_pixels(i)), i % 2) for i in range(6)]
    jpeg = _encode(_pixels(50))
    bad = [(b"not an image at all", 0), (jpeg[:40], 1), (b"", 0), (_encode(_pixels(51)), 7)]
    glob = _write_shards(tmp_path / "bad", [good[:3] + bad[:2], bad[2:] + good[3:]], classes=["a", "b"])
    cfg = _cfg(glob, classes=("a", "b"), eval_data=glob)
    for split in ("train", "eval"):
        assert sorted(_labels(pipelines_lib.build_dataset(cfg, split=split, batch_size=4))) == [0, 0, 0, 1, 1, 1]
        assert skips.skipped_records(split, path=glob) == 4
    # Read again: the same bad records are not counted twice.
    list(pipelines_lib.build_dataset(cfg, split="train", batch_size=4, repeat=True).take(6))
    assert skips.skipped_records("train", path=glob) == 4
    logger = skips.SkippedRecordsLogger(splits=("train",))
    with caplog.at_level(logging.INFO, logger="absl"):  # whatever verbosity an earlier test left
        logger.on_epoch_end(0)
        logger.on_epoch_end(1)
    records = [r for r in caplog.records if "input skipped" in r.getMessage()]
    assert records[0].getMessage().startswith("epoch 1: train input skipped")
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]  # 4 new, then 0 new


def test_corrupt_shard_framing_fails_start_up_checks_but_not_the_reader(tmp_path, unique_shards):
    glob, classes = unique_shards
    shard = os.path.join(os.path.dirname(glob), "train-00002-of-00004.tfrecord")
    content = bytearray(open(shard, "rb").read())
    content[len(content) // 2] ^= 0xFF  # inside the second of three records: a CRC mismatch
    open(shard, "wb").write(bytes(content))
    for check in (lambda: discovery.count_examples(glob), lambda: discovery.check_labels(glob, class_names=classes)):
        with pytest.raises(discovery.DataError, match="cannot read the records of .*train-00002-of-00004"):
            check()
    labels = _labels(pipelines_lib.build_dataset(_cfg(glob, classes=classes, eval_data=glob), split="eval",
                                        batch_size=4))
    assert sorted(labels) == sorted(set(range(12)) - {6, 10})  # the rest of that shard is lost


def test_training_decode_scales_large_jpeg_windows_in_the_dct():
    big = np.kron(_pixels(5, (60, 80, 3)), np.ones((10, 10, 1), np.uint8))  # 600x800, smooth
    jpeg = tf.constant(_encode(big))
    for window, expected_shape in (([40, 80, 520, 640], (65, 80, 3)),   # 1/8: 520 // 8 >= 64
                                   ([0, 0, 200, 300], (100, 150, 3)),   # 1/2
                                   ([0, 0, 100, 100], (100, 100, 3))):  # full resolution
        part = decode._decode_jpeg_window(jpeg, tf.constant(window), 64)
        assert part.shape == expected_shape
        y, x, h, w = window
        reference = tf.image.resize(big[y:y + h, x:x + w], part.shape[:2], antialias=True)
        assert float(tf.reduce_mean(tf.abs(tf.cast(part, tf.float32) - reference))) < 3.0


def test_eval_decode_reads_only_the_center_window_of_a_jpeg():
    """The evaluation crop of a JPEG decodes its window alone: at full resolution it equals
    decode-then-crop exactly; for a large photo (DCT-scaled) it stays close to it."""
    small = tf.constant(_encode(_pixels(3, (50, 70, 3))))  # window 43 px < 2 x 32: full resolution
    whole = tf.io.decode_jpeg(small, channels=3)
    y, x, h, w = decode._center_window(tf.shape(whole)).numpy()
    expected = decode._resize(whole[y:y + h, x:x + w], SIZE).numpy()
    np.testing.assert_array_equal(decode.decode_for_eval(small, SIZE).numpy(), expected)
    big = np.kron(_pixels(7, (60, 80, 3)), np.ones((10, 10, 1), np.uint8))  # 600x800: window 525, 1/8 scale
    jpeg = tf.constant(_encode(big))
    y, x, h, w = decode._center_window(tf.constant([600, 800, 3])).numpy()
    reference = tf.image.resize(big[y:y + h, x:x + w], [SIZE, SIZE], antialias=True).numpy()
    assert np.abs(decode.decode_for_eval(jpeg, SIZE).numpy() - reference).mean() < 3.0


def test_a_run_owns_its_skip_counters(tmp_path):
    """Two owners of the same data count its bad records apart; the process default sees none."""
    good = [(_encode(_pixels(i)), i % 2) for i in range(4)]
    glob = _write_shards(tmp_path / "s", [good + [(b"not an image", 0)]], classes=["a", "b"])
    cfg = _cfg(glob, classes="ab")
    before = skips.skipped_records("train", path=glob)
    mine, theirs = skips.SkipCounters(), skips.SkipCounters()
    for _ in pipelines_lib.build_dataset(cfg, split="train", batch_size=8, skip_counters=mine):
        pass
    assert mine.skipped("train", path=glob) == 1 and theirs.skipped("train") == 0
    assert skips.skipped_records("train", path=glob) == before


def test_one_read_of_a_split_says_what_three_reads_did(demo_records, tmp_path):
    """inspect_split: the count, the per-class counts and the label check of a split, from
    dataset.json and the label sample where it describes the shards, else from one pass."""
    import shutil
    names = discovery.resolve_class_names(f"{demo_records}/train-*.tfrecord")
    bare = tmp_path / "bare"  # the same shards without dataset.json: one pass over every record
    bare.mkdir()
    for name in os.listdir(demo_records):
        if name.endswith(".tfrecord"):
            shutil.copy(os.path.join(demo_records, name), bare / name)
    for path in (f"{demo_records}/validation-*.tfrecord", f"{bare}/validation-*.tfrecord", f"{bare}/train-*"):
        facts = discovery.inspect_split(path, class_names=names)
        assert facts.num_examples == discovery.count_examples(path)
        assert facts.class_counts == discovery.class_counts(path, class_names=names)
        assert facts.multi_label is discovery.check_labels(path, class_names=names) is False
        assert sum(facts.class_counts) == facts.num_examples
    with pytest.raises(discovery.DataError, match="outside"):
        discovery.inspect_split(f"{bare}/train-*", class_names=names[:1])
