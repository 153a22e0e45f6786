"""Preemption across phases, with real processes and real signals.

One job, stopped twice inside the fine-tune phase and restarted with the same command each time
(what Vertex AI does): first `kill -9` right after the phase has backed up its first epoch, then
SIGTERM at the first step of the restarted process's second epoch, then a run to the end. The
signals are real; tests/testing/faulty_task.py sends them from inside the trainer's backup
callback at those exact points, so every run stops at the same place. Assertions are on what
the three processes did: the frozen phase never ran again and its checkpoint never changed,
each restart began at the epoch (and step) its backup held, SIGTERM led to a save and exit
status 143, and history.json ends with each (phase, epoch) exactly once.
"""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import types

import pytest

from tests.testing.cli import ROOT, task_command


FINETUNE_EPOCHS = 4
STEPS = 3


def start(command, log_path):
    log = open(log_path, "w")
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log


def finish(proc, log, timeout=900):
    try:
        proc.wait(timeout=timeout)
    finally:
        proc.kill()
        log.close()
    return proc.returncode, open(log.name).read()


def digest(folder):
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            h.update(name.encode() + f.read())
    return h.hexdigest()


def finetune_epochs_done(model_dir):
    with open(os.path.join(model_dir, "history.json")) as f:
        return sum(1 for h in json.load(f) if h["phase"] == "finetune")


def saved_position(backup):
    """(epoch, step) a BackupAndRestore checkpoint holds, both 0-based."""
    import tensorflow as tf
    reader = tf.train.load_checkpoint(backup)
    return tuple(int(reader.get_tensor(f"{k}/.ATTRIBUTES/VARIABLE_VALUE")) for k in ("ckpt_saved_epoch", "ckpt_saved_batch"))


def finetune_start(log):
    """(epoch, step), both 1-based, where one process began training the fine-tune phase: the
    first `faulty_task: finetune epoch E starts at step S` line (tests/testing/faulty_task.py)."""
    found = re.findall(r"^faulty_task: finetune epoch (\d+) starts at step (\d+)$", log, flags=re.M)
    return tuple(int(x) for x in found[0]) if found else None


def test_guard_turns_sigterm_into_save_then_exit_and_restores_the_handler():
    import threading
    import tensorflow as tf
    from trainer.training import preemption
    before, saved = signal.getsignal(signal.SIGTERM), []
    with preemption.Guard(strategy=tf.distribute.get_strategy()) as guard:
        guard.after_step(lambda: saved.append("too early"))
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(SystemExit) as e:
            guard.after_step(lambda: saved.append("step"))
    assert saved == ["step"] and e.value.code == preemption.EXIT_PREEMPTED == 143
    assert signal.getsignal(signal.SIGTERM) == before
    errors = []
    thread = threading.Thread(target=lambda: _enter_guard_in_thread(preemption, tf, errors))
    thread.start()
    thread.join()
    assert errors == []


def _enter_guard_in_thread(preemption, tf, errors):
    try:
        with preemption.Guard(strategy=tf.distribute.get_strategy()) as guard:
            guard.after_step(lambda: errors.append("saved without a signal"))
    except Exception as e:  # pylint: disable=broad-except
        errors.append(repr(e))


KILL_AFTER_EPOCH = 1  # SIGKILL once fine-tune epoch 1 is recorded and backed up
SIGTERM_AT = (3, 1)  # SIGTERM at epoch 3, step 1: the restart's second epoch, mid-epoch


@pytest.fixture(scope="module")
def preempted(tmp_path_factory, demo_records):
    model_dir = str(tmp_path_factory.mktemp("preempted") / "run")
    flags = task_command(demo_records, model_dir, "--frozen_epochs=1", f"--finetune_epochs={FINETUNE_EPOCHS}",
                         f"--steps_per_epoch={STEPS}")[3:]  # without `python -m trainer.task`
    faulty = [sys.executable, "-m", "tests.testing.faulty_task"]
    backup = os.path.join(model_dir, "backup", "finetune", "chief")
    run = types.SimpleNamespace(model_dir=model_dir)

    run.killed_rc, run.killed_log = finish(*start(
        faulty + [f"--kill_after_backup=finetune:{KILL_AFTER_EPOCH}", "--", *flags], f"{model_dir}.killed.log"))
    run.epochs_at_kill = finetune_epochs_done(model_dir)
    run.saved_at_kill = saved_position(backup)
    run.frozen_digest = digest(os.path.join(model_dir, "checkpoints", "frozen"))

    epoch, step = SIGTERM_AT
    run.sigterm_rc, run.sigterm_log = finish(*start(
        faulty + [f"--sigterm_at_step=finetune:{epoch}:{step}", "--", *flags], f"{model_dir}.sigterm.log"))
    run.saved = saved_position(backup)

    run.final_rc, run.final_log = finish(*start(faulty + ["--", *flags], f"{model_dir}.final.log"))
    return run


@pytest.mark.slow
def test_killed_run_restarts_in_finetune_at_its_backed_up_epoch(preempted):
    assert preempted.killed_rc == -signal.SIGKILL, preempted.killed_log[-3000:]
    assert "starting phase frozen" in preempted.killed_log
    assert preempted.epochs_at_kill == KILL_AFTER_EPOCH  # recorded in history.json ...
    assert preempted.saved_at_kill == (KILL_AFTER_EPOCH - 1, STEPS - 1)  # ... and backed up at its last step
    assert finetune_start(preempted.killed_log) == (1, 1)
    assert finetune_start(preempted.sigterm_log) == (KILL_AFTER_EPOCH + 1, 1), preempted.sigterm_log[-3000:]
    assert re.search(r"resuming .*: phase\(s\) frozen already done", preempted.sigterm_log)


@pytest.mark.slow
def test_sigterm_saves_then_exits_and_the_restart_continues_from_that_save(preempted):
    assert preempted.sigterm_rc == 143, preempted.sigterm_log[-3000:]
    assert "SIGTERM: saving a backup" in preempted.sigterm_log
    epoch, step = SIGTERM_AT
    assert preempted.saved == (epoch - 1, step - 1)  # 0-based: the step the signal arrived in
    assert f"finetune epoch {epoch + 1} starts" not in preempted.sigterm_log  # it stopped there
    # Mid-epoch save: the restart continues inside that same epoch, at the step after the saved one.
    assert finetune_start(preempted.final_log) == (epoch, step + 1), (preempted.saved, preempted.final_log[-3000:])


@pytest.mark.slow
def test_frozen_phase_never_reruns(preempted):
    for log in (preempted.sigterm_log, preempted.final_log):
        assert "starting phase frozen" not in log
        assert "starting phase finetune" in log
    assert digest(os.path.join(preempted.model_dir, "checkpoints", "frozen")) == preempted.frozen_digest


@pytest.mark.slow
def test_job_completes_with_each_phase_epoch_recorded_once(preempted):
    assert preempted.final_rc == 0, preempted.final_log[-3000:]
    assert "export: " in preempted.final_log
    with open(os.path.join(preempted.model_dir, "history.json")) as f:
        history = [(h["phase"], h["epoch"]) for h in json.load(f)]
    assert history == [("frozen", 1)] + [("finetune", e) for e in range(1, FINETUNE_EPOCHS + 1)]
    with open(os.path.join(preempted.model_dir, "state.json")) as f:
        assert [c["phase"] for c in json.load(f)["completed"]] == ["frozen", "finetune"]
    assert not os.path.exists(os.path.join(preempted.model_dir, "backup", "finetune"))
