"""EfficientNet-Lite0..4 as Keras models with EfficientNet's layer names.

EfficientNet-Lite (google/automl `efficientnet/lite/README.md`) is EfficientNet made for
integer accelerators: no squeeze-and-excitation, ReLU6 instead of swish, and the stem (32
channels) and head (1280) kept at every size, as are the repeats of the first and last stage
(`fix_head_stem` in automl's efficientnet_model.py). So Lite1 has 21 blocks where B1 has 23.
Width and depth coefficients and native sizes are automl's `efficientnet_lite_params`.

Layers are named as tf_keras.applications and the `efficientnet` package name them
(`stem_conv`, `block2a_expand_conv`, `block2a_dwconv`, `block2a_project_bn`, `top_activation`),
so `--unfreeze=top:N`, the BN rules, the memory estimate, the embedding cache and notop HDF5
files treat Lite as they treat B0. Convolutions are bias-free with TensorFlow's "SAME" padding
(explicit asymmetric zero padding before strided ones, as Keras' EfficientNet does);
BatchNormalization has epsilon 1e-3. The input is (x - 127) / 128 on 0..255 pixels, a layer of
the classifier (trainer/models/classifier.py), not of this backbone.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Tuple

import tf_keras as keras

# name -> (width coefficient, depth coefficient, native size, head dropout in automl)
PARAMS = {
    "efficientnet-lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet-lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet-lite4": (1.4, 1.8, 300, 0.3),
}
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
DROP_CONNECT_RATE = 0.2
# B0's seven stages: kernel, repeats, filters in, filters out, expansion, stride (Tan & Le 2019, Table 1).
_STAGES = ((3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2), (5, 2, 24, 40, 6, 2), (3, 3, 40, 80, 6, 2),
           (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2), (3, 1, 192, 320, 6, 1))


@dataclasses.dataclass(frozen=True)
class Block:
    """One MBConv block of a Lite network, in network order."""
    name: str  # block1a, block2b, ...: the prefix of its layers
    kernel: int
    filters_in: int
    filters_out: int
    expand: int
    stride: int


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by `width`, to a multiple of 8, never below 90 % of the scaled value."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def blocks(name: str) -> List[Block]:
    """Every block of the named Lite network; its first and last stage are never repeated more."""
    width, depth, _, _ = PARAMS[name]
    out = []
    for stage, (kernel, repeats, f_in, f_out, expand, stride) in enumerate(_STAGES):
        if 0 < stage < len(_STAGES) - 1:
            repeats = int(math.ceil(depth * repeats))
        f_in, f_out = round_filters(f_in, width), round_filters(f_out, width)
        for j in range(repeats):
            out.append(Block(f"block{stage + 1}{chr(ord('a') + j)}", kernel, f_in if j == 0 else f_out, f_out,
                             expand, stride if j == 0 else 1))
    return out


def build_backbone(name: str, *, image_size: int, drop_connect_rate: float = DROP_CONNECT_RATE) -> keras.Model:
    """The named Lite network without its classifier: (S, S, 3) normalized pixels -> the last
    feature map (S/32, S/32, 1280)."""
    inputs = keras.Input((image_size, image_size, 3), name="input")
    x = _conv_unit(inputs, "stem", STEM_FILTERS, kernel=3, stride=2)
    layout = blocks(name)
    for index, block in enumerate(layout):
        x = _mbconv(x, block, drop_rate=drop_connect_rate * index / len(layout))
    x = _conv_unit(x, "top", HEAD_FILTERS, kernel=1)
    return keras.Model(inputs, x, name=name)


def _conv_unit(x, prefix: str, filters: int, *, kernel: int, stride: int = 1):
    x = _same_padding(x, f"{prefix}_conv_pad", kernel, stride)
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same" if stride == 1 else "valid",
                            use_bias=False, name=f"{prefix}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{prefix}_activation")(x)


def _mbconv(inputs, block: Block, *, drop_rate: float):
    p = f"{block.name}_"
    x = inputs
    if block.expand != 1:
        x = keras.layers.Conv2D(block.filters_in * block.expand, 1, use_bias=False, name=f"{p}expand_conv")(x)
        x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{p}expand_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"{p}expand_activation")(x)
    x = _same_padding(x, f"{p}dwconv_pad", block.kernel, block.stride)
    x = keras.layers.DepthwiseConv2D(block.kernel, strides=block.stride,
                                     padding="same" if block.stride == 1 else "valid",
                                     use_bias=False, name=f"{p}dwconv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{p}bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{p}activation")(x)
    x = keras.layers.Conv2D(block.filters_out, 1, use_bias=False, name=f"{p}project_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{p}project_bn")(x)
    if block.stride == 1 and block.filters_in == block.filters_out:
        if drop_rate > 0:
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{p}drop")(x)
        x = keras.layers.Add(name=f"{p}add")([x, inputs])
    return x


def _same_padding(x, name: str, kernel: int, stride: int):
    """TensorFlow's "SAME" for a strided convolution: the odd pixel of padding goes after."""
    if stride == 1:
        return x
    size = int(x.shape[1])
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    pad: Tuple[int, int] = (total // 2, total - total // 2)
    return keras.layers.ZeroPadding2D((pad, pad), name=name)(x)
