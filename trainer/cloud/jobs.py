"""One training job: a frozen, validated `JobSpec`, then its CustomJob REST body. No I/O here.

`build_job_spec(...)` turns a preset plus overrides into a JobSpec (every check runs in its
`__post_init__`, before anything is uploaded or sent); `build_custom_job(spec)` is the body of
projects.locations.customJobs.create (v1).
"""
from __future__ import annotations

import dataclasses
import datetime
import re
from typing import Optional, Sequence, Tuple

from trainer import __version__
from trainer.cloud import machines
from trainer.cloud.errors import CloudError, check

PROJECT_ID = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]|[a-z][a-z0-9.-]*:[a-z][a-z0-9-]{4,28}[a-z0-9]")
REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
BUCKET_URL = re.compile(r"gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/[^\s]*)?")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[a-z]+")
_TENSORBOARD = re.compile(r"projects/[^/\s]+/locations/([a-z0-9-]+)/tensorboards/[0-9]+")
# Trainer flags naming files or folders: the remote machines read them from Cloud Storage.
PATH_FLAGS = ("train_data", "eval_data", "test_data", "labels", "model_dir", "checkpoint_dir", "tensorboard_dir",
              "weights")


def check_location(*, project: str, region: str) -> None:
    """Refuses a project or region Vertex AI's URLs cannot be built from (both commands)."""
    check(bool(PROJECT_ID.fullmatch(project)),
          f"--project={project} is not a Google Cloud project ID: pass the ID (not the name or number)")
    check(bool(REGION.fullmatch(region)), f"--region={region} is not a region such as us-central1")


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """Everything a CustomJob needs, validated once in __post_init__.

    Attributes:
      preset: the preset it started from (a label on the job).
      display_name: the job's name in the console.
      project, region: where the job runs.
      output_dir: baseOutputDirectory; Vertex AI derives AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and
        AIP_TENSORBOARD_LOG_DIR from it (OUTPUT/model/, /checkpoints/, /logs/).
      image_uri: a custom container whose entrypoint is `python -m trainer.task` (containerSpec),
        or None for the Python-package route.
      package_uri / executor_image_uri: the staged sdist and the prebuilt container that runs it
        (pythonPackageSpec), or None.
      machine: each replica's machine type, accelerators and TPU topology.
      workers: replicas of the second pool (multi-worker); the chief pool always has one.
      trainer_args: the arguments `python -m trainer.task` receives.
      spot: Spot VMs, restarting the whole job when a worker is preempted (training resumes
        from its checkpoints).
      service_account: the identity the job runs as, or None for Vertex AI's default agent.
      boot_disk_type, boot_disk_size_gb: each replica's boot disk.
      skip_machine_check: trust a machine type the tables in trainer.cloud.machines do not know yet.
      tensorboard: a Vertex AI TensorBoard instance (projects/P/locations/R/tensorboards/ID) the
        job's AIP_TENSORBOARD_LOG_DIR is uploaded to; Vertex requires a service account for it.
      enable_web_access: interactive shells into the running replicas (console, "Web terminal").
    """
    preset: str
    display_name: str
    project: str
    region: str
    output_dir: str
    image_uri: Optional[str]
    package_uri: Optional[str]
    executor_image_uri: Optional[str]
    machine: machines.Machine
    workers: int = 0
    trainer_args: Tuple[str, ...] = ()
    spot: bool = False
    service_account: Optional[str] = None
    boot_disk_type: str = "pd-ssd"
    boot_disk_size_gb: int = 100
    skip_machine_check: bool = False
    tensorboard: Optional[str] = None
    enable_web_access: bool = False

    def __post_init__(self):
        check_location(project=self.project, region=self.region)
        check(0 < len(self.display_name) <= 128, "--display_name must have 1 to 128 characters")
        check(bool(BUCKET_URL.fullmatch(self.output_dir)),
              f"output directory {self.output_dir} is not a gs:// URL: pass --staging_bucket=gs://BUCKET")
        self._check_code()
        check(self.service_account is None or bool(_EMAIL.fullmatch(self.service_account)),
              f"--service_account={self.service_account} is not a service account email")
        check(self.boot_disk_type in machines.BOOT_DISK_TYPES,
              f"--boot_disk_type={self.boot_disk_type}: choose one of {', '.join(machines.BOOT_DISK_TYPES)}")
        check(100 <= self.boot_disk_size_gb <= 64000,
              f"--boot_disk_size_gb={self.boot_disk_size_gb} must be between 100 and 64000")
        check(self.workers >= 0, f"workers={self.workers} must be 0 or more")
        check_tensorboard(self.tensorboard, region=self.region, service_account=self.service_account)
        check(not self.workers or not self.machine.is_tpu, "TPU jobs run one replica in one worker pool: drop "
              "--replica_count or use --preset=multi-worker with GPUs")
        if not self.skip_machine_check:
            machines.check_machine(self.machine)
        check_trainer_args(self.trainer_args)

    def _check_code(self) -> None:
        """Exactly one way to ship the code: a container image, or a staged sdist and its runner."""
        check((self.image_uri is None) != (self.package_uri is None),
              "pass exactly one of --image_uri (custom container) and --package (prebuilt container)")
        check(self.image_uri is None or re.fullmatch(r"\S+", self.image_uri) is not None,
              f"--image_uri={self.image_uri!r} is not an image reference")
        check(self.package_uri is None or bool(BUCKET_URL.fullmatch(self.package_uri))
              and self.package_uri.endswith(".tar.gz"),
              f"--package_uri={self.package_uri} must be the gs:// URL of an sdist (.tar.gz)")
        check(self.package_uri is None or bool(self.executor_image_uri), "--package needs --executor_image_uri")


def check_tensorboard(tensorboard: Optional[str], *, region: str, service_account: Optional[str]) -> None:
    """Refuses a TensorBoard instance Vertex AI could not upload this job's logs to."""
    if not tensorboard:
        return
    match = _TENSORBOARD.fullmatch(tensorboard)
    check(match is not None, f"--tensorboard={tensorboard}: pass the instance's resource name, "
          "projects/PROJECT/locations/REGION/tensorboards/ID (gcloud ai tensorboards list)")
    check(match.group(1) == region, f"--tensorboard={tensorboard} is in {match.group(1)}, the job in --region="
          f"{region}: use a TensorBoard instance of the job's region")
    check(bool(service_account), "--tensorboard needs --service_account: Vertex AI uploads the logs as that "
          "account (it needs roles/aiplatform.user and write access to the staging bucket)")


def check_trainer_args(args: Sequence[str]) -> None:
    """Refuses trainer arguments that cannot work on Vertex AI, before a machine is paid for.

    The remote machines see Cloud Storage, not this computer: data, labels and weights files must
    be gs:// URLs (or /gcs/ paths, Vertex AI's Cloud Storage FUSE mount).
    """
    values = {}
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            if i == 0 or "=" in args[i - 1] or args[i - 1].lstrip("-") not in PATH_FLAGS:
                raise CloudError(f"trainer argument {arg!r} is not a --flag: write trainer flags as --name=value")
            continue
        name, eq, value = arg[2:].partition("=")
        if not eq and name in PATH_FLAGS and i + 1 < len(args):
            value = args[i + 1]
        values[name] = value
    check("train_data" in values, "the trainer arguments lack --train_data: end the command with "
          "`-- --train_data=gs://BUCKET/train-*.tfrecord` (and any other trainer flags)")
    for name in PATH_FLAGS:
        value = values.get(name, "")
        remote = (value.startswith(("gs://", "/gcs/")) or (name == "weights" and "/" not in value)
                  or (name == "test_data" and value.lower() == "none"))
        check(not value or remote, f"--{name}={value} is a local path, which the Vertex AI machines cannot "
              "read: copy it to Cloud Storage and pass its gs:// URL")


def build_job_spec(*, preset: str, project: str, region: str, staging_bucket: str,
                   trainer_args: Sequence[str] = (), image_uri: Optional[str] = None, package: bool = False,
                   package_uri: Optional[str] = None, executor_image_uri: Optional[str] = None,
                   machine_type: Optional[str] = None, accelerator_type: Optional[str] = None,
                   accelerator_count: Optional[int] = None, tpu_topology: Optional[str] = None,
                   replica_count: Optional[int] = None, display_name: Optional[str] = None,
                   output_dir: Optional[str] = None, spot: bool = False, service_account: Optional[str] = None,
                   boot_disk_type: str = "pd-ssd", boot_disk_size_gb: int = 100,
                   skip_machine_check: bool = False, tensorboard: Optional[str] = None,
                   enable_web_access: bool = False, package_version: str = __version__) -> JobSpec:
    """A JobSpec from a preset plus the flags that override it (None = the preset's value).

    `package=True` plans the sdist's place, STAGING/packages/DISPLAY_NAME/effnet_trainer-
    `package_version`.tar.gz (packaging.stage_package uploads it there); `package_uri` instead
    reuses an sdist already in Cloud Storage.
    """
    _check_request(preset=preset, staging_bucket=staging_bucket, replica_count=replica_count,
                   image_uri=image_uri, package=package or bool(package_uri))
    base = machines.PRESETS[preset]
    machine = machines.resolve(base, machine_type=machine_type, accelerator_type=accelerator_type,
                               accelerator_count=accelerator_count, tpu_topology=tpu_topology)
    display_name = display_name or f"effnet-{preset}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"
    bucket = staging_bucket.rstrip("/")
    if package and not package_uri:
        package_uri = f"{bucket}/packages/{display_name}/effnet_trainer-{package_version}.tar.gz"
    if package_uri and not executor_image_uri:
        executor_image_uri = machines.default_executor_image(region=region, machine=machine)
    spec = JobSpec(
        preset=preset, display_name=display_name, project=project, region=region,
        output_dir=output_dir or f"{bucket}/runs/{display_name}", image_uri=image_uri or None,
        package_uri=package_uri or None, executor_image_uri=executor_image_uri, machine=machine,
        workers=base.workers if replica_count is None else replica_count,
        trainer_args=base.trainer_args + tuple(trainer_args), spot=spot, service_account=service_account or None,
        boot_disk_type=boot_disk_type, boot_disk_size_gb=boot_disk_size_gb, skip_machine_check=skip_machine_check,
        tensorboard=tensorboard or None, enable_web_access=enable_web_access)
    if not skip_machine_check:  # after JobSpec's own checks: an unknown machine is named as such first
        machines.check_preset_fits(name=preset, machine=machine)
    return spec


def _check_request(*, preset: str, staging_bucket: str, replica_count: Optional[int], image_uri: Optional[str],
                   package: bool) -> None:
    """The flag combinations build_job_spec refuses before it resolves anything."""
    check(preset in machines.PRESETS, f"--preset={preset}: choose one of {', '.join(machines.PRESETS)}")
    check(bool(BUCKET_URL.fullmatch(staging_bucket or "")),
          f"--staging_bucket={staging_bucket} must be a gs://BUCKET URL the job may write to")
    check(replica_count is None or preset == "multi-worker",
          f"--replica_count sets the worker pool of --preset=multi-worker; --preset={preset} runs one machine")
    check(replica_count is None or replica_count >= 1,
          f"--replica_count={replica_count}: the worker pool needs 1 or more machines (the chief is extra)")
    check(not (image_uri and package), "pass either --image_uri or --package, not both")


def build_custom_job(spec: JobSpec) -> dict:
    """The CustomJob REST resource (v1) for `spec`: chief pool first, then the worker pool."""
    pools = [_worker_pool(spec, replicas=1)]
    if spec.workers:
        pools.append(_worker_pool(spec, replicas=spec.workers))
    job_spec = {"workerPoolSpecs": pools, "baseOutputDirectory": {"outputUriPrefix": spec.output_dir}}
    if spec.service_account:
        job_spec["serviceAccount"] = spec.service_account
    if spec.spot:
        job_spec["scheduling"] = {"strategy": "SPOT", "restartJobOnWorkerRestart": True}
    if spec.tensorboard:
        job_spec["tensorboard"] = spec.tensorboard
    if spec.enable_web_access:
        job_spec["enableWebAccess"] = True
    return {"displayName": spec.display_name, "jobSpec": job_spec,
            "labels": {"app": "effnet-trainer", "preset": spec.preset}}


def _worker_pool(spec: JobSpec, *, replicas: int) -> dict:
    machine = {"machineType": spec.machine.machine_type}
    if spec.machine.accelerator_type:
        machine.update(acceleratorType=spec.machine.accelerator_type, acceleratorCount=spec.machine.accelerator_count)
    if spec.machine.tpu_topology:
        machine["tpuTopology"] = spec.machine.tpu_topology
    pool = {"machineSpec": machine, "replicaCount": replicas,
            "diskSpec": {"bootDiskType": spec.boot_disk_type, "bootDiskSizeGb": spec.boot_disk_size_gb}}
    if spec.image_uri:
        pool["containerSpec"] = {"imageUri": spec.image_uri, "args": list(spec.trainer_args)}
    else:
        pool["pythonPackageSpec"] = {"executorImageUri": spec.executor_image_uri, "packageUris": [spec.package_uri],
                                     "pythonModule": "trainer.task", "args": list(spec.trainer_args)}
    return pool


def job_config(job: dict) -> dict:
    """What `gcloud ai custom-jobs create --config` (a CustomJobSpec) or `gcloud ai hp-tuning-jobs
    create --config` (the tuning spec) reads: the body less the flags gcloud takes itself."""
    if "jobSpec" in job:
        return job["jobSpec"]
    return {k: v for k, v in job.items() if k not in ("displayName", "labels")}
