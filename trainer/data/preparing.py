"""Images -> TFRecord shards (the library of `python -m trainer.prepare`, whose docstring says
what it writes): listing a folder, a CSV or a Vertex AI import file, the stratified split,
coverage checks, shard counts, dataset.json, and the atomic swap of the output folder."""
from __future__ import annotations

import collections
import csv as csv_lib
import dataclasses
import io
import math
import os
import random
from typing import Dict, List, Optional, Protocol, Sequence, Tuple
import tensorflow as tf
from absl import logging
from effnet_common import downscale, fileio
from trainer.data import discovery, folderswap, importfile, shards
from trainer.data.importfile import Source
from trainer.data.shards import Checked


DEFAULT_SHARD_SIZE_MB = 100


SPLITS = ("train", "validation", "test")  # shard prefixes, in this order in dataset.json




_OWN_FILES = (discovery.LABELS_FILE, discovery.INFO_FILE)


def list_input(*, input_dir: Optional[str], csv: Optional[str], import_file: Optional[str],
               multi_label: bool) -> Tuple[List[Source], List[dict], List[str], bool]:
    """The sources, skipped files, class names and multi-label flag of whichever input is
    given, every class name in Unicode NFC: a class folder macOS named in NFD and a CSV label
    typed in NFC are one class, and labels.txt holds the form the serving labels compare in."""
    if import_file:
        sources, skipped, classes, multi_label = importfile.list_import_file(import_file,
                                                                            multi_label=multi_label)
    else:
        sources, skipped, classes = list_csv(csv) if csv else list_folder(input_dir)
    sources = [dataclasses.replace(s, labels=tuple(sorted({fileio.nfc(n) for n in s.labels})))
               for s in sources]
    return sources, skipped, sorted({fileio.nfc(c) for c in classes}), multi_label


def list_folder(input_dir: str) -> Tuple[List[Source], List[dict], List[str]]:
    """The files under the class subfolders of `input_dir` as `fileio.list_folder` lists them
    for every command, those not named as images included (prepare decodes every file anyway:
    its content decides), the files skipped (with reasons, for dataset.json), and the class
    names (every subfolder, even an empty one)."""
    if not tf.io.gfile.isdir(input_dir):
        raise discovery.DataError(f"--input_dir {input_dir} is not a folder: pass a folder with one "
                             "subfolder of images per class, or --csv")
    listing = fileio.list_folder(input_dir)
    sources, skipped = [], []
    for path in sorted(listing.images + listing.others):
        name = os.path.relpath(path, input_dir)
        if "/" not in name:
            skipped.append({"path": name, "reason": "not inside a class folder"})
        else:
            sources.append(Source(path=path, labels=(name.split("/", 1)[0],), name=name))
    skipped += [{"path": os.path.relpath(path, input_dir), "reason": why} for path, why in listing.skipped]
    skipped += [{"path": entry.rstrip("/") + "/", "reason": "hidden folder"}
                for entry in sorted(tf.io.gfile.listdir(input_dir))
                if fileio.is_hidden(entry) and tf.io.gfile.isdir(os.path.join(input_dir, entry))]
    return sources, skipped, discovery.class_folders(input_dir)


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


def split_examples(items: Sequence[Checked], *, validation_fraction: float, seed: int,
                   stratify: bool = True, test_fraction: float = 0.0) -> Dict[str, List[Checked]]:
    """The valid images by split (`SPLITS` order; empty splits left out).

    An image whose input fixed its split (ML_USE) goes there. Of the others, per class
    (`stratify`; single-label data) or all together (multi-label data, where one class cannot
    stand for an image), the shuffled group's first round(n * validation_fraction) go to
    validation and the next round(n * test_fraction) to test (`_held_out_counts`: a group of at
    least 2 images keeps one for training). Validation is drawn first, so adding a test split
    leaves the validation split as it was and takes only training images. Deterministic by seed.
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
        n_val, n_test = _held_out_counts(len(members), fractions=(validation_fraction, test_fraction))
        splits["validation"] += members[:n_val]
        splits["test"] += members[n_val:n_val + n_test]
        splits["train"] += members[n_val + n_test:]
    for name, members in splits.items():  # mix classes inside every shard
        random.Random(f"{seed}/{name}").shuffle(members)
    return {name: members for name, members in splits.items() if members}


def _held_out_counts(n: int, *, fractions: Sequence[float]) -> List[int]:
    """Images of a group of `n` for each held-out split, in order: round(n * fraction), and in a
    group of at least 2 at least one per split whose fraction is above 0 while one image is left
    for training (so a 2-image class gets validation but no test image, a 3-image class both):
    a split without a class has no figure for it, a class without training images is an error."""
    counts, left = [], n - 1
    for fraction in fractions:
        k = round(n * fraction)
        if n >= 2:
            k = min(max(k, 1) if fraction > 0 else k, left)
        counts.append(k)
        left -= k
    return counts


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


def build_info(*, source: str, class_names: Sequence[str], splits: Dict[str, List[Checked]],
               files: Dict[str, List[str]], skipped: List[dict], notes: List[dict],
               warnings: List[str], multi_label: bool, validation_fraction: float, seed: int,
               test_fraction: float = 0.0, max_image_side: int = 0) -> dict:
    """The dataset.json content: what is where, and what was left out and why. A class's
    per_class count is the number of images holding it (several per image when multi-label)."""
    formats = collections.Counter(c.format for members in splits.values() for c in members)
    kept = [c for members in splits.values() for c in members]
    return {
        "format_version": 1,
        "created_by": "trainer.prepare",
        "source": source,
        "class_names": list(class_names),
        "num_classes": len(class_names),
        "multi_label": multi_label,
        "validation_fraction": validation_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "splits": {split: {
            "num_examples": len(members),
            "num_shards": len(files[split]),
            "files": files[split],
            "per_class": {name: sum(name in c.source.labels for c in members)
                          for name in class_names},
        } for split, members in splits.items()},
        "formats": dict(sorted(formats.items())),
        "resized": resized_summary(kept, max_image_side=max_image_side),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "notes": notes,
        "warnings": warnings,
    }


# Original sizes listed one by one in dataset.json's "resized" (the most frequent first).
_SIZES_LISTED = 20


def resized_summary(kept: Sequence[Checked], *, max_image_side: int) -> dict:
    """dataset.json's "resized": the rule's limit, how many images were stored downscaled, and
    from which upright sizes (WIDTHxHEIGHT: count; the rarest pooled under "other")."""
    sizes = collections.Counter(f"{c.original_size[1]}x{c.original_size[0]}" for c in kept if c.original_size)
    listed = dict(sizes.most_common(_SIZES_LISTED))
    if len(sizes) > _SIZES_LISTED:
        listed["other"] = sum(sizes.values()) - sum(listed.values())
    return {"max_image_side": max_image_side, "num_resized": sum(sizes.values()), "from_sizes": listed}


def _check_output_dir(output_dir: str) -> None:
    """Refuses a folder holding anything prepare did not write: the swap replaces it whole."""
    if not tf.io.gfile.exists(output_dir):
        return
    if not tf.io.gfile.isdir(output_dir):
        raise discovery.DataError(f"--output_dir {output_dir} is a file: pass a folder")
    foreign = [n.rstrip("/") for n in tf.io.gfile.listdir(output_dir)
               if n.rstrip("/") not in _OWN_FILES and not (shards.shard_split(n) in SPLITS and n.rstrip("/").endswith(".tfrecord"))]
    if foreign:
        raise discovery.DataError(f"--output_dir {output_dir} holds files prepare did not write "
                             f"({', '.join(sorted(foreign)[:3])}): pass an empty or new folder, "
                             "since prepare replaces the folder's content")


class Workers(Protocol):
    """Who does prepare's per-image work: check every file, then write the shards. The rest of
    prepare (listing, the split, coverage, shard counts, dataset.json, the swap) is the same
    code whoever the workers are, so every runner writes the same records."""

    def check_all(self, sources: Sequence[Source], *, max_image_side: int) -> List[Checked]:
        """`shards.check_image` of every source, in the sources' order."""

    def write_all(self, folder: str, splits: Dict[str, List[Checked]], counts: Dict[str, int], *,
                  class_index: Dict[str, int]) -> Dict[str, List[str]]:
        """The shards `shards.shard_layout` says, under `folder`; their file names per split."""


@dataclasses.dataclass(frozen=True)
class LocalWorkers:
    """This machine's threads (the default; trainer.beam.records.BeamWorkers runs a Beam pipeline)."""
    num_workers: int

    def check_all(self, sources: Sequence[Source], *, max_image_side: int) -> List[Checked]:
        return shards.check_all(sources, num_workers=self.num_workers, max_image_side=max_image_side)

    def write_all(self, folder: str, splits: Dict[str, List[Checked]], counts: Dict[str, int], *,
                  class_index: Dict[str, int]) -> Dict[str, List[str]]:
        return shards.write_all(folder, splits, counts, class_index=class_index, num_workers=self.num_workers)


def prepare(*, input_dir: Optional[str], output_dir: str, validation_fraction: float,
            num_shards: Optional[int] = None, shard_size_mb: Optional[float] = None,
            seed: int = 0, csv: Optional[str] = None, num_workers: Optional[int] = None,
            import_file: Optional[str] = None, multi_label: bool = False,
            test_fraction: float = 0.0, max_image_side: int = downscale.DEFAULT_MAX_IMAGE_SIDE,
            workers: Optional["Workers"] = None) -> dict:
    """Prepares TFRecord shards, labels.txt and dataset.json; returns the dataset.json content.

    Args:
      input_dir, csv, import_file: the input, exactly one of them: a folder of class folders,
        a CSV of path,label rows, or a Vertex AI import file (.csv or .jsonl).
      multi_label: write multi-label records even when no row holds several labels.
      test_fraction: of each class (the rows without ML_USE), the share held out as `test-*`
        shards: images no choice of the training run sees, for a figure that is not optimistic.
      max_image_side: an image whose upright longer side is over this many pixels is stored
        downscaled to it (`effnet_common.downscale`); 0 keeps every original byte for byte.
      workers: who checks and writes (`LocalWorkers` on `num_workers` threads by default).

    Raises:
      DataError: bad arguments or rows, no valid image at all, or a class left without
        (training) images.
    """
    _validate_args(input_dir=input_dir, csv=csv, import_file=import_file, output_dir=output_dir,
                   validation_fraction=validation_fraction, num_shards=num_shards,
                   shard_size_mb=shard_size_mb, test_fraction=test_fraction, max_image_side=max_image_side)
    workers = workers or LocalWorkers(num_workers=num_workers or os.cpu_count() or 1)
    source = import_file or csv or input_dir
    sources, skipped, classes, multi_label = list_input(input_dir=input_dir, csv=csv, import_file=import_file,
                                                        multi_label=multi_label)
    if not sources:
        raise discovery.DataError(f"no file found in {source}: pass a folder with one subfolder of "
                                  "images per class (or a CSV of path,label rows, or an import file)")
    checked = workers.check_all(sources, max_image_side=max_image_side)
    valid = [c for c in checked if c.ok]
    skipped += [{"path": c.source.name, "reason": c.reason} for c in checked if not c.ok]
    class_names = _class_names(classes, sources, valid, source=source)
    splits = split_examples(valid, validation_fraction=validation_fraction, seed=seed,
                            stratify=not multi_label, test_fraction=test_fraction)
    warnings = check_coverage(splits, class_names=class_names, source=source)
    counts = shard_counts(splits, num_shards=num_shards, shard_size_mb=shard_size_mb)
    folderswap.recover(output_dir, marker=discovery.INFO_FILE)
    tmp = folderswap.sibling(output_dir, "tmp")
    tf.io.gfile.makedirs(tmp)
    try:
        files = workers.write_all(tmp, splits, counts, class_index={n: i for i, n in enumerate(class_names)})
        info = build_info(source=source, class_names=class_names, splits=splits,
                          files=files, skipped=skipped,
                          notes=[{"path": c.source.name, "note": c.note} for c in valid if c.note],
                          warnings=warnings, multi_label=multi_label,
                          validation_fraction=validation_fraction, seed=seed, test_fraction=test_fraction,
                          max_image_side=max_image_side)
        _write_text(os.path.join(tmp, discovery.LABELS_FILE), "".join(n + "\n" for n in class_names))
        _write_text(os.path.join(tmp, discovery.INFO_FILE), _to_json(info))
        folderswap.swap_into_place(tmp, output_dir, marker=discovery.INFO_FILE)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
    return info


def _validate_args(*, input_dir, csv, import_file, output_dir, validation_fraction, num_shards,
                   shard_size_mb, test_fraction=0.0, max_image_side=0) -> None:
    if sum(bool(x) for x in (input_dir, csv, import_file)) != 1:
        raise discovery.DataError("pass exactly one of --input_dir (a folder of class folders), --csv "
                                  "(a file of path,label rows) and --import_file (a Vertex AI .csv "
                                  "or .jsonl import file)")
    if not output_dir:
        raise discovery.DataError("--output_dir is empty: pass the folder to write the shards to")
    if not 0.0 <= validation_fraction < 1.0:
        raise discovery.DataError(f"--validation_fraction={validation_fraction} must be in [0, 1), "
                             "e.g. 0.1")
    _check_test_fraction(test_fraction, validation_fraction=validation_fraction)
    if max_image_side < 0:
        raise discovery.DataError(f"--max_image_side={max_image_side} is negative: pass a side in pixels "
                                  f"(default {downscale.DEFAULT_MAX_IMAGE_SIDE}) or 0 to keep the originals")
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


def _check_test_fraction(test_fraction: float, *, validation_fraction: float) -> None:
    if not 0.0 <= test_fraction < 1.0:
        raise discovery.DataError(f"--test_fraction={test_fraction} must be in [0, 1), e.g. 0.1")
    if validation_fraction + test_fraction >= 1.0:
        raise discovery.DataError(f"--validation_fraction={validation_fraction} plus --test_fraction={test_fraction} "
                                  "is 1 or more: nothing would be left to train on; lower one of them, e.g. 0.1 each")


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
