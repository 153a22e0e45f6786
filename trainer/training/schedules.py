"""The fine-tuning recipe as small pure functions: learning-rate scaling and schedule, and the
`PhasePlan` value that carries a phase's derived numbers from the memory plan to training.

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

import dataclasses
import math
from typing import Optional

import tf_keras as keras

from trainer.configs.config import Phase


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


@dataclasses.dataclass(frozen=True)
class PhasePlan:
    """Every number one phase trains with, derived once from its settings and its batch size.

    The memory plan (trainer/training/memory.py) produces it, out-of-memory recovery (trainer/training/oom.py)
    revises it with `with_batch_size`, training (trainer/training/train.py) consumes it, and the run
    directory writes it into plan.json: none of them recomputes a step count or a rate.

    Attributes:
      phase: the phase's settings (its batch_size the planned global batch).
      replicas / accumulate_steps: what the global batch is divided among.
      num_examples: training examples, or None when unknown (then `steps_cap` bounds an epoch).
      steps_cap: --steps_per_epoch, or None.
      auto: the batch size came from the memory plan (`auto`).
      total_params / trainable_params: the model's parameters, and those the phase trains.
      on_embeddings: the phase trains the classifier's head on cached embeddings (the frozen
        phase where the cache applies), not the network on images.
    """
    phase: Phase
    replicas: int = 1
    accumulate_steps: int = 1
    num_examples: Optional[int] = None
    steps_cap: Optional[int] = None
    auto: bool = False
    total_params: int = 0
    trainable_params: int = 0
    on_embeddings: bool = False

    @property
    def name(self) -> str:
        return self.phase.name

    @property
    def epochs(self) -> int:
        return self.phase.epochs

    @property
    def batch_size(self) -> int:
        """The global batch."""
        return int(self.phase.batch_size)

    @property
    def per_replica_batch_size(self) -> int:
        return self.batch_size // self.replicas

    @property
    def micro_batch_size(self) -> int:
        """Examples per forward pass of one replica (gradient accumulation splits the replica's batch)."""
        return math.ceil(self.per_replica_batch_size / self.accumulate_steps)

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(num_examples=self.num_examples or self.batch_size, batch_size=self.batch_size,
                               cap=self.steps_cap)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def peak_learning_rate(self) -> float:
        return scaled_learning_rate(self.phase.learning_rate, batch_size=self.batch_size,
                                    base_batch_size=self.phase.base_batch_size)

    @property
    def warmup_steps(self) -> int:
        return warmup_steps(warmup_epochs=self.phase.warmup_epochs, steps_per_epoch=self.steps_per_epoch,
                            total_steps=self.total_steps)

    def with_batch_size(self, batch_size: int) -> "PhasePlan":
        """The same phase at another global batch (out-of-memory recovery): every derived number follows."""
        return dataclasses.replace(self, phase=self.phase.with_batch_size(batch_size))

    def build_schedule(self):
        """The phase's learning-rate schedule: warmup to the peak, cosine decay to zero."""
        return build_schedule(peak_learning_rate=self.peak_learning_rate, total_steps=self.total_steps,
                              warmup=self.warmup_steps)

    def to_dict(self) -> dict:
        """The plan.json fields of the phase (the memory estimate adds its own)."""
        return {"name": self.name, "epochs": self.epochs, "unfreeze": self.phase.unfreeze,
                "batch_size": self.batch_size, "per_replica_batch_size": self.per_replica_batch_size,
                "micro_batch_size": self.micro_batch_size, "auto": self.auto,
                "learning_rate": self.peak_learning_rate, "steps_per_epoch": self.steps_per_epoch,
                "warmup_steps": self.warmup_steps,
                "trains": "head on cached embeddings" if self.on_embeddings else "network on images"}
