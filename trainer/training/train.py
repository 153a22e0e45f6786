"""run(cfg): one strategy scope, the phase loop, resume. It trains; trainer/jobs/pipeline.py exports.

Phases are data: `for phase in cfg.phases`. Each phase sets which layers train, recompiles with
its own optimizer, learning-rate schedule and batch size, and fits with early stopping that
restores its best weights. The frozen phase trains the head on cached embeddings where the
backbone is a fixed function (trainer/training/embeddings.py). A finished phase leaves a checkpoint and a
line in state.json, so a restarted job (same command, same model_dir) continues after it instead
of redoing it; a job stopped inside a phase continues that phase from its backup
(trainer/training/preemption.py), so history.json ends with each (phase, epoch) exactly once. Under
MultiWorkerMirroredStrategy every worker trains and saves, but only the chief writes files others
read (docs/distributed.md). Everything under model_dir goes through trainer/runtime/rundir.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from typing import Collection, Dict, List, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf
import tf_keras as keras

from effnet_common import errors, fileio
from trainer.configs.config import Config, Data
from trainer.data import pipelines, skips, targets
from trainer.models import classifier, finetuning, numerics
from trainer.runtime import devices, distribute
from trainer.runtime.rundir import RunDir
from trainer.training import accumulate, embeddings, memory, oom, preemption, schedules


@dataclasses.dataclass
class TrainResult:
    """What training hands the pipeline: the float32 model to export (None with plan_only), the
    history, whether this process is the one that writes outputs, and the plan (plan.json's
    document)."""
    model: Optional[keras.Model]
    history: List[dict]
    chief: bool
    plan: Optional[dict] = None


def run(cfg: Config, *, strategy: tf.distribute.Strategy, plan_only: bool = False,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        last_phase_callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrainResult:
    """Trains every phase of `cfg` that is not done yet in its model_dir.

    Nothing in model_dir changes before every check has passed: the run identity (a folder of
    another run is refused unless --overwrite), the model build (weights files) and the plan
    (batch sizes, --unfreeze). Only then does the chief replace a previous run (--overwrite:
    `RunDir.set_aside`) and write config.json and plan.json. With `plan_only`, returns the
    plan without writing anything. task.py makes the strategy first (MultiWorkerMirroredStrategy
    must exist before TensorFlow's first op); the caller holds the run directory's lock
    (trainer/runtime/runlock.py). `callbacks` join every phase's fit, `last_phase_callbacks` the last
    trained phase's (hyperparameter-tuning reports).
    """
    chief = distribute.is_chief(strategy)
    run_dir = None if plan_only else RunDir.of(cfg.runtime)  # a plan never reads or writes a run directory
    if run_dir is not None and not cfg.runtime.overwrite:
        run_dir.check(cfg)
    keras.utils.set_random_seed(cfg.data.seed)
    with numerics.precision_policy(cfg.runtime.mixed_precision):
        return _train(cfg, strategy=strategy, run_dir=run_dir, chief=chief, plan_only=plan_only, callbacks=callbacks,
                      last_phase_callbacks=last_phase_callbacks)


def _train(cfg: Config, *, strategy, run_dir: Optional[RunDir], chief: bool, plan_only: bool, callbacks,
           last_phase_callbacks) -> TrainResult:
    """`run`'s body, under the run's precision policy: the one strategy scope and the phase loop."""
    with strategy.scope():
        model = classifier.classifier_for(cfg)
        accumulate.install(model, steps=cfg.runtime.accumulate_steps)
        plans, document = memory.build_plan(cfg.phases, model=model, bn=cfg.model.bn, runtime=cfg.runtime,
                                            num_examples=cfg.data.num_train_examples,
                                            replicas=strategy.num_replicas_in_sync,
                                            reserved_bytes=pipelines.pixel_cache_kept_bytes(cfg.data))
        if chief:
            logging.info("%s", memory.format_plan(document))
        for plan in plans:
            if plan.epochs:
                _log_phase_table(plan)
        if plan_only:
            return TrainResult(None, [], chief, plan=document)
        if chief:
            _begin(run_dir, cfg, plan=document)
        distribute.wait_for_all(strategy)  # no worker reads state.json before the chief replaced the old run
        loop = _PhaseLoop(model, cfg=cfg, run_dir=run_dir, strategy=strategy, chief=chief,
                          callbacks=list(callbacks), last_phase_callbacks=list(last_phase_callbacks))
        history = loop.run(plans)
    logging.info("final weights: %s", weights_digest(model))
    return TrainResult(_exportable(model, cfg=cfg, strategy=strategy), history, chief, plan=document)


def _begin(run_dir: RunDir, cfg: Config, *, plan: dict) -> None:
    """The first writes of a run that passed every check: the previous run set aside
    (--overwrite), then config.json and plan.json."""
    if cfg.runtime.overwrite:
        aside = run_dir.set_aside()
        if aside:
            logging.info("--overwrite: the previous run's files are kept in %s until this run finishes its first "
                         "phase; %s stays (the new export takes the next version)", aside, run_dir.export_base)
    run_dir.write_config(cfg)
    memory.write_plan(run_dir, plan)


class _PhaseLoop:
    """The phase loop of one run: skips phases a previous attempt finished (their weights are
    loaded), fits the others in order, and records each as it ends.

    A phase a previous attempt stopped inside keeps its history records; its backup restores
    it, and HistoryRecorder drops the records of the epochs it trains again.
    """

    def __init__(self, model: keras.Model, *, cfg: Config, run_dir: RunDir, strategy, chief: bool,
                 callbacks: List[keras.callbacks.Callback], last_phase_callbacks: List[keras.callbacks.Callback]):
        self.model, self.cfg, self.run_dir, self.strategy, self.chief = model, cfg, run_dir, strategy, chief
        self.callbacks, self.last_phase_callbacks = callbacks, last_phase_callbacks
        self.skip_counters = skips.SkipCounters()  # the run's own count of skipped records

    def run(self, plans: Sequence[schedules.PhasePlan]) -> List[dict]:
        state = self.run_dir.read_state()
        todo = [p for p in plans if p.epochs > 0 and p.name not in state]
        history = [h for h in self.run_dir.read_history() if h["phase"] in state or h["phase"] in {p.name for p in todo}]
        if state:
            self.model.load_weights(state[list(state)[-1]])
            logging.info("resuming %s: phase(s) %s already done", self.run_dir.root, ", ".join(state))
        last = [p.name for p in plans if p.epochs > 0][-1:]
        with preemption.Guard(strategy=self.strategy) as guard:
            for plan in todo:
                extra = self.callbacks + (self.last_phase_callbacks if [plan.name] == last else [])
                try:
                    history = self._fit_phase(plan, history=history, guard=guard, extra=extra)
                except KeyboardInterrupt:
                    raise errors.Interrupted(self._where_stopped(plan)) from None
                if [plan.name] == last:
                    history = self._keep_best_phase(plan, history=history, state=state)
                self._finish_phase(plan.name, state=state)
        return history

    def _keep_best_phase(self, plan: schedules.PhasePlan, *, history: List[dict], state: Dict[str, str]) -> List[dict]:
        """Where the last phase ends below the phase before it on the validation split, loads
        that phase's weights back (`--keep_best_phase`): on small data a fine-tuning phase can end
        below its own frozen phase, and a run should never hand over the worse of two models it
        had. The outcome goes into the last phase's last history record (`kept_weights_of`)."""
        done = [name for name in state if name != plan.name]
        if not self.cfg.runtime.keep_best_phase or not done or not self.cfg.data.eval_data:
            return history
        earlier, key = done[-1], _monitor(self.cfg.data.multi_label)
        restores_best = {p.name for p in self.cfg.phases if p.early_stopping_patience > 0}
        scores = _final_scores(history, (earlier, plan.name), key=key, restores_best=restores_best)
        if scores is None:
            return history
        kept = _better_of(scores, earlier=earlier, later=plan.name, key=key)
        figures = (f"validation {key[4:]} {scores[plan.name]:.4f} after the {plan.name} phase, "
                   f"{scores[earlier]:.4f} after the {earlier} phase")
        if kept == earlier:
            self.model.load_weights(state[earlier]).expect_partial()
            logging.warning("%s: the run keeps the %s phase's weights (--nokeep_best_phase keeps the %s phase's)",
                            figures, earlier, plan.name)
        else:
            logging.info("%s: the run keeps the %s phase's weights", figures, plan.name)
        history = [dict(r) for r in history]
        last = max(i for i, r in enumerate(history) if r["phase"] == plan.name)
        history[last]["kept_weights_of"] = kept
        if self.chief:
            self.run_dir.write_history(history)
        return history

    def _where_stopped(self, plan: schedules.PhasePlan) -> str:
        """Where an interrupted run stands, and what resumes it, in one line."""
        done = [r["epoch"] for r in self.run_dir.read_history() if r["phase"] == plan.name] if self.chief else []
        where = (f"after epoch {max(done)} of {plan.epochs}" if done else "before its first epoch ended")
        return (f"stopped in the {plan.name} phase {where} ({self.run_dir.root}); rerun the same command to "
                "resume from there")

    def _fit_phase(self, planned: schedules.PhasePlan, *, history: List[dict], guard: preemption.Guard,
                   extra: List[keras.callbacks.Callback]) -> List[dict]:
        """Opens the phase's layers and fits it; out of memory, it retries at half the batch."""
        phase = planned.phase
        finetuning.set_trainable(self.model, phase=phase, bn=self.cfg.model.bn)
        logging.info("starting phase %s", phase.name)
        target, datasets, caches = self._phase_inputs(planned)
        if caches is not None:
            probe, reason = embeddings.probe_applies(caches, setting=self.cfg.runtime.frozen_head,
                                                     multi_label=self.cfg.data.multi_label, strategy=self.strategy)
            logging.info("frozen phase: %s (%s)", "the head as a cross-validated probe" if probe
                         else f"{phase.epochs} epochs of Adam on the embeddings", reason)
            if probe:
                return self._fit_probe(caches, history=history)
        state = {"history": list(history)}

        def fit_once(plan: schedules.PhasePlan) -> List[dict]:
            if plan.batch_size != planned.batch_size and self.chief:
                # A backup's step counts batches of the old size: the retry starts the phase over
                # (from the weights of the last good step) rather than resuming at a wrong offset.
                self.run_dir.remove(self.run_dir.backup_dir(phase.name))
            recorder = HistoryRecorder(phase=phase.name, previous=state["history"],
                                       run_dir=self.run_dir if self.chief else None)
            try:
                fit = _Fit(target, plan=plan, cfg=self.cfg,
                           run_dir=self.run_dir, strategy=self.strategy, chief=self.chief,
                           skip_counters=self.skip_counters)
                fit(datasets=datasets, callbacks=[recorder] + extra, guard=guard)
            finally:
                state["history"] = recorder.history  # a retry keeps the epochs this attempt recorded
            return recorder.history
        return oom.fit_with_oom_recovery(fit_once, plan=planned, run_dir=self.run_dir if self.chief else None)

    def _fit_probe(self, caches, *, history: List[dict]) -> List[dict]:
        """The frozen phase's head fitted in one solve (trainer/training/headfit.py), recorded as its one epoch."""
        start = time.perf_counter()
        record = embeddings.fit_probe_head(self.model, caches, num_classes=self.cfg.data.num_classes,
                                           seed=self.cfg.data.seed, class_weights=self.cfg.data.class_weights)
        logging.info("frozen phase: L2 strength C=%.3g by %d-fold cross-validation on the training split (log loss "
                     "%.3f, accuracy %.3f); validation accuracy %s, in %.1f s", record["probe_c"],
                     record["probe_folds"], record["probe_cv_log_loss"], record["probe_cv_accuracy"],
                     "n/a" if record["val_accuracy"] is None else f"{record['val_accuracy']:.3f}",
                     time.perf_counter() - start)
        history = [h for h in history if h["phase"] != "frozen"] + [record]
        if self.chief:
            self.run_dir.write_history(history)
        return history

    def _phase_inputs(self, planned: schedules.PhasePlan):
        """What the phase fits, a function batch_size -> (train, eval, eval steps) it fits on, and
        the embedding caches when it fits on them (else None).

        The classifier on images; or, in the frozen phase where the cache applies, the
        classifier's own head on cached embeddings (trainer/training/embeddings.py): the same layers,
        trained without running the backbone every epoch.
        """
        cfg, phase = self.cfg, planned.phase
        if phase.name == "frozen":
            if planned.on_embeddings:
                caches = embeddings.build_caches(
                    self.model, data_cfg=cfg.data, model_cfg=cfg.model, strategy=self.strategy, run_dir=self.run_dir,
                    views=pipelines.view_count(cfg.data.augment, randaugment_views=cfg.data.cache_views),
                    memory_budget=devices.ram_share(devices.EMBEDDING_CACHE_SHARE), verbose=self.chief,
                    skip_counters=self.skip_counters)
                return classifier.head_model(self.model), embeddings.datasets_fn(
                    caches, strategy=self.strategy, seed=cfg.data.seed, eval_examples=cfg.data.num_eval_examples,
                    class_weights=cfg.data.class_weights), caches
        return self.model, lambda batch_size: _datasets(cfg.data, strategy=self.strategy, batch_size=batch_size,
                                                        epochs=phase.epochs, skip_counters=self.skip_counters), None

    def _finish_phase(self, phase_name: str, *, state: Dict[str, str]) -> None:
        """Saves the phase's weights, records it in state.json, and only then drops its backup
        (and the frozen phase's embedding cache).

        Every worker saves (a collective under MultiWorkerMirroredStrategy); only the chief's copy
        lands at the prefix, the others go to a temporary folder that is removed.
        """
        prefix = self.run_dir.checkpoint_prefix(phase_name)
        folder, name = os.path.split(prefix)
        self.model.save_weights(fileio.join(distribute.write_dir(folder, strategy=self.strategy), name))
        distribute.remove_write_dir(folder, strategy=self.strategy)
        state[phase_name] = prefix
        if self.chief:
            self.run_dir.write_state(state)
            self.run_dir.remove_backup(phase_name)
            self.run_dir.remove(self.run_dir.embeddings_dir())
            self.run_dir.drop_replaced()  # --overwrite: this run now has a checkpoint of its own


@dataclasses.dataclass
class _Fit:
    """One phase's fit as its plan says: recompile (learning rate, schedule), datasets, callbacks."""
    model: keras.Model
    plan: schedules.PhasePlan
    cfg: Config
    run_dir: RunDir
    strategy: tf.distribute.Strategy
    chief: bool
    skip_counters: skips.SkipCounters

    def __call__(self, *, datasets, callbacks: list, guard: preemption.Guard) -> None:
        plan, phase, runtime, data_cfg = self.plan, self.plan.phase, self.cfg.runtime, self.cfg.data
        steps = plan.steps_per_epoch
        _log_phase_table(plan)
        self.model.compile(
            optimizer=keras.optimizers.Adam(plan.build_schedule()),
            loss=targets.build_loss(multi_label=data_cfg.multi_label, num_classes=data_cfg.num_classes,
                                    label_smoothing=self.cfg.model.label_smoothing),
            metrics=targets.build_metrics(multi_label=data_cfg.multi_label, num_classes=data_cfg.num_classes),
            jit_compile=runtime.jit_compile,
            steps_per_execution=distribute.steps_per_execution(self.strategy, steps_per_epoch=steps))
        train_ds, eval_ds, eval_steps = datasets(plan.batch_size)
        backup = preemption.PhaseBackup(self.run_dir.backup_dir(phase.name), epochs=phase.epochs,
                                        steps_per_epoch=steps, guard=guard)
        # A progress bar per epoch on a terminal when epochs are slow (images); else one line an epoch.
        bar = sys.stdout.isatty() and self.model.name != "head"
        logger = [] if bar or not self.chief else [EpochLogger(phase.name, epochs=phase.epochs)]
        callbacks = (callbacks[:1] + self._standard_callbacks(has_eval=eval_ds is not None) + logger
                     + callbacks[1:] + [backup])  # backup last: after the history record and EarlyStopping's restore
        self.model.fit(train_ds, epochs=phase.epochs, steps_per_epoch=steps, validation_data=eval_ds,
                       validation_steps=eval_steps, verbose=1 if bar else 0, callbacks=callbacks)

    def _standard_callbacks(self, *, has_eval: bool) -> list:
        callbacks: list = [skips.SkippedRecordsLogger(counters=self.skip_counters)]
        if self.plan.phase.early_stopping_patience > 0:
            # Accuracy, what a user cares about: in fine-tuning the validation loss rises from epoch 2
            # (the model grows confident faster than right) while accuracy still climbs, so stopping
            # on the loss kept epoch 1 or 2 and left 6 points on the table (docs/training.md).
            monitor = ("val_" if has_eval else "") + ("loss" if self.cfg.data.multi_label else "accuracy")
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor=monitor, mode="min" if monitor.endswith("loss") else "max",
                patience=self.plan.phase.early_stopping_patience, restore_best_weights=True, verbose=1))
        if self.chief:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=self.run_dir.logs_dir(self.plan.name), profile_batch=0))
        return callbacks


def _kept_record(history: List[dict], phase: str, *, key: str, restores_best: bool) -> Optional[dict]:
    """The history record of the weights a phase ended with: its last epoch's, or where early
    stopping restored its best epoch, that epoch's (the first best, as Keras restores). None
    where the phase has no validation figure."""
    records = [r for r in history if r["phase"] == phase]
    if not records or any(r.get(key) is None for r in records):
        return None
    if not restores_best:
        return records[-1]
    better = min if key.endswith("loss") else max
    best = better(r[key] for r in records)
    return next(r for r in records if r[key] == best)


def _monitor(multi_label: bool) -> str:
    return "val_loss" if multi_label else "val_accuracy"


def _final_scores(history: List[dict], phases: Sequence[str], *, key: str,
                  restores_best: Collection[str]) -> Optional[Dict[str, float]]:
    """Each phase's validation figure for the weights it ended with; None where one has none."""
    records = {name: _kept_record(history, name, key=key, restores_best=name in restores_best) for name in phases}
    return None if None in records.values() else {name: r[key] for name, r in records.items()}


def _better_of(scores: Dict[str, float], *, earlier: str, later: str, key: str) -> str:
    """The later phase unless it scores strictly worse than the earlier one."""
    worse = scores[later] > scores[earlier] if key.endswith("loss") else scores[later] < scores[earlier]
    return earlier if worse else later


def phase_to_keep(history: List[dict], *, earlier: str, later: str, multi_label: bool,
                  restores_best: Collection[str] = ()) -> Optional[str]:
    """Which of two phases' final weights a run keeps: the later phase's unless it scores strictly
    worse on the validation split than the earlier one (accuracy; the loss for multi-label data);
    None where either has no validation figure. `restores_best`: the phases whose early stopping
    restored their best epoch. Pure: reads history records only."""
    key = _monitor(multi_label)
    scores = _final_scores(history, (earlier, later), key=key, restores_best=restores_best)
    return None if scores is None else _better_of(scores, earlier=earlier, later=later, key=key)


def weights_digest(model: keras.Model) -> str:
    """A short fingerprint of every weight: workers of one job must log the same one."""
    digest = hashlib.sha256()
    for value in model.get_weights():
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def _log_phase_table(plan: schedules.PhasePlan) -> None:
    lines = [f"phase {plan.name}: unfreeze={plan.phase.unfreeze} epochs={plan.epochs} batch_size={plan.batch_size} "
             f"learning_rate={plan.peak_learning_rate:.3g} steps_per_epoch={plan.steps_per_epoch}",
             f"  {'total params':>22}: {plan.total_params:>12,}",
             f"  {'trainable params':>22}: {plan.trainable_params:>12,}",
             f"  {'non-trainable params':>22}: {plan.total_params - plan.trainable_params:>12,}"]
    logging.info("\n".join(lines))


def _datasets(data_cfg: Data, *, strategy, batch_size: int, epochs: int,
              skip_counters: skips.SkipCounters) -> Tuple[tf.data.Dataset, Optional[tf.data.Dataset], Optional[int]]:
    """Per-replica image pipelines of a phase of `epochs` epochs; the batch size given is
    global. TPUs need static shapes."""
    static = distribute.is_tpu(strategy)
    return distribute.train_and_eval_datasets(
        lambda split, ctx, batch, repeat: pipelines.build_dataset(data_cfg, split=split, batch_size=batch, input_context=ctx,
                                                             repeat=repeat, drop_remainder=static, epochs=epochs,
                                                             skip_counters=skip_counters),
        strategy=strategy, batch_size=batch_size, has_eval=bool(data_cfg.eval_data),
        eval_examples=data_cfg.num_eval_examples)


class EpochLogger(keras.callbacks.Callback):
    """One log line per epoch -- every k-th of a long phase, so that ~10 lines tell it -- plus the last."""

    def __init__(self, phase: str, *, epochs: int, lines: int = 10):
        super().__init__()
        self.phase, self.epochs, self.every = phase, epochs, max(1, -(-epochs // lines))
        self._start = self._epoch_start = 0.0

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        stopping = bool(getattr(self.model, "stop_training", False))
        if (epoch + 1) % self.every and epoch + 1 != self.epochs and not stopping:
            return
        logs = logs or {}
        metrics = " ".join(f"{k}={logs[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs)
        now = time.perf_counter()
        logging.info("%s epoch %d/%d: %s (epoch %.1f s, phase %.1f s)", self.phase, epoch + 1, self.epochs, metrics,
                     now - self._epoch_start, now - self._start)


class HistoryRecorder(keras.callbacks.Callback):
    """Appends one history record per epoch (docs/training.md) and rewrites history.json atomically.

    A resumed phase starts at the epoch its backup reached: records of that epoch and later ones
    (written by the stopped attempt after its last backup) are dropped when it begins, so each
    (phase, epoch) appears once.
    """

    def __init__(self, *, phase: str, previous: List[dict], run_dir: Optional[RunDir]):
        super().__init__()
        self.phase, self.previous, self.run_dir = phase, list(previous), run_dir
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
        if self.run_dir:
            self.run_dir.write_history(self.history)


def _exportable(model: keras.Model, *, cfg: Config, strategy) -> keras.Model:
    """The trained model as export wants it: float32, with plain variables.

    After mixed precision, or under any strategy but the default one, this is a copy built
    outside the strategy. Every worker makes it: under MultiWorkerMirroredStrategy, reading
    BatchNormalization's moving statistics (variables synchronized on read) is a collective,
    which the chief alone would wait on forever.
    """
    if cfg.runtime.mixed_precision == "none" and distribute.is_default(strategy):
        return model
    return numerics.build_float32_copy(model, cfg.model)
