"""`trainer.predict --runner=...`: batch prediction as an Apache Beam pipeline around RunInference.

Beam's own TensorFlow handlers load a Keras model and call it on stacked arrays; a serving export
is answered through its signatures on image bytes, as TF Serving answers it. `ExportModelHandler`
does that: each worker loads the export once (`exported.load_export`, tf.saved_model.load), and
every batch RunInference forms goes through `prediction.predict_batch`, the local path's own call
of `serving_default` (and `features`), with its rule for bad images (the batch fails, the images
are tried one by one and the undecodable ones skipped with the decoder's reason). So the rows are
the local path's rows (`prediction_rows.top_k_rows`), the features its features.

The launching machine lists the inputs (`prediction.list_inputs`: same files, same one-line
errors as the local path) and hands the list to the workers as a file under the pipeline's
temp_location. Outputs: the CSV at --output (one file, its rows in no particular order, each
with its path), the skipped images with their reasons beside it (`NAME.skipped.csv`), and with
--features_output=PREFIX the features as `PREFIX-NNNNN-of-NNNNN.tfrecord`
(`trainer.inference.feature_shards` reads them back).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from effnet_common import fileio
from trainer.beam import options as beam_options
from trainer.evaluation import prediction_rows
from trainer.inference import exported, feature_shards, prediction

_NAMESPACE = "effnet_trainer"
_ROWS, _SKIPPED = "rows", "skipped"


@dataclasses.dataclass(frozen=True)
class Answer:
    """The export's answer for one image, or why it has none."""
    path: str
    probabilities: Optional[np.ndarray] = None
    features: Optional[np.ndarray] = None
    reason: str = ""


def answer_batch(export: exported.Export, batch: Sequence[Tuple[str, Optional[bytes], str]], *,
                 with_features: bool) -> List[Answer]:
    """One Answer per (path, bytes or None, why not), in batch order: the local path's call."""
    readable = [(path, data) for path, data, _ in batch if data is not None]
    result = prediction.predict_batch(export, [p for p, _ in readable], [d for _, d in readable],
                                      with_features=with_features)
    reasons = {path: why for path, data, why in batch if data is None}
    reasons.update(dict(result.skipped))
    row = {path: i for i, path in enumerate(result.keys)}
    return [Answer(path=path, reason=reasons[path]) if path in reasons else
            Answer(path=path, probabilities=result.probabilities[row[path]],
                   features=result.features[row[path]] if with_features else None)
            for path, _, _ in batch]


class ExportModelHandler(ModelHandler):
    """RunInference's handler of a serving export: loaded once per worker, batches of image bytes
    into `serving_default` (and `features`)."""

    def __init__(self, export_dir: str, *, with_features: bool, batch_size: int):
        super().__init__(min_batch_size=1, max_batch_size=batch_size)
        self._export_dir = export_dir
        self._with_features = with_features

    def load_model(self) -> exported.Export:
        return exported.load_export(self._export_dir)

    def run_inference(self, batch, model, inference_args=None) -> Iterable:
        return [PredictionResult(example=answer.path, inference=answer)
                for answer in answer_batch(model, batch, with_features=self._with_features)]

    def get_num_bytes(self, batch) -> int:
        return sum(len(data or b"") for _, data, _ in batch)

    def get_metrics_namespace(self) -> str:
        return _NAMESPACE


@dataclasses.dataclass(frozen=True)
class Request:
    """What one pipeline predicts and where it writes."""
    export_dir: str
    output: str
    features_output: Optional[str]
    top_k: int
    batch_size: int
    max_image_side: int

    @property
    def skipped_output(self) -> str:
        """NAME.skipped.csv beside the CSV (path,reason)."""
        stem = self.output[:-4] if self.output.lower().endswith(".csv") else self.output
        return stem + ".skipped.csv"


@dataclasses.dataclass(frozen=True)
class Summary:
    rows: Optional[int]  # None where the runner reports no metrics
    skipped: List[Tuple[str, str]]
    dry_run_steps: Tuple[str, ...] = ()


def predict(settings: beam_options.BeamSettings, request: Request, *, specs: Sequence[str]) -> Summary:
    """Lists the inputs here, predicts them on the Beam runner; returns the counts and skips.

    Raises:
      PredictError: as the local path (no export, inputs matching nothing, none readable).
    """
    export_dir = exported.resolve_export_dir(request.export_dir)
    request = dataclasses.replace(request, export_dir=export_dir)
    if settings.dry_run:
        pipeline = build_pipeline(settings, request, paths_file=fileio.join(beam_options.work_root(settings), "paths"))
        result = beam_options.run(pipeline, settings=settings, what="predict", job_file=settings.job_file)
        return Summary(rows=0, skipped=[], dry_run_steps=tuple(beam_options.step_names(beam_options.job_graph(result))))
    paths = prediction.list_inputs(specs)
    with beam_options.WorkDir(settings, prefix="effnet-predict") as work:
        fileio.write_text_atomic(work.path("paths.jsonl"), "".join(json.dumps(p) + "\n" for p in paths))
        pipeline = build_pipeline(settings, request, paths_file=work.path("paths.jsonl"))
        result = beam_options.run(pipeline, settings=settings, what="predict")
    skipped = [tuple(row) for row in csv.reader(io.StringIO(fileio.read_text(request.skipped_output)))][1:]
    rows = _counter(result, _ROWS)
    if rows == 0 or (rows is None and len(skipped) == len(paths)):
        raise exported.PredictError(f"none of the {len(paths)} input image(s) could be read or decoded (see "
                                    f"{request.skipped_output}): pass {fileio.IMAGE_FORMATS_TEXT} files")
    return Summary(rows=rows, skipped=skipped)


def build_pipeline(settings: beam_options.BeamSettings, request: Request, *, paths_file: str):
    """paths (JSON lines) -> bytes -> RunInference -> CSV rows, skipped rows, feature shards."""
    _, class_names = exported.export_class_names(request.export_dir)
    thresholds = exported.export_thresholds(request.export_dir)
    k = min(request.top_k, len(class_names))
    handler = ExportModelHandler(request.export_dir, with_features=bool(request.features_output),
                                 batch_size=request.batch_size)
    pipeline = beam_options.new_pipeline(settings)
    answers = (pipeline
               | "ReadPaths" >> beam.io.ReadFromText(paths_file, validate=False)
               | "Spread" >> beam.Reshuffle()
               | "ReadImages" >> beam.Map(read_line, max_image_side=request.max_image_side)
               | "RunInference" >> RunInference(handler)
               | "Answers" >> beam.Map(lambda result: result.inference))
    scored = answers | "Scored" >> beam.Filter(lambda answer: not answer.reason)
    header = csv_line(prediction_rows.csv_header(k, multi_label=thresholds is not None))
    _ = (scored | "CsvRows" >> beam.Map(row_line, class_names=class_names, top_k=k, thresholds=thresholds)
         | "WriteCsv" >> beam.io.WriteToText(request.output, shard_name_template="", header=header))
    _ = (answers | "Skipped" >> beam.Filter(lambda answer: bool(answer.reason))
         | "SkippedRows" >> beam.Map(skipped_line)
         | "WriteSkipped" >> beam.io.WriteToText(request.skipped_output, shard_name_template="",
                                                 header=csv_line(["path", "reason"])))
    if request.features_output:
        _ = (scored | "FeatureRecords" >> beam.Map(lambda a: feature_shards.feature_record(a.path, a.features))
             | "WriteFeatures" >> beam.io.WriteToTFRecord(request.features_output,
                                                          file_name_suffix=feature_shards.SUFFIX))
    return pipeline


def read_line(line: str, *, max_image_side: int) -> Tuple[str, Optional[bytes], str]:
    """A JSON path line -> (path, bytes or None, why not), the local path's read."""
    path = json.loads(line)
    return (path, *prediction.read_image(path, max_image_side))


def row_line(answer: Answer, *, class_names: Sequence[str], top_k: int,
             thresholds: Optional[np.ndarray]) -> str:
    """The local path's CSV row of one image (`prediction_rows.top_k_rows`), as one CSV line."""
    Metrics.counter(_NAMESPACE, _ROWS).inc()
    one = prediction.Predictions(paths=[answer.path], probabilities=answer.probabilities[None], features=None,
                                 skipped=[])
    return csv_line(prediction_rows.top_k_rows(one, class_names=class_names, top_k=top_k, thresholds=thresholds)[0])


def skipped_line(answer: Answer) -> str:
    Metrics.counter(_NAMESPACE, _SKIPPED).inc()
    return csv_line([answer.path, answer.reason])


def csv_line(values: Sequence) -> str:
    """One CSV line without its newline, quoted as `fileio.csv_text` quotes."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(values)
    return buf.getvalue()


def _counter(result, name: str) -> Optional[int]:
    """A counter's committed total (attempted where the runner commits none), or None."""
    from apache_beam.metrics.metric import MetricsFilter
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(_NAMESPACE).with_name(name))["counters"]
    except (NotImplementedError, AttributeError):
        return None
    if not counters:
        return 0
    return sum((c.committed if c.committed is not None else c.attempted) or 0 for c in counters)
