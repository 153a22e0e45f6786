"""An export on a Vertex AI endpoint: the Model and DeployedModel bodies, then upload and deploy.

The Model runs in Vertex AI's prebuilt TensorFlow prediction container, which is TF Serving:
`artifactUri` is the version folder holding saved_model.pb, and online predictions call its
`serving_default` signature with `{"instances": [{"image_bytes": {"b64": ...}}]}` (python -m
serving.client --vertex_endpoint=... sends exactly that). The builders are pure; `deploy` runs
the three long-running operations through the one VertexClient.
"""
from __future__ import annotations

import re
from typing import Callable, Optional

from effnet_common import versions
from trainer.cloud import machines
from trainer.cloud.errors import check
from trainer.cloud.vertex import VertexClient

_EXPORT = re.compile(rf"gs://[a-z0-9][a-z0-9._-]{{1,220}}[a-z0-9]/(.+/)?{versions.VERSION_PATTERN}/?")
# The DeployedModel's `model` until models.upload names the real one (--dry_run prints this).
PLACEHOLDER_MODEL = "projects/{project}/locations/{region}/models/UPLOADED_MODEL_ID"


def build_model(*, display_name: str, export: str, region: str) -> dict:
    """The Model resource for models.upload: the export in the prebuilt TensorFlow container."""
    check(bool(_EXPORT.fullmatch(export)), f"--export={export}: pass the gs:// URL of one numeric export version, "
          "e.g. gs://BUCKET/run/model/export/1 (the folder holding saved_model.pb)")
    check(0 < len(display_name) <= 128, "--display_name must have 1 to 128 characters")
    return {"displayName": display_name, "artifactUri": export.rstrip("/"),
            "containerSpec": {"imageUri": machines.prediction_image(region=region)},
            "labels": {"app": "effnet-trainer"}}


def build_deployed_model(*, display_name: str, model: str, machine_type: str, min_replica_count: int,
                         max_replica_count: int) -> dict:
    """The DeployedModel for endpoints.deployModel: dedicated machines, autoscaled between min and max."""
    check(bool(machines.PREDICTION_MACHINES.fullmatch(machine_type)), f"--machine_type={machine_type} is not a "
          "Vertex AI prediction machine type such as n1-standard-4 or e2-standard-4")
    check(min_replica_count >= 1, f"--min_replica_count={min_replica_count}: an endpoint needs 1 or more replicas")
    check(max_replica_count >= min_replica_count, f"--max_replica_count={max_replica_count} is below "
          f"--min_replica_count={min_replica_count}: raise it")
    return {"model": model, "displayName": display_name,
            "dedicatedResources": {"machineSpec": {"machineType": machine_type},
                                   "minReplicaCount": min_replica_count, "maxReplicaCount": max_replica_count}}


def endpoint_name(*, project: str, region: str, endpoint: str) -> str:
    """`projects/P/locations/R/endpoints/ID` from an ID or a full name (of the same project and region)."""
    if "/" not in endpoint:
        check(endpoint.isdigit(), f"--endpoint={endpoint}: pass the endpoint's numeric ID or its resource name")
        return f"projects/{project}/locations/{region}/endpoints/{endpoint}"
    parts = endpoint.strip("/").split("/")
    check(len(parts) == 6 and parts[0::2] == ["projects", "locations", "endpoints"] and parts[3] == region,
          f"--endpoint={endpoint}: pass projects/{project}/locations/{region}/endpoints/ID (same --region)")
    return endpoint.strip("/")


def _run_operation(client: VertexClient, url: str, body: dict, *, poll_interval: float) -> dict:
    """POSTs a long-running operation and polls it to its response."""
    operation = client.post(url, body=body, what=url.rsplit("/", 1)[-1])
    return client.wait_operation(operation, poll_interval=poll_interval)


def upload_model(*, client: VertexClient, model: dict, poll_interval: float) -> str:
    """models.upload of a `build_model` body, polled until done; returns the model's resource name
    (deploy and trainer.cloud.batch_predict upload an export this one way)."""
    return _run_operation(client, f"{client.parent}/models:upload", {"model": model},
                          poll_interval=poll_interval)["model"]


def deploy(*, client: VertexClient, model: dict, deployed: dict, endpoint: Optional[str], poll_interval: float,
           on_model: Callable[[str], None]) -> str:
    """Uploads, creates the endpoint when none is given, deploys with all traffic; returns the endpoint.

    `on_model` hears the uploaded model's name as soon as it exists, so a later failure still
    leaves the user knowing what was uploaded.
    """
    uploaded = upload_model(client=client, model=model, poll_interval=poll_interval)
    on_model(uploaded)
    if endpoint is None:
        endpoint = _run_operation(client, f"{client.parent}/endpoints", {"displayName": model["displayName"]},
                                  poll_interval=poll_interval)["name"]
    _run_operation(client, f"{client.root}/v1/{endpoint}:deployModel",
                   {"deployedModel": dict(deployed, model=uploaded), "trafficSplit": {"0": 100}},
                   poll_interval=poll_interval)
    return endpoint
