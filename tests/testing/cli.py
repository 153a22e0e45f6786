"""Running the package's commands as the user does: `python -m trainer.<command>` in a child
process, so no test drives absl's process-wide FLAGS and every run starts from a clean slate.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Mapping, Optional

from tests.testing.presets import REPO_DIR as ROOT
_OUR_ERROR = re.compile(r"^(error|trainer\.\w+): ")


def run_module(module: str, *args: str, env: Optional[Mapping[str, str]] = None,
               timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repository root; env is added to os.environ."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def error_lines(stderr: str) -> list:
    """stderr lines that are the command's own errors or a traceback (TensorFlow's and absl's log
    records aside)."""
    return [line for line in stderr.splitlines() if _OUR_ERROR.match(line) or "Traceback" in line]


def assert_one_error_line(result: subprocess.CompletedProcess, *words: str, code: int = 2) -> str:
    """The run ended with `code` and exactly one error line, no traceback, naming every word."""
    assert result.returncode == code, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "Traceback" not in lines[0], result.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def task_command(records: str, model_dir: str, *extra: str, module: str = "trainer.task") -> list:
    """The trainer command of the multi-process tests (preemption, multi-worker): the tiny
    backbone at its 32 px, no pretrained weights, no validation data; both phases, the whole
    backbone fine-tuned."""
    from tests.testing.presets import TINY, TINY_SIZE  # pylint: disable=import-outside-toplevel
    return [sys.executable, "-m", module, f"--train_data={records}/train-*.tfrecord",
            f"--model_dir={model_dir}", f"--backbone={TINY}", "--weights=none", f"--image_size={TINY_SIZE}",
            "--frozen_batch_size=8", "--finetune_batch_size=8", "--warmup_epochs=0",
            "--early_stopping_patience=0", "--seed=1", *extra]


def train_flags(model_dir, records: str, weights: str, *extra: str, backbone: Optional[str] = None) -> list:
    """The flags of the small two-phase runs on the demo's TFRecords (4 steps an epoch, rates as
    given), for `run_module('trainer.task', *train_flags(...))`: the default backbone (B0) at
    IMAGE_SIZE, or `backbone` (presets.PRETRAINED, Lite0, for runs from ImageNet weights;
    presets.TINY at TINY_SIZE where EfficientNet is not what the test checks)."""
    from tests.testing.presets import IMAGE_SIZE, TINY, TINY_SIZE  # pylint: disable=import-outside-toplevel
    model = [] if backbone is None else [f"--backbone={backbone}"]
    size = TINY_SIZE if backbone == TINY else IMAGE_SIZE
    return [f"--train_data={records}/train-*.tfrecord", f"--eval_data={records}/validation-*.tfrecord",
            f"--model_dir={model_dir}", *model, f"--weights={weights}", f"--image_size={size}",
            "--frozen_batch_size=16", "--finetune_batch_size=8", "--lr_base_batch_size=0",
            "--frozen_learning_rate=0.01", "--finetune_learning_rate=0.0005", "--warmup_epochs=0",
            "--early_stopping_patience=0", "--steps_per_epoch=4", "--seed=1", "--noeval_report", *extra]


def task_refusal(*args: str) -> str:
    """The one `error: ...` line `python -m trainer.task args...` ends in, found in this process:
    the flags parsed as the command parses them, the Config built and the data inspected (what
    task.main does before training), each mistake formatted by the one formatter. absl's
    process-wide FLAGS are back to their defaults and unparsed afterwards. For refusals that need
    no training; that a refusal ends the process with exit status 2 is checked once, in a child
    process (tests/test_task.py)."""
    import contextlib  # pylint: disable=import-outside-toplevel
    import io  # pylint: disable=import-outside-toplevel
    from absl import flags  # pylint: disable=import-outside-toplevel
    from effnet_common import errors, flagutil  # pylint: disable=import-outside-toplevel
    from trainer import task  # pylint: disable=import-outside-toplevel
    from trainer.data import inspection  # pylint: disable=import-outside-toplevel
    task.define_flags()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            flagutil.parse_flags(["trainer.task", *args])
            inspection.inspect_data(task.build_config())
    except SystemExit as e:  # a flag parsing mistake: flagutil.fail printed it
        assert e.code == flagutil.USER_ERROR, stderr.getvalue()
        return stderr.getvalue().strip()
    except errors.UserError as e:
        return f"error: {flagutil.one_line(e)}"
    finally:
        flags.FLAGS.unparse_flags()
    raise AssertionError(f"trainer.task {' '.join(args)} was not refused")
