"""Preemption across phases, with real processes and real signals.

One job, stopped twice inside the fine-tune phase and restarted with the same command each time
(what Vertex AI does): first `kill -9` once the phase has backed up an epoch, then SIGTERM once
the restarted process has backed up another, then a run to the end. Assertions are on what the
three processes did: the frozen phase never ran again and its checkpoint never changed, each
restart began at the epoch (and step) its backup held, SIGTERM led to a save and exit status
143, and history.json ends with each (phase, epoch) exactly once.
"""
import hashlib
import json
import os
import re
import signal
import subprocess
import time
import types

import pytest

from tests.test_distribute import ROOT, task_command

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


def wait_for(condition, proc, timeout=900):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended before the point where it was to be stopped"
        assert time.time() < deadline, "timed out waiting for the run"
        time.sleep(0.05)


def stamp(path):
    """What identifies one version of a file (None while absent)."""
    return os.stat(path).st_mtime_ns if os.path.exists(path) else None


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


def first_finetune_epoch(log):
    """The first `Epoch k/N` Keras printed for the fine-tune phase of one process."""
    found = re.findall(rf"^Epoch (\d+)/{FINETUNE_EPOCHS}$", log, flags=re.M)
    return int(found[0]) if found else None


def test_guard_turns_sigterm_into_save_then_exit_and_restores_the_handler():
    import threading
    import tensorflow as tf
    from trainer import preemption
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


@pytest.fixture(scope="module")
def preempted(tmp_path_factory, demo_records):
    model_dir = str(tmp_path_factory.mktemp("preempted") / "run")
    command = task_command(demo_records, model_dir, "--frozen_epochs=1", f"--finetune_epochs={FINETUNE_EPOCHS}",
                           f"--steps_per_epoch={STEPS}")
    backup = os.path.join(model_dir, "backup", "finetune", "chief")
    marker = os.path.join(backup, "checkpoint")
    run = types.SimpleNamespace(model_dir=model_dir)

    proc, log = start(command, f"{model_dir}.killed.log")
    wait_for(lambda: stamp(marker) is not None, proc)
    proc.send_signal(signal.SIGKILL)
    run.killed_rc, run.killed_log = finish(proc, log)
    run.epochs_at_kill = finetune_epochs_done(model_dir)
    run.frozen_digest = digest(os.path.join(model_dir, "checkpoints", "frozen"))

    before = stamp(marker)
    proc, log = start(command, f"{model_dir}.sigterm.log")
    wait_for(lambda: stamp(marker) != before, proc)
    proc.send_signal(signal.SIGTERM)
    run.sigterm_rc, run.sigterm_log = finish(proc, log)
    run.saved = saved_position(backup)

    run.final_rc, run.final_log = finish(*start(command, f"{model_dir}.final.log"))
    return run


def test_killed_run_restarts_in_finetune_at_its_backed_up_epoch(preempted):
    assert preempted.killed_rc == -signal.SIGKILL
    assert "starting phase frozen" in preempted.killed_log
    resumed_at = first_finetune_epoch(preempted.sigterm_log)
    assert resumed_at is not None and resumed_at >= 2, preempted.sigterm_log[-3000:]
    # The kill may fall between an epoch's history record and its backup: then that epoch reruns.
    assert resumed_at in (preempted.epochs_at_kill, preempted.epochs_at_kill + 1)
    assert re.search(r"resuming .*: phase\(s\) frozen already done", preempted.sigterm_log)


def test_sigterm_saves_then_exits_and_the_restart_continues_from_that_save(preempted):
    assert preempted.sigterm_rc == 143, preempted.sigterm_log[-3000:]
    assert "SIGTERM: saving a backup" in preempted.sigterm_log
    epoch, step = preempted.saved
    assert epoch + 1 >= first_finetune_epoch(preempted.sigterm_log)
    expected = epoch + 1 + (1 if step == STEPS - 1 else 0)  # after an epoch's last step: the next epoch
    assert first_finetune_epoch(preempted.final_log) == expected, (preempted.saved, preempted.final_log[-3000:])


def test_frozen_phase_never_reruns(preempted):
    for log in (preempted.sigterm_log, preempted.final_log):
        assert "starting phase frozen" not in log
        assert "starting phase finetune" in log
    assert digest(os.path.join(preempted.model_dir, "checkpoints", "frozen")) == preempted.frozen_digest


def test_job_completes_with_each_phase_epoch_recorded_once(preempted):
    assert preempted.final_rc == 0, preempted.final_log[-3000:]
    assert "export: " in preempted.final_log
    with open(os.path.join(preempted.model_dir, "history.json")) as f:
        history = [(h["phase"], h["epoch"]) for h in json.load(f)]
    assert history == [("frozen", 1)] + [("finetune", e) for e in range(1, FINETUNE_EPOCHS + 1)]
    with open(os.path.join(preempted.model_dir, "state.json")) as f:
        assert [c["phase"] for c in json.load(f)["completed"]] == ["frozen", "finetune"]
    assert not os.path.exists(os.path.join(preempted.model_dir, "backup", "finetune"))
