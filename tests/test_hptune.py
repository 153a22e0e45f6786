"""trainer.training.hptune: a tuning trial reports its metric through the real cloudml-hypertune library.

A two-weight Keras model trains for a few epochs on a handful of numbers; what cloudml-hypertune
writes to CLOUD_ML_HP_METRIC_FILE is read back and compared with Keras' own history.
"""
import json
import types

import numpy as np
import pytest

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tf_keras as keras  # noqa: E402

from trainer.training import hptune


def _tiny_fit(callbacks, *, epochs=3):
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(-1, 1)
    y = (x[:, 0] > 0).astype(np.int32)
    model = keras.Sequential([keras.Input([1]), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model.fit(x, y, validation_data=(x, y), epochs=epochs, batch_size=8, verbose=0, callbacks=callbacks).history


def test_a_trial_reports_each_epoch_through_hypertune(tmp_path, monkeypatch):
    metrics_file = tmp_path / "hypertune" / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(metrics_file))
    monkeypatch.setenv("CLOUD_ML_TRIAL_ID", "7")
    callback = hptune.build_callback(metric="val_accuracy", env={"CLOUD_ML_TRIAL_ID": "7"}, is_chief=True,
                                     epoch_offset=2)
    history = _tiny_fit([callback])
    lines = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert [line["global_step"] for line in lines] == ["3", "4", "5"]  # after the 2 epochs of an earlier phase
    assert all(line["trial"] == "7" for line in lines)
    np.testing.assert_allclose([float(line["val_accuracy"]) for line in lines], history["val_accuracy"], rtol=1e-6)


def test_another_metric_tag_is_reported_under_its_own_name(tmp_path, monkeypatch):
    metrics_file = tmp_path / "m.metrics"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(metrics_file))
    callback = hptune.build_callback(metric="val_loss", env={"CLOUD_ML_TRIAL_ID": "1"}, is_chief=True)
    history = _tiny_fit([callback], epochs=2)
    lines = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert [set(line) - {"global_step", "timestamp", "trial", "checkpoint_path"} for line in lines] == [{"val_loss"}] * 2
    np.testing.assert_allclose([float(line["val_loss"]) for line in lines], history["val_loss"], rtol=1e-6)


@pytest.mark.parametrize("env, is_chief", [({}, True), ({"CLOUD_ML_TRIAL_ID": ""}, True),
                                           ({"CLOUD_ML_TRIAL_ID": "3"}, False)])
def test_nothing_is_reported_outside_a_trial_or_off_the_chief(env, is_chief):
    made = []
    assert hptune.build_callback(metric="val_accuracy", env=env, is_chief=is_chief,
                                 client_factory=lambda: made.append(1)) is None
    assert made == []


def test_a_metric_missing_from_the_logs_fails_with_one_line():
    reported = []
    client = types.SimpleNamespace(report_hyperparameter_tuning_metric=lambda **kw: reported.append(kw))
    callback = hptune.build_callback(metric="val_accuracy", env={"CLOUD_ML_TRIAL_ID": "3"}, is_chief=True,
                                     client_factory=lambda: client)
    with pytest.raises(ValueError, match=r"--hptune_metric=val_accuracy is not among this epoch's metrics "
                                         r"\(accuracy, loss\)"):
        callback.on_epoch_end(0, {"loss": 0.5, "accuracy": 0.9})
    assert reported == []


@pytest.mark.parametrize("metric, has_eval, says", [
    ("val_accuracy", False, "pass --eval_data"),
    ("top5", True, "choose one of accuracy, loss, val_accuracy, val_loss"),
])
def test_check_metric_refuses_what_the_trainer_never_measures(metric, has_eval, says):
    with pytest.raises(ValueError, match=says):
        hptune.check_metric(metric, has_eval_data=has_eval)
    hptune.check_metric("loss", has_eval_data=False)
