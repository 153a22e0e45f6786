"""Input pipelines: TFRecord shards or image folders -> batches of (images 0..255, labels).

The data contract (docs/data.md): shards named `{split}-{i:05d}-of-{n:05d}.tfrecord` holding
Google's ImageNet feature keys, with `labels.txt` and `dataset.json` beside them. An image folder
with one subfolder per class is read through the same decode and augment functions, so the two
inputs train alike.

Images leave the pipeline as float32 in 0..255, not normalized: each backbone normalizes inside
the model, so the exported SavedModel stands alone. `decode_for_eval` is the single
preprocessing source for evaluation and serving (serving/signatures.py imports it).

A record whose image cannot be decoded (or whose label is out of range) is skipped and counted,
never fatal: a 10-hour job must not die on one bad JPEG. `skipped_records()` reads the count and
`SkippedRecordsLogger` logs it at every epoch end.

This module builds datasets only: it imports neither the model nor the strategy.
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf
import tf_keras as keras

LABELS_FILE = "labels.txt"
INFO_FILE = "dataset.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
# Inception-style evaluation: a square center crop of 87.5 % of the shorter side
# (tf.image.central_crop(0.875) in the Inception/slim preprocessing), resized to the model input.
EVAL_CENTRAL_FRACTION = 0.875
# Inception-style training crop (Szegedy et al. 2015, as in the EfficientNet reference input
# pipeline): 8-100 % of the area, aspect ratio 3/4-4/3.
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
CROP_MIN_OBJECT_COVERED = 0.1
CROP_MAX_ATTEMPTS = 10
_GLOB_CHARS = "*?["

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}
_CHECK_FEATURES = dict(_FEATURES, **{
    "image/class/text": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/class/synset": tf.io.FixedLenFeature([], tf.string, default_value=""),
})


class DataError(ValueError):
    """A data problem the user must fix; the message is one line: what, where, how to fix."""


# --------------------------------------------------------------------------- locating data

def is_absolute(path: str) -> bool:
    """True for an absolute local path or a URL such as gs://bucket/x."""
    return "://" in path or os.path.isabs(path)


def _has_glob(path: str) -> bool:
    return any(c in path for c in _GLOB_CHARS)


def is_image_folder(path: str) -> bool:
    """True when `path` is a folder (not a glob) holding class subfolders."""
    return not _has_glob(path) and tf.io.gfile.isdir(path) and bool(_class_dirs(path))


def _class_dirs(folder: str) -> List[str]:
    names = []
    for name in tf.io.gfile.listdir(folder):
        name = name.rstrip("/")
        if not name.startswith(".") and tf.io.gfile.isdir(os.path.join(folder, name)):
            names.append(name)
    return sorted(names)


def _shard_dir(path: str) -> str:
    return path if (not _has_glob(path) and tf.io.gfile.isdir(path)) else os.path.dirname(path)


def list_record_files(path: str, *, what: str = "data path") -> List[str]:
    """The sorted TFRecord files a glob names; DataError when it names none.

    Args:
      path: a TFRecord glob, or a single file.
      what: how the user named this path (a flag), for the error message.
    """
    if not path:
        raise DataError(f"{what} is empty: pass a TFRecord glob such as DIR/train-*.tfrecord "
                        "or an image folder with one subfolder per class")
    if not _has_glob(path):
        if not tf.io.gfile.exists(path):
            raise DataError(f"{what} {path} does not exist: check the path, or make shards with "
                            "python -m trainer.prepare --input_dir=IMAGES --output_dir=DIR")
        if tf.io.gfile.isdir(path):
            raise DataError(f"{what} {path} is a folder without class subfolders: pass a TFRecord "
                            f"glob such as {os.path.join(path, 'train-*')} or a folder with one "
                            "subfolder of images per class")
    files = sorted(f for f in tf.io.gfile.glob(path) if not tf.io.gfile.isdir(f))
    if not files:
        raise DataError(f"{what} {path} matches no file: check the glob (e.g. DIR/train-*.tfrecord), "
                        "or make shards with python -m trainer.prepare")
    return files


def list_image_files(folder: str, *, class_names: Sequence[str],
                     what: str = "data path") -> Tuple[List[str], List[int]]:
    """Image paths and labels of a class-folder tree, sorted for a stable order.

    Every class subfolder must be one of `class_names`, so a label always means the same class
    as in labels.txt. Files are chosen by extension (as image_dataset_from_directory does); a
    file whose content fails to decode is skipped and counted by the reader.
    """
    index = {name: i for i, name in enumerate(class_names)}
    paths, labels = [], []
    for name in _class_dirs(folder):
        if name not in index:
            raise DataError(f"class folder {name!r} in {folder} is not in the labels "
                            f"({len(class_names)} classes): add it to labels.txt or remove the folder")
        for root, _, files in tf.io.gfile.walk(os.path.join(folder, name)):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    paths.append(os.path.join(root, f))
                    labels.append(index[name])
    if not paths:
        raise DataError(f"{what} {folder} holds no image files (.jpg .jpeg .png .gif .bmp) in "
                        "its class subfolders: add images, or pass a TFRecord glob")
    return paths, labels


def resolve_class_names(train_data: str, labels: Optional[str] = None) -> Tuple[str, ...]:
    """The class names in label order.

    From `labels` when given, else labels.txt beside the TFRecord shards, else the sorted class
    subfolder names of an image folder (the order image_dataset_from_directory uses).

    Raises:
      DataError: when no source exists or it lists no class.
    """
    if labels:
        return _read_labels_file(labels, what="--labels")
    if not train_data:
        raise DataError("--train_data is empty: pass a TFRecord glob or an image folder")
    if not _has_glob(train_data) and tf.io.gfile.isdir(train_data):
        beside = os.path.join(train_data, LABELS_FILE)
        names = _class_dirs(train_data)
        if names:
            return tuple(names)
        if tf.io.gfile.exists(beside):
            return _read_labels_file(beside, what="labels.txt")
        raise DataError(f"--train_data {train_data} is a folder without class subfolders: pass "
                        "a TFRecord glob (DIR/train-*.tfrecord) or a folder of class folders")
    beside = os.path.join(os.path.dirname(train_data), LABELS_FILE)
    if not tf.io.gfile.exists(beside):
        raise DataError(f"no labels.txt beside {train_data} (looked for {beside}): pass "
                        "--labels=FILE with one class name a line")
    return _read_labels_file(beside, what="labels.txt")


def _read_labels_file(path: str, *, what: str) -> Tuple[str, ...]:
    if not tf.io.gfile.exists(path):
        raise DataError(f"{what} {path} does not exist: pass a file with one class name a line")
    with tf.io.gfile.GFile(path, "r") as f:
        names = tuple(line.strip() for line in f.read().splitlines() if line.strip())
    if not names:
        raise DataError(f"{what} {path} is empty: write one class name a line, in label order")
    return names


def read_dataset_info(train_data: str) -> Optional[dict]:
    """dataset.json beside the shards (as trainer.prepare writes it), or None."""
    if not train_data or is_image_folder(train_data):
        return None
    path = os.path.join(_shard_dir(train_data), INFO_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as f:
        try:
            return json.loads(f.read())
        except ValueError as e:
            raise DataError(f"{path} is not valid JSON ({e}): delete it or rerun trainer.prepare")


def _info_count(path: str, files: Sequence[str]) -> Optional[int]:
    """The dataset.json count for the split whose shards are exactly `files`, else None."""
    info = read_dataset_info(path)
    if not info:
        return None
    names = sorted(os.path.basename(f) for f in files)
    for split in (info.get("splits") or {}).values():
        if sorted(split.get("files", [])) == names:
            return int(split["num_examples"])
    return None


def count_examples(path: str) -> int:
    """Examples behind a data path: dataset.json's count when it describes exactly the matched
    shards, else a count of records (or image files).

    Shards without dataset.json larger than `_EXACT_COUNT_BYTES` in total (Google's ImageNet
    shards: 140 GB) are not read through just to count: the count is estimated from the
    records per byte of the first shard, and a warning says so.

    Raises:
      DataError: missing path, glob matching nothing, unreadable shard, or zero examples.
    """
    if is_image_folder(path):
        n = len(list_image_files(path, class_names=_class_dirs(path))[0])
    else:
        files = list_record_files(path)
        n = _info_count(path, files)
        if n is None:
            n = _count_records(files)
    if n == 0:
        raise DataError(f"{path} holds no examples: check the path or rerun trainer.prepare")
    return n


_EXACT_COUNT_BYTES = 2 * 1024 ** 3


def _count_records(files: Sequence[str]) -> int:
    sizes = [tf.io.gfile.stat(f).length for f in files]
    if sum(sizes) <= _EXACT_COUNT_BYTES or len(files) == 1:
        return _read_count(files)
    first = _read_count(files[:1])
    estimate = round(first * sum(sizes) / max(sizes[0], 1))
    logging.warning("%d shards, %.1f GB without dataset.json: estimated %d records from %s; "
                    "write dataset.json (trainer.prepare does) or pass --steps_per_epoch",
                    len(files), sum(sizes) / 1024 ** 3, estimate, files[0])
    return estimate


def _read_count(files: Sequence[str]) -> int:
    ds = tf.data.TFRecordDataset(list(files), num_parallel_reads=min(len(files), 16))
    try:
        return int(ds.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
    except tf.errors.OpError as e:
        raise _unreadable(files, e) from None


def _unreadable(files: Sequence[str], error: tf.errors.OpError) -> DataError:
    """A DataError naming the first file that fails to read (found by reading them one by one,
    on this error path only)."""
    culprit, message = files[0], op_error_message(error)
    if len(files) > 1:
        for f in files:
            try:
                tf.data.TFRecordDataset(f).reduce(0, lambda count, _: count + 1)
            except tf.errors.OpError as e:
                culprit, message = f, op_error_message(e)
                break
    return DataError(f"cannot read the records of {culprit} ({message}): the shard is corrupt or "
                     "truncated; rerun trainer.prepare, or remove it from the glob")


def op_error_message(error: tf.errors.OpError) -> str:
    """The human part of a TensorFlow op error: no function-node prefix, no op suffix."""
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", error.message or type(error).__name__)
    return re.sub(r"\s*\[Op:.*$", "", text.splitlines()[0] if text else "").strip()


def check_labels(path: str, *, class_names: Sequence[str], label_offset: int = 0,
                 max_records: int = 2000) -> None:
    """Fails early, naming the file, when records disagree with the class names.

    Scans up to `max_records` records taken round-robin from every shard: each label (after
    `label_offset`) must be in [0, C), and `image/class/text` (or `image/class/synset`), when
    present, must be the class name labels.txt gives that label. Better a one-line error at
    start-up than a crash (or silent nonsense) hours into training.

    Raises:
      DataError: naming the file, the record's label and the fix.
    """
    if is_image_folder(path):
        list_image_files(path, class_names=class_names)  # raises on unknown class folders
        return
    files = list_record_files(path)
    files_ds = tf.data.Dataset.from_tensor_slices(files)
    ds = files_ds.interleave(
        lambda f: tf.data.TFRecordDataset(f).map(lambda r: (f, r)),
        cycle_length=min(len(files), 64), block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    ds = ds.take(max_records).batch(256).map(
        lambda f, r: (f, tf.io.parse_example(r, _CHECK_FEATURES)))
    try:
        for fnames, feats in ds.as_numpy_iterator():
            for i, fname in enumerate(fnames):
                _check_record(fname.decode(), {k: v[i] for k, v in feats.items()},
                              class_names=class_names, label_offset=label_offset)
    except tf.errors.OpError as e:
        raise _unreadable(files, e) from None


def _check_record(where: str, feats: dict, *, class_names: Sequence[str], label_offset: int):
    n = len(class_names)
    label = int(feats["image/class/label"]) - label_offset
    if not 0 <= label < n:
        hint = ", or --label_offset=1 for 1-based labels (Google's ImageNet shards)" \
            if label_offset == 0 and label == n else ""
        raise DataError(
            f"label {label + label_offset} in {where} is outside [{label_offset}, "
            f"{n + label_offset}) for the {n} classes of labels.txt: pass the labels.txt written "
            f"with these shards (--labels){hint}")
    names = {t.decode() for t in (feats["image/class/text"], feats["image/class/synset"]) if t}
    if names and class_names[label] not in names:
        raise DataError(
            f"label {label} in {where} says {sorted(names)[0]!r} but labels.txt line {label + 1} "
            f"is {class_names[label]!r}: pass the labels.txt written with these shards (--labels) "
            "or rerun trainer.prepare")


# --------------------------------------------------------------------------- skipped records

class SkipCounter:
    """The records of one data path that failed to decode, or carry a label outside [0, C).

    Before an element is decoded, its fingerprint and image bytes go into a `pending` table;
    a successful decode removes them. A failed decode raises before the removal (and
    `ignore_errors` drops the element), so its entry stays. `pending` also holds, for the
    milliseconds a decode takes, the elements in flight, and those an iterator destroyed
    mid-decode: `count` therefore decodes each pending image once more and counts only those
    that fail (dropping the others), so the count is exact whenever it is read. A bad label is
    known before decoding and goes straight into `bad_labels`.

    Tables rather than a counter variable: insert and remove are idempotent and thread-safe, so
    parallel map calls need no atomic increment and a bad record met again next epoch counts
    once; and strategies intercept variable creation (a dataset built inside
    `strategy.scope()` would get a mirrored variable) but not lookup tables.
    """

    def __init__(self):
        with tf.init_scope(), tf.device("/cpu:0"):  # lookup tables have CPU kernels only
            self.pending = tf.lookup.experimental.MutableHashTable(
                key_dtype=tf.int64, value_dtype=tf.string, default_value="")
            self.bad_labels = tf.lookup.experimental.MutableHashTable(
                key_dtype=tf.int64, value_dtype=tf.int64, default_value=0)

    def count(self) -> int:
        """Distinct skipped records so far (eager; decodes only the few pending images)."""
        keys, values = self.pending.export()
        decodable = [k for k, v in zip(keys.numpy(), values.numpy()) if _decodes(v)]
        if decodable:  # in flight when exported, or abandoned by a destroyed iterator
            self.pending.remove(tf.constant(decodable, tf.int64))
        return len(keys) - len(decodable) + int(self.bad_labels.size())

    def enter(self, image_bytes: tf.Tensor, label_ok: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Records an element before its decode; raises (dropping it) when its label is bad.
        Returns its key and the bytes, ordered after the bookkeeping."""
        key = tf.reshape(tf.strings.to_hash_bucket_fast(_identity_of(image_bytes), _KEY_BUCKETS), [1])

        def bad_label():
            with tf.control_dependencies([self.bad_labels.insert(key, tf.ones([1], tf.int64))]):
                return tf.constant(False)

        noted = tf.cond(label_ok, lambda: tf.constant(True), bad_label)
        with tf.control_dependencies([tf.debugging.Assert(noted, ["label outside [0, C)"])]):
            insert = self.pending.insert(key, tf.reshape(image_bytes, [1]))
        with tf.control_dependencies([insert]):
            return key, tf.identity(image_bytes)

    def leave(self, key: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
        """Clears a decoded element; returns `image` ordered after the removal."""
        with tf.control_dependencies([image]):
            remove = self.pending.remove(key)
        with tf.control_dependencies([remove]):
            return tf.identity(image)


def _decodes(image_bytes: bytes) -> bool:
    try:
        tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        return True
    except tf.errors.OpError:
        return False


_KEY_BUCKETS = 2 ** 62


def _identity_of(image_bytes: tf.Tensor) -> tf.Tensor:
    """The first 4 KB and the length of an encoded image: past the headers, so two different
    images practically never share it, at a fraction of the cost of hashing ~100 KB."""
    return tf.strings.join([tf.strings.substr(image_bytes, 0, 4096),
                            tf.strings.as_string(tf.strings.length(image_bytes))], "|")
_COUNTERS: Dict[Tuple[str, str], SkipCounter] = {}
_COUNTERS_LOCK = threading.Lock()


def _counter(split: str, path: str) -> SkipCounter:
    with _COUNTERS_LOCK:
        if (split, path) not in _COUNTERS:
            _COUNTERS[(split, path)] = SkipCounter()
        return _COUNTERS[(split, path)]


def skipped_records(split: str = "train") -> int:
    """Distinct records of `split` skipped so far in this process (undecodable image or label
    outside [0, C)); counted per data path, summed over paths."""
    with _COUNTERS_LOCK:
        counters = [c for (s, _), c in _COUNTERS.items() if s == split]
    return sum(c.count() for c in counters)


class SkippedRecordsLogger(keras.callbacks.Callback):
    """Logs at every epoch end how many records the input pipelines skipped.

    Skipping keeps a long job alive through a few bad images; logging the count keeps it honest.
    A warning when the count grew during the epoch, an info line when it did not, and no line
    while nothing was ever skipped.
    """

    def __init__(self, splits: Sequence[str] = ("train", "eval")):
        super().__init__()
        self._splits = tuple(splits)
        self._last = {s: 0 for s in self._splits}

    def on_epoch_end(self, epoch, logs=None):
        for split in self._splits:
            total = skipped_records(split)
            new, self._last[split] = total - self._last[split], total
            if not total:
                continue  # nothing skipped: no line
            log = logging.warning if new else logging.info
            log("epoch %d: %s input skipped %d undecodable or mislabelled record(s) so far "
                "(%d new this epoch)", epoch + 1, split, total, new)


# --------------------------------------------------------------------------- decoding

def _decode_any(image_bytes: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, 3] from JPEG, PNG, GIF (first frame) or BMP bytes."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Bilinear resize to [S, S, 3] float32; bilinear never leaves the input's 0..255 range."""
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    image.set_shape([image_size, image_size, 3])
    return image


def _center_window(shape: tf.Tensor) -> tf.Tensor:
    """[y, x, h, w] of the square center crop of `EVAL_CENTRAL_FRACTION` of the shorter side."""
    height, width = shape[0], shape[1]
    side = tf.cast(tf.cast(tf.minimum(height, width), tf.float32) * EVAL_CENTRAL_FRACTION, tf.int32)
    side = tf.maximum(side, 1)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def decode_for_eval(image_bytes, image_size: int) -> tf.Tensor:
    """Deterministic preprocessing for evaluation and serving: decode, center crop, resize.

    The single source of evaluation preprocessing: the eval pipeline and the exported serving
    signatures both call it, so a served image is seen exactly as in evaluation.

    Args:
      image_bytes: scalar string tensor of JPEG, PNG, GIF (first frame) or BMP bytes.
      image_size: side of the square output.

    Returns:
      float32 [image_size, image_size, 3] with values in 0..255.
    """
    image = _decode_any(image_bytes)
    y, x, h, w = tf.unstack(_center_window(tf.shape(image)))
    image = tf.image.crop_to_bounding_box(image, y, x, h, w)
    return _resize(image, image_size)


def _random_window(shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """[y, x, h, w] of an Inception-style random crop inside an image of `shape`."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=CROP_MIN_OBJECT_COVERED, aspect_ratio_range=CROP_ASPECT_RANGE,
        area_range=CROP_AREA_RANGE, max_attempts=CROP_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def decode_for_train(image_bytes, image_size: int, seed) -> tf.Tensor:
    """Random-crop decode for training: float32 [S, S, 3] in 0..255.

    For JPEG only the crop window is decoded (`tf.image.decode_and_crop_jpeg`: rows below the
    window are never decoded), which keeps the reader near the speed of decoding; other formats
    are decoded whole, then cropped.
    """
    def jpeg():
        window = _random_window(tf.io.extract_jpeg_shape(image_bytes), seed)
        return _decode_jpeg_window(image_bytes, window, image_size)

    def other():
        image = _decode_any(image_bytes)
        y, x, h, w = tf.unstack(_random_window(tf.shape(image), seed))
        return tf.image.crop_to_bounding_box(image, y, x, h, w)

    image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    image.set_shape([None, None, 3])
    return _resize(image, image_size)


_DCT_RATIOS = (1, 2, 4, 8)


def _decode_jpeg_window(image_bytes: tf.Tensor, window: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes only `window` ([y, x, h, w]) of a JPEG, at the largest DCT scaling (1/2, 1/4,
    1/8, done by libjpeg inside the decoder) that keeps the window's shorter side at least
    `image_size`. Entropy decoding still reads the file, but the IDCT, upsampling and colour
    conversion run on up to 64x fewer pixels, and the resize starts near the target size
    (less aliasing too). Measured on a 4000x3000 photo, 2800x3600 window, 224 px: the decode
    1.5x faster, the resize from 350x450 instead of 2800x3600. The window is given in the
    scaled image's coordinates, since TensorFlow's decoder crops after scaling."""
    shorter = tf.minimum(window[2], window[3])
    index = tf.reduce_sum(tf.cast(shorter >= image_size * tf.constant(_DCT_RATIOS[1:]), tf.int32))

    def at(ratio):
        def decode():
            scaled = tf.maximum(window // ratio, tf.constant([0, 0, 1, 1]))
            return tf.image.decode_and_crop_jpeg(image_bytes, scaled, channels=3, ratio=ratio)
        return decode

    return tf.switch_case(index, [at(r) for r in _DCT_RATIOS])


def random_flip(image: tf.Tensor, seed) -> tf.Tensor:
    """Flips left-right with probability 1/2 (stateless). A cond, so the unflipped half costs
    nothing; done on the uint8 image (a quarter of the bytes of float32). Measured here: a
    per-batch broadcast `tf.where` instead cost ~1.7 ms per 224 px image, as much as a decode."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Rounds a 0..255 float image to uint8: batches move a quarter of the bytes, and the cast
    back to float happens once per batch (measured: ~0.2 ms less per 224 px image)."""
    return tf.cast(image + 0.5, tf.uint8)  # bilinear output (and RandAugment's) is in 0..255


# --------------------------------------------------------------------------- the pipeline

def _records(files: List[str], *, training: bool, input_context, seed: int) -> tf.data.Dataset:
    """Serialized records, sharded per input pipeline: by file when there
    are at least as many files as pipelines (no pipeline reads bytes it throws away), else by
    record after a deterministic interleave (every pipeline must see the same order)."""
    n = input_context.num_input_pipelines if input_context else 1
    i = input_context.input_pipeline_id if input_context else 0
    by_record = n > 1 and len(files) < n
    if n > 1 and not by_record:
        files = files[i::n]
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training and not by_record:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    deterministic = not training or by_record
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 16), block_length=1,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return ds.shard(n, i) if by_record else ds


def _image_files(paths: List[str], labels: List[int], *, training: bool, input_context,
                 seed: int) -> tf.data.Dataset:
    """(file bytes, label) of an image folder, sharded by file per input pipeline."""
    ds = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int64)))
    if input_context and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    return ds.map(lambda p, l: (tf.io.read_file(p), l), num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=not training)


def _decode_counted(ds: tf.data.Dataset, *, unpack, decode, counter: SkipCounter,
                    num_classes: int, training: bool, seed: int) -> tf.data.Dataset:
    """Decodes every element; one whose image fails to decode, or whose label is outside
    [0, C), is dropped and stays recorded in `counter`.

    The failing map call raises (a failed decode, or the label assertion) and `ignore_errors`
    drops that element: the cheap way. A per-element fallback dataset cost ~0.5 ms per image,
    a quarter of a decode; a filter stage after the map ~0.1 ms. Its price: `ignore_errors`
    also drops an element when reading its file fails (tf.data logs it).

    Parsing happens in this same map, and each element's random seed comes from a stateful
    draw here rather than a zipped `Dataset.random`: every extra tf.data stage cost 0.1-0.3 ms
    per image on this 2-core machine. Stateless ops then make the crop, flip and RandAugment
    of an element independent draws from that one seed.

    Args:
      unpack: element -> (image bytes, 0-based int64 label).
      decode: (image bytes, seed) -> image.
    """
    def fn(*element):
        image_bytes, label = unpack(*element)
        key, image_bytes = counter.enter(
            image_bytes, tf.logical_and(label >= 0, label < num_classes))
        draw = tf.random.uniform([2], minval=0, maxval=_KEY_BUCKETS, dtype=tf.int64, seed=seed)
        image = decode(image_bytes, draw)
        return counter.leave(key, image), tf.cast(label, tf.int32)

    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    return ds.ignore_errors(log_warning=True)


def _source(data_cfg, *, path: str, what: str, training: bool, input_context):
    """The elements of a TFRecord glob or an image folder, and the function that turns one
    into (image bytes, 0-based label)."""
    if is_image_folder(path):
        paths, labels = list_image_files(path, class_names=data_cfg.class_names, what=what)
        ds = _image_files(paths, labels, training=training, input_context=input_context,
                          seed=data_cfg.seed)
        return ds, lambda image_bytes, label: (image_bytes, label)
    ds = _records(list_record_files(path, what=what), training=training,
                  input_context=input_context, seed=data_cfg.seed)

    def parse(serialized):
        feats = tf.io.parse_single_example(serialized, _FEATURES)
        return feats["image/encoded"], feats["image/class/label"] - data_cfg.label_offset

    return ds, parse


def build_dataset(data_cfg, *, split: str, batch_size: int, input_context=None,
                  repeat: bool = False, drop_remainder: bool = False,
                  ram_budget_mb: Optional[int] = None) -> tf.data.Dataset:
    """The input pipeline of one split.

    list files -> shard per input pipeline -> parallel interleaved reads -> (cache) -> shuffle ->
    (repeat) -> decode (training: Inception random crop decoding only the crop; eval: center
    crop) -> augment -> batch -> prefetch. Undecodable records are skipped and counted
    (`skipped_records`, `SkippedRecordsLogger`).

    Args:
      data_cfg: a `config.Data`.
      split: 'train' (data_cfg.train_data, shuffled and augmented) or 'eval'
        (data_cfg.eval_data, deterministic order and center crop).
      batch_size: the batch size this dataset yields: with `input_context`, the per-replica
        size (`input_context.get_per_replica_batch_size(global_batch_size)`), as
        `strategy.distribute_datasets_from_function` expects.
      input_context: a `tf.distribute.InputContext`, or None for one pipeline.
      repeat: repeat forever (then set steps_per_epoch) rather than one pass per iteration.
      drop_remainder: static batch shapes, e.g. for TPUs.
      ram_budget_mb: tf.data autotune's RAM budget (default: tf.data's own, half the RAM).

    Returns:
      Dataset of (images float32 [B, S, S, 3] in 0..255, labels int32 [B]).

    Raises:
      DataError: missing or empty path, a glob matching nothing, an unknown class folder.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    training = split == "train"
    path = data_cfg.train_data if training else data_cfg.eval_data
    what = "--train_data" if training else "--eval_data"
    if not path:
        raise DataError(f"{what} is empty: pass a TFRecord glob or an image folder")
    ds, unpack = _source(data_cfg, path=path, what=what, training=training,
                         input_context=input_context)
    if data_cfg.cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(data_cfg.shuffle_buffer, seed=data_cfg.seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = _decode_counted(ds, unpack=unpack, decode=_decoder(data_cfg, training=training),
                         counter=_counter(split, path), num_classes=len(data_cfg.class_names),
                         training=training, seed=data_cfg.seed)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=not training)
    if training:
        ds = ds.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options(training=training, ram_budget_mb=ram_budget_mb,
                                    sharded=input_context is not None))


def build_view_dataset(data_cfg, *, split: str, views: int, batch_size: int,
                       input_context=None) -> tf.data.Dataset:
    """Every image of a split once, in a fixed order, as `views` preprocessed views each.

    What the frozen phase's embedding cache is computed from: no shuffle and no repeat, the
    records in the order the training pipeline reads them before its shuffle (so a cache can
    replay that shuffle), sharded per input pipeline like `build_dataset`, skipped records
    counted the same way.

    Views: augment=none gives the evaluation crop; flip the evaluation crop and its mirror;
    randaugment `views` random training views (random crop, RandAugment, flip), each an
    independent draw from the element's seed. The eval split always gives the evaluation crop.

    Returns:
      Dataset of (images float32 [B, V, S, S, 3] in 0..255, labels int32 [B]).
    """
    training = split == "train"
    path = data_cfg.train_data if training else data_cfg.eval_data
    what = "--train_data" if training else "--eval_data"
    if not path:
        raise DataError(f"{what} is empty: pass a TFRecord glob or an image folder")
    ds, unpack = _source(data_cfg, path=path, what=what, training=False, input_context=input_context)
    decode = _view_decoder(data_cfg, views=views if training else 1, training=training)
    ds = _decode_counted(ds, unpack=unpack, decode=decode, counter=_counter(split, path),
                         num_classes=len(data_cfg.class_names), training=False, seed=data_cfg.seed)
    ds = ds.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(
        _options(training=False, ram_budget_mb=None, sharded=input_context is not None))


def view_count(augment: str, *, randaugment_views: int) -> int:
    """Views cached per training image: 1 without augmentation, 2 with flip, K with randaugment."""
    return {"none": 1, "flip": 2}.get(augment, randaugment_views)


def _view_decoder(data_cfg, *, views: int, training: bool):
    """(image bytes, seed) -> float32 [V, S, S, 3]: the views `build_view_dataset` describes."""
    size, mode = data_cfg.image_size, data_cfg.augment
    random_view = _decoder(data_cfg, training=True)

    def decode(image_bytes, seed):
        if training and mode == "randaugment":
            seeds = tf.random.experimental.stateless_split(seed, views)
            return tf.map_fn(lambda s: tf.cast(random_view(image_bytes, s), tf.float32), seeds,
                             fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        image = decode_for_eval(image_bytes, size)
        if training and mode == "flip":
            return tf.stack([image, tf.reverse(image, axis=[1])])
        return image[None]

    return decode


def _decoder(data_cfg, *, training: bool):
    """(image bytes, seed) -> one image: training gives uint8 (random crop, flip, RandAugment when
    asked; with augment=none the evaluation crop as float32), evaluation float32 through
    `decode_for_eval`, the serving preprocessing."""
    size, mode = data_cfg.image_size, data_cfg.augment

    def train(image_bytes, seed):
        if mode == "none":  # no augmentation at all: the evaluation crop (as the frozen-phase cache sees it)
            return decode_for_eval(image_bytes, size)
        crop_seed, flip_seed, augment_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3))
        image = decode_for_train(image_bytes, size, crop_seed)
        if mode == "randaugment":
            image = rand_augment(image, seed=augment_seed)
        return random_flip(_to_uint8(image), flip_seed)

    def evaluate(image_bytes, seed):
        del seed
        return decode_for_eval(image_bytes, size)

    return train if training else evaluate


def _to_float(images, labels):
    """uint8 training batch -> float32, once per batch."""
    return tf.cast(images, tf.float32), labels


def _options(*, training: bool, ram_budget_mb: Optional[int], sharded: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = not training
    options.autotune.enabled = True
    if ram_budget_mb:
        options.autotune.ram_budget = int(ram_budget_mb) * 1024 * 1024
    if sharded:  # sharded here, per input_context: a strategy must not shard again
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


# --------------------------------------------------------------------------- RandAugment
# RandAugment (Cubuk et al. 2019, arXiv:1909.13719): per image, `RANDAUGMENT_LAYERS` operations
# drawn uniformly from a fixed list, each at one global magnitude M out of 10. Written here on
# float 0..255 images with stateless seeds; the magnitude scales follow the paper's table.
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
