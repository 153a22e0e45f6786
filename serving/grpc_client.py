"""The gRPC library for TF Serving: PredictionService / ModelService calls for one model.

gRPC channels are opened with unlimited message sizes (Python gRPC's default receive limit is
4 MiB, far below the server's); UNAVAILABLE and DEADLINE_EXCEEDED are retried with exponential
backoff and jitter. `ServingError` (a gRPC status code and message) is what every client of
this package raises, the REST ones included, so callers handle one error type. Every client
keeps the `address` it calls, so an error for a person can say where the server was looked for.
"""
from __future__ import annotations

import random
import re
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import logging
import grpc
import tensorflow as tf

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
UNLIMITED_MESSAGES = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
MAX_BACKOFF_S = 10.0


class ServingError(RuntimeError):
    """A request the server (or the connection) failed: its gRPC status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @property
    def reason(self) -> str:
        """The innermost clause, for a person: gRPC and urllib3 wrap a cause in layers ('failed to
        connect to all addresses; last error: UNKNOWN: ipv4:...: Connection refused')."""
        last = self.message.rstrip("] ").rsplit(": ", 1)[-1]
        return re.sub(r"\[Errno -?\d+\] ", "", last).strip("[] ")[:120] or self.code.name



# --------------------------------------------------------------------------- retries

def call_with_retries(fn: Callable[[], object], *, retries: int, backoff_s: float,
                      sleep: Callable[[float], None] = time.sleep):
    """fn(), retried on UNAVAILABLE / DEADLINE_EXCEEDED with exponential backoff and jitter.

    Both mean the request may succeed later (a server restarting or rolling a version, a
    batch queue full, a slow first call); anything else would fail the same way again.
    """
    for attempt in range(retries + 1):
        try:
            return fn()
        except ServingError as e:
            if e.code not in RETRYABLE or attempt == retries:
                raise
            delay = min(MAX_BACKOFF_S, backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)
            logging.warning("%s; retry %d/%d in %.1fs", e, attempt + 1, retries, delay)
            sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- gRPC

class GrpcClient:
    """PredictionService / ModelService calls for one model.

    Args:
      server: HOST:PORT of tensorflow_model_server's gRPC port (8500 by default), kept as `address`.
      model: the model name in the server's model config.
      version: a specific version, or None for the latest the server has.
      timeout: seconds per call (the gRPC deadline).
      retries / backoff_s: see `call_with_retries`.
    """

    def __init__(self, server: str, *, model: str, version: Optional[int] = None, timeout: float = 30.0,
                 retries: int = 4, backoff_s: float = 0.5):
        # pylint: disable=import-outside-toplevel
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
        self.model, self.version, self.timeout, self.address = model, version, timeout, server
        self.retries, self.backoff_s = retries, backoff_s
        self._channel = grpc.insecure_channel(server, options=UNLIMITED_MESSAGES)
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _spec(self, spec, signature: str = "") -> None:
        spec.name = self.model
        if self.version is not None:
            spec.version.value = self.version
        if signature:
            spec.signature_name = signature

    def _call(self, method, request):
        def once():
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as e:
                raise ServingError(e.code(), e.details() or e.code().name) from None
        return call_with_retries(once, retries=self.retries, backoff_s=self.backoff_s)

    def predict(self, images: Sequence[bytes], *, signature: str = "serving_default") -> Dict[str, np.ndarray]:
        """Predict on encoded images; returns the signature's outputs as arrays."""
        from tensorflow_serving.apis import predict_pb2  # pylint: disable=import-outside-toplevel
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, signature)
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(list(images), dtype=tf.string))
        response = self._call(self._predictions.Predict, request)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def classify(self, images: Sequence[bytes], *, signature: str = "classify") -> Tuple[List[List[str]], np.ndarray]:
        """Classify API over tf.Examples holding `image/encoded`; returns (classes, scores)."""
        # pylint: disable=import-outside-toplevel
        from tensorflow_serving.apis import classification_pb2
        from serving import signatures
        request = classification_pb2.ClassificationRequest()
        self._spec(request.model_spec, signature)
        for image in images:
            request.input.example_list.examples.add().ParseFromString(signatures.image_example(image))
        response = self._call(self._predictions.Classify, request)
        rows = response.result.classifications
        return ([[c.label for c in r.classes] for r in rows],
                np.array([[c.score for c in r.classes] for r in rows], dtype=np.float32))

    def metadata(self) -> dict:
        """GetModelMetadata: the signatures (without TF's internal `__` entries)."""
        # pylint: disable=import-outside-toplevel
        from tensorflow_serving.apis import get_model_metadata_pb2
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        response = self._call(self._predictions.GetModelMetadata, request)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        return {"model": response.model_spec.name, "version": response.model_spec.version.value,
                "signatures": {name: _describe_signature(sig) for name, sig in sorted(sig_map.signature_def.items())
                               if not name.startswith("__")}}

    def status(self) -> List[dict]:
        """GetModelStatus: each version's state and load error."""
        from tensorflow_serving.apis import get_model_status_pb2  # pylint: disable=import-outside-toplevel
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        response = self._call(self._models.GetModelStatus, request)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [{"version": s.version, "state": state_name(s.state),
                 "error_code": s.status.error_code, "error_message": s.status.error_message}
                for s in response.model_version_status]


def _describe_signature(sig) -> dict:
    def tensors(infos):
        return {k: {"dtype": tf.as_dtype(v.dtype).name,
                    "shape": [d.size for d in v.tensor_shape.dim]} for k, v in sorted(infos.items())}
    return {"method_name": sig.method_name, "inputs": tensors(sig.inputs), "outputs": tensors(sig.outputs)}


