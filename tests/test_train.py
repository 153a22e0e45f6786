"""The two-phase recipe, asserted on weights: what must not move doesn't, what must move does.

Each run is `python -m trainer.task` in a child process (flags -> Config -> pipeline.run), on the
demo's TFRecords, EfficientNet-Lite0 at 64 px, starting from its ImageNet notop weights file; the
out-of-memory test calls pipeline.run in-process with a Config and an injected callback.
"""
import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from effnet_common import decode
from tests.testing.cli import run_module, train_flags
from tests.testing.faults import OomOnce
from tests.testing.presets import IMAGE_SIZE, PRETRAINED
from trainer.data import discovery
from trainer.exporting import restore
from trainer.models import classifier, finetuning
from trainer.runtime import rundir


def train_cli(model_dir, records, weights, *extra):
    """Runs python -m trainer.task with the small runs' flags; returns the exit code (0 = ok)."""
    # Lite0 from ImageNet: the default fine-tuning rate (train_flags' 5e-4 suits the small runs'
    # other backbones, and makes a real network's loss jump at batch 8).
    result = run_module("trainer.task", *train_flags(model_dir, records, weights, "--finetune_learning_rate=1e-4",
                                                     *extra, backbone=PRETRAINED))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.returncode


def checkpoint_of(model_dir, phase):
    return rundir.RunDir(str(model_dir)).read_state()[phase]


def variables_by_name(model, weights_prefix):
    model.load_weights(weights_prefix).expect_partial()
    return {v.name: v.numpy().copy() for v in model.variables}


def fresh_model(weights, **overrides):
    from trainer.configs import config
    kwargs = dict(backbone=PRETRAINED, weights=weights)
    kwargs.update(overrides)
    return classifier.build_classifier(config.Model(**kwargs), num_classes=4, image_size=IMAGE_SIZE)


def backbone_variable_names(model):
    return {v.name for v in classifier.backbone_of(model).variables}


def is_bn_stat(name):
    return "moving_mean" in name or "moving_variance" in name


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, demo_records, pretrained_weights):
    model_dir = str(tmp_path_factory.mktemp("full_run"))
    # The Adam path (tests/test_headfit.py runs the probe). --nokeep_best_phase: these tests look at what
    # each phase trained; with it, a fine-tune phase that scores below the frozen one on these 4-step
    # epochs leaves the frozen weights in its checkpoint (tests/test_keep_phase.py checks that choice).
    code = train_cli(model_dir, demo_records, pretrained_weights, "--frozen_epochs=3", "--finetune_epochs=2", "--eval_report",
                     "--frozen_head=epochs", "--nokeep_best_phase")
    assert code == 0
    return model_dir


@pytest.mark.slow
def test_frozen_phase_moves_only_the_head(full_run, pretrained_weights):
    model = fresh_model(pretrained_weights)
    before = {v.name: v.numpy().copy() for v in model.variables}
    after = variables_by_name(model, checkpoint_of(full_run, "frozen"))
    backbone = backbone_variable_names(model)
    assert any(is_bn_stat(n) for n in backbone)
    for name in backbone:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    head = [n for n in before if n.startswith(classifier.HEAD_LAYER)]
    assert head and all(not np.array_equal(after[n], before[n]) for n in head)


@pytest.mark.slow
def test_finetune_moves_kernels_but_not_bn_statistics(full_run, pretrained_weights):
    model = fresh_model(pretrained_weights)
    frozen = variables_by_name(model, checkpoint_of(full_run, "frozen"))
    tuned = variables_by_name(model, checkpoint_of(full_run, "finetune"))
    backbone = backbone_variable_names(model)
    kernels = [n for n in backbone if "kernel" in n]
    moved = [n for n in kernels if not np.array_equal(frozen[n], tuned[n])]
    assert len(moved) == len(kernels), f"{len(kernels) - len(moved)} kernels did not move"
    for name in (n for n in backbone if is_bn_stat(n)):
        np.testing.assert_array_equal(frozen[name], tuned[name], err_msg=name)


@pytest.mark.slow
def test_history_schema_and_loss_falls(full_run):
    with open(os.path.join(full_run, "history.json")) as f:
        history = json.load(f)
    assert [(h["phase"], h["epoch"]) for h in history] == [
        ("frozen", 1), ("frozen", 2), ("frozen", 3), ("finetune", 1), ("finetune", 2)]
    for h in history:
        assert set(h) >= {"phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy"}
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(h["val_loss"] is not None for h in history)


@pytest.mark.slow
def test_outputs_in_model_dir(full_run):
    """Every output is there and says what the run did (not only that the files exist)."""
    run = rundir.RunDir(full_run)
    state = run.read_state()
    assert list(state) == ["frozen", "finetune"]
    assert all(tf.train.load_checkpoint(prefix).get_variable_to_shape_map() for prefix in state.values())
    plan = run.read_plan()
    assert [p["name"] for p in plan["phases"]] == ["frozen", "finetune"]
    assert [p["batch_size"] for p in plan["phases"]] == [16, 8]
    assert run.read_config().data.image_size == IMAGE_SIZE
    metrics = json.load(open(os.path.join(full_run, "eval", "metrics.json")))
    assert metrics["num_examples"] == 24 and 0.0 <= metrics["accuracy"] <= 1.0
    per_class = open(os.path.join(full_run, "eval", "per_class.csv")).read().splitlines()
    assert len(per_class) == 1 + 4  # header + one row a class
    for png in ("plots/learning_curves.png", "eval/confusion_matrix.png"):
        with open(os.path.join(full_run, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
    events = glob.glob(os.path.join(full_run, "logs", "frozen", "train", "events.*"))
    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(events[0]) for v in e.summary.value}
    assert "epoch_loss" in tags
    versions = os.listdir(os.path.join(full_run, "export"))
    assert len(versions) == 1 and versions[0].isdigit()
    assert not os.path.exists(os.path.join(full_run, "embeddings"))  # the embedding cache is gone with the phase


@pytest.mark.slow
def test_export_matches_keras_model(full_run, demo_images):
    export_dir = glob.glob(os.path.join(full_run, "export", "*"))[0]
    loaded = tf.saved_model.load(export_dir)
    run = restore.restore_as_exported(full_run)  # the checkpoint, calibrated as exported
    model, cfg = run.model, run.config
    paths = sorted(glob.glob(os.path.join(demo_images, "*", "*_000[01].jpg")))
    image_bytes = [open(p, "rb").read() for p in paths]
    pixels = tf.stack([decode.decode_for_eval(tf.constant(b), cfg.data.image_size) for b in image_bytes])
    expected = model(pixels, training=False).numpy()
    got = loaded.signatures["serving_default"](image_bytes=tf.constant(image_bytes))
    np.testing.assert_allclose(got["probabilities"].numpy(), expected, atol=1e-5)
    features = loaded.signatures["features"](image_bytes=tf.constant(image_bytes))["features"]
    assert features.shape == (len(paths), 1280)
    np.testing.assert_allclose(features.numpy(), classifier.feature_model(model)(pixels).numpy(), atol=1e-4)


@pytest.mark.slow
def test_top_n_opens_only_the_top_blocks(tmp_path, demo_records, pretrained_weights):
    model_dir = str(tmp_path / "top2")
    assert train_cli(model_dir, demo_records, pretrained_weights, "--frozen_epochs=0", "--finetune_epochs=1",
                     "--unfreeze=top:2") == 0
    model = fresh_model(pretrained_weights)
    before = {v.name: v.numpy().copy() for v in model.variables}
    after = variables_by_name(model, checkpoint_of(model_dir, "finetune"))
    blocks = finetuning.block_names(classifier.backbone_of(model))
    top = tuple(blocks[-2:]) + ("top_",)
    for name in backbone_variable_names(model):
        layer = name.split("/")[0]
        if is_bn_stat(name):
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
        elif layer.startswith(top):
            assert "kernel" not in name or not np.array_equal(after[name], before[name]), name
        else:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)


@pytest.mark.slow
def test_seed_blog_variant_trains_bn_in_frozen_phase(tmp_path, demo_records, pretrained_weights):
    model_dir = str(tmp_path / "bn_trainable")
    result = run_module("trainer.task", *train_flags(model_dir, demo_records, pretrained_weights, "--frozen_epochs=1",
                                                     "--finetune_epochs=0", "--bn=trainable", backbone=PRETRAINED))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "frozen phase streams images: --bn=trainable" in result.stderr  # BN in training mode: no cache
    model = fresh_model(pretrained_weights, bn="trainable")
    before = {v.name: v.numpy().copy() for v in model.variables}
    after = variables_by_name(model, checkpoint_of(model_dir, "frozen"))
    backbone = backbone_variable_names(model)
    assert all(not np.array_equal(after[n], before[n]) for n in backbone if is_bn_stat(n))
    for name in (n for n in backbone if "kernel" in n):
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


@pytest.mark.slow
def test_rerun_of_finished_run_redoes_nothing(full_run, tmp_path, demo_records, pretrained_weights):
    """The same command on a finished run's model_dir trains nothing and exports a new version."""
    model_dir = str(tmp_path / "copy")
    shutil.copytree(full_run, model_dir)
    before = open(os.path.join(model_dir, "history.json")).read()
    assert train_cli(model_dir, demo_records, pretrained_weights, "--frozen_epochs=3", "--finetune_epochs=2") == 0
    assert open(os.path.join(model_dir, "history.json")).read() == before
    assert len(os.listdir(os.path.join(model_dir, "export"))) == 2


@pytest.mark.slow
def test_out_of_memory_halves_the_batch_and_continues(tmp_path, demo_records, pretrained_weights):
    """A callback raises ResourceExhaustedError at the phase's first step: the phase reruns at half
    the batch, the run finishes, and plan.json records the retry."""
    from trainer.configs import config
    from trainer.jobs import pipeline
    train_glob, eval_glob = f"{demo_records}/train-*.tfrecord", f"{demo_records}/validation-*.tfrecord"
    names = discovery.resolve_class_names(train_glob)
    cfg = config.Config(
        data=config.Data(train_data=train_glob, eval_data=eval_glob, class_names=names, image_size=IMAGE_SIZE,
                         num_train_examples=discovery.count_examples(train_glob),
                         num_eval_examples=discovery.count_examples(eval_glob)),
        model=config.Model(backbone=PRETRAINED, weights=pretrained_weights),
        phases=(config.Phase(name="frozen", epochs=1, batch_size=16, learning_rate=1e-2),
                config.Phase(name="finetune", epochs=0, batch_size=8, learning_rate=1e-4, unfreeze="all")),
        runtime=config.Runtime(model_dir=str(tmp_path / "oom"), steps_per_epoch=1, eval_report=False,
                               frozen_head="epochs"))  # a phase of Adam steps, which can run out of memory
    result = pipeline.run(cfg, strategy=tf.distribute.get_strategy(), callbacks=[OomOnce()])
    plan = rundir.RunDir(cfg.runtime.model_dir).read_plan()
    frozen = next(p for p in plan["phases"] if p["name"] == "frozen")
    assert frozen["batch_size"] == 8
    assert frozen["oom_retries"][0]["batch_size"] == 16 and frozen["oom_retries"][0]["new_batch_size"] == 8
    assert [h["phase"] for h in result.history] == ["frozen"] and result.export_dir


def test_mixed_precision_run_exports_float32_and_leaves_the_policy_as_it_was(tmp_path, demo_records):
    """A mixed_bfloat16 run trains under that policy and hands the pipeline a float32 model; the
    process's Keras policy is float32 again afterwards."""
    from tests.testing.presets import TINY, TINY_SIZE
    from trainer.configs import config
    from trainer.training import train
    import tf_keras as keras
    names = tuple(open(os.path.join(demo_records, "labels.txt")).read().split())
    cfg = config.Config(
        data=config.Data(train_data=os.path.join(demo_records, "train-*"), eval_data=None, class_names=names,
                         image_size=TINY_SIZE, num_train_examples=72),
        model=config.Model(backbone=TINY, weights="none"),
        phases=(config.Phase(name="frozen", epochs=1, batch_size=8, learning_rate=1e-3),),
        runtime=config.Runtime(model_dir=str(tmp_path / "m"), mixed_precision="mixed_bfloat16", steps_per_epoch=1))
    result = train.run(cfg, strategy=tf.distribute.get_strategy())
    assert keras.mixed_precision.global_policy().name == "float32"
    assert result.model.outputs[0].dtype == tf.float32
    assert all(layer.dtype_policy.name == "float32" for layer in classifier.leaf_layers(result.model))


def test_config_json_of_an_earlier_version_resumes_and_each_setting_has_one_field(tmp_path):
    """config.json from before each setting lived in one field (the seed also under runtime; the
    network's shape also under model) and had one name (cache, report) still reads as the same
    run; the new file names each once."""
    from trainer.configs import config
    cfg = config.Config(
        data=config.Data(train_data="x/train-*", eval_data=None, class_names=("a", "b", "c"), image_size=IMAGE_SIZE,
                         seed=7),
        model=config.Model(backbone=PRETRAINED, weights="none"),
        phases=(config.Phase(name="frozen", epochs=1, batch_size=8, learning_rate=1e-3),),
        runtime=config.Runtime(model_dir=str(tmp_path)))
    new = cfg.to_dict()
    assert not {"num_classes", "image_size", "multi_label"} & set(new["model"]) and "seed" not in new["runtime"]
    old = json.loads(cfg.to_json())
    old["model"].update(num_classes=3, image_size=IMAGE_SIZE, multi_label=False)
    old["runtime"]["seed"] = 7
    old["data"]["cache"] = old["data"].pop("cache_records")  # names that said two things
    old["runtime"]["report"] = old["runtime"].pop("eval_report")
    with open(tmp_path / "config.json", "w") as f:
        json.dump(old, f)
    run = rundir.RunDir(str(tmp_path))
    assert run.read_config() == cfg
    run.check(cfg)  # the same run: resumes
    other = config.Config(data=config.Data(train_data="x/train-*", eval_data=None, class_names=("a", "b", "c"),
                                           image_size=IMAGE_SIZE + 32), model=cfg.model, phases=cfg.phases,
                          runtime=cfg.runtime)
    with pytest.raises(config.ConfigError, match=f"image_size: {IMAGE_SIZE} vs {IMAGE_SIZE + 32}"):
        run.check(other)
