"""Leakage: the evaluation images that have a near copy in the training split, for a run's report.

A copy of a training image in the validation (or test) split is a picture the model learned, so
that split's figure is optimistic by as much. The report counts them with the audit's own rule
(`findings.nearest_copies`: an embedding neighbour confirmed by its thumbnail), so it counts what
`python -m trainer.audit` lists. The embeddings are the export's `features` signature, the trained
network's: fine-tuning pulls distinct images of a class together, and the thumbnails keep the
rule from calling them copies whatever the network.

Cost: one pass of the training split (and of each evaluation split) through `features`, and a
decode of each image for its thumbnail. `--noleakage_check` skips it.
"""
from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple, Union

from absl import logging
import numpy as np
import tensorflow as tf

from effnet_common import progress
from trainer.analysis import findings, thumbnails
from trainer.data import discovery
from trainer.inference import exported, labelled, prediction

DEFAULT_EXAMPLES = 20  # near copies listed in metrics.json, most similar first


@dataclasses.dataclass
class SplitImages:
    """A split's decodable images as the check sees them: row i is ids[i]."""
    ids: List[str]
    features: np.ndarray  # float32 [N, D]: the export's `features`
    thumbnails: np.ndarray  # uint8 [N, S, S] (trainer.analysis.thumbnails)


def _embed(export: exported.Export, images: Sequence[bytes]) -> Tuple[np.ndarray, np.ndarray]:
    features = export.features(image_bytes=tf.constant(list(images), tf.string))["features"].numpy()
    return features.astype(np.float32), thumbnails.of_encoded(images)


def _embed_good(export: exported.Export, images: Sequence[bytes]) -> Tuple[np.ndarray, np.ndarray, List[int]]:
    """Features, thumbnails and positions of the images that decode: one call for a clean batch,
    one per image to find a bad one (which the report skips too)."""
    try:
        return (*_embed(export, images), list(range(len(images))))
    except tf.errors.InvalidArgumentError:
        pass
    rows = []
    for i, image in enumerate(images):
        try:
            rows.append((i, *_embed(export, [image])))
        except tf.errors.InvalidArgumentError:
            continue
    if not rows:
        return np.zeros((0, 0), np.float32), thumbnails.empty(), []
    return np.concatenate([r[1] for r in rows]), np.concatenate([r[2] for r in rows]), [r[0] for r in rows]


def read_split(model: Union[str, exported.Export], *, data_path: str, label_offset: int = 0,
               batch_size: int = prediction.DEFAULT_BATCH_SIZE) -> SplitImages:
    """The ids, features and thumbnails of a labelled split (TFRecord glob or class folders), as
    the report reads it (trainer.inference.labelled); undecodable images are left out."""
    export = exported.as_export(model)
    total, batches = labelled.labelled_batches(data_path, class_names=export.class_names, label_offset=label_offset,
                                               batch_size=batch_size, multi_label=export.thresholds is not None)
    ids, features, thumbs = [], [], [thumbnails.empty()]
    bar = progress.Progress(total, label="embedding", unit="image")
    for batch in batches:
        readable = [(ident, image) for (ident, _), image, _ in batch if image is not None]
        if readable:
            feats, small, good = _embed_good(export, [image for _, image in readable])
            ids += [readable[i][0] for i in good]
            features += [feats] if good else []
            thumbs.append(small)
        bar.add(len(batch))
    bar.close()
    return SplitImages(ids, prediction.stack_rows(features, width=0), np.concatenate(thumbs))


def near_copies_of_training(evaluated: SplitImages, training: SplitImages, *, split: str,
                            examples: int = DEFAULT_EXAMPLES) -> dict:
    """metrics.json's `near_copies_of_training`: how many of the split's images have a near copy in
    the training split, and up to `examples` of them, most similar first; logged when any."""
    found, cosine = findings.nearest_copies(
        findings.normalize(evaluated.features), findings.normalize(training.features),
        thumbnails=evaluated.thumbnails, reference_thumbnails=training.thumbnails)
    rows = np.flatnonzero(found >= 0)
    rows = rows[np.argsort(-cosine[rows], kind="stable")]
    n = len(evaluated.ids)
    if len(rows):
        logging.warning("%d of %d %s images have a near copy in the training split: their figure is optimistic; "
                        "python -m trainer.audit lists them", len(rows), n, split)
    listed = [{"eval": evaluated.ids[i], "train": training.ids[found[i]], "cosine": round(float(cosine[i]), 6)}
              for i in rows[:examples]]
    return {"count": int(len(rows)), "fraction": len(rows) / n if n else 0.0, "examples": listed}


class Check:
    """A run's leakage check: the export (a path, loaded on first use, or a loaded Export) and the
    training split read once, then any number of evaluation splits (validation, test) measured
    against it."""

    def __init__(self, export: Union[str, exported.Export], *, train_data: str, label_offset: int = 0):
        self.export, self.train_data, self.label_offset = export, train_data, label_offset
        self._export, self._training = None, None

    def __call__(self, *, data_path: str, split: str) -> dict:
        """`near_copies_of_training` of the split at `data_path` (raises what `read_split` raises)."""
        if self._training is None:
            self._export = exported.as_export(self.export)
            logging.info("leakage check: embedding the training split %s through the export", self.train_data)
            self._training = read_split(self._export, data_path=self.train_data, label_offset=self.label_offset)
        evaluated = read_split(self._export, data_path=data_path, label_offset=self.label_offset)
        return near_copies_of_training(evaluated, self._training, split=split)

    def metrics(self, *, data_path: str, split: str) -> dict:
        """{"near_copies_of_training": ...} for the split's metrics.json, or {} with a warning when the
        data cannot be read: the run has trained and exported, and the audit can still look."""
        try:
            return {"near_copies_of_training": self(data_path=data_path, split=split)}
        except (discovery.DataError, exported.PredictError, tf.errors.OpError) as e:
            logging.warning("no leakage check for the %s split: %s", split, e)
            return {}
