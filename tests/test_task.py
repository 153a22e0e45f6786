"""The training CLI: end to end on a temporary folder, and every bad input of the contract.

A bad input must end in exit status 2 and ONE line on stderr naming the problem and the fix,
no traceback, and nothing written to model_dir. Every run is `python -m trainer.task` in a child
process (tests/testing/cli.py), as a user runs it. The runs use the tiny backbone
(tests/testing/presets.py): what is checked here is the command, not EfficientNet; only the
imagenet download refusal needs an EfficientNet, and it fails before any training.
"""
import dataclasses
import json
import os
from types import SimpleNamespace

import h5py
import pytest

from tests.testing.cli import assert_one_error_line, run_module, task_refusal, train_flags
from tests.testing.presets import REPO_DIR, TINY, TINY_SIZE


def cli(*args, env=None):
    return run_module("trainer.task", *args, env=env, timeout=600)


def train_cli(model_dir, records, weights, *extra):
    """The small two-phase run of tests/testing/cli.py's train_flags on the tiny backbone, as a
    child process."""
    return cli(*train_flags(model_dir, records, weights, *extra, backbone=TINY))


def assert_one_clear_line(result, *words):
    assert assert_one_error_line(result, *words).startswith("error:")


@pytest.mark.slow
def test_cli_end_to_end_and_plan_only(tmp_path, demo_images):
    """Image-folder input straight into the trainer, both phases, export; then --plan_only."""
    model_dir = tmp_path / "run"
    result = cli(f"--train_data={demo_images}", f"--model_dir={model_dir}", f"--backbone={TINY}", "--weights=none",
                 f"--image_size={TINY_SIZE}", "--frozen_epochs=1", "--finetune_epochs=1", "--steps_per_epoch=2",
                 "--frozen_batch_size=8", "--finetune_batch_size=8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "export: " in result.stdout
    assert (model_dir / "history.json").exists() and len(os.listdir(model_dir / "export")) == 1
    plan = cli(f"--train_data={demo_images}", f"--model_dir={tmp_path / 'plan'}", f"--backbone={TINY}",
               "--weights=none", "--plan_only")  # the backbone's native size: tiny's 32 px
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "phase frozen" in plan.stderr and "phase finetune" in plan.stderr
    assert "trainable params" in plan.stderr
    assert not (tmp_path / "plan" / "config.json").exists()


def assert_refused(line, *words):
    assert line.startswith("error: ") and "\n" not in line, line
    for word in words:
        assert word in line, line


def test_unknown_backbone_is_one_line(tmp_path, demo_images):
    assert_refused(task_refusal(f"--train_data={demo_images}", f"--model_dir={tmp_path}", "--backbone=efficientnet-b9"),
                   "--backbone=efficientnet-b9", "efficientnet-b0", TINY)
    # Flags renamed so that "cache" and "report" each say one thing: the hint names the new flag.
    for old, new in (("--cache", "--cache_records"), ("--noreport", "--noeval_report")):
        assert_refused(task_refusal(f"--train_data={demo_images}", f"--model_dir={tmp_path}", old),
                       f"unknown flag {old}: renamed to {new}")
    assert not os.listdir(tmp_path)


def test_tiny_backbone_has_no_named_weights(tmp_path, demo_records):
    """The tiny preset downloads nothing: --weights=imagenet is refused before anything runs."""
    model_dir = tmp_path / "model"
    assert_refused(task_refusal(*train_flags(model_dir, demo_records, "imagenet", backbone=TINY)),
                   "--weights=imagenet", TINY, "none")
    assert not model_dir.exists() or not os.listdir(model_dir)


def write_labels(path, names):
    path.write_text("".join(f"{n}\n" for n in names))
    return str(path)


BAD_INPUTS = {
    "missing_path": (lambda tmp, rec, imgs: [f"--train_data={tmp}/nowhere"], "nowhere"),
    "empty_folder": (lambda tmp, rec, imgs: [f"--train_data={(tmp / 'empty').mkdir() or tmp / 'empty'}"], "empty"),
    "glob_matches_nothing": (lambda tmp, rec, imgs: [f"--train_data={rec}/nothing-*.tfrecord"], "nothing-*"),
    "labels_disagree": (lambda tmp, rec, imgs: [f"--train_data={rec}/train-*.tfrecord",
                                                f"--labels={write_labels(tmp / 'l.txt', ['a', 'b', 'c'])}"], "label"),
    "image_size_below_32": (lambda tmp, rec, imgs: [f"--train_data={rec}/train-*.tfrecord", "--image_size=16"],
                            "--image_size"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_line(case, tmp_path, demo_records, demo_images):
    make_args, word = BAD_INPUTS[case]
    model_dir = tmp_path / "model"
    flags = train_flags(model_dir, demo_records, "none", *make_args(tmp_path, demo_records, demo_images), backbone=TINY)
    assert_refused(task_refusal(*flags), word)
    assert not model_dir.exists() or not os.listdir(model_dir)


def save_weights_of(path, *, backbone, classes=None):
    """A weights file of another backbone (notop) or of a whole classifier with `classes` classes."""
    from trainer.configs import config
    from trainer.models import classifier
    model = classifier.build_classifier(config.Model(backbone=backbone, weights="none"), num_classes=classes or 2, image_size=TINY_SIZE)
    (model if classes else classifier.backbone_of(model)).save_weights(str(path))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("backbone,classes,word", [("efficientnet-b0", None, "does not fit"),
                                                    (TINY, 3, "3 classes")])
def test_weights_file_that_does_not_fit(tmp_path, demo_records, backbone, classes, word):
    """Into a tiny run: another backbone's notop file, or a tiny classifier for 3 classes, not 4."""
    weights = save_weights_of(tmp_path / "w.h5", backbone=backbone, classes=classes)
    model_dir = tmp_path / "model"
    result = train_cli(model_dir, demo_records, weights, "--frozen_epochs=1", "--finetune_epochs=0")
    assert_one_clear_line(result, word, "--weights")
    assert not model_dir.exists() or not os.listdir(model_dir)


@pytest.mark.slow
def test_classifier_weights_of_same_class_count_load(another_run):
    """A whole classifier's weights (a previous run's) are a valid starting point: the --overwrite
    run of `another_run` starts from a tiny classifier's weights for the same 4 classes."""
    with h5py.File(another_run.weights) as f:
        assert "head_dense" in [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
    assert another_run.again.returncode == 0, another_run.again.stderr[-3000:]


SPLIT_RUN = ("--frozen_epochs=1", "--finetune_epochs=0", "--eval_report")


@pytest.fixture(scope="module")
def split_run(tmp_path_factory, demo_images):
    """prepare --test_fraction's records and one small run on them with its reports: the run that
    test_a_test_split_... reads, and the other run whose folder test_model_dir_of_another_run reuses."""
    from trainer.data import preparing
    tmp_path = tmp_path_factory.mktemp("split_run")
    records = tmp_path / "records"
    info = preparing.prepare(input_dir=demo_images, output_dir=str(records), validation_fraction=0.25,
                           test_fraction=0.25, num_shards=2, seed=0)
    model_dir = tmp_path / "model"
    result = train_cli(model_dir, records, "none", *SPLIT_RUN)
    return SimpleNamespace(records=records, info=info, model_dir=model_dir, result=result)


@pytest.fixture(scope="module")
def another_run(split_run, tmp_path_factory):
    """On a copy of split_run's finished folder: the same command with another --bn (refused), then
    with --overwrite (a 1-step run), starting from a whole tiny classifier's weights for 4 classes."""
    import shutil
    assert split_run.result.returncode == 0, split_run.result.stderr[-3000:]
    tmp_path = tmp_path_factory.mktemp("another_run")
    model_dir = tmp_path / "model"
    shutil.copytree(split_run.model_dir, model_dir)
    before = sorted(os.listdir(model_dir))
    refused = train_cli(model_dir, split_run.records, "none", *SPLIT_RUN, "--bn=trainable")
    after_refusal = sorted(os.listdir(model_dir))
    weights = save_weights_of(tmp_path / "w.h5", backbone=TINY, classes=4)
    again = train_cli(model_dir, split_run.records, weights, "--frozen_epochs=1", "--finetune_epochs=0",
                      "--steps_per_epoch=1", "--nocalibrate", "--bn=trainable", "--overwrite")
    return SimpleNamespace(model_dir=model_dir, before=before, refused=refused, after_refusal=after_refusal,
                           weights=weights, again=again)


@pytest.mark.slow
def test_model_dir_of_another_run(another_run):
    assert "config.json" in another_run.before  # a finished run's folder
    assert_one_clear_line(another_run.refused, "--overwrite")
    assert another_run.after_refusal == another_run.before
    assert another_run.again.returncode == 0, another_run.again.stderr[-3000:]
    assert '"bn": "trainable"' in (another_run.model_dir / "config.json").read_text()


@pytest.mark.slow
def test_imagenet_weights_that_cannot_download_say_how_to_pass_a_file(tmp_path, demo_records):
    """The real download path runs (tf_keras' get_file, into an empty KERAS_HOME) and its fetch
    fails as it does without internet, online or not (tests/testing/faulty_task.py --no_downloads):
    one line that says what to do, and nothing in model_dir."""
    model_dir = tmp_path / "model"
    result = run_module("tests.testing.faulty_task", "--no_downloads", "--",
                        *train_flags(model_dir, demo_records, "imagenet", "--frozen_epochs=1", "--finetune_epochs=0"),
                        env={"KERAS_HOME": str(tmp_path / "keras_home")}, timeout=600)
    refused = [line for line in result.stderr.splitlines() if line.startswith("faulty_task: download refused: ")]
    assert len(refused) == 1 and refused[0].endswith("_notop.h5"), result.stderr[-3000:]
    assert_one_clear_line(result, "could not download the imagenet weights", "--weights=PATH")
    assert not model_dir.exists() or not os.listdir(model_dir)


def test_one_error_formatter_drops_tensorflow_noise():
    from effnet_common import flagutil
    op_error = ("{{function_node __wrapped__DecodeImage_device_/job:localhost/replica:0}} Unknown image file "
                "format. One of JPEG, PNG, GIF, BMP required. [Op:DecodeImage] name: ")
    assert flagutil.one_line(op_error) == "Unknown image file format. One of JPEG, PNG, GIF, BMP required."
    graph = "Graph execution error:\n\nDetected at node decode defined at (most recent call last):\nInvalid JPEG data\n\t [[{{node DecodeJpeg}}]]"
    assert flagutil.one_line(graph) == "Invalid JPEG data"
    assert flagutil.one_line("first\nTraceback (most recent call last)", first_line=True) == "first"
    assert flagutil.one_line("x" * 50, limit=10) == "x" * 9 + "…"


_ENDING_COMMAND = """
import atexit, sys, tempfile
from effnet_common import flagutil, errors
kept = tempfile.TemporaryDirectory()  # alive at exit: its finalizer removes it
atexit.register(lambda: print("exit handler ran", file=sys.stderr))
def main(argv):
    print(kept.name)
    sys.stdout.write("x" * 100000)  # buffered, no newline: must still arrive whole
    if len(argv) > 1:
        raise errors.UserError("a mistake")
    return 3
flagutil.run(main, lambda: None, module="__main__")
"""


@pytest.mark.parametrize("mistake", [False, True])
def test_a_command_ends_with_its_output_flushed_and_exit_handlers_run(tmp_path, mistake):
    """flagutil.end skips the interpreter's teardown, not what it owes: main's status (or 2 for
    a user's mistake and its one line), stdout whole, atexit handlers and finalizers run."""
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", _ENDING_COMMAND, *(["extra"] if mistake else [])],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": REPO_DIR})
    folder, output = result.stdout.split("\n", 1)
    assert result.returncode == (2 if mistake else 3), result.stderr
    assert output == "x" * 100000 and not os.path.exists(folder)
    assert "exit handler ran" in result.stderr
    assert ("error: a mistake" in result.stderr) == mistake


@pytest.mark.slow
def test_a_test_split_prepare_held_out_is_reported_and_is_the_headline(split_run):
    """prepare --test_fraction writes test-* shards; the trainer finds them through dataset.json
    (no --test_data), reports them through the export in MODEL_DIR/eval/test/ and prints their
    accuracy first, the validation figure labelled with what it chose."""
    records, info, model_dir, result = split_run.records, split_run.info, split_run.model_dir, split_run.result
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"--test_data: {records}/test-*.tfrecord (the test split listed in dataset.json" in result.stderr
    metrics = json.loads((model_dir / "eval" / "test" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["held_out"] and metrics["used_to_choose"] == []
    assert metrics["num_examples"] == info["splits"]["test"]["num_examples"] == 24
    validation = json.loads((model_dir / "eval" / "metrics.json").read_text())
    # 24 validation images are too few for a temperature (trainer/evaluation/calibration.py): nothing was chosen on them.
    assert validation["split"] == "validation" and validation["used_to_choose"] == []
    assert validation["calibration"]["fitted"] is False
    lines = [line for line in result.stdout.splitlines() if "accuracy" in line and "phase" not in line]
    assert lines[0].startswith(f"test accuracy {metrics['accuracy']:.3f} on 24 held-out images (no choice was made "
                               f"on them) through the export; report: {model_dir / 'eval' / 'test'}"), lines
    assert lines[1].startswith(f"validation accuracy {validation['accuracy']:.3f} on 24 images through the export; "
                               "report:"), lines
    assert "optimistic" not in result.stdout


def test_test_data_default_given_or_none_and_never_a_split_the_run_reads(tmp_path, demo_images):
    """--test_data as given; none: no test report; left out: prepare's test-* shards beside
    --train_data, unless --train_data or --eval_data reads them (or there are none)."""
    from trainer import task
    from trainer.data import preparing
    records = str(tmp_path / "records")
    preparing.prepare(input_dir=demo_images, output_dir=records, validation_fraction=0.25, test_fraction=0.1,
                    num_shards=1)
    flags = lambda **kw: SimpleNamespace(**{"train_data": f"{records}/train-*.tfrecord",
                                            "eval_data": f"{records}/validation-*.tfrecord", "test_data": None, **kw})
    assert task._test_data(flags()) == f"{records}/test-*.tfrecord"
    assert task._test_data(flags(test_data="photos/held_out")) == "photos/held_out"
    assert task._test_data(flags(test_data="none")) is None
    assert task._test_data(flags(eval_data=f"{records}/test-*.tfrecord")) is None  # validation is no test split
    assert task._test_data(flags(train_data=f"{records}/*.tfrecord")) is None  # trained on it
    assert task._test_data(flags(train_data=demo_images)) is None  # a folder has no test split


def test_config_json_without_test_data_reads_and_test_data_is_no_part_of_the_run():
    from trainer.configs import config
    data = config.Data(train_data="x/train-*", eval_data="x/validation-*", class_names=("a", "b"), image_size=32)
    cfg = config.Config(data=data, model=config.Model(backbone=TINY, weights="none"),
                        phases=(config.Phase(name="frozen", epochs=1, batch_size=8, learning_rate=1e-3),),
                        runtime=config.Runtime(model_dir="m"))
    old = cfg.to_dict()
    del old["data"]["test_data"]  # a config.json written before --test_data
    assert config.Config.from_dict(old) == cfg
    tested = dataclasses.replace(cfg, data=dataclasses.replace(data, test_data="x/test-*"))
    assert config.Config.from_dict(tested.to_dict()) == tested
    assert tested.run_identity() == cfg.run_identity()  # a test split never changes training: a rerun resumes
    with pytest.raises(config.ConfigError, match="--test_data is --eval_data"):
        dataclasses.replace(data, test_data="x/validation-*")


def test_the_summary_says_which_figure_is_held_out():
    from trainer.jobs import pipeline
    history = [{"phase": "frozen", "epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.6}]
    validation = {"accuracy": 0.867, "num_examples": 240}
    result = pipeline.RunResult("m/export/1", history, validation, "m/eval",
                                chosen_on_validation=("epochs", "temperature"))
    lines = result.summary()
    assert lines[1] == ("validation accuracy 0.867 on 240 images through the export (chose the epochs and the "
                        "temperature); report: m/eval")
    assert lines[2].startswith("the validation figure is optimistic (it chose the epochs and the temperature): for a "
                               "held-out figure, prepare with --test_fraction=0.1 or pass --test_data=")
    result.test_metrics, result.test_report_dir = {"accuracy": 0.812, "num_examples": 300}, "m/eval/test"
    assert result.summary()[1:3] == [
        "test accuracy 0.812 on 300 held-out images (no choice was made on them) through the export; "
        "report: m/eval/test",
        lines[1]]
    assert not any("optimistic" in line for line in result.summary())
