"""A TF Serving stand-in: PredictionService + ModelService over gRPC (and REST) on loopback.

This workplace has no `tensorflow_model_server` binary and no Docker, so the client and the
export are tested against this server. It loads each version with `tf.saved_model.load`, reads
the SignatureDefs from saved_model.pb as TF Serving does, replays the export's warmup file at
load (a failing record fails the load), and answers with TF Serving's status codes and
messages, taken from its sources (tensorflow/serving):

* `servables/tensorflow/predict_util.cc` — unknown signature: FAILED_PRECONDITION
  `Serving signature key "X" not found.`; input count or alias mismatch: INVALID_ARGUMENT; with
  --enable_signature_method_name_check a non-predict/classify/regress method name: INTERNAL.
* `servables/tensorflow/classifier.cc` — unknown signature: INVALID_ARGUMENT `No signature was
  found with the name: X`; exactly one input keyed `inputs`; outputs `classes` (string
  [batch, N]) and/or `scores` (float [batch, N]); the method_name check only with the flag.
* `servables/tensorflow/util.cc` — an empty Input: INVALID_ARGUMENT `Input is empty.`
* `core/basic_manager.cc` — unknown model or version: NOT_FOUND `Servable not found for
  request: Latest(name)` / `Specific(name, version)`.
* `servables/tensorflow/get_model_metadata_impl.cc` — metadata_field must be `signature_def`;
  the map is every SignatureDef in the MetaGraphDef (so `__saved_model_init_op` too).
* `model_servers/get_model_status_impl.cc` — NOT_FOUND `Could not find version V of model M` /
  `Could not find any versions of model M`.
* `servables/tensorflow/saved_model_warmup_util.cc` — at most 1000 warmup records; any failure
  fails the load.
* `model_servers/http_server.cc` — REST status codes (INVALID_ARGUMENT and
  FAILED_PRECONDITION 400, NOT_FOUND 404, UNAVAILABLE 503, ...), errors as {"error": msg};
  `g3doc/api_rest.md` — request/response JSON, binary values as {"b64": ...}.
* TF errors from running the graph (an undecodable image) keep their code, as Session::Run's
  status does.

Use in-process (`ModelServer(...).start()`, tests) or as a child process
(`python -m testbed.serving_server --model_name=M --model_base_path=P`, benchmarks and people
trying the client: a separate process, like the real server); the child prints
`READY grpc=PORT rest=PORT` and serves until it is stopped (SIGTERM, or Ctrl-C's SIGINT), as
tensorflow_model_server does, so `&` or `nohup` keep it running; with `--exit_on_stdin_close`
it also stops when its stdin closes, which ties it to a parent that holds the pipe
(`start_subprocess`: tests and benchmarks). Fault injection (`fail_next`: the next calls answer a status code
such as UNAVAILABLE or DEADLINE_EXCEEDED) lets tests check the client's retries without racing a
clock, and `last_time_remaining` (the deadline the last gRPC call arrived with) that the client
sends one.
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures
import http.server
import json
import re
import signal
import socketserver
import sys
import threading
from typing import Dict, List, Optional, Sequence

import grpc
import numpy as np

import trainer  # noqa: F401  # sets TF_USE_LEGACY_KERAS before TensorFlow loads
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_log_pb2,
                                     prediction_service_pb2_grpc)

from serving import signatures
from testbed.signature_defs import read_signature_defs

PREDICT_METHODS = ("tensorflow/serving/predict", "tensorflow/serving/classify", "tensorflow/serving/regress")
MAX_WARMUP_RECORDS = 1000
_STATE = get_model_status_pb2.ModelVersionStatus.State
_GRPC_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_HTTP_BY_CODE = {  # model_servers/http_server.cc ToHTTPStatusCode
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401}


class ServingError(Exception):
    """A failed request: the gRPC status code and TF Serving's message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


class _Servable:
    """One loaded version: the TF2 object and the SignatureDefs TF Serving would read."""

    def __init__(self, name: str, version: int, path: str):
        self.name, self.version, self.path = name, version, path
        self.loaded = tf.saved_model.load(path)
        self.signature_defs = read_signature_defs(path)


# --------------------------------------------------------------------------- request handling

def _model_spec(servable: _Servable, signature_name: str, out) -> None:
    out.name = servable.name
    out.version.value = servable.version
    out.signature_name = signature_name or "serving_default"


def tensor_proto(array: np.ndarray):
    """A TensorProto with values in the typed fields, as TF Serving's gRPC answers (AsProtoField)."""
    array = np.asarray(array)
    is_string = array.dtype == object or array.dtype.kind in "SU"
    proto = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING if is_string else tf.as_dtype(array.dtype).as_datatype_enum)
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    flat = array.ravel()
    if proto.dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif proto.dtype == types_pb2.DT_FLOAT:
        proto.float_val.extend(flat.tolist())
    elif proto.dtype == types_pb2.DT_DOUBLE:
        proto.double_val.extend(flat.tolist())
    elif proto.dtype == types_pb2.DT_INT64:
        proto.int64_val.extend(flat.tolist())
    elif proto.dtype == types_pb2.DT_BOOL:
        proto.bool_val.extend(flat.tolist())
    else:
        proto.int_val.extend(flat.astype(np.int64).tolist())
    return proto


def _run(function, feeds: dict) -> dict:
    try:
        outputs = function(**feeds)
    except tf.errors.OpError as e:
        raise ServingError(_GRPC_BY_NUMBER.get(e.error_code, grpc.StatusCode.UNKNOWN), e.message) from None
    return {k: v.numpy() for k, v in outputs.items()}


def _check_feed(alias: str, info, value: np.ndarray) -> None:
    """What Session::Run rejects when a feed does not match its placeholder."""
    want = tf.as_dtype(info.dtype)
    got = tf.as_dtype(value.dtype) if value.dtype != object else tf.string
    if want != got:
        raise _invalid(f"Expects arg for input {alias} to be {want.name} but {got.name} is provided")
    dims = [d.size for d in info.tensor_shape.dim]
    if not info.tensor_shape.unknown_rank and (
            len(dims) != value.ndim or any(d not in (-1, s) for d, s in zip(dims, value.shape))):
        raise _invalid(f"input {alias} has shape {list(value.shape)} but the signature expects {dims}")


def run_predict(servable: _Servable, request, *, method_name_check: bool):
    """predict_util.cc RunPredict on the loaded SavedModel."""
    name = request.model_spec.signature_name or "serving_default"
    if name not in servable.signature_defs:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.')
    signature = servable.signature_defs[name]
    if method_name_check and signature.method_name not in PREDICT_METHODS:
        raise ServingError(grpc.StatusCode.INTERNAL,
                           f"Expected prediction signature method_name to be one of "
                           f"{{{', '.join(PREDICT_METHODS)}}}. Was: {signature.method_name}")
    sent, wanted = set(request.inputs), set(signature.inputs)
    if len(sent) != len(wanted):
        raise _invalid(f"input size does not match signature: {len(sent)}!={len(wanted)} "
                       f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
                       f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
                       f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.")
    feeds = {}
    for alias, proto in request.inputs.items():
        if alias not in signature.inputs:
            raise _invalid(f"input tensor alias not found in signature: {alias}. Inputs expected to be in "
                           f"the set {{{','.join(sorted(wanted))}}}.")
        try:
            value = tf.make_ndarray(proto)
        except Exception:  # pylint: disable=broad-except  # any unparsable proto
            raise _invalid(f"tensor parsing error: {alias}") from None
        _check_feed(alias, signature.inputs[alias], value)
        feeds[alias] = tf.constant(value, dtype=tf.as_dtype(signature.inputs[alias].dtype))
    aliases = list(request.output_filter) or list(signature.outputs)
    for alias in request.output_filter:
        if alias not in signature.outputs:
            raise _invalid(f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                           f"the set {{{','.join(sorted(signature.outputs))}}}.")
    if len(set(aliases)) != len(aliases):
        raise _invalid(f"duplicate output tensor alias: {aliases}")
    outputs = _run(servable.loaded.signatures[name], feeds)
    response = predict_pb2.PredictResponse()
    _model_spec(servable, name, response.model_spec)
    for alias in aliases:
        response.outputs[alias].CopyFrom(tensor_proto(outputs[alias]))
    return response


def _classification_signature(servable: _Servable, name: str, *, method_name_check: bool):
    """classifier.cc GetClassificationSignatureDef + PreProcessClassification."""
    if name not in servable.signature_defs:
        raise _invalid(f"No signature was found with the name: {name}")
    signature = servable.signature_defs[name]
    if method_name_check and signature.method_name != signatures.CLASSIFY_METHOD_NAME:
        raise _invalid(f"Expected classification signature method_name to be "
                       f"{signatures.CLASSIFY_METHOD_NAME}. Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise _invalid("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise _invalid(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if "inputs" not in signature.inputs:
        raise _invalid(f"No classification inputs found in SignatureDef: {signature}")
    if "classes" not in signature.outputs and "scores" not in signature.outputs:
        raise _invalid('Expected classification signature outputs to contain at least one of "classes" '
                       f'or "scores". Signature was: {signature}')
    return signature


def _serialized_examples(request_input) -> List[bytes]:
    """util.cc InputToSerializedExampleTensor."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        context = request_input.example_list_with_context.context.SerializeToString()
        examples = [context + e.SerializeToString() for e in request_input.example_list_with_context.examples]
    else:
        examples = []
    if not examples:
        raise _invalid("Input is empty.")
    return examples


def _check_classify_output(key: str, value: np.ndarray, *, dtype: str, batch: int) -> None:
    """classifier.cc PostProcessClassificationResult."""
    if value.ndim != 2:
        raise _invalid(f"Expected Tensor shape: [batch_size num_classes] but got {list(value.shape)}")
    is_string = value.dtype == object
    if (dtype == "string") != is_string or (dtype == "float" and value.dtype != np.float32):
        raise _invalid(f"Expected {key} Tensor of DT_{dtype.upper()}. Got: {value.dtype}")
    if value.shape[0] != batch:
        raise _invalid(f"Expected {key} output batch size of {batch}. Got: {value.shape[0]}")


def run_classify(servable: _Servable, request, *, method_name_check: bool):
    """classifier.cc RunClassify on the loaded SavedModel."""
    name = request.model_spec.signature_name or "serving_default"
    signature = _classification_signature(servable, name, method_name_check=method_name_check)
    examples = _serialized_examples(request.input)
    outputs = _run(servable.loaded.signatures[name], {"inputs": tf.constant(examples, dtype=tf.string)})
    classes, scores = outputs.get("classes"), outputs.get("scores")
    if classes is not None:
        _check_classify_output("classes", classes, dtype="string", batch=len(examples))
    if scores is not None:
        _check_classify_output("scores", scores, dtype="float", batch=len(examples))
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise _invalid(f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. "
                       f"{scores.shape[1]}")
    response = classification_pb2.ClassificationResponse()
    _model_spec(servable, request.model_spec.signature_name, response.model_spec)
    width = (classes if classes is not None else scores).shape[1]
    for i in range(len(examples)):
        row = response.result.classifications.add()
        for c in range(width):
            cls = row.classes.add()
            if classes is not None:
                cls.label = classes[i, c].decode("utf-8", "replace")
            if scores is not None:
                cls.score = float(scores[i, c])
    return response


def replay_warmup(servable: _Servable, *, method_name_check: bool) -> int:
    """saved_model_warmup_util.cc: every record must run; returns how many ran."""
    path = f"{servable.path}/assets.extra/{signatures.WARMUP_FILENAME}"
    if not tf.io.gfile.exists(path):
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        try:
            log = prediction_log_pb2.PredictionLog.FromString(record)
        except Exception:  # pylint: disable=broad-except  # DecodeError
            raise _invalid(f"Failed to parse warmup record from {path}") from None
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            run_predict(servable, log.predict_log.request, method_name_check=method_name_check)
        elif kind == "classify_log":
            run_classify(servable, log.classify_log.request, method_name_check=method_name_check)
        else:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported log_type for warmup: {kind}")
        count += 1
        if count > MAX_WARMUP_RECORDS:
            raise _invalid(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
    return count


# --------------------------------------------------------------------------- the model manager

class ModelServer:
    """Serves the latest numeric version under each model's base path, like tensorflow_model_server
    with its default version policy.

    Args:
      models: model name -> base path (the folder holding numeric version folders).
      enable_signature_method_name_check: TF Serving's flag of the same name.
      rest: also answer TF Serving's REST API on another loopback port.
    """

    def __init__(self, *, models: Dict[str, str], enable_signature_method_name_check: bool = False,
                 rest: bool = False):
        self._bases = dict(models)
        self.method_name_check = enable_signature_method_name_check
        self._rest_enabled = rest
        self._lock = threading.Lock()
        self._servables: Dict[str, Dict[int, _Servable]] = {name: {} for name in models}
        self._states: Dict[str, Dict[int, tuple]] = {name: {} for name in models}
        self._faults: List[grpc.StatusCode] = []
        self.calls: Dict[str, int] = {}
        self.warmup_counts: Dict[tuple, int] = {}
        self.last_time_remaining: Optional[float] = None  # seconds left of the last gRPC call's deadline
        self._grpc = None
        self._http = None
        self.port = self.rest_port = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def start(self) -> "ModelServer":
        self.poll()
        self._grpc = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8), options=[
            ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(self), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self), self._grpc)
        self.port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        if self._rest_enabled:
            self._http = _RestServer(("127.0.0.1", 0), _RestHandler)
            self._http.model_server = self
            self.rest_port = self._http.server_address[1]
            threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- versions

    def poll(self) -> None:
        """One poll of the file system: load new aspired versions, then unload old ones.

        As TF Serving's AvailabilityPreservingPolicy (core/availability_preserving_policy.cc):
        an old version is unloaded only once an aspired version is available, so a new version
        that fails to load leaves the previous one serving.
        """
        for name, base in self._bases.items():
            found = sorted(int(n.rstrip("/")) for n in tf.io.gfile.listdir(base)
                           if re.fullmatch(r"\d+", n.rstrip("/"))) if tf.io.gfile.isdir(base) else []
            aspired = found[-1:]
            for version in aspired:
                if version not in self._states[name]:
                    self._load(name, version, f"{base.rstrip('/')}/{version}")
            with self._lock:
                loaded = self._servables[name]
                unaspired = sorted(v for v in loaded if v not in aspired)
                if aspired and not any(v in loaded for v in aspired):
                    unaspired = unaspired[:-1]  # no aspired version serves: keep the newest old one
                for version in unaspired:
                    del loaded[version]
                    self._states[name][version] = (_STATE.END, None)

    def _load(self, name: str, version: int, path: str) -> None:
        with self._lock:
            self._states[name][version] = (_STATE.LOADING, None)
        try:
            servable = _Servable(name, version, path)
            self.warmup_counts[(name, version)] = replay_warmup(
                servable, method_name_check=self.method_name_check)
        except ServingError as e:
            with self._lock:
                self._states[name][version] = (_STATE.END, e)
            return
        except Exception as e:  # pylint: disable=broad-except  # any load failure ends the version
            with self._lock:
                self._states[name][version] = (_STATE.END, ServingError(grpc.StatusCode.UNKNOWN, str(e)))
            return
        with self._lock:
            self._servables[name][version] = servable
            self._states[name][version] = (_STATE.AVAILABLE, None)

    def load_error(self, name: str, version: int) -> Optional[ServingError]:
        return self._states.get(name, {}).get(version, (None, None))[1]

    def servable(self, model_spec) -> _Servable:
        """ServerCore::GetServableHandle: the asked version, or the latest available one."""
        if model_spec.version_label:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Unrecognized servable version label: {model_spec.version_label}")
        with self._lock:
            loaded = self._servables.get(model_spec.name, {})
            if model_spec.HasField("version"):
                servable = loaded.get(model_spec.version.value)
                wanted = f"Specific({model_spec.name}, {model_spec.version.value})"
            else:
                servable = loaded[max(loaded)] if loaded else None
                wanted = f"Latest({model_spec.name})"
        if servable is None:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {wanted}")
        return servable

    def version_states(self, name: str) -> Dict[int, tuple]:
        with self._lock:
            return dict(self._states.get(name, {}))

    # -- fault injection

    def fail_next(self, count: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        """The next `count` Predict/Classify calls fail with `code` before doing anything."""
        with self._lock:
            self._faults.extend([code] * count)

    def before_call(self, method: str) -> None:
        with self._lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            raise ServingError(fault, "injected fault")

    # -- the API, shared by gRPC and REST

    def _run_on_servable(self, method: str, runner, request):
        self.before_call(method)
        if not request.HasField("model_spec"):
            raise _invalid("Missing ModelSpec")
        return runner(self.servable(request.model_spec), request, method_name_check=self.method_name_check)

    def predict(self, request):
        return self._run_on_servable("Predict", run_predict, request)

    def classify(self, request):
        return self._run_on_servable("Classify", run_classify, request)

    def get_model_metadata(self, request):
        self.calls["GetModelMetadata"] = self.calls.get("GetModelMetadata", 0) + 1
        if not request.HasField("model_spec"):
            raise _invalid("Missing ModelSpec")
        if not request.metadata_field:
            raise _invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise _invalid(f"Metadata field {field} is not supported")
        servable = self.servable(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in servable.signature_defs.items():
            sig_map.signature_def[key].CopyFrom(value)
        response.metadata["signature_def"].Pack(sig_map)
        return response

    def get_model_status(self, request):
        self.calls["GetModelStatus"] = self.calls.get("GetModelStatus", 0) + 1
        if not request.HasField("model_spec"):
            raise _invalid("Missing ModelSpec")
        name = request.model_spec.name
        states = self.version_states(name)
        if request.model_spec.HasField("version"):
            version = request.model_spec.version.value
            if version not in states:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")
            states = {version: states[version]}
        elif not states:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, (state, error) in sorted(states.items()):
            status = response.model_version_status.add(version=version, state=state)
            if error is not None:
                status.status.error_code = error.code.value[0]
                status.status.error_message = error.message
        return response


def _grpc_method(method):
    def handler(self, request, context):
        self.server.last_time_remaining = context.time_remaining()
        try:
            return method(self.server, request)
        except ServingError as e:
            context.abort(e.code, e.message)
    return handler


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, server: ModelServer):
        self.server = server

    Predict = _grpc_method(ModelServer.predict)
    Classify = _grpc_method(ModelServer.classify)
    GetModelMetadata = _grpc_method(ModelServer.get_model_metadata)


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, server: ModelServer):
        self.server = server

    GetModelStatus = _grpc_method(ModelServer.get_model_status)


# --------------------------------------------------------------------------- REST

_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                        r"(?:(?P<metadata>/metadata)|:(?P<verb>predict|classify))?$")


def _from_json_value(value):
    """JSON value -> numpy-ready Python value; {"b64": ...} -> bytes (api_rest.md)."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        raise _invalid(f"unexpected JSON object {sorted(value)} where a tensor value was expected")
    if isinstance(value, list):
        return [_from_json_value(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def _to_json_value(value: np.ndarray, *, binary: bool):
    if value.dtype == object:
        flat = [{"b64": base64.b64encode(v).decode()} if binary else v.decode("utf-8", "replace")
                for v in value.ravel()]
        return np.array(flat, dtype=object).reshape(value.shape).tolist()
    return value.tolist()


def _fill_spec(spec, *, name: str, version: Optional[int], signature: str = "") -> None:
    """The ModelSpec a REST URL (/v1/models/NAME[/versions/N]) and body stand for."""
    spec.name = name
    if version is not None:
        spec.version.value = version
    spec.signature_name = signature


def predict_request_from_json(body: dict, *, name: str, version: Optional[int]):
    """The PredictRequest a REST predict body stands for, and whether it used the row format."""
    request = predict_pb2.PredictRequest()
    _fill_spec(request.model_spec, name=name, version=version, signature=body.get("signature_name", ""))
    if ("instances" in body) == ("inputs" in body):
        raise _invalid('JSON request must have exactly one of "instances" (row format) or "inputs" (columnar)')
    row = "instances" in body
    data = body["instances"] if row else body["inputs"]
    if row:
        if not isinstance(data, list) or not data:
            raise _invalid('"instances" must be a non-empty list')
        named = all(isinstance(d, dict) and set(d) != {"b64"} for d in data)
        columns = ({k: [d[k] for d in data] for k in data[0]} if named else {None: data})
    else:
        columns = data if isinstance(data, dict) and set(data) != {"b64"} else {None: data}
    for alias, values in columns.items():
        value = np.array(_from_json_value(values), dtype=object)
        if value.dtype == object and value.size and not isinstance(value.ravel()[0], bytes):
            value = np.array(value.tolist())
        if alias is None:
            alias = _only_input(request)
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return request, row


def _only_input(request) -> str:
    # A single unnamed input: TF Serving maps it to the signature's only input; the server
    # resolves that from the SignatureDef when the request runs. Here: our signatures' key.
    sig = request.model_spec.signature_name or "serving_default"
    return signatures.EXAMPLE_KEY if sig == signatures.CLASSIFY else signatures.IMAGE_KEY


def classify_request_from_json(body: dict, *, name: str, version: Optional[int]):
    request = classification_pb2.ClassificationRequest()
    _fill_spec(request.model_spec, name=name, version=version, signature=body.get("signature_name", ""))
    for example in body.get("examples", []):
        proto = request.input.example_list.examples.add()
        for key, value in example.items():
            values = value if isinstance(value, list) else [value]
            values = [_from_json_value(v) for v in values]
            feature = proto.features.feature[key]
            if all(isinstance(v, bytes) for v in values):
                feature.bytes_list.value.extend(values)
            elif all(isinstance(v, int) for v in values):
                feature.int64_list.value.extend(values)
            else:
                feature.float_list.value.extend(float(v) for v in values)
    return request


class _RestServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    model_server: ModelServer


class _RestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self):
        match = _REST_PATH.match(self.path)
        if not match:
            raise _invalid(f"Malformed request: {self.command} {self.path}")
        version = int(match.group("version")) if match.group("version") else None
        return match, match.group("name"), version

    def do_GET(self):  # noqa: N802  # http.server's naming
        try:
            match, name, version = self._route()
            if match.group("verb"):
                raise _invalid(f"Malformed request: GET {self.path}")
            server: ModelServer = self.server.model_server
            if match.group("metadata"):
                request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
                _fill_spec(request.model_spec, name=name, version=version)
                out = server.get_model_metadata(request)
            else:
                request = get_model_status_pb2.GetModelStatusRequest()
                _fill_spec(request.model_spec, name=name, version=version)
                out = server.get_model_status(request)
            self._send(200, json_format.MessageToDict(out, preserving_proto_field_name=True))
        except ServingError as e:
            self._send(_HTTP_BY_CODE[e.code], {"error": e.message})

    def do_POST(self):  # noqa: N802
        try:
            match, name, version = self._route()
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            except ValueError as e:
                raise _invalid(f"JSON Parse error: {e}") from None
            server: ModelServer = self.server.model_server
            if match.group("verb") == "predict":
                request, row = predict_request_from_json(body, name=name, version=version)
                self._send(200, _predict_json(server.predict(request), row=row))
            elif match.group("verb") == "classify":
                response = server.classify(classify_request_from_json(body, name=name, version=version))
                self._send(200, {"results": [[[c.label, c.score] for c in r.classes]
                                             for r in response.result.classifications]})
            else:
                raise _invalid(f"Malformed request: POST {self.path}")
        except ServingError as e:
            self._send(_HTTP_BY_CODE[e.code], {"error": e.message})


def _predict_json(response, *, row: bool) -> dict:
    outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    values = {k: _to_json_value(v, binary=k.endswith("_bytes")) for k, v in outputs.items()}
    if not row:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    batch = len(next(iter(values.values())))
    return {"predictions": [{k: v[i] for k, v in values.items()} for i in range(batch)]}


# --------------------------------------------------------------------------- child process

def start_subprocess(*, model_name: str, model_base_path: str, rest: bool = False,
                     extra_args: Sequence[str] = (), env: Optional[dict] = None):
    """Starts the server in a child process that stops when its stdin (`proc.stdin`) is closed,
    or with this process; returns (process, grpc address, rest url)."""
    import os  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    cmd = [sys.executable, "-m", "testbed.serving_server", f"--model_name={model_name}",
           f"--model_base_path={model_base_path}", "--exit_on_stdin_close", *(["--rest"] if rest else []),
           *extra_args]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            env=env)
    for line in proc.stdout:
        if line.startswith("READY"):
            fields = dict(f.split("=") for f in line.split()[1:])
            rest_url = f"http://127.0.0.1:{fields['rest']}" if fields.get("rest", "None") != "None" else None
            return proc, f"127.0.0.1:{fields['grpc']}", rest_url
    raise RuntimeError(f"the serving test server exited with status {proc.wait()} before it was ready")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--rest", action="store_true")
    parser.add_argument("--enable_signature_method_name_check", action="store_true")
    parser.add_argument("--exit_on_stdin_close", action="store_true",
                        help="also stop when stdin closes (a parent holding the pipe: tests, benchmarks)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda signum, _frame: stop.set())
    server = ModelServer(models={args.model_name: args.model_base_path}, rest=args.rest,
                         enable_signature_method_name_check=args.enable_signature_method_name_check).start()
    print(f"READY grpc={server.port} rest={server.rest_port}", flush=True)
    if args.exit_on_stdin_close:
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.wait(1.0):  # a timed wait, so that the signal handler runs promptly
        pass
    server.stop()
    print("stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
