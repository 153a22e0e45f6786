"""Locating data: what a data path names, its class names, its size, and whether its labels fit.

A data path is a TFRecord glob (shards named `{split}-{i:05d}-of-{n:05d}.tfrecord` with
Google's ImageNet feature keys, `labels.txt` and `dataset.json` beside them: docs/data.md) or
an image folder with one subfolder per class. Everything here runs once, at start-up, before
any pipeline is built, so that a wrong path or a mismatched labels.txt ends in one line that
names the file and the fix (`DataError`) instead of a crash hours into training.
"""
from __future__ import annotations

import difflib
import json
import os
import dataclasses
from typing import List, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf

from effnet_common import errors, fileio, flagutil

LABELS_FILE = fileio.LABELS_FILE
INFO_FILE = "dataset.json"

# The record keys the reader parses (the data contract); the label check also reads the names.
# `image/class/label` is a list: one value in a single-label record, zero or more (sorted class
# indices, their names in `image/class/text` in the same order) in a multi-label one.
LABEL_KEY = "image/class/label"
RECORD_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string, default_value=""),
    LABEL_KEY: tf.io.VarLenFeature(tf.int64),
}
_CHECK_FEATURES = dict(RECORD_FEATURES, **{
    "image/class/text": tf.io.VarLenFeature(tf.string),
    "image/class/synset": tf.io.VarLenFeature(tf.string),
})
# Pads the dense label lists of a batch (below any real label, whatever the offset).
LABEL_PAD = -(2 ** 62)


class DataError(errors.UserError):
    """A data problem the user must fix; the message is one line: what, where, how to fix."""


def is_absolute(path: str) -> bool:
    """True for an absolute local path or a URL such as gs://bucket/x."""
    return "://" in path or os.path.isabs(path)


def is_image_folder(path: str) -> bool:
    """True when `path` is a folder (not a glob) holding class subfolders."""
    return not fileio.has_glob(path) and tf.io.gfile.isdir(path) and bool(class_folders(path))


def class_folders(folder: str) -> List[str]:
    """The class subfolders of `folder` as named on disk (every visible subfolder, even an
    empty one), sorted; compare them to labels through `fileio.nfc`."""
    names = []
    for name in tf.io.gfile.listdir(folder):
        name = name.rstrip("/")
        if not fileio.is_hidden(name) and tf.io.gfile.isdir(os.path.join(folder, name)):
            names.append(name)
    return sorted(names)


def _shard_dir(path: str) -> str:
    return path if (not fileio.has_glob(path) and tf.io.gfile.isdir(path)) else os.path.dirname(path)


def list_record_files(path: str, *, what: str = "data path") -> List[str]:
    """The sorted TFRecord files a glob names; DataError when it names none.

    Args:
      path: a TFRecord glob, or a single file.
      what: how the user named this path (a flag), for the error message.
    """
    if not path:
        raise DataError(f"{what} is empty: pass a TFRecord glob such as DIR/train-*.tfrecord "
                        "or an image folder with one subfolder per class")
    if not fileio.has_glob(path):
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

    Every class subfolder must be one of `class_names` (compared in Unicode NFC, so a folder
    macOS named in NFD matches its label), so a label always means the same class as in
    labels.txt. The files are `fileio.list_folder`'s images, the rule every command follows;
    every other file is skipped with a warning. A file whose content fails to decode is
    skipped and counted by the reader.
    """
    index = {fileio.nfc(name): i for i, name in enumerate(class_names)}
    listing = fileio.list_folder(folder)
    by_class, outside = _by_class_folder(folder, listing.images)
    paths, labels = [], []
    for name in class_folders(folder):
        if fileio.nfc(name) not in index:
            raise DataError(_unknown_class_message(name, folder=folder, class_names=class_names))
        found = by_class.get(name, [])
        paths += found
        labels += [index[fileio.nfc(name)]] * len(found)
    fileio.warn_skipped([*listing.skipped, *listing.not_images(), *outside], where=folder)
    if not paths:
        raise DataError(f"{what} {folder} holds no image files ({fileio.IMAGE_EXTENSIONS_TEXT}) in "
                        "its class subfolders: add images, or pass a TFRecord glob")
    return paths, labels


def _by_class_folder(folder: str, files: Sequence[str]) -> Tuple[dict, List[Tuple[str, str]]]:
    """{class folder name on disk: its files}, and the files directly inside `folder` (skipped)."""
    by_class, outside = {}, []
    for path in files:
        inner = str(path)[len(str(folder)):].strip("/")
        if "/" in inner:
            by_class.setdefault(inner.split("/", 1)[0], []).append(path)
        else:
            outside.append((path, "not inside a class folder"))
    return by_class, outside


def _unknown_class_message(name: str, *, folder: str, class_names: Sequence[str]) -> str:
    close = difflib.get_close_matches(fileio.nfc(name), [fileio.nfc(n) for n in class_names], n=1)
    hint = f"; the closest label is {fileio.show_name(close[0])}" if close else ""
    return (f"class folder {fileio.show_name(name)} in {folder} is not in the labels ({len(class_names)} "
            f"classes{hint}): add it to labels.txt, or rename or remove the folder")


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
    if not fileio.has_glob(train_data) and tf.io.gfile.isdir(train_data):
        beside = os.path.join(train_data, LABELS_FILE)
        names = sorted({fileio.nfc(name) for name in class_folders(train_data)})
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


def test_split_beside(train_data: str, *, eval_data: Optional[str] = None) -> Optional[str]:
    """The glob of the `test-*` shards beside prepare's training shards when their dataset.json
    lists a test split (prepare --test_fraction, or an import file's ML_USE test), else None.

    The trainer's default --test_data: a split prepare held out is reported without a flag. Not
    when --train_data or --eval_data already reads one of those shards: a figure on images the
    run trained on or chose with would not be held out.
    """
    info = read_dataset_info(train_data)
    names = (((info or {}).get("splits") or {}).get("test") or {}).get("files") or []
    if not names:
        return None
    folder = _shard_dir(train_data)
    norm = lambda p: p if "://" in p else os.path.normpath(p)
    used = {norm(f) for path in filter(None, (train_data, eval_data)) for f in tf.io.gfile.glob(path)}
    if used & {norm(os.path.join(folder, name)) for name in names}:
        return None
    return os.path.join(folder, "test-*.tfrecord")


def _info_split(path: str, files: Sequence[str]) -> Optional[dict]:
    """The dataset.json entry of the split whose shards are exactly `files`, else None."""
    info = read_dataset_info(path)
    if not info:
        return None
    names = sorted(os.path.basename(f) for f in files)
    for split in (info.get("splits") or {}).values():
        if sorted(split.get("files", [])) == names:
            return split
    return None


def _info_count(path: str, files: Sequence[str]) -> Optional[int]:
    """The dataset.json count for the split whose shards are exactly `files`, else None."""
    split = _info_split(path, files)
    return None if split is None else int(split["num_examples"])


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
        n = len(list_image_files(path, class_names=class_folders(path))[0])
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
    culprit, message = files[0], flagutil.one_line(error, limit=300)
    if len(files) > 1:
        for f in files:
            try:
                tf.data.TFRecordDataset(f).reduce(0, lambda count, _: count + 1)
            except tf.errors.OpError as e:
                culprit, message = f, flagutil.one_line(e, limit=300)
                break
    return DataError(f"cannot read the records of {culprit} ({message}): the shard is corrupt or "
                     "truncated; rerun trainer.prepare, or remove it from the glob")


_LABEL_SAMPLE = 2000  # records a label check reads where the counts come from elsewhere


def check_labels(path: str, *, class_names: Sequence[str], label_offset: int = 0,
                 max_records: int = _LABEL_SAMPLE) -> bool:
    """Fails early, naming the file, when records disagree with the class names.

    Scans up to `max_records` records taken round-robin from every shard: each label (after
    `label_offset`) must be in [0, C), and `image/class/text` (or `image/class/synset`), when
    present, must name the classes labels.txt gives those labels. Better a one-line error at
    start-up than a crash (or silent nonsense) hours into training.

    Returns:
      Whether a scanned record holds other than exactly one label (multi-label data).

    Raises:
      DataError: naming the file, the record's label and the fix.
    """
    if is_image_folder(path):
        list_image_files(path, class_names=class_names)  # raises on unknown class folders
        return False
    return _scan_labels(list_record_files(path), class_names=class_names, label_offset=label_offset,
                        limit=max_records).multi_label


def _scan_labels(files: Sequence[str], *, class_names: Sequence[str], label_offset: int,
                 limit: Optional[int]) -> "SplitFacts":
    """Checks each record read (up to `limit`, round-robin over the shards) with `_check_record`,
    counting them and their classes."""
    n, multi, counts = 0, False, [0] * len(class_names)
    ds = _labelled_records(files, features=_CHECK_FEATURES, batch_size=256, limit=limit)
    try:
        for fnames, feats in ds.as_numpy_iterator():
            for i, fname in enumerate(fnames):
                row = {k: [v for v in column[i] if not _is_pad(v)] for k, column in feats.items()}
                multi |= len(row[LABEL_KEY]) != 1
                _check_record(fname.decode(), row, class_names=class_names, label_offset=label_offset)
                for value in row[LABEL_KEY]:
                    counts[int(value) - label_offset] += 1
                n += 1
    except tf.errors.OpError as e:
        raise _unreadable(files, e) from None
    return SplitFacts(n, counts, multi)


def _is_pad(value) -> bool:
    return (isinstance(value, bytes) and value == b"") or (not isinstance(value, bytes) and value == LABEL_PAD)


def _labelled_records(files: Sequence[str], *, features: dict, batch_size: int,
                      limit: Optional[int] = None) -> tf.data.Dataset:
    """Batches of (file names, features) of every record, round-robin over the shards, the
    list-valued features dense: label lists padded with LABEL_PAD, text lists with b""."""
    files_ds = tf.data.Dataset.from_tensor_slices(list(files))
    ds = files_ds.interleave(
        lambda f: tf.data.TFRecordDataset(f).map(lambda r: (f, r)),
        cycle_length=min(len(files), 64), block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    pads = {k: LABEL_PAD if v.dtype == tf.int64 else b"" for k, v in features.items()
            if isinstance(v, tf.io.VarLenFeature)}

    def parse(f, r):
        feats = tf.io.parse_single_example(r, features)
        return f, {k: tf.sparse.to_dense(feats[k], default_value=pad) for k, pad in pads.items()}
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    if limit is not None:
        ds = ds.take(limit)
    return ds.padded_batch(batch_size, padding_values=(b"", pads))


def _check_record(where: str, feats: dict, *, class_names: Sequence[str], label_offset: int):
    n = len(class_names)
    labels = [int(v) - label_offset for v in feats[LABEL_KEY]]
    for label in labels:
        if not 0 <= label < n:
            hint = ", or --label_offset=1 for 1-based labels (Google's ImageNet shards)" \
                if label_offset == 0 and label == n else ""
            raise DataError(
                f"label {label + label_offset} in {where} is outside [{label_offset}, "
                f"{n + label_offset}) for the {n} classes of labels.txt: pass the labels.txt written "
                f"with these shards (--labels){hint}")
    for key in ("image/class/text", "image/class/synset"):
        names = [t.decode() for t in feats.get(key, [])]
        wrong = [(label, name) for label, name in zip(labels, names)
                 if fileio.nfc(class_names[label]) != fileio.nfc(name)]
        if names and len(names) == len(labels) and wrong:
            label, said = wrong[0]
            raise DataError(
                f"label {label} in {where} says {fileio.show_name(said)} but labels.txt line {label + 1} "
                f"is {fileio.show_name(class_names[label])}: pass the labels.txt written with these "
                "shards (--labels) or rerun trainer.prepare")


@dataclasses.dataclass(frozen=True)
class SplitFacts:
    """What one read of a split says: its example count, examples per class (None when unknown:
    large shards without dataset.json), and whether a record holds other than one label."""
    num_examples: int
    class_counts: Optional[List[int]]
    multi_label: bool


def inspect_split(path: str, *, class_names: Sequence[str], label_offset: int = 0) -> SplitFacts:
    """`check_labels`, `count_examples` and `class_counts` of one split in one read of it.

    dataset.json's counts where it describes exactly the matched shards (then only the label
    check's sample is read); else, up to `_EXACT_COUNT_BYTES` of shards, one pass that counts,
    counts per class and checks every record; beyond that the sampled label check and an
    estimated count, as `count_examples` does.

    Raises:
      DataError: as `check_labels` and `count_examples` do.
    """
    if is_image_folder(path):
        _, labels = list_image_files(path, class_names=class_names)
        if not labels:
            raise DataError(f"{path} holds no examples: check the path or rerun trainer.prepare")
        return SplitFacts(len(labels), [labels.count(i) for i in range(len(class_names))], False)
    files = list_record_files(path)
    split = _info_split(path, files)
    if split is not None:
        multi = _scan_labels(files, class_names=class_names, label_offset=label_offset, limit=_LABEL_SAMPLE).multi_label
        per_class = split.get("per_class")
        counts = [int(per_class.get(name, 0)) for name in class_names] if isinstance(per_class, dict) else None
        facts = SplitFacts(int(split["num_examples"]), counts, multi)
    elif sum(tf.io.gfile.stat(f).length for f in files) > _EXACT_COUNT_BYTES:
        multi = _scan_labels(files, class_names=class_names, label_offset=label_offset, limit=_LABEL_SAMPLE).multi_label
        facts = SplitFacts(_count_records(files), None, multi)
    else:
        facts = _scan_labels(files, class_names=class_names, label_offset=label_offset, limit=None)
    if facts.num_examples == 0:
        raise DataError(f"{path} holds no examples: check the path or rerun trainer.prepare")
    return facts


def dataset_multi_label(path: str) -> Optional[bool]:
    """What dataset.json beside the shards says of multi-label (trainer.prepare writes it), or None."""
    info = read_dataset_info(path)
    if not info or "multi_label" not in info:
        return None
    return bool(info["multi_label"])


def class_counts(path: str, *, class_names: Sequence[str], label_offset: int = 0) -> Optional[List[int]]:
    """Examples holding each class (label order) behind a data path, or None when unknown.

    From dataset.json when it describes exactly the matched shards, the file counts of an image
    folder's class subfolders, or a scan of the records' labels (at most `_EXACT_COUNT_BYTES` of
    shards; larger data without dataset.json is not read through at start-up).
    """
    if is_image_folder(path):
        _, labels = list_image_files(path, class_names=class_names)
        return [labels.count(i) for i in range(len(class_names))]
    files = list_record_files(path)
    split = _info_split(path, files)
    if split is not None and isinstance(split.get("per_class"), dict):
        return [int(split["per_class"].get(name, 0)) for name in class_names]
    if sum(tf.io.gfile.stat(f).length for f in files) > _EXACT_COUNT_BYTES:
        return None
    counts = [0] * len(class_names)
    ds = _labelled_records(files, features={LABEL_KEY: RECORD_FEATURES[LABEL_KEY]}, batch_size=1024)
    try:
        for _, feats in ds.as_numpy_iterator():
            for value in feats[LABEL_KEY].ravel():
                label = int(value) - label_offset
                if value != LABEL_PAD and 0 <= label < len(counts):
                    counts[label] += 1
    except tf.errors.OpError as e:
        raise _unreadable(files, e) from None
    return counts


def check_class_coverage(counts: Optional[Sequence[int]], *, class_names: Sequence[str], path: str,
                         what: str) -> List[str]:
    """The classes of labels.txt without an example at `path`.

    Raises:
      DataError: for the training data (`what` is --train_data): a class no image teaches would
        still get an output, and the export would offer it.
    """
    if counts is None:
        return []
    missing = [name for name, n in zip(class_names, counts) if n == 0]
    if missing and what == "--train_data":
        raise DataError(f"class {missing[0]!r} has no image in the training split ({what} {path}; "
                        f"{len(missing)} such class(es)): add images of it, or remove it from labels.txt "
                        "(or its empty class folder)")
    return missing
