"""run(cfg): one strategy scope, the phase loop, resume, export.

Phases are data: `for phase in cfg.phases`. Each phase sets which layers train, recompiles with
its own optimizer, learning-rate schedule and batch size, and fits with early stopping that
restores its best weights. A finished phase leaves a checkpoint and a line in state.json, so a
restarted job (same command, same model_dir) continues after it instead of redoing it.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Dict, List, Optional, Tuple

from absl import logging
import tensorflow as tf
import tf_keras as keras

from trainer import data, distribute, fileio, memory, plots, schedules
from trainer import model as model_lib
from trainer.config import Config, ConfigError, Phase

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
HISTORY_FILE = "history.json"
_OWNED = (CONFIG_FILE, STATE_FILE, HISTORY_FILE, "plan.json", "checkpoints", "logs", "plots", "export")


@dataclasses.dataclass
class RunResult:
    export_dir: Optional[str]
    history: List[dict]


def run(cfg: Config, *, plan_only: bool = False) -> RunResult:
    """Trains every phase of `cfg` that is not done yet in its model_dir, then exports.

    With `plan_only`, prints the plan (phases, trainable parameters, batch sizes, learning
    rates) and returns without training or writing anything but the plan.
    """
    check_model_dir(cfg)
    keras.utils.set_random_seed(cfg.runtime.seed)
    if cfg.runtime.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(cfg.runtime.mixed_precision)
    strategy = distribute.build_strategy(cfg.runtime)
    chief = distribute.is_chief(strategy)
    with strategy.scope():
        model = model_lib.build_classifier(cfg.model)
        phases = memory.plan(cfg, model=model, replicas=strategy.num_replicas_in_sync)
        _log_plan(model, cfg=cfg, phases=phases)
        if plan_only:
            return RunResult(None, [])
        if chief:
            fileio.write_text_atomic(fileio.join(cfg.runtime.model_dir, CONFIG_FILE), cfg.to_json() + "\n")
        history = _train_phases(model, cfg=cfg, phases=phases, strategy=strategy, chief=chief)
    if not chief:
        return RunResult(None, history)
    plots.plot_learning_curves(history, fileio.join(cfg.runtime.model_dir, "plots", "learning_curves.png"))
    return RunResult(_export(model, cfg), history)


def _train_phases(model: keras.Model, *, cfg: Config, phases, strategy, chief: bool) -> List[dict]:
    """The phase loop, skipping phases a previous attempt finished (their weights are loaded)."""
    state = _read_state(cfg.runtime.model_dir)
    done = list(state)
    history = [h for h in _read_history(cfg.runtime.model_dir) if h["phase"] in done]
    if done:
        model.load_weights(state[done[-1]])
        logging.info("resuming %s: phase(s) %s already done", cfg.runtime.model_dir, ", ".join(done))
    for phase in phases:
        if phase.epochs == 0 or phase.name in done:
            continue
        history += _fit_phase(model, cfg=cfg, phase=phase, strategy=strategy, history=history, chief=chief)
        prefix = checkpoint_prefix(cfg, phase.name)
        model.save_weights(prefix)
        state[phase.name] = prefix
        done.append(phase.name)
        if chief:
            fileio.write_json_atomic(fileio.join(cfg.runtime.model_dir, STATE_FILE),
                                     {"completed": [{"phase": n, "checkpoint": state[n]} for n in done]})
    return history


def _log_plan(model: keras.Model, *, cfg: Config, phases) -> None:
    for phase in phases:
        if phase.epochs == 0:
            continue
        model_lib.set_trainable(model, phase=phase, bn=cfg.model.bn)
        batch_size = int(phase.batch_size)
        _log_phase_table(phase, counts=model_lib.parameter_counts(model), batch_size=batch_size,
                         lr=schedules.scaled_learning_rate(phase.learning_rate, batch_size=batch_size,
                                                           base_batch_size=phase.base_batch_size))


def check_model_dir(cfg: Config) -> None:
    """Refuses a model_dir that holds another run, unless --overwrite; clears it on overwrite."""
    model_dir = cfg.runtime.model_dir
    path = fileio.join(model_dir, CONFIG_FILE)
    if cfg.runtime.overwrite:
        for name in _OWNED:
            target = fileio.join(model_dir, name)
            if tf.io.gfile.isdir(target):
                tf.io.gfile.rmtree(target)
            elif tf.io.gfile.exists(target):
                tf.io.gfile.remove(target)
        return
    if not fileio.exists(path):
        return
    try:
        previous = Config.from_dict(fileio.read_json(path))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a config.json of this trainer ({e}); pass --overwrite to start "
                          "afresh or choose another --model_dir") from None
    old, new = previous.run_identity(), cfg.run_identity()
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
        raise ConfigError(f"--model_dir={model_dir} holds a different run ({', '.join(f'{k}: {old[k]} vs {new[k]}' for k in diff)[:300]}); "
                          "pass --overwrite to start afresh or choose another --model_dir")


def checkpoint_prefix(cfg: Config, phase_name: str) -> str:
    """Where a finished phase's weights go (TF checkpoint format: works on gs://)."""
    root = cfg.runtime.checkpoint_dir or fileio.join(cfg.runtime.model_dir, "checkpoints")
    return fileio.join(root, phase_name, "weights")


def checkpoint_of(model_dir: str, phase_name: str) -> str:
    """The checkpoint prefix a finished phase of the run in `model_dir` saved."""
    return _read_state(model_dir)[phase_name]


def _read_state(model_dir: str) -> Dict[str, str]:
    """Finished phases in order, each with its checkpoint prefix."""
    path = fileio.join(model_dir, STATE_FILE)
    if not fileio.exists(path):
        return {}
    return {entry["phase"]: entry["checkpoint"] for entry in fileio.read_json(path)["completed"]}


def _read_history(model_dir: str) -> List[dict]:
    path = fileio.join(model_dir, HISTORY_FILE)
    return list(fileio.read_json(path)) if fileio.exists(path) else []


def _fit_phase(model: keras.Model, *, cfg: Config, phase: Phase, strategy, history: List[dict],
               chief: bool) -> List[dict]:
    """Opens the phase's layers, recompiles, fits; returns the phase's epoch records."""
    model_lib.set_trainable(model, phase=phase, bn=cfg.model.bn)
    counts = model_lib.parameter_counts(model)
    batch_size = int(phase.batch_size)
    steps = schedules.steps_per_epoch(num_examples=cfg.data.num_train_examples, batch_size=batch_size,
                                      cap=cfg.runtime.steps_per_epoch)
    peak_lr = schedules.scaled_learning_rate(phase.learning_rate, batch_size=batch_size,
                                             base_batch_size=phase.base_batch_size)
    total = steps * phase.epochs
    warmup = schedules.warmup_steps(warmup_epochs=phase.warmup_epochs, steps_per_epoch=steps, total_steps=total)
    logging.info("starting phase %s", phase.name)
    _log_phase_table(phase, counts=counts, batch_size=batch_size, lr=peak_lr, steps=steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedules.build_schedule(
            peak_learning_rate=peak_lr, total_steps=total, warmup=warmup)),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=cfg.runtime.jit_compile)
    train_ds, eval_ds, eval_steps = _datasets(cfg, strategy=strategy, batch_size=batch_size)
    recorder = HistoryRecorder(phase=phase.name, previous=history,
                               path=fileio.join(cfg.runtime.model_dir, HISTORY_FILE) if chief else None)
    model.fit(train_ds, epochs=phase.epochs, steps_per_epoch=steps, validation_data=eval_ds,
              validation_steps=eval_steps, verbose=1 if sys.stdout.isatty() else 2,
              callbacks=_callbacks(cfg, phase=phase, recorder=recorder, has_eval=eval_ds is not None, chief=chief))
    return recorder.records


def _log_phase_table(phase: Phase, *, counts: dict, batch_size: int, lr: float, steps: Optional[int] = None) -> None:
    lines = [f"phase {phase.name}: unfreeze={phase.unfreeze} epochs={phase.epochs} batch_size={batch_size} "
             f"learning_rate={lr:.3g}" + (f" steps_per_epoch={steps}" if steps else ""),
             f"  {'total params':>22}: {counts['total']:>12,}",
             f"  {'trainable params':>22}: {counts['trainable']:>12,}",
             f"  {'non-trainable params':>22}: {counts['non_trainable']:>12,}"]
    logging.info("\n".join(lines))


def _datasets(cfg: Config, *, strategy, batch_size: int) -> Tuple[tf.data.Dataset, Optional[tf.data.Dataset], Optional[int]]:
    """Per-replica input pipelines; the batch size given is global."""
    def make(split: str, repeat: bool):
        return strategy.distribute_datasets_from_function(
            lambda ctx: data.build_dataset(cfg.data, split=split, batch_size=ctx.get_per_replica_batch_size(batch_size),
                                           input_context=ctx, repeat=repeat))
    train_ds = make("train", True)
    if not cfg.data.eval_data:
        return train_ds, None, None
    eval_steps = schedules.steps_per_epoch(num_examples=cfg.data.num_eval_examples, batch_size=batch_size, cap=None)
    return train_ds, make("eval", True), eval_steps


def _callbacks(cfg: Config, *, phase: Phase, recorder: "HistoryRecorder", has_eval: bool, chief: bool) -> list:
    monitor = "val_loss" if has_eval else "loss"
    callbacks: list = [recorder, data.SkippedRecordsLogger()]
    if phase.early_stopping_patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=phase.early_stopping_patience,
                                                       restore_best_weights=True, verbose=1))
    if chief:
        log_dir = cfg.runtime.tensorboard_dir or fileio.join(cfg.runtime.model_dir, "logs")
        callbacks.append(keras.callbacks.TensorBoard(log_dir=fileio.join(log_dir, phase.name), profile_batch=0))
    return callbacks


class HistoryRecorder(keras.callbacks.Callback):
    """Appends one DESIGN.md history record per epoch and rewrites history.json atomically."""

    def __init__(self, *, phase: str, previous: List[dict], path: Optional[str]):
        super().__init__()
        self.phase, self.previous, self.path = phase, list(previous), path
        self.records: List[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        record = {"phase": self.phase, "epoch": epoch + 1}
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            record[key] = float(logs[key]) if key in logs else None
        self.records.append(record)
        if self.path:
            fileio.write_json_atomic(self.path, self.previous + self.records)


def _export(model: keras.Model, cfg: Config) -> str:
    from trainer import export  # pylint: disable=import-outside-toplevel  # export pulls in serving/
    float_model = model_lib.build_float32_copy(model, cfg.model) if cfg.runtime.mixed_precision != "none" else model
    return export.export_saved_model(float_model, class_names=cfg.data.class_names, image_size=cfg.model.image_size,
                                     export_base=fileio.join(cfg.runtime.model_dir, "export"))


def restore_trained_model(model_dir: str, checkpoint: Optional[str] = None) -> Tuple[keras.Model, Config]:
    """The float32 model of a finished (or partly finished) run, from config.json and a checkpoint."""
    cfg_path = fileio.join(model_dir, CONFIG_FILE)
    if not fileio.exists(cfg_path):
        raise ConfigError(f"{cfg_path} not found: --model_dir must be the folder a training run wrote")
    cfg = Config.from_dict(fileio.read_json(cfg_path))
    done = _read_state(model_dir)
    if checkpoint is None and not done:
        raise ConfigError(f"{model_dir} has no finished phase yet: pass --checkpoint=PREFIX or train first")
    model = model_lib.build_classifier(dataclasses.replace(cfg.model, weights="none"))
    model.load_weights(checkpoint or list(done.values())[-1]).expect_partial()
    return model, cfg
