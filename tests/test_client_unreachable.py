"""serving.client with no server, or one that goes away: one line, exit 2, no line per image.

A closed loopback port (bound, then closed) refuses every connection; a stub PredictionService
that stops itself after its first answer stands for a server lost midway. No model is built.
"""
import json
import socket
import subprocess
import sys
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from PIL import Image

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from effnet_common import flagutil  # noqa: E402
from serving import client as sc  # noqa: E402
from tests.testing.presets import REPO  # noqa: E402

IMAGES = 50


@pytest.fixture()
def closed_port():
    """A loopback port nothing listens on: bound by us, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def image_dir(tmp_path):
    """50 tiny PNGs and one file that is not an image (it fails before sending)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(IMAGES):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"{i:02d}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def run_cli(*argv) -> int:
    """The command in-process as flagutil.run runs it (a UserError: one line, exit 2); its status."""
    sc.define_flags()
    sc.FLAGS.unparse_flags()
    try:
        return flagutil.guarded(sc.main)(sc.FLAGS(["serving.client", *argv]))
    except SystemExit as e:
        return e.code


def assert_one_line_ending(err: str, address: str, *, not_sent=None, max_lines: int = 4) -> str:
    """stderr is short and ends in the one line naming the address and where to read how to start."""
    lines = [line for line in err.split("\n") if line.strip()]
    assert len(lines) <= max_lines, err
    last = lines[-1]
    assert last.startswith("error: ") and address in last and "docs/serving.md" in last, last
    if not_sent is not None:
        assert f"; {not_sent} images not sent" in last, last
    return last


def per_image_warnings(caplog) -> list:
    """In-process, the command's absl warnings reach pytest's log capture, not capsys."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("failed ")]


@pytest.mark.slow
def test_no_grpc_server_one_line_and_exit_2(closed_port, image_dir):
    """The real command, as it was found: no server on the port, a folder of images."""
    proc = subprocess.run([sys.executable, "-m", "serving.client", f"--server=127.0.0.1:{closed_port}",
                           "--model_name=m", "--retries=1", "--timeout=5", "--batch_size=8", str(image_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert [json.loads(line)["path"] for line in proc.stdout.splitlines()] == [str(image_dir / "broken.png")]
    last = assert_one_line_ending(proc.stderr, f"127.0.0.1:{closed_port}", not_sent=IMAGES)
    assert last.startswith(f"error: cannot reach the gRPC server at 127.0.0.1:{closed_port} (--server): "
                           "Connection refused; 50 images not sent. Start one with scripts/serve_tf_serving.sh")
    assert "Traceback" not in proc.stderr and proc.stderr.count("not sent") == 1


def test_no_rest_server_one_line_and_exit_2(closed_port, image_dir, capsys, caplog):
    url = f"http://127.0.0.1:{closed_port}"
    assert run_cli(f"--rest={url}", "--model_name=m", "--retries=1", "--timeout=5", "--batch_size=8",
                   str(image_dir)) == 2
    out, err = capsys.readouterr()
    assert [json.loads(line)["path"] for line in out.splitlines()] == [str(image_dir / "broken.png")]
    last = assert_one_line_ending(err, url, not_sent=IMAGES)
    assert last.startswith(f"error: cannot reach the REST API at {url} (--rest): Connection refused;")
    assert per_image_warnings(caplog) == []


@pytest.mark.parametrize("transport", ["--server=127.0.0.1:{}", "--rest=http://127.0.0.1:{}"])
@pytest.mark.parametrize("what", ["metadata", "status"])
def test_metadata_and_status_get_the_same_line(closed_port, transport, what, capsys):
    assert run_cli(transport.format(closed_port), "--model_name=m", "--retries=0", what) == 2
    out, err = capsys.readouterr()
    assert out == ""
    last = assert_one_line_ending(err, f"127.0.0.1:{closed_port}", max_lines=1)
    assert "cannot reach" in last and "not sent" not in last


def test_no_vertex_api_one_line_and_exit_2(closed_port, image_dir, monkeypatch, capsys):
    import google.auth
    from google.oauth2.credentials import Credentials
    monkeypatch.setattr(google.auth, "default", lambda scopes=None, **_: (Credentials(token="t"), "p"))
    endpoint = "projects/p/locations/us-central1/endpoints/5"
    assert run_cli(f"--vertex_endpoint={endpoint}", f"--api_endpoint=http://127.0.0.1:{closed_port}",
                   "--retries=0", str(image_dir)) == 2
    last = assert_one_line_ending(capsys.readouterr().err, endpoint, not_sent=IMAGES)
    assert f"at http://127.0.0.1:{closed_port} (--vertex_endpoint)" in last


class _LeavingServer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Answers the first Predict call, then stops listening: a server lost midway."""

    def __init__(self):
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.calls = 0

    def Predict(self, request, context):  # noqa: N802  (the gRPC method's name)
        self.calls += 1
        if self.calls > 1:  # a call that slipped in before the port closed
            context.abort(grpc.StatusCode.UNAVAILABLE, "Socket closed")
        self.server.stop(grace=5)  # this answer still goes out; new calls find no server
        n = len(request.inputs["image_bytes"].string_val)
        response = predict_pb2.PredictResponse()
        if request.model_spec.signature_name == "features":
            response.outputs["features"].CopyFrom(tf.make_tensor_proto(np.ones([n, 4], np.float32)))
        else:
            response.outputs["classes"].CopyFrom(tf.make_tensor_proto([["cat", "dog"]] * n))
            response.outputs["scores"].CopyFrom(tf.make_tensor_proto(np.full([n, 2], 0.5, np.float32)))
        return response


@pytest.mark.parametrize("signature", ["serving_default", "features"])
def test_server_lost_midway_keeps_the_answers_and_ends_in_the_line(image_dir, tmp_path, signature, capsys, caplog):
    stub = _LeavingServer()
    stub.server.start()
    features = tmp_path / "f.npy"
    extra = [f"--features_output={features}"] if signature == "features" else []
    try:
        assert run_cli(f"--server=127.0.0.1:{stub.port}", "--model_name=m", "--retries=1", "--timeout=5",
                       "--batch_size=8", f"--signature={signature}", *extra, str(image_dir)) == 2
    finally:
        stub.server.stop(None)
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["path"] for line in lines] == [str(image_dir / "broken.png")] + [
        str(image_dir / f"{i:02d}.png") for i in range(8)]
    assert not any("error" in line for line in lines[1:])
    assert_one_line_ending(err, f"127.0.0.1:{stub.port}", not_sent=IMAGES - 8)
    assert per_image_warnings(caplog) == []
    if signature == "features":  # the rows the printed lines point at are written
        assert np.load(features).shape == (8, 4) and [line["row"] for line in lines[1:]] == list(range(8))


class _SilentServer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Accepts every call and never answers in time: up, but silent (or far too slow)."""

    def Predict(self, request, context):  # noqa: N802
        time.sleep(3)
        context.abort(grpc.StatusCode.INTERNAL, "too late to matter")


def test_server_silent_past_the_deadline_ends_in_one_line(image_dir, capsys, caplog):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_SilentServer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert run_cli(f"--server=127.0.0.1:{port}", "--model_name=m", "--retries=0", "--timeout=0.5",
                       str(image_dir)) == 2
    finally:
        server.stop(None)
    out, err = capsys.readouterr()
    assert [json.loads(line)["path"] for line in out.splitlines()] == [str(image_dir / "broken.png")]
    last = assert_one_line_ending(err, f"127.0.0.1:{port}", not_sent=IMAGES)
    assert f"at 127.0.0.1:{port} (--server) did not answer within --timeout=0.5s" in last and "raise --timeout" in last
    assert per_image_warnings(caplog) == []
