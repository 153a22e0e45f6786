"""File I/O that works the same on local disk and gs://, through tf.io.gfile.

Every small output the trainer writes (config, history, state, plots) goes through here so that
a reader sees the old file or the new one, never half a file: on local disk it is written to a
temporary sibling and renamed into place; on gs:// it is uploaded in place, because a Cloud
Storage upload is already atomic (the new object appears only once the upload completes) and a
rename there is a copy plus a delete — twice the requests, and a stray temporary object if the
job dies in between. See docs/gcs.md.

It also owns how a folder is read and published: which files a folder holds (`list_folder`,
the one listing rule every command follows: docs/data.md "Listing a folder"), how class names
compare (`nfc`, `show_name`), what counts as a glob, and `move_folder`, which puts a finished
folder (an export, a set of shards) into place so that a reader never meets half of it.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import stat
import tempfile
import unicodedata
import uuid
from typing import List, Sequence, Tuple

from absl import logging
import tensorflow as tf
import csv
import io

# The formats tf.io.decode_image reads (first frame of a GIF), by file name: a folder is read
# for these names; the content decides in the end (trainer.prepare sniffs it, readers decode it).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
IMAGE_EXTENSIONS_TEXT = " ".join(IMAGE_EXTENSIONS)
IMAGE_FORMATS_TEXT = "JPEG, PNG, GIF, BMP or WebP"
# Skipped files logged one line each, per listing, before a count says how many more.
WARN_LIMIT = 20
_GLOB_CHARS = "*?["

# A list of class names, one a line, in label order: prepare writes it beside the shards, the export
# under assets/, the .tflite export beside its models (the one name of that file).
LABELS_FILE = "labels.txt"


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


def nfc(name: str) -> str:
    """`name` in Unicode NFC: macOS writes folder names decomposed (NFD: 'e' + U+0301), most
    editors and CSVs composed (NFC: U+00E9); class names are compared, and written, in NFC."""
    return unicodedata.normalize("NFC", name)


def show_name(name: str) -> str:
    """`name` quoted for an error, with escapes when it is not ASCII, so that two names that
    differ only in invisible or look-alike characters do not print the same."""
    shown, escaped = repr(name), ascii(name)
    return shown if shown == escaped else f"{shown} (escaped: {escaped})"


def is_image_name(path: str) -> bool:
    """True when the name ends in an image extension (any case)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


@dataclasses.dataclass(frozen=True)
class Listing:
    """What a folder holds, as every command reads it (`list_folder`).

    Attributes:
      images: the files named as images (`IMAGE_EXTENSIONS`), sorted.
      others: the other visible files, sorted: skipped by the readers, checked by content by
        trainer.prepare (which decodes every file anyway).
      skipped: (path, reason) of what no command reads: a second path to a file or folder
        already listed (a link cycle, two links to one file), an unreadable entry.
    """
    images: Tuple[str, ...]
    others: Tuple[str, ...]
    skipped: Tuple[Tuple[str, str], ...]

    def not_images(self) -> List[Tuple[str, str]]:
        """`others` as (path, reason), for the readers that skip them by name."""
        return [(p, f"not an image name ({os.path.splitext(p)[1] or 'no extension'}): folders are "
                    f"read for {IMAGE_EXTENSIONS_TEXT} files; rename it if it is an image")
                for p in self.others]


def list_folder(folder: str) -> Listing:
    """Every visible file under `folder` (recursively, local or gs://): the one listing rule.

    Hidden files and anything inside a hidden folder (a name starting with '.') are left out.
    Local folders are walked here, following symbolic links but never around a cycle: each
    folder and each file (by device and inode) is listed once, at the first path a breadth-first
    walk meets (the shallowest, then alphabetical); tf.io.gfile.walk would follow a link back to
    a parent some 40 levels deep. gs:// has no links: tf.io.gfile.walk lists it.
    """
    if "://" in str(folder):
        files, skipped = _walk_remote(folder), []
    else:
        files, skipped = _walk_local(folder)
    files.sort()
    return Listing(images=tuple(f for f in files if is_image_name(f)),
                   others=tuple(f for f in files if not is_image_name(f)), skipped=tuple(skipped))


def list_images(folder: str) -> List[str]:
    """The images of `list_folder`, every other file reported (`warn_skipped`): what predict,
    the serving client and the trainer's reader take from a folder."""
    listing = list_folder(folder)
    warn_skipped([*listing.skipped, *listing.not_images()], where=folder)
    return list(listing.images)


_warned = set()


def warn_skipped(skipped: Sequence[Tuple[str, str]], *, where: str) -> None:
    """One warning a skipped file (`skipped %s: %s`, the line prepare logs), at most
    `WARN_LIMIT` per listing, then a count; each once per process, as a command lists its
    folders several times at start-up."""
    fresh = [item for item in skipped if item not in _warned]
    _warned.update(fresh)
    for path, reason in fresh[:WARN_LIMIT]:
        logging.warning("skipped %s: %s", path, reason)
    if len(fresh) > WARN_LIMIT:
        logging.warning("skipped %d more file(s) under %s (%d in all)", len(fresh) - WARN_LIMIT, where, len(fresh))


def _walk_remote(folder: str) -> List[str]:
    found = []
    for root, _, files in tf.io.gfile.walk(folder):
        inner = str(root)[len(str(folder)):].strip("/")
        if inner and any(part.startswith(".") for part in inner.split("/")):
            continue
        found += [join(root, f) for f in files if not is_hidden(f)]
    return found


def _ancestors(folder: str) -> dict:
    """{(st_dev, st_ino): path} of `folder` and every folder above it: a link to one of them
    is a cycle (it holds the link itself), never read."""
    found, path = {}, os.path.realpath(folder)
    while True:
        info = os.stat(path)
        found.setdefault((info.st_dev, info.st_ino), path)
        if os.path.dirname(path) == path:
            return found
        path = os.path.dirname(path)


def _walk_local(folder: str) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Breadth-first, links followed, each (st_dev, st_ino) listed once: (files, skipped)."""
    first = _ancestors(folder)
    info = os.stat(folder)
    first[(info.st_dev, info.st_ino)] = str(folder)
    files, skipped, queue = [], [], collections.deque([str(folder)])
    while queue:
        current = queue.popleft()
        try:
            names = sorted(n for n in os.listdir(current) if not is_hidden(n))
        except OSError as e:
            skipped.append((current, f"unreadable folder ({e.strerror}): check its permissions"))
            continue
        for path in (os.path.join(current, n) for n in names):
            try:
                info = os.stat(path)  # follows links
            except OSError as e:
                skipped.append((path, f"unreadable ({e.strerror}): a broken link? fix or remove it"))
                continue
            seen = first.setdefault((info.st_dev, info.st_ino), path)
            is_dir = stat.S_ISDIR(info.st_mode)
            if seen != path:
                skipped.append((path, f"the same {'folder' if is_dir else 'file'} as {seen}: a link "
                                      "is read once, never around a cycle"))
            elif is_dir:
                queue.append(path)
            elif stat.S_ISREG(info.st_mode):
                files.append(path)
            else:
                skipped.append((path, "not a regular file (a pipe, socket or device)"))
    return files, skipped


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


def csv_text(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A CSV document (RFC 4180 quoting, so class names with commas survive)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
