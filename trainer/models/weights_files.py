"""Weights files a user passes (`--weights=FILE`, local or gs://): a whole classifier's or a
notop backbone's, the head kept or dropped by its class count."""
from __future__ import annotations

import os
from typing import Optional
import h5py
import tf_keras as keras
from effnet_common import fileio
from effnet_common.errors import WeightsError
from trainer.models import classifier


def load_weights_file(model: keras.Model, path: str, *, num_classes: int) -> None:
    """Loads a Keras HDF5 weights file: the backbone's notop weights or a whole classifier's.

    A notop file (`backbone.save_weights('x.h5')`, the format of the official downloads) goes
    into the backbone; a file saved from a whole classifier of this package (it holds our head
    layer) goes into the whole model, so a previous run can be a starting point. A gs:// file
    is read through a temporary local copy, removed afterwards.
    """
    if not fileio.exists(path):
        raise WeightsError(f"--weights={path} does not exist; pass imagenet, none, or the path of a weights file")
    local = fileio.local_copy(path, suffix=".h5")
    try:
        _load_local_weights(model, local, path=path, num_classes=num_classes)
    finally:
        if local != path:
            os.remove(local)


def _load_local_weights(model: keras.Model, local: str, *, path: str, num_classes: int) -> None:
    try:
        with h5py.File(local, "r") as f:
            names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs.get("layer_names", [])]
            head_classes = _head_classes(f) if classifier.HEAD_LAYER in names else None
    except (OSError, KeyError) as e:
        raise WeightsError(f"--weights={path} is not a Keras HDF5 weights file ({e}); pass the file "
                           "that backbone.save_weights('x.h5') writes") from None
    if head_classes is not None and head_classes != num_classes:
        raise WeightsError(f"--weights={path} is a classifier for {head_classes} classes but the data has "
                           f"{num_classes}; pass the backbone's notop weights file instead")
    target = model if head_classes is not None else classifier.backbone_of(model)
    try:
        target.load_weights(local)
    except (ValueError, KeyError) as e:
        raise WeightsError(f"--weights={path} does not fit {target.name} ({str(e).splitlines()[0][:160]}); "
                           "pass a notop weights file saved from the same backbone") from None


def _head_classes(f: "h5py.File") -> Optional[int]:
    group = f[classifier.HEAD_LAYER]
    for name in group.attrs.get("weight_names", []):
        name = name.decode() if isinstance(name, bytes) else name
        if "kernel" in name:
            return int(group[name].shape[-1])
    return None
