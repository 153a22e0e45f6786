"""The files around a Vertex AI batch prediction job: the export it runs, its instances, its output.

* `check_export`: an export (gs://.../export/N) the job can serve: assets/labels.txt and a
  `serving_default` that takes `image_bytes` and answers `probabilities`, read from saved_model.pb
  without loading the model.
* `write_instances`: the images of files, globs or folders (local or gs://, listed as
  `trainer.predict` lists them) as JSON Lines under RUN/instances/, one image a line, in shards of
  at most SHARD_BYTES; an image over batch_jobs.MAX_INSTANCE_BYTES is refused before any job
  exists.
* `read_results` and `write_csv`: the job's JSON Lines (trainer.cloud.batch_jobs says their form)
  turned into the CSV `trainer.predict` writes for the same export and images
  (trainer.evaluation.prediction_rows), rows sorted by path as a folder or glob is listed.

TensorFlow loads with this module (tf.io.gfile reads and writes gs://); the command imports it
only once it reads or writes files, so `--dry_run` stays light.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from effnet_common import fileio, flagutil
from serving import rest_client, signatures
from trainer.cloud import batch_jobs
from trainer.cloud.errors import CloudError, check
from trainer.evaluation import prediction_rows
from trainer.inference import exported, prediction

# Lines per instances file at most this many bytes: Vertex AI splits the input between its
# replicas, and no single object grows without bound (no file-size limit is documented).
SHARD_BYTES = 256 * 1024 * 1024
_READ_BATCH = 32


@dataclasses.dataclass(frozen=True)
class ExportFacts:
    """What the CSV needs from an export: its folder, labels and (multi-label) thresholds."""
    export_dir: str
    class_names: Tuple[str, ...]
    thresholds: Optional[np.ndarray]


def check_export(path: str) -> ExportFacts:
    """The export at `path` if a batch prediction job can serve it, else a one-line error.

    Raises:
      CloudError: no saved_model.pb, or no `serving_default(image_bytes) -> probabilities`.
      PredictError: no assets/labels.txt (not an export of this trainer).
    """
    export_dir, class_names = exported.export_class_names(path)
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel
    with tf.io.gfile.GFile(fileio.join(export_dir, "saved_model.pb"), "rb") as f:
        proto = saved_model_pb2.SavedModel.FromString(f.read())
    defs = {name: sig for graph in proto.meta_graphs if "serve" in graph.meta_info_def.tags
            for name, sig in graph.signature_def.items()}
    serve = defs.get(signatures.SERVING_DEFAULT)
    check(serve is not None and set(serve.inputs) == {signatures.IMAGE_KEY} and "probabilities" in serve.outputs,
          f"{export_dir} lacks the signature serving_default(image_bytes) -> probabilities that batch prediction "
          "calls: re-export it with python -m trainer.export --model_dir=MODEL_DIR")
    return ExportFacts(export_dir=export_dir, class_names=class_names,
                       thresholds=exported.export_thresholds(export_dir))


@dataclasses.dataclass(frozen=True)
class Instances:
    """The instance files written: their paths, the images in them, the files left out and why."""
    files: Tuple[str, ...]
    count: int
    skipped: Tuple[Tuple[str, str], ...]


def instance_line(path: str, data: bytes) -> str:
    """One JSON line: the image's path (the job's key field) and the instance the model gets."""
    line = json.dumps({batch_jobs.KEY_FIELD: path, **rest_client.image_instance(data)}) + "\n"
    check(len(line) <= batch_jobs.MAX_INSTANCE_BYTES,
          f"{path} is {len(line) / 1e6:.1f} MB as a Vertex AI instance (base64), over the "
          f"{batch_jobs.MAX_INSTANCE_BYTES / 1e6:.1f} MB Vertex AI accepts per prediction request: downscale it "
          "(--max_image_side, default 1024, does it for you; a few hundred pixels a side is plenty for the network) "
          "or score it locally with trainer.predict")
    return line


def write_instances(*, specs: Sequence[str], run_folder: str, max_image_side: int = 0) -> Instances:
    """Lists and reads the images (a photo over `max_image_side` downscaled by trainer.prepare's
    rule, `effnet_common.downscale`: a phone photo fits Vertex AI's request limit and is seen as
    training saw it), writes RUN/instances/instances-NNNNN.jsonl; on a refusal the files written
    so far are deleted, so a rerun starts clean."""
    folder = fileio.join(run_folder, batch_jobs.INSTANCES_FOLDER)
    check(not tf.io.gfile.exists(folder) or not tf.io.gfile.listdir(folder),
          f"{folder} already holds instances of an earlier run: pass another --display_name (or delete it)")
    paths = prediction.list_inputs(specs)
    written: List[str] = []
    try:
        return _write_shards(paths, folder=folder, written=written, max_image_side=max_image_side)
    except BaseException:
        for path in written:
            tf.io.gfile.remove(path)
        raise


def _write_shards(paths: Sequence[str], *, folder: str, written: List[str], max_image_side: int) -> Instances:
    skipped, count, size, out = [], 0, 0, None
    try:
        for batch in prediction.read_files(list(paths), batch_size=_READ_BATCH, max_image_side=max_image_side):
            for path, data, why in batch:
                if data is None:
                    skipped.append((path, why))
                    continue
                line = instance_line(path, data)
                if out is None or size + len(line) > SHARD_BYTES:
                    out = _next_shard(out, folder=folder, written=written)
                    size = 0
                out.write(line)
                size += len(line)
                count += 1
    finally:
        if out is not None:
            out.close()
    check(count > 0, f"none of the {len(paths)} image(s) could be read (see the warnings above): check the "
          "paths and their permissions")
    return Instances(files=tuple(written), count=count, skipped=tuple(skipped))


def _next_shard(out, *, folder: str, written: List[str]):
    """Closes the current instances file and opens the next (a gs:// object appears when closed)."""
    if out is not None:
        out.close()
    written.append(fileio.join(folder, f"instances-{len(written):05d}.jsonl"))
    return tf.io.gfile.GFile(written[-1], "w")


@dataclasses.dataclass(frozen=True)
class Results:
    """The job's answers: paths (sorted) and their probabilities [N, C], and the failed images."""
    paths: List[str]
    probabilities: np.ndarray
    skipped: List[Tuple[str, str]]


def read_results(directory: str, *, num_classes: int) -> Results:
    """Every JSON Lines file the job wrote under `directory` (its outputInfo.gcsOutputDirectory)."""
    answers: Dict[str, list] = {}
    skipped = []
    names = sorted(n for n in tf.io.gfile.listdir(directory) if "stats" not in n and not n.endswith("/"))
    for name in names:
        for number, text in enumerate(fileio.read_text(fileio.join(directory, name)).splitlines(), 1):
            if not text.strip():
                continue
            key, prediction_value, error = _parse_line(text, where=f"{directory}/{name}:{number}")
            if error is not None:
                skipped.append((key, flagutil.one_line(f"{error.get('status', '')} {error.get('message', '')}")))
            else:
                answers[key] = prediction_value["probabilities"]
    paths = sorted(answers)
    probabilities = np.array([answers[p] for p in paths], np.float32).reshape(len(paths), num_classes)
    return Results(paths=paths, probabilities=probabilities, skipped=sorted(skipped))


def _parse_line(text: str, *, where: str) -> Tuple[str, Optional[dict], Optional[dict]]:
    """(path, prediction, error) of one output line; `instance.path` where Vertex AI kept the instance."""
    try:
        line = json.loads(text)
        key = line["key"] if "key" in line else line["instance"][batch_jobs.KEY_FIELD]
        if "error" in line:
            return key, None, line["error"]
        value = line["prediction"]
        check(isinstance(value, dict) and "probabilities" in value, f"{where}: the prediction has no "
              "probabilities: the model is not served by this trainer's export (serving_default)")
        return key, value, None
    except (ValueError, KeyError, TypeError):
        raise CloudError(f"{where} is not a batch prediction result line ({{\"key\": ..., \"prediction\": ...}}): "
                         "pass the job's own output folder") from None


def write_csv(results: Results, *, export: ExportFacts, output: str, top_k: int) -> List[list]:
    """The CSV `trainer.predict` writes for the same export and images; returns its rows."""
    k = min(top_k, len(export.class_names))
    multi = export.thresholds is not None
    rows = prediction_rows.top_k_rows(results, class_names=export.class_names, top_k=k, thresholds=export.thresholds)
    fileio.write_text_atomic(output, fileio.csv_text(prediction_rows.csv_header(k, multi_label=multi), rows))
    return rows
