"""run(cfg): one strategy scope, the phase loop, resume, export.

Phases are data: `for phase in cfg.phases`. Each phase sets which layers train, recompiles with
its own optimizer, learning-rate schedule and batch size, and fits with early stopping that
restores its best weights. A finished phase leaves a checkpoint and a line in state.json, so a
restarted job (same command, same model_dir) continues after it instead of redoing it; a job
stopped inside a phase continues that phase from its backup (trainer/preemption.py), so
history.json ends with each (phase, epoch) exactly once. Under MultiWorkerMirroredStrategy every
worker trains and saves, but only the chief writes files others read (docs/distributed.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf
import tf_keras as keras

from trainer import accumulate, data, distribute, embeddings, fileio, memory, plots, preemption, schedules
from trainer import model as model_lib
from trainer.config import Config, ConfigError, Phase

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
HISTORY_FILE = "history.json"
_OWNED = (CONFIG_FILE, STATE_FILE, HISTORY_FILE, "plan.json", "checkpoints", "logs", "plots", "export", "eval",
          preemption.BACKUP_DIR, embeddings.CACHE_DIR)


@dataclasses.dataclass
class RunResult:
    export_dir: Optional[str]
    history: List[dict]
    metrics: Optional[dict] = None  # the validation report's, measured through the export
    report_dir: Optional[str] = None

    def summary(self) -> List[str]:
        """How good the trained classifier is, in a few lines for a terminal."""
        lines = []
        for phase in dict.fromkeys(r["phase"] for r in self.history):
            records = [r for r in self.history if r["phase"] == phase]
            scores = [r["val_accuracy"] for r in records if r.get("val_accuracy") is not None]
            key, best = ("val_accuracy", max(scores)) if scores else ("accuracy", max(r["accuracy"] for r in records))
            lines.append(f"{phase} phase: {len(records)} epoch(s), best {key} {best:.3f}")
        if self.metrics:
            lines.append(f"validation accuracy {self.metrics['accuracy']:.3f} on {self.metrics['num_examples']} "
                         f"images through the export; report: {self.report_dir}")
        if self.export_dir:
            lines.append(f"export: {self.export_dir}")
        return lines


def run(cfg: Config, *, plan_only: bool = False, strategy: Optional[tf.distribute.Strategy] = None,
        last_phase_callbacks: Sequence[keras.callbacks.Callback] = ()) -> RunResult:
    """Trains every phase of `cfg` that is not done yet in its model_dir, then exports.

    With `plan_only`, prints the plan (phases, trainable parameters, batch sizes, learning
    rates) and returns without training or writing anything but the plan. `strategy` is made
    from cfg.runtime when not given (task.py makes it first: MultiWorkerMirroredStrategy must
    exist before TensorFlow's first op). `last_phase_callbacks` join the fit of the last phase
    that trains (hyperparameter-tuning reports: trainer/hptune.py).
    """
    strategy = strategy or distribute.build_strategy(strategy=cfg.runtime.strategy, tpu=cfg.runtime.tpu)
    chief = distribute.is_chief(strategy)
    # Only the chief clears or checks the folder; building the model below is a collective
    # (MultiWorkerMirroredStrategy broadcasts initial values), so no worker reads it before.
    check_model_dir(cfg, clear=chief)
    keras.utils.set_random_seed(cfg.runtime.seed)
    if cfg.runtime.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(cfg.runtime.mixed_precision)
    with strategy.scope():
        model = model_lib.build_classifier(cfg.model)
        accumulate.install(model, steps=cfg.runtime.accumulate_steps)
        phases = memory.plan(cfg, model=model, replicas=strategy.num_replicas_in_sync, chief=chief)
        _log_plan(model, cfg=cfg, phases=phases)
        if plan_only:
            return RunResult(None, [])
        if chief:
            fileio.write_text_atomic(fileio.join(cfg.runtime.model_dir, CONFIG_FILE), cfg.to_json() + "\n")
        history = _train_phases(model, cfg=cfg, phases=phases, strategy=strategy, chief=chief,
                                last_phase_callbacks=list(last_phase_callbacks))
    logging.info("final weights: %s", weights_digest(model))
    model = _exportable(model, cfg=cfg, strategy=strategy)
    if not chief:
        return RunResult(None, history)
    curves = fileio.join(cfg.runtime.model_dir, "plots", "learning_curves.png")
    plots.plot_learning_curves(history, curves)
    export_dir = _export(model, cfg)
    metrics = _report(cfg, export_dir=export_dir, history=history, curves=curves) if cfg.runtime.report else {}
    return RunResult(export_dir, history, metrics or None,
                     fileio.join(cfg.runtime.model_dir, "eval") if metrics else None)


def _report(cfg: Config, *, export_dir: str, history: List[dict], curves: str) -> dict:
    """The validation report (model_dir/eval/) and its TensorBoard summaries, from the export itself."""
    from trainer import evaluate, predict, reports  # pylint: disable=import-outside-toplevel
    log_dir = cfg.runtime.tensorboard_dir or fileio.join(cfg.runtime.model_dir, "logs")
    images = {"learning_curves": curves} if fileio.exists(curves) else {}
    metrics: dict = {}
    if cfg.data.eval_data:
        eval_dir = fileio.join(cfg.runtime.model_dir, "eval")
        try:
            metrics = evaluate.write_report(export_dir, data_path=cfg.data.eval_data, output_dir=eval_dir,
                                            label_offset=cfg.data.label_offset)
            images.update(evaluate.report_images(eval_dir))
            logging.info("validation report in %s: %s", eval_dir, "; ".join(evaluate.summary_lines(metrics)))
        except (data.DataError, predict.PredictError) as e:
            logging.warning("no evaluation report: %s", e)
    reports.write_tensorboard(fileio.join(log_dir, "eval"), metrics=metrics, images=images, step=len(history))
    return metrics


def _train_phases(model: keras.Model, *, cfg: Config, phases, strategy, chief: bool,
                  last_phase_callbacks: List[keras.callbacks.Callback]) -> List[dict]:
    """The phase loop, skipping phases a previous attempt finished (their weights are loaded).

    A phase a previous attempt stopped inside keeps its history records; its backup restores
    it, and HistoryRecorder drops the records of the epochs it trains again.
    """
    state = _read_state(cfg.runtime.model_dir)
    todo = [p for p in phases if p.epochs > 0 and p.name not in state]
    history = [h for h in _read_history(cfg.runtime.model_dir)
               if h["phase"] in state or h["phase"] in {p.name for p in todo}]
    if state:
        model.load_weights(state[list(state)[-1]])
        logging.info("resuming %s: phase(s) %s already done", cfg.runtime.model_dir, ", ".join(state))
    with preemption.Guard(strategy=strategy) as guard:
        for phase in todo:
            extra = last_phase_callbacks if phase is todo[-1] and phase is _last_trained(phases) else []
            history = _fit_phase(model, cfg=cfg, phase=phase, strategy=strategy, history=history, chief=chief,
                                 guard=guard, extra_callbacks=extra)
            _finish_phase(model, cfg=cfg, phase_name=phase.name, state=state, strategy=strategy, chief=chief)
    return history


def _last_trained(phases) -> Optional[Phase]:
    trained = [p for p in phases if p.epochs > 0]
    return trained[-1] if trained else None


def _finish_phase(model: keras.Model, *, cfg: Config, phase_name: str, state: Dict[str, str], strategy,
                  chief: bool) -> None:
    """Saves the phase's weights, records it in state.json, and only then drops its backup.

    Every worker saves (a collective under MultiWorkerMirroredStrategy); only the chief's copy
    lands at the prefix, the others go to a temporary folder that is removed.
    """
    prefix = checkpoint_prefix(cfg, phase_name)
    folder, name = os.path.split(prefix)
    model.save_weights(fileio.join(distribute.write_dir(folder, strategy=strategy), name))
    distribute.remove_write_dir(folder, strategy=strategy)
    state[phase_name] = prefix
    if chief:
        fileio.write_json_atomic(fileio.join(cfg.runtime.model_dir, STATE_FILE),
                                 {"completed": [{"phase": n, "checkpoint": p} for n, p in state.items()]})
        preemption.remove_backup(cfg.runtime.model_dir, phase_name)
        embeddings.remove_caches(cfg.runtime.model_dir)


def weights_digest(model: keras.Model) -> str:
    """A short fingerprint of every weight: workers of one job must log the same one."""
    digest = hashlib.sha256()
    for value in model.get_weights():
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def _log_plan(model: keras.Model, *, cfg: Config, phases) -> None:
    for phase in phases:
        if phase.epochs == 0:
            continue
        model_lib.set_trainable(model, phase=phase, bn=cfg.model.bn)
        batch_size = int(phase.batch_size)
        _log_phase_table(phase, counts=model_lib.parameter_counts(model), batch_size=batch_size,
                         lr=schedules.scaled_learning_rate(phase.learning_rate, batch_size=batch_size,
                                                           base_batch_size=phase.base_batch_size))


def check_model_dir(cfg: Config, *, clear: bool = True) -> None:
    """Refuses a model_dir that holds another run, unless --overwrite; clears it on overwrite
    (when `clear`: the chief of a multi-worker job does it for all)."""
    model_dir = cfg.runtime.model_dir
    path = fileio.join(model_dir, CONFIG_FILE)
    if cfg.runtime.overwrite:
        if not clear:
            return
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
               chief: bool, guard: preemption.Guard, extra_callbacks: List[keras.callbacks.Callback]) -> List[dict]:
    """Opens the phase's layers and fits it; out of memory, it retries at half the batch."""
    model_lib.set_trainable(model, phase=phase, bn=cfg.model.bn)
    counts = model_lib.parameter_counts(model)
    logging.info("starting phase %s", phase.name)
    target, datasets = _phase_inputs(model, cfg=cfg, phase=phase, strategy=strategy, chief=chief)

    state = {"history": list(history)}

    def fit_once(batch_size: int) -> List[dict]:
        if batch_size != int(phase.batch_size) and chief:
            # A backup's step counts batches of the old size: the retry starts the phase over
            # (from the weights of the last good step) rather than resuming at a wrong offset.
            preemption.remove_backup(cfg.runtime.model_dir, phase.name)
        recorder = HistoryRecorder(phase=phase.name, previous=state["history"],
                                   path=fileio.join(cfg.runtime.model_dir, HISTORY_FILE) if chief else None)
        try:
            _fit_at_batch(target, cfg=cfg, phase=phase, batch_size=batch_size, strategy=strategy, datasets=datasets,
                          recorder=recorder, chief=chief, guard=guard, counts=counts, extra_callbacks=extra_callbacks)
        finally:
            state["history"] = recorder.history  # a retry keeps the epochs this attempt recorded
        return recorder.history
    return memory.fit_with_oom_recovery(fit_once, phase=phase, replicas=strategy.num_replicas_in_sync,
                                        model_dir=cfg.runtime.model_dir, chief=chief,
                                        accumulate_steps=cfg.runtime.accumulate_steps)


def _phase_inputs(model: keras.Model, *, cfg: Config, phase: Phase, strategy, chief: bool):
    """What the phase fits, and a function batch_size -> (train, eval, eval steps) it fits on.

    The classifier on images; or, in the frozen phase where the cache applies, the classifier's
    own head on cached embeddings (trainer/embeddings.py): the same layers, trained without
    running the backbone every epoch.
    """
    if phase.name == "frozen":
        cached, reason = embeddings.applies(setting=cfg.runtime.frozen_cache, bn=cfg.model.bn, strategy=strategy)
        if not cached and cfg.runtime.frozen_cache == "on":
            raise ConfigError(f"--frozen_cache=on does not apply here ({reason}): pass --frozen_cache=auto")
        logging.info("frozen phase %s: %s", "on cached embeddings" if cached else "streams images", reason)
        if cached:
            caches = embeddings.build_caches(
                model, data_cfg=cfg.data, model_cfg=cfg.model, strategy=strategy, model_dir=cfg.runtime.model_dir,
                views=data.view_count(cfg.data.augment, randaugment_views=cfg.data.cache_views),
                memory_budget=int(memory.cpu_available_bytes() * embeddings.MEMORY_FRACTION), verbose=chief)
            return model_lib.head_model(model), embeddings.datasets_fn(
                caches, strategy=strategy, seed=cfg.data.seed, eval_examples=cfg.data.num_eval_examples)
    return model, lambda batch_size: _datasets(cfg, strategy=strategy, batch_size=batch_size)


def _fit_at_batch(model: keras.Model, *, cfg: Config, phase: Phase, batch_size: int, strategy, datasets,
                  recorder: "HistoryRecorder", chief: bool, guard: preemption.Guard, counts: dict,
                  extra_callbacks: List[keras.callbacks.Callback]) -> None:
    """Recompiles for `batch_size` (learning rate, schedule, datasets) and fits the phase."""
    steps = schedules.steps_per_epoch(num_examples=cfg.data.num_train_examples, batch_size=batch_size,
                                      cap=cfg.runtime.steps_per_epoch)
    peak_lr = schedules.scaled_learning_rate(phase.learning_rate, batch_size=batch_size,
                                             base_batch_size=phase.base_batch_size)
    total = steps * phase.epochs
    warmup = schedules.warmup_steps(warmup_epochs=phase.warmup_epochs, steps_per_epoch=steps, total_steps=total)
    _log_phase_table(phase, counts=counts, batch_size=batch_size, lr=peak_lr, steps=steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedules.build_schedule(
            peak_learning_rate=peak_lr, total_steps=total, warmup=warmup)),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=cfg.runtime.jit_compile,
        steps_per_execution=distribute.steps_per_execution(strategy, steps_per_epoch=steps))
    train_ds, eval_ds, eval_steps = datasets(batch_size)
    backup = preemption.PhaseBackup(preemption.backup_dir(cfg.runtime.model_dir, phase.name), epochs=phase.epochs,
                                    steps_per_epoch=steps, guard=guard)
    callbacks = (memory.oom_test_hooks(phase.name)
                 + _callbacks(cfg, phase=phase, recorder=recorder, has_eval=eval_ds is not None, chief=chief)
                 + list(extra_callbacks) + [backup])  # last: it saves after the history record and after EarlyStopping's restore
    # A progress bar per epoch on a terminal when epochs are slow (images); else one line an epoch.
    bar = sys.stdout.isatty() and model.name != "head"
    callbacks += [] if bar or not chief else [EpochLogger(phase.name, epochs=phase.epochs)]
    model.fit(train_ds, epochs=phase.epochs, steps_per_epoch=steps, validation_data=eval_ds,
              validation_steps=eval_steps, verbose=1 if bar else 0, callbacks=callbacks)


def _log_phase_table(phase: Phase, *, counts: dict, batch_size: int, lr: float, steps: Optional[int] = None) -> None:
    lines = [f"phase {phase.name}: unfreeze={phase.unfreeze} epochs={phase.epochs} batch_size={batch_size} "
             f"learning_rate={lr:.3g}" + (f" steps_per_epoch={steps}" if steps else ""),
             f"  {'total params':>22}: {counts['total']:>12,}",
             f"  {'trainable params':>22}: {counts['trainable']:>12,}",
             f"  {'non-trainable params':>22}: {counts['non_trainable']:>12,}"]
    logging.info("\n".join(lines))


def _datasets(cfg: Config, *, strategy, batch_size: int) -> Tuple[tf.data.Dataset, Optional[tf.data.Dataset], Optional[int]]:
    """Per-replica input pipelines; the batch size given is global. TPUs need static shapes."""
    static = distribute.is_tpu(strategy)

    def make(split: str, repeat: bool):
        return strategy.distribute_datasets_from_function(
            lambda ctx: data.build_dataset(cfg.data, split=split, batch_size=ctx.get_per_replica_batch_size(batch_size),
                                           input_context=ctx, repeat=repeat, drop_remainder=static))
    train_ds = make("train", True)
    if not cfg.data.eval_data:
        return train_ds, None, None
    if distribute.exact_eval_pass(strategy):
        return train_ds, make("eval", False), None
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


class EpochLogger(keras.callbacks.Callback):
    """One log line per epoch -- every k-th of a long phase, so that ~10 lines tell it -- plus the last."""

    def __init__(self, phase: str, *, epochs: int, lines: int = 10):
        super().__init__()
        self.phase, self.epochs, self.every = phase, epochs, max(1, -(-epochs // lines))
        self._start = 0.0

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        stopping = bool(getattr(self.model, "stop_training", False))
        if (epoch + 1) % self.every and epoch + 1 != self.epochs and not stopping:
            return
        logs = logs or {}
        metrics = " ".join(f"{k}={logs[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs)
        logging.info("%s epoch %d/%d: %s (%.1f s)", self.phase, epoch + 1, self.epochs, metrics,
                     time.perf_counter() - self._start)


class HistoryRecorder(keras.callbacks.Callback):
    """Appends one DESIGN.md history record per epoch and rewrites history.json atomically.

    A resumed phase starts at the epoch its backup reached: records of that epoch and later ones
    (written by the stopped attempt after its last backup) are dropped when it begins, so each
    (phase, epoch) appears once.
    """

    def __init__(self, *, phase: str, previous: List[dict], path: Optional[str]):
        super().__init__()
        self.phase, self.previous, self.path = phase, list(previous), path
        self.records: List[dict] = []
        self._started = False

    @property
    def history(self) -> List[dict]:
        return self.previous + self.records

    def on_epoch_begin(self, epoch, logs=None):
        if not self._started:
            self._started = True
            self.previous = [r for r in self.previous if r["phase"] != self.phase or r["epoch"] <= epoch]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        record = {"phase": self.phase, "epoch": epoch + 1}
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            record[key] = float(logs[key]) if key in logs else None
        self.records.append(record)
        if self.path:
            fileio.write_json_atomic(self.path, self.history)


def _exportable(model: keras.Model, *, cfg: Config, strategy) -> keras.Model:
    """The trained model as export wants it: float32, with plain variables.

    After mixed precision, or under any strategy but the default one, this is a copy built
    outside the strategy. Every worker makes it: under MultiWorkerMirroredStrategy, reading
    BatchNormalization's moving statistics (variables synchronized on read) is a collective,
    which the chief alone would wait on forever.
    """
    if cfg.runtime.mixed_precision == "none" and distribute.is_default(strategy):
        return model
    return model_lib.build_float32_copy(model, cfg.model)


def _export(model: keras.Model, cfg: Config) -> str:
    from trainer import export  # pylint: disable=import-outside-toplevel  # export pulls in serving/
    return export.export_saved_model(model, class_names=cfg.data.class_names, image_size=cfg.model.image_size,
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
