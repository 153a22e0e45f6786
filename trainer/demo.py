"""Synthetic labelled images, any number, any size: smoke runs, benchmarks and plumbing tests.

The demo itself trains on real photos (data/fashion-mnist) from real ImageNet weights; these
images are for what needs data of a chosen size or count rather than a good classifier.
`python -m trainer.demo --output_dir=DIR` writes DIR/<class>/<class>_NNNN.jpg. Three tasks, drawn
in one visual world (a flat random colour with a little noise, a contrasting foreground, an
object near the centre at a random size and offset):
  shapes   - 4 classes (circle, cross, square, triangle).
  glyphs   - 16 other shapes (arrow, chevron, diamond, ell, ellipse, bars, polygons, pac-man,
             ring, semicircle, star, tee, x).
  patterns - 8 classes of textures (stripes at four angles, checkers, dots, rings, noise).
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: prepare the process before TensorFlow loads
    from effnet_common import process
    process.prepare()

from absl import flags, logging
from effnet_common import flagutil
from trainer.data import synthetic


FLAGS = flags.FLAGS


USAGE = flagutil.Usage(
    summary="Write synthetic labelled images (a folder of class folders) for smoke runs and benchmarks.",
    example="python -m trainer.demo --output_dir=/tmp/shapes --task=shapes --per_class=40")


def define_flags() -> None:
    """Defines the flags; called when the module runs as a command (or by tests), so that
    importing it beside another entry point defines no clashing flags."""
    flagutil.define("string", "output_dir", None, "Folder to write <class>/<image>.jpg into.",
                    group="outputs", required=True)
    flagutil.define("enum", "task", "shapes", list(synthetic.TASKS), "Which synthetic task.", group="images")
    flagutil.define("integer", "per_class", 40, "Images per class.", group="images")
    flagutil.define("integer", "size", 96, "Image side in pixels.", group="images")
    flagutil.define("integer", "seed", 0, "Random seed; the same seed writes the same images.", group="images")
    flags.adopt_module_key_flags(flagutil)  # --help lists them as this command's flags


def main(argv):
    del argv
    if not FLAGS.output_dir:
        raise flagutil.FlagError("--output_dir is required: the folder to write the demo images into")
    counts = synthetic.write_images(FLAGS.output_dir, task=FLAGS.task, per_class=FLAGS.per_class, size=FLAGS.size,
                          seed=FLAGS.seed)
    logging.info("wrote %d images in %d classes to %s", sum(counts.values()), len(counts), FLAGS.output_dir)


def run_main() -> None:
    flagutil.run(main, define_flags, usage=USAGE)


if __name__ == "__main__":
    run_main()
