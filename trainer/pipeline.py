"""The whole job: train, then (on the chief) export, plot and report -- arrows that point down.

train.py trains and returns the model and its history; it imports neither the export nor the
evaluation. This module runs them in order, so `python -m trainer.task` is: task (flags) ->
pipeline.run -> train.run -> {data, model, embeddings, distribute, memory}, then export ->
evaluate. See docs/architecture.md.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

from absl import logging
import tensorflow as tf
import tf_keras as keras

import numpy as np

from trainer import (calibration, data, distribute, evaluate, export, exported, memory, multilabel, plots, reports,
                     runlock, tflite, train)
from trainer.config import Config
from trainer.rundir import RunDir


@dataclasses.dataclass
class RunResult:
    export_dir: Optional[str]
    history: List[dict]
    metrics: Optional[dict] = None  # the validation report's, measured through the export
    report_dir: Optional[str] = None
    plan: Optional[dict] = None  # with --plan_only: the plan, which nothing wrote

    def summary(self) -> List[str]:
        """How good the trained classifier is, in a few lines for a terminal."""
        if self.plan is not None:
            return [*memory.format_plan(self.plan).splitlines(), "plan only: nothing was written to --model_dir"]
        lines = []
        for phase in dict.fromkeys(r["phase"] for r in self.history):
            records = [r for r in self.history if r["phase"] == phase]
            scores = [r["val_accuracy"] for r in records if r.get("val_accuracy") is not None]
            key, best = ("val_accuracy", max(scores)) if scores else ("accuracy", max(r["accuracy"] for r in records))
            lines.append(f"{phase} phase: {len(records)} epoch(s), best {key} {best:.3f}")
        if self.metrics and self.metrics.get("multi_label"):
            lines.append(f"validation mAP {self.metrics['mean_average_precision']:.3f}, micro F1 "
                         f"{self.metrics['micro_f1']:.3f} on {self.metrics['num_examples']} images through the "
                         f"export; report: {self.report_dir}")
        elif self.metrics:
            lines.append(f"validation accuracy {self.metrics['accuracy']:.3f} on {self.metrics['num_examples']} "
                         f"images through the export; report: {self.report_dir}")
        if self.export_dir:
            lines.append(f"export: {self.export_dir}")
        return lines


def run(cfg: Config, *, strategy: tf.distribute.Strategy, plan_only: bool = False,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        last_phase_callbacks: Sequence[keras.callbacks.Callback] = ()) -> RunResult:
    """Trains (train.run), then on the chief: learning curves, the SavedModel, the validation report.

    The chief holds the run directory's lock throughout (trainer/runlock.py), except with
    `plan_only`, which writes nothing."""
    with runlock.held(cfg.runtime.model_dir, enabled=distribute.is_chief(strategy) and not plan_only):
        return _run(cfg, strategy=strategy, plan_only=plan_only, callbacks=callbacks,
                    last_phase_callbacks=last_phase_callbacks)


def _run(cfg: Config, *, strategy: tf.distribute.Strategy, plan_only: bool, callbacks,
         last_phase_callbacks) -> RunResult:
    trained = train.run(cfg, strategy=strategy, plan_only=plan_only, callbacks=callbacks,
                        last_phase_callbacks=last_phase_callbacks)
    if plan_only or not trained.chief:
        return RunResult(None, trained.history, plan=trained.plan if plan_only else None)
    run_dir = RunDir.of(cfg.runtime)
    plots.plot_learning_curves(trained.history, run_dir.curves)
    calibrated = calibrate(cfg, trained.model) if cfg.runtime.calibrate and not cfg.data.multi_label else None
    thresholds = choose_thresholds(cfg, trained.model) if cfg.data.multi_label else None
    export_dir = export.export_saved_model(trained.model, class_names=cfg.data.class_names,
                                           image_size=cfg.data.image_size, export_base=run_dir.export_base,
                                           thresholds=thresholds)
    metrics = (report(cfg, export_dir=export_dir, history=trained.history, extra=calibrated)
               if cfg.runtime.eval_report else {})
    if cfg.runtime.tflite:
        tflite.export_run(trained.model, cfg, variants=cfg.runtime.tflite, output_dir=run_dir.tflite_dir,
                          max_accuracy_drop=cfg.runtime.max_accuracy_drop)
    return RunResult(export_dir, trained.history, metrics or None, run_dir.eval_dir if metrics else None)


def calibrate(cfg: Config, model: keras.Model) -> Optional[dict]:
    """Fits the temperature on the validation split, folds it into the model's head and records
    it in MODEL_DIR/calibration.json (trainer.calibration); None without validation data."""
    predicted = _validation_predictions(cfg, model)
    if predicted is None:
        return None
    probabilities, labels = predicted
    result = calibration.fit(probabilities, labels)
    calibration.fold_into_head(model, result["temperature"])
    RunDir.of(cfg.runtime).write_calibration(result)
    logging.info("calibration: temperature %.3f on %d validation images (log loss %.3f -> %.3f)",
                 result["temperature"], len(labels), result["log_loss_before"], result["log_loss_after"])
    return result


def choose_thresholds(cfg: Config, model: keras.Model) -> Optional[List[float]]:
    """A multi-label model's per-class decision thresholds, each maximizing its class's F1 on the
    validation split (trainer.multilabel); recorded in MODEL_DIR/thresholds.json. None (0.5 each
    in the export) without validation data."""
    predicted = _validation_predictions(cfg, model)
    if predicted is None:
        return None
    thresholds = multilabel.choose_thresholds(*predicted)
    RunDir.of(cfg.runtime).write_thresholds({"thresholds": thresholds, "class_names": list(cfg.data.class_names),
                                             "chosen_on": cfg.data.eval_data, "num_examples": len(predicted[1])})
    logging.info("multi-label thresholds chosen on %d validation images: %s", len(predicted[1]),
                 " ".join(f"{t:.2f}" for t in thresholds[:10]) + (" ..." if len(thresholds) > 10 else ""))
    return thresholds


def _validation_predictions(cfg: Config, model: keras.Model):
    """(probabilities, labels) of the Keras model on the validation split, or None without one."""
    if not cfg.data.eval_data:
        return None
    probabilities, labels = [], []
    for x, y in data.build_dataset(cfg.data, split="eval", batch_size=64):
        probabilities.append(model(x, training=False).numpy())
        labels.append(y.numpy())
    if not labels:
        return None
    return np.concatenate(probabilities), np.concatenate(labels)


def report(cfg: Config, *, export_dir: str, history: List[dict], extra: Optional[dict] = None) -> dict:
    """The validation report (model_dir/eval/) and its TensorBoard summaries, from the export itself."""
    run_dir = RunDir.of(cfg.runtime)
    images = {"learning_curves": run_dir.curves} if tf.io.gfile.exists(run_dir.curves) else {}
    metrics: dict = {}
    if cfg.data.eval_data:
        try:
            metrics = evaluate.write_report(export_dir, data_path=cfg.data.eval_data, output_dir=run_dir.eval_dir,
                                            label_offset=cfg.data.label_offset, extra_metrics=extra)
            images.update(evaluate.report_images(run_dir.eval_dir))
            logging.info("validation report in %s: %s", run_dir.eval_dir, "; ".join(evaluate.summary_lines(metrics)[:3]))
        except (data.DataError, exported.PredictError) as e:
            logging.warning("no evaluation report: %s", e)
    reports.write_tensorboard(run_dir.logs_dir("eval"), metrics=metrics, images=images, step=len(history))
    return metrics
