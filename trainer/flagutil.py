"""Flag definition that tolerates another entry point of this package in the same process.

Each CLI (trainer.task, trainer.prepare, trainer.demo, trainer.evaluate, ...) defines its absl
flags only when it runs. Tests and the demo import several of them into one process, where two
CLIs may both have, e.g., --seed or --label_offset, with the same meaning and default: the
first definition serves both.
"""
from absl import flags


def define(kind: str, name: str, *args, **kwargs) -> None:
    """flags.DEFINE_<kind>(name, *args, **kwargs) unless `name` is defined already."""
    if name not in flags.FLAGS:
        getattr(flags, f"DEFINE_{kind}")(name, *args, **kwargs)
