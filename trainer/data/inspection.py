"""Inspecting the data a Config names, once the strategy exists: counts, labels, classes, weights.

task.py builds the Config from flags without running a TensorFlow op (labels.txt is read through
tf.io.gfile), then the strategy from `cfg.runtime` (MultiWorkerMirroredStrategy must exist
before the first op), then this step reads the data through tf.data and returns the Config with
what only the data can say: example counts, whether the records are multi-label, the classes'
counts and the resolved class weights. A mistake in the data ends here, in one line, before
anything is written to --model_dir.
"""
from __future__ import annotations

import dataclasses

from absl import logging

from trainer.configs import config
from trainer.data import discovery, targets


def inspect_data(cfg: config.Config) -> config.Config:
    """`cfg` completed from its data.

    Raises:
      DataError: labels that disagree with labels.txt, a class without training images, an image
        folder asked to be multi-label, or class weights that cannot be resolved.
    """
    data = cfg.data
    facts = {path: discovery.inspect_split(path, class_names=data.class_names, label_offset=data.label_offset)
             for path in dict.fromkeys(filter(None, (data.train_data, data.eval_data, data.test_data)))}
    multi_label = data.multi_label or any(f.multi_label for f in facts.values())
    if data.multi_label and discovery.is_image_folder(data.train_data):
        raise discovery.DataError(f"--multi_label with the image folder {data.train_data}: a class folder gives one "
                                  "label per image; prepare multi-label data with python -m trainer.prepare "
                                  "--import_file=FILE (docs/data.md)")
    multi_label = multi_label or bool(discovery.dataset_multi_label(data.train_data))
    counts = facts[data.train_data].class_counts
    discovery.check_class_coverage(counts, class_names=data.class_names, path=data.train_data, what="--train_data")
    for path, what in ((data.eval_data, "--eval_data"), (data.test_data, "--test_data")):
        if path:
            _warn_missing(data, facts[path].class_counts, path=path, what=what)
    num_train = facts[data.train_data].num_examples
    data = dataclasses.replace(
        data, multi_label=multi_label, num_train_examples=num_train,
        num_eval_examples=facts[data.eval_data].num_examples if data.eval_data else None,
        class_weights=targets.resolve_class_weights(data.class_weight, class_names=data.class_names, counts=counts,
                                                    num_examples=num_train))
    return dataclasses.replace(cfg, data=data)


def _warn_missing(data: config.Data, counts, *, path: str, what: str) -> None:
    missing = discovery.check_class_coverage(counts, class_names=data.class_names, path=path, what=what)
    split = "validation" if what == "--eval_data" else "test"
    if missing:
        logging.warning("%d class(es) have no %s image in %s (%s): their %s figures will be missing from the "
                        "report", len(missing), split, path, ", ".join(missing[:5]), split)
