"""Out of memory mid-phase: halve the batch and go on, recorded in plan.json.

The memory plan (trainer/training/memory.py) sizes each phase's batch before training; an estimate can
still be wrong (another process on the device, allocator fragmentation). A ResourceExhaustedError
is raised before the step that caused it updates anything, so the weights are those of the last
good step, and the phase can continue at half the batch.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from absl import logging
import tensorflow as tf

from effnet_common import flagutil
from trainer.configs.config import ConfigError
from trainer.runtime.rundir import RunDir
from trainer.training import memory, schedules


class OutOfMemoryError(ConfigError):
    """Even the smallest batch (one example per replica) ran out of memory."""


def halved_batch_size(batch_size: int, *, unit: int) -> Optional[int]:
    """Half the batch, rounded down to a multiple of `unit` (replicas x accumulation); None below it."""
    half = (batch_size // 2) // unit * unit
    return half if half >= unit else None


def fit_with_oom_recovery(fit_once: Callable[[schedules.PhasePlan], Any], *, plan: schedules.PhasePlan,
                          run_dir: Optional[RunDir] = None) -> Any:
    """Calls fit_once(plan), revising the plan to half the batch after each ResourceExhaustedError.

    fit_once must rebuild what depends on the batch (datasets, learning rate, compile) from the
    plan it gets and continue from the model's current weights.

    Args:
      fit_once: trains the phase as a plan says; its result is returned.
      plan: the phase's plan from the memory plan; the batch stays a multiple of its replicas x
        accumulation steps.
      run_dir: the chief's run directory, where plan.json records each retry (None elsewhere).

    Raises:
      OutOfMemoryError: out of memory at batch = replicas x accumulate_steps.
    """
    unit = plan.replicas * plan.accumulate_steps
    while True:
        try:
            return fit_once(plan)
        except tf.errors.ResourceExhaustedError as e:
            smaller = halved_batch_size(plan.batch_size, unit=unit)
            reason = flagutil.one_line(e, limit=200, first_line=True)
            if smaller is None:
                raise OutOfMemoryError(
                    f"the {plan.name} phase ran out of memory even at batch size {plan.batch_size} ({reason}); use a "
                    "device with more memory, a smaller --image_size or --backbone, --unfreeze=top:N, or "
                    "--mixed_precision") from None
            logging.warning("phase %s: out of memory at batch size %d (%s); retrying at %d", plan.name,
                            plan.batch_size, reason, smaller)
            revised = plan.with_batch_size(smaller)
            if run_dir is not None:
                memory.record_retry(run_dir, old=plan, new=revised, reason=reason)
            plan = revised
