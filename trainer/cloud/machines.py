"""What Vertex AI accepts, as data: machines, accelerators, TPU shapes, presets and prebuilt images.

The tables follow Vertex AI's "Configure compute resources for custom training" page
(COMPUTE_DOCS: machine list, GPU table, TPU section). `check_machine` refuses a combination
Vertex AI would reject, so an impossible request ends here in one line instead of in the console
minutes later.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Dict, Optional, Sequence, Tuple

from trainer.cloud.errors import CloudError

COMPUTE_DOCS = "https://cloud.google.com/vertex-ai/docs/training/configure-compute"

# GPUs an N1 machine may carry, by size class: the counts of the GPU table.
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

# Machines an endpoint's DeployedModel may run on (dedicatedResources; no GPUs offered yet).
PREDICTION_MACHINES = re.compile(r"(n1-(standard|highmem|highcpu)|n2-(standard|highmem|highcpu)|e2-(standard|highmem"
                                 r"|highcpu)|c2-standard|n2d-(standard|highmem|highcpu))-\d+")


@dataclasses.dataclass(frozen=True)
class Machine:
    """One replica's hardware, as a worker pool's machineSpec spells it.

    Attributes:
      machine_type: e.g. n1-standard-8, a2-highgpu-1g, ct5lp-hightpu-4t, cloud-tpu.
      accelerator_type, accelerator_count: the GPUs (or TPU v2/v3 cores) attached; "" and 0: none.
      tpu_topology: the TPU v5e slice shape (ct5lp-* machines), e.g. 2x2; "" elsewhere.
    """
    machine_type: str
    accelerator_type: str = ""
    accelerator_count: int = 0
    tpu_topology: str = ""

    @property
    def is_tpu(self) -> bool:
        """TPU VMs (ct5lp-*, ct6e-*) and the legacy cloud-tpu machine."""
        return self.machine_type == "cloud-tpu" or self.machine_type.startswith("ct")

    def describe(self) -> str:
        """`n1-standard-8 + 1 x NVIDIA_TESLA_T4`, `ct5lp-hightpu-4t 2x2`: the shape, for help texts."""
        gpu = f" + {self.accelerator_count} x {self.accelerator_type}" if self.accelerator_type else ""
        tpu = f" {self.tpu_topology}" if self.tpu_topology else ""
        return f"{self.machine_type}{gpu}{tpu}"


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named hardware shape; every field can be overridden by a flag.

    Attributes:
      machine: each replica's machine (the chief's, and the workers' when there are workers).
      workers: replicas of the second (worker) pool; 0 = the chief alone.
      trainer_args: prepended to the user's trainer arguments, so the user's own flags win.
    """
    machine: Machine
    workers: int = 0
    trainer_args: Tuple[str, ...] = ()

    def describe(self) -> str:
        """`n1-standard-8 + 1 x NVIDIA_TESLA_T4 + 1 worker`: the shape, for --preset's help."""
        return self.machine.describe() + (f" + {self.workers} worker" if self.workers else "")


_CPU = Preset(machine=Machine(machine_type="n1-standard-8"))
_GPU = dataclasses.replace(_CPU, machine=dataclasses.replace(_CPU.machine, accelerator_type="NVIDIA_TESLA_T4",
                                                             accelerator_count=1))
PRESETS: Dict[str, Preset] = {
    "cpu": _CPU,
    "gpu": _GPU,
    "multi-gpu": dataclasses.replace(_GPU, machine=dataclasses.replace(_GPU.machine, machine_type="n1-standard-16",
                                                                       accelerator_count=4),
                                     trainer_args=("--strategy=mirrored",)),
    "multi-worker": dataclasses.replace(_GPU, workers=1, trainer_args=("--strategy=multi_worker",)),
    "tpu": Preset(machine=Machine(machine_type="ct5lp-hightpu-4t", tpu_topology="2x2"),
                  trainer_args=("--strategy=tpu", "--tpu=local")),
}


def check_machine(machine: Machine) -> None:
    """Refuses a machine/accelerator combination Vertex AI would reject or the trainer cannot use.

    Raises:
      CloudError: naming the flag to change and what would work.
    """
    machine_type, accelerator_type = machine.machine_type, machine.accelerator_type
    if machine.is_tpu:
        _check_tpu(machine)
    elif accelerator_type.startswith("TPU_"):
        raise CloudError(f"--accelerator_type={accelerator_type} cannot attach to --machine_type="
                         f"{machine_type}: TPU v2/v3 need --machine_type=cloud-tpu --accelerator_count=8, "
                         "TPU v5e a ct5lp-hightpu-* machine with --tpu_topology")
    elif machine.tpu_topology:
        raise CloudError(f"--tpu_topology={machine.tpu_topology} applies to TPU v5e machines (ct5lp-hightpu-*), "
                         f"not --machine_type={machine_type}: drop --tpu_topology")
    elif accelerator_type:
        _check_gpu(machine)
    elif machine_type in FIXED_GPUS:
        gpu, count = FIXED_GPUS[machine_type]
        raise CloudError(f"--machine_type={machine_type} comes with GPUs: pass "
                         f"--accelerator_type={gpu} --accelerator_count={count}")
    elif machine.accelerator_count:
        raise CloudError(f"--accelerator_count={machine.accelerator_count} needs --accelerator_type "
                         "(e.g. NVIDIA_TESLA_T4)")
    elif machine_type not in CPU_MACHINES:
        raise CloudError(f"--machine_type={machine_type} is not a Vertex AI training machine type "
                         f"(list: {COMPUTE_DOCS}); fix the name or pass --skip_machine_check")


def _check_gpu(machine: Machine) -> None:
    machine_type, accelerator_type, accelerator_count, _ = dataclasses.astuple(machine)
    if machine_type in FIXED_GPUS:
        gpu, count = FIXED_GPUS[machine_type]
        if (accelerator_type, accelerator_count) != (gpu, count):
            raise CloudError(f"--machine_type={machine_type} comes with exactly {count} {gpu}: pass "
                             f"--accelerator_type={gpu} --accelerator_count={count}")
        return
    if machine_type not in N1_GPUS:
        where = "takes no GPUs" if machine_type in CPU_MACHINES else "is not a Vertex AI training machine type"
        raise CloudError(f"--machine_type={machine_type} {where}: GPUs need an n1, a2, a3, a4, g2 or g4 "
                         f"machine ({COMPUTE_DOCS})")
    allowed = N1_GPUS[machine_type]
    if accelerator_type not in allowed:
        hosts = sorted(m for m, (gpu, _) in FIXED_GPUS.items() if gpu == accelerator_type)
        hint = f"{accelerator_type} comes on {', '.join(hosts)}" if hosts else "check the spelling"
        raise CloudError(f"--accelerator_type={accelerator_type} cannot attach to {machine_type}, which takes "
                         f"{', '.join(sorted(allowed))}; {hint}")
    counts = allowed[accelerator_type]
    if accelerator_count not in counts:
        raise CloudError(f"--accelerator_count={accelerator_count}: {machine_type} takes "
                         f"{_or_list(counts)} {accelerator_type}; pick one of those counts")


def _check_tpu(machine: Machine) -> None:
    machine_type, accelerator_type, accelerator_count, tpu_topology = dataclasses.astuple(machine)
    if machine_type == "cloud-tpu":
        if accelerator_type not in LEGACY_TPUS:
            raise CloudError(f"--machine_type=cloud-tpu needs --accelerator_type=TPU_V2 or TPU_V3, "
                             f"not {accelerator_type or 'none'}")
        if accelerator_count != 8 or tpu_topology:
            raise CloudError(f"--accelerator_count={accelerator_count}: the trainer runs on one TPU host, "
                             "so cloud-tpu takes --accelerator_count=8 and no --tpu_topology (pods need a "
                             "multi-host TPU resolver)")
        return
    topologies = TPU_V5E_TOPOLOGIES.get(machine_type)
    if topologies is None:
        raise CloudError(f"--machine_type={machine_type}: the TPU VMs Vertex AI trains TensorFlow on are "
                         f"{', '.join(TPU_V5E_TOPOLOGIES)} (TPU v5e) and cloud-tpu (v2/v3)")
    if accelerator_type or accelerator_count:
        raise CloudError(f"--machine_type={machine_type} implies its TPU chips: drop --accelerator_type "
                         "and --accelerator_count, set --tpu_topology")
    if tpu_topology not in topologies:
        many = " (multi-host slices need a multi-host TPU resolver)" if tpu_topology in TPU_V5E_MULTI_HOST else ""
        raise CloudError(f"--tpu_topology={tpu_topology or 'none'}: {machine_type} takes "
                         f"--tpu_topology={topologies[0]} on one host{many}")


def _or_list(values: Sequence[int]) -> str:
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def resolve(preset: Preset, *, machine_type: Optional[str] = None, accelerator_type: Optional[str] = None,
            accelerator_count: Optional[int] = None, tpu_topology: Optional[str] = None) -> Machine:
    """The preset's machine with the machine flags given (None = the preset's value) applied.

    A new --machine_type keeps the preset's GPU where that machine can carry it (another n1) and
    drops it elsewhere; machines that come with fixed GPUs or TPU chips get theirs filled in, so
    `--machine_type=a2-highgpu-2g` alone is enough.
    """
    base = preset.machine
    same_machine = machine_type in (None, base.machine_type)
    machine = machine_type or base.machine_type
    fixed_gpu, fixed_count = FIXED_GPUS.get(machine, ("", 0))
    keeps_gpu = same_machine or base.accelerator_type in N1_GPUS.get(machine, {})
    if accelerator_type is None:
        accelerator_type = base.accelerator_type if keeps_gpu else fixed_gpu
    if accelerator_count is None:
        if accelerator_type and accelerator_type == base.accelerator_type:
            accelerator_count = base.accelerator_count
        else:
            accelerator_count = fixed_count if accelerator_type and accelerator_type == fixed_gpu else int(
                bool(accelerator_type))
    if tpu_topology is None:
        tpu_topology = base.tpu_topology if same_machine else TPU_V5E_TOPOLOGIES.get(machine, ("",))[0]
    return Machine(machine_type=machine, accelerator_type=accelerator_type, accelerator_count=accelerator_count,
                   tpu_topology=tpu_topology)


def check_preset_fits(*, name: str, machine: Machine) -> None:
    """Refuses a machine that drops the accelerator family the preset's trainer flags rely on.

    Vertex AI would accept such a job and bill the machine; the trainer would then fail at its
    first step (--strategy=tpu --tpu=local on a VM without a TPU) or crawl on CPUs.
    """
    base = PRESETS[name]
    if "--strategy=tpu" in base.trainer_args and not machine.is_tpu:
        raise CloudError(f"--preset={name} trains on a TPU (--strategy=tpu --tpu=local), but --machine_type="
                         f"{machine.machine_type} has none: pick a TPU machine (ct5lp-hightpu-4t with --tpu_topology=2x2, "
                         "or cloud-tpu) or --preset=cpu/gpu")
    if base.machine.accelerator_type.startswith("NVIDIA_") and not machine.accelerator_type.startswith("NVIDIA_"):
        raise CloudError(f"--preset={name} trains on GPUs, but --machine_type={machine.machine_type} carries none: pick "
                         "an n1 machine (it keeps the preset's GPU), a GPU machine such as g2-standard-8, or --preset=cpu")


# --- Vertex AI's prebuilt containers. ---

PREBUILT_DOCS = "https://cloud.google.com/vertex-ai/docs/predictions/pre-built-containers"
# The newest prebuilt TensorFlow training container (pythonPackageSpec.executorImageUri) and
# prediction container (TF Serving inside; the export's ops are plain TF ones, which older TF
# Serving releases load).
PREBUILT_TRAINING_CPU = "{prefix}-docker.pkg.dev/vertex-ai/training/tf-cpu.2-17.py310:latest"
PREBUILT_PREDICTION_CPU = "{prefix}-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"


def registry_prefix(region: str) -> str:
    """`us`, `europe` or `asia`: the Artifact Registry multi-region a region's prebuilt images come from.

    Google publishes every prebuilt training and prediction image three times, in
    us-docker.pkg.dev, europe-docker.pkg.dev and asia-docker.pkg.dev; any of the three works
    from any region, and the console picks the one nearest the region to cut pull latency
    (PREBUILT_DOCS, "Available container images"; the training page
    https://cloud.google.com/vertex-ai/docs/training/pre-built-containers says the same). So:
    europe-* pulls from europe; asia-*, australia-* and the Middle East's me-* from asia (the
    europe multi-region holds EU data centers only; the Middle East is West Asia); everything
    else (us-*, northamerica-*, southamerica-*, africa-*) from us.
    """
    if region.startswith("europe-"):
        return "europe"
    if region.startswith(("asia-", "australia-", "me-")):
        return "asia"
    return "us"


def default_executor_image(*, region: str, machine: Machine) -> str:
    """The prebuilt TensorFlow training container for the Python-package route.

    Vertex AI's newest prebuilt TensorFlow training images carry TF 2.17; installing this package
    upgrades TensorFlow inside them to 2.21, which is fine on CPUs. Their CUDA/cuDNN libraries
    are the ones TF 2.17 was built against, not 2.21's (it may silently fall back to the CPU), and
    there is no TF 2.21 TPU image at all, so accelerators need a container of our own (the
    Dockerfile) or an explicit --executor_image_uri.
    """
    if machine.accelerator_type or machine.is_tpu:
        raise CloudError(f"--package on {machine.accelerator_type or machine.machine_type}: Vertex AI's prebuilt TensorFlow "
                         "containers stop at TF 2.17 (its CUDA libraries, no TPU image for 2.21); build the Dockerfile "
                         "and pass --image_uri, or pass --executor_image_uri of a TF 2.21 image")
    return PREBUILT_TRAINING_CPU.format(prefix=registry_prefix(region))


def prediction_image(*, region: str) -> str:
    """The prebuilt TensorFlow prediction container an uploaded Model runs in, nearest `region`."""
    return PREBUILT_PREDICTION_CPU.format(prefix=registry_prefix(region))
