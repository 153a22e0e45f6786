"""python -m trainer.prepare: an image folder, a CSV of path,label rows, or a Vertex AI import
file -> TFRecord shards.

    python -m trainer.prepare --input_dir=IMAGES --output_dir=DATA --validation_fraction=0.1 \
        [--test_fraction=F] [--num_shards=N | --shard_size_mb=M] [--seed=S] \
        [--csv=FILE | --import_file=FILE] [--multi_label] [--max_image_side=1024] \
        [--runner=local|DirectRunner|DataflowRunner|... --beam_options="--project=P ..."]

writes, per the data contract (docs/data.md), `train-00000-of-0000N.tfrecord`, `validation-...`
and (with --test_fraction, or an import file naming a test split) `test-...` shards, `labels.txt` (sorted class
names) and `dataset.json` (counts per split and class, every skipped file with its reason,
warnings, and whether the data is multi-label).

A Vertex AI import file (.csv or .jsonl, trainer.data.importfile) may fix each image's split
(ML_USE); its given splits are kept exactly, the other rows are split as a folder's are. A
multi-label dataset (a row with several labels, JSONL `classificationAnnotations`, or
--multi_label) stores each image's sorted class indices as a list in `image/class/label`.

Every file is read and decoded once, in parallel, to check it; a file that is empty, truncated,
not an image, or an image TensorFlow cannot decode is skipped and listed with its reason. A
valid image keeps its bytes and gets the `image/format` its content says (a PNG named .jpg is
stored as PNG), unless its longer side is over --max_image_side (default
1024; 0 keeps originals): a phone photo is then stored downscaled to that side, upright and
re-encoded once, so every epoch decodes a fraction of the bytes (docs/data.md measures what the
model's input keeps: >= 34 dB PSNR against the exact crop at every backbone's native size). The split is stratified over
the valid images (random for multi-label data). A class without a training image is an error; a
class missing from validation or test, a warning. Output is written under a temporary sibling
folder and swapped into place when complete, so an interrupted run leaves the previous output
as it was.

With --runner set to an Apache Beam runner (DirectRunner, DataflowRunner, ...; the `[beam]`
extra), the checks and the writing run as Beam pipelines (trainer.beam.records) with the options
of --beam_options; the listing, the split and dataset.json are the same code, so the same input
and seed give the same records (docs/cloud.md, Dataflow).
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: prepare the process before TensorFlow loads
    from effnet_common import process
    process.prepare()

import time
from absl import flags, logging
from effnet_common import downscale, flagutil
from trainer.beam import options as beam_options
from trainer.data import preparing


def _summary(info: dict, *, output_dir: str, seconds: float) -> str:
    parts = [f"{s}: {v['num_examples']} images in {v['num_shards']} shard(s)"
             for s, v in info["splits"].items()]
    kind = " (multi-label)" if info["multi_label"] else ""
    warned = f"; {len(info['warnings'])} warning(s) (in dataset.json)" if info["warnings"] else ""
    resized = info["resized"]
    shrunk = (f"; {resized['num_resized']} photo(s) over {resized['max_image_side']} px stored downscaled"
              if resized["num_resized"] else "")
    return (f"wrote {output_dir}: {info['num_classes']} classes{kind}; {'; '.join(parts)}{shrunk}; "
            f"skipped {info['num_skipped']} file(s) (reasons in dataset.json){warned}; {seconds:.1f} s")


USAGE = flagutil.Usage(
    summary="Turn a folder of class subfolders of images (or a CSV, or a Vertex AI import file) into TFRecord shards.",
    example="python -m trainer.prepare --input_dir=photos --output_dir=data --test_fraction=0.1",
    reference="docs/data.md")


def define_flags() -> None:
    """Defines this CLI's flags; only when it runs as a command, so that importing the module
    beside another entry point (tests, the demo) defines no clashing flags."""
    flagutil.define("string", "input_dir", None, "Folder (local or gs://) with one subfolder of images per class.",
                    group="input", required="unless --csv or --import_file is given")
    flagutil.define("string", "csv", None, "Instead of --input_dir: a CSV of path,label rows.", group="input")
    flagutil.define("string", "import_file", None, "Instead of --input_dir: a Vertex AI image-classification "
                    "import file, .csv ([ML_USE,]PATH[,LABEL...]) or .jsonl (local or gs://).", group="input")
    flagutil.define("bool", "multi_label", False, "Write multi-label records (a list of labels per image) "
                    "even when no row holds several labels.", group="input")
    flagutil.define("string", "output_dir", None, "Folder (local or gs://) for the shards; replaced whole.",
                    group="outputs", required=True)
    flagutil.define("float", "validation_fraction", 0.1, "Fraction of each class held out for validation "
                    "(of the rows without ML_USE).", group="splits")
    flagutil.define("float", "test_fraction", 0.0, "Fraction of each class held out as test-* shards (of the rows "
                    "without ML_USE): images neither training nor its choices (epochs, temperature) see, for a "
                    "figure that is not optimistic; the trainer finds them beside --train_data.", group="splits")
    flagutil.define("integer", "num_shards", None, "Train shards (validation and test get a proportional number).",
                    group="outputs")
    flagutil.define("float", "shard_size_mb", None, f"Target shard size instead of --num_shards "
                       f"(default {preparing.DEFAULT_SHARD_SIZE_MB} MB).", group="outputs")
    flagutil.define("integer", "max_image_side", downscale.DEFAULT_MAX_IMAGE_SIDE, "Store an image whose longer "
                    "side is over this many pixels downscaled to it (upright, re-encoded once; docs/data.md says why "
                    "this default); smaller images keep their bytes. 0: keep every original.", group="outputs")
    flagutil.define("integer", "seed", 0, "Seed of the split and of the order inside shards.", group="splits")
    flagutil.define("integer", "num_workers", None, "Parallel threads (default: the number of cores).",
                    group="performance")
    beam_options.define_flags()
    flags.adopt_module_key_flags(beam_options)  # --runner, --beam_options: this command's own
    flags.adopt_module_key_flags(flagutil)  # --help lists them as this command's flags


FLAGS = flags.FLAGS


def main(argv) -> None:
    if len(argv) > 1:
        raise flagutil.FlagError(f"unexpected argument(s) {' '.join(argv[1:])}: every setting is a flag, "
                                 "e.g. --input_dir=DIR (see --help)")
    start = time.time()
    settings = beam_options.from_flags(runner=FLAGS.runner, beam_options=FLAGS.beam_options)
    workers = None
    if settings:
        from trainer.beam import records  # Apache Beam only where a Beam runner is asked for
        workers = records.BeamWorkers(settings)
        if settings.dry_run:
            steps = workers.dry_run(output_dir=FLAGS.output_dir, max_image_side=FLAGS.max_image_side)
            print("dry run: " + "; ".join(f"the {what} job's steps {', '.join(names)}" for what, names in steps.items())
                  + f"; job files beside {settings.job_file or '(no --dataflow_job_file)'}; nothing submitted")
            return
    info = preparing.prepare(input_dir=FLAGS.input_dir, output_dir=FLAGS.output_dir,
                   validation_fraction=FLAGS.validation_fraction, num_shards=FLAGS.num_shards,
                   shard_size_mb=FLAGS.shard_size_mb, seed=FLAGS.seed, csv=FLAGS.csv,
                   num_workers=FLAGS.num_workers, import_file=FLAGS.import_file,
                   multi_label=FLAGS.multi_label, test_fraction=FLAGS.test_fraction,
                   max_image_side=FLAGS.max_image_side, workers=workers)
    for item in info["skipped"]:
        logging.warning("skipped %s: %s", item["path"], item["reason"])
    print(_summary(info, output_dir=FLAGS.output_dir, seconds=time.time() - start))


def run_main() -> None:
    """Console-script entry point (effnet-prepare)."""
    flagutil.run(main, define_flags, usage=USAGE)


if __name__ == "__main__":
    run_main()
