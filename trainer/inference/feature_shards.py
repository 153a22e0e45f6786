"""Features as TFRecord shards: what `trainer.predict --runner=<Beam runner> --features_output=PREFIX`
writes, and how to read it back (numpy, no Beam needed).

Each record is a tf.train.Example with `path` (bytes: the image's path, as in the CSV's path
column) and `features` (float list: the export's `features` signature for that image), in files
`PREFIX-00000-of-0000N.tfrecord`. The pipeline's shards come in no particular order: join them to
the CSV on the path.

    from trainer.inference import feature_shards
    paths, features = feature_shards.read_features("gs://bucket/run/features")  # [N], [N, D] float32
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import tensorflow as tf

PATH_KEY = "path"
FEATURES_KEY = "features"
SUFFIX = ".tfrecord"


def feature_record(path: str, vector: np.ndarray) -> bytes:
    """One image's features as a serialized tf.train.Example (`path`, `features`)."""
    return tf.train.Example(features=tf.train.Features(feature={
        PATH_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.encode()])),
        FEATURES_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(vector, np.float32).ravel())),
    })).SerializeToString()


def shard_pattern(prefix: str) -> str:
    """The files a prefix names: PREFIX-NNNNN-of-NNNNN.tfrecord."""
    return f"{prefix}-?????-of-?????{SUFFIX}"


def read_features(prefix: str) -> Tuple[List[str], np.ndarray]:
    """(paths, [N, D] float32) of every shard under `prefix`, in file order.

    Raises:
      FileNotFoundError: no shard matches, so a typo is not an empty result.
    """
    files = sorted(tf.io.gfile.glob(shard_pattern(prefix)))
    if not files:
        raise FileNotFoundError(f"no feature shard matches {shard_pattern(prefix)}: pass the --features_output "
                                "prefix the pipeline was given")
    paths, rows = [], []
    for record in tf.data.TFRecordDataset(files):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        paths.append(feature[PATH_KEY].bytes_list.value[0].decode())
        rows.append(np.array(feature[FEATURES_KEY].float_list.value, np.float32))
    return paths, (np.stack(rows) if rows else np.zeros((0, 0), np.float32))
