"""Client for the exported model on TF Serving: a library and a CLI, over gRPC or REST.

    python -m serving.client --server=HOST:8500 --model=NAME [--signature=serving_default|classify|features]
        [--version=N] [--rest=http://HOST:8501] [--timeout=S] [--batch_size=B] [--retries=R]
        [--features_output=F.npy] IMAGES...
    python -m serving.client --server=HOST:8500 --model=NAME metadata|status

IMAGES are files, globs, folders (their images, recursively) or gs:// URLs. Every file is read
and decoded here first with TensorFlow's own decoder (the one the server runs), so a missing or
undecodable file is reported by name and skipped instead of failing the batch it would join.
Output is one JSON object per input line on stdout: `path`, `classes` (best first), `scores`
for the classifying signatures; `features` (or the `row` of --features_output, whose paths go
to a `.paths.txt` sidecar) for `features`; `path` and `error` for a file that could not be
predicted. The exit status is non-zero only when nothing could be predicted.

gRPC channels are opened with unlimited message sizes (Python gRPC's default receive limit is
4 MiB, far below the server's); UNAVAILABLE and DEADLINE_EXCEEDED (HTTP 503/504 over REST) are
retried with exponential backoff. A batch the server rejects as INVALID_ARGUMENT is split in
halves until the offending image is alone, so one bad image costs only itself.
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from absl import logging

import serving  # noqa: F401  # sets TF_USE_LEGACY_KERAS before TensorFlow loads
import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402

SIGNATURES = ("serving_default", "classify", "features")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_RETRYABLE_HTTP = {503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
_HTTP_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
               429: grpc.StatusCode.RESOURCE_EXHAUSTED, 501: grpc.StatusCode.UNIMPLEMENTED,
               **_RETRYABLE_HTTP}
UNLIMITED_MESSAGES = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
MAX_BACKOFF_S = 10.0
_ONLY_OUTPUT = {"features": "features"}


class ServingError(RuntimeError):
    """A request the server (or the connection) failed: its gRPC status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclasses.dataclass
class Failure:
    """An input that could not be predicted, and why."""
    path: str
    error: str

    def to_json(self) -> dict:
        return {"path": self.path, "error": self.error}


@dataclasses.dataclass
class Prediction:
    """The answer for one image: top classes and scores, or its feature vector."""
    path: str
    classes: Optional[List[str]] = None
    scores: Optional[List[float]] = None
    features: Optional[np.ndarray] = None

    def to_json(self) -> dict:
        out = {"path": self.path}
        if self.classes is not None:
            out.update(classes=self.classes, scores=self.scores)
        if self.features is not None:
            out["features"] = self.features.tolist()
        return out


# --------------------------------------------------------------------------- inputs

def expand_inputs(patterns: Sequence[str]) -> Tuple[List[str], List[Failure]]:
    """Files, globs and folders (local or gs://) -> image paths, in order, without repeats.

    A folder contributes its image files (by suffix, recursively, sorted); a glob or an
    explicit file is taken as given, so a mislabelled file still gets its decode check.
    """
    paths: List[str] = []
    failures: List[Failure] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            matches = sorted(tf.io.gfile.glob(pattern))
            if not matches:
                failures.append(Failure(pattern, "the pattern matches no file"))
            paths.extend(m for m in matches if not tf.io.gfile.isdir(m))
        elif tf.io.gfile.isdir(pattern):
            found = sorted(os.path.join(d, f) for d, _, files in tf.io.gfile.walk(pattern)
                           for f in files if f.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                failures.append(Failure(pattern, f"the folder holds no {'/'.join(IMAGE_SUFFIXES)} file"))
            paths.extend(found)
        elif tf.io.gfile.exists(pattern):
            paths.append(pattern)
        else:
            failures.append(Failure(pattern, "no such file"))
    return list(dict.fromkeys(paths)), failures


def check_image(data: bytes) -> Optional[str]:
    """None if TensorFlow's decoder (the server's) reads `data`, else the reason it does not."""
    if not data:
        return "the file is empty"
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
        return f"not a decodable JPEG/PNG/GIF/BMP image ({_first_line(e.message)})"
    return None


def read_images(paths: Sequence[str]) -> Tuple[List[Tuple[str, bytes]], List[Failure]]:
    """Reads and decode-checks each file; the bad ones become Failures, never requests."""
    good, bad = [], []
    for path in paths:
        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                data = f.read()
        except (tf.errors.OpError, OSError) as e:
            bad.append(Failure(path, f"cannot read: {_first_line(getattr(e, 'message', str(e)))}"))
            continue
        reason = check_image(data)
        if reason:
            bad.append(Failure(path, reason))
        else:
            good.append((path, data))
    return good, bad


def _first_line(text: str) -> str:
    return (str(text).strip().splitlines() or [""])[0][:300]


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
      server: HOST:PORT of tensorflow_model_server's gRPC port (8500 by default).
      model: the model name in the server's model config.
      version: a specific version, or None for the latest the server has.
      timeout: seconds per call (the gRPC deadline).
      retries / backoff_s: see `call_with_retries`.
    """

    def __init__(self, server: str, *, model: str, version: Optional[int] = None, timeout: float = 30.0,
                 retries: int = 4, backoff_s: float = 0.5):
        # pylint: disable=import-outside-toplevel
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
        self.model, self.version, self.timeout = model, version, timeout
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


# --------------------------------------------------------------------------- REST

def b64(data: bytes) -> dict:
    """TF Serving's JSON encoding of binary values (g3doc/api_rest.md, "Encoding binary values")."""
    return {"b64": base64.b64encode(data).decode("ascii")}


def predict_body(images: Sequence[bytes], *, signature: str) -> dict:
    """A REST predict request in the row format, the image input named explicitly."""
    return {"signature_name": signature, "instances": [{"image_bytes": b64(i)} for i in images]}


def classify_body(images: Sequence[bytes], *, signature: str = "classify") -> dict:
    """A REST classify request: one tf.Example (as JSON features) per image."""
    return {"signature_name": signature, "examples": [{"image/encoded": b64(i)} for i in images]}


class RestClient:
    """The same calls as GrpcClient over TF Serving's REST API (--rest_api_port, 8501)."""

    def __init__(self, url: str, *, model: str, version: Optional[int] = None, timeout: float = 30.0,
                 retries: int = 4, backoff_s: float = 0.5):
        self.model, self.version, self.timeout = model, version, timeout
        self.retries, self.backoff_s = retries, backoff_s
        self._base = f"{url.rstrip('/')}/v1/models/{model}" + (f"/versions/{version}" if version is not None else "")
        # Loopback and in-cluster servers must not go through an HTTP proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def close(self) -> None:
        pass

    def _request(self, suffix: str, body: Optional[dict] = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self._base + suffix, data=data,
                                         headers={"Content-Type": "application/json"})

        def once():
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                try:
                    message = json.loads(e.read()).get("error", e.reason)
                except ValueError:
                    message = str(e.reason)
                raise ServingError(_HTTP_CODES.get(e.code, grpc.StatusCode.UNKNOWN), message) from None
            except (urllib.error.URLError, OSError) as e:
                code = (grpc.StatusCode.DEADLINE_EXCEEDED if "timed out" in str(e)
                        else grpc.StatusCode.UNAVAILABLE)
                raise ServingError(code, f"{self._base}: {getattr(e, 'reason', e)}") from None
        return call_with_retries(once, retries=self.retries, backoff_s=self.backoff_s)

    def predict(self, images: Sequence[bytes], *, signature: str = "serving_default") -> Dict[str, np.ndarray]:
        predictions = self._request(":predict", predict_body(images, signature=signature))["predictions"]
        if predictions and not isinstance(predictions[0], dict):
            # A signature with one output is answered without its name (api_rest.md).
            return {_ONLY_OUTPUT.get(signature, "output"): np.array(predictions)}
        keys = predictions[0].keys() if predictions else []
        return {k: np.array([p[k] for p in predictions]) for k in keys}

    def classify(self, images: Sequence[bytes], *, signature: str = "classify") -> Tuple[List[List[str]], np.ndarray]:
        out = self._request(":classify", classify_body(images, signature=signature))
        rows = out.get("results", out.get("result", []))
        return ([[label for label, _ in r] for r in rows],
                np.array([[score for _, score in r] for r in rows], dtype=np.float32))

    def metadata(self) -> dict:
        out = self._request("/metadata")
        sig_map = out["metadata"]["signature_def"]["signature_def"]
        def tensors(infos):
            return {k: {"dtype": tf.as_dtype(_dtype_enum(v["dtype"])).name,
                        "shape": [int(d.get("size", 0)) for d in v.get("tensor_shape", {}).get("dim", [])]}
                    for k, v in sorted(infos.items())}
        return {"model": out["model_spec"]["name"], "version": int(out["model_spec"]["version"]),
                "signatures": {n: {"method_name": s.get("method_name", ""), "inputs": tensors(s.get("inputs", {})),
                                   "outputs": tensors(s.get("outputs", {}))}
                               for n, s in sorted(sig_map.items()) if not n.startswith("__")}}

    def status(self) -> List[dict]:
        out = self._request("")
        return [{"version": int(s["version"]), "state": s["state"],
                 "error_code": s.get("status", {}).get("error_code", "OK"),
                 "error_message": s.get("status", {}).get("error_message", "")}
                for s in out["model_version_status"]]


def _dtype_enum(name: str) -> int:
    from tensorflow.core.framework import types_pb2  # pylint: disable=import-outside-toplevel
    return types_pb2.DataType.Value(name)


# --------------------------------------------------------------------------- batch prediction

Client = Union[GrpcClient, RestClient]


def _answer(client: Client, batch: List[Tuple[str, bytes]], signature: str) -> List[Prediction]:
    images = [data for _, data in batch]
    if signature == "classify":
        classes, scores = client.classify(images, signature=signature)
        return [Prediction(p, classes=c, scores=s.tolist()) for (p, _), c, s in zip(batch, classes, scores)]
    out = client.predict(images, signature=signature)
    if "features" in out:
        return [Prediction(p, features=np.asarray(f, np.float32)) for (p, _), f in zip(batch, out["features"])]
    classes = [[c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in row] for row in out["classes"]]
    return [Prediction(p, classes=c, scores=np.asarray(s, np.float32).tolist())
            for (p, _), c, s in zip(batch, classes, out["scores"])]


def predict_images(client: Client, items: Sequence[Tuple[str, bytes]], *, signature: str = "serving_default",
                   batch_size: int = 32) -> Iterator[Union[Prediction, Failure]]:
    """Yields one Prediction or Failure per item, in order, batch by batch.

    A batch rejected as INVALID_ARGUMENT is split to isolate the image at fault. If the server
    stays unavailable after the retries, the remaining items fail at once instead of each
    waiting through the retries again.
    """
    unreachable: Optional[ServingError] = None
    for start in range(0, len(items), batch_size):
        batch = list(items[start:start + batch_size])
        if unreachable is not None:
            yield from (Failure(p, str(unreachable)) for p, _ in batch)
            continue
        try:
            yield from _predict_isolating(client, batch, signature)
        except ServingError as e:  # retries exhausted on an unavailable server
            unreachable = e
            yield from (Failure(p, str(e)) for p, _ in batch)


def _predict_isolating(client: Client, batch: List[Tuple[str, bytes]], signature: str):
    try:
        yield from _answer(client, batch, signature)
    except ServingError as e:
        if e.code in RETRYABLE:
            raise
        if e.code != grpc.StatusCode.INVALID_ARGUMENT or len(batch) == 1:
            yield from (Failure(p, str(e)) for p, _ in batch)
            return
        half = len(batch) // 2
        yield from _predict_isolating(client, batch[:half], signature)
        yield from _predict_isolating(client, batch[half:], signature)


# --------------------------------------------------------------------------- output

class _Progress:
    """A one-line counter on stderr when it is a terminal; silent in pipes and logs."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        self._live = sys.stderr.isatty() and total > 0

    def add(self, n: int = 1) -> None:
        self.done += n
        if self._live:
            sys.stderr.write(f"\r{self.done}/{self.total} images")
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def write_features(path: str, rows: List[np.ndarray], paths: List[str]) -> str:
    """Writes the .npy (float32 [N, D]) and its `.paths.txt` sidecar, each moved into place."""
    from trainer import fileio  # pylint: disable=import-outside-toplevel
    buffer = io.BytesIO()
    np.save(buffer, np.stack(rows).astype(np.float32) if rows else np.zeros([0, 0], np.float32))
    sidecar = os.path.splitext(path)[0] + ".paths.txt"
    fileio.write_bytes_atomic(path, buffer.getvalue())
    fileio.write_text_atomic(sidecar, "".join(f"{p}\n" for p in paths))
    return sidecar


# --------------------------------------------------------------------------- CLI

class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (what, and where to look) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="python -m serving.client", description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="localhost:8500", help="gRPC HOST:PORT of tensorflow_model_server")
    parser.add_argument("--rest", default=None, help="use the REST API at this URL (http://HOST:8501) instead")
    parser.add_argument("--model", required=True, help="model name in the server's model config")
    parser.add_argument("--signature", default="serving_default", choices=SIGNATURES)
    parser.add_argument("--version", type=int, default=None, help="model version (default: the latest)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--batch_size", type=int, default=32,
                        help="images per request (keep <= max_batch_size of batching.config)")
    parser.add_argument("--retries", type=int, default=4, help="retries on UNAVAILABLE/DEADLINE_EXCEEDED")
    parser.add_argument("--features_output", default=None,
                        help="with --signature=features: write rows to this .npy (paths in a .paths.txt sidecar)")
    parser.add_argument("inputs", nargs="*", metavar="IMAGES",
                        help="files, globs, folders or gs:// URLs; or the word metadata / status")
    return parser


def _validate(args) -> Optional[str]:
    if args.batch_size < 1:
        return f"--batch_size={args.batch_size}: pass a positive number of images per request"
    if args.timeout <= 0:
        return f"--timeout={args.timeout}: pass a positive number of seconds"
    if args.retries < 0:
        return f"--retries={args.retries}: pass 0 or more"
    if args.rest and not args.rest.startswith(("http://", "https://")):
        return f"--rest={args.rest}: pass the REST API's URL, e.g. http://localhost:8501"
    if args.features_output and args.signature != "features":
        return "--features_output needs --signature=features"
    if args.features_output and not args.features_output.endswith(".npy"):
        return f"--features_output={args.features_output}: name a .npy file"
    if not args.inputs:
        return "no IMAGES given: pass image files, globs or folders, or the word metadata or status"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the CLI; returns the exit status (0 when anything was predicted)."""
    args = build_parser().parse_args(argv)
    problem = _validate(args)
    if problem:
        print(f"serving.client: {problem}", file=sys.stderr)
        return 2
    kind = RestClient if args.rest else GrpcClient
    client = kind(args.rest or args.server, model=args.model, version=args.version, timeout=args.timeout,
                  retries=args.retries)
    try:
        if args.inputs in (["metadata"], ["status"]):
            return _info(client, args.inputs[0])
        return _predict_cli(client, args)
    finally:
        client.close()


def _info(client: Client, what: str) -> int:
    try:
        out = client.metadata() if what == "metadata" else client.status()
    except ServingError as e:
        print(f"serving.client: {what} of model {client.model} failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


def _predict_cli(client: Client, args) -> int:
    paths, failures = expand_inputs(args.inputs)
    items, unreadable = read_images(paths)
    for failure in failures + unreadable:
        logging.warning("skipped %s: %s", failure.path, failure.error)
        print(json.dumps(failure.to_json()), flush=True)
    progress = _Progress(len(items))
    predicted, rows, row_paths = 0, [], []
    for result in predict_images(client, items, signature=args.signature, batch_size=args.batch_size):
        progress.add()
        if isinstance(result, Failure):
            logging.warning("failed %s: %s", result.path, result.error)
            print(json.dumps(result.to_json()), flush=True)
            continue
        predicted += 1
        if args.features_output:
            print(json.dumps({"path": result.path, "row": len(rows)}), flush=True)
            rows.append(result.features)
            row_paths.append(result.path)
        else:
            print(json.dumps(result.to_json()), flush=True)
    if args.features_output and rows:
        write_features(args.features_output, rows, row_paths)
    total = len(paths) + len([f for f in failures if f.path not in paths])
    if not predicted:
        print(f"serving.client: nothing predicted: all {total} input(s) failed (see the error lines above)",
              file=sys.stderr)
        return 1
    logging.info("predicted %d of %d inputs", predicted, total)
    return 0


def run_main() -> None:
    logging.use_absl_handler()
    sys.exit(main())


if __name__ == "__main__":
    run_main()
