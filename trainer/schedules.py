"""The fine-tuning recipe as small pure functions: learning-rate scaling and schedule.

Linear scaling (Goyal et al. 2017, arXiv:1706.02677): a learning rate given for
`base_batch_size` examples is multiplied by batch_size / base_batch_size, so a phase keeps its
recipe when its batch size changes (auto batch sizing, more replicas, OOM halving).
"""
from __future__ import annotations

import math

import tf_keras as keras


def scaled_learning_rate(learning_rate: float, *, batch_size: int, base_batch_size: int) -> float:
    """`learning_rate` (set for `base_batch_size`) scaled linearly to `batch_size`; base 0 = as given."""
    if base_batch_size <= 0:
        return learning_rate
    return learning_rate * batch_size / base_batch_size


def warmup_steps(*, warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Warmup in steps, at most half the phase, so a short phase still reaches its peak rate."""
    return int(min(round(warmup_epochs * steps_per_epoch), total_steps // 2))


def build_schedule(*, peak_learning_rate: float, total_steps: int, warmup: int):
    """Linear warmup to the peak, then cosine decay to zero over the rest of the phase."""
    decay_steps = max(1, total_steps - warmup)
    if warmup <= 0:
        return keras.optimizers.schedules.CosineDecay(peak_learning_rate, decay_steps)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps, warmup_target=peak_learning_rate, warmup_steps=warmup)


def steps_per_epoch(*, num_examples: int, batch_size: int, cap: int | None) -> int:
    """Steps in one pass over `num_examples`, capped by --steps_per_epoch."""
    steps = max(1, math.ceil(num_examples / batch_size))
    return min(steps, cap) if cap else steps
