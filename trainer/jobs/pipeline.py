"""The whole job: train, then (on the chief) export, plot and report -- arrows that point down.

train.py trains and returns the model and its history; it imports neither the export nor the
evaluation. This module runs them in order, so `python -m trainer.task` is: task (flags) ->
pipeline.run -> train.run -> {data, model, embeddings, distribute, memory}, then export ->
evaluate. See docs/architecture.md.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple, Union

from absl import logging
import tensorflow as tf
import tf_keras as keras

import numpy as np

from trainer.analysis import gradcam, leakage
from trainer.configs.config import Config
from trainer.data import discovery, pipelines
from trainer.evaluation import calibration, evaluator, multilabel, plots, tensorboard
from trainer.exporting import saved_model, tflite
from trainer.inference import exported
from trainer.runtime import distribute, runlock
from trainer.runtime.rundir import RunDir
from trainer.training import memory, train


@dataclasses.dataclass
class RunResult:
    export_dir: Optional[str]
    history: List[dict]
    metrics: Optional[dict] = None  # the validation report's, measured through the export
    report_dir: Optional[str] = None
    plan: Optional[dict] = None  # with --plan_only: the plan, which nothing wrote
    test_metrics: Optional[dict] = None  # the test report's: held out, no choice was made on it
    test_report_dir: Optional[str] = None
    chosen_on_validation: Tuple[str, ...] = ()  # what the validation split chose: epochs, temperature, thresholds

    def summary(self) -> List[str]:
        """How good the trained classifier is, in a few lines for a terminal: the test figure
        first when there is one (the only one no choice was made on), then the validation figure
        labelled with what it chose, which makes it optimistic."""
        if self.plan is not None:
            return [*memory.format_plan(self.plan).splitlines(), "plan only: nothing was written to --model_dir"]
        lines = []
        for phase in dict.fromkeys(r["phase"] for r in self.history):
            records = [r for r in self.history if r["phase"] == phase]
            scores = [r["val_accuracy"] for r in records if r.get("val_accuracy") is not None]
            key, best = ("val_accuracy", max(scores)) if scores else ("accuracy", max(r["accuracy"] for r in records))
            lines.append(f"{phase} phase: {len(records)} epoch(s), best {key} {best:.3f}")
        if self.test_metrics:
            lines.append(f"test {_figures(self.test_metrics)} on {self.test_metrics['num_examples']} held-out images "
                         f"(no choice was made on them) through the export; report: {self.test_report_dir}")
        if self.metrics:
            chose = " and ".join(f"the {c}" for c in self.chosen_on_validation)
            lines.append(f"validation {_figures(self.metrics)} on {self.metrics['num_examples']} images through the "
                         f"export{f' (chose {chose})' if chose else ''}; report: {self.report_dir}")
        if self.metrics and not self.test_metrics:
            why = f"it chose {chose}" if chose else "once flags are chosen by it"
            lines.append(f"the validation figure is optimistic ({why}): for a held-out figure, prepare with "
                         "--test_fraction=0.1 or pass --test_data=IMAGES (docs/evaluate.md)")
        if self.export_dir:
            lines.append(f"export: {self.export_dir}")
        return lines


def _figures(metrics: dict) -> str:
    """A report's headline figures: accuracy, or mAP and micro F1 for multi-label data."""
    if metrics.get("multi_label"):
        return f"mAP {metrics['mean_average_precision']:.3f}, micro F1 {metrics['micro_f1']:.3f}"
    return f"accuracy {metrics['accuracy']:.3f}"


def run(cfg: Config, *, strategy: tf.distribute.Strategy, plan_only: bool = False,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        last_phase_callbacks: Sequence[keras.callbacks.Callback] = (), leakage_check: bool = True) -> RunResult:
    """Trains (train.run), then on the chief: learning curves, the SavedModel, the validation report
    and (with test data) the test report.

    The chief holds the run directory's lock throughout (trainer/runtime/runlock.py), except with
    `plan_only`, which writes nothing. `leakage_check`: count each report's images with a near copy in
    the training split (trainer.analysis.leakage; one pass of the training split through the export)."""
    with runlock.held(cfg.runtime.model_dir, enabled=distribute.is_chief(strategy) and not plan_only):
        return _run(cfg, strategy=strategy, plan_only=plan_only, callbacks=callbacks,
                    last_phase_callbacks=last_phase_callbacks, leakage_check=leakage_check)


def _run(cfg: Config, *, strategy: tf.distribute.Strategy, plan_only: bool, callbacks,
         last_phase_callbacks, leakage_check: bool = True) -> RunResult:
    trained = train.run(cfg, strategy=strategy, plan_only=plan_only, callbacks=callbacks,
                        last_phase_callbacks=last_phase_callbacks)
    if plan_only or not trained.chief:
        return RunResult(None, trained.history, plan=trained.plan if plan_only else None)
    run_dir = RunDir.of(cfg.runtime)
    plots.plot_learning_curves(trained.history, run_dir.curves)
    calibrated = calibrate(cfg, trained.model) if cfg.runtime.calibrate and not cfg.data.multi_label else None
    thresholds = choose_thresholds(cfg, trained.model) if cfg.data.multi_label else None
    export_dir = saved_model.export_saved_model(trained.model, class_names=cfg.data.class_names,
                                           image_size=cfg.data.image_size, export_base=run_dir.export_base,
                                           thresholds=thresholds)
    chosen = chosen_on_validation(cfg, calibrated=calibrated, thresholds=thresholds)
    metrics, test_metrics = (report(cfg, export_dir=export_dir, history=trained.history, extra=calibrated,
                                    chosen=chosen, leakage_check=leakage_check, model=trained.model)
                             if cfg.runtime.eval_report else ({}, {}))
    if cfg.runtime.tflite:
        tflite.export_run(trained.model, cfg, variants=cfg.runtime.tflite, output_dir=run_dir.tflite_dir,
                          max_accuracy_drop=cfg.runtime.max_accuracy_drop)
    return RunResult(export_dir, trained.history, metrics or None, run_dir.eval_dir if metrics else None,
                     test_metrics=test_metrics or None,
                     test_report_dir=run_dir.test_eval_dir if test_metrics else None, chosen_on_validation=chosen)


def chosen_on_validation(cfg: Config, *, calibrated: Optional[dict],
                         thresholds: Optional[List[float]]) -> Tuple[str, ...]:
    """What this run chose on the validation split, each a reason its figures are optimistic:
    the epochs (early stopping restores the best validation epoch), the phase whose weights
    the run keeps (`--keep_best_phase`), the temperature, the multi-label thresholds. Said beside the validation figure and in its metrics.json."""
    if not cfg.data.eval_data:
        return ()
    chosen = ["epochs"] if any(p.epochs and p.early_stopping_patience for p in cfg.phases) else []
    if cfg.runtime.keep_best_phase and sum(1 for p in cfg.phases if p.epochs) > 1:
        chosen.append("phase")  # trainer/training/train.py keeps the earlier phase where the later scores lower on it
    fitted = bool(calibrated) and calibrated.get("calibration", {}).get("fitted", True)
    return tuple(chosen + ["temperature"] * fitted + ["thresholds"] * (thresholds is not None))


def calibrate(cfg: Config, model: keras.Model) -> Optional[dict]:
    """Fits the temperature on the validation split where calibration.fit's rule allows one,
    folds it into the model's head and records it in MODEL_DIR/calibration.json; returned for
    the validation report's metrics.json. A skipped one is T = 1 with its reason under
    "calibration", in both. None without validation data."""
    predicted = _validation_predictions(cfg, model)
    if predicted is None:
        return None
    probabilities, labels = predicted
    result = calibration.fit(probabilities, labels)
    calibration.fold_into_head(model, result["temperature"])
    RunDir.of(cfg.runtime).write_calibration(result)
    entry = result["calibration"]
    logging.info("calibration: %s: %s; log loss %.3f -> %.3f (docs/evaluate.md)",
                 "fitted" if entry["fitted"] else "skipped, T = 1", entry["reason"],
                 result["log_loss_before"], result["log_loss_after"])
    return result


def choose_thresholds(cfg: Config, model: keras.Model) -> Optional[List[float]]:
    """A multi-label model's per-class decision thresholds, each maximizing its class's F1 on the
    validation split (trainer.evaluation.multilabel); recorded in MODEL_DIR/thresholds.json. None (0.5 each
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
    for x, y in pipelines.build_dataset(cfg.data, split="eval", batch_size=64):
        probabilities.append(model(x, training=False).numpy())
        labels.append(y.numpy())
    if not labels:
        return None
    return np.concatenate(probabilities), np.concatenate(labels)


def report(cfg: Config, *, export_dir: str, history: List[dict], extra: Optional[dict] = None,
           chosen: Sequence[str] = (), leakage_check: bool = True,
           model: Optional[keras.Model] = None) -> Tuple[dict, dict]:
    """The validation report (MODEL_DIR/eval/) and, with test data, the test report
    (MODEL_DIR/eval/test/), both from the export itself, with their TensorBoard summaries.

    Each metrics.json says its split and what was chosen on it (`chosen`: on validation only),
    so a figure read later still says whether it is held out. Returns (validation, test)
    metrics, each {} when there is no such data or its report failed. With `leakage_check`, each
    counts its images with a near copy in the training split (`near_copies_of_training`). With
    `model` (the exported classifier), each report's worst images get their Grad-CAM overlays
    (worst_explained.png, trainer.analysis.gradcam).
    """
    run_dir = RunDir.of(cfg.runtime)
    # One load of the export for the leakage check and both reports.
    export = _loaded(export_dir) if cfg.data.eval_data or cfg.data.test_data else export_dir
    check = leakage.Check(export, train_data=cfg.data.train_data,
                          label_offset=cfg.data.label_offset) if leakage_check else None
    explain = gradcam.Explainer(model).overlay_pngs if model is not None else None
    images = {"learning_curves": run_dir.curves} if tf.io.gfile.exists(run_dir.curves) else {}
    validation = _split_report(cfg, split="validation", data_path=cfg.data.eval_data, export=export,
                               output_dir=run_dir.eval_dir, extra={**(extra or {}), "used_to_choose": list(chosen)},
                               check=check, explain=explain)
    if validation:
        images.update(evaluator.report_images(run_dir.eval_dir))
    tensorboard.write_tensorboard(run_dir.logs_dir("eval"), metrics=validation, images=images, step=len(history))
    temperature = {"temperature": extra["temperature"]} if extra and "temperature" in extra else {}
    test = _split_report(cfg, split="test", data_path=cfg.data.test_data, export=export,
                         output_dir=run_dir.test_eval_dir, extra={**temperature, "used_to_choose": []}, check=check,
                         explain=explain)
    if test:
        tensorboard.write_tensorboard(run_dir.logs_dir("eval", "test"), metrics=test,
                                  images=evaluator.report_images(run_dir.test_eval_dir), step=len(history))
    return validation, test


def _loaded(export_dir: str) -> Union[str, exported.Export]:
    """The export loaded once for the run's reports, or its path where it cannot be loaded (each
    report then warns on its own, as before)."""
    try:
        return exported.load_export(export_dir)
    except (exported.PredictError, tf.errors.OpError) as e:
        logging.warning("could not load the export %s for the reports: %s", export_dir, e)
        return export_dir


def _split_report(cfg: Config, *, split: str, data_path: Optional[str], export: Union[str, exported.Export],
                  output_dir: str, extra: dict, check: Optional[leakage.Check] = None,
                  explain: Optional[Callable[[Sequence[bytes]], Sequence[bytes]]] = None) -> dict:
    """One split's report through the export ({} without data, or with a warning when it fails:
    the run has trained and exported, and a report can be rewritten with trainer.evaluate)."""
    if not data_path:
        return {}
    if check:
        extra = {**extra, **check.metrics(data_path=data_path, split=split)}
    try:
        metrics = evaluator.write_report(export, data_path=data_path, output_dir=output_dir,
                                        label_offset=cfg.data.label_offset,
                                        extra_metrics={"split": split, "held_out": split == "test", **extra},
                                        known_count=cfg.data.num_eval_examples if data_path == cfg.data.eval_data else None,
                                        explain=explain)
    except (discovery.DataError, exported.PredictError) as e:
        logging.warning("no %s report: %s", split, e)
        return {}
    logging.info("%s report in %s: %s", split, output_dir, "; ".join(evaluator.summary_lines(metrics)[:3]))
    return metrics
