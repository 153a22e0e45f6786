"""An independent forward pass of EfficientNet-Lite0 in numpy, straight from the PyTorch state dict.

It shares nothing with trainer.models.lite or trainer.models.pretrained.lite_pypi: the architecture is written from the
EfficientNet-Lite description (B0's seven stages, no squeeze-and-excitation, ReLU6, TF "SAME"
padding, BatchNormalization epsilon 1e-3, input (x - 127) / 128), and kernels are read in the
checkpoint's own (out, in, h, w) layout. Kernel sizes and channels come from the tensors, the
strides and the residual rule from the architecture. The tests compare the Keras model's
pooled features against it.
"""
from typing import Dict

import numpy as np

# Lite0 = B0's stages: (repeats, stride of the first block).
_STAGES = ((1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1))
_EPSILON = 1e-3


def _windows(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """[out, out, k, k, C] views of x [H, W, C] under TensorFlow's SAME padding."""
    size = x.shape[0]
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    x = np.pad(x, ((total // 2, total - total // 2), (total // 2, total - total // 2), (0, 0)))
    s0, s1, s2 = x.strides
    return np.lib.stride_tricks.as_strided(x, (out, out, kernel, kernel, x.shape[2]),
                                           (s0 * stride, s1 * stride, s0, s1, s2))


def _conv(x, w, stride=1):  # w: (out, in, k, k)
    return np.einsum("hwijc,ocij->hwo", _windows(x, w.shape[2], stride), w, optimize=True)


def _depthwise(x, w, stride):  # w: (C, 1, k, k)
    return np.einsum("hwijc,cij->hwc", _windows(x, w.shape[2], stride), w[:, 0], optimize=True)


def _bn(x, state, prefix):
    scale = state[f"{prefix}.weight"] / np.sqrt(state[f"{prefix}.running_var"] + _EPSILON)
    return (x - state[f"{prefix}.running_mean"]) * scale + state[f"{prefix}.bias"]


def _relu6(x):
    return np.clip(x, 0.0, 6.0)


def pooled_features(state: Dict[str, np.ndarray], pixels: np.ndarray) -> np.ndarray:
    """Lite0's global-average-pooled features [1280] of one image [S, S, 3] of 0..255 pixels."""
    x = (pixels.astype(np.float32) - 127.0) / 128.0
    x = _relu6(_bn(_conv(x, state["_conv_stem.weight"], 2), state, "_bn0"))
    index = 0
    for repeats, first_stride in _STAGES:
        for j in range(repeats):
            p = f"_blocks.{index}."
            inputs = x
            if f"{p}_expand_conv.weight" in state:
                x = _relu6(_bn(_conv(x, state[f"{p}_expand_conv.weight"]), state, f"{p}_bn0"))
            stride = first_stride if j == 0 else 1
            x = _relu6(_bn(_depthwise(x, state[f"{p}_depthwise_conv.weight"], stride), state, f"{p}_bn1"))
            x = _bn(_conv(x, state[f"{p}_project_conv.weight"]), state, f"{p}_bn2")
            if stride == 1 and x.shape == inputs.shape:
                x = x + inputs
            index += 1
    x = _relu6(_bn(_conv(x, state["_conv_head.weight"]), state, "_bn1"))
    return x.mean(axis=(0, 1))
