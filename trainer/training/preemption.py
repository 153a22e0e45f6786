"""Preemption: a backup per phase, and a save before exit when the job is told to stop.

Vertex AI (and spot VMs) stop a preempted job with SIGTERM and later restart it with the same
arguments. What makes that restart continue where the job stopped:

- `PhaseBackup`, a `BackupAndRestore` whose folder is `model_dir/backup/<phase>`
  (`RunDir.backup_dir`): it backs up
  the model, the optimizer and the (epoch, step) reached at every epoch end, at the end of the
  phase (after early stopping restored its best weights) and when a stop is requested; the
  next `fit` of that phase restores it and starts at that epoch and step. One folder per phase,
  because a backup holds that phase's optimizer; train.py removes it once the phase is recorded
  in state.json, so a finished phase is never trained again.
- `Guard`, entered once per run, which turns SIGTERM into "save at the end of this step, then
  exit with status 143" (128 + SIGTERM, the code TensorFlow's own handler uses on GCE). With
  MultiWorkerMirroredStrategy over several machines one worker alone cannot save (the save is a
  collective), so there the guard uses `tf.distribute.experimental.PreemptionCheckpointHandler`,
  which agrees on a step through the coordination service and makes every worker save at it.

TensorFlow's handler is off on GCE CPU-only and TPU VMs (failure_handling.py: "does not support
usage with TPU or CPU device on GCP"), so single-process runs (default, Mirrored, TPU) use the
guard's own SIGTERM handler. See docs/distributed.md.
"""
from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import threading
from typing import Callable, Optional

from absl import logging
import tensorflow as tf
import tf_keras as keras

from trainer.runtime import distribute

EXIT_PREEMPTED = 143


class Guard:
    """Turns SIGTERM into a save at the end of the current training step, then an exit.

    Enter it inside `strategy.scope()` (TensorFlow's handler makes a variable) in the main
    thread (signal handlers live there; elsewhere it only warns); it restores the previous
    SIGTERM handler on exit.
    """

    def __init__(self, *, strategy: tf.distribute.Strategy):
        self._strategy = strategy
        self._stop = threading.Event()
        self._handler = None
        self._save: Optional[Callable[[], None]] = None
        self._previous = None
        self._scratch: Optional[str] = None

    def __enter__(self) -> "Guard":
        if threading.current_thread() is not threading.main_thread():
            logging.warning("training outside the main thread: SIGTERM will not save a backup first")
            return self
        self._previous = signal.getsignal(signal.SIGTERM)
        if distribute.is_multi_worker(self._strategy):
            self._handler = self._tf_handler()
        else:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
        if self._handler is not None:
            # Stops its watcher threads. This marks the coordination service's preemption keys as
            # done, so it is once per process: a second multi-worker run needs a new process.
            self._handler.__del__()
            self._handler = None
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def _tf_handler(self):
        """TensorFlow's handler, with our save and exit; its own checkpoint is never written.

        It is given an empty checkpoint in a scratch folder so that its step counter starts at 0
        on every worker (restoring it from our backup on the chief only would put the workers'
        counters out of step); `save_fn` writes the phase backup instead.
        """
        self._scratch = tempfile.mkdtemp(prefix="preemption-")
        config = tf.distribute.experimental.TerminationConfig(save_fn=self._run_save, exit_fn=self._exit)
        return tf.distribute.experimental.PreemptionCheckpointHandler(
            self._strategy.cluster_resolver, tf.train.Checkpoint(), checkpoint_dir=f"{self._scratch}/unused",
            termination_config=config)

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        logging.warning("SIGTERM: saving a backup at the end of the current step, then exiting")
        self._stop.set()

    def _run_save(self, *args, **kwargs) -> None:
        del args, kwargs
        self._save()

    def _exit(self) -> None:
        logging.warning("preempted: backup saved; exiting with status %d so the job is restarted", EXIT_PREEMPTED)
        sys.exit(EXIT_PREEMPTED)

    def after_step(self, save: Callable[[], None]) -> None:
        """Called by every worker at the same points of training; saves and exits if told to stop."""
        if self._handler is not None:
            self._save = save
            self._handler.save_checkpoint_if_preempted()
        elif self._stop.is_set():
            save()
            self._exit()


class PhaseBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore for one phase, saving at epoch ends, at the phase end and on preemption.

    The (epoch, step) saved is explicit: restore continues at the step after it, or at the next
    epoch after an epoch's last step (tf_keras worker_training_state's rule for step-level
    saving, which `save_freq=steps_per_epoch` turns on). A stop noticed at an epoch's last step
    waits for that epoch's validation and history record, so no epoch goes unrecorded.
    """

    def __init__(self, directory: str, *, epochs: int, steps_per_epoch: int, guard: Guard):
        super().__init__(directory, save_freq=steps_per_epoch, delete_checkpoint=False)
        self._epochs, self._steps, self._guard = epochs, steps_per_epoch, guard

    def _save(self, *, epoch: int, step: int) -> None:
        self._training_state._ckpt_saved_epoch.assign(epoch)
        self._training_state._ckpt_saved_batch.assign(step)
        self._training_state.back_up(epoch=epoch, batch=step)

    def on_train_batch_end(self, batch, logs=None):
        if batch < self._steps - 1:
            epoch = self._current_epoch
            self._guard.after_step(lambda: self._save(epoch=epoch, step=batch))

    def on_epoch_end(self, epoch, logs=None):
        self._save(epoch=epoch, step=self._steps - 1)
        self._guard.after_step(lambda: self._save(epoch=epoch, step=self._steps - 1))

    def on_train_end(self, logs=None):
        # After EarlyStopping restored the best weights: a restart before train.py records the
        # phase as done finds it complete with those weights, rather than training on.
        self._save(epoch=self._epochs - 1, step=self._steps - 1)
        super().on_train_end(logs)
