"""Reporting the tuning metric when the trainer runs as a Vertex AI hyperparameter tuning trial.

Vertex AI runs each trial as a CustomJob with the study's parameters appended as flags and
`CLOUD_ML_TRIAL_ID` set; the trial's measurements are what the trainer reports through
cloudml-hypertune (`report_hyperparameter_tuning_metric`), which appends a JSON line to
`CLOUD_ML_HP_METRIC_FILE` (default /tmp/hypertune/output.metrics) for Vertex's agent to read.

The trainer reports at the end of every epoch of its last phase, so the study sees a curve (and
can stop bad trials early) and its final measurement is the model that is exported. Outside a
trial nothing is reported and nothing is written. Only the chief reports: every worker of a
multi-worker trial computes the same metric, and the study wants one measurement per step.

Wiring (trainer.task reads flags and environment, trainer.training.train owns the callbacks):
`build_callback(metric=FLAGS.hptune_metric, env=os.environ, is_chief=...)` returns a Keras
callback or None; the last phase's `fit` gets it.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

TRIAL_ENV = "CLOUD_ML_TRIAL_ID"
DEFAULT_METRIC = "val_accuracy"
# What history.json records per epoch, and so what the trainer can report.
METRICS = ("accuracy", "loss", "val_accuracy", "val_loss")


def check_metric(metric: str, *, has_eval_data: bool) -> None:
    """Refuses, before training starts, a metric the trainer will never have.

    Raises:
      ValueError: naming --hptune_metric and the fix.
    """
    if metric not in METRICS:
        raise ValueError(f"--hptune_metric={metric}: choose one of {', '.join(METRICS)}")
    if metric.startswith("val_") and not has_eval_data:
        raise ValueError(f"--hptune_metric={metric} is measured on validation data: pass --eval_data, or "
                         "--hptune_metric=accuracy/loss (and the study's metric to match)")


def trial_id(env: Mapping[str, str]) -> Optional[str]:
    """The tuning trial this process runs, or None outside hyperparameter tuning."""
    return env.get(TRIAL_ENV) or None


def sends_metrics(env: Mapping[str, str], *, is_chief: bool) -> bool:
    """Measurements go to the study from the chief of a tuning trial only."""
    return is_chief and trial_id(env) is not None


def _callback_class():
    """The Keras callback class, made when a trial needs it: importing this module (trainer.task
    does, to define its flags) loads no TensorFlow, so a bad flag is answered in a second."""
    import tf_keras as keras  # pylint: disable=import-outside-toplevel

    class HypertuneCallback(keras.callbacks.Callback):
        """Sends `metric` from each epoch's logs as the trial's measurement at that epoch.

        Args:
          metric: the logs key, also the hyperparameter_metric_tag the study's metricId names.
          send: `hypertune.HyperTune().report_hyperparameter_tuning_metric`, or a stand-in.
          epoch_offset: epochs of earlier phases, so the steps keep counting across phases.
        """

        def __init__(self, metric: str, send: Callable[..., None], *, epoch_offset: int = 0):
            super().__init__()
            self.metric, self.send, self.epoch_offset = metric, send, epoch_offset

        def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
            logs = logs or {}
            if self.metric not in logs:
                raise ValueError(f"--hptune_metric={self.metric} is not among this epoch's metrics "
                                 f"({', '.join(sorted(logs)) or 'none'}): pick one of them")
            self.send(hyperparameter_metric_tag=self.metric, metric_value=float(logs[self.metric]),
                      global_step=self.epoch_offset + epoch + 1)

    return HypertuneCallback


def build_callback(*, metric: str, env: Mapping[str, str], is_chief: bool, epoch_offset: int = 0,
                   client_factory: Optional[Callable[[], object]] = None):
    """The callback for the last phase's fit, or None when this process sends nothing.

    `client_factory` builds the client (default `hypertune.HyperTune`, which reads
    CLOUD_ML_HP_METRIC_FILE when it is made); it is imported only inside a trial.
    """
    if not sends_metrics(env, is_chief=is_chief):
        return None
    if client_factory is None:
        import hypertune  # pylint: disable=import-outside-toplevel  # cloudml-hypertune, only in trials
        client_factory = hypertune.HyperTune
    return _callback_class()(metric, client_factory().report_hyperparameter_tuning_metric,
                             epoch_offset=epoch_offset)

