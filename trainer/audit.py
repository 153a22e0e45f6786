r"""python -m trainer.audit: duplicates, leakage and suspect labels, found in the embeddings.

    python -m trainer.audit --train_data=GLOB|FOLDER [--eval_data=GLOB|FOLDER[,...]] \
        --backbone=efficientnet-lite0 --weights=imagenet --image_size=224 --output_dir=DIR

Every image is embedded once, as the frozen phase embeds it (`decode_for_eval`, the backbone in
inference mode: `embeddings.image_embedder`); the findings are pure numpy (trainer.analysis.findings).
Written into DIR (each file atomically; local or gs://):

  duplicates.csv       path_a,split_a,path_b,split_b,similarity: exact copies (same decoded pixels) and
                       near copies (re-encoded, resized, mirrored), within and across splits
  suspect_labels.csv   path,split,label,suggested_label,score: labels the nearest neighbours and
                       a cross-validated linear probe disagree with (header only for multi-label data)
  classes.csv          images per class and split
  audit.json           the summary: counts, thresholds, leakage, classes without train images
  contact_sheet.png    the top duplicate pairs side by side and the top suspects

Split names: train, and for each eval path the split its shard names say (`validation-*`,
`test-*`), else eval. Undecodable records are skipped and counted. docs/data.md says how to
read each file and what to do about each finding.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: prepare the process before TensorFlow loads
    from effnet_common import process
    process.prepare()

from typing import Sequence
from absl import flags
import tensorflow as tf  # pylint: disable=wrong-import-order
from effnet_common import downscale, fileio, flagutil, gcs
from trainer.analysis import auditing
from trainer.configs import backbones, config


FLAGS = flags.FLAGS


USAGE = flagutil.Usage(
    summary="Audit labelled images before training: near copies (within and across splits) and suspect labels.",
    example="python -m trainer.audit --train_data='data/train-*.tfrecord' --eval_data='data/validation-*.tfrecord' "
            "--output_dir=audit",
    reference="docs/data.md")


def define_flags() -> None:
    """Defines the command's flags when it runs (or in tests): importing it clashes with no other CLI."""
    flagutil.define("string", "train_data", None, "Training data: TFRecord glob or image folder (local or gs://).",
                    group="data", required=True)
    flagutil.define("list", "eval_data", [], "Evaluation data, comma-separated globs or folders; each split is "
                    "named as its shards say (validation-*, test-*), else eval.", group="data")
    flagutil.define("string", "labels", None, "labels.txt (one class a line); default: beside --train_data.",
                    group="data")
    flagutil.define("integer", "label_offset", 0,
                    "Subtracted from image/class/label (1 for Google's ImageNet shards).", group="data")
    flagutil.define("string", "backbone", "efficientnet-b0", f"Backbone: {', '.join(backbones.REGISTRY)}.",
                    group="model")
    flagutil.define("string", "weights", "imagenet",
                    "imagenet, noisy-student, none, or a weights file path / gs:// URL.", group="model")
    flagutil.define("integer", "image_size", 0, "Input side in pixels; 0 = the backbone's native size.", group="model")
    flagutil.define("string", "output_dir", None, "Where the audit goes (local or gs://).",
                    group="outputs", required=True)
    flagutil.define("float", "duplicate_threshold", auditing.DEFAULT_DUPLICATE_THRESHOLD,
                    "Cosine similarity of the embeddings from which two neighbours may be near copies.", group="checks")
    flagutil.define("float", "pixel_threshold", auditing.DEFAULT_PIXEL_THRESHOLD, "Correlation of two candidates' 32x32 "
                    "grey thumbnails (or one mirrored) that confirms a near copy; -1: the cosine alone decides.",
                    group="checks")
    flagutil.define("integer", "neighbours", auditing.DEFAULT_NEIGHBOURS, "Nearest neighbours that vote on each label.",
                    group="checks")
    flagutil.define("integer", "probe_folds", auditing.DEFAULT_FOLDS, "Folds of the cross-validated linear probe; 0 = "
                    "the neighbour vote alone (large data: the probe costs images x width x classes per step).",
                    group="checks")
    flagutil.define("integer", "batch_size", auditing.BATCH_SIZE, "Images per embedding batch.", group="performance")
    flagutil.define("integer", "max_image_side", downscale.DEFAULT_MAX_IMAGE_SIDE, "Photos (files and records) whose "
                    "longer side is over this many pixels are downscaled first, by the rule trainer.prepare stores "
                    "records by, so a photo and its prepared record match; 0: as they are.", group="performance")


def _check_flags(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise flagutil.FlagError(f"unexpected argument(s) {' '.join(argv[1:])}: every setting is a flag")
    for name, fix in (("train_data", "a TFRecord glob or an image folder"), ("output_dir", "the folder to write into")):
        if not getattr(FLAGS, name):
            raise flagutil.FlagError(f"--{name} is required: pass {fix}")
    if not (0.0 < FLAGS.duplicate_threshold <= 1.0 and -1.0 <= FLAGS.pixel_threshold <= 1.0):
        raise flagutil.FlagError(f"--duplicate_threshold={FLAGS.duplicate_threshold}, --pixel_threshold="
                                 f"{FLAGS.pixel_threshold}: pass a cosine in (0, 1] and a correlation in [-1, 1]")
    if FLAGS.neighbours < 1 or FLAGS.batch_size < 1 or FLAGS.probe_folds == 1 or FLAGS.probe_folds < 0:
        raise flagutil.FlagError("--neighbours and --batch_size must be 1 or more, --probe_folds 0 or 2 or more")
    if FLAGS.max_image_side < 0:
        raise flagutil.FlagError(f"--max_image_side={FLAGS.max_image_side}: pass a side in pixels, or 0 for photos "
                                 "as they are")
    if FLAGS.image_size and FLAGS.image_size < config.MIN_IMAGE_SIZE:
        raise flagutil.FlagError(f"--image_size={FLAGS.image_size}: pass {config.MIN_IMAGE_SIZE} or more (or 0)")
    flagutil.check_folder("output_dir", FLAGS.output_dir)


def main(argv) -> None:
    _check_flags(argv)
    if fileio.is_gcs(FLAGS.output_dir):
        gcs.check_writable([FLAGS.output_dir])
    summary = auditing.audit(train_data=FLAGS.train_data, eval_data=FLAGS.eval_data, output_dir=FLAGS.output_dir,
                    backbone=FLAGS.backbone, weights=FLAGS.weights, image_size=FLAGS.image_size,
                    labels=FLAGS.labels, label_offset=FLAGS.label_offset,
                    duplicate_threshold=FLAGS.duplicate_threshold, pixel_threshold=FLAGS.pixel_threshold,
                    neighbours=FLAGS.neighbours, folds=FLAGS.probe_folds, batch_size=FLAGS.batch_size,
                    max_image_side=FLAGS.max_image_side)
    dup = summary["duplicate_pairs"]
    print(f"images: {summary['total_images']} ({summary['skipped_records']} skipped); duplicate pairs: {dup['total']} "
          f"({dup['across_splits']} across splits); suspect labels: {summary['suspect_labels']['listed']} "
          f"({summary['suspect_labels']['above_cut']} scored >= {auditing.SUSPECT_CUT}); audit: {FLAGS.output_dir}")


def run_main() -> None:
    """`python -m trainer.audit` and effnet-audit; failing reads end in one line too."""
    flagutil.run(main, define_flags, usage=USAGE, user_errors=(tf.errors.OpError,))


if __name__ == "__main__":
    run_main()
