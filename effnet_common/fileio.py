"""File I/O that works the same on local disk and gs://, through tf.io.gfile.

Every small output the trainer writes (config, history, state, plots) goes through here so that
a reader sees the old file or the new one, never half a file: on local disk it is written to a
temporary sibling and renamed into place; on gs:// it is uploaded in place, because a Cloud
Storage upload is already atomic (the new object appears only once the upload completes) and a
rename there is a copy plus a delete — twice the requests, and a stray temporary object if the
job dies in between. See docs/gcs.md.

It also owns how a folder is read and published: which files a folder holds (`list_files`,
`list_images`: hidden files and folders left out, sorted), what counts as a glob, and
`move_folder`, which puts a finished folder (an export, a set of shards) into place so that a
reader never meets half of it.
"""
from __future__ import annotations

import json
import os
import tempfile
import uuid
from typing import List, Optional, Sequence

import tensorflow as tf

# The formats tf.io.decode_image reads (first frame of a GIF), by file name; the content is
# what decides in the end (trainer.prepare sniffs it, the readers decode it).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
_GLOB_CHARS = "*?["


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


def has_glob(path: str) -> bool:
    """True when `path` is a pattern for tf.io.gfile.glob rather than one file or folder."""
    return any(c in path for c in _GLOB_CHARS)


def is_hidden(name: str) -> bool:
    """A dotfile or dot-folder (.DS_Store, .ipynb_checkpoints, a .tmp-* sibling): never data."""
    return os.path.basename(str(name).rstrip("/")).startswith(".")


def list_files(folder: str, *, extensions: Optional[Sequence[str]] = None) -> List[str]:
    """Every file under `folder` (recursively, local or gs://), sorted by path.

    Hidden files and anything inside a hidden folder are left out, so the reader, prepare,
    predict and the serving client all see the same files of a folder.

    Args:
      folder: the folder to walk.
      extensions: lower-case name endings to keep (e.g. `IMAGE_EXTENSIONS`); None keeps all.
    """
    found = []
    for root, _, files in tf.io.gfile.walk(folder):
        inner = str(root)[len(str(folder)):].strip("/")
        if inner and any(part.startswith(".") for part in inner.split("/")):
            continue
        found += [join(root, f) for f in files if not is_hidden(f)
                  and (extensions is None or f.lower().endswith(tuple(extensions)))]
    return sorted(found)


def list_images(folder: str) -> List[str]:
    """The image files under `folder` by name (`list_files` with `IMAGE_EXTENSIONS`)."""
    return list_files(folder, extensions=IMAGE_EXTENSIONS)


def move_folder(src: str, dst: str, *, first: str = "", last: str = "") -> None:
    """Moves the finished folder `src` to the new path `dst`.

    Locally one rename, atomic. On gs:// a rename copies object by object, so a reader polling
    `dst` can meet part of it: the file named `last` (e.g. saved_model.pb, dataset.json) moves
    last, so its presence means complete, and the one named `first` moves first, so its absence
    means incomplete. `src` is gone afterwards.
    """
    if not is_gcs(dst):
        tf.io.gfile.rename(src, dst, overwrite=False)
        return
    files = _all_files(src)
    files.sort(key=lambda p: (os.path.basename(p) != first, os.path.basename(p) == last))
    tf.io.gfile.makedirs(dst)
    for path in files:
        target = dst + path[len(src):]
        tf.io.gfile.makedirs(os.path.dirname(target))
        tf.io.gfile.rename(path, target, overwrite=False)
    try:  # what is left: folder markers (GCS has no folders; once empty, `src` may already be gone)
        tf.io.gfile.rmtree(src)
    except tf.errors.NotFoundError:
        pass


def _all_files(folder: str) -> List[str]:
    """Every file under `folder`, hidden ones included: a move must leave nothing behind."""
    return sorted(join(root, f) for root, _, files in tf.io.gfile.walk(folder) for f in files)
