"""A dataset's audit (the library of `python -m trainer.audit`, whose docstring lists what it
writes): every image embedded once as the frozen phase embeds it, then duplicates, suspect
labels, class counts and a contact sheet (the findings themselves: trainer.analysis.findings)."""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple
from absl import logging
import numpy as np
import tensorflow as tf  # pylint: disable=wrong-import-order
from effnet_common import decode, downscale, fileio, progress
from trainer.analysis import findings, thumbnails
from trainer.configs import config
from trainer.data import discovery, shards, skips, targets
from trainer.evaluation import plots
from trainer.models import classifier as classifier_lib
from trainer.training import embeddings


# Measured on real photos: docs/data.md, "Auditing a dataset" (bench/audit_copies.py).
DEFAULT_DUPLICATE_THRESHOLD, DEFAULT_PIXEL_THRESHOLD = findings.CANDIDATE_THRESHOLD, findings.PIXEL_THRESHOLD


DEFAULT_NEIGHBOURS, DEFAULT_FOLDS = 10, 5


SUSPECT_CUT = 0.9  # audit.json counts the suspects whose label gets under 10 % of the evidence


BATCH_SIZE = 64


SHEET_PAIRS, SHEET_SUSPECTS, SHEET_COLUMNS = 9, 12, 6


_SPARE_NEIGHBOURS = 10  # neighbours looked up beyond --neighbours: the vote leaves an image's copies out


DUPLICATES_FILE, SUSPECTS_FILE, CLASSES_FILE = "duplicates.csv", "suspect_labels.csv", "classes.csv"


SUMMARY_FILE, SHEET_FILE = "audit.json", "contact_sheet.png"




_FEATURES = dict(discovery.RECORD_FEATURES, **{
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value="")})


@dataclasses.dataclass(frozen=True)
class Source:
    """The images of one split behind one data path: record shards, or the files of an image folder."""
    split: str
    path: str
    files: Tuple[str, ...]
    labels: Tuple[int, ...] = ()  # per file, for an image folder

    @property
    def is_folder(self) -> bool:
        return bool(self.labels)


@dataclasses.dataclass
class Images:
    """Every decoded image, in reading order (train first): what the findings index."""
    paths: List[str]
    splits: List[str]
    labels: List[Tuple[int, ...]]  # the class indices of each (one each in single-label data)
    keys: List[bytes]  # fingerprint of the decoded pixels and their shape
    origins: List[Tuple[str, int]]  # (file, record index) to read the image again
    embeddings: np.ndarray
    thumbnails: np.ndarray  # uint8 [N, S, S] (trainer.analysis.thumbnails): what confirms a near copy
    skipped: int


def list_sources(train_data: str, eval_data: Sequence[str], *, class_names: Sequence[str]) -> List[Source]:
    """The train source, then one source per split of each eval path, in the order given."""
    sources = _sources_of(train_data, what="--train_data", class_names=class_names, split="train")
    for path in eval_data:
        sources += _sources_of(path, what="--eval_data", class_names=class_names, split=None)
    return sources


def _sources_of(path: str, *, what: str, class_names: Sequence[str], split: Optional[str]) -> List[Source]:
    if discovery.is_image_folder(path):
        files, labels = discovery.list_image_files(path, class_names=class_names, what=what)
        return [Source(split or "eval", path, tuple(files), tuple(labels))]
    by_split: Dict[str, List[str]] = {}
    for f in discovery.list_record_files(path, what=what):
        by_split.setdefault(split or shards.shard_split(f) or "eval", []).append(f)
    return [Source(name, path, tuple(files)) for name, files in by_split.items()]


def _elements(source: Source, *, label_offset: int) -> tf.data.Dataset:
    """(origin file, record index or -1 for an image file, display path, labels [n], image bytes)
    of a source, in order."""
    if source.is_folder:
        skip = len((source.path.rstrip("/") + "/").encode())  # the path relative to the folder
        ds = tf.data.Dataset.from_tensor_slices((list(source.files), tf.constant(source.labels, tf.int64)))
        return ds.map(lambda f, label: (f, tf.constant(-1, tf.int64), tf.strings.substr(f, skip, -1), label[None],
                                        tf.io.read_file(f)))

    def records(f):
        return tf.data.TFRecordDataset(f).enumerate().map(lambda i, r: (f, i, r))

    def parse(f, i, record):
        feats = tf.io.parse_single_example(record, _FEATURES)
        name = feats["image/filename"]
        where = tf.strings.join([tf.strings.regex_replace(f, ".*/", ""), tf.strings.as_string(i)], "#")
        return (f, i, tf.where(tf.strings.length(name) > 0, name, where),
                feats[discovery.LABEL_KEY].values - label_offset, feats["image/encoded"])
    return tf.data.Dataset.from_tensor_slices(list(source.files)).flat_map(records).map(parse)


def build_dataset(source: Source, *, num_classes: int, multi_label: bool, image_size: int,
                  label_offset: int = 0, batch_size: int = BATCH_SIZE,
                  max_image_side: int = downscale.DEFAULT_MAX_IMAGE_SIDE) -> tf.data.Dataset:
    """Batches of (file, index, path, multi-hot labels, pixel fingerprint, thumbnail, eval-crop image).

    Every image, record or file, first goes through trainer.prepare's `--max_image_side` rule
    (`effnet_common.downscale`, in the graph): a phone photo in a folder and its downscaled
    record then decode to the same pixels and fingerprint, so the copy is found, and the
    whole-image decode the fingerprint needs costs a fraction.

    An image that fails to decode, or whose labels do not fit the data (outside [0, C), or
    other than one label in single-label data), is dropped and counted by trainer.data.skips, as
    the training pipeline counts it.
    """
    counter = skips.counter_for(source.split, source.path)

    def decode_one(f, i, path, labels, image_bytes):
        ok = tf.reduce_all(tf.logical_and(labels >= 0, labels < num_classes))
        if not multi_label:
            ok = tf.logical_and(ok, tf.size(labels) == 1)
        key, image_bytes = counter.enter(image_bytes, ok)
        image_bytes = downscale.fit_tensor(image_bytes, max_image_side)
        pixels = decode.decode_upright(image_bytes)  # the upright pixels, as the model sees them
        fingerprint = tf.concat([tf.fingerprint(tf.reshape(pixels, [1, -1]))[0],
                                 tf.reshape(tf.bitcast(tf.shape(pixels), tf.uint8), [-1])], 0)
        image = counter.leave(key, decode.decode_for_eval(image_bytes, image_size))
        return f, i, path, targets.multi_hot(labels, num_classes), fingerprint, thumbnails.thumbnail(pixels), image

    ds = _elements(source, label_offset=label_offset).map(decode_one, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors(log_warning=True).batch(batch_size)
    return ds.prefetch(2)


def embed_sources(sources: Sequence[Source], *, embed, total: Optional[int], **dataset_args) -> Images:
    """Embeds every image of every source once (and thumbnails it), with its progress (effnet_common.progress)."""
    out = Images([], [], [], [], [], np.zeros((0, 0), np.float32), thumbnails.empty(), 0)
    chunks, thumbs = [], [out.thumbnails]
    bar = progress.Progress(total, label="embedding", unit="image")
    for source in sources:
        logging.info("embedding %s images of %s (%d file(s))", source.split, source.path, len(source.files))
        for files, indices, paths, labels, keys, small, images in build_dataset(source, **dataset_args):
            chunks.append(embed(images))
            thumbs.append(small.numpy())
            out.paths += [p.decode("utf-8", "replace") for p in paths.numpy()]
            out.splits += [source.split] * len(paths)
            out.labels += [tuple(int(c) for c in np.flatnonzero(row)) for row in labels.numpy()]
            out.keys += [k.tobytes() for k in keys.numpy()]
            out.origins += [(f.decode(), int(i)) for f, i in zip(files.numpy(), indices.numpy())]
            bar.add(len(paths))
        out.skipped += skips.counter_for(source.split, source.path).count()
    if total and len(out.paths) < total:
        bar.update(total)  # skipped records were read too: the count ends at the total
    bar.close()
    out.embeddings = np.concatenate(chunks) if chunks else np.zeros((0, 1), np.float32)
    out.thumbnails = np.concatenate(thumbs)
    return out


def read_images(origins: Sequence[Tuple[str, int]]) -> Dict[Tuple[str, int], bytes]:
    """The encoded bytes at a few (file, record index) origins, for the contact sheet (index -1:
    an image file); each shard is read up to the last record wanted from it."""
    found, by_file = {}, {}
    for f, i in origins:
        by_file.setdefault(f, set()).add(i)
    for f, wanted in by_file.items():
        if wanted == {-1}:
            with tf.io.gfile.GFile(f, "rb") as image_file:
                found[(f, -1)] = image_file.read()
            continue
        for i, record in tf.data.TFRecordDataset(f).enumerate().as_numpy_iterator():
            if int(i) in wanted:
                found[(f, int(i))] = tf.io.parse_single_example(record, _FEATURES)["image/encoded"].numpy()
            if int(i) >= max(wanted):
                break
    return found


def audit(*, train_data: str, eval_data: Sequence[str], output_dir: str, backbone: str, weights: str,
          image_size: int = 0, labels: Optional[str] = None, label_offset: int = 0,
          duplicate_threshold: float = DEFAULT_DUPLICATE_THRESHOLD, pixel_threshold: float = DEFAULT_PIXEL_THRESHOLD,
          neighbours: int = DEFAULT_NEIGHBOURS, folds: int = DEFAULT_FOLDS, batch_size: int = BATCH_SIZE,
          max_image_side: int = downscale.DEFAULT_MAX_IMAGE_SIDE) -> dict:
    """Embeds the data and writes the findings into `output_dir`; returns audit.json's content.

    Raises:
      DataError, ConfigError, WeightsError: a bad path, labels or flag (one line each).
    """
    size = image_size or config.backbone_spec(backbone).native_size
    model_cfg = config.Model(backbone=backbone, weights=weights)  # flags first
    if not discovery.is_image_folder(train_data):
        discovery.list_record_files(train_data, what="--train_data")  # a missing path, named as such
    class_names = discovery.resolve_class_names(train_data, labels)
    sources = list_sources(train_data, eval_data, class_names=class_names)
    classifier = classifier_lib.build_classifier(model_cfg, num_classes=max(len(class_names), 2),  # fits a classifier's file
                                            image_size=size)
    embed = embeddings.image_embedder(classifier)  # before reading: weights fail fast
    multi = bool(discovery.dataset_multi_label(train_data))
    for path in [train_data, *eval_data]:
        multi |= discovery.check_labels(path, class_names=class_names, label_offset=label_offset)
    total = sum(discovery.count_examples(path) for path in [train_data, *eval_data])
    images = embed_sources(sources, embed=embed, total=total, num_classes=len(class_names), multi_label=multi,
                           image_size=size, label_offset=label_offset, batch_size=batch_size,
                           max_image_side=max_image_side)
    if not images.paths:
        raise discovery.DataError(f"--train_data {train_data}: none of its images could be decoded "
                                  f"({images.skipped} skipped); check the files are JPEG, PNG, GIF, BMP or WebP")
    splits = list(dict.fromkeys(s.split for s in sources))
    result = find(images, num_classes=len(class_names), multi_label=multi, threshold=duplicate_threshold,
                  pixel_threshold=pixel_threshold, neighbours=neighbours, folds=folds)
    summary = dict(_summary(images, result, class_names=class_names, splits=splits, multi_label=multi),
                   backbone=backbone, weights=weights, image_size=size, train_data=train_data,
                   eval_data=list(eval_data), duplicate_threshold=duplicate_threshold,
                   pixel_threshold=pixel_threshold, neighbours=neighbours, probe_folds=folds, suspect_cut=SUSPECT_CUT)
    write_outputs(output_dir, images, result, class_names=class_names, splits=splits, summary=summary)
    if summary["classes_without_train_images"]:
        logging.warning("class(es) without a train image: %s", ", ".join(summary["classes_without_train_images"]))
    return summary


@dataclasses.dataclass
class Findings:
    pairs: List[Tuple[int, int, float, bool]]  # (a, b, similarity, exact), most similar first
    suspects: List[Tuple[int, int, float]]  # (row, suggested label, score), most suspicious first


def find(images: Images, *, num_classes: int, multi_label: bool, threshold: float, neighbours: int,
         folds: int, pixel_threshold: float = DEFAULT_PIXEL_THRESHOLD) -> Findings:
    """The duplicate pairs and (single-label data) the suspect labels of the embedded images."""
    unit = findings.normalize(images.embeddings)
    exact = findings.exact_duplicate_pairs(images.keys)
    indices, sims = findings.nearest_neighbours(unit, k=neighbours + _SPARE_NEIGHBOURS)
    groups = findings.duplicate_groups(len(unit), exact)
    near = findings.near_duplicate_pairs(indices, sims, threshold=threshold, groups=groups,
                                         thumbnails=images.thumbnails, pixel_threshold=pixel_threshold)
    pairs = [(a, b, 1.0, True) for a, b in exact] + [(a, b, s, False) for a, b, s in near]
    pairs.sort(key=lambda p: (-p[2], images.splits[p[0]] == images.splits[p[1]]))  # ties: leakage first
    if multi_label:
        return Findings(pairs, [])
    labels = np.array([row[0] for row in images.labels])
    groups = findings.duplicate_groups(len(labels), pairs)
    vote = findings.neighbour_vote(indices, labels, num_classes=num_classes, k=neighbours, groups=groups)
    probe = findings.probe_probabilities(unit, labels, num_classes=num_classes, folds=folds,
                                         groups=groups) if folds else vote
    return Findings(pairs, findings.suspect_labels(labels, vote=vote, probe=probe))


def _summary(images: Images, result: Findings, *, class_names: Sequence[str], splits: Sequence[str],
             multi_label: bool) -> dict:
    counts = _class_counts(images, num_classes=len(class_names), splits=splits)
    across = [p for p in result.pairs if images.splits[p[0]] != images.splits[p[1]]]
    leaked = {p[i] for p in across for i in (0, 1) if images.splits[p[i]] != "train"
              and "train" in (images.splits[p[0]], images.splits[p[1]])}
    return {
        "images": {s: images.splits.count(s) for s in splits},
        "total_images": len(images.paths), "skipped_records": images.skipped, "multi_label": multi_label,
        "duplicate_pairs": {"total": len(result.pairs), "exact": sum(p[3] for p in result.pairs),
                            "near": sum(not p[3] for p in result.pairs),
                            "within_split": len(result.pairs) - len(across), "across_splits": len(across)},
        "eval_images_with_a_train_copy": len(leaked),
        "suspect_labels": {"listed": len(result.suspects),
                           "above_cut": sum(s >= SUSPECT_CUT for _, _, s in result.suspects),
                           "skipped": "multi-label data: a neighbour vote over label sets is not done; "
                                      "suspect_labels.csv holds its header only" if multi_label else None},
        "classes_without_train_images": [n for n, c in zip(class_names, counts.get("train", [])) if c == 0],
    }


def _class_counts(images: Images, *, num_classes: int, splits: Sequence[str]) -> Dict[str, np.ndarray]:
    """Images holding each class, per split."""
    counts = {s: np.zeros(num_classes, np.int64) for s in splits}
    for split, row in zip(images.splits, images.labels):
        counts[split][list(row)] += 1
    return counts


def write_outputs(output_dir: str, images: Images, result: Findings, *, class_names: Sequence[str],
                  splits: Sequence[str], summary: dict) -> None:
    """The CSV files, the contact sheet and audit.json (last: its presence means complete)."""
    join = lambda name: fileio.join(output_dir, name)  # noqa: E731
    p, s = images.paths, images.splits
    fileio.write_text_atomic(join(DUPLICATES_FILE), fileio.csv_text(
        ("path_a", "split_a", "path_b", "split_b", "similarity"),
        [(p[a], s[a], p[b], s[b], f"{sim:.6f}") for a, b, sim, _ in result.pairs]))
    fileio.write_text_atomic(join(SUSPECTS_FILE), fileio.csv_text(
        ("path", "split", "label", "suggested_label", "score"),
        [(p[i], s[i], class_names[images.labels[i][0]], class_names[g], f"{score:.6f}")
         for i, g, score in result.suspects]))
    counts = _class_counts(images, num_classes=len(class_names), splits=splits)
    fileio.write_text_atomic(join(CLASSES_FILE), fileio.csv_text(
        ("class", *splits, "total"),
        [(name, *(int(counts[x][c]) for x in splits), int(sum(counts[x][c] for x in splits)))
         for c, name in enumerate(class_names)]))
    summary["contact_sheet"] = SHEET_FILE if _write_sheet(join(SHEET_FILE), images, result,
                                                          class_names=class_names) else None
    fileio.write_json_atomic(join(SUMMARY_FILE), summary)
    logging.info("audit of %d image(s) written to %s", len(p), output_dir)


def _write_sheet(path: str, images: Images, result: Findings, *, class_names: Sequence[str]) -> bool:
    """contact_sheet.png: the top duplicate pairs side by side, then the top suspects."""
    pairs, suspects = result.pairs[:SHEET_PAIRS], result.suspects[:SHEET_SUSPECTS]
    if not pairs and not suspects:
        return False
    rows = [i for a, b, _, _ in pairs for i in (a, b)] + [i for i, _, _ in suspects]
    encoded = read_images([images.origins[i] for i in rows])
    name = lambda i: f"{os.path.basename(images.paths[i])[:22]} ({images.splits[i]})"  # noqa: E731
    image = lambda i: encoded[images.origins[i]]  # noqa: E731
    tiles = []
    for a, b, sim, exact in pairs:  # side by side (an even number of columns); red: across splits
        across = images.splits[a] != images.splits[b]
        tiles += [(image(a), name(a), across),
                  (image(b), f"{name(b)}\n{'exact copy' if exact else f'similarity {sim:.3f}'}", across)]
    for i, suggested, score in suspects:
        label = class_names[images.labels[i][0]]
        tiles.append((image(i), f"{name(i)}\n{label} -> {class_names[suggested]} ({score:.2f})", True))
    plots.plot_image_grid(tiles, path=path, columns=SHEET_COLUMNS)
    return True
