"""How cost grows with the work: prepare and batch prediction, the local path against Apache
Beam's DirectRunner in multi-process mode, side by side on this machine's cores.

    python bench/scale.py [--counts=1000,5000,20000] [--predict_counts=...] [--workers=N]
                          [--image_px=320] [--backbone=efficientnet-b0] [--image_size=224]
                          [--batch_size=32] [--workdir=DIR] [--keep]

For each count N: N synthetic JPEGs (the demo's 4 shape classes, --image_px square, one corrupt
file among them so the skip path runs too) are prepared into TFRecords by
`trainer.data.preparing.prepare` on --workers threads (the local path) and on DirectRunner with
`--direct_running_mode=multi_processing --direct_num_workers=W` (trainer.beam.records, the code
Dataflow runs); then the same images are predicted through an export of --backbone at
--image_size (weights none: the cost, not the answers, is measured) by
`prediction.predict_files` and by the Beam pipeline (trainer.beam.predicting, RunInference).
Each line gives both paths' images/s, their per-image cost in ms, and beam/local: how much of
the local path's throughput one machine keeps when the same work goes through Beam. Read the
per-image cost down a column: a fixed start-up (pipeline construction, worker processes, the
model loaded once per worker) shows as a cost that falls with N; what remains at large N is the
per-image overhead of the Beam path. docs/cloud.md (Dataflow) turns these into the size from
which Dataflow pays off.

Smoke run (seconds): python bench/scale.py --counts=50,100 --backbone=tiny --image_size=32
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from typing import Callable, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from effnet_common import process

process.prepare()

from trainer.beam import options as beam_options  # noqa: E402
from trainer.data import preparing, synthetic  # noqa: E402
from trainer.inference import prediction  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("counts", ["1000", "5000", "20000"], "Image counts for prepare.")
flags.DEFINE_list("predict_counts", None, "Image counts for batch prediction (default: --counts).")
flags.DEFINE_integer("workers", os.cpu_count() or 1, "Threads (local) and DirectRunner worker processes.")
flags.DEFINE_integer("image_px", 320, "Side of the synthetic JPEGs.")
flags.DEFINE_string("backbone", "efficientnet-b0", "Backbone of the export batch prediction runs (or tiny).")
flags.DEFINE_integer("image_size", 224, "The export's input size.")
flags.DEFINE_integer("batch_size", 32, "Images per call of the export, both paths.")
flags.DEFINE_string("workdir", None, "Folder for images, records and outputs (default: a temporary one).")
flags.DEFINE_bool("keep", False, "Keep --workdir.")

CLASSES = 4


def write_images(folder: str, count: int) -> None:
    """`count` JPEGs in 4 class folders, and one corrupt file (skipped by both paths)."""
    synthetic.write_images(folder, task="shapes", per_class=max(count // CLASSES, 2), size=FLAGS.image_px, seed=0)
    with open(os.path.join(folder, synthetic.TASKS["shapes"][0], "corrupt.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff truncated")


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def line(step: str, count: int, local_s: float, beam_s: float) -> str:
    def rate(seconds: float) -> str:
        return f"{count / seconds:8.1f} img/s {1000 * seconds / count:7.2f} ms/img"
    return (f"{step:<8} n={count:<6} local {rate(local_s)} | DirectRunner x{FLAGS.workers} {rate(beam_s)} | "
            f"beam/local {local_s / beam_s:.3f}")


def bench_prepare(images: str, out: str, count: int, settings) -> str:
    def run(name: str, workers) -> Callable[[], object]:
        return lambda: preparing.prepare(input_dir=images, output_dir=os.path.join(out, name), validation_fraction=0.1,
                                         seed=0, num_workers=FLAGS.workers, workers=workers)
    from trainer.beam import records  # pylint: disable=import-outside-toplevel
    local_s = timed(run("local", None))
    beam_s = timed(run("beam", records.BeamWorkers(settings)))
    return line("prepare", count, local_s, beam_s)


def bench_predict(images: str, out: str, count: int, settings, export_dir: str) -> str:
    from trainer.beam import predicting  # pylint: disable=import-outside-toplevel
    paths = prediction.list_inputs([images])
    local_s = timed(lambda: prediction.predict_files(export_dir, paths, batch_size=FLAGS.batch_size))
    request = predicting.Request(export_dir=export_dir, output=os.path.join(out, "preds.csv"), features_output=None,
                                 top_k=CLASSES, batch_size=FLAGS.batch_size, max_image_side=0)
    beam_s = timed(lambda: predicting.predict(settings, request, specs=[images]))
    return line("predict", count, local_s, beam_s)


def main(argv: List[str]) -> None:
    del argv
    from testbed import exports  # pylint: disable=import-outside-toplevel
    work = FLAGS.workdir or tempfile.mkdtemp(prefix="bench-scale-")
    settings = beam_options.from_flags(
        runner="DirectRunner",
        beam_options=f"--direct_running_mode=multi_processing --direct_num_workers={FLAGS.workers}")
    export_dir = exports.build_export(os.path.join(work, "export"), backbone=FLAGS.backbone,
                                      num_classes=CLASSES, image_size=FLAGS.image_size).path
    counts = sorted({int(c) for c in FLAGS.counts} | {int(c) for c in FLAGS.predict_counts or FLAGS.counts})
    print(f"{FLAGS.workers} workers, {FLAGS.image_px} px JPEGs, export {FLAGS.backbone} at {FLAGS.image_size} px, "
          f"batch {FLAGS.batch_size}")
    try:
        for count in counts:
            images, out = os.path.join(work, f"images-{count}"), os.path.join(work, f"out-{count}")
            if not os.path.isdir(images):
                write_images(images, count)
            if str(count) in FLAGS.counts:
                print(bench_prepare(images, out, count, settings), flush=True)
            if str(count) in (FLAGS.predict_counts or FLAGS.counts):
                print(bench_predict(images, out, count, settings, export_dir), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if not FLAGS.keep and not FLAGS.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
