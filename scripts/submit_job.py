#!/usr/bin/env python3
"""Submits effnet-trainer to Vertex AI as a CustomJob, from a laptop or from Cloud Build.

    python scripts/submit_job.py --preset=gpu --project=P --region=us-central1 \
        --staging_bucket=gs://B (--image_uri=IMAGE | --package) [--dry_run] -- TRAINER_ARGS...

It is a library too: `build_job_spec(...)` turns a preset plus overrides into a validated
`JobSpec`, `build_custom_job(spec)` turns that into the body of the CustomJob REST resource and
`submit(...)` POSTs it. Machine/accelerator combinations are checked against the tables of Vertex
AI's "Configure compute resources for custom training" page (docs/cloud.md cites it) before
anything is sent, so an impossible request ends here in one line instead of in the console
minutes later. Submission is a plain REST call through google-auth (docs/cloud.md says why not
google-cloud-aiplatform); `--api_endpoint` points it elsewhere, which is how the tests reach a stub.
"""
from __future__ import annotations

import dataclasses
import datetime
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, Optional, Sequence, Tuple

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DOCS = "https://cloud.google.com/vertex-ai/docs/training/configure-compute"
_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class SubmitError(ValueError):
    """A request the user must change; the message says what, where and how."""


# --- What Vertex AI accepts (configure-compute page: machine list, GPU table, TPU section). ---

# GPUs an N1 machine may carry, by size class: (P4, P100, T4, V100) counts per the GPU table.
_N1_SMALL = {"NVIDIA_TESLA_P4": (1, 2, 4), "NVIDIA_TESLA_P100": (1, 2, 4),
             "NVIDIA_TESLA_T4": (1, 2, 4), "NVIDIA_TESLA_V100": (1, 2, 4, 8)}
_N1_16 = dict(_N1_SMALL, NVIDIA_TESLA_V100=(2, 4, 8))
_N1_32 = {"NVIDIA_TESLA_P4": (2, 4), "NVIDIA_TESLA_P100": (2, 4),
          "NVIDIA_TESLA_T4": (2, 4), "NVIDIA_TESLA_V100": (4, 8)}
_N1_BIG = {"NVIDIA_TESLA_P4": (4,), "NVIDIA_TESLA_T4": (4,), "NVIDIA_TESLA_V100": (8,)}
N1_GPUS: Dict[str, Dict[str, Tuple[int, ...]]] = {
    **{m: _N1_SMALL for m in ("n1-standard-4", "n1-standard-8", "n1-highmem-2", "n1-highmem-4",
                              "n1-highmem-8")},
    **{m: _N1_16 for m in ("n1-standard-16", "n1-highmem-16", "n1-highcpu-16")},
    **{m: _N1_32 for m in ("n1-standard-32", "n1-highmem-32", "n1-highcpu-32")},
    **{m: _N1_BIG for m in ("n1-standard-64", "n1-standard-96", "n1-highmem-64", "n1-highmem-96",
                            "n1-highcpu-96")},
    "n1-highcpu-64": dict(_N1_BIG, NVIDIA_TESLA_P100=(4,)),
}

# Accelerator-optimised machines come with a fixed GPU type and count.
FIXED_GPUS: Dict[str, Tuple[str, int]] = {
    **{f"a2-highgpu-{n}g": ("NVIDIA_TESLA_A100", n) for n in (1, 2, 4, 8)},
    "a2-megagpu-16g": ("NVIDIA_TESLA_A100", 16),
    **{f"a2-ultragpu-{n}g": ("NVIDIA_A100_80GB", n) for n in (1, 2, 4, 8)},
    **{f"a3-highgpu-{n}g": ("NVIDIA_H100_80GB", n) for n in (1, 2, 4, 8)},
    "a3-megagpu-8g": ("NVIDIA_H100_MEGA_80GB", 8),
    "a3-ultragpu-8g": ("NVIDIA_H200_141GB", 8),
    "a4-highgpu-8g": ("NVIDIA_B200", 8),
    **{f"g2-standard-{n}": ("NVIDIA_L4", c) for n, c in ((4, 1), (8, 1), (12, 1), (16, 1), (24, 2),
                                                          (32, 1), (48, 4), (96, 8))},
    **{f"g4-standard-{n}": ("NVIDIA_RTX_PRO_6000", c) for n, c in ((48, 1), (96, 2), (192, 4),
                                                                   (384, 8))},
}

CPU_MACHINES = frozenset(
    [f"e2-standard-{n}" for n in (4, 8, 16, 32)] + [f"e2-highmem-{n}" for n in (2, 4, 8, 16)]
    + ["e2-highcpu-16", "e2-highcpu-32"]
    + [f"n4-{k}-{n}" for k in ("standard", "highmem", "highcpu") for n in (2, 4, 8, 16, 32, 48, 64, 80)]
    + [f"n2-standard-{n}" for n in (4, 8, 16, 32, 48, 64, 80)]
    + [f"n2-highmem-{n}" for n in (2, 4, 8, 16, 32, 48, 64, 80)]
    + [f"n2-highcpu-{n}" for n in (16, 32, 48, 64, 80)]
    + list(N1_GPUS) + [f"c2-standard-{n}" for n in (4, 8, 16, 30, 60)]
    + ["m1-ultramem-40", "m1-ultramem-80", "m1-ultramem-160", "m1-megamem-96"])

# TPU v5e VMs and the topologies that fit on one host (TPUClusterResolver('local') sees one host).
TPU_V5E_TOPOLOGIES = {"ct5lp-hightpu-1t": ("1x1",), "ct5lp-hightpu-4t": ("2x2",),
                      "ct5lp-hightpu-8t": ("2x4",)}
TPU_V5E_MULTI_HOST = ("2x4", "4x4", "4x8", "8x8", "8x16", "16x16")  # on ct5lp-hightpu-4t
LEGACY_TPUS = ("TPU_V2", "TPU_V3")  # machine type cloud-tpu, 8 cores on one host
BOOT_DISK_TYPES = ("pd-ssd", "pd-standard", "hyperdisk-balanced")

# The newest prebuilt TensorFlow training containers (pythonPackageSpec.executorImageUri).
PREBUILT_CPU = "{prefix}-docker.pkg.dev/vertex-ai/training/tf-cpu.2-17.py310:latest"


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named hardware shape; every field can be overridden by a flag."""
    machine_type: str
    accelerator_type: str = ""
    accelerator_count: int = 0
    tpu_topology: str = ""
    workers: int = 0  # replicas of the second (worker) pool; 0 = the chief alone
    trainer_args: Tuple[str, ...] = ()  # prepended, so the user's own trainer flags win


PRESETS: Dict[str, Preset] = {
    "cpu": Preset("n1-standard-8"),
    "gpu": Preset("n1-standard-8", "NVIDIA_TESLA_T4", 1),
    "multi-gpu": Preset("n1-standard-16", "NVIDIA_TESLA_T4", 4, trainer_args=("--strategy=mirrored",)),
    "multi-worker": Preset("n1-standard-8", "NVIDIA_TESLA_T4", 1, workers=1,
                           trainer_args=("--strategy=multi_worker",)),
    "tpu": Preset("ct5lp-hightpu-4t", tpu_topology="2x2", trainer_args=("--strategy=tpu", "--tpu=local")),
}


def check_machine(*, machine_type: str, accelerator_type: str = "", accelerator_count: int = 0,
                  tpu_topology: str = "") -> None:
    """Refuses a machine/accelerator combination Vertex AI would reject or the trainer cannot use.

    Raises:
      SubmitError: naming the flag to change and what would work.
    """
    if machine_type == "cloud-tpu" or machine_type.startswith("ct"):
        _check_tpu(machine_type=machine_type, accelerator_type=accelerator_type,
                   accelerator_count=accelerator_count, tpu_topology=tpu_topology)
    elif accelerator_type.startswith("TPU_"):
        raise SubmitError(f"--accelerator_type={accelerator_type} cannot attach to --machine_type="
                          f"{machine_type}: TPU v2/v3 need --machine_type=cloud-tpu --accelerator_count=8, "
                          "TPU v5e a ct5lp-hightpu-* machine with --tpu_topology")
    elif tpu_topology:
        raise SubmitError(f"--tpu_topology={tpu_topology} applies to TPU v5e machines (ct5lp-hightpu-*), "
                          f"not --machine_type={machine_type}: drop --tpu_topology")
    elif accelerator_type:
        _check_gpu(machine_type=machine_type, accelerator_type=accelerator_type,
                   accelerator_count=accelerator_count)
    elif machine_type in FIXED_GPUS:
        gpu, count = FIXED_GPUS[machine_type]
        raise SubmitError(f"--machine_type={machine_type} comes with GPUs: pass "
                          f"--accelerator_type={gpu} --accelerator_count={count}")
    elif accelerator_count:
        raise SubmitError(f"--accelerator_count={accelerator_count} needs --accelerator_type (e.g. NVIDIA_TESLA_T4)")
    elif machine_type not in CPU_MACHINES:
        raise SubmitError(f"--machine_type={machine_type} is not a Vertex AI training machine type "
                          f"(list: {_DOCS}); fix the name or pass --skip_machine_check")


def _check_gpu(*, machine_type: str, accelerator_type: str, accelerator_count: int) -> None:
    if machine_type in FIXED_GPUS:
        gpu, count = FIXED_GPUS[machine_type]
        if (accelerator_type, accelerator_count) != (gpu, count):
            raise SubmitError(f"--machine_type={machine_type} comes with exactly {count} {gpu}: pass "
                              f"--accelerator_type={gpu} --accelerator_count={count}")
        return
    if machine_type not in N1_GPUS:
        where = "takes no GPUs" if machine_type in CPU_MACHINES else "is not a Vertex AI training machine type"
        raise SubmitError(f"--machine_type={machine_type} {where}: GPUs need an n1, a2, a3, a4, g2 or g4 "
                          f"machine ({_DOCS})")
    allowed = N1_GPUS[machine_type]
    if accelerator_type not in allowed:
        hosts = sorted(m for m, (gpu, _) in FIXED_GPUS.items() if gpu == accelerator_type)
        hint = f"{accelerator_type} comes on {', '.join(hosts)}" if hosts else "check the spelling"
        raise SubmitError(f"--accelerator_type={accelerator_type} cannot attach to {machine_type}, which takes "
                          f"{', '.join(sorted(allowed))}; {hint}")
    counts = allowed[accelerator_type]
    if accelerator_count not in counts:
        raise SubmitError(f"--accelerator_count={accelerator_count}: {machine_type} takes "
                          f"{_or_list(counts)} {accelerator_type}; pick one of those counts")


def _check_tpu(*, machine_type: str, accelerator_type: str, accelerator_count: int, tpu_topology: str) -> None:
    if machine_type == "cloud-tpu":
        if accelerator_type not in LEGACY_TPUS:
            raise SubmitError(f"--machine_type=cloud-tpu needs --accelerator_type=TPU_V2 or TPU_V3, "
                              f"not {accelerator_type or 'none'}")
        if accelerator_count != 8 or tpu_topology:
            raise SubmitError(f"--accelerator_count={accelerator_count}: the trainer runs on one TPU host, "
                              "so cloud-tpu takes --accelerator_count=8 and no --tpu_topology (pods need a "
                              "multi-host TPU resolver)")
        return
    topologies = TPU_V5E_TOPOLOGIES.get(machine_type)
    if topologies is None:
        raise SubmitError(f"--machine_type={machine_type}: the TPU VMs Vertex AI trains TensorFlow on are "
                          f"{', '.join(TPU_V5E_TOPOLOGIES)} (TPU v5e) and cloud-tpu (v2/v3)")
    if accelerator_type or accelerator_count:
        raise SubmitError(f"--machine_type={machine_type} implies its TPU chips: drop --accelerator_type "
                          "and --accelerator_count, set --tpu_topology")
    if tpu_topology not in topologies:
        many = " (multi-host slices need a multi-host TPU resolver)" if tpu_topology in TPU_V5E_MULTI_HOST else ""
        raise SubmitError(f"--tpu_topology={tpu_topology or 'none'}: {machine_type} takes "
                          f"--tpu_topology={topologies[0]} on one host{many}")


def _or_list(values: Sequence[int]) -> str:
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


# --- The job: one frozen, validated description, then its REST body. ---

_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]|[a-z][a-z0-9.-]*:[a-z][a-z0-9-]{4,28}[a-z0-9]")
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
_BUCKET_URL = re.compile(r"gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/[^\s]*)?")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[a-z]+")
_PATH_FLAGS = ("train_data", "eval_data", "labels", "model_dir", "checkpoint_dir", "tensorboard_dir", "weights")


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
      machine_type, accelerator_type, accelerator_count, tpu_topology: each replica's machine.
      workers: replicas of the second pool (multi-worker); the chief pool always has one.
      trainer_args: the arguments `python -m trainer.task` receives.
      spot: Spot VMs, restarting the whole job when a worker is preempted (training resumes
        from its checkpoints).
      service_account: the identity the job runs as, or None for Vertex AI's default agent.
      boot_disk_type, boot_disk_size_gb: each replica's boot disk.
      skip_machine_check: trust a machine type this script's tables do not know yet.
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
    machine_type: str
    accelerator_type: str = ""
    accelerator_count: int = 0
    tpu_topology: str = ""
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
        _check(bool(_PROJECT.fullmatch(self.project)),
               f"--project={self.project} is not a Google Cloud project ID: pass the ID (not the name or number)")
        _check(bool(_REGION.fullmatch(self.region)), f"--region={self.region} is not a region such as us-central1")
        _check(0 < len(self.display_name) <= 128, "--display_name must have 1 to 128 characters")
        _check(bool(_BUCKET_URL.fullmatch(self.output_dir)),
               f"output directory {self.output_dir} is not a gs:// URL: pass --staging_bucket=gs://BUCKET")
        _check((self.image_uri is None) != (self.package_uri is None),
               "pass exactly one of --image_uri (custom container) and --package (prebuilt container)")
        _check(self.image_uri is None or re.fullmatch(r"\S+", self.image_uri) is not None,
               f"--image_uri={self.image_uri!r} is not an image reference")
        _check(self.package_uri is None or bool(_BUCKET_URL.fullmatch(self.package_uri))
               and self.package_uri.endswith(".tar.gz"),
               f"--package_uri={self.package_uri} must be the gs:// URL of an sdist (.tar.gz)")
        _check(self.package_uri is None or bool(self.executor_image_uri), "--package needs --executor_image_uri")
        _check(self.service_account is None or bool(_EMAIL.fullmatch(self.service_account)),
               f"--service_account={self.service_account} is not a service account email")
        _check(self.boot_disk_type in BOOT_DISK_TYPES,
               f"--boot_disk_type={self.boot_disk_type}: choose one of {', '.join(BOOT_DISK_TYPES)}")
        _check(100 <= self.boot_disk_size_gb <= 64000,
               f"--boot_disk_size_gb={self.boot_disk_size_gb} must be between 100 and 64000")
        _check(self.workers >= 0, f"workers={self.workers} must be 0 or more")
        _check_tensorboard(self.tensorboard, region=self.region, service_account=self.service_account)
        _check(not self.workers or not self.is_tpu, "TPU jobs run one replica in one worker pool: drop "
               "--replica_count or use --preset=multi-worker with GPUs")
        if not self.skip_machine_check:
            check_machine(machine_type=self.machine_type, accelerator_type=self.accelerator_type,
                          accelerator_count=self.accelerator_count, tpu_topology=self.tpu_topology)
        check_trainer_args(self.trainer_args)

    @property
    def is_tpu(self) -> bool:
        return self.machine_type == "cloud-tpu" or self.machine_type.startswith("ct")


_TENSORBOARD = re.compile(r"projects/[^/\s]+/locations/([a-z0-9-]+)/tensorboards/[0-9]+")


def _check_tensorboard(tensorboard: Optional[str], *, region: str, service_account: Optional[str]) -> None:
    if not tensorboard:
        return
    match = _TENSORBOARD.fullmatch(tensorboard)
    _check(match is not None, f"--tensorboard={tensorboard}: pass the instance's resource name, "
           "projects/PROJECT/locations/REGION/tensorboards/ID (gcloud ai tensorboards list)")
    _check(match.group(1) == region, f"--tensorboard={tensorboard} is in {match.group(1)}, the job in --region="
           f"{region}: use a TensorBoard instance of the job's region")
    _check(bool(service_account), "--tensorboard needs --service_account: Vertex AI uploads the logs as that "
           "account (it needs roles/aiplatform.user and write access to the staging bucket)")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise SubmitError(message)


def check_trainer_args(args: Sequence[str]) -> None:
    """Refuses trainer arguments that cannot work on Vertex AI, before a machine is paid for.

    The remote machines see Cloud Storage, not this computer: data, labels and weights files must
    be gs:// URLs (or /gcs/ paths, Vertex AI's Cloud Storage FUSE mount).
    """
    values = {}
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            if i == 0 or "=" in args[i - 1] or args[i - 1].lstrip("-") not in _PATH_FLAGS:
                raise SubmitError(f"trainer argument {arg!r} is not a --flag: write trainer flags as --name=value")
            continue
        name, eq, value = arg[2:].partition("=")
        if not eq and name in _PATH_FLAGS and i + 1 < len(args):
            value = args[i + 1]
        values[name] = value
    _check("train_data" in values, "the trainer arguments lack --train_data: end the command with "
           "`-- --train_data=gs://BUCKET/train-*.tfrecord` (and any other trainer flags)")
    for name in _PATH_FLAGS:
        value = values.get(name, "")
        remote = value.startswith(("gs://", "/gcs/")) or (name == "weights" and "/" not in value)
        _check(not value or remote, f"--{name}={value} is a local path, which the Vertex AI machines cannot "
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
                   enable_web_access: bool = False) -> JobSpec:
    """A JobSpec from a preset plus the flags that override it (None = the preset's value).

    `package=True` plans the sdist's place, STAGING/packages/DISPLAY_NAME/; `stage_package`
    uploads it there. `package_uri` instead reuses an sdist already in Cloud Storage.
    """
    _check(preset in PRESETS, f"--preset={preset}: choose one of {', '.join(PRESETS)}")
    _check(bool(_BUCKET_URL.fullmatch(staging_bucket or "")),
           f"--staging_bucket={staging_bucket} must be a gs://BUCKET URL the job may write to")
    _check(replica_count is None or preset == "multi-worker",
           f"--replica_count sets the worker pool of --preset=multi-worker; --preset={preset} runs one machine")
    _check(replica_count is None or replica_count >= 1,
           f"--replica_count={replica_count}: the worker pool needs 1 or more machines (the chief is extra)")
    _check(not (image_uri and (package or package_uri)), "pass either --image_uri or --package, not both")
    base = PRESETS[preset]
    machine, accelerator, count, topology = _resolve_machine(
        base, machine_type=machine_type, accelerator_type=accelerator_type,
        accelerator_count=accelerator_count, tpu_topology=tpu_topology)
    display_name = display_name or f"effnet-{preset}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"
    bucket = staging_bucket.rstrip("/")
    if package and not package_uri:
        package_uri = f"{bucket}/packages/{display_name}/effnet_trainer-{_version()}.tar.gz"
    if package_uri and not executor_image_uri:
        executor_image_uri = default_executor_image(region=region, machine_type=machine, accelerator=accelerator)
    spec = JobSpec(
        preset=preset, display_name=display_name, project=project, region=region,
        output_dir=output_dir or f"{bucket}/runs/{display_name}", image_uri=image_uri or None,
        package_uri=package_uri or None, executor_image_uri=executor_image_uri, machine_type=machine,
        accelerator_type=accelerator, accelerator_count=count, tpu_topology=topology,
        workers=base.workers if replica_count is None else replica_count,
        trainer_args=base.trainer_args + tuple(trainer_args), spot=spot, service_account=service_account or None,
        boot_disk_type=boot_disk_type, boot_disk_size_gb=boot_disk_size_gb, skip_machine_check=skip_machine_check,
        tensorboard=tensorboard or None, enable_web_access=enable_web_access)
    if not skip_machine_check:  # after JobSpec's own checks: an unknown machine is named as such first
        check_preset_fits(preset, machine_type=machine, accelerator_type=accelerator)
    return spec


def _resolve_machine(base: Preset, *, machine_type: Optional[str], accelerator_type: Optional[str],
                     accelerator_count: Optional[int], tpu_topology: Optional[str]) -> Tuple[str, str, int, str]:
    """(machine, accelerator, count, topology): the preset's, overridden by the flags given.

    A new --machine_type keeps the preset's GPU where that machine can carry it (another n1) and
    drops it elsewhere; machines that come with fixed GPUs or TPU chips get theirs filled in, so
    `--machine_type=a2-highgpu-2g` alone is enough.
    """
    same_machine = machine_type in (None, base.machine_type)
    machine = machine_type or base.machine_type
    fixed_gpu, fixed_count = FIXED_GPUS.get(machine, ("", 0))
    keeps_gpu = same_machine or base.accelerator_type in N1_GPUS.get(machine, {})
    if accelerator_type is not None:
        accelerator = accelerator_type
    else:
        accelerator = base.accelerator_type if keeps_gpu else fixed_gpu
    if accelerator_count is not None:
        count = accelerator_count
    elif accelerator and accelerator == base.accelerator_type:
        count = base.accelerator_count
    else:
        count = fixed_count if accelerator and accelerator == fixed_gpu else int(bool(accelerator))
    if tpu_topology is not None:
        topology = tpu_topology
    else:
        topology = base.tpu_topology if same_machine else TPU_V5E_TOPOLOGIES.get(machine, ("",))[0]
    return machine, accelerator, count, topology


def check_preset_fits(preset: str, *, machine_type: str, accelerator_type: str) -> None:
    """Refuses a machine that drops the accelerator family the preset's trainer flags rely on.

    Vertex AI would accept such a job and bill the machine; the trainer would then fail at its
    first step (--strategy=tpu --tpu=local on a VM without a TPU) or crawl on CPUs.
    """
    base = PRESETS[preset]
    tpu_machine = machine_type == "cloud-tpu" or machine_type.startswith("ct")
    if "--strategy=tpu" in base.trainer_args and not tpu_machine:
        raise SubmitError(f"--preset={preset} trains on a TPU (--strategy=tpu --tpu=local), but --machine_type="
                          f"{machine_type} has none: pick a TPU machine (ct5lp-hightpu-4t with --tpu_topology=2x2, "
                          "or cloud-tpu) or --preset=cpu/gpu")
    if base.accelerator_type.startswith("NVIDIA_") and not accelerator_type.startswith("NVIDIA_"):
        raise SubmitError(f"--preset={preset} trains on GPUs, but --machine_type={machine_type} carries none: pick "
                          "an n1 machine (it keeps the preset's GPU), a GPU machine such as g2-standard-8, or --preset=cpu")


def default_executor_image(*, region: str, machine_type: str, accelerator: str) -> str:
    """The prebuilt TensorFlow training container for the Python-package route.

    Vertex AI's newest prebuilt TensorFlow training images carry TF 2.17; installing this package
    upgrades TensorFlow inside them to 2.21, which is fine on CPUs. Their CUDA/cuDNN libraries
    are the ones TF 2.17 was built against, not 2.21's (it may silently fall back to the CPU), and
    there is no TF 2.21 TPU image at all, so accelerators need a container of our own (the
    Dockerfile) or an explicit --executor_image_uri.
    """
    if accelerator or machine_type == "cloud-tpu" or machine_type.startswith("ct"):
        raise SubmitError(f"--package on {accelerator or machine_type}: Vertex AI's prebuilt TensorFlow "
                          "containers stop at TF 2.17 (its CUDA libraries, no TPU image for 2.21); build the Dockerfile "
                          "and pass --image_uri, or pass --executor_image_uri of a TF 2.21 image")
    prefix = "europe" if region.startswith("europe") else "asia" if region.startswith(
        ("asia", "australia", "me-")) else "us"
    return PREBUILT_CPU.format(prefix=prefix)


def _version() -> str:
    """The package version, read where setup.py reads it (trainer/__init__.py)."""
    with open(os.path.join(_REPO_ROOT, "trainer", "__init__.py"), encoding="utf-8") as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


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
    machine = {"machineType": spec.machine_type}
    if spec.accelerator_type:
        machine.update(acceleratorType=spec.accelerator_type, acceleratorCount=spec.accelerator_count)
    if spec.tpu_topology:
        machine["tpuTopology"] = spec.tpu_topology
    pool = {"machineSpec": machine, "replicaCount": replicas,
            "diskSpec": {"bootDiskType": spec.boot_disk_type, "bootDiskSizeGb": spec.boot_disk_size_gb}}
    if spec.image_uri:
        pool["containerSpec"] = {"imageUri": spec.image_uri, "args": list(spec.trainer_args)}
    else:
        pool["pythonPackageSpec"] = {"executorImageUri": spec.executor_image_uri, "packageUris": [spec.package_uri],
                                     "pythonModule": "trainer.task", "args": list(spec.trainer_args)}
    return pool


def render(job: dict) -> str:
    """The exact request body: --dry_run prints these bytes and submit() sends them."""
    return json.dumps(job, indent=2) + "\n"


# --- Hyperparameter tuning: a study file, then a HyperparameterTuningJob around the CustomJob spec. ---

_GOALS = {"maximize": "MAXIMIZE", "minimize": "MINIMIZE"}
_SCALES = {"linear": "UNIT_LINEAR_SCALE", "log": "UNIT_LOG_SCALE"}
_STUDY_KEYS = {"metric", "goal", "max_trial_count", "parallel_trial_count", "max_failed_trial_count", "parameters"}
_PARAMETER_KEYS = {"double": {"type", "min", "max", "scale"}, "integer": {"type", "min", "max", "scale"},
                   "categorical": {"type", "values"}, "discrete": {"type", "values", "scale"}}
_PER_TRIAL_FLAGS = ("model_dir", "checkpoint_dir", "tensorboard_dir")


def load_study(path: str) -> dict:
    """The study YAML (docs/cloud.md) read and checked; SubmitError names the file and the key."""
    import yaml  # pylint: disable=import-outside-toplevel  # only tuning needs it
    try:
        with open(path, encoding="utf-8") as f:
            study = yaml.safe_load(f)
    except OSError as e:
        raise SubmitError(f"--hptune_config={path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SubmitError(f"--hptune_config={path} is not valid YAML ({_one_line(e)})") from None
    _check(isinstance(study, dict), f"{path}: expected a mapping with metric, goal, max_trial_count, parameters")
    unknown = sorted(set(study) - _STUDY_KEYS)
    _check(not unknown, f"{path}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(sorted(_STUDY_KEYS))}")
    _check(str(study.get("goal", "")).lower() in _GOALS, f"{path}: goal must be maximize or minimize")
    _check(isinstance(study.get("metric"), str) and bool(study["metric"]),
           f"{path}: metric must name what the trainer reports, e.g. val_accuracy (its --hptune_metric)")
    for key in ("max_trial_count", "parallel_trial_count"):
        _check(isinstance(study.get(key), int) and study[key] >= 1, f"{path}: {key} must be a whole number >= 1")
    _check(study["parallel_trial_count"] <= study["max_trial_count"],
           f"{path}: parallel_trial_count must not exceed max_trial_count")
    params = study.get("parameters")
    _check(isinstance(params, dict) and bool(params), f"{path}: parameters must map trainer flag names to ranges")
    study["parameters"] = [parameter_spec(name, value, where=path) for name, value in params.items()]
    return study


def parameter_spec(name: str, value, *, where: str) -> dict:
    """One StudySpec.ParameterSpec from `flag: {type, min, max, scale | values}`."""
    _check(isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9_]*", name) is not None,
           f"{where}: parameter {name!r} must be a trainer flag name such as finetune_learning_rate")
    _check(name not in _PER_TRIAL_FLAGS, f"{where}: {name} cannot be tuned; each trial gets its own")
    _check(isinstance(value, dict) and value.get("type") in _PARAMETER_KEYS,
           f"{where}: {name} needs type: double, integer, categorical or discrete")
    kind = value["type"]
    unknown = sorted(set(value) - _PARAMETER_KEYS[kind])
    _check(not unknown, f"{where}: {name} ({kind}) takes {', '.join(sorted(_PARAMETER_KEYS[kind]))}, not "
           f"{', '.join(unknown)}")
    spec = {"parameterId": name}
    if kind in ("double", "integer"):
        number = float if kind == "double" else int
        low, high = (_as_number(value.get(k)) for k in ("min", "max"))
        _check(all(isinstance(v, (int, float)) and not isinstance(v, bool) and number(v) == v for v in (low, high))
               and low < high, f"{where}: {name} needs {kind} min < max")
        spec[f"{kind}ValueSpec"] = {"minValue": number(low), "maxValue": number(high)}
    else:
        values = value.get("values")
        _check(isinstance(values, list) and len(values) >= 2, f"{where}: {name} needs a list of 2 or more values")
        if kind == "categorical":
            spec["categoricalValueSpec"] = {"values": [str(v) for v in values]}
        else:
            _check(all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values),
                   f"{where}: {name} (discrete) takes numbers; use categorical for words")
            spec["discreteValueSpec"] = {"values": sorted(float(v) for v in values)}
    scale = value.get("scale")
    if scale is not None:
        _check(scale in _SCALES, f"{where}: {name} scale must be linear or log")
        _check(scale != "log" or min(_range(spec)) > 0, f"{where}: {name} with scale: log needs values above 0")
        spec["scaleType"] = _SCALES[scale]
    return spec


def _as_number(value):
    """YAML 1.1 reads 1e-5 (no dot) as a string; a number written so is still a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _range(spec: dict):
    inner = next(v for k, v in spec.items() if k.endswith("ValueSpec"))
    return inner.get("values") or (inner["minValue"], inner["maxValue"])


def check_tuning_args(study: dict, trainer_args: Sequence[str]) -> None:
    """Refuses trainer flags the study or Vertex AI sets per trial (they would collide)."""
    names = {arg[2:].partition("=")[0] for arg in trainer_args if arg.startswith("--")}
    for name in _PER_TRIAL_FLAGS:
        _check(name not in names, f"--{name} in the trainer arguments would make every trial write to one folder: "
               "drop it; Vertex AI gives each trial its own AIP_MODEL_DIR under the job's output directory")
    for spec in study["parameters"]:
        _check(spec["parameterId"] not in names, f"--{spec['parameterId']} is tuned by the study: drop it from the "
               "trainer arguments (each trial gets its value appended)")
    metric = study["metric"]
    _check(not metric.startswith("val_") or "eval_data" in names, f"the study's metric {metric} is measured on "
           "validation data: add --eval_data=gs://... to the trainer arguments")
    if metric != "val_accuracy":
        _check(f"--hptune_metric={metric}" in trainer_args, f"the study's metric is {metric}: add "
               f"--hptune_metric={metric} to the trainer arguments so the trainer reports it")


def build_tuning_job(spec: JobSpec, study: dict) -> dict:
    """The HyperparameterTuningJob REST resource: the study around the CustomJob's spec."""
    custom = build_custom_job(spec)
    job = {"displayName": spec.display_name,
           "studySpec": {"metrics": [{"metricId": study["metric"], "goal": _GOALS[study["goal"].lower()]}],
                         "parameters": study["parameters"]},
           "maxTrialCount": study["max_trial_count"], "parallelTrialCount": study["parallel_trial_count"],
           "trialJobSpec": custom["jobSpec"], "labels": dict(custom["labels"], kind="hptune")}
    if "max_failed_trial_count" in study:
        job["maxFailedTrialCount"] = study["max_failed_trial_count"]
    return job


def job_config(job: dict) -> dict:
    """What `gcloud ai custom-jobs create --config` (a CustomJobSpec) or `gcloud ai hp-tuning-jobs
    create --config` (the tuning spec) reads: the body less the flags gcloud takes itself."""
    if "jobSpec" in job:
        return job["jobSpec"]
    return {k: v for k, v in job.items() if k not in ("displayName", "labels")}


# --- Following a job until it ends. ---

TERMINAL_STATES = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED",
                   "JOB_STATE_PARTIALLY_SUCCEEDED")


class _Transient(Exception):
    """A poll that may succeed when repeated: HTTP 429/5xx or a dropped connection."""


def get_job(*, name: str, session, api_endpoint: str, timeout: float = 60.0) -> dict:
    """GETs the job resource; a transient failure raises _Transient, a refusal SubmitError."""
    import requests  # pylint: disable=import-outside-toplevel
    try:
        response = session.get(f"{api_endpoint}/v1/{name}", timeout=timeout)
    except requests.RequestException as e:
        raise _Transient(f"{type(e).__name__}") from None
    if response.status_code == 429 or response.status_code >= 500:
        raise _Transient(_api_error(response))
    if response.status_code != 200:
        raise SubmitError(f"reading {name} failed: {_api_error(response)}")
    return response.json()


def poll(*, name: str, session, api_endpoint: str) -> dict:
    """get_job through google.api_core's Retry: a 503 or a dropped connection while a job runs for
    hours must not end the wait (15 minutes of failures in a row do, with SubmitError)."""
    from google.api_core import exceptions, retry as api_retry  # pylint: disable=import-outside-toplevel
    retried = api_retry.Retry(predicate=api_retry.if_exception_type(_Transient), initial=1.0, maximum=60.0,
                              multiplier=2.0, timeout=900.0)(get_job)
    try:
        return retried(name=name, session=session, api_endpoint=api_endpoint)
    except exceptions.RetryError as e:
        raise SubmitError(f"reading {name} kept failing for 15 minutes ({_one_line(e.cause)}): check the "
                          "network, then look the job up in the console") from None


def wait_for_job(*, name: str, session, api_endpoint: str, poll_interval: float,
                 out=sys.stdout, sleep=None) -> dict:
    """Polls the job, printing each state change, until it ends; returns the final resource."""
    import time  # pylint: disable=import-outside-toplevel
    last = None
    while True:
        job = poll(name=name, session=session, api_endpoint=api_endpoint)
        state = job.get("state", "JOB_STATE_UNSPECIFIED")
        if state != last:
            print(f"state: {state}", file=out, flush=True)
            last = state
        if state in TERMINAL_STATES:
            return job
        (sleep or time.sleep)(poll_interval)


# --- Staging the package and talking to the API. ---

SDIST_COMMAND = ("-m", "build", "--sdist", "--no-isolation")


def build_sdist(*, out_dir: str) -> str:
    """Builds the package's sdist into `out_dir` through pyproject.toml's backend and returns its path.

    --no-isolation uses this environment's setuptools instead of downloading one, so it works
    offline (`setup.py sdist`, the old way, is deprecated by setuptools).
    """
    result = subprocess.run([sys.executable, *SDIST_COMMAND, "--outdir", out_dir], cwd=_REPO_ROOT,
                            capture_output=True, text=True, check=False)
    archives = glob.glob(os.path.join(out_dir, "*.tar.gz"))
    if result.returncode or len(archives) != 1:
        last = ((result.stderr + result.stdout).strip().splitlines() or ["no archive written"])[-1]
        raise SubmitError(f"building the sdist in {_REPO_ROOT} failed ({_one_line(last)}): run `python "
                          f"{' '.join(SDIST_COMMAND)}` there (pip install build if it is missing)")
    return archives[0]


def stage_package(*, package_uri: str, timeout: float = 120.0) -> str:
    """Builds the sdist and uploads it to `package_uri` (through effnet_common.gcs); returns the URL."""
    if _REPO_ROOT not in sys.path:
        sys.path.insert(0, _REPO_ROOT)  # run from a checkout: the trainer package sits beside scripts/
    from effnet_common import gcs  # pylint: disable=import-outside-toplevel  # only --package needs Cloud Storage
    with tempfile.TemporaryDirectory() as tmp:
        sdist = build_sdist(out_dir=tmp)
        try:
            return gcs.upload_file(sdist, package_uri, timeout=timeout)
        except gcs.GcsError as e:  # already says what failed and how to fix it
            raise SubmitError(_one_line(e)) from None
        except Exception as e:  # pylint: disable=broad-except  # any other failure is one line too
            raise SubmitError(f"could not upload the sdist to {package_uri}: {_one_line(e)}") from None


def build_session(*, access_token_file: Optional[str] = None):
    """An authorized HTTP session: Application Default Credentials, or a token read from a file.

    ADC covers a laptop (`gcloud auth application-default login`), Cloud Build and Vertex AI's
    own machines; a token file (`gcloud auth print-access-token > F`) suits anything else.
    """
    import google.auth  # pylint: disable=import-outside-toplevel  # --dry_run needs no credentials
    from google.auth import exceptions  # pylint: disable=import-outside-toplevel
    from google.auth.transport.requests import AuthorizedSession  # pylint: disable=import-outside-toplevel
    if access_token_file:
        from google.oauth2.credentials import Credentials  # pylint: disable=import-outside-toplevel
        try:
            with open(access_token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise SubmitError(f"--access_token_file={access_token_file}: {e.strerror}") from None
        _check(bool(token), f"--access_token_file={access_token_file} is empty: write a token into it")
        return AuthorizedSession(Credentials(token=token))
    try:
        credentials, _ = google.auth.default(scopes=[_SCOPE])
    except exceptions.DefaultCredentialsError:
        raise SubmitError("no Google credentials found: run `gcloud auth application-default login`, set "
                          "GOOGLE_APPLICATION_CREDENTIALS, or pass --access_token_file") from None
    return AuthorizedSession(credentials)


def api_root(region: str, api_endpoint: Optional[str] = None) -> str:
    """The REST root: Vertex AI's regional endpoint, or --api_endpoint (the tests' stub)."""
    return (api_endpoint or f"https://{region}-aiplatform.googleapis.com").rstrip("/")


def submit(*, body: str, project: str, region: str, session, api_endpoint: Optional[str] = None,
           timeout: float = 60.0, collection: str = "customJobs") -> dict:
    """POSTs the body to projects.locations.<collection>.create; returns the created resource."""
    import requests  # pylint: disable=import-outside-toplevel
    from google.auth import exceptions  # pylint: disable=import-outside-toplevel
    endpoint = api_root(region, api_endpoint)
    url = f"{endpoint}/v1/projects/{project}/locations/{region}/{collection}"
    try:
        response = session.post(url, data=body.encode("utf-8"), timeout=timeout,
                                headers={"Content-Type": "application/json; charset=utf-8"})
    except exceptions.RefreshError as e:
        raise SubmitError(f"the Google credentials were refused ({_one_line(e)}): log in again") from None
    except requests.RequestException as e:
        raise SubmitError(f"could not reach {endpoint} ({type(e).__name__}): check the network and "
                          "--region") from None
    if response.status_code != 200:
        raise SubmitError(f"Vertex AI refused the request: {_api_error(response)}")
    return response.json()


def _api_error(response) -> str:
    """`HTTP 403 PERMISSION_DENIED: message` from a Google API error body (or its raw text)."""
    try:
        error = response.json()["error"]
        return f"HTTP {response.status_code} {error.get('status', '')}: {_one_line(error.get('message', ''))}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {_one_line(response.text) or response.reason}"


def _one_line(error) -> str:
    return " ".join(str(error).split())[:500]


def console_url(job_name: str) -> str:
    """The console page of a created job (projects/P/locations/R/customJobs|hyperparameterTuningJobs/ID)."""
    _, project, _, region, kind, job_id = job_name.split("/")
    page = "cpu" if kind == "customJobs" else "hyperparameter-tuning"
    return (f"https://console.cloud.google.com/vertex-ai/locations/{region}/training/{job_id}/{page}"
            f"?project={project}")


# --- The command line. ---

def _define_flags(flags) -> None:
    flags.DEFINE_enum("preset", None, list(PRESETS), "Hardware shape: " + ", ".join(
        f"{name} ({p.machine_type}{f' + {p.accelerator_count} x {p.accelerator_type}' if p.accelerator_type else ''}"
        f"{f' {p.tpu_topology}' if p.tpu_topology else ''}{f' + {p.workers} worker' if p.workers else ''})"
        for name, p in PRESETS.items()) + ".")
    flags.DEFINE_string("project", None, "Google Cloud project ID.")
    flags.DEFINE_string("region", "us-central1", "Vertex AI region.")
    flags.DEFINE_string("staging_bucket", None, "gs://BUCKET[/PREFIX] for the sdist and the run's outputs.")
    flags.DEFINE_string("image_uri", None, "Custom training container (the Dockerfile's image).")
    flags.DEFINE_bool("package", False, "Build and stage the sdist; run it in a prebuilt TensorFlow container.")
    flags.DEFINE_string("package_uri", None, "gs:// URL of an sdist already staged (implies --package).")
    flags.DEFINE_string("executor_image_uri", None, "Container that runs the package (default: prebuilt TF CPU).")
    flags.DEFINE_string("machine_type", None, "Override the preset's machine type.")
    flags.DEFINE_string("accelerator_type", None, "Override the accelerator, e.g. NVIDIA_L4; '' for none.")
    flags.DEFINE_integer("accelerator_count", None, "Accelerators per machine.")
    flags.DEFINE_string("tpu_topology", None, "TPU v5e topology, e.g. 2x2.")
    flags.DEFINE_integer("replica_count", None, "Machines in the worker pool (--preset=multi-worker).")
    flags.DEFINE_bool("spot", False, "Spot VMs; the job restarts (and resumes) when a worker is preempted.")
    flags.DEFINE_string("service_account", None, "Service account email the job runs as.")
    flags.DEFINE_string("display_name", None, "Job name (default effnet-PRESET-UTCTIME).")
    flags.DEFINE_string("output_dir", None, "baseOutputDirectory (default STAGING_BUCKET/runs/DISPLAY_NAME).")
    flags.DEFINE_enum("boot_disk_type", "pd-ssd", list(BOOT_DISK_TYPES), "Boot disk type.")
    flags.DEFINE_integer("boot_disk_size_gb", 100, "Boot disk size in GB (100-64000).")
    flags.DEFINE_bool("skip_machine_check", False, "Send a machine type this script does not know.")
    flags.DEFINE_string("tensorboard", None, "Vertex AI TensorBoard resource (projects/P/locations/R/tensorboards/ID) "
                        "to stream the logs to; needs --service_account.")
    flags.DEFINE_bool("enable_web_access", False, "Interactive shells into the running replicas (console).")
    flags.DEFINE_string("hptune_config", None, "Study YAML: submit a HyperparameterTuningJob (docs/cloud.md).")
    flags.DEFINE_string("write_config", None, "Also write the spec for `gcloud ai custom-jobs create --config` "
                        "(or `hp-tuning-jobs create --config`) to this local file.")
    flags.DEFINE_bool("wait", False, "After submitting, print each state change until the job ends; exit 1 "
                      "unless it succeeded.")
    flags.DEFINE_float("poll_interval", 30.0, "Seconds between --wait polls.")
    flags.DEFINE_bool("dry_run", False, "Print the exact request body; read nothing remote, upload and submit nothing.")
    flags.DEFINE_string("api_endpoint", None, "API root (default https://REGION-aiplatform.googleapis.com).")
    flags.DEFINE_string("access_token_file", None, "File holding an OAuth access token (default: ADC).")


def _parse_flags(argv):
    """absl parsing, but a mistake is one line (and a hint about `--`) instead of the usage text."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        hint = " (trainer flags go after `--`)" if isinstance(e, flags.UnrecognizedFlagError) else ""
        print(f"error: {_one_line(e)}{hint}", file=sys.stderr)
        sys.exit(2)


def _spec_from_flags(f, trainer_args: Sequence[str]) -> JobSpec:
    _check(f.preset is not None and f.project is not None and f.staging_bucket is not None,
           "--preset, --project and --staging_bucket are required (see --helpshort)")
    return build_job_spec(
        preset=f.preset, project=f.project, region=f.region, staging_bucket=f.staging_bucket,
        trainer_args=trainer_args, image_uri=f.image_uri, package=f.package, package_uri=f.package_uri,
        executor_image_uri=f.executor_image_uri, machine_type=f.machine_type,
        accelerator_type=f.accelerator_type, accelerator_count=f.accelerator_count,
        tpu_topology=f.tpu_topology, replica_count=f.replica_count, display_name=f.display_name,
        output_dir=f.output_dir, spot=f.spot, service_account=f.service_account,
        boot_disk_type=f.boot_disk_type, boot_disk_size_gb=f.boot_disk_size_gb,
        skip_machine_check=f.skip_machine_check, tensorboard=f.tensorboard, enable_web_access=f.enable_web_access)


def build_request(f, trainer_args: Sequence[str]) -> Tuple[JobSpec, dict, str]:
    """(spec, body, collection) from the flags: a CustomJob, or with --hptune_config a tuning job."""
    spec = _spec_from_flags(f, trainer_args)
    if not f.hptune_config:
        return spec, build_custom_job(spec), "customJobs"
    study = load_study(f.hptune_config)
    check_tuning_args(study, spec.trainer_args)
    return spec, build_tuning_job(spec, study), "hyperparameterTuningJobs"


def _write_config(path: str, job: dict) -> None:
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(render(job_config(job)))
    except OSError as e:
        raise SubmitError(f"--write_config={path}: {e.strerror}") from None


def main(argv) -> None:
    from absl import flags, logging  # pylint: disable=import-outside-toplevel
    f = flags.FLAGS
    try:
        spec, job, collection = build_request(f, argv[1:])
        body = render(job)
        if f.write_config:
            _write_config(f.write_config, job)
        if f.dry_run:
            sys.stdout.write(body)
            return
        if f.package and not f.package_uri:
            logging.info("staged %s", stage_package(package_uri=spec.package_uri))
        session = build_session(access_token_file=f.access_token_file)
        created = submit(body=body, project=spec.project, region=spec.region, api_endpoint=f.api_endpoint,
                         session=session, collection=collection)
        print(created.get("name", ""), flush=True)
        if created.get("name", "").count("/") == 5:
            logging.info("console: %s", console_url(created["name"]))
        logging.info("outputs: %s (AIP_MODEL_DIR is its model/ folder)", spec.output_dir)
        if f.wait:
            _wait(created["name"], session=session, f=f, region=spec.region)
    except SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _wait(name: str, *, session, f, region: str) -> None:
    """--wait: follows the job; a job that did not succeed ends the command with status 1."""
    job = wait_for_job(name=name, session=session, api_endpoint=api_root(region, f.api_endpoint),
                       poll_interval=f.poll_interval)
    if job["state"] != "JOB_STATE_SUCCEEDED":
        message = _one_line(job.get("error", {}).get("message", "")) or "no error message"
        print(f"error: {name} ended {job['state']}: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    from absl import app, flags as absl_flags  # pylint: disable=ungrouped-imports

    _define_flags(absl_flags)
    app.run(main, flags_parser=_parse_flags)
