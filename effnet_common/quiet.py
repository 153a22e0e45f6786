"""A quiet first import of TensorFlow: its C++ start-up lines gone, real warnings kept.

TensorFlow's C++ runtime prints a few lines on every start (oneDNN, CPU instruction sets, the
CUDA probe on a machine without a GPU driver) before absl's C++ logging is initialized, which
TF_CPP_MIN_LOG_LEVEL does not reach; its Python logger adds an INFO line per SavedModel
signature listing hundreds of input names. `install()` (called by the package's __init__)
hooks the first `import tensorflow` of the process: standard error is sent to a temporary file
while TensorFlow loads and probes its devices, the known start-up lines are dropped, every other
line is written back; and INFO records that TensorFlow's and Keras' own modules log (through
absl or the `tensorflow` logger) are dropped, warnings kept. Set
EFFNET_TF_STARTUP_LOG=1 to see everything.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

_NOISE = re.compile("|".join((
    r"oneDNN custom operations are on",
    r"Could not find cuda drivers",
    r"failed call to cuInit",
    r"cpu_feature_guard|This TensorFlow binary is optimized|To enable the following instructions|"
    r"rebuild TensorFlow with the appropriate compiler flags",
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"TF-TRT Warning: Could not find TensorRT",
    r"computation placer already registered",
)))


def is_noise(line: str) -> bool:
    """True for one of TensorFlow's known start-up lines."""
    return bool(_NOISE.search(line))


class _Finder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, wrapping its loader so the import runs quietly."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with _filtered_stderr():
            self._loader.exec_module(module)
            module.config.list_physical_devices()  # the device probe prints too; it creates no context
        for name in ("tensorflow", "absl"):
            logging.getLogger(name).addFilter(_drop_framework_info)


class _filtered_stderr:
    """Sends file descriptor 2 to a temporary file; on exit writes back what is not noise."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._file = tempfile.TemporaryFile(mode="w+b")
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        kept = [line for line in self._file.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not is_noise(line)]
        self._file.close()
        if kept:
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
        return False


_FRAMEWORK_DIRS = tuple(f"{os.sep}{name}{os.sep}" for name in ("tensorflow", "tf_keras", "keras"))


_SLOW_CALLBACK = "is slow compared to the batch time"


def _drop_framework_info(record: logging.LogRecord) -> bool:
    """Keeps warnings and everything of ours; drops TensorFlow's and Keras' own INFO lines (the
    SavedModel signature listing, checkpoint sharding times, fingerprint paths), and Keras'
    "callback is slow compared to the batch time" warning, which a head step of 3 ms on cached
    embeddings trips at every phase start without anything being slow."""
    if _SLOW_CALLBACK in record.getMessage():
        return False
    return record.levelno >= logging.WARNING or not any(d in record.pathname for d in _FRAMEWORK_DIRS)


def install() -> None:
    """Hooks the process's first `import tensorflow` (nothing when it is already imported)."""
    if "tensorflow" in sys.modules or os.environ.get("EFFNET_TF_STARTUP_LOG") == "1":
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
