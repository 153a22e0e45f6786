"""The small pretrained backbone the tests transfer from, cached across test sessions.

`trainer.demo.pretrain_backbone` trains B0 at 64 px on the demo's `patterns` task (a different
task from the demo's shapes). The file is cached under EFFNET_TEST_CACHE (default
~/.cache/effnet-trainer-tests) by a key that names the recipe, so a machine pays for it once.
"""
from __future__ import annotations

import os

import trainer  # noqa: F401

RECIPE = "b0-64-glyphs-e8-n96-v3"


def cache_dir() -> str:
    path = os.environ.get("EFFNET_TEST_CACHE") or os.path.expanduser("~/.cache/effnet-trainer-tests")
    os.makedirs(path, exist_ok=True)
    return path


def pretrained_b0_weights() -> str:
    """Path of the cached notop HDF5 weights file; pretrains it (minutes on 2 cores) if absent."""
    from trainer import demo  # pylint: disable=import-outside-toplevel
    path = os.path.join(cache_dir(), f"{RECIPE}.h5")
    return path if os.path.exists(path) else demo.pretrain_backbone(path, epochs=8, per_class=96)


if __name__ == "__main__":
    print(pretrained_b0_weights())
