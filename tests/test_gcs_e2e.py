"""The demo flow with every path on gs://, against the GCS test front (testbed/gcs_front.py).

prepare (gs:// image folder of 8 demo images a class -> gs:// shards) -> train both phases
(model_dir and --weights on gs://) -> export on gs:// -> load the export from gs:// and predict;
then the same training again while every Nth storage request is answered 503, which must end
with the same result.
Each run is a real `python -m trainer.*` process that inherits the front's environment. The
backbone is the tiny preset with a notop weights file the test writes (what is checked is
storage, not EfficientNet).

The trainer's training input is deliberately nondeterministic (parallel reads in any order), so
the two training runs set TF_DETERMINISTIC_OPS=1: TensorFlow then rewrites tf.data pipelines
to be deterministic (its make_deterministic optimization), and a faulty run that only retried
storage requests must match the clean one exactly.
"""
import io
import json
import os
import uuid

import h5py
import numpy as np
import pytest

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf  # noqa: E402

from tests.testing import cli  # noqa: E402
from tests.testing.presets import TINY, TINY_SIZE, write_tiny_weights  # noqa: E402


EVERY_NTH_503 = 20
PER_CLASS = 8  # demo images a class put in the bucket: 24 train / 8 validation after prepare


def run_module(module, *args, env):
    result = cli.run_module(module, *args, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def upload_images(local_root, gs_root, per_class):
    """The first `per_class` images of each class folder; returns {class: count uploaded}."""
    uploaded = {}
    for name in sorted(os.listdir(local_root)):
        files = sorted(os.listdir(os.path.join(local_root, name)))[:per_class]
        for file in files:
            tf.io.gfile.copy(os.path.join(local_root, name, file), f"{gs_root}/{name}/{file}")
        uploaded[name] = len(files)
    return uploaded


def trainer_env(gcs):
    return {**os.environ, **gcs.env, "TF_DETERMINISTIC_OPS": "1"}


def read_json(path):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


STEM_KERNEL_SHAPE = [3, 3, 3, 8]  # the tiny backbone's stem_conv: no other variable has this shape


def stem_kernel_of_weights_file(path):
    with tf.io.gfile.GFile(path, "rb") as f, h5py.File(io.BytesIO(f.read()), "r") as h5:
        group = h5["stem_conv"]
        (name,) = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        return group[name][()]


def stem_kernel_of_export(export_dir):
    reader = tf.train.load_checkpoint(f"{export_dir}/variables/variables")
    found = [key for key, shape in reader.get_variable_to_shape_map().items() if shape == STEM_KERNEL_SHAPE]
    assert len(found) == 1, found
    return reader.get_tensor(found[0])


@pytest.fixture(scope="module")
def bucket(gcs, demo_images, tmp_path_factory):
    """A bucket holding PER_CLASS images of each demo class (an image folder; the counts are
    `uploaded`) and a notop weights file of the tiny backbone."""
    gcs.set_faults()
    root = gcs.create_bucket(f"e2e-{uuid.uuid4().hex[:8]}")
    uploaded = upload_images(demo_images, f"{root}/images", PER_CLASS)
    weights = write_tiny_weights(str(tmp_path_factory.mktemp("tiny_weights") / "tiny_notop.h5"))
    tf.io.gfile.copy(weights, f"{root}/weights/tiny_notop.h5")
    return root, uploaded


@pytest.fixture(scope="module")
def shards(gcs, bucket):
    bucket, _ = bucket
    env = {**os.environ, **gcs.env}
    run_module("trainer.prepare", f"--input_dir={bucket}/images", f"--output_dir={bucket}/data",
               "--validation_fraction=0.25", "--num_shards=2", env=env)
    return f"{bucket}/data"


def train_args(shards, bucket, model_dir):
    return [f"--train_data={shards}/train-*.tfrecord",
            f"--eval_data={shards}/validation-*.tfrecord",
            f"--backbone={TINY}", f"--weights={bucket}/weights/tiny_notop.h5", f"--model_dir={model_dir}",
            f"--image_size={TINY_SIZE}", "--frozen_epochs=1", "--finetune_epochs=1",
            "--steps_per_epoch=2", "--frozen_batch_size=8", "--finetune_batch_size=8",
            "--unfreeze=top:1"]


@pytest.fixture(scope="module")
def clean_run(gcs, bucket, shards):
    bucket, _ = bucket
    model_dir = f"{bucket}/runs/clean"
    result = run_module("trainer.task", *train_args(shards, bucket, model_dir),
                        env=trainer_env(gcs))
    return model_dir, result


@pytest.mark.slow
def test_prepare_from_gcs_folder_to_gcs_shards(shards, bucket, demo_images):
    _, uploaded = bucket
    assert len(uploaded) == 4 and all(n == PER_CLASS for n in uploaded.values())
    names = sorted(tf.io.gfile.listdir(shards))
    assert names == ["dataset.json", "labels.txt", "train-00000-of-00002.tfrecord",
                     "train-00001-of-00002.tfrecord", "validation-00000-of-00001.tfrecord"]
    with tf.io.gfile.GFile(f"{shards}/labels.txt") as f:
        assert f.read().split() == sorted(os.listdir(demo_images))
    total = sum(1 for _ in tf.data.TFRecordDataset(tf.io.gfile.glob(f"{shards}/*.tfrecord")))
    assert total == sum(uploaded.values())


@pytest.mark.slow
def test_train_export_and_predict_all_on_gcs(clean_run, bucket, shards, demo_images):
    bucket, _ = bucket
    model_dir, result = clean_run
    history = read_json(f"{model_dir}/history.json")
    assert [h["phase"] for h in history] == ["frozen", "finetune"]
    for name in ("config.json", "state.json", "plots/learning_curves.png", "eval/metrics.json"):
        assert tf.io.gfile.exists(f"{model_dir}/{name}"), name
    assert tf.io.gfile.glob(f"{model_dir}/logs/*/train/events.out.tfevents.*")
    export_dir = result.stdout.split("export: ")[-1].strip()
    assert export_dir.startswith(f"{model_dir}/export/")
    assert os.path.basename(export_dir).isdigit()
    # --weights was read from gs://: the stem, below the one fine-tuned block, is the file's.
    np.testing.assert_array_equal(stem_kernel_of_export(export_dir),
                                  stem_kernel_of_weights_file(f"{bucket}/weights/tiny_notop.h5"))

    loaded = tf.saved_model.load(export_dir)
    classes = sorted(os.listdir(demo_images))
    images = [open(os.path.join(demo_images, c, sorted(os.listdir(os.path.join(demo_images, c)))[0]),
                   "rb").read() for c in classes]
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    probabilities = out["probabilities"].numpy()
    assert probabilities.shape == (len(classes), len(classes))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    top = [c.decode() for c in out["classes"].numpy()[:, 0]]
    assert top == [classes[i] for i in probabilities.argmax(axis=1)]


@pytest.mark.slow
def test_training_through_503s_ends_like_without(gcs, bucket, shards, clean_run):
    bucket, _ = bucket
    model_dir = f"{bucket}/runs/faulty"
    gcs.set_faults(every_nth_503=EVERY_NTH_503)
    try:
        # The frozen phase alone: every gs:// path of the run is exercised, at half the cost.
        run_module("trainer.task", *train_args(shards, bucket, model_dir), "--finetune_epochs=0", "--noeval_report",
                   env=trainer_env(gcs))
        injected = gcs.stats()["injected_503"]
    finally:
        gcs.set_faults()
    assert injected >= 5
    faulty = read_json(f"{model_dir}/history.json")
    clean = [h for h in read_json(f"{clean_run[0]}/history.json") if h["phase"] == "frozen"]
    assert [(h["phase"], h["epoch"]) for h in faulty] == [(h["phase"], h["epoch"]) for h in clean]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([h[key] for h in faulty], [h[key] for h in clean],
                                   rtol=1e-6, err_msg=key)
