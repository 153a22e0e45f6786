"""python -m trainer.prepare: an image folder, a CSV of path,label rows, or a Vertex AI import
file -> TFRecord shards.

    python -m trainer.prepare --input_dir=IMAGES --output_dir=DATA --validation_fraction=0.1 \
        [--num_shards=N | --shard_size_mb=M] [--seed=S] [--csv=FILE | --import_file=FILE] \
        [--multi_label]

writes, per the data contract (docs/data.md), `train-00000-of-0000N.tfrecord`, `validation-...`
and (when an import file names a test split) `test-...` shards, `labels.txt` (sorted class
names) and `dataset.json` (counts per split and class, every skipped file with its reason,
warnings, and whether the data is multi-label).

A Vertex AI import file (.csv or .jsonl, trainer.importfile) may fix each image's split
(ML_USE); its given splits are kept exactly, the other rows are split as a folder's are. A
multi-label dataset (a row with several labels, JSONL `classificationAnnotations`, or
--multi_label) stores each image's sorted class indices as a list in `image/class/label`.

Every file is read and decoded once, in parallel, to check it; a file that is empty, truncated,
not an image, or an image TensorFlow cannot decode is skipped and listed with its reason. A
valid image keeps its bytes and gets the `image/format` its content says (a PNG named .jpg is
stored as PNG), so nothing is re-encoded and nothing loses quality. The split is stratified over
the valid images (random for multi-label data). A class without a training image is an error; a
class missing from validation or test, a warning. Output is written under a temporary sibling
folder and swapped into place when complete, so an interrupted run leaves the previous output
as it was.
"""
from __future__ import annotations

import collections
import concurrent.futures
import csv as csv_lib
import dataclasses
import io
import math
import os
import random
import re
import sys
import time
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

from absl import app, flags, logging

from trainer import flagutil

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from trainer import discovery, fileio, importfile
from trainer.importfile import Source

DEFAULT_SHARD_SIZE_MB = 100
SPLITS = ("train", "validation", "test")  # shard prefixes, in this order in dataset.json
_SHARD_RE = re.compile(rf"^({'|'.join(SPLITS)})-\d{{5}}-of-\d{{5}}\.tfrecord$")
_OWN_FILES = (discovery.LABELS_FILE, discovery.INFO_FILE)
_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
          (b"GIF89a", "GIF"), (b"BM", "BMP"))
_EXT_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP"}


@dataclasses.dataclass(frozen=True)
class Checked:
    """What decoding a file once told us."""
    source: Source
    reason: str = ""          # why it is skipped; empty when valid
    format: str = ""
    height: int = 0
    width: int = 0
    num_bytes: int = 0
    note: str = ""            # e.g. a misnamed file that is kept

    @property
    def ok(self) -> bool:
        return not self.reason


# --------------------------------------------------------------------------- listing inputs

def list_folder(input_dir: str) -> Tuple[List[Source], List[dict], List[str]]:
    """Every file under the class subfolders of `input_dir` (whatever its name: its content
    decides; hidden ones left out, as every reader of a folder does), the files found elsewhere
    (to report), and the class names (every subfolder, even an empty one)."""
    if not tf.io.gfile.isdir(input_dir):
        raise discovery.DataError(f"--input_dir {input_dir} is not a folder: pass a folder with one "
                             "subfolder of images per class, or --csv")
    sources, skipped, classes = [], [], []
    for entry in sorted(tf.io.gfile.listdir(input_dir)):
        entry = entry.rstrip("/")
        full = os.path.join(input_dir, entry)
        if not tf.io.gfile.isdir(full):
            skipped.append({"path": entry, "reason": "not inside a class folder"})
            continue
        if fileio.is_hidden(entry):
            skipped.append({"path": entry + "/", "reason": "hidden folder"})
            continue
        classes.append(entry)
        sources += [Source(path=path, labels=(entry,), name=os.path.relpath(path, input_dir))
                    for path in fileio.list_files(full)]
    return sources, skipped, classes


def list_csv(csv_path: str) -> Tuple[List[Source], List[dict], List[str]]:
    """Rows `path,label` (an optional header `path,label`); relative paths are relative to the
    CSV's folder, so a CSV can travel with its images (local or gs://)."""
    if not tf.io.gfile.exists(csv_path):
        raise discovery.DataError(f"--csv {csv_path} does not exist: pass a file of path,label rows")
    rows = list(csv_lib.reader(io.StringIO(importfile.read_text(csv_path, what="--csv"))))
    base = os.path.dirname(csv_path)
    sources, skipped = [], []
    for number, row in enumerate(rows, start=1):
        row = [c.strip() for c in row]
        if not row or not any(row) or (number == 1 and [c.lower() for c in row[:2]] == ["path", "label"]):
            continue
        if len(row) != 2 or not row[0] or not row[1]:
            raise discovery.DataError(f"--csv {csv_path} line {number} is {','.join(row)!r}: each row "
                                 "must be path,label")
        sources.append(Source(path=importfile.resolve(base, row[0]), labels=(row[1],), name=row[0]))
    return sources, skipped, sorted({s.class_name for s in sources})


# --------------------------------------------------------------------------- checking

def sniff_format(head: bytes) -> str:
    """The image format the first bytes announce, or '' when none we read."""
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    return ""


def check_image(source: Source) -> Checked:
    """Reads and decodes one file, once, with the decoder the trainer will use."""
    try:
        with tf.io.gfile.GFile(source.path, "rb") as f:
            content = f.read()
    except tf.errors.OpError as e:
        return Checked(source, reason=f"unreadable: {discovery.op_error_message(e)}")
    if not content:
        return Checked(source, reason="empty file")
    fmt = sniff_format(content[:8])
    if not fmt:
        return Checked(source, reason="not an image (content is not JPEG, PNG, GIF or BMP)")
    try:
        shape = tf.io.decode_image(content, channels=3, expand_animations=False).shape
    except tf.errors.OpError as e:
        return Checked(source, reason=f"{fmt} that does not decode (truncated or corrupt): "
                                      f"{discovery.op_error_message(e)}")
    ext = os.path.splitext(source.path)[1].lower()
    note = ""
    if _EXT_FORMAT.get(ext, fmt) != fmt:
        note = f"named {ext} but its content is {fmt}: stored with image/format {fmt}"
    return Checked(source, format=fmt, height=int(shape[0]), width=int(shape[1]),
                   num_bytes=len(content), note=note)


def check_all(sources: Sequence[Source], *, num_workers: int) -> List[Checked]:
    """`check_image` over all sources on `num_workers` threads (TensorFlow's decoders release
    the GIL, so threads use every core), with a progress bar."""
    bar = _progress(len(sources), "checking")
    results = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers) as pool:
        for checked in pool.map(check_image, sources):
            results.append(checked)
            bar.add(1)
    return results


# --------------------------------------------------------------------------- planning

def split_examples(items: Sequence[Checked], *, validation_fraction: float, seed: int,
                   stratify: bool = True) -> Dict[str, List[Checked]]:
    """The valid images by split (`SPLITS` order; empty splits left out).

    An image whose input fixed its split (ML_USE) goes there. Of the others, per class
    (`stratify`; single-label data) or all together (multi-label data, where one class cannot
    stand for an image), round(n * fraction) go to validation, clamped so that a group of at
    least 2 images appears in both splits (when the fraction is above 0). Deterministic by seed.
    """
    splits: Dict[str, List[Checked]] = {name: [] for name in SPLITS}
    groups = collections.defaultdict(list)
    for item in items:
        if item.source.ml_use:
            splits[importfile.ML_USE_SPLITS[item.source.ml_use]].append(item)
        else:
            groups[item.source.class_name if stratify else ""].append(item)
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda c: c.source.name)
        random.Random(f"{seed}/{key}").shuffle(members)
        n_val = round(len(members) * validation_fraction)
        if validation_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        splits["validation"] += members[:n_val]
        splits["train"] += members[n_val:]
    for name, members in splits.items():  # mix classes inside every shard
        random.Random(f"{seed}/{name}").shuffle(members)
    return {name: members for name, members in splits.items() if members}


def check_coverage(splits: Dict[str, List[Checked]], *, class_names: Sequence[str],
                   source: str) -> List[str]:
    """Warnings for the classes missing from validation or test (their figures will be
    missing); a class without a training image is an error: no image would teach it.

    Raises:
      DataError: naming the first class without a training image.
    """
    held = {split: {n for c in members for n in c.source.labels} for split, members in splits.items()}
    untaught = [n for n in class_names if n not in held.get("train", ())]
    if untaught:
        raise discovery.DataError(
            f"class {untaught[0]!r} has no image in the training split of {source} ({len(untaught)} "
            "such class(es)): give it training images (ML_USE training, or none and a "
            "--validation_fraction that leaves some for training), or remove it")
    warnings = [f"class {name!r} has no image in the {split} split of {source}: its {split} figures "
                f"will be missing; add {split} images of it"
                for split in splits if split != "train" for name in class_names if name not in held[split]]
    for warning in warnings:
        logging.warning("%s", warning)
    return warnings


def shard_counts(splits: Dict[str, List[Checked]], *, num_shards: Optional[int],
                 shard_size_mb: Optional[float]) -> Dict[str, int]:
    """Shards per split: `num_shards` for train and the others in proportion to their size, or
    enough shards of about `shard_size_mb` each; never more shards than examples."""
    counts = {}
    n_train = len(splits.get("train", ()))
    for name, members in splits.items():
        if num_shards:
            n = num_shards if name == "train" else round(num_shards * len(members) / max(n_train, 1))
        else:
            total = sum(c.num_bytes for c in members) / 2 ** 20
            n = math.ceil(total / (shard_size_mb or DEFAULT_SHARD_SIZE_MB))
        counts[name] = min(max(n, 1), len(members))
    return counts


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


# --------------------------------------------------------------------------- writing

def _int64(*values: int):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _bytes(*values: bytes):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def build_example(checked: Checked, content: bytes, *, class_index: Dict[str, int]) -> tf.train.Example:
    """A tf.Example with the feature keys of Google's ImageNet TFRecords.

    `image/class/label` holds the image's class indices, sorted, and `image/class/text` their
    names in the same order: one value each for single-label data (as Google's shards), zero or
    more in a multi-label dataset.
    """
    labels = sorted((class_index[name], name) for name in checked.source.labels)
    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": _bytes(content),
        "image/format": _bytes(checked.format.encode()),
        "image/class/label": _int64(*(index for index, _ in labels)),
        "image/class/text": _bytes(*(name.encode() for _, name in labels)),
        "image/filename": _bytes(checked.source.name.encode()),
        "image/height": _int64(checked.height),
        "image/width": _int64(checked.width),
        "image/channels": _int64(3),
    }))


def write_shard(path: str, members: Sequence[Checked], *, class_index: Dict[str, int],
                bar) -> None:
    """Writes one shard; the image bytes are copied as they are (already checked)."""
    with tf.io.TFRecordWriter(path) as writer:
        for checked in members:
            with tf.io.gfile.GFile(checked.source.path, "rb") as f:
                content = f.read()
            example = build_example(checked, content, class_index=class_index)
            writer.write(example.SerializeToString())
            bar.add(1)


def write_all(folder: str, splits: Dict[str, List[Checked]], counts: Dict[str, int], *,
              class_index: Dict[str, int], num_workers: int) -> Dict[str, List[str]]:
    """All shards of all splits, one shard per thread; returns the file names per split."""
    jobs, names = [], {}
    for split, members in splits.items():
        n = counts[split]
        names[split] = [shard_name(split, i, n) for i in range(n)]
        for i in range(n):  # contiguous, near-equal slices
            jobs.append((os.path.join(folder, names[split][i]),
                         members[len(members) * i // n: len(members) * (i + 1) // n]))
    bar = _progress(sum(len(m) for m in splits.values()), "writing")
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers) as pool:
        futures = [pool.submit(write_shard, p, m, class_index=class_index, bar=bar) for p, m in jobs]
        for future in futures:
            future.result()
    return names


def build_info(*, source: str, class_names: Sequence[str], splits: Dict[str, List[Checked]],
               files: Dict[str, List[str]], skipped: List[dict], notes: List[dict],
               warnings: List[str], multi_label: bool, validation_fraction: float, seed: int) -> dict:
    """The dataset.json content: what is where, and what was left out and why. A class's
    per_class count is the number of images holding it (several per image when multi-label)."""
    formats = collections.Counter(c.format for members in splits.values() for c in members)
    return {
        "format_version": 1,
        "created_by": "trainer.prepare",
        "source": source,
        "class_names": list(class_names),
        "num_classes": len(class_names),
        "multi_label": multi_label,
        "validation_fraction": validation_fraction,
        "seed": seed,
        "splits": {split: {
            "num_examples": len(members),
            "num_shards": len(files[split]),
            "files": files[split],
            "per_class": {name: sum(name in c.source.labels for c in members)
                          for name in class_names},
        } for split, members in splits.items()},
        "formats": dict(sorted(formats.items())),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "notes": notes,
        "warnings": warnings,
    }


# --------------------------------------------------------------------------- atomic output

def _check_output_dir(output_dir: str) -> None:
    """Refuses a folder holding anything prepare did not write: the swap replaces it whole."""
    if not tf.io.gfile.exists(output_dir):
        return
    if not tf.io.gfile.isdir(output_dir):
        raise discovery.DataError(f"--output_dir {output_dir} is a file: pass a folder")
    foreign = [n.rstrip("/") for n in tf.io.gfile.listdir(output_dir)
               if n.rstrip("/") not in _OWN_FILES and not _SHARD_RE.match(n.rstrip("/"))]
    if foreign:
        raise discovery.DataError(f"--output_dir {output_dir} holds files prepare did not write "
                             f"({', '.join(sorted(foreign)[:3])}): pass an empty or new folder, "
                             "since prepare replaces the folder's content")


def _sibling(output_dir: str, tag: str) -> str:
    parent, base = os.path.split(output_dir.rstrip("/"))
    return os.path.join(parent, f".{base}.prepare-{tag}-{uuid.uuid4().hex[:8]}")


def _leftovers(output_dir: str, tag: str) -> List[str]:
    parent, base = os.path.split(output_dir.rstrip("/"))
    return [p.rstrip("/") for p in tf.io.gfile.glob(os.path.join(parent, f".{base}.prepare-{tag}-*"))]


def _recover(output_dir: str) -> None:
    """Cleans up after a run killed mid-way: deletes its temporary folder, and puts the
    previous output back if the kill fell inside the swap (the output then lacks dataset.json,
    which the swap moves in last)."""
    for tmp in _leftovers(output_dir, "tmp"):
        logging.warning("removing %s, left by an interrupted prepare", tmp)
        tf.io.gfile.rmtree(tmp)
    for old in _leftovers(output_dir, "old"):
        if tf.io.gfile.exists(os.path.join(output_dir, discovery.INFO_FILE)):
            tf.io.gfile.rmtree(old)
            continue
        logging.warning("restoring %s from %s, left by an interrupted prepare", output_dir, old)
        if tf.io.gfile.exists(output_dir):
            tf.io.gfile.rmtree(output_dir)
        fileio.move_folder(old, output_dir, last=discovery.INFO_FILE)


def _swap_into_place(tmp: str, output_dir: str) -> None:
    """Replaces `output_dir` by the complete `tmp`, so that a reader (or a crash) never meets
    old and new shards together.

    On a local disk: two directory renames. On gs:// a rename copies objects one by one, so
    the old set is moved aside first, its dataset.json leaving first, and the new set is
    moved in with dataset.json last: an interrupted swap leaves no dataset.json, which
    `_recover` reads as "put the old set back".
    """
    old = _sibling(output_dir, "old") if tf.io.gfile.exists(output_dir) else None
    if old:
        fileio.move_folder(output_dir, old, first=discovery.INFO_FILE)
    fileio.move_folder(tmp, output_dir, last=discovery.INFO_FILE)
    if old:
        tf.io.gfile.rmtree(old)


# --------------------------------------------------------------------------- the whole run

def prepare(*, input_dir: Optional[str], output_dir: str, validation_fraction: float,
            num_shards: Optional[int] = None, shard_size_mb: Optional[float] = None,
            seed: int = 0, csv: Optional[str] = None, num_workers: Optional[int] = None,
            import_file: Optional[str] = None, multi_label: bool = False) -> dict:
    """Prepares TFRecord shards, labels.txt and dataset.json; returns the dataset.json content.

    Args:
      input_dir, csv, import_file: the input, exactly one of them: a folder of class folders,
        a CSV of path,label rows, or a Vertex AI import file (.csv or .jsonl).
      multi_label: write multi-label records even when no row holds several labels.

    Raises:
      DataError: bad arguments or rows, no valid image at all, or a class left without
        (training) images.
    """
    _validate_args(input_dir=input_dir, csv=csv, import_file=import_file, output_dir=output_dir,
                   validation_fraction=validation_fraction, num_shards=num_shards,
                   shard_size_mb=shard_size_mb)
    num_workers = num_workers or os.cpu_count() or 1
    source = import_file or csv or input_dir
    if import_file:
        sources, skipped, classes, multi_label = importfile.list_import_file(import_file,
                                                                            multi_label=multi_label)
    else:
        sources, skipped, classes = list_csv(csv) if csv else list_folder(input_dir)
    if not sources:
        raise discovery.DataError(f"no file found in {source}: pass a folder with one subfolder of "
                                  "images per class (or a CSV of path,label rows, or an import file)")
    checked = check_all(sources, num_workers=num_workers)
    valid = [c for c in checked if c.ok]
    skipped += [{"path": c.source.name, "reason": c.reason} for c in checked if not c.ok]
    class_names = _class_names(classes, sources, valid, source=source)
    splits = split_examples(valid, validation_fraction=validation_fraction, seed=seed,
                            stratify=not multi_label)
    warnings = check_coverage(splits, class_names=class_names, source=source)
    counts = shard_counts(splits, num_shards=num_shards, shard_size_mb=shard_size_mb)
    _recover(output_dir)
    tmp = _sibling(output_dir, "tmp")
    tf.io.gfile.makedirs(tmp)
    try:
        files = write_all(tmp, splits, counts, class_index={n: i for i, n in enumerate(class_names)},
                          num_workers=num_workers)
        info = build_info(source=source, class_names=class_names, splits=splits,
                          files=files, skipped=skipped,
                          notes=[{"path": c.source.name, "note": c.note} for c in valid if c.note],
                          warnings=warnings, multi_label=multi_label,
                          validation_fraction=validation_fraction, seed=seed)
        _write_text(os.path.join(tmp, discovery.LABELS_FILE), "".join(n + "\n" for n in class_names))
        _write_text(os.path.join(tmp, discovery.INFO_FILE), _to_json(info))
        _swap_into_place(tmp, output_dir)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
    return info


def _validate_args(*, input_dir, csv, import_file, output_dir, validation_fraction, num_shards,
                   shard_size_mb) -> None:
    if sum(bool(x) for x in (input_dir, csv, import_file)) != 1:
        raise discovery.DataError("pass exactly one of --input_dir (a folder of class folders), --csv "
                                  "(a file of path,label rows) and --import_file (a Vertex AI .csv "
                                  "or .jsonl import file)")
    if not output_dir:
        raise discovery.DataError("--output_dir is empty: pass the folder to write the shards to")
    if not 0.0 <= validation_fraction < 1.0:
        raise discovery.DataError(f"--validation_fraction={validation_fraction} must be in [0, 1), "
                             "e.g. 0.1")
    if num_shards is not None and shard_size_mb is not None:
        raise discovery.DataError("pass --num_shards or --shard_size_mb, not both")
    if num_shards is not None and num_shards < 1:
        raise discovery.DataError(f"--num_shards={num_shards} must be 1 or more")
    if shard_size_mb is not None and shard_size_mb <= 0:
        raise discovery.DataError(f"--shard_size_mb={shard_size_mb} must be positive")
    if "://" in output_dir and os.path.dirname(output_dir.rstrip("/")).endswith(":"):
        raise discovery.DataError(f"--output_dir {output_dir} is a root: pass a folder inside it, "
                             "e.g. gs://bucket/data")
    if input_dir and _inside(output_dir, input_dir):
        raise discovery.DataError(f"--output_dir {output_dir} is inside --input_dir {input_dir}: it "
                             "would be read as a class folder; write the shards elsewhere")
    _check_output_dir(output_dir)


def _inside(path: str, folder: str) -> bool:
    path, folder = path.rstrip("/") + "/", folder.rstrip("/") + "/"
    if not discovery.is_absolute(path):
        path, folder = os.path.abspath(path) + "/", os.path.abspath(folder) + "/"
    return path.startswith(folder)


def _class_names(classes: Sequence[str], sources: Sequence[Source], valid: Sequence[Checked], *,
                 source: str) -> List[str]:
    """Sorted class names; a class folder (or label) that is empty, or whose every file was
    skipped, is an error, not a silent drop that would renumber the labels."""
    names = sorted(classes)
    if not valid:
        raise discovery.DataError(f"no valid image in {source} ({len(sources)} files, all skipped as "
                             "empty, truncated or not images): check the input")
    present = {n for c in valid for n in c.source.labels}
    empty = [n for n in names if n not in present]
    if empty:
        raise discovery.DataError(f"class {empty[0]!r} in {source} has no valid image "
                             f"({len(empty)} such class(es)): add images or remove the class")
    if len(names) < 2:
        raise discovery.DataError(f"only one class ({names[0]!r}) in {source}: a classifier needs at "
                             "least 2 class folders (or labels)")
    return names


def _write_text(path: str, text: str) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def _to_json(obj) -> str:
    import json
    return json.dumps(obj, indent=2) + "\n"


class _Bar:
    """A thread-safe progress bar (tf_keras' Progbar) that stays silent for tiny inputs."""

    def __init__(self, total: int, label: str):
        import threading
        import tf_keras as keras
        self._lock = threading.Lock()
        # One line per 30 s in logs (Vertex AI, CI); a live bar on a terminal.
        interval = 0.1 if sys.stdout.isatty() else 30.0
        self._bar = keras.utils.Progbar(total, unit_name=label, interval=interval) if total else None

    def add(self, n: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.add(n)


def _progress(total: int, label: str) -> _Bar:
    if total:
        logging.info("%s %d files", label, total)
    return _Bar(total, label)


def _summary(info: dict, *, output_dir: str, seconds: float) -> str:
    parts = [f"{s}: {v['num_examples']} images in {v['num_shards']} shard(s)"
             for s, v in info["splits"].items()]
    kind = " (multi-label)" if info["multi_label"] else ""
    warned = f"; {len(info['warnings'])} warning(s) (in dataset.json)" if info["warnings"] else ""
    return (f"wrote {output_dir}: {info['num_classes']} classes{kind}; {'; '.join(parts)}; "
            f"skipped {info['num_skipped']} file(s) (reasons in dataset.json){warned}; {seconds:.1f} s")


# --------------------------------------------------------------------------- command line

def define_flags() -> None:
    """Defines this CLI's flags; only when it runs as a command, so that importing the module
    beside another entry point (tests, the demo) defines no clashing flags."""
    flagutil.define("string", "input_dir", None, "Folder (local or gs://) with one subfolder of images per class.")
    flagutil.define("string", "csv", None, "Instead of --input_dir: a CSV of path,label rows.")
    flagutil.define("string", "import_file", None, "Instead of --input_dir: a Vertex AI image-classification "
                    "import file, .csv ([ML_USE,]PATH[,LABEL...]) or .jsonl (local or gs://).")
    flagutil.define("bool", "multi_label", False, "Write multi-label records (a list of labels per image) "
                    "even when no row holds several labels.")
    flagutil.define("string", "output_dir", None, "Folder (local or gs://) for the shards; replaced whole.")
    flagutil.define("float", "validation_fraction", 0.1, "Fraction of each class held out for validation "
                    "(of the rows without ML_USE).")
    flagutil.define("integer", "num_shards", None, "Train shards (validation and test get a proportional number).")
    flagutil.define("float", "shard_size_mb", None, f"Target shard size instead of --num_shards "
                       f"(default {DEFAULT_SHARD_SIZE_MB} MB).")
    flagutil.define("integer", "seed", 0, "Seed of the split and of the order inside shards.")
    flagutil.define("integer", "num_workers", None, "Parallel threads (default: the number of cores).")
    flags.adopt_module_key_flags(flagutil)  # --helpshort lists them as this command's flags


FLAGS = flags.FLAGS


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    start = time.time()
    try:
        info = prepare(input_dir=FLAGS.input_dir, output_dir=FLAGS.output_dir,
                       validation_fraction=FLAGS.validation_fraction, num_shards=FLAGS.num_shards,
                       shard_size_mb=FLAGS.shard_size_mb, seed=FLAGS.seed, csv=FLAGS.csv,
                       num_workers=FLAGS.num_workers, import_file=FLAGS.import_file,
                       multi_label=FLAGS.multi_label)
    except discovery.DataError as e:
        flagutil.fail(e)
    for item in info["skipped"]:
        logging.warning("skipped %s: %s", item["path"], item["reason"])
    print(_summary(info, output_dir=FLAGS.output_dir, seconds=time.time() - start))


def run_main() -> None:
    """Console-script entry point (effnet-prepare)."""
    flagutil.run(main, define_flags)


if __name__ == "__main__":
    run_main()
