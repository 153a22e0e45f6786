"""A serving export, loaded: its folder, class names, thresholds and signature functions.

What batch prediction and evaluation run (`load_export`); `resolve_export_dir` accepts an
export folder, an export base (MODEL_DIR/export: its newest numeric version) or a training
run's MODEL_DIR. The class names come from the export's own assets/labels.txt, so everything
downstream reads labels as the model does.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple, Union

from absl import logging
import numpy as np
import tensorflow as tf

from effnet_common import errors, fileio, versions
from serving import signatures


class PredictError(errors.UserError):
    """A user mistake in what to predict with or on; the message says how to fix it."""


@dataclasses.dataclass
class Export:
    """A loaded serving SavedModel: its folder, class names and signature functions."""
    export_dir: str
    class_names: Tuple[str, ...]
    serve: Callable
    features: Callable
    saved_model: object  # keeps the loaded object (and so the functions' variables) alive
    thresholds: Optional[np.ndarray] = None  # a multi-label export's per-class decision thresholds


def resolve_export_dir(path: str) -> str:
    """The SavedModel folder `path` names: itself, or the newest numeric version under it
    (an export base such as MODEL_DIR/export) or under its export/ (a training run's MODEL_DIR).
    """
    path = str(path).rstrip("/")
    if not path:
        raise PredictError("the export path is empty: pass an export folder (MODEL_DIR/export/1) or a MODEL_DIR")
    if tf.io.gfile.exists(fileio.join(path, "saved_model.pb")):
        return path
    for base in (path, fileio.join(path, "export")):
        if tf.io.gfile.isdir(base):
            found = versions.versions(tf.io.gfile.listdir(base))
            if found:
                return resolve_export_dir(fileio.join(base, str(found[-1])))
    what = "does not exist" if not tf.io.gfile.exists(path) else "holds no saved_model.pb and no export/<version>/"
    raise PredictError(f"export {path} {what}: pass an export folder (MODEL_DIR/export/<version>) or "
                       "the MODEL_DIR of a finished training run")


def export_class_names(path: str) -> Tuple[str, Tuple[str, ...]]:
    """The export folder `path` names and its class names, without loading the model (cheap:
    callers check their other inputs before paying for the load)."""
    export_dir = resolve_export_dir(path)
    labels_path = fileio.join(export_dir, "assets", fileio.LABELS_FILE)
    if not tf.io.gfile.exists(labels_path):
        raise PredictError(f"{export_dir} has no assets/{fileio.LABELS_FILE}: it is not an export of "
                           "this trainer; re-export it with python -m trainer.export --model_dir=MODEL_DIR")
    return export_dir, tuple(line.strip() for line in fileio.read_text(labels_path).splitlines() if line.strip())


def export_thresholds(path: str) -> Optional[np.ndarray]:
    """A multi-label export's per-class thresholds (assets/thresholds.txt), or None for a
    single-label export."""
    thresholds_path = fileio.join(resolve_export_dir(path), "assets", signatures.THRESHOLDS_FILENAME)
    if not tf.io.gfile.exists(thresholds_path):
        return None
    return np.array([float(v) for v in fileio.read_text(thresholds_path).split()], np.float32)


def load_export(path: str) -> Export:
    """Loads the export `path` names (see `resolve_export_dir`) with its labels.txt."""
    export_dir, class_names = export_class_names(path)
    logging.info("loading %s", export_dir)
    loaded = tf.saved_model.load(export_dir)
    missing = [n for n in (signatures.SERVING_DEFAULT, signatures.FEATURES) if n not in loaded.signatures]
    if missing:
        raise PredictError(f"{export_dir} lacks the signature(s) {', '.join(missing)}: re-export it with "
                           "python -m trainer.export --model_dir=MODEL_DIR")
    return Export(export_dir=export_dir, class_names=class_names,
                  serve=loaded.signatures[signatures.SERVING_DEFAULT],
                  features=loaded.signatures[signatures.FEATURES], saved_model=loaded,
                  thresholds=export_thresholds(export_dir))


def as_export(model: Union[str, Export]) -> Export:
    return model if isinstance(model, Export) else load_export(model)


def class_names_of(model: Union[str, Export]) -> Tuple[str, ...]:
    """The class names of a loaded export or of an export path (without loading it)."""
    return model.class_names if isinstance(model, Export) else export_class_names(model)[1]
