"""Vertex AI batch prediction (trainer.cloud.batch_predict) against a loopback Vertex AI and the GCS emulator.

Bodies are checked with google-cloud-aiplatform's own types, parsed strictly (an unknown field or a
bad enum value fails). The stub plays Vertex AI's part end to end: models.upload as a long-running
operation, batchPredictionJobs.create, then the job polled through its states. At creation it does
what the service does with the body: it reads the instance files the command wrote to the emulator
(gcsSource), drops the key field from each line (instanceConfig.keyField), sends the rest to the
export's `serving_default` as the prebuilt TensorFlow container would, and writes one
`{"key": ..., "prediction": {...}}` line per image under outputUriPrefix (the REST reference's
PredictionResult). The command's CSV must then equal `trainer.predict`'s for the same export and images.
"""
import base64
import json
import os

import numpy as np
import pytest
from google.cloud.aiplatform_v1 import types as aip
from google.protobuf import json_format

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf  # noqa: E402

from tests.testing import cli, json_stub  # noqa: E402
from trainer.cloud import batch_files, batch_jobs  # noqa: E402
from trainer.cloud.errors import CloudError  # noqa: E402

PARENT = "projects/my-proj/locations/us-central1"
JOB = f"{PARENT}/batchPredictionJobs/7"
MODEL = f"{PARENT}/models/42"
BASE = ("--project=my-proj", "--region=us-central1", "--input=gs://bkt/photos/", "--output_dir=gs://bkt/batch",
        "--display_name=nightly")


def strict(message_type, body):
    json_format.ParseDict(body, message_type.pb(message_type()), ignore_unknown_fields=False)


def run(*flags, env=None):
    return cli.run_module("trainer.cloud.batch_predict", *flags, env=env, timeout=300)


# ------------------------------------------------------------------------------------------------
# The body, offline.

def test_dry_run_prints_a_model_and_a_batch_prediction_job_that_vertex_types_accept():
    result = run(*BASE, "--export_dir=gs://bkt/run/model/export/3", "--machine_type=n1-highmem-8",
                 "--starting_replica_count=4", "--dry_run", "--api_endpoint=http://127.0.0.1:9")  # nothing listens
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) == {"model", "batchPredictionJob"}
    strict(aip.Model, out["model"])
    job = out["batchPredictionJob"]
    strict(aip.BatchPredictionJob, job)
    strict(aip.CreateBatchPredictionJobRequest, {"parent": PARENT, "batchPredictionJob": job})
    assert out["model"]["artifactUri"] == "gs://bkt/run/model/export/3"
    assert job["model"] == f"{PARENT}/models/UPLOADED_MODEL_ID"
    assert job["inputConfig"] == {"instancesFormat": "jsonl",
                                  "gcsSource": {"uris": ["gs://bkt/batch/nightly/instances/instances-*.jsonl"]}}
    assert job["instanceConfig"] == {"instanceType": "object", "keyField": "path"}
    assert job["outputConfig"] == {"predictionsFormat": "jsonl",
                                   "gcsDestination": {"outputUriPrefix": "gs://bkt/batch/nightly"}}
    assert job["dedicatedResources"] == {"machineSpec": {"machineType": "n1-highmem-8"},
                                         "startingReplicaCount": 4, "maxReplicaCount": 4}


def test_dry_run_on_an_uploaded_model_names_it_and_uploads_nothing():
    result = run(*BASE, "--model=42@2", "--dry_run")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) == {"batchPredictionJob"}
    strict(aip.BatchPredictionJob, out["batchPredictionJob"])
    assert out["batchPredictionJob"]["model"] == f"{MODEL}@2"


@pytest.mark.parametrize("flags, says", [
    (("--project=my-proj", "--input=gs://bkt/p/", "--output_dir=gs://bkt/o", "--model=42"), "--region are required"),
    (("--region=us-central1", "--input=gs://bkt/p/", "--output_dir=gs://bkt/o", "--model=42"),
     "--project and --region are required"),
    ((*BASE, "--model=42", "--export_dir=gs://bkt/run/model/export/3"), "exactly one of --model"),
    (BASE, "exactly one of --model"),
    ((*BASE, "--export_dir=gs://bkt/run/model/export"), "one numeric export version"),
    ((*BASE, "--model=projects/my-proj/locations/europe-west4/models/42"), "the job runs in --region"),
    ((*BASE, "--model=flowers"), "numeric ID or its resource name"),
    (("--project=my-proj", "--region=us-central1", "--input=x/", "--output_dir=/tmp/out", "--model=42"),
     "is not a gs:// URL"),
    ((*BASE, "--model=42", "--machine_type=a2-highgpu-1g"), "not a Vertex AI prediction machine type"),
    ((*BASE, "--model=42", "--starting_replica_count=0"), "does not autoscale"),
    ((*BASE, "--model=42", "extra"), "every setting is a flag"),
])
def test_mistakes_are_one_line_with_status_2(flags, says):
    cli.assert_one_error_line(run(*flags, "--dry_run"), says)


def test_progress_lines_count_what_vertex_reports():
    assert batch_jobs.describe_progress({"state": "JOB_STATE_PENDING"}) == "JOB_STATE_PENDING"
    job = {"state": "JOB_STATE_RUNNING",
           "completionStats": {"successfulCount": "120", "failedCount": "2", "incompleteCount": "878"}}
    assert batch_jobs.describe_progress(job) == "JOB_STATE_RUNNING: 120 done, 2 failed, 878 to go"


# ------------------------------------------------------------------------------------------------
# Files: instances, results, exports.

def test_an_image_over_the_request_limit_is_refused_in_one_line():
    big = os.urandom(batch_jobs.MAX_INSTANCE_BYTES)  # its base64 is 4/3 as long
    with pytest.raises(CloudError, match=r"big\.jpg is 2\.0 MB .* over the 1\.5 MB Vertex AI accepts"):
        batch_files.instance_line("gs://bkt/big.jpg", big)
    line = batch_files.instance_line("gs://bkt/small.jpg", b"\xff\xd8jpeg")
    assert json.loads(line) == {"path": "gs://bkt/small.jpg", "image_bytes": {"b64": base64.b64encode(
        b"\xff\xd8jpeg").decode()}}


def _write_lines(path, lines):
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines))


def test_results_read_keys_errors_and_refuse_foreign_lines(tmp_path):
    out = tmp_path / "prediction-flowers-2026"
    out.mkdir()
    _write_lines(str(out / "predictions_0001.jsonl"), [
        {"key": "gs://b/z.jpg",
         "prediction": {"probabilities": [0.1, 0.9], "classes": ["b", "a"], "scores": [0.9, 0.1]}},
        {"key": "gs://b/a.jpg",
         "prediction": {"probabilities": [0.7, 0.3], "classes": ["a", "b"], "scores": [0.7, 0.3]}}])
    _write_lines(str(out / "errors_0001.jsonl"), [
        {"key": "gs://b/bad.jpg", "error": {"status": "INVALID_ARGUMENT", "message": "Invalid JPEG data"}}])
    results = batch_files.read_results(str(out), num_classes=2)
    assert results.paths == ["gs://b/a.jpg", "gs://b/z.jpg"]
    np.testing.assert_array_equal(results.probabilities, np.array([[0.7, 0.3], [0.1, 0.9]], np.float32))
    assert results.skipped == [("gs://b/bad.jpg", "INVALID_ARGUMENT Invalid JPEG data")]
    _write_lines(str(out / "predictions_0002.jsonl"), [{"instance": {"x": 1}, "prediction": [0.5]}])
    with pytest.raises(CloudError, match="predictions_0002.jsonl:1 is not a batch prediction result line"):
        batch_files.read_results(str(out), num_classes=2)


def test_an_export_without_the_serving_signature_is_refused(tmp_path):
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x * 2.0}, input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    tf.saved_model.save(module, str(tmp_path / "1"), signatures={"serving_default": module.f})
    (tmp_path / "1" / "assets").mkdir(exist_ok=True)
    (tmp_path / "1" / "assets" / "labels.txt").write_text("cat\ndog\n")
    with pytest.raises(CloudError, match=r"lacks the signature serving_default\(image_bytes\) -> probabilities"):
        batch_files.check_export(str(tmp_path / "1"))


# ------------------------------------------------------------------------------------------------
# The whole command against the stub and the emulator.

def _copy_tree(local, remote):
    for root, _, files in os.walk(local):
        for name in files:
            path = os.path.join(root, name)
            tf.io.gfile.makedirs(os.path.dirname(f"{remote}/{os.path.relpath(path, local)}"))
            tf.io.gfile.copy(path, f"{remote}/{os.path.relpath(path, local)}", overwrite=True)


def simulate_job(body, serve):
    """What Vertex AI does with a created job (see the module docstring); returns the output folder."""
    key_field = body["instanceConfig"]["keyField"]
    keyed = {}
    for path in tf.io.gfile.glob(body["inputConfig"]["gcsSource"]["uris"][0]):
        for text in tf.io.gfile.GFile(path).read().splitlines():
            instance = json.loads(text)
            keyed[instance.pop(key_field)] = instance
    keys = sorted(keyed)
    strict(aip.PredictRequest, {"endpoint": "e", "instances": [keyed[k] for k in keys]})  # what the container gets
    images = [base64.b64decode(keyed[k]["image_bytes"]["b64"]) for k in keys]
    answers = {name: value.numpy() for name, value in serve(image_bytes=tf.constant(images)).items()}
    folder = f"{body['outputConfig']['gcsDestination']['outputUriPrefix']}/prediction-flowers-2026-12-07T08:00:00.000Z"
    _write_lines(f"{folder}/predictions_0001.jsonl", [
        {"key": key, "prediction": {"probabilities": answers["probabilities"][i].tolist(),
                                    "classes": [c.decode() for c in answers["classes"][i]],
                                    "scores": answers["scores"][i].tolist()}} for i, key in enumerate(keys)])
    return folder, len(keys)


class _Vertex(json_stub.JsonHandler):
    """models.upload, operations.get, batchPredictionJobs.create and .get; records every request."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.body())
        self.server.requests.append(("POST", self.path, body))
        if self.path.endswith("/models:upload"):
            return self.reply({"name": f"{PARENT}/operations/1", "done": False})
        if self.path.endswith("/batchPredictionJobs"):
            folder, count = simulate_job(body, self.server.serve)
            failed = self.server.final != "JOB_STATE_SUCCEEDED"
            self.server.states = [
                {"state": "JOB_STATE_PENDING"},
                {"state": "JOB_STATE_RUNNING",
                 "completionStats": {"successfulCount": "3", "incompleteCount": str(count - 3)}},
                {"state": self.server.final, "outputInfo": {"gcsOutputDirectory": folder},
                 "completionStats": {"successfulCount": str(count), "failedCount": "0", "incompleteCount": "0"},
                 **({"error": {"code": 13, "message": "replica lost"}} if failed else {})}]
            return self.reply(dict(body, name=JOB, state="JOB_STATE_PENDING"))
        return self.reply({"error": {"code": 404, "status": "NOT_FOUND", "message": self.path}}, 404)

    def do_GET(self):  # noqa: N802
        self.server.requests.append(("GET", self.path, None))
        if self.path.endswith("/operations/1"):
            return self.reply({"name": f"{PARENT}/operations/1", "done": True, "response": {"model": MODEL}})
        if self.path == f"/v1/{MODEL}":  # models.get: an uploaded Model and where its export lives
            return self.reply({"name": MODEL, "artifactUri": self.server.artifact})
        state = self.server.states.pop(0) if len(self.server.states) > 1 else self.server.states[0]
        return self.reply({"name": JOB, **state})


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tiny export (3 classes, 32 px) on local disk, loaded."""
    from testbed import exports
    from trainer.inference import exported
    built = exports.build_export(str(tmp_path_factory.mktemp("batch") / "export"))
    return built.path, exported.load_export(built.path)


@pytest.fixture
def bucket(gcs_bucket, export, tmp_path):
    """The export (version 1) and 8 small photos (the demo's shapes) in a fresh bucket."""
    from trainer.data import synthetic
    synthetic.write_images(str(tmp_path / "photos"), task="shapes", per_class=2, size=48, seed=3)
    _copy_tree(str(tmp_path / "photos"), f"{gcs_bucket}/photos")
    _copy_tree(export[0], f"{gcs_bucket}/run/model/export/1")
    return gcs_bucket


@pytest.fixture
def vertex(tmp_path, export):
    with json_stub.serving(_Vertex, tmp_path, serve=export[1].serve, states=[], final="JOB_STATE_SUCCEEDED",
                           artifact=None) as stub:
        yield stub


def flags_for(bucket, connect, *extra, model=None):
    return ("--project=my-proj", "--region=us-central1",
            f"--model={model}" if model else f"--export_dir={bucket}/run/model/export/1",
            f"--input={bucket}/photos/", f"--output_dir={bucket}/batch", "--display_name=nightly",
            "--poll_interval=0.01", *connect, *extra)


@pytest.mark.slow
def test_the_job_runs_on_an_uploaded_export_and_its_csv_equals_trainer_predict(bucket, vertex, export, tmp_path):
    server, connect = vertex
    result = run(*flags_for(bucket, connect, "--wait"))
    assert result.returncode == 0, result.stderr[-3000:]
    run_folder = f"{bucket}/batch/nightly"
    assert result.stdout.splitlines() == [
        f"instances: 8 image(s) in 1 file(s) under {run_folder}", f"model: {MODEL}", JOB,
        "state: JOB_STATE_PENDING", "state: JOB_STATE_RUNNING: 3 done, 0 failed, 5 to go",
        "state: JOB_STATE_SUCCEEDED: 8 done, 0 failed, 0 to go", f"wrote 8 row(s) to {run_folder}/predictions.csv"]
    # The REST calls: upload (polled), create, then the job polled to its end.
    calls = [(method, path) for method, path, _ in server.requests]
    assert calls[:3] == [("POST", f"/v1/{PARENT}/models:upload"), ("GET", f"/v1/{PARENT}/operations/1"),
                         ("POST", f"/v1/{PARENT}/batchPredictionJobs")]
    assert set(calls[3:]) == {("GET", f"/v1/{JOB}")}
    upload, created = server.requests[0][2], server.requests[2][2]
    strict(aip.UploadModelRequest, dict(upload, parent=PARENT))
    strict(aip.CreateBatchPredictionJobRequest, {"parent": PARENT, "batchPredictionJob": created})
    assert created["model"] == MODEL and upload["model"]["artifactUri"] == f"{bucket}/run/model/export/1"
    # The instance file: one line per image, its path the key, its bytes base64.
    instances = tf.io.gfile.GFile(f"{run_folder}/instances/instances-00000.jsonl").read()
    lines = [json.loads(text) for text in instances.splitlines()]
    assert sorted(line["path"] for line in lines) == sorted(tf.io.gfile.glob(f"{bucket}/photos/*/*.jpg"))
    assert base64.b64decode(lines[0]["image_bytes"]["b64"]) == tf.io.gfile.GFile(lines[0]["path"], "rb").read()
    # The CSV: trainer.predict's, row for row, for the same export and images (one batch in both).
    from trainer import predict
    local_csv = str(tmp_path / "local.csv")
    predict.run(model=export[1], specs=[f"{bucket}/photos/"], output=local_csv, features_output=None, top_k=5,
                batch_size=64, print_limit=0)
    ours = tf.io.gfile.GFile(f"{run_folder}/predictions.csv").read()
    assert ours == open(local_csv).read()
    assert len(ours.splitlines()) == 9


@pytest.mark.slow
def test_a_job_on_an_uploaded_model_that_fails_exits_1_and_its_run_name_is_not_reused(bucket, vertex):
    server, connect = vertex
    server.final, server.artifact = "JOB_STATE_FAILED", f"{bucket}/run/model/export/1"
    failed = run(*flags_for(bucket, connect, "--wait", model="42"))
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert f"error: {JOB} ended JOB_STATE_FAILED: replica lost" in failed.stderr.splitlines()
    calls = [(method, path) for method, path, _ in server.requests]
    assert calls[:2] == [("GET", f"/v1/{MODEL}"), ("POST", f"/v1/{PARENT}/batchPredictionJobs")]  # no upload
    assert server.requests[1][2]["model"] == MODEL
    again = run(*flags_for(bucket, connect))
    cli.assert_one_error_line(again, "already holds instances of an earlier run", "--display_name")


def test_no_matching_images_is_one_line_and_sends_nothing(bucket, vertex):
    server, connect = vertex
    result = run(*flags_for(bucket, connect, f"--input={bucket}/nothing/*.jpg"))
    cli.assert_one_error_line(result, "matches no image file")
    assert not any(method == "POST" for method, _, _ in server.requests)
    assert not tf.io.gfile.exists(f"{bucket}/batch/nightly/instances/instances-00000.jsonl")


def test_an_oversized_image_stops_the_run_before_any_job_and_leaves_no_instances(bucket, vertex):
    server, connect = vertex
    with tf.io.gfile.GFile(f"{bucket}/photos/zz/huge.jpg", "wb") as f:
        f.write(os.urandom(batch_jobs.MAX_INSTANCE_BYTES))
    result = run(*flags_for(bucket, connect))
    cli.assert_one_error_line(result, "huge.jpg is 2.0 MB", "downscale it")
    assert not any(method == "POST" for method, _, _ in server.requests)
    assert tf.io.gfile.glob(f"{bucket}/batch/nightly/instances/*") == []
