"""Sizes and backbones the tests share: small enough for a 2-core CPU.

Two presets: EfficientNet-Lite0 with its real ImageNet weights (PRETRAINED) at IMAGE_SIZE where
EfficientNet itself is what a test checks (its blocks, its BN rules, transfer, export equals
Keras; B0 with weights=none where the `efficientnet` package's network is), and `tiny` at TINY_SIZE
(trainer/configs/backbones.py: a few convolutions with EfficientNet's layer names) for the plumbing
around it: resume, preemption, multi-worker, weights files, refusals, GCS, the CLI.
"""

import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]  # the repository root, for every test that reads its files
REPO_DIR = str(REPO)
IMAGE_SIZE = 64  # the input side of the EfficientNet runs (large enough for its five downsamplings)
PRETRAINED = "efficientnet-lite0"  # real ImageNet weights offline (trainer/models/pretrained/imagenet.py)
TINY = "tiny"  # the plumbing backbone
TINY_SIZE = 32  # its native size and the smallest input the trainer accepts


def write_tiny_weights(path: str, *, seed: int = 0) -> str:
    """A local notop weights file of the tiny backbone, as `backbone.save_weights(path)` writes
    it (the format of the official downloads), with seeded random weights."""
    import tf_keras as keras  # pylint: disable=import-outside-toplevel
    from trainer.configs import config
    from trainer.models import classifier
    keras.utils.set_random_seed(seed)
    model = classifier.build_classifier(config.Model(backbone=TINY, weights="none"), num_classes=2, image_size=TINY_SIZE)
    classifier.backbone_of(model).save_weights(path)
    return path
