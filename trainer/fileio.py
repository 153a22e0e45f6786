"""File I/O that works the same on local disk and gs://, through tf.io.gfile.

Every output the trainer writes goes through here so that it is written to a temporary name and
moved into place when complete: a crash never leaves half a file behind.
"""
from __future__ import annotations

import json
import os
import tempfile
import uuid

import tensorflow as tf


def is_gcs(path: str) -> bool:
    return str(path).startswith("gs://")


def join(*parts: str) -> str:
    return os.path.join(*[str(p) for p in parts])


def exists(path: str) -> bool:
    return tf.io.gfile.exists(path)


def makedirs(path: str) -> None:
    tf.io.gfile.makedirs(path)


def read_text(path: str) -> str:
    with tf.io.gfile.GFile(path, "r") as f:
        return f.read()


def read_json(path: str):
    return json.loads(read_text(path))


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary sibling renamed into place."""
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def write_json_atomic(path: str, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def local_copy(path: str, suffix: str = "") -> str:
    """A local path holding the file at `path`: itself if local, else a downloaded temp copy."""
    if not is_gcs(path):
        return path
    fd, local = tempfile.mkstemp(suffix=suffix or os.path.splitext(path)[1])
    os.close(fd)
    tf.io.gfile.copy(path, local, overwrite=True)
    return local
