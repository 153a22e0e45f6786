"""The whole job as a Vertex AI tuning trial runs it: train, export, report, and the tuning metric
reported at each epoch of the last phase (tiny backbone: this is plumbing)."""
import json
import os

import pytest

from tests.testing.cli import run_module


@pytest.mark.slow
def test_a_tuning_trial_reports_the_last_phase_and_the_run_says_how_good_it_is(tmp_path, demo_records):
    metric_file = tmp_path / "hypertune" / "output.metrics"
    result = run_module(
        "trainer.task", f"--train_data={demo_records}/train-*.tfrecord",
        f"--eval_data={demo_records}/validation-*.tfrecord", f"--model_dir={tmp_path / 'trial'}",
        "--backbone=tiny", "--weights=none", "--image_size=32", "--frozen_epochs=2", "--finetune_epochs=2",
        "--early_stopping_patience=0", "--frozen_batch_size=16", "--finetune_batch_size=16", "--frozen_head=epochs",
        env={"CLOUD_ML_TRIAL_ID": "7", "CLOUD_ML_HP_METRIC_FILE": str(metric_file)})
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line) for line in metric_file.read_text().splitlines() if line.strip()]
    history = json.load(open(tmp_path / "trial" / "history.json"))
    finetune = [r for r in history if r["phase"] == "finetune"]
    # One report per epoch of the last phase, numbered after the frozen phase's epochs.
    assert [int(r["global_step"]) for r in reports] == [3, 4]
    assert [float(r["val_accuracy"]) for r in reports] == [r["val_accuracy"] for r in finetune]
    assert all(r.get("trial") == "7" for r in reports)
    lines = result.stdout.strip().splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("frozen phase:")):]  # after progress bars
    assert lines[0].startswith("frozen phase: 2 epoch(s), best val_accuracy")
    assert lines[1].startswith("finetune phase: 2 epoch(s), best val_accuracy")
    assert lines[2].startswith("validation accuracy") and os.path.join("trial", "eval") in lines[2]
    assert lines[-1] == f"export: {tmp_path / 'trial' / 'export' / '1'}"
