"""Skipped records: counting the records the input pipelines drop, and logging the count.

A record whose image cannot be decoded (or whose label is outside [0, C)) is skipped, never
fatal: a 10-hour job must not die on one bad JPEG. Skipping keeps the job alive; counting keeps
it honest. Each data path has its own `SkipCounter`, kept in a `SkipCounters` registry and
shared by every pipeline built over that path with it (both phases, every input pipeline), so a
bad record met again counts once. A training run owns its registry (train.run makes one and
hands it to its pipelines and its `SkippedRecordsLogger`), so two runs in one process count
apart; a pipeline built without one (evaluation helpers, tools) uses the process's
`DEFAULT_COUNTERS`. `skipped_records` reads one path's count, or a split's total.
"""
from __future__ import annotations

import threading
from typing import Dict, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf
import tf_keras as keras


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


class SkipCounters:
    """The skip counters of one owner (a training run): one `SkipCounter` per (split, path)."""

    def __init__(self):
        self._counters: Dict[Tuple[str, str], SkipCounter] = {}
        self._lock = threading.Lock()

    def counter_for(self, split: str, path: str) -> SkipCounter:
        """The one counter of data path `path` read as `split`, made on first use.

        One per path and split rather than one per pipeline: training builds a split's pipeline
        once per phase and per input pipeline, and a record skipped in each must count once.
        """
        with self._lock:
            if (split, path) not in self._counters:
                self._counters[(split, path)] = SkipCounter()
            return self._counters[(split, path)]

    def skipped(self, split: str = "train", *, path: Optional[str] = None) -> int:
        """Distinct records of `split` skipped so far (undecodable image or label outside
        [0, C)): those of data path `path`, or summed over every path when None."""
        with self._lock:
            counters = [c for (s, p), c in self._counters.items() if s == split and path in (None, p)]
        return sum(c.count() for c in counters)


# For pipelines built without a registry (evaluation helpers, tools, tests of the reader).
DEFAULT_COUNTERS = SkipCounters()


def counter_for(split: str, path: str, counters: Optional[SkipCounters] = None) -> SkipCounter:
    """`counters`' (default: DEFAULT_COUNTERS') counter of `path` read as `split`."""
    return (counters or DEFAULT_COUNTERS).counter_for(split, path)


def skipped_records(split: str = "train", *, path: Optional[str] = None,
                    counters: Optional[SkipCounters] = None) -> int:
    """`counters`' (default: DEFAULT_COUNTERS') skipped records of `split` (of `path`)."""
    return (counters or DEFAULT_COUNTERS).skipped(split, path=path)


class SkippedRecordsLogger(keras.callbacks.Callback):
    """Logs at every epoch end how many records the input pipelines skipped.

    Skipping keeps a long job alive through a few bad images; logging the count keeps it honest.
    A warning when the count grew during the epoch, an info line when it did not, and no line
    while nothing was ever skipped.
    """

    def __init__(self, splits: Sequence[str] = ("train", "eval"), *, counters: Optional[SkipCounters] = None):
        super().__init__()
        self._splits, self._counters = tuple(splits), counters
        self._last = {s: 0 for s in self._splits}

    def on_epoch_end(self, epoch, logs=None):
        for split in self._splits:
            total = skipped_records(split, counters=self._counters)
            new, self._last[split] = total - self._last[split], total
            if not total:
                continue  # nothing skipped: no line
            log = logging.warning if new else logging.info
            log("epoch %d: %s input skipped %d undecodable or mislabelled record(s) so far "
                "(%d new this epoch)", epoch + 1, split, total, new)


