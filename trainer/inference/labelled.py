"""Labelled data as the evaluation reads it: batches of (id, label) and the raw encoded image.

A TFRecord glob (the data contract: `image/encoded`, `image/class/label`, optionally
`image/filename`) or a folder with one subfolder per class. The raw bytes go to the export's
serving signature, so what is measured is what will be served. Labels are checked against the
export's classes before the export loads: a typo fails in seconds. Multi-label records become
multi-hot rows.
"""
from __future__ import annotations

import os
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from trainer.data import discovery
from trainer.inference import prediction

_RECORD_FEATURES = dict(discovery.RECORD_FEATURES, **{  # the file name names a row of the report
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
})

# A batch of labelled inputs: ((example id, label or multi-hot row), bytes or None, why not).
LabelledBatch = List[Tuple[Tuple[str, Union[int, np.ndarray]], Optional[bytes], str]]


def _folder_batches(folder: str, *, class_names: Sequence[str], batch_size: int,
                    multi_label: bool, max_image_side: int = 0) -> Tuple[int, Iterator[LabelledBatch]]:
    if multi_label:
        raise discovery.DataError(f"--data {folder} is a folder of class folders (one label per image) but the "
                                  "export is multi-label: pass TFRecords with a repeated image/class/label")
    paths, labels = discovery.list_image_files(folder, class_names=class_names, what="--data")
    label_of = dict(zip(paths, labels))

    def batches():
        for batch in prediction.read_files(paths, batch_size=batch_size, max_image_side=max_image_side):
            yield [((path, label_of[path]), image, why) for path, image, why in batch]
    return len(paths), batches()


def _record_dataset(files: Sequence[str], *, batch_size: int) -> tf.data.Dataset:
    """(shard, index in shard, parsed features) batches, in file order: every example gets a
    stable id even when the records carry no image/filename."""
    def records(shard):
        return tf.data.TFRecordDataset(shard).enumerate().map(lambda i, r: (shard, i, r))
    ds = tf.data.Dataset.from_tensor_slices(list(files)).flat_map(records).batch(batch_size)
    def parse(shards, indices, records):
        feats = tf.io.parse_example(records, _RECORD_FEATURES)
        labels = feats[discovery.LABEL_KEY]
        feats[discovery.LABEL_KEY] = tf.sparse.to_dense(labels, default_value=discovery.LABEL_PAD)
        return shards, indices, feats
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(2)


def _target(values: np.ndarray, *, where: str, num_classes: int, label_offset: int,
            multi_label: bool) -> Union[int, np.ndarray]:
    """One record's label list -> its label (single-label) or multi-hot row; DataError when it
    does not fit the export."""
    labels = [int(v) - label_offset for v in values if v != discovery.LABEL_PAD]
    bad = [label for label in labels if not 0 <= label < num_classes]
    if bad:
        raise discovery.DataError(
            f"record {where} has label {bad[0] + label_offset}, outside [{label_offset}, "
            f"{num_classes + label_offset}) for the export's {num_classes} classes: "
            "pass the data the model was trained for, or --label_offset=1 for 1-based labels")
    if multi_label:
        row = np.zeros(num_classes, np.float32)
        row[labels] = 1.0
        return row
    if len(labels) != 1:
        raise discovery.DataError(f"record {where} has {len(labels)} labels but the export is single-label: "
                                  "evaluate a multi-label export on multi-label data")
    return labels[0]


def _record_batches(path: str, *, class_names: Sequence[str], label_offset: int,
                    batch_size: int, multi_label: bool, known_count: Optional[int]) -> Tuple[int, Iterator[LabelledBatch]]:
    files = discovery.list_record_files(path, what="--data")
    if known_count is None:
        discovery.check_labels(path, class_names=class_names, label_offset=label_offset)
    total = known_count or discovery.count_examples(path)

    def batches():
        for shards, indices, feats in _record_dataset(files, batch_size=batch_size).as_numpy_iterator():
            batch = []
            for shard, index, image, values, name in zip(shards, indices, feats["image/encoded"],
                                                         feats[discovery.LABEL_KEY], feats["image/filename"]):
                where = f"{os.path.basename(shard.decode())}#{index}"
                label = _target(values, where=where, num_classes=len(class_names), label_offset=label_offset,
                                multi_label=multi_label)
                ident = name.decode("utf-8", "replace") or where
                batch.append(((ident, label), image or None, "" if image else "no image/encoded"))
            yield batch
    return total, batches()


def labelled_batches(path: str, *, class_names: Sequence[str], label_offset: int = 0,
                     batch_size: int = prediction.DEFAULT_BATCH_SIZE,
                     multi_label: bool = False, known_count: Optional[int] = None,
                     max_image_side: int = 0) -> Tuple[int, Iterator[LabelledBatch]]:
    """The example count and the batches of a TFRecord glob or a class-folder tree; labels are
    integers, or multi-hot rows with `multi_label`. `known_count`: the records' count from a
    check already made (a training run's data inspection), so they are not scanned again
    before the pass (each record's label is still checked as it is read). A folder's photos over
    `max_image_side` are downscaled as prepare stores records (records are read as stored).

    Raises:
      DataError: a path naming nothing, a class folder or label the export does not know.
    """
    if not path:
        raise discovery.DataError("--data is empty: pass a TFRecord glob (DIR/validation-*) or a folder of class folders")
    if discovery.is_image_folder(path):
        return _folder_batches(path, class_names=class_names, batch_size=batch_size, multi_label=multi_label,
                               max_image_side=max_image_side)
    return _record_batches(path, class_names=class_names, label_offset=label_offset, batch_size=batch_size,
                           multi_label=multi_label, known_count=known_count)
