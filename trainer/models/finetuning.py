"""The fine-tuning rules, once: which layers train in which phase.

`trainable_mask` is a pure function of (network, phase, BN mode) -> one flag per layer, which the
memory plan reads without touching a model; `set_trainable` applies the same mask to a live model.
BatchNormalization stays in inference mode unless the user asks for the seed blog's variant
(`bn="trainable"`).
"""
from __future__ import annotations

import re
from typing import Dict, List
import tf_keras as keras
from effnet_common.errors import WeightsError
from trainer.configs.config import Phase
from trainer.models import classifier


_BLOCK_RE = re.compile(r"^(block\d+[a-z]+)_")


def block_names(backbone: keras.Model) -> List[str]:
    """EfficientNet block prefixes (block1a, block2a, ...) in network order."""
    seen: Dict[str, None] = {}
    for layer in backbone.layers:
        match = _BLOCK_RE.match(layer.name)
        if match:
            seen.setdefault(match.group(1))
    return list(seen)


def trainable_mask(model: keras.Model, *, phase: Phase, bn: str) -> Dict[int, bool]:
    """Which leaf layers train in `phase`: {id(layer): trains} for every leaf of `model`
    (`classifier.leaf_layers`), computed from the network's structure alone; the model is not
    changed. The memory plan estimates a phase from it; `set_trainable` applies it.

    frozen (top_blocks == 0): only the head trains (with bn="trainable", the backbone's BN layers
    too: the seed blog's workaround, kept for comparison). finetune: all of the backbone, or its
    top N blocks and the layers after them; BN layers stay frozen unless bn="trainable". Every
    layer outside the backbone (preprocessing, the head) trains in every phase.

    Raises:
      WeightsError: --unfreeze=top:N with N beyond the backbone's blocks.
    """
    backbone = classifier.backbone_of(model)
    opened = _opened_children(backbone, phase=phase, bn=bn)
    mask = {id(layer): True for layer in classifier.leaf_layers(model)}
    for child in backbone.layers:
        for layer in (classifier.leaf_layers(child) if isinstance(child, keras.Model) else (child,)):
            mask[id(layer)] = opened[id(child)]
    return mask


def _opened_children(backbone: keras.Model, *, phase: Phase, bn: str) -> Dict[int, bool]:
    """{id(child): trains} for the backbone's direct children, by the rules of `trainable_mask`."""
    top = phase.top_blocks
    if top == 0:
        return {id(layer): bn == "trainable" and _is_bn(layer) for layer in backbone.layers}
    opened = {id(layer): True for layer in backbone.layers}
    if top is not None:
        first_open = _first_open_block(backbone, top)
        is_open = False
        for layer in backbone.layers:
            match = _BLOCK_RE.match(layer.name)
            if match and match.group(1) == first_open:
                is_open = True
            opened[id(layer)] = is_open
    if bn == "frozen":
        opened.update({id(layer): False for layer in backbone.layers if _is_bn(layer)})
    return opened


def set_trainable(model: keras.Model, *, phase: Phase, bn: str) -> None:
    """Applies `trainable_mask` to the model's layers; the caller must recompile afterwards.

    A backbone with nothing open is itself set non-trainable (its BN layers then run in
    inference mode whatever their flags), as Keras' own transfer-learning guide freezes a base.
    """
    backbone = classifier.backbone_of(model)
    opened = _opened_children(backbone, phase=phase, bn=bn)
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = opened[id(layer)]
    if not any(opened.values()):
        backbone.trainable = False


def _first_open_block(backbone: keras.Model, top: int) -> str:
    blocks = block_names(backbone)
    if top > len(blocks):
        raise WeightsError(f"--unfreeze=top:{top} but {backbone.name} has {len(blocks)} blocks; "
                           f"pass --unfreeze=top:N with N <= {len(blocks)}, or --unfreeze=all")
    return blocks[len(blocks) - top]


def _is_bn(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)
