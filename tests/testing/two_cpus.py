"""Two logical CPU devices for MirroredStrategy tests, in a fresh process.

Logical devices must be configured before TensorFlow initializes its runtime, which a pytest
process has long done, and they would change what every later test sees (memory planning counts
CPU devices). So `run` starts `python -m tests.testing.two_cpus MODULE:FUNCTION [ARGS...]`, which
splits the CPU in two, calls FUNCTION(*ARGS) and prints its JSON-able result as the last line.
The conftest fixture `two_cpu_process` hands `run` to tests.
"""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import trainer  # noqa: F401  # sets TF_USE_LEGACY_KERAS before TensorFlow loads

from tests.testing.cli import ROOT

DEVICES = ("/cpu:0", "/cpu:1")


def set_up() -> None:
    """Splits the physical CPU into the two logical devices of DEVICES."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * len(DEVICES))


def mirrored_strategy():
    """MirroredStrategy over both logical CPUs (set_up first)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.distribute.MirroredStrategy(devices=list(DEVICES))


def run(target: str, *args: str, timeout: float = 900):
    """FUNCTION(*args)'s result, computed in a fresh process with two logical CPUs."""
    result = subprocess.run([sys.executable, "-m", "tests.testing.two_cpus", target, *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv) -> None:
    set_up()
    module, _, function = argv[0].partition(":")
    print(json.dumps(getattr(importlib.import_module(module), function)(*argv[1:])), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
