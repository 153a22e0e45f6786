"""Per-phase batch-size plan (placeholder until the memory model lands: explicit sizes only)."""
from __future__ import annotations

from typing import Tuple

from trainer.config import Config, ConfigError, Phase


def plan(cfg: Config, *, model, replicas: int) -> Tuple[Phase, ...]:
    """The phases with integer global batch sizes, each divisible by the replica count."""
    del model
    phases = []
    for phase in cfg.phases:
        if phase.batch_size == "auto":
            raise ConfigError(f"--{phase.name}_batch_size=auto is not available yet; pass a number")
        if phase.batch_size % replicas:
            raise ConfigError(f"--{phase.name}_batch_size={phase.batch_size} is not divisible by the "
                              f"{replicas} replicas; pass a multiple of {replicas}")
        phases.append(phase)
    return tuple(phases)
