"""Evaluation reports on a tiny trained export: files that parse, numbers that match numpy.

The export is the conftest fixture `export_base` (testbed/exports.py, head="fitted"): Lite0 at 64 px from
its ImageNet weights, its head fitted in closed form, made once a session and
shared with tests/test_predict.py. The CLI runs as `python -m trainer.evaluate`.
"""
import csv
import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.testing.cli import assert_one_error_line, run_module
from trainer.data import synthetic
from trainer.evaluation import evaluator, plots, tensorboard

@pytest.fixture(scope="module")
def validation(demo_records):
    return os.path.join(demo_records, "validation-*")


@pytest.fixture(scope="module")
def report(loaded, validation, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("report"))
    metrics = evaluator.write_report(loaded, data_path=validation, output_dir=out, top_k=2, worst=6)
    return out, metrics


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def raw_predictions(loaded, pattern):
    """Labels and serving_default's probabilities, read without trainer.evaluate."""
    feats = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
             "image/class/label": tf.io.FixedLenFeature([], tf.int64)}
    images, labels = [], []
    for record in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern))):
        parsed = tf.io.parse_single_example(record, feats)
        images.append(parsed["image/encoded"].numpy())
        labels.append(int(parsed["image/class/label"]))
    probs = loaded.serve(image_bytes=tf.constant(images))["probabilities"].numpy()
    return np.array(labels), probs.astype(np.float64)


def numpy_metrics(labels, probs, k):
    n, c = probs.shape
    pred = probs.argmax(axis=1)
    topk = np.argsort(-probs, axis=1)[:, :k]
    f1s, supports = [], []
    for cls in range(c):
        tp = np.sum((pred == cls) & (labels == cls))
        precision = tp / np.sum(pred == cls) if np.sum(pred == cls) else 0.0
        recall = tp / np.sum(labels == cls) if np.sum(labels == cls) else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        supports.append(np.sum(labels == cls))
    present = [i for i in range(c) if supports[i] or np.sum(pred == i)]
    return {"accuracy": np.mean(pred == labels),
            f"top_{k}_accuracy": np.mean([labels[i] in topk[i] for i in range(n)]),
            "macro_f1": np.mean([f1s[i] for i in present]),
            "weighted_f1": np.sum(np.array(f1s) * supports) / n,
            "log_loss": -np.mean(np.log(np.maximum(probs[np.arange(n), labels], 1e-7))),
            "f1": f1s}


@pytest.mark.slow
def test_report_files_exist_and_parse(report):
    out, metrics = report
    assert json.load(open(os.path.join(out, evaluator.METRICS_FILE))) == json.loads(json.dumps(metrics))
    names = list(synthetic.TASKS["shapes"])
    per_class = read_csv(os.path.join(out, evaluator.PER_CLASS_FILE))
    assert per_class[0] == ["class", "precision", "recall", "f1", "support", "predicted"]
    assert [r[0] for r in per_class[1:]] == names
    assert sum(int(r[4]) for r in per_class[1:]) == metrics["num_examples"] == 24
    confusion = read_csv(os.path.join(out, evaluator.CONFUSION_CSV))
    assert confusion[0][1:] == names and sum(int(v) for r in confusion[1:] for v in r[1:]) == 24
    worst = read_csv(os.path.join(out, evaluator.WORST_CSV))
    assert len(worst) == 1 + 6
    true_probs = [float(r[3]) for r in worst[1:]]
    assert true_probs == sorted(true_probs)
    pairs = read_csv(os.path.join(out, evaluator.PAIRS_FILE))
    assert len(pairs) - 1 == len(metrics["most_confused"])
    for name in (evaluator.CONFUSION_PNG, evaluator.WORST_PNG):
        with Image.open(os.path.join(out, name)) as im:
            assert im.format == "PNG" and min(im.size) > 300
    assert not os.path.exists(os.path.join(out, evaluator.SKIPPED_FILE))


@pytest.mark.slow
def test_metrics_equal_numpy_recomputation(report, loaded, validation):
    out, metrics = report
    labels, probs = raw_predictions(loaded, validation)
    expected = numpy_metrics(labels, probs, k=2)
    assert len(set(probs.argmax(axis=1))) > 1  # the tiny model tells classes apart
    for key in ("accuracy", "top_2_accuracy", "macro_f1", "weighted_f1", "log_loss"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    per_class = read_csv(os.path.join(out, evaluator.PER_CLASS_FILE))[1:]
    np.testing.assert_allclose([float(r[3]) for r in per_class], expected["f1"], atol=1e-6)
    confusion = np.array([[int(v) for v in r[1:]] for r in read_csv(os.path.join(out, evaluator.CONFUSION_CSV))[1:]])
    pred = probs.argmax(axis=1)
    for t in range(4):
        for p in range(4):
            assert confusion[t, p] == np.sum((labels == t) & (pred == p))


@pytest.mark.slow
def test_cli_skips_and_lists_a_bad_image(export_base, demo_images, tmp_path):
    folder = tmp_path / "data"
    for name in synthetic.TASKS["shapes"]:
        (folder / name).mkdir(parents=True)
        for src in sorted(os.listdir(os.path.join(demo_images, name)))[:2]:
            shutil.copy(os.path.join(demo_images, name, src), folder / name / src)
    (folder / "circle" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "report"
    result = run_module("trainer.evaluate", f"--export_dir={export_base}", f"--data={folder}", f"--output_dir={out}",
                        "--top_k=3")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / evaluator.METRICS_FILE).read_text())
    assert metrics["num_examples"] == 8 and metrics["skipped_images"] == 1
    assert metrics["export_dir"] == os.path.join(export_base, "1")
    skipped = read_csv(out / evaluator.SKIPPED_FILE)
    assert [r[0] for r in skipped[1:]] == [str(folder / "circle" / "broken.jpg")]
    assert "accuracy" in result.stdout and f"report: {out}" in result.stdout


@pytest.mark.slow
def test_cli_refuses_missing_data_in_one_line(export_base, tmp_path):
    result = run_module("trainer.evaluate", f"--export_dir={export_base}", f"--data={tmp_path}/nothing-*",
                        f"--output_dir={tmp_path}/r")
    assert_one_error_line(result, "matches no file")
    result = run_module("trainer.evaluate", f"--export_dir={tmp_path}", f"--data={tmp_path}", f"--output_dir={tmp_path}/r")
    assert_one_error_line(result, f"export {tmp_path} holds no saved_model.pb")


def test_confusion_matrix_stays_readable_with_many_classes(tmp_path):
    rng = np.random.default_rng(0)
    c = 150
    confusion = np.diag(rng.integers(5, 50, c)) + rng.poisson(0.2, (c, c))
    confusion[7, 7], confusion[7, 8] = 1, 40  # class 7 is the worst recognised
    names = [f"class_{i:03d}" for i in range(c)]
    path = str(tmp_path / "cm.png")
    shown = plots.plot_confusion_matrix(confusion, class_names=names, path=path)
    assert len(shown) <= plots.MAX_TICK_LABELS and shown[0] == "class_007"
    with Image.open(path) as im:
        assert max(im.size) <= 2500


@pytest.mark.slow
def test_tensorboard_summaries(report, tmp_path):
    out, metrics = report
    log_dir = str(tmp_path / "logs")
    tensorboard.write_tensorboard(log_dir, metrics=metrics, images=evaluator.report_images(out), step=3)
    scalars, images = {}, set()
    for event_file in tf.io.gfile.glob(os.path.join(log_dir, "events.*")):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                if value.metadata.plugin_data.plugin_name == "scalars":
                    scalars[value.tag] = float(tensor)
                    assert event.step == 3
                elif value.metadata.plugin_data.plugin_name == "images":
                    images.add(value.tag)
                    Image.open(io.BytesIO(tensor[2])).verify()
    assert scalars["eval/accuracy"] == pytest.approx(metrics["accuracy"])
    assert scalars["eval/macro_f1"] == pytest.approx(metrics["macro_f1"])
    assert images == {"eval/confusion_matrix", "eval/worst_images", "eval/reliability"}


@pytest.mark.slow
def test_run_report_counts_validation_images_copied_from_training(export_base, demo_images, tmp_path, caplog):
    """The report a run writes after training (pipeline.report) on a validation split that holds a
    re-encoded, a halved and a mirrored copy of three training images: metrics.json counts those
    three and no other, names each beside its training original, and the log says so."""
    import logging
    from PIL import ImageOps
    from tests.testing.presets import IMAGE_SIZE, PRETRAINED
    from trainer.configs import config
    from trainer.jobs import pipeline
    names = list(synthetic.TASKS["shapes"])
    train, validation = tmp_path / "train", tmp_path / "validation"
    for name in names:
        files = sorted(os.listdir(os.path.join(demo_images, name)))
        for folder, chosen in ((train, files[:5]), (validation, files[5:8])):
            (folder / name).mkdir(parents=True)
            for f in chosen:
                shutil.copy(os.path.join(demo_images, name, f), folder / name / f)
    planted = set()
    copies = {"reencoded.jpg": lambda im: im, "halved.png": lambda im: im.resize((im.width // 2, im.height // 2)),
              "mirrored.png": ImageOps.mirror}
    for name, (copy, make) in zip(names, copies.items()):
        original = train / name / sorted(os.listdir(train / name))[2]
        with Image.open(original) as image:
            make(image.convert("RGB")).save(validation / name / copy, quality=50)
        planted.add((str(validation / name / copy), str(original)))
    cfg = config.Config(
        data=config.Data(train_data=str(train), eval_data=str(validation), class_names=tuple(names),
                         image_size=IMAGE_SIZE),
        model=config.Model(backbone=PRETRAINED, weights="none"),
        phases=(config.Phase(name="frozen", epochs=1, batch_size=2, learning_rate=0.1),),
        runtime=config.Runtime(model_dir=str(tmp_path / "run")))
    with caplog.at_level(logging.WARNING):
        metrics, _ = pipeline.report(cfg, export_dir=export_base, history=[])
    found = metrics["near_copies_of_training"]
    assert found["count"] == 3 and found["fraction"] == pytest.approx(3 / 15)
    assert {(e["eval"], e["train"]) for e in found["examples"]} == planted
    assert all(0.6 <= e["cosine"] <= 1.0 for e in found["examples"])
    written = json.loads((tmp_path / "run" / "eval" / evaluator.METRICS_FILE).read_text())
    assert written["near_copies_of_training"] == json.loads(json.dumps(found))
    assert "3 of 15 validation images have a near copy in the training split" in caplog.text
    metrics, _ = pipeline.report(cfg, export_dir=export_base, history=[], leakage_check=False)
    assert "near_copies_of_training" not in metrics and metrics["num_examples"] == 15
