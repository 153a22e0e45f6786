"""The one owner of a trained run's state: its classifier as the export serves it.

`restore_as_exported` reads a run directory (config.json, the last finished phase's checkpoint,
calibration.json) and returns the float32 classifier with the fitted temperature folded into the
head, which is what export, re-export, .tflite conversion and the report all need. The model
builder (trainer.models) knows nothing of run directories.
"""
from __future__ import annotations

from typing import Optional
import tf_keras as keras
from trainer.configs.config import Config, ConfigError
from trainer.models import classifier
from trainer.runtime.rundir import RunDir


def restore_trained_model(model_dir: str, checkpoint: Optional[str] = None) -> "tuple[keras.Model, Config]":
    """The float32 classifier of a finished (or partly finished) run, from its config.json and a
    checkpoint (default: the last finished phase's).

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


def restore_as_exported(model_dir: str, checkpoint: Optional[str] = None):
    """(model, config) of a run, the model as training exported it: the checkpoint's weights
    with the run's fitted temperature folded into the head (MODEL_DIR/calibration.json)."""
    from trainer.evaluation import calibration
    from trainer.runtime import rundir
    model, cfg = restore_trained_model(model_dir, checkpoint)
    calibration.fold_into_head(model, (rundir.RunDir(model_dir).read_calibration() or {}).get("temperature"))
    return model, cfg
