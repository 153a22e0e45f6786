"""The client against the TF Serving stand-in (testbed/serving_server.py) on loopback.

One tiny export (B0, 32 px, 3 classes: the conftest fixture `b0_export`, shared with
test_export.py), served in-process over gRPC and REST.
"""
import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys

import grpc
import numpy as np
import pytest
from PIL import Image

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import tensorflow as tf  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, model_pb2,  # noqa: E402
                                     predict_pb2, prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

from effnet_common import decode
from serving import client as sc, signatures
from testbed import exports, serving_server
from trainer.models import classifier
from tests.testing.presets import REPO_DIR as REPO

SIZE = 32
CLASSES = list(exports.CLASS_NAMES[:3])


def encode(fmt, *, seed, size=(40, 30)):
    """Random RGB noise encoded in `fmt` (JPEG, PNG, GIF, BMP)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def expected_outputs(model, images):
    """In-process Keras on evaluation's preprocessing: what the server must answer."""
    pixels = tf.stack([decode.decode_for_eval(tf.constant(b), SIZE) for b in images])
    return model(pixels, training=False).numpy(), classifier.feature_model(model)(pixels, training=False).numpy()


@pytest.fixture(scope="module")
def server(b0_export):
    with serving_server.ModelServer(models={"effnet": b0_export.base}, rest=True) as srv:
        yield srv


@pytest.fixture()
def grpc_client(server):
    client = sc.GrpcClient(server.address, model="effnet", timeout=30, backoff_s=0.01)
    yield client
    client.close()


IMAGES = [encode("JPEG", seed=1), encode("PNG", seed=2, size=(64, 48)), encode("GIF", seed=3), encode("BMP", seed=4)]


@pytest.mark.slow
def test_predict_over_grpc_equals_keras_in_process(b0_export, grpc_client):
    assert b0_export.class_names == CLASSES
    probabilities, _ = expected_outputs(b0_export.model, IMAGES)
    out = grpc_client.predict(IMAGES)
    np.testing.assert_allclose(out["probabilities"], probabilities, atol=1e-5)
    order = np.argsort(-probabilities, axis=1)
    assert [[c.decode() for c in row] for row in out["classes"]] == [[CLASSES[i] for i in r] for r in order]
    np.testing.assert_allclose(out["scores"], np.take_along_axis(probabilities, order, 1), atol=1e-5)
    assert out["classes"].shape == (len(IMAGES), min(5, len(CLASSES)))


def test_classify_over_examples_matches_serving_default(grpc_client):
    classes, scores = grpc_client.classify(IMAGES)
    out = grpc_client.predict(IMAGES)
    assert classes == [[c.decode() for c in row] for row in out["classes"]]
    np.testing.assert_allclose(scores, out["scores"], atol=1e-6)


@pytest.mark.slow
def test_features_shape_and_values(b0_export, grpc_client):
    _, features = expected_outputs(b0_export.model, IMAGES)
    out = grpc_client.predict(IMAGES, signature="features")
    assert out["features"].shape == (len(IMAGES), 1280)
    np.testing.assert_allclose(out["features"], features, atol=1e-4)


def test_metadata_lists_the_documented_signatures(server, grpc_client):
    meta = grpc_client.metadata()
    assert meta["model"] == "effnet" and meta["version"] == 1
    sigs = meta["signatures"]
    assert set(sigs) == {"serving_default", "classify", "features"}
    assert sigs["classify"]["method_name"] == "tensorflow/serving/classify"
    assert sigs["serving_default"]["inputs"] == {"image_bytes": {"dtype": "string", "shape": [-1]}}
    assert sigs["serving_default"]["outputs"] == {
        "probabilities": {"dtype": "float32", "shape": [-1, 3]},
        "classes": {"dtype": "string", "shape": [-1, 3]}, "scores": {"dtype": "float32", "shape": [-1, 3]}}
    assert sigs["classify"]["inputs"] == {"inputs": {"dtype": "string", "shape": [-1]}}
    assert sigs["features"]["outputs"] == {"features": {"dtype": "float32", "shape": [-1, 1280]}}
    # The raw answer, like TF Serving's, also lists the init op; the client leaves it out.
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.address))
    raw = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name="effnet"), metadata_field=["signature_def"]))
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    raw.metadata["signature_def"].Unpack(sig_map)
    assert "__saved_model_init_op" in sig_map.signature_def


def test_status_and_warmup_replayed_at_load(server, grpc_client):
    assert grpc_client.status() == [{"version": 1, "state": "AVAILABLE", "error_code": 0, "error_message": ""}]
    assert server.warmup_counts[("effnet", 1)] == 3 * len(signatures.ALLOWED_BATCH_SIZES)


def _raw_predict(server, signature, images, *, model="effnet", version=None):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.address))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return stub.Predict(request, timeout=30)


def test_bad_requests_get_tf_serving_status_codes(server):
    with pytest.raises(grpc.RpcError) as e:
        _raw_predict(server, "serving_default", [IMAGES[0], b"this is not an image"])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image" in e.value.details().lower() and "format" in e.value.details().lower()
    assert _raw_predict(server, "serving_default", [IMAGES[0]]).outputs["classes"].string_val  # still serving
    with pytest.raises(grpc.RpcError) as e:
        _raw_predict(server, "no_such_signature", [IMAGES[0]])
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert 'Serving signature key "no_such_signature" not found.' == e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        _raw_predict(server, "serving_default", [IMAGES[0]], model="nope")
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.NOT_FOUND,
                                                    "Servable not found for request: Latest(nope)")
    with pytest.raises(grpc.RpcError) as e:
        _raw_predict(server, "serving_default", [IMAGES[0]], version=9)
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.NOT_FOUND,
                                                    "Servable not found for request: Specific(effnet, 9)")


def test_method_name_check_accepts_our_classify_and_refuses_predict_signatures(server, grpc_client):
    server.method_name_check = True
    try:
        classes, _ = grpc_client.classify(IMAGES[:1])
        assert len(classes[0]) == 3
        with pytest.raises(sc.ServingError) as e:
            grpc_client.classify(IMAGES[:1], signature="serving_default")
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "Expected classification signature method_name to be tensorflow/serving/classify" in e.value.message
    finally:
        server.method_name_check = False
    with pytest.raises(sc.ServingError) as e:  # without the check, the signature's keys decide
        grpc_client.classify(IMAGES[:1], signature="serving_default")
    assert e.value.message == "Expected one or two output Tensors, found 3"  # classifier.cc's first check


def test_retries_unavailable_and_deadline_but_not_invalid_argument(server, grpc_client):
    """The stand-in answers the status codes itself: no clock races the deadline."""
    before = server.calls.get("Predict", 0)
    server.fail_next(2, grpc.StatusCode.UNAVAILABLE)
    server.fail_next(1, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert grpc_client.predict(IMAGES[:1])["classes"].shape == (1, 3)
    assert server.calls["Predict"] - before == 4
    before = server.calls["Predict"]
    with pytest.raises(sc.ServingError) as e:
        grpc_client.predict([b"junk"])
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert server.calls["Predict"] - before == 1


def test_every_call_carries_the_client_timeout_as_its_deadline(server):
    """What the server reads of each call's deadline: more than the 30 s default (unless a call
    took 9 minutes to arrive) and at most the client's timeout, give or take gRPC's rounding (it
    sends the time left rounded up to about 3 digits: 600.999 s is normal)."""
    timeout = 600.0
    client = sc.GrpcClient(server.address, model="effnet", timeout=timeout)
    try:
        for call in (lambda: client.predict(IMAGES[:1]), client.metadata, client.status):
            server.last_time_remaining = None
            call()
            assert 30 < server.last_time_remaining <= timeout * 1.02
    finally:
        client.close()


def test_messages_over_4_mib_both_ways(server, grpc_client):
    """A >4 MiB request and a >4 MiB answer: the default Python receive limit would refuse the latter."""
    big = encode("PNG", seed=5, size=(1300, 1300))
    assert len(big) > 4 * 2 ** 20
    assert grpc_client.predict([big])["probabilities"].shape == (1, 3)
    tiny = encode("PNG", seed=6, size=(8, 8))
    out = grpc_client.predict([tiny] * 830, signature="features")  # 830 x 1280 floats = 4.25 MB
    assert out["features"].shape == (830, 1280)
    default = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.address))
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="effnet", signature_name="features"))
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([tiny] * 830, dtype=tf.string))
    with pytest.raises(grpc.RpcError) as e:
        default.Predict(request, timeout=60)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # what the client's options avoid


def test_rest_body_follows_tf_serving_json_format():
    body = sc.predict_body(IMAGES[:2], signature="serving_default")
    assert body["signature_name"] == "serving_default"
    assert [set(i) for i in body["instances"]] == [{"image_bytes"}] * 2
    assert base64.b64decode(body["instances"][1]["image_bytes"]["b64"]) == IMAGES[1]
    json.dumps(body)  # plain JSON
    example = sc.classify_body(IMAGES[:1])["examples"][0]
    assert base64.b64decode(example["image/encoded"]["b64"]) == IMAGES[0]


def test_rest_mode_matches_grpc(server, grpc_client):
    rest = sc.RestClient(server.rest_url, model="effnet", backoff_s=0.01)
    out = rest.predict(IMAGES)
    ref = grpc_client.predict(IMAGES)
    np.testing.assert_allclose(out["probabilities"], ref["probabilities"], atol=1e-6)
    assert out["classes"].tolist() == [[c.decode() for c in row] for row in ref["classes"]]
    classes, scores = rest.classify(IMAGES)
    assert classes == out["classes"].tolist()
    np.testing.assert_allclose(scores, ref["scores"], atol=1e-6)
    assert rest.predict(IMAGES[:2], signature="features")["features"].shape == (2, 1280)
    assert rest.status()[0]["state"] == "AVAILABLE"
    assert set(rest.metadata()["signatures"]) == {"serving_default", "classify", "features"}
    with pytest.raises(sc.ServingError) as e:
        sc.RestClient(server.rest_url, model="nope", retries=0).predict(IMAGES[:1])
    assert e.value.code == grpc.StatusCode.NOT_FOUND


@pytest.fixture()
def image_dir(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(IMAGES[0])
    (folder / "sub" / "b.png").write_bytes(IMAGES[1])
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    (tmp_path / "c.gif").write_bytes(IMAGES[2])
    return tmp_path


def run_cli(*argv) -> int:
    """serving.client's command in-process, its flags parsed as absl parses them; the exit status."""
    sc.define_flags()
    sc.FLAGS.unparse_flags()
    try:
        return sc.main(sc.FLAGS(["serving.client", *argv]))
    except SystemExit as e:
        return e.code


def _lines(text):
    return [json.loads(line) for line in text.strip().splitlines()]


def test_cli_predicts_good_files_and_names_the_bad_ones(server, image_dir, capsys):
    status = run_cli(*[f"--server={server.address}", "--model_name=effnet", "--batch_size=2",
                      str(image_dir / "images"), str(image_dir / "*.gif"), str(image_dir / "missing.jpg")])
    assert status == 0
    by_path = {line["path"]: line for line in _lines(capsys.readouterr().out)}
    assert set(by_path) == {str(image_dir / p) for p in ("images/a.jpg", "images/sub/b.png", "images/broken.jpg",
                                                         "c.gif", "missing.jpg")}
    assert "no such file" in by_path[str(image_dir / "missing.jpg")]["error"]
    assert "not a decodable" in by_path[str(image_dir / "images/broken.jpg")]["error"]
    good = by_path[str(image_dir / "images/a.jpg")]
    assert len(good["classes"]) == 3 and good["scores"] == sorted(good["scores"], reverse=True)


def test_cli_features_output_and_sidecar(server, image_dir, capsys):
    out = image_dir / "features.npy"
    assert run_cli(*[f"--server={server.address}", "--model_name=effnet", "--signature=features",
                    f"--features_output={out}", str(image_dir / "images")]) == 0
    rows = np.load(out)
    paths = (image_dir / "features.paths.txt").read_text().splitlines()
    assert rows.shape == (2, 1280) and len(paths) == 2
    lines = [line for line in _lines(capsys.readouterr().out) if "row" in line]
    assert [line["path"] for line in sorted(lines, key=lambda x: x["row"])] == paths


def test_cli_metadata_status_and_rest(server, image_dir, capsys):
    assert run_cli(*[f"--server={server.address}", "--model_name=effnet", "status"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["state"] == "AVAILABLE"
    assert run_cli(*[f"--server={server.address}", "--model_name=effnet", "metadata"]) == 0
    assert "__saved_model_init_op" not in json.loads(capsys.readouterr().out)["signatures"]
    assert run_cli(*[f"--rest={server.rest_url}", "--model_name=effnet", "--signature=classify",
                    str(image_dir / "c.gif")]) == 0
    assert len(_lines(capsys.readouterr().out)[0]["classes"]) == 3


def test_cli_reads_gcs_folders_and_globs(server, gcs_bucket, capsys):
    for name, image in (("imgs/a.jpg", IMAGES[0]), ("imgs/deeper/b.png", IMAGES[1]), ("imgs/c.png", IMAGES[3])):
        with tf.io.gfile.GFile(f"{gcs_bucket}/{name}", "wb") as f:
            f.write(image)
    assert run_cli(*[f"--server={server.address}", "--model_name=effnet", f"{gcs_bucket}/imgs/deeper",
                    f"{gcs_bucket}/imgs/*.jpg", f"{gcs_bucket}/imgs/c.png"]) == 0
    lines = _lines(capsys.readouterr().out)
    assert [line["path"] for line in lines] == [f"{gcs_bucket}/imgs/deeper/b.png", f"{gcs_bucket}/imgs/a.jpg",
                                                f"{gcs_bucket}/imgs/c.png"]
    assert all(len(line["classes"]) == 3 for line in lines)


def test_cli_exits_non_zero_only_when_nothing_was_predicted(server, image_dir):
    """A real process: all inputs bad -> status 1, one summary line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "serving.client", f"--server={server.address}", "--model_name=effnet",
                           str(image_dir / "images/broken.jpg"), str(image_dir / "missing.jpg")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "nothing predicted" in proc.stderr
    assert len(_lines(proc.stdout)) == 2


@pytest.mark.parametrize("argv, message", [
    (["--model_name=effnet"], "no IMAGES given"),
    (["--model_name=effnet", "--rest=localhost:8501", "a.jpg"], "--rest=localhost:8501"),
    (["--model_name=effnet", "--batch_size=0", "a.jpg"], "--batch_size=0"),
    (["--model_name=effnet", "--max_image_side=-1", "a.jpg"], "--max_image_side=-1: pass a side in pixels"),
    (["--model_name=effnet", "--features_output=f.npy", "a.jpg"], "needs --signature=features"),
    (["a.jpg"], "--model_name is required"),
])
def test_cli_usage_errors_are_one_line(argv, message, capsys):
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


# An unreachable server (no model needed): tests/test_client_unreachable.py.


@pytest.mark.slow
def test_rolling_a_new_version_and_a_bad_warmup_keeps_serving(tmp_path):
    roll = tmp_path / "effnet"
    v1 = exports.build_export(str(roll), num_classes=3, image_size=SIZE).path
    with serving_server.ModelServer(models={"effnet": str(roll)}) as srv:
        client = sc.GrpcClient(srv.address, model="effnet")
        shutil.copytree(v1, roll / "2")
        srv.poll()
        assert [(s["version"], s["state"]) for s in client.status()] == [(1, "END"), (2, "AVAILABLE")]
        assert client.metadata()["version"] == 2
        shutil.copytree(v1, roll / "3")
        with tf.io.TFRecordWriter(str(roll / "3" / "assets.extra" / signatures.WARMUP_FILENAME)) as w:
            w.write(b"\x08\x01 not a PredictionLog")
        srv.poll()
        status = {s["version"]: s for s in client.status()}
        assert status[3]["state"] == "END" and "warmup" in status[3]["error_message"]
        assert client.metadata()["version"] == 2  # still serving the last good version
        assert client.predict(IMAGES[:1])["classes"].shape == (1, 3)
        client.close()


def test_classify_with_context_and_empty_input(server):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.address))
    request = classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name="effnet", signature_name="classify"))
    with pytest.raises(grpc.RpcError) as e:
        stub.Classify(request)
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    ctx = request.input.example_list_with_context
    ctx.context.ParseFromString(signatures.image_example(IMAGES[0]))
    ctx.examples.add()
    result = stub.Classify(request).result.classifications
    assert len(result) == 1 and len(result[0].classes) == 3


# --------------------------------------------------------------------------- configuration files

def _batching_parameters_class():
    """TF Serving's BatchingParameters message, built from its published schema.

    tensorflow-serving-api ships model_server_config.proto but not
    servables/tensorflow/session_bundle_config.proto; these are its field names, numbers and
    types, so text_format parses batching.config as tensorflow_model_server does (unknown or
    mistyped fields fail).
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2
    pool = descriptor_pool.DescriptorPool()
    for module in (wrappers_pb2,):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    f = descriptor_pb2.FileDescriptorProto(name="session_bundle_config.proto", package="tensorflow.serving",
                                           syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    msg = f.message_type.add(name="BatchingParameters")
    fields = [("max_batch_size", 1, ".google.protobuf.Int64Value"), ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
              ("max_enqueued_batches", 3, ".google.protobuf.Int64Value"), ("num_batch_threads", 4, ".google.protobuf.Int64Value"),
              ("thread_pool_name", 5, ".google.protobuf.StringValue")]
    for name, number, type_name in fields:
        msg.field.add(name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                      type_name=type_name, label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    msg.field.add(name="allowed_batch_sizes", number=6, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
    msg.field.add(name="pad_variable_length_inputs", number=7, type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    # Text format goes by field names and types; these two numbers are ours, not necessarily TF Serving's.
    for name, number, type_name in (("enable_large_batch_splitting", 8, ".google.protobuf.BoolValue"),
                                    ("max_execution_batch_size", 9, ".google.protobuf.Int64Value")):
        msg.field.add(name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                      type_name=type_name, label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def _monitoring_config_class():
    """TF Serving's MonitoringConfig (config/monitoring_config.proto, not in tensorflow-serving-api)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    f = descriptor_pb2.FileDescriptorProto(name="monitoring_config.proto", package="tensorflow.serving", syntax="proto3")
    prometheus = f.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    f.message_type.add(name="MonitoringConfig").field.add(
        name="prometheus_config", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig", label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


def test_batching_config_parses_and_matches_the_warmup_batch_sizes():
    params = text_format.Parse(open(os.path.join(REPO, "serving/config/batching.config")).read(),
                               _batching_parameters_class()())
    assert tuple(params.allowed_batch_sizes) == signatures.ALLOWED_BATCH_SIZES
    # TF Serving's rule with splitting on: the allowed sizes end at the execution batch size.
    assert params.enable_large_batch_splitting.value
    assert params.max_execution_batch_size.value == params.allowed_batch_sizes[-1]
    assert params.max_batch_size.value >= 8 * params.max_execution_batch_size.value  # big requests are split
    assert list(params.allowed_batch_sizes) == sorted(set(params.allowed_batch_sizes))
    assert params.num_batch_threads.value >= 1 and params.batch_timeout_micros.value > 0
    with pytest.raises(text_format.ParseError):  # the parser is strict, as the server's is
        text_format.Parse("max_batch_sise { value: 8 }", _batching_parameters_class()())


def test_models_config_parses_with_the_real_proto():
    cfg = text_format.Parse(open(os.path.join(REPO, "serving/config/models.config")).read(),
                            model_server_config_pb2.ModelServerConfig())
    (model,) = cfg.model_config_list.config
    assert model.name == "effnet" and model.model_platform == "tensorflow"
    assert model.base_path == "/models/effnet"
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"


def test_serve_script_dry_run_renders_config_and_flags(tmp_path):
    export_base = tmp_path / "export"
    (export_base / "1").mkdir(parents=True)
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts/serve_tf_serving.sh"), "--dry_run",
                           f"--export_base={export_base}", "--model_name=flowers"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    command = proc.stdout
    for flag in ("--model_config_file=", "--enable_batching", "--batching_parameters_file=",
                 "--enable_model_warmup", "--rest_api_port=8501", "--port=8500",
                 "--model_config_file_poll_wait_seconds=60", "--monitoring_config_file=/config/monitoring.config"):
        assert flag in command
    serving_api = re.search(r'"tensorflow-serving-api==(\d+\.\d+)\.\*"', open(os.path.join(REPO, "setup.py")).read())
    assert f" tensorflow/serving:{serving_api.group(1)}." in command  # pinned to the API's release, not latest
    config_path = [w for w in command.split() if w.startswith("--model_config_file=")][0]
    rendered = [line for line in proc.stderr.splitlines() if line.startswith("rendered config: ")][0]
    cfg = text_format.Parse(open(rendered.split(": ", 1)[1]).read(), model_server_config_pb2.ModelServerConfig())
    assert cfg.model_config_list.config[0].name == "flowers"
    assert cfg.model_config_list.config[0].base_path == "/models/flowers"
    assert config_path.endswith("/models.config")
    monitoring = text_format.Parse(open(os.path.join(os.path.dirname(rendered.split(": ", 1)[1]),
                                                     "monitoring.config")).read(), _monitoring_config_class()())
    assert monitoring.prometheus_config.enable and monitoring.prometheus_config.path.startswith("/monitoring/")
    extra = subprocess.run(["bash", os.path.join(REPO, "scripts/serve_tf_serving.sh"), "--dry_run",
                            f"--export_base={export_base}", "--poll_wait_seconds=5", "--",
                            "--model_config_file_poll_wait_seconds=7", "--tensorflow_intra_op_parallelism=2"],
                           capture_output=True, text=True, timeout=60)
    words = extra.stdout.split()
    assert words[-2:] == ["--model_config_file_poll_wait_seconds=7", "--tensorflow_intra_op_parallelism=2"]
    assert "--model_config_file_poll_wait_seconds=5" in words  # ours first, so the passed-through flag wins
    bad = subprocess.run(["bash", os.path.join(REPO, "scripts/serve_tf_serving.sh"), "--dry_run",
                          f"--export_base={tmp_path / 'nothing'}"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
