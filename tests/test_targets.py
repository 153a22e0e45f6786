"""Class weights, label smoothing and the multi-label figures: the pure functions, and the weights
as the input pipelines attach them (images and the embedding cache alike)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.testing.presets import TINY_SIZE
from trainer.configs import config
from trainer.data import discovery, pipelines, skips, targets
from trainer.evaluation import multilabel
from trainer.training import embeddings
from tests.testing.presets import REPO_DIR as ROOT



def test_balanced_weights_give_every_class_the_same_total_weight():
    counts = [100, 10, 40]
    weights = targets.balanced_weights(counts, num_examples=150)
    totals = np.array(weights) * counts
    np.testing.assert_allclose(totals, totals[0])
    assert np.dot(weights, counts) / 150 == pytest.approx(1.0)  # the mean example weight stays 1


def test_weights_file_json_and_csv(tmp_path):
    names = ("cat", "dog", "fox")
    (tmp_path / "w.json").write_text(json.dumps({"dog": 3, "fox": 0.5}))
    (tmp_path / "w.csv").write_text("class,weight\ndog,3\nfox,0.5\n")
    for name in ("w.json", "w.csv"):
        assert targets.read_weights_file(str(tmp_path / name), class_names=names) == (1.0, 3.0, 0.5)
    (tmp_path / "bad.csv").write_text("wolf,2\n")
    with pytest.raises(discovery.DataError, match="names class 'wolf', which labels.txt does not list"):
        targets.read_weights_file(str(tmp_path / "bad.csv"), class_names=names)
    (tmp_path / "neg.json").write_text(json.dumps({"dog": -1}))
    with pytest.raises(discovery.DataError, match="the weight of 'dog' is -1"):
        targets.read_weights_file(str(tmp_path / "neg.json"), class_names=names)
    with pytest.raises(discovery.DataError, match="no such file"):
        targets.resolve_class_weights(str(tmp_path / "missing.json"), class_names=names, counts=None, num_examples=None)


def test_example_weights_single_and_multi_label():
    weights = (1.0, 5.0, 2.0)
    np.testing.assert_allclose(targets.example_weights(np.array([0, 1, 2, 1]), weights).numpy(), [1, 5, 2, 5])
    multi = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0]], np.float32)
    np.testing.assert_allclose(targets.example_weights(multi, weights).numpy(), [2, 1, 5])


def test_label_smoothing_matches_keras_categorical_loss():
    import tf_keras as keras
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    loss = targets.build_loss(multi_label=False, num_classes=3, label_smoothing=0.1)
    expected = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(np.eye(3)[[0, 2]], probs)
    assert float(loss(np.array([0, 2]), probs)) == pytest.approx(float(expected), rel=1e-6)
    assert float(loss(np.array([0, 2]), probs)) > float(targets.build_loss(
        multi_label=False, num_classes=3)(np.array([0, 2]), probs))


def test_average_precision_and_thresholds():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    positives = np.array([1, 0, 1, 0, 0], bool)
    assert multilabel.average_precision(scores, positives) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert np.isnan(multilabel.average_precision(scores, np.zeros(5, bool)))
    # F1 is best taking the top 3 (2 hits): the cut falls between 0.7 and 0.6.
    assert multilabel.best_threshold(scores, positives) == pytest.approx(0.65)
    assert multilabel.best_threshold(scores, np.zeros(5, bool)) == multilabel.DEFAULT_THRESHOLD
    probs = np.array([[0.9, 0.2], [0.4, 0.8], [0.3, 0.1]])
    labels = np.array([[1, 0], [0, 1], [0, 0]])
    m = multilabel.metrics(probs, labels, multilabel.choose_thresholds(probs, labels))
    assert m["mean_average_precision"] == 1.0 and m["micro_f1"] == 1.0 and m["subset_accuracy"] == 1.0


def _records(tmp_path, labels_per_record, class_names=("a", "b", "c")):
    """One shard of tiny PNG records with the given label lists."""
    import io
    import tensorflow as tf
    from PIL import Image
    path = str(tmp_path / "train-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for i, labels in enumerate(labels_per_record):
            buffer = io.BytesIO()
            Image.fromarray(np.full((8, 8, 3), 40 * i % 255, np.uint8)).save(buffer, format="PNG")
            feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[buffer.getvalue()])),
                       "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=labels))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    (tmp_path / "labels.txt").write_text("".join(n + "\n" for n in class_names))
    return path


def test_pipelines_attach_class_weights_to_training_batches_only(tmp_path):
    path = _records(tmp_path, [[0], [1], [1], [2]])
    counts = discovery.class_counts(path, class_names=("a", "b", "c"))
    assert counts == [1, 2, 1]
    weights = targets.resolve_class_weights("balanced", class_names=("a", "b", "c"), counts=counts, num_examples=4)
    cfg = config.Data(train_data=path, eval_data=path, class_names=("a", "b", "c"), image_size=TINY_SIZE,
                      augment="none", class_weights=weights)
    _, labels, w = next(iter(pipelines.build_dataset(cfg, split="train", batch_size=4)))
    np.testing.assert_allclose(w.numpy(), [weights[int(l)] for l in labels.numpy()])
    assert len(next(iter(pipelines.build_dataset(cfg, split="eval", batch_size=4)))) == 2  # validation is unweighted
    cache = embeddings.Cache(count=4, views=1, dim=2, embeddings=np.zeros((4, 1, 2), np.float32),
                             labels=np.array([0, 1, 1, 2], np.int32))
    _, labels, w = next(iter(embeddings.build_dataset(cache, batch_size=4, training=True, seed=0, class_weights=weights)))
    np.testing.assert_allclose(w.numpy(), [weights[int(l)] for l in labels.numpy()])


def test_multi_label_records_become_multi_hot_and_single_label_reader_skips_them(tmp_path):
    path = _records(tmp_path, [[0, 2], [], [1], [0, 1, 2]])
    assert discovery.check_labels(path, class_names=("a", "b", "c")) is True
    multi = config.Data(train_data=path, eval_data=None, class_names=("a", "b", "c"), image_size=TINY_SIZE,
                        augment="none", multi_label=True)
    _, labels = next(iter(pipelines.build_dataset(dataclass_eval(multi), split="eval", batch_size=4)))
    np.testing.assert_array_equal(labels.numpy(), [[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]])
    single = dataclass_eval(config.Data(train_data=path, eval_data=None, class_names=("a", "b", "c"),
                                        image_size=TINY_SIZE, augment="none"))
    kept = np.concatenate([y.numpy() for _, y in pipelines.build_dataset(single, split="eval", batch_size=4)])
    np.testing.assert_array_equal(kept, [1])  # the one record with exactly one label
    assert skips.skipped_records("eval", path=path) == 3


def dataclass_eval(cfg):
    import dataclasses
    return dataclasses.replace(cfg, eval_data=cfg.train_data)


@pytest.mark.slow
def test_empty_class_folder_is_a_one_line_error(tmp_path):
    from trainer.data import synthetic
    synthetic.write_images(str(tmp_path / "images"), task="shapes", per_class=4, size=32, seed=0)
    empty = sorted(os.listdir(tmp_path / "images"))[-1]
    for f in os.listdir(tmp_path / "images" / empty):
        os.remove(tmp_path / "images" / empty / f)
    result = subprocess.run(
        [sys.executable, "-m", "trainer.task", f"--train_data={tmp_path / 'images'}", f"--model_dir={tmp_path / 'm'}",
         "--backbone=tiny", "--weights=none", "--frozen_epochs=1", "--finetune_epochs=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and f"class '{empty}' has no image in the training split" in lines[0], result.stderr[-2000:]
    assert not os.path.exists(tmp_path / "m" / "config.json")


def test_settings_that_do_not_fit_are_refused_by_the_config():
    data_cfg = config.Data(train_data="x", eval_data=None, class_names=("a", "b"), image_size=TINY_SIZE, multi_label=True)
    model_cfg = config.Model(backbone="tiny", weights="none")
    phases = (config.Phase(name="frozen", epochs=1, batch_size=4, learning_rate=1e-3),)
    with pytest.raises(config.ConfigError, match="--tflite is for single-label classifiers"):
        config.Config(data=data_cfg, model=model_cfg, phases=phases,
                      runtime=config.Runtime(model_dir="m", tflite=("int8",)))
    with pytest.raises(config.ConfigError, match="--label_smoothing=1.5 must be in"):
        config.Model(backbone="tiny", weights="none", label_smoothing=1.5)
    with pytest.raises(config.ConfigError, match="one non-negative weight per class"):
        config.Data(train_data="x", eval_data=None, class_names=("a", "b"), image_size=TINY_SIZE, class_weights=(1.0,))
