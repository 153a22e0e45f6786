"""A run directory that no mistake can wipe, one run at a time in it, and interruptions in one line.

Each case was found losing a user's finished run (or reading as a crash) before: `--plan_only
--overwrite` deleted it, `--overwrite` cleared it before the weights file and `--unfreeze` were
checked, two trainers on one folder mixed their files, Ctrl-C printed a 98-line traceback. The
runs use the tiny backbone (tests/testing/presets.py) in child processes, as a user runs them;
the lock and the set-aside are also checked directly, locally and on gs:// (the GCS test front,
which enforces Cloud Storage's generation preconditions).
"""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.testing.cli import ROOT, assert_one_error_line, run_module, train_flags
from tests.testing.presets import TINY

RUN = ("--frozen_epochs=1", "--finetune_epochs=1", "--steps_per_epoch=2", "--warmup_epochs=0",
       "--early_stopping_patience=0", "--noeval_report", "--nocalibrate")


def train(model_dir, records, *extra, module="trainer.task"):
    return run_module(module, *train_flags(model_dir, records, "none", *RUN, *extra, backbone=TINY), timeout=600)


def snapshot(folder):
    """Every file under `folder` with its content's digest: what a refused run must leave as it was."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return found


# The shared run: 2 fine-tune epochs, so that Ctrl-C can stop it after the first and its rerun resume.
RESUMED_RUN = tuple(flag for flag in RUN if not flag.startswith("--finetune_epochs=")) + ("--finetune_epochs=2",)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, demo_records):
    """A two-phase run stopped by Ctrl-C at the first step of its second fine-tune epoch, then the
    same command again, which resumes and finishes it (export/1): made once; the interruption test
    reads both results, the other tests work on copies of the finished folder."""
    model_dir = tmp_path_factory.mktemp("finished") / "run"
    flags = train_flags(model_dir, demo_records, "none", *RESUMED_RUN, backbone=TINY)
    # pytest-xdist's workers ignore SIGINT, and a child inherits that; a terminal's does not.
    stopped = subprocess.run([sys.executable, "-m", "tests.testing.faulty_task", "--sigint_at_step=finetune:2:1",
                              "--", *flags], cwd=ROOT, capture_output=True, text=True, timeout=600,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    locked_after_stop = (model_dir / ".lock").exists()
    again = run_module("trainer.task", *flags, timeout=600)
    return model_dir, stopped, locked_after_stop, again


@pytest.fixture(scope="module")
def finished(interrupted):
    """The finished two-phase run with its export (export/1), and the result of the command that finished it."""
    model_dir, _, _, result = interrupted
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, result


@pytest.fixture
def run_copy(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished[0], copy)
    return copy


@pytest.mark.slow
def test_a_finished_run_leaves_no_empty_backup_and_logs_each_epochs_own_time(finished):
    model_dir, result = finished
    assert not (model_dir / "backup").exists()
    assert sorted(os.listdir(model_dir / "export")) == ["1"]
    assert "finetune epoch 2/2:" in result.stderr and "(epoch " in result.stderr and ", phase " in result.stderr
    assert not (model_dir / ".lock").exists() and not (model_dir / ".replaced").exists()


@pytest.mark.slow
def test_plan_only_with_overwrite_writes_nothing(run_copy, demo_records):
    before = snapshot(run_copy)
    result = train(run_copy, demo_records, "--plan_only", "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nothing was written to --model_dir" in result.stdout and "memory plan" in result.stdout
    assert snapshot(run_copy) == before


@pytest.mark.slow
@pytest.mark.parametrize("flag, words", [
    ("--weights=/nonexistent/typo.h5", ("typo.h5",)),
    ("--weights={notes}", ("notes.txt",)),
    ("--unfreeze=top:999", ("top:999",)),
])
def test_overwrite_with_a_mistake_found_at_the_model_build_keeps_the_run(run_copy, demo_records, tmp_path, flag, words):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a weights file\n")
    before = snapshot(run_copy)
    result = run_module("trainer.task", *train_flags(run_copy, demo_records, "none", *RUN, backbone=TINY),
                        flag.format(notes=notes), "--overwrite", timeout=600)
    assert_one_error_line(result, *words)
    assert snapshot(run_copy) == before


@pytest.mark.slow
def test_overwrite_replaces_the_run_but_keeps_its_exports(run_copy, demo_records):
    old_export = snapshot(run_copy / "export" / "1")
    old_weights = snapshot(run_copy / "checkpoints")
    result = train(run_copy, demo_records, "--overwrite", "--seed=7")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(run_copy / "export")) == ["1", "2"]
    assert snapshot(run_copy / "export" / "1") == old_export  # TF Serving may be serving it
    assert snapshot(run_copy / "checkpoints") != old_weights
    assert json.loads((run_copy / "config.json").read_text())["data"]["seed"] == 7
    assert not (run_copy / ".replaced").exists() and not (run_copy / "backup").exists()


def test_set_aside_keeps_the_previous_run_until_the_new_one_has_a_checkpoint(tmp_path):
    from trainer.runtime.rundir import RunDir
    run = RunDir(str(tmp_path))
    for name in ("config.json", "history.json"):
        (tmp_path / name).write_text("old")
    (tmp_path / "checkpoints" / "frozen").mkdir(parents=True)
    (tmp_path / "checkpoints" / "frozen" / "weights.index").write_text("old")
    (tmp_path / "export" / "1").mkdir(parents=True)
    aside = run.set_aside()
    assert sorted(os.listdir(tmp_path)) == [".replaced", "export"]
    assert sorted(os.listdir(aside)) == ["checkpoints", "config.json", "history.json"]
    # The replacing run dies before its first phase ends; --overwrite again: its partial files go,
    # the finished run stays aside.
    (tmp_path / "config.json").write_text("partial")
    assert run.set_aside() == aside
    assert sorted(os.listdir(tmp_path)) == [".replaced", "export"]
    assert (tmp_path / ".replaced" / "config.json").read_text() == "old"
    run.drop_replaced()
    assert sorted(os.listdir(tmp_path)) == ["export"]


@pytest.mark.slow
def test_a_second_run_on_a_held_folder_is_refused_in_one_line(run_copy, demo_records):
    from trainer.runtime import runlock
    before = snapshot(run_copy)
    with runlock.RunLock(str(run_copy)):
        result = train(run_copy, demo_records, "--overwrite")
        line = assert_one_error_line(result, f"process {os.getpid()}", f"host {socket.gethostname()}", "since",
                                     "one run at a time")
        reexport = run_module("trainer.export", f"--model_dir={run_copy}", timeout=300)
        assert_one_error_line(reexport, f"process {os.getpid()}")
    after = snapshot(run_copy)
    assert after == before, line


def _lock_file(folder, **fields):
    now = time.time()
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": now, "renewed": now, "command": "x",
              "token": "t", **fields}
    (folder / ".lock").write_text(json.dumps(holder))


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("fields, taken", [
    ({"pid": "dead"}, True),                                               # same host, process gone
    ({"host": "elsewhere", "renewed": time.time() - 3600}, True),          # lease expired
    ({"host": "elsewhere"}, False),                                        # lease fresh
    ({}, False),                                                           # this very process
])
def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, fields, taken):
    from trainer.runtime import runlock
    if fields.get("pid") == "dead":
        fields = {**fields, "pid": _dead_pid()}
    _lock_file(tmp_path, **fields)
    lock = runlock.RunLock(str(tmp_path))
    if not taken:
        with pytest.raises(runlock.LockedError, match="one run at a time"):
            lock.acquire()
        return
    with lock:
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def test_an_unreadable_lock_file_is_taken_over_and_a_made_folder_removed(tmp_path):
    from trainer.runtime import runlock
    (tmp_path / ".lock").write_text("")
    with runlock.RunLock(str(tmp_path)):
        pass
    assert os.listdir(tmp_path) == []
    with runlock.RunLock(str(tmp_path / "new")):
        assert (tmp_path / "new" / ".lock").exists()
    assert not (tmp_path / "new").exists()  # made for the lock alone


def test_the_holder_renews_its_lease(tmp_path, monkeypatch):
    from trainer.runtime import runlock
    monkeypatch.setattr(runlock, "RENEW_SECONDS", 0.05)
    with runlock.RunLock(str(tmp_path)):
        first = json.loads((tmp_path / ".lock").read_text())
        deadline = time.time() + 10
        while json.loads((tmp_path / ".lock").read_text())["renewed"] == first["renewed"] and time.time() < deadline:
            time.sleep(0.05)
        renewed = json.loads((tmp_path / ".lock").read_text())
    assert renewed["renewed"] > first["renewed"] and renewed["since"] == first["since"]


def test_the_lock_on_cloud_storage(gcs_bucket):
    from trainer.runtime import runlock
    root = f"{gcs_bucket}/run"
    with runlock.RunLock(root):
        with pytest.raises(runlock.LockedError, match=f"process {os.getpid()}"):
            runlock.RunLock(root).acquire()
    with runlock.RunLock(root) as lock:  # released: free again
        store = lock._store  # pylint: disable=protected-access
        assert store.replace_if(12345, b"{}") is None  # a stale generation changes nothing
        data, generation = store.read()
        assert runlock.Holder.from_bytes(data).pid == os.getpid()
    stale = runlock.Holder("elsewhere", 1, since=0.0, renewed=0.0)
    other = runlock.RunLock(root)
    assert other._store.create(stale.to_bytes())  # pylint: disable=protected-access
    with runlock.RunLock(root):  # an expired lease is taken over
        data, _ = other._store.read()  # pylint: disable=protected-access
        assert runlock.Holder.from_bytes(data).pid == os.getpid()


@pytest.mark.slow
def test_ctrl_c_during_fine_tuning_is_one_line_and_the_rerun_resumes(interrupted):
    model_dir, stopped, locked_after_stop, again = interrupted
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    lines = [x for x in stopped.stderr.splitlines() if x.startswith("interrupted:")]
    assert len(lines) == 1 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert "finetune phase after epoch 1 of 2" in lines[0] and "rerun the same command" in lines[0]
    assert not locked_after_stop
    assert again.returncode == 0, again.stderr[-3000:]
    history = json.loads((model_dir / "history.json").read_text())
    assert [(h["phase"], h["epoch"]) for h in history] == [("frozen", 1), ("finetune", 1), ("finetune", 2)]
    assert "resuming" in again.stderr or "finetune epoch 2" in again.stderr
