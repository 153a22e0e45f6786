"""The TF Serving stand-in as a process (`python -m testbed.serving_server`, docs/serving.md's way
to try the client): it keeps serving after its stdin closes, as when started with `&` or `nohup`,
until a signal stops it; `--exit_on_stdin_close` (start_subprocess: tests, benchmarks) keeps the
old tie to its parent's pipe."""
import signal
import subprocess
import sys

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from testbed import exports, serving_server
from tests.testing.cli import ROOT


@pytest.fixture(scope="module")
def export_base(tmp_path_factory):
    return exports.build_export(str(tmp_path_factory.mktemp("export")), num_classes=3).base


def model_state(address: str) -> int:
    """The served version's state, as GetModelStatus answers it."""
    with grpc.insecure_channel(address) as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "effnet"
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    return status.model_version_status[0].state


@pytest.mark.slow
def test_it_serves_with_stdin_closed_until_a_signal_and_ties_to_stdin_only_when_asked(export_base):
    proc = subprocess.Popen([sys.executable, "-m", "testbed.serving_server", "--model_name=effnet",
                             f"--model_base_path={export_base}"], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("READY grpc="), proc.stderr.read()[-2000:] if proc.poll() is not None else ready
        address = f"127.0.0.1:{ready.split()[1].split('=')[1]}"
        assert model_state(address) == get_model_status_pb2.ModelVersionStatus.AVAILABLE  # stdin long closed
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()

    tied, address, _ = serving_server.start_subprocess(model_name="effnet", model_base_path=export_base)
    try:
        assert model_state(address) == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        tied.stdin.close()
        assert tied.wait(timeout=60) == 0
    finally:
        if tied.poll() is None:
            tied.kill()
