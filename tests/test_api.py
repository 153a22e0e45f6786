"""The Python API (trainer/api.py): `import trainer` stays light, keywords are the commands' flags
with their own defaults and checks, mistakes raise the typed errors the commands print, and a run
trained from Python evaluates, predicts, explains and exports as the commands do."""
import os
import subprocess
import sys

import pytest
from absl import flags

import trainer
from effnet_common import errors, flagutil
from tests.testing.presets import REPO_DIR, TINY, TINY_SIZE
from trainer import api, task


def test_import_trainer_loads_no_tensorflow():
    code = ("import sys, trainer; assert 'tensorflow' not in sys.modules; f = trainer.fit; "
            "assert 'tensorflow' not in sys.modules, 'the API module loads TensorFlow'; print(f.__module__)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "trainer.api"
    with pytest.raises(AttributeError):
        trainer.no_such_thing  # pylint: disable=pointless-statement


def test_keywords_are_the_flags_with_their_defaults():
    values = api.command_values(task.define_flags, "trainer.task", {"finetune_batch_size": 8, "bn": "trainable",
                                                                     "tflite": "float16,int8"}, command="fit")
    for name in ("finetune_epochs", "frozen_learning_rate", "backbone", "augment", "keep_best_phase"):
        assert getattr(values, name) == flags.FLAGS[name].default
    assert values.finetune_batch_size == "8" and values.bn == "trainable" and values.tflite == ["float16", "int8"]


@pytest.mark.parametrize("values, words", [
    ({"bogus": 1}, ["fit(bogus=...)", "no such setting", "trainer.task"]),
    ({"bn": "maybe"}, ["fit(bn='maybe')", "frozen|trainable"]),
    ({"finetune_epochs": "many"}, ["fit(finetune_epochs='many')"]),
])
def test_a_bad_keyword_is_a_flag_error(values, words):
    with pytest.raises(flagutil.FlagError) as raised:
        trainer.fit(train_data="x", model_dir="y", **values)
    for word in words:
        assert word in str(raised.value)


def test_a_missing_setting_is_the_command_s_own_error(tmp_path):
    with pytest.raises(errors.UserError, match="--train_data is required"):
        trainer.fit(model_dir=str(tmp_path))
    with pytest.raises(errors.UserError, match="is a file, not a folder"):
        (tmp_path / "file").write_text("")
        trainer.fit(train_data=str(tmp_path), model_dir=str(tmp_path / "file"))


@pytest.fixture(scope="module")
def run(demo_images, tmp_path_factory):
    """prepare_data and fit on the tiny backbone, from Python."""
    root = tmp_path_factory.mktemp("api")
    info = trainer.prepare_data(input_dir=demo_images, output_dir=str(root / "records"), validation_fraction=0.25,
                                num_shards=1)
    assert info["splits"]["train"]["num_examples"] == 72
    return trainer.fit(train_data=str(root / "records" / "train-*.tfrecord"),
                       eval_data=str(root / "records" / "validation-*.tfrecord"), model_dir=str(root / "run"),
                       backbone=TINY, weights="none", image_size=TINY_SIZE, frozen_epochs=1, finetune_epochs=1,
                       finetune_batch_size=8, leakage_check=False)


@pytest.mark.slow
def test_a_run_trained_from_python(run, demo_images, tmp_path):
    assert [r["phase"] for r in run.history] == ["frozen", "finetune"]
    assert run.export_dir == os.path.join(run.model_dir, "export", "1")
    assert run.metrics["num_examples"] == 24 and os.path.exists(os.path.join(run.report_dir, "worst_explained.png"))
    assert any(line.startswith("export: ") for line in run.summary)

    report = run.evaluate(demo_images, output_dir=str(tmp_path / "report"), worst=5)
    assert report.metrics["num_examples"] == 96 and len(report.worst()) == 5
    assert os.path.exists(report.image("worst_explained"))

    predictions = run.predict(os.path.join(demo_images, "circle"))
    assert predictions.probabilities.shape == (24, 4) and len(run.class_names) == 4
    explained = run.explain([os.path.join(demo_images, "circle", "circle_0000.jpg")])
    (path, (item,)), = explained
    assert item.class_index == predictions.probabilities[0].argmax() and item.heatmap.shape == (TINY_SIZE,) * 2

    assert run.export() == os.path.join(run.model_dir, "export", "2") == run.export_dir
    loaded = trainer.load(run.model_dir)
    assert loaded.history == run.history and loaded.export_dir == run.export_dir
