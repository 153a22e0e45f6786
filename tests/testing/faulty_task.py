"""`python -m tests.testing.faulty_task [FAULT...] -- TRAINER_FLAGS...`: `python -m trainer.task`
with a fault injected at an exact point, through the seams a test would monkeypatch in-process.

A child process cannot be monkeypatched from the test, and waiting for a file to appear before
sending a signal races the run; so this wrapper patches the public pieces, then runs the trainer
as `python -m trainer.task` would:

--kill_after_backup=PHASE:EPOCH   SIGKILL this process right after `preemption.PhaseBackup` has
                                  backed up epoch EPOCH (1-based, as Keras prints it) of PHASE.
--sigterm_at_step=PHASE:EPOCH:STEP  send this process SIGTERM at the end of step STEP (1-based) of
                                  epoch EPOCH of PHASE, before the backup callback's check: the
                                  trainer's own handler then saves and exits as on a preemption.
--sigint_at_step=PHASE:EPOCH:STEP  the same with SIGINT (Ctrl-C): Python raises KeyboardInterrupt
                                  there, inside Keras' fit, as a Ctrl-C between steps does.
--no_downloads                    every download of tf_keras' `get_file` fails the way it does
                                  without internet (name resolution); each refused URL is printed
                                  on stderr as `faulty_task: download refused: URL`.

The signals are real (os.kill on this process): only their timing is chosen. Whatever the
faults, the wrapper prints `faulty_task: PHASE epoch E starts at step S` (both 1-based) at the
first step each epoch trains, so a test reads where a (restarted) run began from one fixed line,
not from Keras' or the trainer's progress output.
"""
from __future__ import annotations

import argparse
import os
import runpy
import signal
import socket
import sys
import urllib.error

import trainer  # noqa: F401  # sets TF_USE_LEGACY_KERAS before TensorFlow loads


def _phase_of(backup) -> str:
    return os.path.basename(str(backup.backup_dir).rstrip("/"))


def track_epochs() -> None:
    """Each PhaseBackup remembers the (1-based) epoch it is in and prints where it starts."""
    from trainer.training import preemption
    begin, batch_begin = preemption.PhaseBackup.on_epoch_begin, preemption.PhaseBackup.on_train_batch_begin

    def on_epoch_begin(self, epoch, logs=None):
        self.faulty_task_epoch, self.faulty_task_started = epoch + 1, False
        return begin(self, epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        if not getattr(self, "faulty_task_started", True):
            self.faulty_task_started = True
            print(f"faulty_task: {_phase_of(self)} epoch {self.faulty_task_epoch} starts at step {batch + 1}",
                  file=sys.stderr, flush=True)
        return batch_begin(self, batch, logs)
    preemption.PhaseBackup.on_epoch_begin = on_epoch_begin
    preemption.PhaseBackup.on_train_batch_begin = on_train_batch_begin


def kill_after_backup(phase: str, epoch: int) -> None:
    from trainer.training import preemption
    original = preemption.PhaseBackup.on_epoch_end

    def on_epoch_end(self, index, logs=None):
        original(self, index, logs)
        if _phase_of(self) == phase and index + 1 == epoch:
            print(f"faulty_task: SIGKILL after the backup of {phase} epoch {epoch}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    preemption.PhaseBackup.on_epoch_end = on_epoch_end


def signal_at_step(signum: signal.Signals, phase: str, epoch: int, step: int) -> None:
    from trainer.training import preemption
    original = preemption.PhaseBackup.on_train_batch_end

    def on_train_batch_end(self, batch, logs=None):
        if _phase_of(self) == phase and getattr(self, "faulty_task_epoch", None) == epoch and batch + 1 == step:
            print(f"faulty_task: {signum.name} at {phase} epoch {epoch} step {step}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signum)  # Python runs the handler before os.kill returns
        return original(self, batch, logs)
    preemption.PhaseBackup.on_train_batch_end = on_train_batch_end


def no_downloads() -> None:
    from tf_keras.src.utils import data_utils  # pylint: disable=import-outside-toplevel  # get_file's fetch

    def urlretrieve(url, filename, reporthook=None, data=None):
        del filename, reporthook, data
        print(f"faulty_task: download refused: {url}", file=sys.stderr, flush=True)
        raise urllib.error.URLError(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))
    data_utils.urlretrieve = urlretrieve


def main(argv) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.testing.faulty_task", description=__doc__.splitlines()[0])
    parser.add_argument("--kill_after_backup", metavar="PHASE:EPOCH")
    parser.add_argument("--sigterm_at_step", metavar="PHASE:EPOCH:STEP")
    parser.add_argument("--sigint_at_step", metavar="PHASE:EPOCH:STEP")
    parser.add_argument("--no_downloads", action="store_true")
    split = argv.index("--") if "--" in argv else len(argv)
    args, trainer_flags = parser.parse_args(argv[:split]), argv[split + 1:]
    track_epochs()
    if args.kill_after_backup:
        phase, epoch = args.kill_after_backup.split(":")
        kill_after_backup(phase, int(epoch))
    for signum, at in ((signal.SIGTERM, args.sigterm_at_step), (signal.SIGINT, args.sigint_at_step)):
        if at:
            phase, epoch, step = at.split(":")
            signal_at_step(signum, phase, int(epoch), int(step))
    if args.no_downloads:
        no_downloads()
    sys.argv = ["trainer.task", *trainer_flags]
    runpy.run_module("trainer.task", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
