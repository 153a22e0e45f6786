"""SavedModel export for TF Serving: `export_base/<version>/` with the serving signatures.

`export_saved_model` is what training calls at the end; `python -m trainer.export
--model_dir=DIR [--checkpoint=CKPT] [--version=N]` re-exports a checkpoint without training, and
`--tflite=float16,dynamic,int8` writes scored .tflite files instead (trainer/exporting/tflite.py).

The export is written to a non-numeric sibling (`export_base/.tmp-<id>`) and moved into place
when complete: TF Serving only loads numeric folder names (its file-system source parses the
child names as int64), so it never sees a half-written version. Versions are integers; left
out, the next one after the highest numeric folder already there (1 for the first), so TF
Serving's default `latest` policy rolls to the new export on its own.

Contract (docs/serving.md): signatures `serving_default`, `classify`, `features`, labels in
`assets/labels.txt`, warmup records in `assets.extra/tf_serving_warmup_requests`, float32
throughout.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: prepare the process before TensorFlow loads
    from effnet_common import process
    process.prepare()

from typing import Sequence
import tensorflow as tf
from absl import flags
from effnet_common import flagutil
from trainer.exporting import saved_model, tflite, tflite as tflite_lib
from trainer.runtime import runlock


USAGE = flagutil.Usage(
    summary="Export a training run again: a new SavedModel version from a checkpoint, or .tflite variants.",
    example="python -m trainer.export --model_dir=runs/first --tflite=float16,int8",
    reference="docs/serving.md, docs/edge.md")


def define_flags() -> None:
    """Defines this CLI's flags; only when it runs as a command, so that importing the module
    beside another entry point (tests, training) defines no clashing flags."""
    flagutil.define("string", "model_dir", None, "Training output folder (config.json, checkpoints).",
                    group="run", required=True)
    flagutil.define("string", "checkpoint", None, "Checkpoint prefix; default: the last finished phase.", group="run")
    flagutil.define("integer", "version", None, "Version number; default: the next one.", group="outputs")
    flagutil.define("string", "export_base", None, "Where version folders go; default: MODEL_DIR/export.",
                    group="outputs")
    flagutil.define("list", "tflite", [], "Instead of a SavedModel: .tflite variants (float16, dynamic, int8) "
                    "to write to MODEL_DIR/tflite, each scored by LiteRT on the run's validation split.",
                    group="tflite")
    flagutil.define("float", "max_accuracy_drop", 0.01, "Refuse a .tflite variant that loses more accuracy than "
                    "this against the SavedModel.", group="tflite")


def main(argv: Sequence[str]) -> None:
    """Prints the new export's path; a user mistake is one `error:` line and exit status 2."""
    f = flags.FLAGS
    if len(argv) > 1:
        raise flagutil.FlagError(f"unexpected argument(s) {' '.join(argv[1:])}: every setting is a flag, "
                                 "e.g. --model_dir=DIR")
    if not f.model_dir:
        raise flagutil.FlagError("--model_dir is required: pass the training run's output folder (config.json, "
                                 "checkpoints)")
    flagutil.check_folder("model_dir", f.model_dir)
    with runlock.held(f.model_dir, command="trainer.export"):  # not while a training run writes there
        try:
            if f.tflite:
                _print_tflite(tflite_lib.export_tflite(model_dir=f.model_dir, variants=f.tflite, checkpoint=f.checkpoint,
                                            max_accuracy_drop=f.max_accuracy_drop))
                return
            path = saved_model.reexport(model_dir=f.model_dir, checkpoint=f.checkpoint, version=f.version,
                            export_base=f.export_base)
        except (ValueError, OSError, tf.errors.OpError) as e:
            flagutil.fail(e if isinstance(e, tflite.TfliteError) else f"export failed: {flagutil.one_line(e)}")
    print(path)


def _print_tflite(report: dict) -> None:
    print(f"SavedModel accuracy {report['reference_accuracy']:.3f} on {report['num_examples']} validation images")
    for name, v in report["variants"].items():
        print(f"{name:8s} accuracy {v['accuracy']:.3f} (drop {v['accuracy_drop']:+.3f}), top-1 agreement "
              f"{v['top1_agreement']:.3f}, {v['size_bytes'] / 2 ** 20:.2f} MB, {v['median_latency_ms']:.2f} ms/image")


def run_main() -> None:
    """Console-script entry point (effnet-export)."""
    flagutil.run(main, define_flags, usage=USAGE)


if __name__ == "__main__":
    run_main()
