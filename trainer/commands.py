"""The console scripts (setup.py's entry_points): each prepares the process (effnet_common.process),
then imports its command's module and runs it, so TensorFlow loads after the preparation.

`python -m trainer.task` and the other `python -m` forms do the same from their modules' first
lines; both routes end in the module's `run_main` (flagutil.run).
"""
from __future__ import annotations

import importlib
from typing import Callable

from effnet_common import process


def _command(module: str) -> Callable[[], None]:
    def run() -> None:
        process.prepare()
        importlib.import_module(module).run_main()
    run.__doc__ = f"Console-script entry point of `python -m {module}`."
    return run


prepare = _command("trainer.prepare")
train = _command("trainer.task")
evaluate = _command("trainer.evaluate")
audit = _command("trainer.audit")
predict = _command("trainer.predict")
export = _command("trainer.export")
weights = _command("trainer.pretrained")
client = _command("serving.client")
batch_predict = _command("trainer.cloud.batch_predict")
