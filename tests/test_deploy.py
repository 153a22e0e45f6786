"""Deployment to a Vertex AI endpoint, and online prediction on it, against a loopback Vertex AI.

Bodies are checked with google-cloud-aiplatform's own types, parsed strictly (an unknown field
or a bad enum value fails). The stub answers models.upload, endpoints.create,
endpoints.deployModel and operations.get as long-running operations, and :predict the way the
prebuilt TensorFlow container answers (one dict of outputs per instance).
"""
import base64
import io
import json
import subprocess
import sys

import pytest
from google.cloud.aiplatform_v1 import types as aip
from google.protobuf import json_format
from PIL import Image

from tests.testing import json_stub
from tests.testing.presets import REPO

DEPLOY = REPO / "scripts" / "deploy_vertex.py"
BASE = ("--project=my-proj", "--region=us-central1", "--export=gs://bkt/run/model/export/3", "--display_name=flowers")
ENDPOINT = "projects/my-proj/locations/us-central1/endpoints/555"


def strict(message_type, body):
    json_format.ParseDict(body, message_type.pb(message_type()), ignore_unknown_fields=False)


def run_deploy(*flags):
    env = {"PATH": "/usr/bin:/bin", "NO_PROXY": "127.0.0.1"}
    return subprocess.run([sys.executable, str(DEPLOY), *flags], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)


class _Vertex(json_stub.JsonHandler):
    """A few Vertex AI REST methods; records (method, path, body) of every request."""

    def do_GET(self):  # noqa: N802
        self.server.requests.append(("GET", self.path, None, self.headers.get("Authorization")))
        name = self.path[len("/v1/"):]
        self.reply({"name": name, "done": True,
                    "response": {"model": "projects/my-proj/locations/us-central1/models/42"}})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.body())
        self.server.requests.append(("POST", self.path, body, self.headers.get("Authorization")))
        if getattr(self.server, "refusal", None):
            return self.reply(*self.server.refusal)
        if self.path.endswith("/models:upload"):
            return self.reply({"name": "projects/my-proj/locations/us-central1/operations/1", "done": False})
        if self.path.endswith("/endpoints"):
            return self.reply({"name": "projects/my-proj/locations/us-central1/operations/2", "done": True,
                               "response": {"name": ENDPOINT}})
        if self.path.endswith(":deployModel"):
            return self.reply({"name": "projects/my-proj/locations/us-central1/operations/3", "done": True,
                               "response": {}})
        if self.path.endswith(":predict"):
            return self.reply({"predictions": [{"probabilities": [0.25, 0.75], "classes": ["dog", "cat"],
                                                "scores": [0.75, 0.25]} for _ in body["instances"]],
                               "deployedModelId": "77"})
        return self.reply({"error": {"code": 404, "status": "NOT_FOUND", "message": self.path}}, 404)


@pytest.fixture
def vertex(tmp_path):
    with json_stub.serving(_Vertex, tmp_path) as stub:
        yield stub


def test_dry_run_prints_a_valid_model_and_deployed_model_offline():
    result = run_deploy(*BASE, "--machine_type=n1-standard-8", "--max_replica_count=3", "--dry_run",
                        "--api_endpoint=http://127.0.0.1:9")  # nothing listens there: nothing may be sent
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) == {"model", "deployedModel"}
    strict(aip.Model, out["model"])
    strict(aip.DeployedModel, out["deployedModel"])
    assert out["model"]["artifactUri"] == "gs://bkt/run/model/export/3"
    assert out["model"]["containerSpec"]["imageUri"].startswith("us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.")
    from google.cloud.aiplatform.constants import prediction  # the client library's list of prebuilt images
    assert out["model"]["containerSpec"]["imageUri"] in prediction.TF_CONTAINER_URIS
    resources = out["deployedModel"]["dedicatedResources"]
    assert resources == {"machineSpec": {"machineType": "n1-standard-8"}, "minReplicaCount": 1, "maxReplicaCount": 3}


@pytest.mark.parametrize("flags, says", [
    (("--export=gs://bkt/run/model/export",), "one numeric export version"),
    (("--export=/local/export/1",), "gs:// URL"),
    (("--machine_type=a2-highgpu-1g",), "not a Vertex AI prediction machine type"),
    (("--min_replica_count=2", "--max_replica_count=1"), "--max_replica_count=1 is below"),
    (("--endpoint=projects/my-proj/locations/europe-west4/endpoints/5",), "same --region"),
    (("--no_such_flag",), "no_such_flag"),
])
def test_mistakes_are_one_line_with_status_2(flags, says):
    result = run_deploy(*BASE, *flags, "--dry_run")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.stderr


def test_deploy_uploads_creates_an_endpoint_and_deploys_with_all_traffic(vertex):
    server, connect = vertex
    result = run_deploy(*BASE, *connect, "--poll_interval=0.01")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == ["model: projects/my-proj/locations/us-central1/models/42", ENDPOINT]
    calls = [(method, path) for method, path, _, _ in server.requests]
    assert calls == [("POST", "/v1/projects/my-proj/locations/us-central1/models:upload"),
                     ("GET", "/v1/projects/my-proj/locations/us-central1/operations/1"),
                     ("POST", "/v1/projects/my-proj/locations/us-central1/endpoints"),
                     ("POST", f"/v1/{ENDPOINT}:deployModel")]
    assert all(auth == "Bearer test-token" for *_, auth in server.requests)
    upload, deploy = server.requests[0][2], server.requests[3][2]
    strict(aip.UploadModelRequest, dict(upload, parent="projects/my-proj/locations/us-central1"))
    strict(aip.DeployModelRequest, dict(deploy, endpoint=ENDPOINT))
    assert deploy["deployedModel"]["model"] == "projects/my-proj/locations/us-central1/models/42"
    assert deploy["trafficSplit"] == {"0": 100}


def test_an_existing_endpoint_is_reused(vertex):
    server, connect = vertex
    result = run_deploy(*BASE, *connect, "--endpoint=555", "--poll_interval=0.01")
    assert result.returncode == 0, result.stderr
    assert not any(path.endswith("/endpoints") for _, path, _, _ in server.requests)
    assert server.requests[-1][1] == f"/v1/{ENDPOINT}:deployModel"


def test_refusals_and_unreachable_apis_are_one_line(vertex):
    """Deploy talks through the submit command's client (trainer.cloud.vertex): same errors, same form."""
    server, connect = vertex
    server.refusal = ({"error": {"code": 403, "status": "PERMISSION_DENIED",
                                 "message": "Permission 'aiplatform.models.upload' denied\non project"}}, 403)
    refused = run_deploy(*BASE, *connect)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: Vertex AI refused models:upload: HTTP 403 PERMISSION_DENIED: "
        "Permission 'aiplatform.models.upload' denied on project"]
    unreachable = run_deploy(*BASE, "--api_endpoint=http://127.0.0.1:9", connect[1])  # nothing listens there
    assert unreachable.returncode == 2
    assert unreachable.stderr.strip().splitlines() == [
        "error: could not reach http://127.0.0.1:9 (ConnectionError): check the network and --region"]


def _jpeg(color):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buffer, "JPEG")
    return buffer.getvalue()


def test_client_predicts_on_a_vertex_endpoint_with_google_credentials(vertex, tmp_path, monkeypatch, capsys):
    import google.auth
    from google.oauth2.credentials import Credentials
    from serving import client as sc
    server, connect = vertex
    images = [_jpeg((200, 10, 10)), _jpeg((10, 200, 10))]
    for i, data in enumerate(images):
        (tmp_path / f"{i}.jpg").write_bytes(data)
    monkeypatch.setattr(google.auth, "default", lambda scopes=None, **_: (Credentials(token="adc-token"), "my-proj"))
    sc.define_flags()
    sc.FLAGS.unparse_flags()
    argv = sc.FLAGS(["serving.client", f"--vertex_endpoint={ENDPOINT}", connect[0], "--batch_size=1",
                     str(tmp_path / "0.jpg"), str(tmp_path / "1.jpg")])
    assert sc.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [{"path": str(tmp_path / f"{i}.jpg"), "classes": ["dog", "cat"], "scores": [0.75, 0.25]}
                     for i in range(2)]
    predicts = [r for r in server.requests if r[1].endswith(":predict")]
    assert [r[1] for r in predicts] == [f"/v1/{ENDPOINT}:predict"] * 2
    for (_, _, body, auth), data in zip(predicts, images):
        assert auth == "Bearer adc-token"
        assert body == {"instances": [{"image_bytes": {"b64": base64.b64encode(data).decode()}}]}
        strict(aip.PredictRequest, dict(body, endpoint=ENDPOINT))  # what Vertex AI's API accepts
