"""A Vertex AI batch prediction job on an export: its checks and its BatchPredictionJob body. Pure.

The job reads JSON Lines, one image a line, `{"path": "gs://B/x.jpg", "image_bytes": {"b64": ...}}`
(trainer.cloud.batch_files writes them). `instanceConfig.keyField = "path"` keeps the path out of
what the model gets, so the prebuilt TensorFlow container (TF Serving) receives
`{"instances": [{"image_bytes": {"b64": ...}}, ...]}`, exactly what online prediction sends to
the export's `serving_default`, and each output line carries the path back as `key`:
`{"key": "gs://B/x.jpg", "prediction": {"probabilities": [...], "classes": [...], "scores": [...]}}`
or, for an image the model refused, `{"key": ..., "error": {"status": ..., "message": ...}}`
(aiplatform v1 `BatchPredictionJob.InstanceConfig.key_field`; the output line is the REST
reference's `PredictionResult`). Batch prediction does not autoscale: it runs at
`startingReplicaCount` (docs/cloud.md, "Batch prediction").
"""
from __future__ import annotations

import datetime
from typing import Optional

from trainer.cloud import jobs, machines
from trainer.cloud.errors import check

KEY_FIELD = "path"
INSTANCES_FOLDER = "instances"
# Images per request to the prediction container: Vertex AI's own default
# (aiplatform v1 ManualBatchTuningParameters.batch_size: "The default value is 64").
DEFAULT_BATCH_SIZE = 64
# One instance (one image, base64, with its path) at most: the request size Vertex AI documents for
# its prediction service, 1.5 MB (`gcloud ai endpoints predict`: "the payload limit size
# (currently, 1.5MB)"). No separate byte limit is documented for batch prediction's requests, which
# reach the same container; an image that could not go to an endpoint is refused here too.
MAX_INSTANCE_BYTES = 1_500_000
TERMINAL_SUCCESS = "JOB_STATE_SUCCEEDED"


def default_display_name() -> str:
    """effnet-batch-UTCTIME: a new run folder (and job name) for every run."""
    return f"effnet-batch-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"


def model_name(*, project: str, region: str, model: str) -> str:
    """`projects/P/locations/R/models/ID[@VERSION]` from an ID or a full name of the same project and region."""
    if "/" not in model:
        check(model.split("@")[0].isdigit(), f"--model={model}: pass the model's numeric ID or its resource name, "
              f"projects/{project}/locations/{region}/models/ID")
        return f"projects/{project}/locations/{region}/models/{model}"
    parts = model.strip("/").split("/")
    check(len(parts) == 6 and parts[0::2] == ["projects", "locations", "models"] and parts[3] == region,
          f"--model={model}: pass projects/{project}/locations/{region}/models/ID (the job runs in --region)")
    return model.strip("/")


def run_dir(*, output_dir: str, display_name: str) -> str:
    """OUTPUT_DIR/DISPLAY_NAME: this run's instances, Vertex AI's output and the CSV."""
    return f"{output_dir.rstrip('/')}/{display_name}"


def instances_uri(folder: str) -> str:
    """The gcsSource wildcard of a run's instance files (batch_files.write_instances names them)."""
    return f"{folder}/{INSTANCES_FOLDER}/instances-*.jsonl"


def build_batch_prediction_job(*, display_name: str, model: str, run_folder: str, machine_type: str,
                               starting_replica_count: int, batch_size: int = DEFAULT_BATCH_SIZE) -> dict:
    """The BatchPredictionJob REST resource (v1): JSON Lines in, JSON Lines out under `run_folder`."""
    check(0 < len(display_name) <= 128, "--display_name must have 1 to 128 characters")
    check(bool(jobs.BUCKET_URL.fullmatch(run_folder)), f"--output_dir: {run_folder} is not a gs:// URL: pass "
          "--output_dir=gs://BUCKET/PATH (Vertex AI reads the instances and writes its output there)")
    check(bool(machines.PREDICTION_MACHINES.fullmatch(machine_type)), f"--machine_type={machine_type} is not a "
          "Vertex AI prediction machine type such as n1-standard-4 or e2-standard-4")
    check(starting_replica_count >= 1, f"--starting_replica_count={starting_replica_count}: pass 1 or more "
          "(batch prediction runs this many machines from start to end; it does not autoscale)")
    check(batch_size >= 1, f"--batch_size={batch_size}: pass 1 or more")
    return {
        "displayName": display_name, "model": model,
        "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [instances_uri(run_folder)]}},
        "instanceConfig": {"instanceType": "object", "keyField": KEY_FIELD},
        "outputConfig": {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix": run_folder}},
        "dedicatedResources": {"machineSpec": {"machineType": machine_type},
                               "startingReplicaCount": starting_replica_count,
                               "maxReplicaCount": starting_replica_count},
        "manualBatchTuningParameters": {"batchSize": batch_size},
        "labels": {"app": "effnet-trainer"}}


def describe_progress(job: dict) -> str:
    """`JOB_STATE_RUNNING: 120 done, 2 failed, 878 to go` from a polled job (its completionStats,
    int64 counts that the REST API spells as strings); the state alone until Vertex AI counts."""
    state = job.get("state", "JOB_STATE_UNSPECIFIED")
    stats = job.get("completionStats")
    if not stats:
        return state
    done, failed = int(stats.get("successfulCount", 0)), int(stats.get("failedCount", 0))
    left = int(stats.get("incompleteCount", -1))
    return f"{state}: {done} done, {failed} failed" + (f", {left} to go" if left >= 0 else "")


def output_directory(job: dict) -> Optional[str]:
    """Where a finished job wrote its JSON Lines (outputInfo.gcsOutputDirectory), or None."""
    return job.get("outputInfo", {}).get("gcsOutputDirectory")


def console_url(name: str) -> str:
    """The console page of projects/P/locations/R/batchPredictionJobs/ID."""
    _, project, _, region, _, job_id = name.split("/")
    return f"https://console.cloud.google.com/vertex-ai/locations/{region}/batch-predictions/{job_id}?project={project}"
