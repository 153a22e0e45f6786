r"""The deploy command (`effnet-deploy`, scripts/deploy_vertex.py): an export on a Vertex AI endpoint.

    effnet-deploy --project=P --region=R --export=gs://B/run/model/export/N \
        --display_name=NAME [--endpoint=ID] [--machine_type=n1-standard-4] \
        [--min_replica_count=1] [--max_replica_count=1] [--dry_run]

Uploads the export as a Model, creates an endpoint named after it unless --endpoint names one,
and deploys the model there with all traffic; each step is a long-running operation polled until
done. --dry_run prints `{"model": Model, "deployedModel": DeployedModel}` as the REST API spells
them and reads or sends nothing remote. The bodies are trainer.cloud.endpoints'; the REST calls,
credentials and errors trainer.cloud.vertex's, the same client the submit command uses.
"""
from __future__ import annotations

import sys
from typing import Optional, Tuple

from absl import flags

from effnet_common import flagutil
from trainer.cloud import endpoints, jobs, vertex
from trainer.cloud.errors import check

FLAGS = flags.FLAGS


USAGE = flagutil.Usage(
    summary="Serve an export on Vertex AI: upload it as a Model and deploy it to an endpoint with all traffic.",
    example="python -m trainer.cloud.deploy --project=P --export=gs://B/run/model/export/1 --display_name=flowers",
    reference="docs/cloud.md")


def define_flags() -> None:
    """Defines the command's flags, only when it runs (importing the module defines none)."""
    define = flagutil.define
    define("string", "project", None, "Google Cloud project ID.", group="model", required=True)
    define("string", "region", "us-central1", "Vertex AI region (the export's bucket should be in it).", group="model")
    define("string", "export", None, "gs:// URL of one export version (MODEL_DIR/export/N).",
           group="model", required=True)
    define("string", "display_name", None, "Name of the Model (and of a new endpoint).", group="model", required=True)
    define("string", "endpoint", None, "Existing endpoint ID or resource name (default: create one).", group="endpoint")
    define("string", "machine_type", "n1-standard-4", "Prediction machine type.", group="endpoint")
    define("integer", "min_replica_count", 1, "Replicas always running.", group="endpoint")
    define("integer", "max_replica_count", 1, "Autoscaling ceiling.", group="endpoint")
    define("float", "poll_interval", 10.0, "Seconds between operation polls.", group="request")
    define("bool", "dry_run", False, "Print the Model and DeployedModel; read and send nothing remote.",
           group="request")
    define("string", "api_endpoint", None, "API root (default https://REGION-aiplatform.googleapis.com).",
           group="request")
    define("string", "access_token_file", None, "File holding an OAuth access token (default: ADC).", group="request")


def build_request(f) -> Tuple[Optional[str], dict, dict]:
    """(endpoint or None, Model, DeployedModel) from the flags, checked; the DeployedModel names a
    placeholder until the upload returns the real model."""
    check(bool(f.project and f.export and f.display_name), "--project, --export and --display_name are required")
    jobs.check_location(project=f.project, region=f.region)
    endpoint = f.endpoint and endpoints.endpoint_name(project=f.project, region=f.region, endpoint=f.endpoint)
    model = endpoints.build_model(display_name=f.display_name, export=f.export, region=f.region)
    deployed = endpoints.build_deployed_model(
        display_name=f.display_name, model=endpoints.PLACEHOLDER_MODEL.format(project=f.project, region=f.region),
        machine_type=f.machine_type, min_replica_count=f.min_replica_count, max_replica_count=f.max_replica_count)
    return endpoint or None, model, deployed


def main(argv) -> None:
    """Prints the bodies (--dry_run) or uploads and deploys, printing the model and the endpoint."""
    check(len(argv) == 1, f"unexpected argument(s) {' '.join(argv[1:])}: every setting is a flag")
    endpoint, model, deployed = build_request(FLAGS)
    if FLAGS.dry_run:
        sys.stdout.write(vertex.render({"model": model, "deployedModel": deployed}))
        return
    client = vertex.VertexClient.build(project=FLAGS.project, region=FLAGS.region,
                                       api_endpoint=FLAGS.api_endpoint, access_token_file=FLAGS.access_token_file)
    print(endpoints.deploy(client=client, model=model, deployed=deployed, endpoint=endpoint,
                           poll_interval=FLAGS.poll_interval,
                           on_model=lambda name: print(f"model: {name}", flush=True)))


def run_main() -> None:
    """Console-script entry point (effnet-deploy); scripts/deploy_vertex.py calls it too."""
    flagutil.run(main, define_flags, usage=USAGE)


if __name__ == "__main__":
    run_main()
