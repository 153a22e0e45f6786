"""Image files -> checked examples -> TFRecord shards: what trainer.prepare reads and writes.

Every file is read and decoded once, in parallel, with the decoder the trainer will use
(`check_image`); a valid image keeps its bytes and gets the `image/format` its content says (a
PNG named .jpg is stored as PNG), unless its longer side is over `--max_image_side`: then it is
stored downscaled, upright and re-encoded once (`effnet_common.downscale`, the rule every reader
shares). `serialize_record` is a record's one producer (the local writer and the Beam pipeline
both call it); `build_example` writes the record
keys of Google's ImageNet TFRecords (the data contract, docs/data.md): `image/class/label`
holds one class index, or a sorted list of them in a multi-label dataset.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf

from effnet_common import decode, downscale, flagutil
from effnet_common import progress as progress_lib
from trainer.data.importfile import Source

_SHARD_RE = re.compile(r"^(?P<split>.+)-\d{5}-of-\d{5}(\.[^/]*)?$")

_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
          (b"GIF89a", "GIF"), (b"BM", "BMP"))
_EXT_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP", ".webp": "WEBP"}


@dataclasses.dataclass(frozen=True)
class Checked:
    """What decoding a file once told us."""
    source: Source
    reason: str = ""          # why it is skipped; empty when valid
    format: str = ""
    height: int = 0
    width: int = 0
    num_bytes: int = 0        # of the stored record's image: estimated for a downscaled one
    note: str = ""            # e.g. a misnamed file that is kept
    original_size: Tuple[int, int] = ()  # upright (height, width) read, when stored downscaled
    read_format: str = ""     # the file's own format, where `format` is the downscaled one's

    @property
    def ok(self) -> bool:
        return not self.reason


def sniff_format(head: bytes) -> str:
    """The image format the first bytes announce, or '' when none we read."""
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    return "WEBP" if head[:4] == b"RIFF" and head[8:12] == b"WEBP" else ""


# The reader's own EXIF parser, traced once: eagerly its few dozen small ops cost ~25 ms an image,
# as a function ~1 ms.
_exif_orientation = tf.function(decode.exif_orientation, input_signature=[tf.TensorSpec([], tf.string)])


def check_image(source: Source, *, max_image_side: int = 0) -> Checked:
    """Reads and decodes one file, once, with the decoder the trainer will use; the size it
    records is the upright one (swapped for an EXIF orientation that transposes, as
    `effnet_common.decode` reads it), since that is the image the trainer sees. The bytes are
    kept as they are, tag included, unless the longer side is over `max_image_side` (0: never):
    then the size and format recorded are those `serialize_record` will store."""
    try:
        with tf.io.gfile.GFile(source.path, "rb") as f:
            content = f.read()
    except tf.errors.OpError as e:
        return Checked(source, reason=f"unreadable: {flagutil.one_line(e, limit=300)}")
    if not content:
        return Checked(source, reason="empty file")
    fmt = sniff_format(content[:12])
    if not fmt:
        return Checked(source, reason="not an image (content is not JPEG, PNG, GIF, BMP or WebP)")
    try:
        shape = tf.io.decode_image(content, channels=3, expand_animations=False).shape
    except tf.errors.OpError as e:
        return Checked(source, reason=f"{fmt} that does not decode (truncated or corrupt): "
                                      f"{flagutil.one_line(e, limit=300)}")
    if int(_exif_orientation(content[:decode.EXIF_PREFIX_BYTES])) >= 5:  # stored sideways
        shape = (shape[1], shape[0])
    ext = os.path.splitext(source.path)[1].lower()
    note = ""
    if _EXT_FORMAT.get(ext, fmt) != fmt:
        note = f"named {ext} but its content is {fmt}: stored with image/format {fmt}"
    checked = Checked(source, format=fmt, height=int(shape[0]), width=int(shape[1]),
                      num_bytes=len(content), note=note)
    target = downscale.target_size(checked.height, checked.width, max_image_side)
    if target is None:
        return checked
    share = target[0] * target[1] / (checked.height * checked.width)  # for shard sizes only
    return dataclasses.replace(checked, height=target[0], width=target[1], format=downscale.stored_format(fmt),
                               read_format=fmt, original_size=(checked.height, checked.width),
                               num_bytes=max(1, round(len(content) * share)))


def check_all(sources: Sequence[Source], *, num_workers: int, max_image_side: int = 0) -> List[Checked]:
    """`check_image` over all sources on `num_workers` threads (TensorFlow's decoders release
    the GIL, so threads use every core), with a progress bar."""
    bar = progress(len(sources), "checking")
    results = []
    check = lambda source: check_image(source, max_image_side=max_image_side)  # noqa: E731
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers) as pool:
        for checked in pool.map(check, sources):
            results.append(checked)
            bar.add(1)
    return results


def shard_name(split: str, index: int, count: int) -> str:
    """The one shard-name rule (docs/data.md): `{split}-{index:05d}-of-{count:05d}.tfrecord`."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def shard_split(file_name: str) -> Optional[str]:
    """The split a shard's file name says (`validation-00000-of-00004.tfrecord` -> validation;
    other suffixes too, e.g. Google's `train-00000-of-01024`), or None for another name."""
    match = _SHARD_RE.match(file_name.rstrip("/").rsplit("/", 1)[-1])
    return match.group("split") if match else None


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


def stored_bytes(checked: Checked) -> bytes:
    """The image bytes a checked file's record holds: the file's own, or, where the check
    decided so (`original_size`), the file downscaled upright by `effnet_common.downscale`."""
    with tf.io.gfile.GFile(checked.source.path, "rb") as f:
        content = f.read()
    if not checked.original_size:
        return content
    height, width = checked.original_size
    return downscale.downscale(content, height=height, width=width, read_format=checked.read_format,
                               max_side=max(checked.height, checked.width))


def serialize_record(checked: Checked, *, class_index: Dict[str, int]) -> bytes:
    """A checked image's record, serialized: the one producer of what a shard holds. Serialized
    deterministically (the feature map in key order), so the same input gives byte-identical
    shards from every run and every runner, not only the same records."""
    return build_example(checked, stored_bytes(checked), class_index=class_index).SerializeToString(deterministic=True)


def write_shard(path: str, members: Sequence[Checked], *, class_index: Dict[str, int],
                bar) -> None:
    """Writes one shard of already checked images."""
    with tf.io.TFRecordWriter(path) as writer:
        for checked in members:
            writer.write(serialize_record(checked, class_index=class_index))
            bar.add(1)


def shard_layout(splits: Dict[str, List[Checked]],
                 counts: Dict[str, int]) -> Dict[str, List[Tuple[str, List[Checked]]]]:
    """Each split's shards as (file name, members): `counts[split]` contiguous, near-equal slices
    of the split's order. The one rule of what goes where, for the local writer and Beam's."""
    layout = {}
    for split, members in splits.items():
        n = counts[split]
        layout[split] = [(shard_name(split, i, n), members[len(members) * i // n: len(members) * (i + 1) // n])
                         for i in range(n)]
    return layout


def write_all(folder: str, splits: Dict[str, List[Checked]], counts: Dict[str, int], *,
              class_index: Dict[str, int], num_workers: int) -> Dict[str, List[str]]:
    """All shards of all splits, one shard per thread; returns the file names per split."""
    layout = shard_layout(splits, counts)
    jobs = [(os.path.join(folder, name), members) for shards_of in layout.values() for name, members in shards_of]
    names = {split: [name for name, _ in shards_of] for split, shards_of in layout.items()}
    bar = progress(sum(len(m) for m in splits.values()), "writing")
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers) as pool:
        futures = [pool.submit(write_shard, p, m, class_index=class_index, bar=bar) for p, m in jobs]
        for future in futures:
            future.result()
    return names


def progress(total: int, label: str) -> progress_lib.Progress:
    """The files' progress (effnet_common.progress: a bar on a terminal, lines in a log); silent for none."""
    if total:
        logging.info("%s %d files", label, total)
    return progress_lib.Progress(total, label=label, unit="file")
