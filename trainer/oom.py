"""Out of memory mid-phase: halve the batch and go on, recorded in plan.json.

The memory plan (trainer/memory.py) sizes each phase's batch before training; an estimate can
still be wrong (another process on the device, allocator fragmentation). A ResourceExhaustedError
is raised before the step that caused it updates anything, so the weights are those of the last
good step, and the phase can continue at half the batch.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

from absl import logging
import tensorflow as tf

from trainer import schedules
from trainer.config import ConfigError, Phase
from trainer.rundir import RunDir


class OutOfMemoryError(ConfigError):
    """Even the smallest batch (one example per replica) ran out of memory."""


def halved_batch_size(batch_size: int, *, unit: int) -> Optional[int]:
    """Half the batch, rounded down to a multiple of `unit` (replicas x accumulation); None below it."""
    half = (batch_size // 2) // unit * unit
    return half if half >= unit else None


def fit_with_oom_recovery(fit_once: Callable[[int], Any], *, phase: Phase, replicas: int,
                          run_dir: Optional[RunDir] = None, accumulate_steps: int = 1) -> Any:
    """Calls fit_once(batch_size), halving the batch after each ResourceExhaustedError.

    fit_once must rebuild what depends on the batch (datasets, learning rate, compile) and
    continue from the model's current weights.

    Args:
      fit_once: trains the phase at a global batch size; its result is returned.
      phase: the planned phase (an int batch_size).
      replicas / accumulate_steps: the batch stays a multiple of their product.
      run_dir: the chief's run directory, where plan.json records each retry (None elsewhere).

    Raises:
      OutOfMemoryError: out of memory at batch = replicas x accumulate_steps.
    """
    batch = int(phase.batch_size)
    unit = replicas * accumulate_steps
    while True:
        try:
            return fit_once(batch)
        except tf.errors.ResourceExhaustedError as e:
            smaller = halved_batch_size(batch, unit=unit)
            reason = _first_line(e)
            if smaller is None:
                raise OutOfMemoryError(
                    f"the {phase.name} phase ran out of memory even at batch size {batch} ({reason}); use a device "
                    "with more memory, a smaller --image_size or --backbone, --unfreeze=top:N, or "
                    "--mixed_precision") from None
            logging.warning("phase %s: out of memory at batch size %d (%s); retrying at %d", phase.name, batch,
                            reason, smaller)
            if run_dir is not None:
                record_retry(run_dir, phase=phase, old=batch, new=smaller, reason=reason)
            batch = smaller


def _first_line(error: tf.errors.OpError) -> str:
    lines = (error.message or "").strip().splitlines()
    return lines[0][:200] if lines else "out of memory"


def record_retry(run_dir: RunDir, *, phase: Phase, old: int, new: int, reason: str) -> None:
    """Updates the phase's batch size and learning rate in plan.json and appends the retry."""
    document = run_dir.read_plan() or {"phases": []}
    entry = next((e for e in document["phases"] if e["name"] == phase.name), None)
    if entry is None:
        entry = {"name": phase.name, "oom_retries": []}
        document["phases"].append(entry)
    entry.setdefault("oom_retries", []).append({"batch_size": old, "new_batch_size": new, "error": reason})
    entry["batch_size"] = new
    entry["learning_rate"] = schedules.scaled_learning_rate(phase.learning_rate, batch_size=new,
                                                            base_batch_size=phase.base_batch_size)
    replicas = document.get("replicas")
    if replicas:
        entry["per_replica_batch_size"] = new // replicas
        entry["micro_batch_size"] = math.ceil(new // replicas / document.get("accumulate_steps", 1))
    run_dir.write_plan(document)
