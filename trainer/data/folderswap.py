"""Replacing a folder of outputs whole: written beside it, swapped in, recoverable after a kill.

A job writes its complete output into a hidden sibling (`sibling(output_dir, "tmp")`), then
`swap_into_place` replaces the old folder with it, a marker file (trainer.prepare: dataset.json)
moved in last; `recover` cleans up after a job killed at any point, putting the previous output
back when the kill fell inside the swap. A reader never meets old and new files together.
"""
from __future__ import annotations

import os
import uuid
from typing import List

from absl import logging
import tensorflow as tf

from effnet_common import fileio


def sibling(output_dir: str, tag: str) -> str:
    """A hidden sibling folder name of `output_dir`, unique, marked with `tag` (tmp or old)."""
    parent, base = os.path.split(output_dir.rstrip("/"))
    return os.path.join(parent, f".{base}.prepare-{tag}-{uuid.uuid4().hex[:8]}")


def leftovers(output_dir: str, tag: str) -> List[str]:
    parent, base = os.path.split(output_dir.rstrip("/"))
    return [p.rstrip("/") for p in tf.io.gfile.glob(os.path.join(parent, f".{base}.prepare-{tag}-*"))]


def recover(output_dir: str, *, marker: str) -> None:
    """Cleans up after a run killed mid-way: deletes its temporary folder, and puts the
    previous output back if the kill fell inside the swap (the output then lacks `marker`,
    which the swap moves in last)."""
    for tmp in leftovers(output_dir, "tmp"):
        logging.warning("removing %s, left by an interrupted prepare", tmp)
        tf.io.gfile.rmtree(tmp)
    for old in leftovers(output_dir, "old"):
        if tf.io.gfile.exists(os.path.join(output_dir, marker)):
            tf.io.gfile.rmtree(old)
            continue
        logging.warning("restoring %s from %s, left by an interrupted prepare", output_dir, old)
        if tf.io.gfile.exists(output_dir):
            tf.io.gfile.rmtree(output_dir)
        fileio.move_folder(old, output_dir, last=marker)


def swap_into_place(tmp: str, output_dir: str, *, marker: str) -> None:
    """Replaces `output_dir` by the complete `tmp`, so that a reader (or a crash) never meets
    old and new shards together.

    On a local disk: two directory renames. On gs:// a rename copies objects one by one, so
    the old set is moved aside first, its `marker` file leaving first, and the new set is
    moved in with `marker` last: an interrupted swap leaves no marker, which
    `recover` reads as "put the old set back".
    """
    old = sibling(output_dir, "old") if tf.io.gfile.exists(output_dir) else None
    if old:
        fileio.move_folder(output_dir, old, first=marker)
    fileio.move_folder(tmp, output_dir, last=marker)
    if old:
        tf.io.gfile.rmtree(old)
