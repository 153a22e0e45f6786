"""Evaluation reports on a tiny trained export: files that parse, numbers that match numpy.

The export is B0 at 64 px from the tests' small pretrained backbone, with its head fitted in
closed form on the pooled features of demo images (seconds, where a Keras fit would trace the whole
network for minutes). It is made once and shared by this module and tests/test_predict.py.
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

from tests.conftest import IMAGE_SIZE
from trainer import config, data, demo, evaluate, predict, reports
from trainer import model as model_lib

RIDGE = 1e-3
LOGIT_SCALE = 5.0


def fit_head(model, images_dir: str) -> None:
    """Ridge regression of one-hot labels on the pooled features, written into the head layer."""
    paths, labels = data.list_image_files(images_dir, class_names=demo.TASKS["shapes"])
    pixels = np.stack([data.decode_for_eval(tf.io.read_file(p), IMAGE_SIZE).numpy() for p in paths])
    feats = model_lib.feature_model(model).predict(pixels, verbose=0).astype(np.float64)
    x = np.c_[feats, np.ones(len(feats))]
    onehot = np.eye(len(demo.TASKS["shapes"]))[labels]
    coef = np.linalg.solve(x.T @ x + RIDGE * np.eye(x.shape[1]), x.T @ onehot) * LOGIT_SCALE
    model.get_layer(model_lib.HEAD_LAYER).set_weights([coef[:-1].astype(np.float32), coef[-1].astype(np.float32)])


def tiny_export(base: str, *, weights: str) -> str:
    """The export base (holding version 1), built on first use in this test session."""
    from trainer import export  # pylint: disable=import-outside-toplevel
    export_base = os.path.join(base, "export")
    if os.path.isdir(os.path.join(export_base, "1")):
        return export_base
    images = os.path.join(base, "head_images")
    demo.write_images(images, task="shapes", per_class=8, size=96, seed=7)
    model = model_lib.build_classifier(config.Model(
        backbone="efficientnet-b0", weights=weights, num_classes=4, image_size=IMAGE_SIZE))
    fit_head(model, images)
    export.export_saved_model(model, class_names=list(demo.TASKS["shapes"]), image_size=IMAGE_SIZE,
                              export_base=export_base, version=1, verify=False)
    return export_base


@pytest.fixture(scope="module")
def export_base(tmp_path_factory, pretrained_weights):
    return tiny_export(str(tmp_path_factory.getbasetemp() / "tiny_export"), weights=pretrained_weights)


@pytest.fixture(scope="module")
def loaded(export_base):
    return predict.load_export(export_base)


@pytest.fixture(scope="module")
def validation(demo_records):
    return os.path.join(demo_records, "validation-*")


@pytest.fixture(scope="module")
def report(loaded, validation, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("report"))
    metrics = evaluate.write_report(loaded, data_path=validation, output_dir=out, top_k=2, worst=6)
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


def test_report_files_exist_and_parse(report):
    out, metrics = report
    assert json.load(open(os.path.join(out, evaluate.METRICS_FILE))) == json.loads(json.dumps(metrics))
    names = list(demo.TASKS["shapes"])
    per_class = read_csv(os.path.join(out, evaluate.PER_CLASS_FILE))
    assert per_class[0] == ["class", "precision", "recall", "f1", "support", "predicted"]
    assert [r[0] for r in per_class[1:]] == names
    assert sum(int(r[4]) for r in per_class[1:]) == metrics["num_examples"] == 24
    confusion = read_csv(os.path.join(out, evaluate.CONFUSION_CSV))
    assert confusion[0][1:] == names and sum(int(v) for r in confusion[1:] for v in r[1:]) == 24
    worst = read_csv(os.path.join(out, evaluate.WORST_CSV))
    assert len(worst) == 1 + 6
    true_probs = [float(r[3]) for r in worst[1:]]
    assert true_probs == sorted(true_probs)
    pairs = read_csv(os.path.join(out, evaluate.PAIRS_FILE))
    assert len(pairs) - 1 == len(metrics["most_confused"])
    for name in (evaluate.CONFUSION_PNG, evaluate.WORST_PNG):
        with Image.open(os.path.join(out, name)) as im:
            assert im.format == "PNG" and min(im.size) > 300
    assert not os.path.exists(os.path.join(out, evaluate.SKIPPED_FILE))


def test_metrics_equal_numpy_recomputation(report, loaded, validation):
    out, metrics = report
    labels, probs = raw_predictions(loaded, validation)
    expected = numpy_metrics(labels, probs, k=2)
    assert len(set(probs.argmax(axis=1))) > 1  # the tiny model tells classes apart
    for key in ("accuracy", "top_2_accuracy", "macro_f1", "weighted_f1", "log_loss"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    per_class = read_csv(os.path.join(out, evaluate.PER_CLASS_FILE))[1:]
    np.testing.assert_allclose([float(r[3]) for r in per_class], expected["f1"], atol=1e-6)
    confusion = np.array([[int(v) for v in r[1:]] for r in read_csv(os.path.join(out, evaluate.CONFUSION_CSV))[1:]])
    pred = probs.argmax(axis=1)
    for t in range(4):
        for p in range(4):
            assert confusion[t, p] == np.sum((labels == t) & (pred == p))


def test_cli_skips_and_lists_a_bad_image(export_base, demo_images, tmp_path, capsys):
    folder = tmp_path / "data"
    for name in demo.TASKS["shapes"]:
        (folder / name).mkdir(parents=True)
        for src in sorted(os.listdir(os.path.join(demo_images, name)))[:2]:
            shutil.copy(os.path.join(demo_images, name, src), folder / name / src)
    (folder / "circle" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "report"
    code = run_cli(f"--model={export_base}", f"--data={folder}", f"--output_dir={out}", "--top_k=3")
    assert code == 0
    metrics = json.loads((out / evaluate.METRICS_FILE).read_text())
    assert metrics["num_examples"] == 8 and metrics["skipped_images"] == 1
    assert metrics["export_dir"] == os.path.join(export_base, "1")
    skipped = read_csv(out / evaluate.SKIPPED_FILE)
    assert [r[0] for r in skipped[1:]] == [str(folder / "circle" / "broken.jpg")]
    assert "accuracy" in capsys.readouterr().out


def test_cli_refuses_missing_data_in_one_line(export_base, tmp_path, capsys):
    code = run_cli(f"--model={export_base}", f"--data={tmp_path}/nothing-*", f"--output_dir={tmp_path}/r")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "matches no file" in err
    code = run_cli(f"--model={tmp_path}", f"--data={tmp_path}", f"--output_dir={tmp_path}/r")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--model" in err


def run_cli(*argv):
    evaluate.define_flags()
    evaluate.FLAGS.unparse_flags()
    evaluate.FLAGS(["trainer.evaluate", *argv])
    try:
        evaluate.main(["trainer.evaluate"])
    except SystemExit as e:
        return e.code
    return 0


def test_confusion_matrix_stays_readable_with_many_classes(tmp_path):
    rng = np.random.default_rng(0)
    c = 150
    confusion = np.diag(rng.integers(5, 50, c)) + rng.poisson(0.2, (c, c))
    confusion[7, 7], confusion[7, 8] = 1, 40  # class 7 is the worst recognised
    names = [f"class_{i:03d}" for i in range(c)]
    path = str(tmp_path / "cm.png")
    shown = reports.plot_confusion_matrix(confusion, class_names=names, path=path)
    assert len(shown) <= reports.MAX_TICK_LABELS and shown[0] == "class_007"
    with Image.open(path) as im:
        assert max(im.size) <= 2500


def test_tensorboard_summaries(report, tmp_path):
    out, metrics = report
    log_dir = str(tmp_path / "logs")
    reports.write_tensorboard(log_dir, metrics=metrics, images=evaluate.report_images(out), step=3)
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
    assert images == {"eval/confusion_matrix", "eval/worst_images"}
