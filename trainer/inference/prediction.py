"""Batch prediction and feature extraction through an exported SavedModel (the library of
`python -m trainer.predict`, shared with evaluation and the leakage check).

Runs the serving signatures themselves (`serving_default`, and `features` when asked), so the
answers are exactly what TF Serving will answer: same decoding, same crop, same network. An image
that cannot be read or decoded is skipped with its reason: it gets no row, so rows and features
stay aligned.
"""
from __future__ import annotations

import io
from typing import List, Optional, Sequence, Tuple
import numpy as np
import tensorflow as tf
import collections
import concurrent.futures
import dataclasses
from typing import Callable, Iterable, Iterator, Union
from effnet_common import downscale, fileio, flagutil, progress
from trainer.inference.exported import Export, PredictError, as_export


_READ_THREADS = 16


DEFAULT_BATCH_SIZE = 32


def list_inputs(specs: Sequence[str]) -> List[str]:
    """The image paths named by files, globs and folders, local or gs://, in the order given,
    each path once. A file or glob is taken as given (its decode says whether it is an image);
    a folder gives `fileio.list_images`, the listing every command follows, each other file
    reported with a warning.

    Raises:
      PredictError: a spec that names nothing, so a typo is not a silently smaller run.
    """
    paths: List[str] = []
    for spec in filter(None, (s.strip() for s in specs)):
        if fileio.has_glob(spec):
            matched = sorted(p for p in tf.io.gfile.glob(spec) if not tf.io.gfile.isdir(p))
        elif tf.io.gfile.isdir(spec):
            matched = fileio.list_images(spec)
        else:
            matched = [spec] if tf.io.gfile.exists(spec) else []
        if not matched:
            raise PredictError(f"--input {spec} matches no image file: check the path or glob (quote globs, "
                               f"e.g. --input='DIR/*/*.jpg'); folders are searched for {fileio.IMAGE_EXTENSIONS_TEXT}; "
                               "--input splits at commas: pass a path whose name holds one as an argument after "
                               "the flags (arguments are not split)")
        paths += matched
    if not paths:
        raise PredictError("--input is empty: pass image files, a glob or a folder (local or gs://)")
    return list(dict.fromkeys(paths))


def read_image(path: str, max_image_side: int = 0) -> Tuple[Optional[bytes], str]:
    """(bytes, '') or (None, why) for one file; a photo over `max_image_side` downscaled by the
    rule prepare stores records by (`effnet_common.downscale`)."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except (tf.errors.OpError, OSError) as e:
        return None, flagutil.one_line(e, limit=300)
    return (downscale.fit(data, max_side=max_image_side), "") if data else (None, "empty file")


def read_files(paths: Sequence[str], *, batch_size: int, ahead: int = 2,
               max_image_side: int = 0) -> Iterator[List[Tuple[str, Optional[bytes], str]]]:
    """Batches of (path, bytes or None, why not), read (and photos over `max_image_side`
    downscaled, as prepare stores them; 0: as they are) by a thread pool `ahead` batches in
    advance, so reading (slow on gs://) overlaps the model and memory stays bounded."""
    starts = iter(range(0, len(paths), batch_size))
    queue: collections.deque = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(_READ_THREADS) as pool:
        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                queue.append([(p, pool.submit(read_image, p, max_image_side)) for p in paths[start:start + batch_size]])
        for _ in range(ahead):
            submit_next()
        while queue:
            batch = queue.popleft()
            submit_next()
            yield [(p, *future.result()) for p, future in batch]


@dataclasses.dataclass
class Batch:
    """The export's answers for the good images of one input batch, in input order.

    `keys` are the callers' (e.g. paths), `skipped` holds (key, reason) of the bad images.
    """
    keys: list
    images: List[bytes]
    probabilities: np.ndarray
    features: Optional[np.ndarray]
    skipped: List[Tuple[object, str]]


def _call(fn: Callable, images: Sequence[bytes], output: str) -> np.ndarray:
    return fn(image_bytes=tf.constant(list(images), tf.string))[output].numpy()


def _good_subset(export: Export, keys: list, images: List[bytes]) -> Tuple[list, List[bytes], list]:
    """One image at a time, to find which of a failed batch the export cannot decode."""
    good_keys, good_images, skipped = [], [], []
    for key, image in zip(keys, images):
        try:
            _call(export.serve, [image], "probabilities")
        except tf.errors.InvalidArgumentError as e:
            skipped.append((key, flagutil.one_line(e, limit=300)))
            continue
        good_keys.append(key)
        good_images.append(image)
    return good_keys, good_images, skipped


def predict_batch(export: Export, keys: list, images: List[bytes], *, with_features: bool) -> Batch:
    """Runs `serving_default` (and `features`) on one batch.

    An undecodable image fails the whole call (TF Serving answers INVALID_ARGUMENT the same
    way); only then are the images tried one by one and the bad ones skipped, so good input
    costs one call per batch.
    """
    skipped: list = []
    try:
        probabilities = _call(export.serve, images, "probabilities") if images else None
    except tf.errors.InvalidArgumentError:
        keys, images, skipped = _good_subset(export, keys, images)
        probabilities = _call(export.serve, images, "probabilities") if images else None
    if probabilities is None:
        probabilities = np.zeros((0, len(export.class_names)), np.float32)
    features = None
    if with_features:
        features = _call(export.features, images, "features") if images else None
    return Batch(keys=keys, images=images, probabilities=probabilities, features=features, skipped=skipped)


def run_batches(export: Export, batches: Iterable[List[Tuple[object, Optional[bytes], str]]], *,
                total: int, with_features: bool = False) -> Iterator[Batch]:
    """Predicts batches of (key, bytes or None, why not), its progress over `total` images on
    stderr (effnet_common.progress: a bar on a terminal, lines in a log), never in the results."""
    with progress.Progress(total, label="predicting", unit="image") as bar:
        for batch in batches:
            unreadable = [(key, why) for key, data, why in batch if data is None]
            readable = [(key, data) for key, data, _ in batch if data is not None]
            result = predict_batch(export, [k for k, _ in readable], [d for _, d in readable],
                                   with_features=with_features)
            result.skipped = unreadable + result.skipped
            bar.add(len(batch))
            yield result


@dataclasses.dataclass
class Predictions:
    """All answers of a run, row i for paths[i]; `skipped` lists (path, reason)."""
    paths: List[str]
    probabilities: np.ndarray
    features: Optional[np.ndarray]
    skipped: List[Tuple[str, str]]


def predict_files(model: Union[str, Export], paths: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
                  with_features: bool = False, max_image_side: int = 0) -> Predictions:
    """The export's probabilities (and features) for image files, bad images skipped; photos
    over `max_image_side` downscaled first, as prepare stores them."""
    export = as_export(model)
    kept, probabilities, features, skipped = [], [], [], []
    reads = read_files(list(paths), batch_size=batch_size, max_image_side=max_image_side)
    for batch in run_batches(export, reads, total=len(paths),
                             with_features=with_features):
        kept += batch.keys
        probabilities.append(batch.probabilities)
        features.append(batch.features)
        skipped += batch.skipped
    return Predictions(
        paths=kept, probabilities=stack_rows(probabilities, width=len(export.class_names)),
        features=stack_rows(features, width=0) if with_features else None, skipped=skipped)


def stack_rows(parts: Sequence[Optional[np.ndarray]], *, width: int) -> np.ndarray:
    """The row blocks of all batches as one float32 array; [0, width] when there is none."""
    parts = [p for p in parts if p is not None]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, width), np.float32)


def write_features(path: str, features: np.ndarray) -> None:
    """The [N, D] float32 array as .npy, atomically (local or gs://)."""
    buf = io.BytesIO()
    np.save(buf, features.astype(np.float32), allow_pickle=False)
    fileio.write_bytes_atomic(path, buf.getvalue())


