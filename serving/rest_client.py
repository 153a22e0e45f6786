"""The REST library: TF Serving's REST API (--rest_api_port, 8501) and Vertex AI endpoints.

Both talk JSON over one `requests.Session` per client: connections are kept alive across
batches (a new connection per request costs a TCP, and for Vertex a TLS, handshake each time),
and urllib3's `Retry` retries HTTP 503/504 and refused or dropped connections with exponential
backoff, POSTs included (a predict request has no side effects). Errors come out as the same
`ServingError` the gRPC client raises, so the batch logic above them is shared.

Binary values use TF Serving's JSON encoding, `{"b64": ...}` (g3doc/api_rest.md, "Encoding
binary values"), which Vertex AI's prebuilt TensorFlow container passes through unchanged.
"""
from __future__ import annotations

import base64
from typing import Dict, List, Optional, Sequence, Tuple

import grpc
import numpy as np
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from effnet_common import google_api
from serving.grpc_client import MAX_BACKOFF_S, ServingError

_RETRYABLE_HTTP = (503, 504)
_HTTP_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
               403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
               429: grpc.StatusCode.RESOURCE_EXHAUSTED, 501: grpc.StatusCode.UNIMPLEMENTED,
               503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
_ONLY_OUTPUT = {"features": "features"}


def b64(data: bytes) -> dict:
    """TF Serving's JSON encoding of binary values (g3doc/api_rest.md, "Encoding binary values")."""
    return {"b64": base64.b64encode(data).decode("ascii")}


def image_instance(image: bytes) -> dict:
    """One image as a row-format instance, its input named: what online prediction sends and what
    each line of a Vertex AI batch prediction's instances file holds (trainer.cloud.batch_files)."""
    return {"image_bytes": b64(image)}


def predict_body(images: Sequence[bytes], *, signature: str) -> dict:
    """A REST predict request in the row format, the image input named explicitly."""
    return {"signature_name": signature, "instances": [image_instance(i) for i in images]}


def classify_body(images: Sequence[bytes], *, signature: str = "classify") -> dict:
    """A REST classify request: one tf.Example (as JSON features) per image."""
    return {"signature_name": signature, "examples": [{"image/encoded": b64(i)} for i in images]}


def vertex_predict_body(images: Sequence[bytes]) -> dict:
    """Vertex AI's predict body: instances only; the endpoint serves `serving_default`."""
    return {"instances": [image_instance(i) for i in images]}


def mount_retries(session: requests.Session, *, retries: int, backoff_s: float) -> requests.Session:
    """Retries 503/504 and connection failures on `session` (every method), then returns it."""
    retry = Retry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=backoff_s,
                  backoff_max=MAX_BACKOFF_S, status_forcelist=_RETRYABLE_HTTP, allowed_methods=None,
                  raise_on_status=False, respect_retry_after_header=True)
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _error_message(response: requests.Response) -> str:
    """TF Serving says {"error": "text"}; Google APIs {"error": {"status", "message"}}."""
    try:
        error = response.json().get("error", response.reason)
    except ValueError:
        return " ".join(response.text.split())[:300] or str(response.reason)
    if isinstance(error, dict):
        return f"{error.get('status', '')} {error.get('message', '')}".strip()
    return str(error)


def post_json(session: requests.Session, url: str, *, body: Optional[dict], timeout: float) -> dict:
    """One JSON call through `session`; every failure becomes a ServingError with a gRPC code."""
    try:
        if body is None:
            response = session.get(url, timeout=timeout)
        else:
            response = session.post(url, json=body, timeout=timeout)
    except requests.ConnectTimeout as e:  # no connection was made: unreachable, as gRPC reports it
        raise ServingError(grpc.StatusCode.UNAVAILABLE, f"{url}: {type(e).__name__}") from None
    except requests.Timeout as e:
        raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{url}: {type(e).__name__}") from None
    except requests.RequestException as e:
        reason = getattr(e.args[0], "reason", e) if e.args else e
        raise ServingError(grpc.StatusCode.UNAVAILABLE, f"{url}: {reason}") from None
    if response.status_code != 200:
        raise ServingError(_HTTP_CODES.get(response.status_code, grpc.StatusCode.UNKNOWN), _error_message(response))
    return response.json()


def predictions_to_arrays(predictions: list, *, signature: str) -> Dict[str, np.ndarray]:
    """The row-format `predictions` list as one array per output."""
    if predictions and not isinstance(predictions[0], dict):
        # A signature with one output is answered without its name (api_rest.md).
        return {_ONLY_OUTPUT.get(signature, "output"): np.array(predictions)}
    keys = predictions[0].keys() if predictions else []
    return {k: np.array([p[k] for p in predictions]) for k in keys}


class RestClient:
    """The same calls as GrpcClient over TF Serving's REST API (--rest_api_port, 8501)."""

    def __init__(self, url: str, *, model: str, version: Optional[int] = None, timeout: float = 30.0,
                 retries: int = 4, backoff_s: float = 0.5):
        self.model, self.version, self.timeout, self.address = model, version, timeout, url.rstrip("/")
        self._base = f"{url.rstrip('/')}/v1/models/{model}" + (f"/versions/{version}" if version is not None else "")
        self._session = mount_retries(requests.Session(), retries=retries, backoff_s=backoff_s)
        # Loopback and in-cluster servers must not go through an HTTP proxy from the environment.
        self._session.trust_env = False

    def close(self) -> None:
        self._session.close()

    def _request(self, suffix: str, body: Optional[dict] = None) -> dict:
        return post_json(self._session, self._base + suffix, body=body, timeout=self.timeout)

    def predict(self, images: Sequence[bytes], *, signature: str = "serving_default") -> Dict[str, np.ndarray]:
        predictions = self._request(":predict", predict_body(images, signature=signature))["predictions"]
        return predictions_to_arrays(predictions, signature=signature)

    def classify(self, images: Sequence[bytes], *, signature: str = "classify") -> Tuple[List[List[str]], np.ndarray]:
        out = self._request(":classify", classify_body(images, signature=signature))
        rows = out.get("results", out.get("result", []))
        return ([[label for label, _ in r] for r in rows],
                np.array([[score for _, score in r] for r in rows], dtype=np.float32))

    def metadata(self) -> dict:
        out = self._request("/metadata")
        sig_map = out["metadata"]["signature_def"]["signature_def"]
        return {"model": out["model_spec"]["name"], "version": int(out["model_spec"]["version"]),
                "signatures": {n: {"method_name": s.get("method_name", ""), "inputs": _tensors(s.get("inputs", {})),
                                   "outputs": _tensors(s.get("outputs", {}))}
                               for n, s in sorted(sig_map.items()) if not n.startswith("__")}}

    def status(self) -> List[dict]:
        out = self._request("")
        return [{"version": int(s["version"]), "state": s["state"],
                 "error_code": s.get("status", {}).get("error_code", "OK"),
                 "error_message": s.get("status", {}).get("error_message", "")}
                for s in out["model_version_status"]]


def _tensors(infos: dict) -> dict:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow.core.framework import types_pb2  # pylint: disable=import-outside-toplevel
    return {k: {"dtype": tf.as_dtype(types_pb2.DataType.Value(v["dtype"])).name,
                "shape": [int(d.get("size", 0)) for d in v.get("tensor_shape", {}).get("dim", [])]}
            for k, v in sorted(infos.items())}


def endpoint_region(endpoint: str) -> str:
    """The region of `projects/P/locations/R/endpoints/E`, or ValueError naming the form."""
    parts = endpoint.strip("/").split("/")
    if len(parts) != 6 or parts[0::2] != ["projects", "locations", "endpoints"] or not all(parts[1::2]):
        raise ValueError(f"--vertex_endpoint={endpoint}: pass the endpoint's resource name, "
                         "projects/PROJECT/locations/REGION/endpoints/ENDPOINT_ID")
    return parts[3]


class VertexClient:
    """Online prediction on a Vertex AI endpoint that serves our export (deploy_vertex.py).

    Args:
      endpoint: projects/P/locations/R/endpoints/E.
      api_endpoint: the API root; default https://R-aiplatform.googleapis.com.
      session: an authorized requests session; default Application Default Credentials.
    """

    def __init__(self, endpoint: str, *, api_endpoint: Optional[str] = None, session=None, timeout: float = 60.0,
                 retries: int = 4, backoff_s: float = 0.5):
        region = endpoint_region(endpoint)
        root = google_api.vertex_api_root(region, api_endpoint)
        self.model, self.timeout, self.address = endpoint, timeout, root
        self._url = f"{root}/v1/{endpoint.strip('/')}:predict"
        self._session = mount_retries(session or google_api.authorized_session(), retries=retries, backoff_s=backoff_s)

    def close(self) -> None:
        self._session.close()

    def predict(self, images: Sequence[bytes], *, signature: str = "serving_default") -> Dict[str, np.ndarray]:
        if signature != "serving_default":
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, "a Vertex AI endpoint serves serving_default only")
        out = post_json(self._session, self._url, body=vertex_predict_body(images), timeout=self.timeout)
        return predictions_to_arrays(out.get("predictions", []), signature=signature)
