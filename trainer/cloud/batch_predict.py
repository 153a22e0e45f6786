r"""The batch prediction command (`effnet-batch-predict`): images scored by a Vertex AI batch prediction job.

    effnet-batch-predict --project=P --region=R (--model=MODEL | --export_dir=gs://B/run/model/export/N) \
        --input=gs://B/photos/ --output_dir=gs://B/batch [--machine_type=n1-standard-4] \
        [--starting_replica_count=1] [--wait] [--dry_run]

Writes the images (files, globs or folders, local or gs://) as JSON Lines instances under
OUTPUT_DIR/DISPLAY_NAME/instances/, uploads the export as a Model unless --model names one
(trainer.cloud.endpoints, as effnet-deploy does), and creates a BatchPredictionJob on it. With
--wait it prints each change of state and progress, then turns the job's JSON Lines into the CSV
`trainer.predict` writes for the same export and images (OUTPUT_DIR/DISPLAY_NAME/predictions.csv
unless --output says otherwise). --dry_run prints `{"model": Model, "batchPredictionJob": ...}`
(the Model only with --export_dir) and reads or sends nothing remote. The body is
trainer.cloud.batch_jobs'; the files trainer.cloud.batch_files'; the REST calls
trainer.cloud.vertex's, the client effnet-submit and effnet-deploy use.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: prepare the process before TensorFlow loads
    from effnet_common import process
    process.prepare()

import sys
from typing import Optional, Tuple

from absl import flags, logging

from effnet_common import downscale, flagutil
from trainer.cloud import batch_jobs, endpoints, jobs, vertex
from trainer.cloud.errors import CloudError, check

FLAGS = flags.FLAGS
# Classes per CSV row: trainer.predict's default (trainer.evaluation.metrics.DEFAULT_TOP_K).
DEFAULT_TOP_K = 5
USAGE = flagutil.Usage(
    summary="Score images with a Vertex AI batch prediction job on an export; write trainer.predict's CSV.",
    example="python -m trainer.cloud.batch_predict --project=P --region=us-central1 "
            "--export_dir=gs://B/run/model/export/1 --input=gs://B/photos/ --output_dir=gs://B/batch --wait",
    reference="docs/cloud.md, Batch prediction")


def define_flags() -> None:
    """Defines the command's flags, only when it runs (importing the module defines none)."""
    define = flagutil.define
    define("string", "project", None, "Google Cloud project ID.", group="model", required=True)
    define("string", "region", None, "Vertex AI region (the model, the images' bucket and --output_dir's "
           "should be in it).", group="model", required=True)
    define("string", "model", None, "An uploaded Model: its numeric ID or resource name.", group="model",
           required="unless --export_dir is given")
    define("string", "export_dir", None, "gs:// URL of one export version (MODEL_DIR/export/N), uploaded as a "
           "Model first.", group="model", required="unless --model is given")
    define("list", "input", [], "Images: comma-separated files, globs or folders (local or gs://).", group="input",
           required=True)
    define("string", "output_dir", None, "gs:// folder for the run: instances, Vertex AI's output, the CSV.",
           group="outputs", required=True)
    define("string", "output", None, "The CSV (--wait); default OUTPUT_DIR/DISPLAY_NAME/predictions.csv.",
           group="outputs")
    define("integer", "top_k", DEFAULT_TOP_K, "Classes per CSV row (capped at the number of classes).",
           group="outputs")
    define("string", "display_name", None, "Job name and run folder (default effnet-batch-UTCTIME).", group="job")
    define("string", "machine_type", "n1-standard-4", "Prediction machine type.", group="job")
    define("integer", "starting_replica_count", 1, "Machines for the whole job (batch prediction does not "
           "autoscale).", group="job")
    define("integer", "batch_size", batch_jobs.DEFAULT_BATCH_SIZE, "Images per request to each machine.",
           group="job")
    define("integer", "max_image_side", downscale.DEFAULT_MAX_IMAGE_SIDE, "Photos whose longer side is over this "
           "many pixels are sent downscaled to it, by the rule trainer.prepare stores records by (a phone photo then "
           "fits the 1.5 MB request limit); 0: as they are.", group="input")
    define("bool", "wait", False, "Follow the job, printing its state and progress, then write the CSV; exit 1 "
           "unless it succeeded.", group="request")
    define("float", "poll_interval", 30.0, "Seconds between polls (--wait and the upload).", group="request")
    define("bool", "dry_run", False, "Print the request body; read and send nothing remote.", group="request")
    define("string", "api_endpoint", None, "API root (default https://REGION-aiplatform.googleapis.com).",
           group="request")
    define("string", "access_token_file", None, "File holding an OAuth access token (default: ADC).",
           group="request")


def build_request(f) -> Tuple[Optional[dict], dict]:
    """(Model to upload or None, BatchPredictionJob) from the flags, checked; the job names a
    placeholder model until an upload returns the real one."""
    check(bool(f.project and f.region), "--project and --region are required: the job runs in that project "
          "and region (e.g. --project=my-proj --region=us-central1)")
    jobs.check_location(project=f.project, region=f.region)
    check(bool(f.model) != bool(f.export_dir), "pass exactly one of --model (a Model already uploaded) and "
          "--export_dir (gs://.../export/N, uploaded first)")
    check(bool(f.input), "--input is required: pass image files, globs or folders (local or gs://)")
    check(bool(f.output_dir), "--output_dir is required: pass a gs:// folder for the run's files")
    check(f.top_k >= 1, f"--top_k={f.top_k}: pass 1 or more")
    display_name = f.display_name or batch_jobs.default_display_name()
    model_body = None
    if f.export_dir:
        model_body = endpoints.build_model(display_name=display_name, export=f.export_dir, region=f.region)
        model = endpoints.PLACEHOLDER_MODEL.format(project=f.project, region=f.region)
    else:
        model = batch_jobs.model_name(project=f.project, region=f.region, model=f.model)
    job = batch_jobs.build_batch_prediction_job(
        display_name=display_name, model=model,
        run_folder=batch_jobs.run_dir(output_dir=f.output_dir, display_name=display_name),
        machine_type=f.machine_type, starting_replica_count=f.starting_replica_count, batch_size=f.batch_size)
    return model_body, job


def main(argv) -> None:
    """Prints the body (--dry_run), or writes the instances, uploads, creates the job and (--wait) the CSV."""
    check(len(argv) == 1, f"unexpected argument(s) {' '.join(argv[1:])}: every setting is a flag")
    model_body, job = build_request(FLAGS)
    if FLAGS.dry_run:
        sys.stdout.write(vertex.render({**({"model": model_body} if model_body else {}), "batchPredictionJob": job}))
        return
    import tensorflow as tf  # pylint: disable=import-outside-toplevel  # files only: --dry_run stays light
    try:
        _submit(model_body, job)
    except tf.errors.OpError as e:  # a gs:// read or write that failed: no bucket, no permission
        raise CloudError(f"Cloud Storage: {flagutil.one_line(e)}") from None


def _submit(model_body: Optional[dict], job: dict) -> None:
    """Checks the export, writes the instances, uploads (--export_dir), creates the job, follows it (--wait)."""
    from trainer.cloud import batch_files  # pylint: disable=import-outside-toplevel
    client = vertex.VertexClient.build(project=FLAGS.project, region=FLAGS.region, api_endpoint=FLAGS.api_endpoint,
                                       access_token_file=FLAGS.access_token_file)
    export = batch_files.check_export(FLAGS.export_dir or client.get(job["model"]).get("artifactUri", ""))
    run_folder = batch_jobs.run_dir(output_dir=FLAGS.output_dir, display_name=job["displayName"])
    instances = batch_files.write_instances(specs=FLAGS.input, run_folder=run_folder,
                                            max_image_side=FLAGS.max_image_side)
    _print_skipped(instances.skipped, what="left out (could not be read)")
    print(f"instances: {instances.count} image(s) in {len(instances.files)} file(s) under {run_folder}", flush=True)
    if model_body:
        job["model"] = endpoints.upload_model(client=client, model=model_body, poll_interval=FLAGS.poll_interval)
        print(f"model: {job['model']}", flush=True)
    name = client.create("batchPredictionJobs", body=job).get("name", "")
    print(name, flush=True)
    if name.count("/") == 5:
        logging.info("console: %s", batch_jobs.console_url(name))
    if FLAGS.wait:
        _wait_and_write(client, name, export=export, run_folder=run_folder)


def _wait_and_write(client: vertex.VertexClient, name: str, *, export, run_folder: str) -> None:
    """--wait: follows the job, then writes the CSV; a job that did not succeed exits 1."""
    from trainer.cloud import batch_files  # pylint: disable=import-outside-toplevel
    job = client.wait_for_job(name, poll_interval=FLAGS.poll_interval, describe=batch_jobs.describe_progress,
                              on_state=lambda line: print(f"state: {line}", flush=True))
    directory = batch_jobs.output_directory(job)
    if job["state"] not in (batch_jobs.TERMINAL_SUCCESS, "JOB_STATE_PARTIALLY_SUCCEEDED") or not directory:
        message = vertex.error_message(job.get("error", {})) or "no error message"
        print(f"error: {name} ended {job['state']}: {message}", file=sys.stderr)
        sys.exit(1)
    results = batch_files.read_results(directory, num_classes=len(export.class_names))
    _print_skipped(results.skipped, what="failed in the job")
    output = FLAGS.output or f"{run_folder}/predictions.csv"
    rows = batch_files.write_csv(results, export=export, output=output, top_k=FLAGS.top_k)
    print(f"wrote {len(rows)} row(s) to {output}", flush=True)


def _print_skipped(skipped, *, what: str) -> None:
    if skipped:
        lines = [f"{len(skipped)} image(s) {what}:"] + [f"  {path}: {why}" for path, why in skipped]
        print("\n".join(lines), file=sys.stderr)


def run_main() -> None:
    """Console-script entry point (effnet-batch-predict); unreadable local paths end in one line too."""
    flagutil.run(main, define_flags, usage=USAGE, user_errors=(OSError,))


if __name__ == "__main__":
    run_main()
