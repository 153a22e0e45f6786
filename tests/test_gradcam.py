"""Grad-CAM (trainer/analysis/gradcam.py): the registry's layer in every family, heatmaps that are
Grad-CAM's formula over the pixels the export sees, `predict --explain_output`'s files and
refusals, and explanations that point at the object (Lite0's real ImageNet weights)."""
import csv
import io
import os

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from PIL import Image  # noqa: E402

from testbed import exports, pasted_objects  # noqa: E402
from tests.testing.cli import assert_one_error_line, run_module  # noqa: E402
from tests.testing.presets import PRETRAINED, TINY, TINY_SIZE  # noqa: E402
from trainer.analysis import gradcam  # noqa: E402
from trainer.configs import backbones, config  # noqa: E402
from trainer.inference.exported import PredictError, load_export  # noqa: E402
from trainer.models import classifier  # noqa: E402
from trainer.training import headfit  # noqa: E402


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _images(n: int, *, side: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [_png(rng.integers(0, 256, (side, side + 8, 3))) for _ in range(n)]


@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnetv2-b0", "efficientnet-lite0", TINY])
def test_each_family_has_the_registry_s_feature_map_layer(name):
    """The named layer is the activation of the backbone's last convolution (what Grad-CAM needs)."""
    model = classifier.build_classifier(config.Model(backbone=name, weights="none"), num_classes=2, image_size=64)
    backbone = classifier.backbone_of(model)
    layer = backbone.get_layer(backbones.get(name).feature_map_layer)
    convolutions = [x for x in backbone.layers if isinstance(x, keras.layers.Conv2D)]
    assert layer.output.shape.rank == 4
    assert layer.output.shape[-1] == convolutions[-1].filters == backbones.get(name).width
    assert backbone.layers.index(layer) > backbone.layers.index(convolutions[-1])


@pytest.fixture(scope="module")
def tiny():
    """The tiny classifier with a spread head, so that its classes differ."""
    keras.utils.set_random_seed(0)
    model = exports.tiny_net(3, image_size=TINY_SIZE)
    head = model.get_layer(classifier.HEAD_LAYER)
    head.set_weights([np.random.default_rng(0).normal(0, 3, w.shape).astype(np.float32) for w in head.get_weights()])
    return model


def test_heatmaps_are_grad_cam_of_the_export_s_pixels(tiny):
    """Head = pooling + dense, so Grad-CAM's weights are the class's kernel column / (h * w): the
    heatmap is ReLU(A @ w_c) upsampled and scaled to a maximum of 1, over the decoded, cropped
    pixels the export sees; the probabilities are the model's."""
    explainer = gradcam.Explainer(tiny)
    images = _images(4)
    pixels = explainer.pixels(images)
    from serving import signatures
    np.testing.assert_array_equal(pixels, signatures.decode_batch(tf.constant(images), image_size=TINY_SIZE).numpy())
    probabilities = explainer.probabilities(pixels)
    np.testing.assert_allclose(probabilities, tiny(pixels, training=False).numpy(), atol=1e-5)
    found = explainer.explain(images)
    backbone = classifier.backbone_of(tiny)
    feature_map = keras.Model(tiny.inputs, backbone(tiny.get_layer("preprocessing")(tiny.inputs[0])))(pixels).numpy()
    kernel = tiny.get_layer(classifier.HEAD_LAYER).get_weights()[0]
    for i, (item,) in enumerate(found):
        assert item.class_index == int(np.argmax(probabilities[i]))
        assert item.heatmap.shape == (TINY_SIZE, TINY_SIZE) and item.heatmap.dtype == np.float32
        assert item.heatmap.min() >= 0 and item.heatmap.max() == pytest.approx(1.0)
        cam = np.maximum(feature_map[i] @ kernel[:, item.class_index], 0)[..., None]
        cam = tf.image.resize(cam, [TINY_SIZE, TINY_SIZE], method="bilinear").numpy()[..., 0]
        np.testing.assert_allclose(item.heatmap, cam / cam.max(), atol=1e-4)
        assert item.pixels.shape == (TINY_SIZE, TINY_SIZE, 3) and item.overlay().dtype == np.uint8
    assert [h.heatmap.tolist() for (h,) in found] != [found[0][0].heatmap.tolist()] * 4  # per image


def test_the_view_leaves_the_classifier_s_graph_alone(tiny):
    """feature_map_view calls layers on tensors: feature_model (one output per layer) still builds."""
    classifier.feature_map_view(tiny)
    assert classifier.feature_model(tiny).output.shape[-1] == backbones.get(TINY).width


def test_multi_label_explains_each_label_over_its_threshold():
    keras.utils.set_random_seed(1)
    model = classifier.build_classifier(config.Model(backbone=TINY, weights="none"), num_classes=3,
                                        image_size=TINY_SIZE, multi_label=True)
    explainer = gradcam.Explainer(model, thresholds=[0.0, 1.0, 0.0])
    assert explainer.explained_classes(np.array([[0.2, 0.9, 0.7]])) == [[0, 2]]
    assert gradcam.Explainer(model, thresholds=[1.0] * 3).explained_classes(np.array([[0.2, 0.9, 0.7]])) == [[1]]
    found = explainer.explain(_images(2))
    assert [[e.class_index for e in f] for f in found] == [[0, 2], [0, 2]]


def test_explanations_are_written_per_image_and_class(tmp_path, tiny):
    explainer = gradcam.Explainer(tiny)
    found = explainer.explain(_images(2))
    paths = ["a/x.jpg", "b/x.jpg"]  # the same file name in two folders: the row number keeps both
    count = gradcam.write_explanations(str(tmp_path), paths=paths, explanations=found, class_names=["p q", "r", "s"])
    assert count == 2
    rows = list(csv.DictReader(open(tmp_path / gradcam.INDEX_FILE)))
    assert [r["path"] for r in rows] == paths and len({r["overlay"] for r in rows}) == 2
    for row, (item,) in zip(rows, found):
        np.testing.assert_array_equal(np.load(tmp_path / row["heatmap"]), item.heatmap)
        assert Image.open(tmp_path / row["overlay"]).size == (TINY_SIZE, TINY_SIZE)
        assert " " not in row["overlay"]


@pytest.fixture(scope="module")
def lone_export(tmp_path_factory):
    """A tiny export with no run around it."""
    return exports.build_export(str(tmp_path_factory.mktemp("lone") / "export"))


def test_an_export_outside_its_run_cannot_be_explained(lone_export):
    with pytest.raises(PredictError, match="needs the training run"):
        gradcam.explainer_for_export(load_export(lone_export.path))


@pytest.mark.slow
def test_predict_refuses_it_in_one_line_before_predicting(tmp_path, lone_export):
    built = lone_export
    (tmp_path / "x.png").write_bytes(_images(1)[0])
    result = run_module("trainer.predict", f"--export_dir={built.path}", f"--input={tmp_path / 'x.png'}",
                        f"--output={tmp_path / 'p.csv'}", f"--explain_output={tmp_path / 'why'}")
    assert_one_error_line(result, "--explain_output", "MODEL_DIR/export/N")
    assert not (tmp_path / "p.csv").exists()  # refused before predicting


def test_a_run_that_is_not_the_export_is_refused():
    with pytest.raises(PredictError, match="trained again"):
        gradcam.check_matches(np.array([[0.2, 0.8]]), np.array([[0.6, 0.4]]), export_dir="E", model_dir="M")
    gradcam.check_matches(np.array([[0.2, 0.8]]), np.array([[0.2, 0.8 + 1e-5]]), export_dir="E", model_dir="M")


@pytest.mark.slow
def test_predict_explain_output_through_a_trained_run(tmp_path, demo_records, demo_images):
    """A tiny run trained by the command, then predict --explain_output on its export: one overlay
    and one heatmap per image, for the class the CSV puts first."""
    model_dir = tmp_path / "run"
    result = run_module("trainer.task", f"--train_data={demo_records}/train-*.tfrecord", f"--model_dir={model_dir}",
                        f"--backbone={TINY}", "--weights=none", f"--image_size={TINY_SIZE}", "--frozen_epochs=1",
                        "--finetune_epochs=1", "--noeval_report", "--noleakage_check", "--nocalibrate")
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "why"
    result = run_module("trainer.predict", f"--export_dir={model_dir}", f"--input={demo_images}/circle",
                        f"--output={tmp_path / 'p.csv'}", f"--explain_output={out}", "--top_k=1")
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = {r["path"]: r["class_1"] for r in csv.DictReader(open(tmp_path / "p.csv"))}
    rows = list(csv.DictReader(open(out / gradcam.INDEX_FILE)))
    assert {r["path"]: r["class"] for r in rows} == predicted and len(predicted) == 24
    heat = np.load(out / rows[0]["heatmap"])
    assert heat.shape == (TINY_SIZE, TINY_SIZE) and heat.dtype == np.float32 and 0 <= heat.min() <= heat.max() <= 1
    assert "explanation(s)" in result.stdout


@pytest.mark.slow
def test_the_peak_falls_on_the_object(pretrained_weights):
    """Lite0's ImageNet backbone, its head fitted as the frozen phase fits it on canvases with one
    pasted object; on other canvases the heatmap's peak falls inside the object's box far more
    often than chance (measured: docs/evaluate.md)."""
    del pretrained_weights  # converted once into the cache the backbone loads from
    size = backbones.get(PRETRAINED).native_size
    model = classifier.build_classifier(config.Model(backbone=PRETRAINED, weights="imagenet"), num_classes=4,
                                        image_size=size)
    train = pasted_objects.make(per_class=12, canvas=256, object_side=64, image_size=size, seed=0)
    held = pasted_objects.make(per_class=8, canvas=256, object_side=64, image_size=size, seed=1, start=12)
    explainer = gradcam.Explainer(model)
    embeddings = classifier.feature_model(model).predict(explainer.pixels(train.images), verbose=0)
    head = headfit.fit_head(embeddings[:, None], train.labels, num_classes=4)
    classifier.set_head(model, kernel=head.kernel, bias=head.bias)
    pixels = explainer.pixels(held.images)
    predicted = explainer.probabilities(pixels).argmax(axis=1)
    on = pasted_objects.peak_on_object(explainer.heatmaps(pixels, predicted), held.boxes)
    chance = held.chance(size)
    assert chance < 0.1
    assert on.mean() >= 3 * chance, (int(on.sum()), len(on), chance)
