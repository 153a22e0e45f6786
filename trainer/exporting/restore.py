"""The one owner of a trained run's state: its classifier as the export serves it.

`restore_as_exported` reads a run directory (config.json, the last finished phase's checkpoint,
calibration.json) and returns the float32 classifier with the fitted temperature folded into the
head, which is what export, re-export, .tflite conversion and the report all need. The model
builder (trainer.models) knows nothing of run directories.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional

import tf_keras as keras

from trainer.configs.config import Config, ConfigError
from trainer.evaluation import calibration
from trainer.models import classifier
from trainer.runtime.rundir import RunDir


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A run's classifier as its export serves it.

    Attributes:
      model: the float32 classifier with the run's fitted temperature folded into its head.
      config: the run's Config (config.json).
      thresholds: a multi-label run's per-class decision thresholds (thresholds.json), else None.
    """
    model: keras.Model
    config: Config
    thresholds: Optional[List[float]] = None


def restore_as_exported(model_dir: str, checkpoint: Optional[str] = None) -> TrainedRun:
    """The run in `model_dir` as training exported it: the checkpoint's weights (default: the
    last finished phase's), the temperature of MODEL_DIR/calibration.json folded into the head,
    and the thresholds of MODEL_DIR/thresholds.json.

    Raises:
      ConfigError: `model_dir` holds no run, or no finished phase and no `checkpoint` is given.
    """
    run = RunDir(model_dir)
    model, cfg = checkpoint_classifier(model_dir, checkpoint)
    calibration.fold_into_head(model, (run.read_calibration() or {}).get("temperature"))
    return TrainedRun(model, cfg, (run.read_thresholds() or {}).get("thresholds"))


def checkpoint_classifier(model_dir: str, checkpoint: Optional[str] = None) -> "tuple[keras.Model, Config]":
    """(classifier, config) with a checkpoint's weights as training saved them: the head before
    calibration (checkpoints hold what the optimizer trained). `restore_as_exported` is the run
    as served; this is for a look at the raw head.

    Raises:
      ConfigError: `model_dir` holds no run, or no finished phase and no `checkpoint` is given.
    """
    run = RunDir(model_dir)
    cfg = run.read_config()
    if cfg is None:
        raise ConfigError(f"{run.path('config.json')} not found: --model_dir must be the folder a training run wrote")
    done = run.read_state()
    if checkpoint is None and not done:
        raise ConfigError(f"{model_dir} has no finished phase yet: pass --checkpoint=PREFIX or train first")
    model = classifier.classifier_for(cfg, weights="none")
    model.load_weights(checkpoint or list(done.values())[-1]).expect_partial()
    return model, cfg
