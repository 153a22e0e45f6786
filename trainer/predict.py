"""Batch prediction and feature extraction through the exported SavedModel.

    python -m trainer.predict --export_dir=EXPORT_DIR|MODEL_DIR --input=FILES|GLOB|FOLDER|gs://... \
        --output=preds.csv [--features_output=feats.npy] [--explain_output=DIR] [--top_k=K] [--batch_size=N]

Runs the serving signatures themselves (`serving_default`, and `features` when asked), so the
answers are exactly what TF Serving will answer: same decoding, same crop, same network. Writes
one CSV row per image (path, then the top-k classes and scores), prints the same top-k per image
on stdout, and with --features_output an [N, D] float32 .npy whose row i is the embedding of the
CSV's row i. An image that cannot be read or decoded is listed on stderr and skipped: it gets no
row, so rows and features stay aligned. With --explain_output, Grad-CAM explanations of each
image's predicted class (each predicted label, multi-label) through the run's Keras model
(trainer.analysis.gradcam; the export must sit in its run folder, MODEL_DIR/export/N).

The library side (`read_files`, `run_batches`, and trainer.inference.exported's `load_export`) is shared
with trainer.evaluate.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: prepare the process before TensorFlow loads
    from effnet_common import process
    process.prepare()

import sys
from typing import List, Optional, Sequence, Tuple, Union

from absl import flags, logging
import tensorflow as tf  # pylint: disable=wrong-import-order
from effnet_common import downscale, fileio, flagutil
from trainer.analysis import gradcam
from trainer.evaluation import metrics
from trainer.evaluation.prediction_rows import csv_header, top_k_rows  # shared with trainer.cloud.batch_predict
from trainer.beam import options as beam_options
from trainer.inference import prediction
from trainer.inference.exported import Export, PredictError, as_export


# Rows printed on stdout; the CSV always has them all.
DEFAULT_PRINT_LIMIT = 100
FLAGS = flags.FLAGS


USAGE = flagutil.Usage(
    summary="Classify images with an export: the top classes of each image in a CSV, and a table on stdout.",
    example="python -m trainer.predict --export_dir=runs/first --input=new_photos --output=predictions.csv",
    reference="docs/serving.md")


def define_shared_flags() -> None:
    """--export_dir, --batch_size and --top_k, as trainer.evaluate uses them too."""
    flagutil.define("string", "export_dir", None, "Export folder (MODEL_DIR/export/N) or MODEL_DIR: its newest numeric "
                    "export is used.", group="model", required=True)
    flagutil.define("integer", "batch_size", prediction.DEFAULT_BATCH_SIZE, "Images per call.", group="performance")
    flagutil.define("integer", "max_image_side", downscale.DEFAULT_MAX_IMAGE_SIDE, "Photos whose longer side is "
                    "over this many pixels are downscaled first, by the rule trainer.prepare stores records by, so a "
                    "phone photo is seen as training saw it; 0: as they are.", group="input")
    flagutil.define("integer", "top_k", metrics.DEFAULT_TOP_K, "Classes per image (capped at the number of classes).",
                    group="outputs")


def define_flags() -> None:
    """Defines the command's flags only when it runs as a command (or in tests), so that
    importing it beside other entry points clashes with none."""
    define_shared_flags()
    flagutil.define("list", "input", [], "Images: comma-separated files, globs or folders (local or gs://); "
                    "positional arguments add more and are not split at commas, so a file whose name holds a comma "
                    "goes there: python -m trainer.predict --export_dir=E --output=O.csv 'photos/a,b.jpg'.",
                    group="input", required="unless images are given as arguments")
    flagutil.define("string", "output", None, "The CSV to write (local or gs://).", group="outputs", required=True)
    flagutil.define("string", "features_output", None, "Also write the features (embeddings) as an [N, D] .npy; "
                    "row i = CSV row i.", group="outputs")
    flagutil.define("string", "explain_output", None, "Also write Grad-CAM explanations to this folder: for each "
                    "image and predicted class (each predicted label, multi-label) an overlay PNG and the heatmap as "
                    ".npy (float32 in 0..1 at the model's input side, after the evaluation crop), listed in "
                    "explanations.csv. Needs the export's run folder (MODEL_DIR/export/N) for the Keras model.",
                    group="outputs")
    flagutil.define("integer", "print_limit", DEFAULT_PRINT_LIMIT, "Images printed on stdout (-1: all); the CSV "
                    "has every row.", group="outputs")
    beam_options.define_flags()
    flags.adopt_module_key_flags(beam_options)  # --runner, --beam_options: this command's own


def _check_flags(argv: Sequence[str]) -> Tuple[List[str], int]:
    """The input specs and batch size, or a FlagError naming the flag to fix."""
    if not FLAGS.export_dir:
        raise flagutil.FlagError("--export_dir is required: pass an export folder (MODEL_DIR/export/N) or a MODEL_DIR")
    if not FLAGS.output:
        raise flagutil.FlagError("--output is required: pass the CSV path to write (local or gs://)")
    if FLAGS.max_image_side < 0:
        raise flagutil.FlagError(f"--max_image_side={FLAGS.max_image_side}: pass a side in pixels or 0 to read photos "
                                 "as they are")
    if FLAGS.top_k < 1:
        raise flagutil.FlagError(f"--top_k={FLAGS.top_k}: pass 1 or more")
    if FLAGS.batch_size < 1:
        raise flagutil.FlagError(f"--batch_size={FLAGS.batch_size}: pass 1 or more")
    specs = list(FLAGS.input) + list(argv[1:])
    if not specs:
        raise flagutil.FlagError("--input is required: pass image files, a glob or a folder (local or gs://)")
    return specs, FLAGS.batch_size


def run(*, model: Union[str, Export], specs: Sequence[str], output: str, features_output: Optional[str], top_k: int,
        batch_size: int, print_limit: int = DEFAULT_PRINT_LIMIT,
        max_image_side: int = downscale.DEFAULT_MAX_IMAGE_SIDE,
        explain_output: Optional[str] = None) -> prediction.Predictions:
    """The command: predicts, writes the CSV (and .npy, and explanations), prints rows and skipped images."""
    paths = prediction.list_inputs(specs)
    export = as_export(model)
    explainer = gradcam.explainer_for_export(export) if explain_output else None  # no run: fail before predicting
    k = min(top_k, len(export.class_names))
    if k < top_k:
        logging.info("--top_k=%d is more than the model's %d classes: writing %d", top_k, k, k)
    predictions = prediction.predict_files(export, paths, batch_size=batch_size, with_features=bool(features_output),
                                           max_image_side=max_image_side)
    _log_skipped(predictions.skipped)
    if not predictions.paths:
        raise PredictError(f"none of the {len(paths)} input image(s) could be read or decoded (see the list "
                           f"above): pass {fileio.IMAGE_FORMATS_TEXT} files")
    multi = export.thresholds is not None
    rows = top_k_rows(predictions, class_names=export.class_names, top_k=k, thresholds=export.thresholds)
    fileio.write_text_atomic(output, fileio.csv_text(csv_header(k, multi_label=multi), rows))
    if features_output:
        prediction.write_features(features_output, predictions.features)
    explained = explainer and gradcam.explain_files(
        explainer, export,
        prediction.read_files(predictions.paths, batch_size=batch_size, max_image_side=max_image_side),
        expected=predictions.probabilities, output_dir=explain_output)
    print(format_rows(rows, limit=print_limit, multi_label=multi))
    print(f"wrote {len(rows)} row(s) to {output}" +
          (f" and features {predictions.features.shape} to {features_output}" if features_output else "") +
          (f" and {explained} explanation(s) to {explain_output}" if explainer else ""))
    return predictions


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


def _log_skipped(skipped: Sequence[Tuple[str, str]]) -> None:
    if not skipped:
        return
    lines = [f"skipped {len(skipped)} image(s) that could not be read or decoded:"]
    lines += [f"  {path}: {why}" for path, why in skipped]
    print("\n".join(lines), file=sys.stderr)


def _run_on_beam(settings: beam_options.BeamSettings, *, specs: Sequence[str], batch_size: int) -> None:
    """--runner=<a Beam runner>: a pipeline (trainer.beam.predicting) writes the CSV (rows in no
    particular order), NAME.skipped.csv beside it and the features as TFRecord shards."""
    if FLAGS.explain_output:
        raise flagutil.FlagError("--explain_output runs on this machine only: drop it or pass --runner=local")
    if (FLAGS.features_output or "").endswith(".npy"):
        raise flagutil.FlagError(f"--features_output={FLAGS.features_output}: on --runner={FLAGS.runner} features are "
                                 "TFRecord shards PREFIX-NNNNN-of-NNNNN.tfrecord; pass a prefix, e.g. gs://B/run/features")
    from trainer.beam import predicting  # Apache Beam only where a Beam runner is asked for
    summary = predicting.predict(settings, predicting.Request(
        export_dir=FLAGS.export_dir, output=FLAGS.output, features_output=FLAGS.features_output, top_k=FLAGS.top_k,
        batch_size=batch_size, max_image_side=FLAGS.max_image_side), specs=specs)
    if summary.dry_run_steps:
        print(f"dry run: the predict job's steps {', '.join(summary.dry_run_steps)}; job file "
              f"{settings.job_file or '(no --dataflow_job_file)'}; nothing submitted")
        return
    _log_skipped(summary.skipped)
    print(f"wrote {summary.rows if summary.rows is not None else 'the'} row(s) to {FLAGS.output} on {settings.runner}"
          + (f" and feature shards {FLAGS.features_output}-*.tfrecord" if FLAGS.features_output else ""))


def main(argv) -> None:
    specs, batch_size = _check_flags(argv)
    settings = beam_options.from_flags(runner=FLAGS.runner, beam_options=FLAGS.beam_options)
    if settings:
        _run_on_beam(settings, specs=specs, batch_size=batch_size)
        return
    run(model=FLAGS.export_dir, specs=specs, output=FLAGS.output, features_output=FLAGS.features_output,
        top_k=FLAGS.top_k, batch_size=batch_size, print_limit=FLAGS.print_limit, max_image_side=FLAGS.max_image_side,
        explain_output=FLAGS.explain_output)


def run_main() -> None:
    """`python -m trainer.predict` and effnet-predict; unreadable paths and failing reads end in one line too."""
    flagutil.run(main, define_flags, usage=USAGE, user_errors=(tf.errors.OpError, OSError))


if __name__ == "__main__":
    run_main()
