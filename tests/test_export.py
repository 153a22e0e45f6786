"""trainer.export: the SavedModel's contract, its loaders, its warmup file and its versioning.

Every export and model here comes from testbed/exports.py: the B0 export is the conftest fixture
`b0_export` (shared with test_serving.py); the loader path, versioning, failure and input checks
use its small conv net (`exports.tiny_net`), with the same contract, which exports in seconds.
"""
import io
import os

import numpy as np
import pytest
from PIL import Image

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)


import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import prediction_log_pb2  # noqa: E402

from effnet_common import decode
from serving import signatures
from testbed import exports, serving_server
from testbed.signature_defs import read_signature_defs
from tests.testing.cli import assert_one_error_line, run_module
from trainer.configs import config
from trainer.exporting import restore as restore_lib, saved_model
from trainer.models import classifier

SIZE = 32


def jpeg(seed, size=(50, 36)):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


tiny_net = exports.tiny_net


@pytest.fixture(scope="module")
def servable(b0_export):
    return serving_server._Servable("effnet", 1, b0_export.path)  # pylint: disable=protected-access


@pytest.mark.slow
def test_signatures_carry_the_documented_keys_and_method_names(b0_export):
    _, names, _, path = b0_export
    defs = read_signature_defs(path)
    assert {"serving_default", "classify", "features"} <= set(defs)

    def keys(sig):
        return ({k: (tf.as_dtype(v.dtype).name, [d.size for d in v.tensor_shape.dim]) for k, v in sig.inputs.items()},
                {k: (tf.as_dtype(v.dtype).name, [d.size for d in v.tensor_shape.dim]) for k, v in sig.outputs.items()})
    assert keys(defs["serving_default"]) == (
        {"image_bytes": ("string", [-1])},
        {"probabilities": ("float32", [-1, 3]), "classes": ("string", [-1, 3]), "scores": ("float32", [-1, 3])})
    assert keys(defs["classify"]) == ({"inputs": ("string", [-1])},
                                      {"classes": ("string", [-1, 3]), "scores": ("float32", [-1, 3])})
    assert keys(defs["features"]) == ({"image_bytes": ("string", [-1])}, {"features": ("float32", [-1, 1280])})
    assert defs["classify"].method_name == "tensorflow/serving/classify"
    assert defs["serving_default"].method_name == defs["features"].method_name == "tensorflow/serving/predict"
    with open(os.path.join(path, "assets", "labels.txt"), encoding="utf-8") as f:
        assert f.read().splitlines() == names
    assert os.path.basename(path) == "1"
    assert not [n for n in os.listdir(os.path.dirname(path)) if n != "1"]  # no temporaries left


@pytest.mark.slow
def test_serving_default_matches_keras_on_the_same_pixels(b0_export, servable):
    model, names, _, _ = b0_export
    images = [jpeg(1), jpeg(2, size=(20, 70)), jpeg(3, size=(32, 32))]
    pixels = tf.stack([decode.decode_for_eval(tf.constant(b), SIZE) for b in images])
    expected = model(pixels, training=False).numpy()
    out = servable.loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    best = [names[i] for i in expected.argmax(1)]
    assert [row[0].decode() for row in out["classes"].numpy()] == best
    features = servable.loaded.signatures["features"](image_bytes=tf.constant(images))["features"].numpy()
    assert features.shape == (3, 1280) and features.dtype == np.float32
    np.testing.assert_allclose(features, classifier.feature_model(model)(pixels, training=False).numpy(), atol=1e-4)
    classify = servable.loaded.signatures["classify"](inputs=tf.constant([signatures.image_example(b) for b in images]))
    assert classify["classes"].numpy().tolist() == out["classes"].numpy().tolist()


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    """7 classes (so K = 5 < C), verified on export."""
    built = exports.build_export(str(tmp_path_factory.mktemp("small") / "export"), num_classes=7, image_size=SIZE,
                                 verify=True)
    return built.class_names, built.path


@pytest.mark.slow
def test_loads_through_the_tf1_loader_too(small_export):
    _, path = small_export
    image = jpeg(4)
    ref = tf.saved_model.load(path).signatures["serving_default"](image_bytes=tf.constant([image]))
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        sig = meta.signature_def["serving_default"]
        out = session.run({k: v.name for k, v in sig.outputs.items()}, {sig.inputs["image_bytes"].name: [image]})
        cls = meta.signature_def["classify"]
        assert cls.method_name == "tensorflow/serving/classify"
        classified = session.run(cls.outputs["classes"].name,
                                 {cls.inputs["inputs"].name: [signatures.image_example(image)]})
    np.testing.assert_allclose(out["probabilities"], ref["probabilities"].numpy(), atol=1e-6)
    assert out["classes"].tolist() == ref["classes"].numpy().tolist() == classified.tolist()


@pytest.mark.slow
def test_warmup_file_parses_and_replays_every_signature_at_every_batch_size(b0_export, servable):
    _, _, _, path = b0_export
    seen = set()
    for record in tf.data.TFRecordDataset(os.path.join(path, "assets.extra", "tf_serving_warmup_requests")):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if log.WhichOneof("log_type") == "predict_log":
            request = log.predict_log.request
            seen.add((request.model_spec.signature_name, request.inputs["image_bytes"].tensor_shape.dim[0].size))
        else:
            request = log.classify_log.request
            seen.add((request.model_spec.signature_name, len(request.input.example_list.examples)))
    assert seen == {(s, b) for s in signatures.SIGNATURE_NAMES for b in signatures.ALLOWED_BATCH_SIZES}
    assert serving_server.replay_warmup(servable, method_name_check=True) == len(seen)


def test_top_k_is_five_when_there_are_more_classes(small_export):
    names, path = small_export
    out = tf.saved_model.load(path).signatures["serving_default"](image_bytes=tf.constant([jpeg(5)]))
    assert out["classes"].shape == (1, 5) and out["scores"].shape == (1, 5)
    assert out["probabilities"].shape == (1, 7)
    order = np.argsort(-out["probabilities"].numpy()[0])[:5]
    assert [c.decode() for c in out["classes"].numpy()[0]] == [names[i] for i in order]


def test_versions_count_up_and_existing_ones_are_never_overwritten(tmp_path):
    base = tmp_path / "export"
    for name in ("3", "notes", ".tmp-7-crashed"):
        (base / name).mkdir(parents=True)
    net = tiny_net(2)
    path = saved_model.export_saved_model(net, class_names=["a", "b"], image_size=SIZE, export_base=str(base), verify=False)
    assert path == str(base / "4")
    assert sorted(os.listdir(base)) == [".tmp-7-crashed", "3", "4", "notes"]
    assert sorted(os.listdir(path)) == ["assets", "assets.extra", "fingerprint.pb", "saved_model.pb", "variables"]
    with pytest.raises(saved_model.ExportError, match="already exists.*--version=5"):
        saved_model.export_saved_model(net, class_names=["a", "b"], image_size=SIZE, export_base=str(base), version=4)
    assert saved_model.export_saved_model(net, class_names=["a", "b"], image_size=SIZE, export_base=str(base),
                                     version=10, verify=False) == str(base / "10")


@pytest.mark.slow
def test_export_to_gcs_lands_whole_in_the_next_version(gcs_bucket):
    """gs:// through TensorFlow's own filesystem (the GCS test front): copy-based publish."""
    base = f"{gcs_bucket}/run/export"
    tf.io.gfile.makedirs(f"{base}/1")
    tf.io.gfile.makedirs(f"{base}/notes")
    path = saved_model.export_saved_model(tiny_net(2), class_names=["a", "b"], image_size=SIZE, export_base=base)
    assert path == f"{base}/2"
    assert sorted(n.rstrip("/") for n in tf.io.gfile.listdir(base)) == ["1", "2", "notes"]
    out = tf.saved_model.load(path).signatures["serving_default"](image_bytes=tf.constant([jpeg(6)]))
    assert out["classes"].shape == (1, 2)
    assert read_signature_defs(path)["classify"].method_name == "tensorflow/serving/classify"


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(saved_model, "_write_warmup", broken)
    with pytest.raises(OSError):
        saved_model.export_saved_model(tiny_net(2), class_names=["a", "b"], image_size=SIZE, export_base=str(tmp_path))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="mixed"), "float32 copy"),
    (dict(class_names=["a", "b", "c"]), "predicts 2 classes but 3 class names"),
    (dict(image_size=64), "image_size=64"),
    (dict(class_names=["a", "a"]), "repeat"),
    (dict(class_names=["a", "b\nc"]), "single line"),
    (dict(version=-1), "non-negative integer"),
])
def test_bad_inputs_are_refused_before_writing(tmp_path, kwargs, message):
    model = tiny_net(2, dtype_policy="mixed_float16") if kwargs.pop("model", None) else tiny_net(2)
    args = {**dict(class_names=["a", "b"], image_size=SIZE, export_base=str(tmp_path / "export")), **kwargs}
    with pytest.raises(saved_model.ExportError, match=message):
        saved_model.export_saved_model(model, **args)
    assert not (tmp_path / "export").exists()


def test_reexport_of_a_run(tmp_path, monkeypatch):
    """What `python -m trainer.export` runs (export.reexport), with the run's restore injected."""
    cfg = config.Config(
        data=config.Data(train_data="x", eval_data=None, class_names=("a", "b"), image_size=SIZE),
        model=config.Model(backbone="efficientnet-b0", weights="none"),
        phases=(config.Phase(name="frozen", epochs=1, batch_size=2, learning_rate=0.1),),
        runtime=config.Runtime(model_dir=str(tmp_path)))
    asked = []

    def restore(model_dir, checkpoint=None):
        asked.append((model_dir, checkpoint))
        return tiny_net(2), cfg
    monkeypatch.setattr(restore_lib, "checkpoint_classifier", restore)
    path = saved_model.reexport(model_dir=str(tmp_path), checkpoint="ckpt-7", version=3)
    assert asked == [(str(tmp_path), "ckpt-7")]
    assert path.endswith(os.path.join(str(tmp_path), "export", "3"))
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
    with pytest.raises(saved_model.ExportError, match="already exists"):  # a ValueError: main's one line, exit 2
        saved_model.reexport(model_dir=str(tmp_path), version=3)


@pytest.mark.slow
def test_cli_errors_are_one_line_without_traceback(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    for flags, says in (([f"--model_dir={tmp_path / 'nothing'}"], "config.json"),
                        ([f"--model_dir={tmp_path / 'a-file'}"], "is a file, not a folder"),
                        ([], "--model_dir")):
        assert assert_one_error_line(run_module("trainer.export", *flags, timeout=300), says).startswith("error:")
