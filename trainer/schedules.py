"""The fine-tuning recipe as small pure functions: learning-rate scaling and schedule.

Learning rates are given for `base_batch_size` examples (--lr_base_batch_size). Above it they
grow with the square root of the batch -- the scaling rule for Adam (Malladi et al. 2022,
"On the SDEs and Scaling Rules for Adaptive Gradient Algorithms", arXiv:2205.10287; Granziol
et al. 2022, JMLR 23(173)) -- so more replicas or a larger auto batch keep the recipe. Below it
they are used as given: a smaller batch already takes proportionally more steps per epoch, and
shrinking the rate as well (linear scaling, Goyal et al. 2017, which is a rule for SGD) left the
head unconverged on small data -- measured in docs/training.md: 0.63 against 0.98 held-out
accuracy at batch 16/8.
"""
from __future__ import annotations

import math

import tf_keras as keras


def scaled_learning_rate(learning_rate: float, *, batch_size: int, base_batch_size: int) -> float:
    """`learning_rate` (set for `base_batch_size`) times sqrt(batch / base) above the base; as given at
    or below it, or when base is 0."""
    if base_batch_size <= 0 or batch_size <= base_batch_size:
        return learning_rate
    return learning_rate * math.sqrt(batch_size / base_batch_size)


WARMUP_FRACTION = 0.1


def warmup_steps(*, warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Warmup in steps, at most a tenth of the phase: a short phase spends its steps training."""
    return int(min(round(warmup_epochs * steps_per_epoch), total_steps * WARMUP_FRACTION))


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
