"""What a command does to its process before TensorFlow loads, and only a command.

Importing a library module of this project changes nothing in the process except
TF_USE_LEGACY_KERAS (effnet_common/__init__.py says why). A command (`python -m trainer.task`,
`effnet-train`, ...) calls `prepare()` first, before its own imports load TensorFlow:

- TF_CPP_MIN_LOG_LEVEL=1 (setdefault): TensorFlow's C++ INFO lines off;
- `quiet.install()`: the C++ start-up lines TF_CPP_MIN_LOG_LEVEL does not reach, dropped;
- `gcs.apply_tf_gcs_defaults()`: gs:// read tuning, read by TensorFlow when it is imported.

`python -m trainer.X` runs it from the first lines of X (under `if __name__ == "__main__":`, so
an import of X as a library does not); the console scripts run it in trainer/commands.py
before importing the command's module.
"""
from __future__ import annotations

import os

from effnet_common import gcs, quiet


def prepare() -> None:
    """Sets up this process for a command; idempotent, and a user's own settings win."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    quiet.install()
    gcs.apply_tf_gcs_defaults()
