"""The small pretrained backbone the tests transfer from: the demo's stand-in, cached across sessions.

`trainer.demo.pretrained_weights` trains B0 at 64 px from scratch on the `glyphs` task (other
classes than the demo's shapes, which the tests classify) once per recipe and keeps the file
under EFFNET_CACHE (default ~/.cache/effnet-trainer), so a machine pays for it once.
"""
from __future__ import annotations

import trainer  # noqa: F401


def pretrained_b0_weights() -> str:
    """Path of the cached notop HDF5 weights file; pretrains it (about 2 minutes on 2 cores) if absent."""
    from trainer import demo  # pylint: disable=import-outside-toplevel
    return demo.pretrained_weights()


if __name__ == "__main__":
    print(pretrained_b0_weights())
