"""Edge exports: every .tflite variant runs through LiteRT and is scored before it is kept.

A tiny classifier goes through all variants (plumbing, file contract, the gate); Lite0 with its
real ImageNet weights and a head fitted in closed form on real photos shows what quantization
costs where it matters; the CLIs run as a user runs them.
"""
import json
import os

import numpy as np
import pytest

import trainer  # noqa: F401
import tensorflow as tf  # noqa: E402

from effnet_common import decode
from testbed.exports import fit_head
from tests.testing.cli import assert_one_error_line, run_module, train_flags
from tests.testing.presets import IMAGE_SIZE, PRETRAINED, TINY, TINY_SIZE
from trainer.configs import config
from trainer.data import discovery
from trainer.exporting import tflite
from trainer.models import classifier


def _eval_pixels(paths, size):
    return np.stack([np.clip(np.round(decode.decode_for_eval(tf.io.read_file(p), size).numpy()), 0, 255)
                     for p in paths]).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_case(demo_images):
    """The tiny backbone (random weights, 4 classes) and the demo images as uint8 eval crops."""
    names = sorted(os.listdir(demo_images))
    paths, labels = discovery.list_image_files(demo_images, class_names=names)
    model = classifier.build_classifier(config.Model(backbone=TINY, weights="none"), num_classes=len(names), image_size=TINY_SIZE)
    return model, names, _eval_pixels(paths, TINY_SIZE), np.array(labels)


@pytest.mark.slow
def test_every_variant_is_written_scored_and_takes_uint8_pixels(tiny_case, tmp_path):
    model, names, images, labels = tiny_case
    out = str(tmp_path / "tflite")
    report = tflite.export_variants(model, variants=tflite.VARIANTS, class_names=names, image_size=TINY_SIZE,
                                    output_dir=out, validation=(images, labels), representative=images[:16],
                                    max_accuracy_drop=1.0)
    assert sorted(os.listdir(out)) == ["labels.txt", "model_dynamic.tflite", "model_float16.tflite",
                                       "model_int8.tflite", "tflite_report.json"]
    assert open(os.path.join(out, "labels.txt")).read().split() == names
    assert json.load(open(os.path.join(out, "tflite_report.json"))) == json.loads(json.dumps(report))
    reference = model.predict(images.astype(np.float32), verbose=0)
    for variant in tflite.VARIANTS:
        data = open(os.path.join(out, f"model_{variant}.tflite"), "rb").read()
        from ai_edge_litert.interpreter import Interpreter
        interpreter = Interpreter(model_content=data)
        (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
        assert inp["dtype"] == np.uint8 and list(inp["shape"]) == [1, TINY_SIZE, TINY_SIZE, 3]
        assert outp["dtype"] == np.float32 and list(outp["shape"]) == [1, len(names)]
        if variant == "int8":
            assert inp["quantization"] == (1.0, 0)  # raw pixels: the calibration pinned 0..255
        scores, _ = tflite.run_interpreter(data, images)
        tolerance = 0.02 if variant == "float16" else 0.1
        np.testing.assert_allclose(scores, reference, atol=tolerance, err_msg=variant)
        entry = report["variants"][variant]
        assert entry["size_bytes"] == len(data) and entry["median_latency_ms"] > 0
        assert entry["accuracy"] == pytest.approx(np.mean(scores.argmax(1) == labels))
    assert report["variants"]["float16"]["top1_agreement"] >= 0.95
    assert report["refused"] == []


@pytest.mark.slow
def test_a_variant_over_the_drop_is_refused_not_kept(tiny_case, tmp_path, monkeypatch):
    """A fault injected into the conversion (a file whose head is another model's): the gate
    refuses it with one line naming the variant and the fix, and keeps the honest ones."""
    _, names, images, labels = tiny_case
    def fresh():
        return classifier.build_classifier(config.Model(backbone=TINY, weights="none"), num_classes=len(names),
                                          image_size=TINY_SIZE)

    broken = fresh()
    head = broken.get_layer(classifier.HEAD_LAYER)
    kernel, _ = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.eye(len(names))[-1] * 10])  # always the last class
    convert = tflite.convert
    monkeypatch.setattr(tflite, "convert", lambda m, *, variant, **kw: convert(broken if variant == "int8" else m,
                                                                                 variant=variant, **kw))
    fitted = fresh()
    fit_head(fitted, images, labels)
    out = str(tmp_path / "tflite")
    with pytest.raises(tflite.TfliteError) as e:
        tflite.export_variants(fitted, variants=("float16", "int8"), class_names=names, image_size=TINY_SIZE,
                               output_dir=out, validation=(images, labels), representative=images[:8],
                               max_accuracy_drop=0.01)
    message = str(e.value)
    assert "\n" not in message and message.startswith("the int8 .tflite loses")
    assert "--max_accuracy_drop=0.01" in message and "efficientnet-lite" in message and "float16" in message
    assert sorted(os.listdir(out)) == ["labels.txt", "model_float16.tflite", "tflite_report.json"]
    report = json.load(open(os.path.join(out, "tflite_report.json")))
    assert report["refused"] == ["int8"] and report["variants"]["int8"]["accuracy_drop"] > 0.01


@pytest.mark.slow
def test_lite0_on_real_photos_survives_full_integer_int8(photos, pretrained_weights, tmp_path):
    """Lite0 ImageNet, its head fitted on 20 photos a class, scored on 10 others a class:
    full-integer int8 (what Lite is built for; float16 and dynamic are checked on the tiny model,
    and bench/edge.py measures all of them against B0) stays with the SavedModel."""
    names = sorted(os.listdir(photos))
    paths, labels = discovery.list_image_files(photos, class_names=names)
    labels = np.array(labels)
    pick = np.array([np.flatnonzero(labels == c)[:30] for c in range(len(names))])
    train, held = pick[:, :20].ravel(), pick[:, 20:].ravel()
    train_images = _eval_pixels([paths[i] for i in train], IMAGE_SIZE)
    held_images = _eval_pixels([paths[i] for i in held], IMAGE_SIZE)
    model = classifier.build_classifier(config.Model(backbone=PRETRAINED, weights=pretrained_weights), num_classes=len(names), image_size=IMAGE_SIZE)
    fit_head(model, train_images, labels[train], scale=1.0)
    report = tflite.export_variants(model, variants=("int8",), class_names=names, image_size=IMAGE_SIZE,
                                    output_dir=str(tmp_path / "tflite"), validation=(held_images, labels[held]),
                                    representative=train_images[::4], max_accuracy_drop=0.05)
    assert report["reference_accuracy"] >= 0.6, report  # chance 0.1
    int8 = report["variants"]["int8"]
    assert int8["accuracy_drop"] <= 0.05 and int8["top1_agreement"] >= 0.85, report
    params = model.count_params()
    assert int8["size_bytes"] < 0.4 * 4 * params  # about a byte a weight, against float32's four


@pytest.mark.slow
def test_cli_writes_scored_variants_of_a_run_and_refuses_an_unknown_one(tmp_path, demo_records):
    model_dir = tmp_path / "run"
    result = run_module("trainer.task", *train_flags(model_dir, demo_records, "none", "--frozen_epochs=1",
                                                     "--finetune_epochs=0", "--tflite=float16",
                                                     "--max_accuracy_drop=1", "--eval_report",
                                                     "--noleakage_check", backbone=TINY))  # test_evaluate checks it
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(model_dir / "tflite")) == ["labels.txt", "model_float16.tflite", "tflite_report.json"]
    # The temperature fitted on the validation split is in the run, its report and its exports.
    fitted = json.load(open(model_dir / "calibration.json"))
    metrics = json.load(open(model_dir / "eval" / "metrics.json"))
    assert metrics["temperature"] == fitted["temperature"] > 0
    assert metrics["expected_calibration_error_before"] == fitted["expected_calibration_error_before"]
    assert fitted["log_loss_after"] <= fitted["log_loss_before"]
    assert os.path.exists(model_dir / "eval" / "reliability.png")
    again = run_module("trainer.export", f"--model_dir={model_dir}", "--tflite=dynamic", "--max_accuracy_drop=1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "dynamic  accuracy" in again.stdout and os.path.exists(model_dir / "tflite" / "model_dynamic.tflite")
    bad = run_module("trainer.export", f"--model_dir={model_dir}", "--tflite=int4")
    assert assert_one_error_line(bad, "--tflite=int4", "float16, dynamic, int8").startswith("error:")
