#!/usr/bin/env python3
"""Deploys an export to a Vertex AI endpoint: upload it as a Model, then deploy it.

    python scripts/deploy_vertex.py --project=P --region=R --export=gs://B/run/model/export/N \
        --display_name=NAME [--endpoint=ID] [--machine_type=n1-standard-4] \
        [--min_replica_count=1] [--max_replica_count=1] [--dry_run]

The Model runs in Vertex AI's prebuilt TensorFlow prediction container, which is TF Serving:
`artifactUri` is the version folder holding saved_model.pb, and online predictions call its
`serving_default` signature with `{"instances": [{"image_bytes": {"b64": ...}}]}` (python -m
serving.client --vertex_endpoint=... sends exactly that). Without --endpoint a new endpoint named
after the model is created. Each step is a long-running operation that is polled until done;
--dry_run prints `{"model": Model, "deployedModel": DeployedModel}` as the REST API spells them
and reads or sends nothing remote. The REST calls, credentials and errors are submit_job.py's.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Optional

_SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_SCRIPTS, os.path.dirname(_SCRIPTS)]  # submit_job beside; serving/ in the checkout
import submit_job  # noqa: E402  # pylint: disable=wrong-import-position  # the shared REST plumbing
from submit_job import SubmitError, _check  # noqa: E402  # pylint: disable=wrong-import-position
from effnet_common import versions  # noqa: E402  # pylint: disable=wrong-import-position  # pure Python

# Vertex AI's newest prebuilt TensorFlow prediction container (TF Serving inside); the export's
# ops are plain TF ones, which older TF Serving releases load.
PREDICTION_IMAGE = "{prefix}-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
PREDICTION_MACHINES = re.compile(r"(n1-(standard|highmem|highcpu)|n2-(standard|highmem|highcpu)|e2-(standard|highmem"
                                 r"|highcpu)|c2-standard|n2d-(standard|highmem|highcpu))-\d+")
_EXPORT = re.compile(rf"gs://[a-z0-9][a-z0-9._-]{{1,220}}[a-z0-9]/(.+/)?{versions.VERSION_PATTERN}/?")
PLACEHOLDER_MODEL = "projects/{project}/locations/{region}/models/UPLOADED_MODEL_ID"


def build_model(*, display_name: str, export: str, region: str) -> dict:
    """The Model resource for models.upload: the export in the prebuilt TensorFlow container."""
    _check(bool(_EXPORT.fullmatch(export)), f"--export={export}: pass the gs:// URL of one numeric export version, "
           "e.g. gs://BUCKET/run/model/export/1 (the folder holding saved_model.pb)")
    _check(0 < len(display_name) <= 128, "--display_name must have 1 to 128 characters")
    prefix = "europe" if region.startswith("europe") else "asia" if region.startswith(("asia", "australia")) else "us"
    return {"displayName": display_name, "artifactUri": export.rstrip("/"),
            "containerSpec": {"imageUri": PREDICTION_IMAGE.format(prefix=prefix)},
            "labels": {"app": "effnet-trainer"}}


def build_deployed_model(*, display_name: str, model: str, machine_type: str, min_replica_count: int,
                         max_replica_count: int) -> dict:
    """The DeployedModel for endpoints.deployModel: dedicated machines, autoscaled between min and max."""
    _check(bool(PREDICTION_MACHINES.fullmatch(machine_type)), f"--machine_type={machine_type} is not a Vertex AI "
           "prediction machine type such as n1-standard-4 or e2-standard-4")
    _check(min_replica_count >= 1, f"--min_replica_count={min_replica_count}: an endpoint needs 1 or more replicas")
    _check(max_replica_count >= min_replica_count, f"--max_replica_count={max_replica_count} is below "
           f"--min_replica_count={min_replica_count}: raise it")
    return {"model": model, "displayName": display_name,
            "dedicatedResources": {"machineSpec": {"machineType": machine_type},
                                   "minReplicaCount": min_replica_count, "maxReplicaCount": max_replica_count}}


def endpoint_name(*, project: str, region: str, endpoint: str) -> str:
    """`projects/P/locations/R/endpoints/ID` from an ID or a full name (of the same project and region)."""
    if "/" not in endpoint:
        _check(endpoint.isdigit(), f"--endpoint={endpoint}: pass the endpoint's numeric ID or its resource name")
        return f"projects/{project}/locations/{region}/endpoints/{endpoint}"
    parts = endpoint.strip("/").split("/")
    _check(len(parts) == 6 and parts[0::2] == ["projects", "locations", "endpoints"] and parts[3] == region,
           f"--endpoint={endpoint}: pass projects/{project}/locations/{region}/endpoints/ID (same --region)")
    return endpoint.strip("/")


def wait_operation(operation: dict, *, session, root: str, poll_interval: float, sleep=time.sleep) -> dict:
    """Polls a long-running operation until done; returns its response, or SubmitError with its error."""
    while not operation.get("done"):
        sleep(poll_interval)
        operation = submit_job.poll(name=operation["name"], session=session, api_endpoint=root)
    if "error" in operation:
        raise SubmitError(f"{operation['name']} failed: {submit_job._one_line(operation['error'].get('message', ''))}")
    return operation.get("response", {})


def _post(session, url: str, body: dict) -> dict:
    response = session.post(url, data=json.dumps(body).encode("utf-8"), timeout=60,
                            headers={"Content-Type": "application/json; charset=utf-8"})
    if response.status_code != 200:
        raise SubmitError(f"Vertex AI refused {url.rsplit('/', 1)[-1]}: {submit_job._api_error(response)}")
    return response.json()


def deploy(*, model: dict, deployed: dict, project: str, region: str, endpoint: Optional[str], session,
           root: str, poll_interval: float) -> str:
    """Uploads, creates the endpoint when none is given, deploys with all traffic; returns the endpoint."""
    parent = f"{root}/v1/projects/{project}/locations/{region}"
    uploaded = wait_operation(_post(session, f"{parent}/models:upload", {"model": model}), session=session,
                              root=root, poll_interval=poll_interval)
    print(f"model: {uploaded['model']}", flush=True)
    if endpoint is None:
        created = wait_operation(_post(session, f"{parent}/endpoints", {"displayName": model["displayName"]}),
                                 session=session, root=root, poll_interval=poll_interval)
        endpoint = created["name"]
    body = {"deployedModel": dict(deployed, model=uploaded["model"]), "trafficSplit": {"0": 100}}
    wait_operation(_post(session, f"{root}/v1/{endpoint}:deployModel", body), session=session, root=root,
                   poll_interval=poll_interval)
    return endpoint


def _define_flags(flags) -> None:
    flags.DEFINE_string("project", None, "Google Cloud project ID.")
    flags.DEFINE_string("region", "us-central1", "Vertex AI region (the export's bucket should be in it).")
    flags.DEFINE_string("export", None, "gs:// URL of one export version (MODEL_DIR/export/N).")
    flags.DEFINE_string("display_name", None, "Name of the Model (and of a new endpoint).")
    flags.DEFINE_string("endpoint", None, "Existing endpoint ID or resource name (default: create one).")
    flags.DEFINE_string("machine_type", "n1-standard-4", "Prediction machine type.")
    flags.DEFINE_integer("min_replica_count", 1, "Replicas always running.")
    flags.DEFINE_integer("max_replica_count", 1, "Autoscaling ceiling.")
    flags.DEFINE_float("poll_interval", 10.0, "Seconds between operation polls.")
    flags.DEFINE_bool("dry_run", False, "Print the Model and DeployedModel; read and send nothing remote.")
    flags.DEFINE_string("api_endpoint", None, "API root (default https://REGION-aiplatform.googleapis.com).")
    flags.DEFINE_string("access_token_file", None, "File holding an OAuth access token (default: ADC).")


def main(argv) -> None:
    from absl import flags  # pylint: disable=import-outside-toplevel
    f = flags.FLAGS
    try:
        _check(len(argv) == 1, f"unexpected argument(s) {' '.join(argv[1:])}: every setting is a flag")
        _check(bool(f.project and f.export and f.display_name), "--project, --export and --display_name are required")
        _check(bool(submit_job._PROJECT.fullmatch(f.project)), f"--project={f.project} is not a project ID")
        _check(bool(submit_job._REGION.fullmatch(f.region)), f"--region={f.region} is not a region such as us-central1")
        endpoint = f.endpoint and endpoint_name(project=f.project, region=f.region, endpoint=f.endpoint)
        model = build_model(display_name=f.display_name, export=f.export, region=f.region)
        deployed = build_deployed_model(
            display_name=f.display_name, model=PLACEHOLDER_MODEL.format(project=f.project, region=f.region),
            machine_type=f.machine_type, min_replica_count=f.min_replica_count, max_replica_count=f.max_replica_count)
        if f.dry_run:
            sys.stdout.write(submit_job.render({"model": model, "deployedModel": deployed}))
            return
        session = submit_job.build_session(access_token_file=f.access_token_file)
        print(deploy(model=model, deployed=deployed, project=f.project, region=f.region, endpoint=endpoint or None,
                     session=session, root=submit_job.api_root(f.region, f.api_endpoint),
                     poll_interval=f.poll_interval))
    except SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from absl import app, flags as absl_flags  # pylint: disable=ungrouped-imports

    _define_flags(absl_flags)
    app.run(main, flags_parser=submit_job._parse_flags)
