"""File I/O that works the same on local disk and gs://, through tf.io.gfile.

Every small output the trainer writes (config, history, state, plots) goes through here so that
a reader sees the old file or the new one, never half a file: on local disk it is written to a
temporary sibling and renamed into place; on gs:// it is uploaded in place, because a Cloud
Storage upload is already atomic (the new object appears only once the upload completes) and a
rename there is a copy plus a delete — twice the requests, and a stray temporary object if the
job dies in between. See docs/gcs.md.
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


def read_text(path: str) -> str:
    with tf.io.gfile.GFile(path, "r") as f:
        return f.read()


def read_json(path: str):
    return json.loads(read_text(path))


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` atomically (see the module docstring)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes `data` to `path` atomically: in place on gs://, else through a renamed sibling."""
    if is_gcs(path):
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)
        return
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(data)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def write_json_atomic(path: str, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def local_copy(path: str, suffix: str = "") -> str:
    """A local path holding the file at `path`: itself if local, else a downloaded temp copy.

    For readers that need a real file (h5py for Keras HDF5 weights). The copy is left in the
    temp folder; it is small next to what a training run writes.
    """
    if not is_gcs(path):
        return path
    fd, local = tempfile.mkstemp(suffix=suffix or os.path.splitext(path)[1])
    os.close(fd)
    tf.io.gfile.copy(path, local, overwrite=True)
    return local
