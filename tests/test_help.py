"""Help for people: every command's --help exits 0 and starts with what the command does and one
command line to type, then its own flags grouped by purpose, the required ones marked; help
texts that state a number agree with the code.

The texts are built in this process (each command's define_flags, then flagutil.help_text, as
flagutil.run does); that --help exits 0 before the command runs is checked in child processes for
the commands that start fast (trainer.task imports no TensorFlow to answer it) and one that loads
TensorFlow.
"""
import ast
import importlib
import math
import pathlib
import re

import pytest
from absl import flags

from effnet_common import flagutil
from tests.testing.cli import run_module
from tests.testing import presets

REPO_DIR = pathlib.Path(presets.REPO_DIR)

COMMANDS = ("trainer.task", "trainer.prepare", "trainer.evaluate", "trainer.predict", "trainer.export",
            "trainer.audit", "trainer.pretrained", "trainer.demo", "serving.client", "trainer.cloud.submit",
            "trainer.cloud.deploy", "trainer.cloud.batch_predict")


def help_of(module: str) -> str:
    """The command's --help text, as flagutil.run prints it."""
    command = importlib.import_module(module)
    command.define_flags()
    return flagutil.help_text(module, command.USAGE)


def test_every_console_script_is_a_command_here():
    """setup.py's console scripts and trainer/commands.py name no command this file does not check."""
    tree = ast.parse((REPO_DIR / "setup.py").read_text())
    scripts = [node.value for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.match(r"effnet-[\w-]+=", node.value)]
    assert len(scripts) >= 11
    commands = importlib.import_module("trainer.commands")
    for script in scripts:
        target = script.split("=", 1)[1]
        module, function = target.split(":")
        if module == "trainer.commands":
            module = re.search(r'_command\("([\w.]+)"\)', (REPO_DIR / "trainer" / "commands.py").read_text().split(
                f"\n{function} = ", 1)[1]).group(1)
            assert callable(getattr(commands, function))
        assert module in COMMANDS, script


@pytest.mark.parametrize("module", COMMANDS)
def test_help_starts_with_what_and_an_example_then_every_own_flag_by_group(module):
    text = help_of(module)
    lines = text.splitlines()
    usage = importlib.import_module(module).USAGE
    assert lines[0] == usage.summary and len(lines[0]) <= 120
    assert lines[1].startswith(f"example: python -m {module} --"), lines[1]
    doc = importlib.import_module(module).__doc__.strip().splitlines()[0]
    assert doc not in text  # the developers' docstring is not the first screen any more
    groups = re.findall(r"^(\S[^:]*):$", text, flags=re.M)
    assert groups and len(set(groups)) == len(groups)
    for flag in flags.FLAGS.get_key_flags_for_module(module):
        shown = f"--[no]{flag.name}" if isinstance(flag, flags.BooleanFlag) else f"--{flag.name}"
        assert re.search(rf"^  {re.escape(shown)}(=|  \(|$)", text, flags=re.M), (module, flag.name)
    assert "--helpfull" in lines[-1]


def test_the_training_help_marks_what_is_required_and_shows_the_data_first():
    text = help_of("trainer.task")
    lines = text.splitlines()
    assert lines[3] == "data:" and lines[4] == "  --train_data  (required)"
    assert "  --model_dir  (required unless $AIP_MODEL_DIR is set)" in lines
    assert "  --bn=frozen|trainable  (default: frozen)" in lines
    assert "  --[no]calibrate  (default: true)" in lines
    order = [line[:-1] for line in lines if re.match(r"^\S[^:]*:$", line)]
    assert order[:4] == ["data", "model", "outputs", "phases"]


def test_a_flag_defined_without_a_group_shows_under_other_last():
    module = "tests.help_probe"
    flagutil.define("string", "help_probe_input", None, "Where the probe reads.", module_name=module, group="data")
    flagutil.define("integer", "help_probe_knob", 3, "A flag someone added without a group.", module_name=module)
    flagutil.define("bool", "help_probe_write", False, "Writes.", module_name=module, group="outputs",
                    required="unless --help_probe_knob is 0")
    text = flagutil.help_text(module, flagutil.Usage(summary="Probes.", example="python -m probe --x"))
    assert text.splitlines()[:2] == ["Probes.", "example: python -m probe --x"]
    assert re.findall(r"^(\S[^:]*):$", text, flags=re.M) == ["data", "outputs", "other"]
    assert "  --help_probe_knob  (default: 3)\n      A flag someone added without a group.\n" in text
    assert "  --[no]help_probe_write  (required unless --help_probe_knob is 0)" in text


def test_help_is_asked_before_a_double_dash_only():
    assert flagutil.help_request(["x", "--model_dir=m", "--help"]) == "short"
    assert flagutil.help_request(["x", "-?"]) == "short" and flagutil.help_request(["x", "--helpshort"]) == "short"
    assert flagutil.help_request(["x", "-h"]) == "short"  # absl has no -h; people type it first
    assert flagutil.help_request(["x", "--helpfull"]) == "full"
    assert flagutil.help_request(["x", "--preset=cpu", "--", "--help"]) is None  # the trainer's flags (submit)
    assert flagutil.help_request(["x", "--help_me=1"]) is None


@pytest.mark.parametrize("module", ["trainer.task", "trainer.cloud.submit", "trainer.predict"])
def test_help_exits_0_on_stdout_with_the_data_on_the_first_screen(module):
    result = run_module(module, "--help", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[1].startswith(f"example: python -m {module}")
    first_required = next(i for i, line in enumerate(lines) if "(required" in line)
    assert first_required < 10, lines[:12]
    assert "Traceback" not in result.stderr


def test_helpfull_exits_0_with_every_flag():
    result = run_module("trainer.task", "--helpfull", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--[no]plan_only" in result.stdout and "All flags, by module:" in result.stdout
    assert result.stdout.startswith("Fine-tune")


# Help texts that state a number, each with what the code does. A text changed without the code (or
# the code without the text) fails here: the help of --warmup_epochs once said "at most half a phase"
# where the code stopped at a tenth.
def _warmup_is_a_tenth():
    from trainer.training import schedules  # pylint: disable=import-outside-toplevel
    return schedules.warmup_steps(warmup_epochs=1000, steps_per_epoch=10, total_steps=1000) == 100


def _five_folds():
    from trainer.training import headfit  # pylint: disable=import-outside-toplevel
    return headfit.FOLDS == 5


def _a_quarter_of_ram():
    from trainer.runtime import devices  # pylint: disable=import-outside-toplevel
    return devices.PIXEL_CACHE_SHARE == 0.25


def _square_root_above_the_base():
    from trainer.training import schedules  # pylint: disable=import-outside-toplevel
    above = schedules.scaled_learning_rate(1.0, batch_size=256, base_batch_size=64)
    below = schedules.scaled_learning_rate(1.0, batch_size=16, base_batch_size=64)
    return math.isclose(above, 2.0) and below == 1.0


def _thumbnails_of_32():
    from trainer.analysis import thumbnails  # pylint: disable=import-outside-toplevel
    return thumbnails.SIDE == 32


def _shard_size_default():
    from trainer.data import preparing  # pylint: disable=import-outside-toplevel
    return f"(default {preparing.DEFAULT_SHARD_SIZE_MB} MB)"


def _recipe_table_says_087_and_085():
    text = (REPO_DIR / "docs" / "training.md").read_text()
    twenty = re.search(r"fine-tune at 3e-4, 20 epochs, no early stopping \(default\)\*\* \| \*\*([0-9.]+)", text)
    twelve = re.search(r"fine-tune at 3e-4, 12 epochs, no early stopping \| ([0-9.]+)", text)
    return round(float(twenty.group(1)), 2) == 0.87 and round(float(twelve.group(1)), 2) == 0.85


CLAIMS = [
    ("trainer.task", "warmup_epochs", "at most a tenth of the phase", _warmup_is_a_tenth),
    ("trainer.task", "frozen_head", "5-fold cross-validation", _five_folds),
    ("trainer.task", "cache_pixels", "a quarter of the available RAM", _a_quarter_of_ram),
    ("trainer.task", "lr_base_batch_size", "above it they grow with the square root of the global batch, at or "
     "below it they are used as given", _square_root_above_the_base),
    ("trainer.task", "finetune_epochs", "20 measured 0.87 held out on 1,000 photos, 12 0.85",
     _recipe_table_says_087_and_085),
    ("trainer.audit", "pixel_threshold", "32x32 grey thumbnails", _thumbnails_of_32),
    ("trainer.prepare", "shard_size_mb", None, _shard_size_default),
]


@pytest.mark.parametrize("module,flag,phrase,truth", CLAIMS, ids=[f"{c[0]}--{c[1]}" for c in CLAIMS])
def test_help_texts_that_state_numbers_agree_with_the_code(module, flag, phrase, truth):
    text = " ".join(help_of(module).split())
    own = {f.name: " ".join(f.help.split()) for f in flags.FLAGS.get_key_flags_for_module(module)}
    if phrase is None:  # the text is made from the constant: the constant's rendering must be there
        phrase, truth = truth(), (lambda: True)
    assert phrase in own[flag] and phrase in text, own[flag]
    assert truth(), f"--{flag} says '{phrase}', the code does otherwise"
