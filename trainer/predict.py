"""Batch prediction and feature extraction through the exported SavedModel.

    python -m trainer.predict --export_dir=EXPORT_DIR|MODEL_DIR --input=FILES|GLOB|FOLDER|gs://... \
        --output=preds.csv [--features_output=feats.npy] [--top_k=K] [--batch_size=N]

Runs the serving signatures themselves (`serving_default`, and `features` when asked), so the
answers are exactly what TF Serving will answer: same decoding, same crop, same network. Writes
one CSV row per image (path, then the top-k classes and scores), prints the same top-k per image
on stdout, and with --features_output an [N, D] float32 .npy whose row i is the embedding of the
CSV's row i. An image that cannot be read or decoded is listed on stderr and skipped: it gets no
row, so rows and features stay aligned.

The library side (`read_files`, `run_batches`, and trainer.exported's `load_export`) is shared
with trainer.evaluate.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: prepare the process before TensorFlow loads
    from effnet_common import process
    process.prepare()

import collections
import concurrent.futures
import dataclasses
import io
import sys
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from absl import flags, logging
import numpy as np

import tensorflow as tf  # pylint: disable=wrong-import-order
import tf_keras as keras  # pylint: disable=wrong-import-order

from effnet_common import fileio, flagutil
from trainer import reports
from trainer.exported import Export, PredictError, as_export

_READ_THREADS = 16
DEFAULT_BATCH_SIZE = 32
# Rows printed on stdout; the CSV always has them all.
DEFAULT_PRINT_LIMIT = 100


# --------------------------------------------------------------------------- inputs

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
                               f"e.g. --input='DIR/*/*.jpg'); folders are searched for {fileio.IMAGE_EXTENSIONS_TEXT}")
        paths += matched
    if not paths:
        raise PredictError("--input is empty: pass image files, a glob or a folder (local or gs://)")
    return list(dict.fromkeys(paths))


def _read(path: str) -> Tuple[Optional[bytes], str]:
    """(bytes, '') or (None, why) for one file."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except (tf.errors.OpError, OSError) as e:
        return None, flagutil.one_line(e, limit=300)
    return (data, "") if data else (None, "empty file")


def read_files(paths: Sequence[str], *, batch_size: int,
               ahead: int = 2) -> Iterator[List[Tuple[str, Optional[bytes], str]]]:
    """Batches of (path, bytes or None, why not), read by a thread pool `ahead` batches in
    advance, so reading (slow on gs://) overlaps the model and memory stays bounded."""
    starts = iter(range(0, len(paths), batch_size))
    queue: collections.deque = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(_READ_THREADS) as pool:
        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                queue.append([(p, pool.submit(_read, p)) for p in paths[start:start + batch_size]])
        for _ in range(ahead):
            submit_next()
        while queue:
            batch = queue.popleft()
            submit_next()
            yield [(p, *future.result()) for p, future in batch]


# --------------------------------------------------------------------------- running the export

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
    """Predicts batches of (key, bytes or None, why not), with a progress bar over `total`."""
    progress = keras.utils.Progbar(total, unit_name="image")
    done = 0
    for batch in batches:
        unreadable = [(key, why) for key, data, why in batch if data is None]
        readable = [(key, data) for key, data, _ in batch if data is not None]
        result = predict_batch(export, [k for k, _ in readable], [d for _, d in readable],
                               with_features=with_features)
        result.skipped = unreadable + result.skipped
        done += len(batch)
        progress.update(done)
        yield result


@dataclasses.dataclass
class Predictions:
    """All answers of a run, row i for paths[i]; `skipped` lists (path, reason)."""
    paths: List[str]
    probabilities: np.ndarray
    features: Optional[np.ndarray]
    skipped: List[Tuple[str, str]]


def predict_files(model: Union[str, Export], paths: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
                  with_features: bool = False) -> Predictions:
    """The export's probabilities (and features) for image files, bad images skipped."""
    export = as_export(model)
    kept, probabilities, features, skipped = [], [], [], []
    for batch in run_batches(export, read_files(list(paths), batch_size=batch_size), total=len(paths),
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


# --------------------------------------------------------------------------- outputs

def top_k_rows(predictions: Predictions, *, class_names: Sequence[str], top_k: int,
               thresholds: Optional[np.ndarray] = None) -> List[list]:
    """[path, class_1, score_1, ..., class_k, score_k] per image, most probable first; for a
    multi-label export (`thresholds`), [path, labels, class_1, ...] where labels are the classes
    at or over their thresholds, joined by '|'."""
    top = reports.top_k_indices(predictions.probabilities, top_k)
    rows = []
    for path, probs, indices in zip(predictions.paths, predictions.probabilities, top):
        row = [path]
        if thresholds is not None:
            row.append("|".join(n for n, p, t in zip(class_names, probs, thresholds) if p >= t))
        for i in indices:
            row += [class_names[i], f"{probs[i]:.6f}"]
        rows.append(row)
    return rows


def csv_header(top_k: int, *, multi_label: bool = False) -> List[str]:
    return ["path"] + (["labels"] if multi_label else []) + [
        f"{what}_{i}" for i in range(1, top_k + 1) for what in ("class", "score")]


def write_features(path: str, features: np.ndarray) -> None:
    """The [N, D] float32 array as .npy, atomically (local or gs://)."""
    buf = io.BytesIO()
    np.save(buf, features.astype(np.float32), allow_pickle=False)
    fileio.write_bytes_atomic(path, buf.getvalue())


def format_rows(rows: Sequence[list], *, limit: int, multi_label: bool = False) -> str:
    """The top-k per image for a reader: 'path  class 0.912 | class 0.051 | ...' (multi-label:
    'path  [labels]  class 0.912 | ...')."""
    shown = rows if limit < 0 else rows[:limit]
    width = min(max((len(r[0]) for r in shown), default=0), 80)
    first = 2 if multi_label else 1
    lines = []
    for row in shown:
        pairs = " | ".join(f"{row[i]} {float(row[i + 1]):.3f}" for i in range(first, len(row), 2))
        labels = f"[{row[1]}]  " if multi_label else ""
        lines.append(f"{row[0]:<{width}}  {labels}{pairs}")
    if len(rows) > len(shown):
        lines.append(f"... {len(rows) - len(shown)} more row(s) in the CSV")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI

FLAGS = flags.FLAGS


def define_shared_flags() -> None:
    """--export_dir, --batch_size and --top_k, as trainer.evaluate uses them too."""
    flagutil.define("string", "export_dir", None, "Export folder (MODEL_DIR/export/N) or MODEL_DIR: its newest numeric "
                    "export is used.")
    flagutil.define("integer", "batch_size", DEFAULT_BATCH_SIZE, "Images per call.")
    flagutil.define("integer", "top_k", reports.DEFAULT_TOP_K, "Classes per image (capped at the number of classes).")


def define_flags() -> None:
    """Defines the command's flags only when it runs as a command (or in tests), so that
    importing it beside other entry points clashes with none."""
    define_shared_flags()
    flagutil.define("list", "input", [], "Images: comma-separated files, globs or folders (local or gs://); "
                    "positional arguments add more.")
    flagutil.define("string", "output", None, "The CSV to write (local or gs://).")
    flagutil.define("string", "features_output", None, "Also write the features (embeddings) as an [N, D] .npy; "
                    "row i = CSV row i.")
    flagutil.define("integer", "print_limit", DEFAULT_PRINT_LIMIT, "Images printed on stdout (-1: all); the CSV "
                    "has every row.")


def _check_flags(argv: Sequence[str]) -> Tuple[List[str], int]:
    """The input specs and batch size, or a FlagError naming the flag to fix."""
    if not FLAGS.export_dir:
        raise flagutil.FlagError("--export_dir is required: pass an export folder (MODEL_DIR/export/N) or a MODEL_DIR")
    if not FLAGS.output:
        raise flagutil.FlagError("--output is required: pass the CSV path to write (local or gs://)")
    if FLAGS.top_k < 1:
        raise flagutil.FlagError(f"--top_k={FLAGS.top_k}: pass 1 or more")
    if FLAGS.batch_size < 1:
        raise flagutil.FlagError(f"--batch_size={FLAGS.batch_size}: pass 1 or more")
    specs = list(FLAGS.input) + list(argv[1:])
    if not specs:
        raise flagutil.FlagError("--input is required: pass image files, a glob or a folder (local or gs://)")
    return specs, FLAGS.batch_size


def run(*, model: Union[str, Export], specs: Sequence[str], output: str, features_output: Optional[str], top_k: int,
        batch_size: int, print_limit: int = DEFAULT_PRINT_LIMIT) -> Predictions:
    """The command: predicts, writes the CSV (and .npy), prints rows and skipped images."""
    paths = list_inputs(specs)
    export = as_export(model)
    k = min(top_k, len(export.class_names))
    if k < top_k:
        logging.info("--top_k=%d is more than the model's %d classes: writing %d", top_k, k, k)
    predictions = predict_files(export, paths, batch_size=batch_size, with_features=bool(features_output))
    _log_skipped(predictions.skipped)
    if not predictions.paths:
        raise PredictError(f"none of the {len(paths)} input image(s) could be read or decoded (see the list "
                           f"above): pass {fileio.IMAGE_FORMATS_TEXT} files")
    multi = export.thresholds is not None
    rows = top_k_rows(predictions, class_names=export.class_names, top_k=k, thresholds=export.thresholds)
    fileio.write_text_atomic(output, reports.csv_text(csv_header(k, multi_label=multi), rows))
    if features_output:
        write_features(features_output, predictions.features)
    print(format_rows(rows, limit=print_limit, multi_label=multi))
    print(f"wrote {len(rows)} row(s) to {output}" +
          (f" and features {predictions.features.shape} to {features_output}" if features_output else ""))
    return predictions


def _log_skipped(skipped: Sequence[Tuple[str, str]]) -> None:
    if not skipped:
        return
    lines = [f"skipped {len(skipped)} image(s) that could not be read or decoded:"]
    lines += [f"  {path}: {why}" for path, why in skipped]
    print("\n".join(lines), file=sys.stderr)


def main(argv) -> None:
    specs, batch_size = _check_flags(argv)
    run(model=FLAGS.export_dir, specs=specs, output=FLAGS.output, features_output=FLAGS.features_output,
        top_k=FLAGS.top_k, batch_size=batch_size, print_limit=FLAGS.print_limit)


def run_main() -> None:
    """`python -m trainer.predict` and effnet-predict; unreadable paths and failing reads end in one line too."""
    flagutil.run(main, define_flags, user_errors=(tf.errors.OpError, OSError))


if __name__ == "__main__":
    run_main()
