"""Client for the exported model on TF Serving or a Vertex AI endpoint: the CLI, and the batch logic.

    python -m serving.client --server=HOST:8500 --model_name=NAME [--signature=serving_default|classify|features]
        [--model_version=N] [--rest=http://HOST:8501] [--timeout=S] [--batch_size=B] [--retries=R]
        [--features_output=F.npy] IMAGES...
    python -m serving.client --server=HOST:8500 --model_name=NAME metadata|status
    python -m serving.client --vertex_endpoint=projects/P/locations/R/endpoints/E IMAGES...

IMAGES are files, globs, folders (their images, recursively) or gs:// URLs. Every file is read
and decoded here first with TensorFlow's own decoder (the one the server runs), so a missing or
undecodable file is reported by name and skipped instead of failing the batch it would join.
Output is one JSON object per input line on stdout: `path`, `classes` (best first), `scores`
for the classifying signatures; `features` (or the `row` of --features_output, whose paths go
to a `.paths.txt` sidecar) for `features`; `path` and `error` for a file that could not be
predicted. The exit status is 1 when nothing could be predicted, 2 for a usage mistake or a
server that cannot be reached (`ServerUnreachable`: one line, however many images were left).

The transports live beside this module: serving.grpc_client (gRPC, the default) and
serving.rest_client (TF Serving's REST API with --rest, Vertex AI with --vertex_endpoint, the
latter with Google credentials). A batch the server rejects as INVALID_ARGUMENT is split in
halves until the offending image is alone, so one bad image costs only itself.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: prepare the process before TensorFlow loads
    from effnet_common import process
    process.prepare()

import dataclasses
import io
import json
import os
import sys
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from absl import flags, logging
import grpc
import tensorflow as tf

from effnet_common import downscale, errors, fileio, flagutil
from effnet_common import progress as progress_lib
from serving.grpc_client import RETRYABLE, GrpcClient, ServingError, call_with_retries  # noqa: F401
from serving.rest_client import (RestClient, VertexClient, b64, classify_body,  # noqa: F401
                                 predict_body, vertex_predict_body)

SIGNATURES = ("serving_default", "classify", "features")
FLAGS = flags.FLAGS


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


_START_A_SERVER = ('start one with scripts/serve_tf_serving.sh, or offline with python -m testbed.serving_server '
                   '(docs/serving.md, "Serving it")')
_CHECK_VERTEX = ('check the network and --api_endpoint, and that a model is deployed to the endpoint '
                 '(docs/serving.md, "When the server cannot be reached")')


class ServerUnreachable(errors.UserError):
    """The server stayed UNAVAILABLE (or silent) through the retries: a line per image never sent
    would bury the one thing to fix, where the server was looked for. A UserError (one `error:`
    line, exit 2): an address to change or a server to start is the user's to fix. `error` is the
    last ServingError, `not_sent` the images left (None for metadata and status)."""

    def __init__(self, client: "Client", error: ServingError, *, not_sent: Optional[int] = None):
        self.error, self.not_sent = error, not_sent
        super().__init__(_unreachable_message(client, error, not_sent))


def _unreachable_message(client: "Client", error: ServingError, not_sent: Optional[int]) -> str:
    if isinstance(client, VertexClient):
        where, fix = f"the Vertex AI endpoint {client.model} at {client.address} (--vertex_endpoint)", _CHECK_VERTEX
    else:
        kind, flag = ("REST API", "--rest") if isinstance(client, RestClient) else ("gRPC server", "--server")
        where, fix = f"the {kind} at {client.address} ({flag})", _START_A_SERVER
    if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        what = f"{where} did not answer within --timeout={client.timeout:g}s"
        fix = f"check that it runs there, or raise --timeout or lower --batch_size; else {fix}"
    else:
        what = f"cannot reach {where}"
    left = "" if not_sent is None else f"; {not_sent} image{'s' if not_sent != 1 else ''} not sent"
    return f"{what}: {error.reason}{left}. {fix[0].upper()}{fix[1:]}"


# --------------------------------------------------------------------------- inputs

def expand_inputs(patterns: Sequence[str]) -> Tuple[List[str], List[Failure]]:
    """Files, globs and folders (local or gs://) -> image paths, in order, without repeats.

    A folder contributes its image files as every command lists a folder (`fileio.list_images`:
    by name, recursively, sorted, hidden ones left out, links read once, every other file
    reported with a warning); a glob or an explicit file is taken as given, so a mislabelled
    file still gets its decode check.
    """
    paths: List[str] = []
    failures: List[Failure] = []
    for pattern in patterns:
        if fileio.has_glob(pattern):
            matches = sorted(tf.io.gfile.glob(pattern))
            if not matches:
                failures.append(Failure(pattern, "the pattern matches no file"))
            paths.extend(m for m in matches if not tf.io.gfile.isdir(m))
        elif tf.io.gfile.isdir(pattern):
            found = fileio.list_images(pattern)
            if not found:
                failures.append(Failure(pattern, f"the folder holds no {fileio.IMAGE_EXTENSIONS_TEXT} file"))
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
        return f"not a decodable {fileio.IMAGE_FORMATS_TEXT} image ({flagutil.one_line(e, limit=300)})"
    return None


def read_images(paths: Sequence[str], *, max_image_side: int = 0) -> Tuple[List[Tuple[str, bytes]], List[Failure]]:
    """Reads and decode-checks each file; the bad ones become Failures, never requests. A photo
    over `max_image_side` is sent downscaled, by the rule trainer.prepare stores records by
    (`effnet_common.downscale`): a 4 MB phone photo travels as a few hundred KB, and the answer
    stays within the tolerance docs/data.md measures; 0 sends every file as it is."""
    good, bad = [], []
    for path in paths:
        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                data = f.read()
        except (tf.errors.OpError, OSError) as e:
            bad.append(Failure(path, f"cannot read: {flagutil.one_line(e, limit=300)}"))
            continue
        reason = check_image(data)
        if reason:
            bad.append(Failure(path, reason))
        else:
            good.append((path, downscale.fit(data, max_side=max_image_side)))
    return good, bad


# --------------------------------------------------------------------------- batch prediction

Client = Union[GrpcClient, RestClient, VertexClient]


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

    A batch rejected as INVALID_ARGUMENT is split to isolate the image at fault.

    Raises:
      ServerUnreachable: at the first batch still UNAVAILABLE or DEADLINE_EXCEEDED after the
        retries, as every later one would wait through them again; what was yielded stands.
    """
    answered = 0
    try:
        for start in range(0, len(items), batch_size):
            for result in _predict_isolating(client, list(items[start:start + batch_size]), signature):
                answered += 1
                yield result
    except ServingError as e:  # only the RETRYABLE codes leave _predict_isolating
        raise ServerUnreachable(client, e, not_sent=len(items) - answered) from None


def _predict_isolating(client: Client, batch: List[Tuple[str, bytes]], signature: str):
    """The batch's results, halving an INVALID_ARGUMENT batch; a RETRYABLE ServingError (the
    server's fault, not an image's) is raised."""
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

def write_features(path: str, rows: List[np.ndarray], paths: List[str]) -> str:
    """Writes the .npy (float32 [N, D]) and its `.paths.txt` sidecar, each moved into place."""
    buffer = io.BytesIO()
    np.save(buffer, np.stack(rows).astype(np.float32) if rows else np.zeros([0, 0], np.float32))
    sidecar = os.path.splitext(path)[0] + ".paths.txt"
    fileio.write_bytes_atomic(path, buffer.getvalue())
    fileio.write_text_atomic(sidecar, "".join(f"{p}\n" for p in paths))
    return sidecar


# --------------------------------------------------------------------------- CLI

USAGE = flagutil.Usage(
    summary="Send images to a model on TF Serving or a Vertex AI endpoint: one JSON line per image on stdout.",
    example="python -m serving.client --server=localhost:8500 --model_name=flowers photos/*.jpg",
    reference="docs/serving.md")


def define_flags() -> None:
    """Defines the CLI's flags; only when it runs (or in tests), so that importing the library
    beside another entry point defines no clashing flags."""
    flagutil.define("string", "server", "localhost:8500", "gRPC HOST:PORT of tensorflow_model_server.", group="server")
    flagutil.define("string", "rest", None, "Use TF Serving's REST API at this URL (http://HOST:8501) instead.",
                    group="server")
    flagutil.define("string", "vertex_endpoint", None, "Predict on a Vertex AI endpoint instead: "
                    "projects/P/locations/R/endpoints/E (Google credentials: ADC).", group="server")
    flagutil.define("string", "api_endpoint", None, "Vertex AI API root (default https://REGION-aiplatform.googleapis.com).",
                    group="server")
    flagutil.define("string", "model_name", None, "Model name in the server's model config, as tensorflow_model_server's "
                    "--model_name (not for --vertex_endpoint).",
                    group="model", required="unless --vertex_endpoint is given")
    flagutil.define("enum", "signature", "serving_default", list(SIGNATURES), "Signature to call.", group="model")
    flagutil.define("integer", "model_version", None, "Model version to query (default: the latest the server has).",
                    group="model")
    flagutil.define("float", "timeout", 30.0, "Seconds per request.", group="requests")
    flagutil.define("integer", "batch_size", 32, "Images per request (keep <= max_batch_size of batching.config).",
                    group="requests")
    flagutil.define("integer", "retries", 4, "Retries on UNAVAILABLE/DEADLINE_EXCEEDED (HTTP 503/504).",
                    group="requests")
    flagutil.define("integer", "max_image_side", downscale.DEFAULT_MAX_IMAGE_SIDE, "Send a photo whose longer side "
                    "is over this many pixels downscaled to it, as trainer.prepare stores records (fewer bytes, the "
                    "same answer within tolerance); 0: send every file as it is.", group="requests")
    flagutil.define("string", "features_output", None, "With --signature=features: write rows to this .npy "
                    "(paths in a .paths.txt sidecar).", group="outputs")


def _check_numbers(f) -> Optional[str]:
    if f.batch_size < 1:
        return f"--batch_size={f.batch_size}: pass a positive number of images per request"
    if f.timeout <= 0:
        return f"--timeout={f.timeout}: pass a positive number of seconds"
    if f.retries < 0:
        return f"--retries={f.retries}: pass 0 or more"
    if f.max_image_side < 0:
        return f"--max_image_side={f.max_image_side}: pass a side in pixels, or 0 to send files as they are"
    return None


def _check_target(f, inputs: Sequence[str]) -> Optional[str]:
    if f.rest and not f.rest.startswith(("http://", "https://")):
        return f"--rest={f.rest}: pass the REST API's URL, e.g. http://localhost:8501"
    if f.vertex_endpoint and (f.rest or f.model_name or f.model_version is not None):
        return "--vertex_endpoint names the model itself: drop --rest, --model_name and --model_version"
    if f.vertex_endpoint and (f.signature != "serving_default" or inputs in (["metadata"], ["status"])):
        return "a Vertex AI endpoint serves serving_default predictions only: drop --signature and metadata/status"
    if not f.vertex_endpoint and not f.model_name:
        return "--model_name is required: pass the model name of the server's model config (or --vertex_endpoint)"
    return None


def _validate(f, inputs: Sequence[str]) -> Optional[str]:
    """The first usage mistake in the flags and IMAGES, as one line, or None."""
    problem = _check_numbers(f) or _check_target(f, inputs)
    if problem:
        return problem
    if f.features_output and f.signature != "features":
        return "--features_output needs --signature=features"
    if f.features_output and not f.features_output.endswith(".npy"):
        return f"--features_output={f.features_output}: name a .npy file"
    if not inputs:
        return "no IMAGES given: pass image files, globs or folders, or the word metadata or status"
    return None


def build_client(f) -> Client:
    """The client the flags ask for: Vertex AI, TF Serving's REST API, or gRPC."""
    if f.vertex_endpoint:
        return VertexClient(f.vertex_endpoint, api_endpoint=f.api_endpoint, timeout=f.timeout, retries=f.retries)
    if f.rest:
        return RestClient(f.rest, model=f.model_name, version=f.model_version, timeout=f.timeout, retries=f.retries)
    return GrpcClient(f.server, model=f.model_name, version=f.model_version, timeout=f.timeout, retries=f.retries)


def main(argv: Sequence[str]) -> int:
    """Runs the command on the parsed flags; returns the exit status (0: anything was predicted)."""
    inputs = list(argv[1:])
    problem = _validate(FLAGS, inputs)
    if problem:
        flagutil.fail(problem)
    try:
        client = build_client(FLAGS)
    except ValueError as e:  # a malformed endpoint name, no credentials
        flagutil.fail(e)
    try:
        if inputs in (["metadata"], ["status"]):
            return _info(client, inputs[0])
        return _predict_cli(client, inputs, signature=FLAGS.signature, batch_size=FLAGS.batch_size,
                            features_output=FLAGS.features_output, max_image_side=FLAGS.max_image_side)
    finally:
        client.close()


def _info(client: Client, what: str) -> int:
    try:
        out = client.metadata() if what == "metadata" else client.status()
    except ServingError as e:
        if e.code in RETRYABLE:  # the server, not the model, is missing: the same line as predictions get
            raise ServerUnreachable(client, e) from None
        print(f"error: {what} of model {client.model} failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


def _predict_cli(client: Client, inputs: Sequence[str], *, signature: str, batch_size: int,
                 features_output: Optional[str], max_image_side: int = 0) -> int:
    """Prints a JSON line per input; returns the exit status (1: nothing predicted), or raises
    ServerUnreachable once the answers had so far are printed (and their features rows written)."""
    paths, failures = expand_inputs(inputs)
    items, unreadable = read_images(paths, max_image_side=max_image_side)
    for failure in failures + unreadable:  # never sent: each keeps its own line
        logging.warning("skipped %s: %s", failure.path, failure.error)
        print(json.dumps(failure.to_json()), flush=True)
    progress = progress_lib.Progress(len(items), label="predicting", unit="image")  # on stderr: stdout is the results
    predicted, rows, row_paths = 0, [], []
    try:
        for result in predict_images(client, items, signature=signature, batch_size=batch_size):
            progress.add()
            if isinstance(result, Failure):
                logging.warning("failed %s: %s", result.path, result.error)
                print(json.dumps(result.to_json()), flush=True)
                continue
            predicted += 1
            if features_output:
                print(json.dumps({"path": result.path, "row": len(rows)}), flush=True)
                rows.append(result.features)
                row_paths.append(result.path)
            else:
                print(json.dumps(result.to_json()), flush=True)
    finally:
        progress.close()
        if features_output and rows:
            write_features(features_output, rows, row_paths)
    total = len(paths) + len([f for f in failures if f.path not in paths])
    if not predicted:
        print(f"error: nothing predicted: all {total} input(s) failed (see the error lines above)", file=sys.stderr)
        return 1
    logging.info("predicted %d of %d inputs", predicted, total)
    return 0


def run_main() -> None:
    """Console-script entry point (effnet-client)."""
    flagutil.run(main, define_flags, usage=USAGE)


if __name__ == "__main__":
    run_main()
