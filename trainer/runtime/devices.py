"""Device memory: what one replica may use, from --memory_budget_gb or detected (nvidia-smi for
GPUs, the TPU type's HBM, available RAM capped by a container's cgroup limit on CPU), and the
host's RAM as one budget for everything that keeps data in it.

Host RAM, one budget: each cache may take at most its share of the available RAM (the decoded
pixels `PIXEL_CACHE_SHARE`, the frozen phase's embeddings `EMBEDDING_CACHE_SHARE`), and on CPU the
memory plan gets what the pixel cache will keep left over (`detect_budget(reserved_bytes=...)`).
The embedding cache lives while the frozen phase trains the head on it, a phase the plan sizes
for the head alone (a few MB), so the shares never add up to more than the machine.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from typing import Optional, Tuple

import tensorflow as tf

GIB = 1024 ** 3
MIB = 1024 ** 2
# HBM per TensorFlow TPU device (a core on v2/v3, a chip on v4 and later), from Google Cloud's
# TPU system architecture pages.
TPU_HBM_GIB = {"v2": 8, "v3": 16, "v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
PIXEL_CACHE_SHARE = 0.25
EMBEDDING_CACHE_SHARE = 0.25


@dataclasses.dataclass(frozen=True)
class Budget:
    """Memory one replica may use, and where the figure came from (for the plan's log)."""
    bytes: int
    device: str
    source: str


def device_kind() -> str:
    """TPU, GPU or CPU: the kind of device the replicas run on."""
    for kind in ("TPU", "GPU"):
        if tf.config.list_logical_devices(kind):
            return kind
    return "CPU"


def ram_share(share: float) -> int:
    """Bytes of the available host RAM a cache may take (`PIXEL_CACHE_SHARE`, `EMBEDDING_CACHE_SHARE`)."""
    return int(cpu_available_bytes() * share)


def detect_budget(*, memory_budget_gb: Optional[float], replicas: int, device: Optional[str] = None,
                  reserved_bytes: int = 0) -> Optional[Budget]:
    """One replica's memory: --memory_budget_gb, else detected; None when it cannot be known.

    --memory_budget_gb is the memory of one device (a GPU, a TPU core/chip); on CPU it is the
    RAM the process may use, shared by the replicas of this host. `reserved_bytes`: host RAM
    another part of the run keeps (the pixel cache), left out of a detected CPU budget.
    """
    device = device or device_kind()
    local = max(1, min(replicas, len(tf.config.list_logical_devices("CPU")))) if device == "CPU" else 1
    if memory_budget_gb is not None:
        return Budget(int(memory_budget_gb * GIB / local), device, "--memory_budget_gb")
    if device == "GPU":
        found = gpu_memory_bytes()
        return Budget(found[0], device, found[1]) if found else None
    if device == "TPU":
        return Budget(*tpu_memory_bytes())
    available = max(0, cpu_available_bytes() - reserved_bytes)
    kept = f" less the pixel cache's {reserved_bytes / MIB:.0f} MiB" if reserved_bytes else ""
    return Budget(available // local, device, f"available RAM{kept}" + (f" / {local} replicas" if local > 1 else ""))


def gpu_memory_bytes() -> Optional[Tuple[int, str]]:
    """Total memory of the smallest GPU from nvidia-smi (one replica per GPU), or None.

    TensorFlow's device details name the GPU but not its memory, hence nvidia-smi.
    """
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return min(int(float(line)) for line in out.split()) * MIB, "nvidia-smi memory.total"
    except (subprocess.SubprocessError, OSError, ValueError):
        return None


def tpu_memory_bytes() -> Tuple[int, str, str]:
    """(HBM of one TPU device, "TPU", source), by the TPU type in the device details."""
    kind = ""
    for device in tf.config.list_physical_devices("TPU")[:1]:
        try:
            kind = str(tf.config.experimental.get_device_details(device).get("device_kind", ""))
        except (ValueError, RuntimeError, NotImplementedError):
            kind = ""
    found = tpu_hbm_bytes(kind)
    if found:
        return found, "TPU", f"HBM of {kind}"
    return (min(TPU_HBM_GIB.values()) * GIB, "TPU",
            f"TPU type {kind or 'unknown'}: the smallest HBM; pass --memory_budget_gb")


def tpu_hbm_bytes(kind: str) -> Optional[int]:
    """HBM per TensorFlow device for a TPU type such as 'TPU v4', 'TPU v5 lite', 'v5p'; None if unknown."""
    match = re.search(r"v(\d+)\s*(lite|litepod|e|p)?\b", kind.lower())
    if not match:
        return None
    suffix = {"lite": "e", "litepod": "e"}.get(match.group(2), match.group(2) or "")
    return TPU_HBM_GIB.get(f"v{match.group(1)}{suffix}", 0) * GIB or None


def cpu_available_bytes() -> int:
    """Available RAM: /proc/meminfo's MemAvailable, capped by a cgroup (container) limit."""
    available = _meminfo_available()
    limit = _cgroup_headroom()
    return min(x for x in (available, limit) if x is not None) if (available or limit) else _physical_bytes()


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_headroom() -> Optional[int]:
    """limit - usage of this process's memory cgroup (v2, then v1); None when unlimited."""
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_path) as f:
                limit = f.read().strip()
            with open(usage_path) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2 ** 60:
            return None
        return max(0, int(limit) - usage)
    return None


def _physical_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
