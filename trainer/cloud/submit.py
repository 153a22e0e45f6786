r"""The submit command (`effnet-submit`, scripts/submit_job.py): a training run as a Vertex AI job.

    effnet-submit --preset=gpu --project=P --region=us-central1 \
        --staging_bucket=gs://B (--image_uri=IMAGE | --package) [--dry_run] -- TRAINER_ARGS...

Everything after `--` goes to `python -m trainer.task` unchanged. The flags become a validated
JobSpec (trainer.cloud.jobs), its body a CustomJob or, with --hptune_config, a
HyperparameterTuningJob (trainer.cloud.tuning); --package stages the sdist first
(trainer.cloud.packaging); the body goes out through trainer.cloud.vertex.VertexClient.
"""
from __future__ import annotations

import functools
import sys
from typing import Optional, Sequence, Tuple

from absl import flags, logging

from effnet_common import flagutil
from trainer import __version__
from trainer.cloud import jobs, machines, packaging, tuning, vertex
from trainer.cloud.errors import CloudError, check

FLAGS = flags.FLAGS


USAGE = flagutil.Usage(
    summary="Run training on Vertex AI: these flags choose the job and its machines; what follows -- goes to "
            "trainer.task.",
    example="python -m trainer.cloud.submit --preset=gpu --project=P --staging_bucket=gs://B --package "
            "-- --train_data='gs://B/data/train-*.tfrecord'",
    reference="docs/cloud.md")


def define_flags() -> None:
    """Defines the command's flags, only when it runs (importing the module defines none)."""
    define = flagutil.define
    define("enum", "preset", None, list(machines.PRESETS), "Hardware shape: " + ", ".join(
        f"{name} ({preset.describe()})" for name, preset in machines.PRESETS.items()) + ".", group="job", required=True)
    define("string", "project", None, "Google Cloud project ID.", group="job", required=True)
    define("string", "region", "us-central1", "Vertex AI region.", group="job")
    define("string", "staging_bucket", None, "gs://BUCKET[/PREFIX] for the sdist and the run's outputs.",
           group="job", required=True)
    define("string", "image_uri", None, "Custom training container (the Dockerfile's image).", group="code")
    define("bool", "package", False, "Build and stage the sdist; run it in a prebuilt TensorFlow container.",
           group="code")
    define("string", "package_uri", None, "gs:// URL of an sdist already staged (implies --package).", group="code")
    define("string", "executor_image_uri", None, "Container that runs the package (default: prebuilt TF CPU).",
           group="code")
    define("string", "machine_type", None, "Override the preset's machine type.", group="machines")
    define("string", "accelerator_type", None, "Override the accelerator, e.g. NVIDIA_L4; '' for none.",
           group="machines")
    define("integer", "accelerator_count", None, "Accelerators per machine.", group="machines")
    define("string", "tpu_topology", None, "TPU v5e topology, e.g. 2x2.", group="machines")
    define("integer", "replica_count", None, "Machines in the worker pool (--preset=multi-worker).", group="machines")
    define("bool", "spot", False, "Spot VMs; the job restarts (and resumes) when a worker is preempted.",
           group="machines")
    define("string", "service_account", None, "Service account email the job runs as.", group="job")
    define("string", "display_name", None, "Job name (default effnet-PRESET-UTCTIME).", group="job")
    define("string", "output_dir", None, "baseOutputDirectory (default STAGING_BUCKET/runs/DISPLAY_NAME).", group="job")
    define("enum", "boot_disk_type", "pd-ssd", list(machines.BOOT_DISK_TYPES), "Boot disk type.", group="machines")
    define("integer", "boot_disk_size_gb", 100, "Boot disk size in GB (100-64000).", group="machines")
    define("bool", "skip_machine_check", False, "Send a machine type this script does not know.", group="machines")
    define("string", "tensorboard", None, "Vertex AI TensorBoard resource (projects/P/locations/R/tensorboards/ID) "
           "to stream the logs to; needs --service_account.", group="monitoring")
    define("bool", "enable_web_access", False, "Interactive shells into the running replicas (console).",
           group="monitoring")
    define("string", "hptune_config", None, "Study YAML: submit a HyperparameterTuningJob (docs/cloud.md).",
           group="job")
    define("string", "write_config", None, "Also write the spec for `gcloud ai custom-jobs create --config` "
           "(or `hp-tuning-jobs create --config`) to this local file.", group="request")
    define("bool", "wait", False, "After submitting, print each state change until the job ends; exit 1 "
           "unless it succeeded.", group="monitoring")
    define("float", "poll_interval", 30.0, "Seconds between --wait polls.", group="monitoring")
    define("bool", "dry_run", False, "Print the exact request body; read nothing remote, upload and submit nothing.",
           group="request")
    define("string", "api_endpoint", None, "API root (default https://REGION-aiplatform.googleapis.com).",
           group="request")
    define("string", "access_token_file", None, "File holding an OAuth access token (default: ADC).", group="request")


def spec_from_flags(f, trainer_args: Sequence[str], *, package_version: str) -> jobs.JobSpec:
    """The JobSpec the flags describe (CloudError when they cannot make one)."""
    check(f.preset is not None and f.project is not None and f.staging_bucket is not None,
          "--preset, --project and --staging_bucket are required (see --help)")
    return jobs.build_job_spec(
        preset=f.preset, project=f.project, region=f.region, staging_bucket=f.staging_bucket,
        trainer_args=trainer_args, image_uri=f.image_uri, package=f.package, package_uri=f.package_uri,
        executor_image_uri=f.executor_image_uri, machine_type=f.machine_type,
        accelerator_type=f.accelerator_type, accelerator_count=f.accelerator_count,
        tpu_topology=f.tpu_topology, replica_count=f.replica_count, display_name=f.display_name,
        output_dir=f.output_dir, spot=f.spot, service_account=f.service_account,
        boot_disk_type=f.boot_disk_type, boot_disk_size_gb=f.boot_disk_size_gb,
        skip_machine_check=f.skip_machine_check, tensorboard=f.tensorboard, enable_web_access=f.enable_web_access,
        package_version=package_version)


def build_request(f, trainer_args: Sequence[str], *, package_version: str = __version__
                  ) -> Tuple[jobs.JobSpec, dict, str]:
    """(spec, body, collection) from the flags: a CustomJob, or with --hptune_config a tuning job."""
    spec = spec_from_flags(f, trainer_args, package_version=package_version)
    if not f.hptune_config:
        return spec, jobs.build_custom_job(spec), "customJobs"
    study = tuning.load_study(f.hptune_config)
    tuning.check_tuning_args(study, spec.trainer_args)
    return spec, tuning.build_tuning_job(spec, study), "hyperparameterTuningJobs"


def _write_config(path: str, job: dict) -> None:
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(vertex.render(jobs.job_config(job)))
    except OSError as e:
        raise CloudError(f"--write_config={path}: {e.strerror}") from None


def main(argv, *, source_dir: Optional[str] = None) -> None:
    """Builds the request, then prints it (--dry_run) or stages, submits and optionally follows it.

    `source_dir`: the checkout --package builds the sdist from (default: where trainer is installed).
    """
    source_dir = source_dir or packaging.installed_checkout()
    version = packaging.read_version(source_dir) if source_dir else __version__
    spec, job, collection = build_request(FLAGS, argv[1:], package_version=version)
    if FLAGS.write_config:
        _write_config(FLAGS.write_config, job)
    if FLAGS.dry_run:
        sys.stdout.write(vertex.render(job))
        return
    if FLAGS.package and not FLAGS.package_uri:
        logging.info("staged %s", packaging.stage_package(source_dir=source_dir, package_uri=spec.package_uri))
    client = vertex.VertexClient.build(project=spec.project, region=spec.region, api_endpoint=FLAGS.api_endpoint,
                                       access_token_file=FLAGS.access_token_file)
    name = client.create(collection, body=job).get("name", "")
    print(name, flush=True)
    if name.count("/") == 5:
        logging.info("console: %s", vertex.console_url(name))
    logging.info("outputs: %s (AIP_MODEL_DIR is its model/ folder)", spec.output_dir)
    if FLAGS.wait:
        _wait(client, name)


def _wait(client: vertex.VertexClient, name: str) -> None:
    """--wait: follows the job; a job that did not succeed ends the command with status 1."""
    job = client.wait_for_job(name, poll_interval=FLAGS.poll_interval,
                              on_state=lambda state: print(f"state: {state}", flush=True))
    if job["state"] != "JOB_STATE_SUCCEEDED":
        message = vertex.error_message(job.get("error", {})) or "no error message"
        print(f"error: {name} ended {job['state']}: {message}", file=sys.stderr)
        sys.exit(1)


def run_main(*, source_dir: Optional[str] = None) -> None:
    """Console-script entry point (effnet-submit); scripts/submit_job.py passes its own checkout."""
    # An unknown flag is most often a trainer flag written before `--` (the hint is part of the contract).
    flagutil.run(functools.partial(main, source_dir=source_dir), define_flags, usage=USAGE,
                 unknown_flag_hint="trainer flags go after `--`")


if __name__ == "__main__":
    run_main()
