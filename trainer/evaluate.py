"""Evaluation reports: the exported SavedModel over labelled data.

    python -m trainer.evaluate --export_dir=EXPORT_DIR|MODEL_DIR --data=GLOB|FOLDER --output_dir=DIR

It measures what will be served: the raw encoded images (TFRecord `image/encoded`, or the files
of a class-folder tree) go through the export's `serving_default` signature, the same decoding
and network TF Serving runs, never a re-implementation of them. The report in DIR:

  metrics.json            accuracy, top-k accuracy, macro and weighted precision/recall/F1,
                          balanced accuracy, log loss, calibration error, most-confused pairs
  per_class.csv           precision, recall, F1, support, predicted count per class
  confusion_matrix.csv    raw counts (row: true, column: predicted), label order
  confusion_matrix.png    row-normalised, sorted, labels thinned: readable with 100+ classes
  confused_pairs.csv      the largest off-diagonal cells
  worst.csv / worst_images.png   the examples given the lowest probability for their true class

A multi-label export (it carries assets/thresholds.txt) gets the multi-label report instead:
metrics.json with mean average precision, micro and macro F1 and precision/recall at the
export's thresholds, subset accuracy; per_class.csv with each class's average precision,
threshold, precision, recall, F1 and support; worst.csv / worst_images.png by binary
cross-entropy. A class of labels.txt without an example in the data is listed in metrics.json
(`classes_without_examples`) and logged as a warning.

Undecodable images are skipped, counted (`skipped_images`) and listed in skipped.csv. Class
names are the export's own (assets/labels.txt), so the report reads labels as the model does.
`write_report` is what training calls for its validation split.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: prepare the process before TensorFlow loads
    from effnet_common import process
    process.prepare()

from typing import Sequence
from absl import flags
import tensorflow as tf  # pylint: disable=wrong-import-order
from effnet_common import flagutil
from trainer import predict
from trainer.evaluation import evaluator


FLAGS = flags.FLAGS


USAGE = flagutil.Usage(
    summary="Report how an export does on labelled images: metrics, per-class table, confusion matrix, worst images.",
    example="python -m trainer.evaluate --export_dir=runs/first --data='data/test-*.tfrecord' --output_dir=report",
    reference="docs/evaluate.md")


def define_flags() -> None:
    """Defines the command's flags only when it runs as a command (or in tests), so that
    importing it beside other entry points clashes with none."""
    predict.define_shared_flags()
    flagutil.define("string", "data", None, "Labelled data: TFRecord glob or a folder of class folders (local or gs://).",
                    group="data", required=True)
    flagutil.define("string", "output_dir", None, "Where the report goes (local or gs://).",
                    group="outputs", required=True)
    flagutil.define("integer", "label_offset", 0, "Subtracted from image/class/label (1 for Google's ImageNet shards).",
                    group="data")
    flagutil.define("integer", "worst", evaluator.DEFAULT_WORST, "Worst-classified images to list.", group="outputs")
    for name in ("export_dir", "batch_size", "top_k", "max_image_side"):  # listed by --help beside this module's own
        flags.declare_key_flag(name)


def _check_flags(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise flagutil.FlagError(f"unexpected argument(s) {' '.join(argv[1:])}: pass --data=GLOB|FOLDER")
    for name, fix in (("export_dir", "an export folder (MODEL_DIR/export/N) or a MODEL_DIR"),
                      ("data", "a TFRecord glob or a folder of class folders"),
                      ("output_dir", "the folder to write the report into")):
        if not getattr(FLAGS, name):
            raise flagutil.FlagError(f"--{name} is required: pass {fix}")
    for name in ("batch_size", "top_k"):
        if getattr(FLAGS, name) < 1:
            raise flagutil.FlagError(f"--{name}={getattr(FLAGS, name)}: pass 1 or more")
    if FLAGS.worst < 0 or FLAGS.label_offset < 0 or FLAGS.max_image_side < 0:
        raise flagutil.FlagError("--worst, --label_offset and --max_image_side must be 0 or more")


def main(argv) -> None:
    _check_flags(argv)
    metrics = evaluator.write_report(FLAGS.export_dir, data_path=FLAGS.data, output_dir=FLAGS.output_dir,
                           batch_size=FLAGS.batch_size, label_offset=FLAGS.label_offset,
                           top_k=FLAGS.top_k, worst=FLAGS.worst, max_image_side=FLAGS.max_image_side)
    print("\n".join(evaluator.summary_lines(metrics)))
    print(f"report: {FLAGS.output_dir}")


def run_main() -> None:
    """`python -m trainer.evaluate` and effnet-evaluate; unreadable paths and failing reads end in one line too."""
    flagutil.run(main, define_flags, usage=USAGE, user_errors=(tf.errors.OpError, OSError))


if __name__ == "__main__":
    run_main()
