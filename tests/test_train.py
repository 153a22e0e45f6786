"""The two-phase recipe, asserted on weights: what must not move doesn't, what must move does.

Each run goes through `python -m trainer.task`'s own code path (flags -> Config -> train.run),
on the demo's TFRecords, B0 at 64 px, starting from a small pretrained backbone file.
"""
import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.conftest import IMAGE_SIZE
from trainer import model as model_lib
from trainer import task, train


def train_cli(model_dir, records, weights, *extra):
    """Runs trainer.task's main in-process with the given flags; returns the exit code (0 = ok)."""
    argv = ["trainer.task", f"--train_data={records}/train-*.tfrecord",
            f"--eval_data={records}/validation-*.tfrecord", f"--model_dir={model_dir}",
            f"--weights={weights}", f"--image_size={IMAGE_SIZE}", "--frozen_batch_size=16",
            "--finetune_batch_size=8", "--lr_base_batch_size=0", "--frozen_learning_rate=0.01",
            "--finetune_learning_rate=0.0005", "--warmup_epochs=0", "--early_stopping_patience=0",
            "--steps_per_epoch=4", "--seed=1", "--noreport", *extra]
    task.define_flags()
    task.FLAGS.unparse_flags()
    task.FLAGS(argv)
    try:
        task.main(["trainer.task"])
    except SystemExit as e:
        return e.code
    return 0


def variables_by_name(model, weights_prefix):
    model.load_weights(weights_prefix).expect_partial()
    return {v.name: v.numpy().copy() for v in model.variables}


def fresh_model(weights, **overrides):
    from trainer import config
    kwargs = dict(backbone="efficientnet-b0", weights=weights, num_classes=4, image_size=IMAGE_SIZE)
    kwargs.update(overrides)
    return model_lib.build_classifier(config.Model(**kwargs))


def backbone_variable_names(model):
    return {v.name for v in model_lib.backbone_of(model).variables}


def is_bn_stat(name):
    return "moving_mean" in name or "moving_variance" in name


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, demo_records, pretrained_weights):
    model_dir = str(tmp_path_factory.mktemp("full_run"))
    code = train_cli(model_dir, demo_records, pretrained_weights, "--frozen_epochs=3", "--finetune_epochs=2", "--report")
    assert code == 0
    return model_dir


def test_frozen_phase_moves_only_the_head(full_run, pretrained_weights):
    model = fresh_model(pretrained_weights)
    before = {v.name: v.numpy().copy() for v in model.variables}
    after = variables_by_name(model, train.checkpoint_of(full_run, "frozen"))
    backbone = backbone_variable_names(model)
    assert any(is_bn_stat(n) for n in backbone)
    for name in backbone:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    head = [n for n in before if n.startswith(model_lib.HEAD_LAYER)]
    assert head and all(not np.array_equal(after[n], before[n]) for n in head)


def test_finetune_moves_kernels_but_not_bn_statistics(full_run, pretrained_weights):
    model = fresh_model(pretrained_weights)
    frozen = variables_by_name(model, train.checkpoint_of(full_run, "frozen"))
    tuned = variables_by_name(model, train.checkpoint_of(full_run, "finetune"))
    backbone = backbone_variable_names(model)
    kernels = [n for n in backbone if "kernel" in n]
    moved = [n for n in kernels if not np.array_equal(frozen[n], tuned[n])]
    assert len(moved) == len(kernels), f"{len(kernels) - len(moved)} kernels did not move"
    for name in (n for n in backbone if is_bn_stat(n)):
        np.testing.assert_array_equal(frozen[name], tuned[name], err_msg=name)


def test_history_schema_and_loss_falls(full_run):
    with open(os.path.join(full_run, "history.json")) as f:
        history = json.load(f)
    assert [(h["phase"], h["epoch"]) for h in history] == [
        ("frozen", 1), ("frozen", 2), ("frozen", 3), ("finetune", 1), ("finetune", 2)]
    for h in history:
        assert set(h) >= {"phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy"}
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(h["val_loss"] is not None for h in history)


def test_outputs_in_model_dir(full_run):
    for name in ("config.json", "history.json", "state.json", "plots/learning_curves.png", "eval/metrics.json",
                 "eval/per_class.csv", "eval/confusion_matrix.png"):
        assert os.path.exists(os.path.join(full_run, name)), name
    assert glob.glob(os.path.join(full_run, "logs", "frozen", "train", "events.*"))
    versions = os.listdir(os.path.join(full_run, "export"))
    assert len(versions) == 1 and versions[0].isdigit()


def test_export_matches_keras_model(full_run, demo_images):
    from trainer import data
    export_dir = glob.glob(os.path.join(full_run, "export", "*"))[0]
    loaded = tf.saved_model.load(export_dir)
    model, cfg = train.restore_trained_model(full_run)
    paths = sorted(glob.glob(os.path.join(demo_images, "*", "*_000[01].jpg")))
    image_bytes = [open(p, "rb").read() for p in paths]
    pixels = tf.stack([data.decode_for_eval(tf.constant(b), cfg.model.image_size) for b in image_bytes])
    expected = model(pixels, training=False).numpy()
    got = loaded.signatures["serving_default"](image_bytes=tf.constant(image_bytes))
    np.testing.assert_allclose(got["probabilities"].numpy(), expected, atol=1e-5)
    features = loaded.signatures["features"](image_bytes=tf.constant(image_bytes))["features"]
    assert features.shape == (len(paths), 1280)
    np.testing.assert_allclose(features.numpy(), model_lib.feature_model(model)(pixels).numpy(), atol=1e-4)


def test_top_n_opens_only_the_top_blocks(tmp_path, demo_records, pretrained_weights):
    model_dir = str(tmp_path / "top2")
    assert train_cli(model_dir, demo_records, pretrained_weights, "--frozen_epochs=0", "--finetune_epochs=1",
                     "--unfreeze=top:2") == 0
    model = fresh_model(pretrained_weights)
    before = {v.name: v.numpy().copy() for v in model.variables}
    after = variables_by_name(model, train.checkpoint_of(model_dir, "finetune"))
    blocks = model_lib.block_names(model_lib.backbone_of(model))
    top = tuple(blocks[-2:]) + ("top_",)
    for name in backbone_variable_names(model):
        layer = name.split("/")[0]
        if is_bn_stat(name):
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
        elif layer.startswith(top):
            assert "kernel" not in name or not np.array_equal(after[name], before[name]), name
        else:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_seed_blog_variant_trains_bn_in_frozen_phase(tmp_path, demo_records, pretrained_weights):
    model_dir = str(tmp_path / "bn_trainable")
    assert train_cli(model_dir, demo_records, pretrained_weights, "--frozen_epochs=1", "--finetune_epochs=0",
                     "--bn=trainable") == 0
    model = fresh_model(pretrained_weights, bn="trainable")
    before = {v.name: v.numpy().copy() for v in model.variables}
    after = variables_by_name(model, train.checkpoint_of(model_dir, "frozen"))
    backbone = backbone_variable_names(model)
    assert all(not np.array_equal(after[n], before[n]) for n in backbone if is_bn_stat(n))
    for name in (n for n in backbone if "kernel" in n):
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_rerun_of_finished_run_redoes_nothing(full_run, tmp_path, demo_records, pretrained_weights):
    """The same command on a finished run's model_dir trains nothing and exports a new version."""
    model_dir = str(tmp_path / "copy")
    shutil.copytree(full_run, model_dir)
    before = open(os.path.join(model_dir, "history.json")).read()
    assert train_cli(model_dir, demo_records, pretrained_weights, "--frozen_epochs=3", "--finetune_epochs=2") == 0
    assert open(os.path.join(model_dir, "history.json")).read() == before
    assert len(os.listdir(os.path.join(model_dir, "export"))) == 2


def test_out_of_memory_halves_the_batch_and_continues(tmp_path, demo_records, pretrained_weights, monkeypatch):
    """The test hook raises ResourceExhaustedError at the phase's first step: the phase reruns at half
    the batch, the run finishes, and plan.json records the retry."""
    monkeypatch.setenv("EFFNET_TEST_OOM_ONCE", "frozen")
    model_dir = tmp_path / "oom"
    assert train_cli(str(model_dir), demo_records, pretrained_weights, "--frozen_epochs=1", "--finetune_epochs=0",
                     "--steps_per_epoch=1") == 0
    plan = json.loads((model_dir / "plan.json").read_text())
    frozen = next(p for p in plan["phases"] if p["name"] == "frozen")
    assert frozen["batch_size"] == 8
    assert frozen["oom_retries"][0]["batch_size"] == 16 and frozen["oom_retries"][0]["new_batch_size"] == 8
    assert [h["phase"] for h in json.loads((model_dir / "history.json").read_text())] == ["frozen"]
