"""Progress that suits where it is written: whole lines with count, rate and time left off a
terminal (files, pipes, Cloud Logging), never a control character; progress on stderr and results
alone on stdout, checked on the commands themselves with their output written to files."""
import logging
import re
import subprocess
import sys

import pytest

from effnet_common import progress
from tests.testing.cli import ROOT

CONTROL = re.compile(r"[\r\b\x1b]")
LINE = re.compile(r"^(?P<label>[\w ]+): (?P<done>[\d,]+)/(?P<total>[\d,]+) (?P<unit>\w+) \((?P<pct>\d+)%\), "
                  r"[\d,.]+ (?P=unit)/s, [\w ]+ elapsed, ([\w ]+ left|done)$")


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def progress_messages(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("checking")]


def test_off_a_terminal_a_line_at_each_tenth_with_count_rate_and_time_left(caplog):
    caplog.set_level(logging.INFO, logger="absl")  # absl sets its own level when flags are parsed
    clock = Clock()
    with progress.Progress(200, label="checking", unit="file", live=False, clock=clock) as bar:
        for _ in range(100):
            clock.now += 0.5
            bar.add(2)
    lines = progress_messages(caplog)
    assert len(lines) == 10, lines
    assert all(LINE.match(line) and not CONTROL.search(line) for line in lines), lines
    assert lines[0] == "checking: 20/200 files (10%), 4.0 files/s, 5 s elapsed, 45 s left"
    assert lines[-1] == "checking: 200/200 files (100%), 4.0 files/s, 50 s elapsed, done"


def test_work_of_seconds_gets_its_last_line_alone(caplog):
    caplog.set_level(logging.INFO, logger="absl")  # absl sets its own level when flags are parsed
    clock = Clock()
    with progress.Progress(1200, label="checking", unit="file", live=False, clock=clock) as bar:
        for _ in range(12):
            clock.now += 0.25
            bar.add(100)
    assert progress_messages(caplog) == ["checking: 1,200/1,200 files (100%), 400 files/s, 3 s elapsed, done"]


def test_between_tenths_a_line_every_30_s_while_the_work_moves(caplog):
    caplog.set_level(logging.INFO, logger="absl")  # absl sets its own level when flags are parsed
    clock = Clock()
    bar = progress.Progress(10_000, label="checking", unit="image", live=False, clock=clock)
    for seconds in (10, 10, 11, 5, 40):
        clock.now += seconds
        bar.add(1)
    clock.now += 600  # no work done: nothing to say
    bar.close()
    lines = progress_messages(caplog)
    assert [line.split(" images")[0] for line in lines] == ["checking: 3/10,000", "checking: 5/10,000"]
    assert lines[0] == "checking: 3/10,000 images (0%), 0.1 images/s, 31 s elapsed, 28 h 41 min left"
    bar.close()
    assert len(progress_messages(caplog)) == 2  # closing twice says nothing twice


def test_an_unknown_total_gives_count_and_rate_and_work_stopped_short_its_last_line(caplog):
    caplog.set_level(logging.INFO, logger="absl")  # absl sets its own level when flags are parsed
    clock = Clock()
    with progress.Progress(None, label="checking", unit="batch", live=False, clock=clock) as bar:
        for _ in range(7):
            clock.now += 10
            bar.add(3)
    assert progress_messages(caplog) == ["checking: 9 batches, 0.3 batches/s, 30 s elapsed",
                                         "checking: 18 batches, 0.3 batches/s, 1 min 00 s elapsed",
                                         "checking: 21 batches, 0.3 batches/s, 1 min 10 s elapsed"]
    caplog.clear()
    with progress.Progress(0, label="checking", unit="file", live=False) as bar:
        pass
    assert progress_messages(caplog) == []  # nothing to do, nothing said


def test_on_a_terminal_the_bar_goes_to_stderr(capsys):
    with progress.Progress(3, label="checking", unit="image", live=True) as bar:
        bar.add(3)
    out, err = capsys.readouterr()
    assert out == "" and "3/3" in err


def test_a_file_is_not_a_terminal(tmp_path):
    with open(tmp_path / "log", "w") as f:
        assert not progress.on_terminal(f)
    assert not progress.on_terminal(object())


def _run(module, *args, log_dir, name):
    """`python -m module args` with stdout and stderr written to files, as `cmd > log 2>&1` would."""
    out, err = log_dir / f"{name}.out", log_dir / f"{name}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        code = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, stdout=stdout, stderr=stderr,
                              timeout=600).returncode
    return code, out.read_text(), err.read_text()


def _progress_lines(stderr: str, label: str):
    return [line.split("] ", 1)[1] for line in stderr.splitlines() if f"] {label}: " in line]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from testbed import exports  # pylint: disable=import-outside-toplevel
    return exports.build_export(str(tmp_path_factory.mktemp("export")), num_classes=4).base


def test_prepare_written_to_files_holds_lines_not_bars(demo_images, tmp_path):
    code, out, err = _run("trainer.prepare", f"--input_dir={demo_images}", f"--output_dir={tmp_path / 'data'}",
                          "--num_shards=2", log_dir=tmp_path, name="prepare")
    assert code == 0, err[-2000:]
    assert not CONTROL.search(out + err), repr(err[-500:])
    checking = _progress_lines(err, "checking")
    assert checking and all(LINE.match(line) for line in checking), checking
    assert checking[-1].startswith("checking: 96/96 files (100%)")
    assert _progress_lines(err, "writing")[-1].startswith("writing: 96/96 files (100%)")
    assert out.splitlines()[0].startswith("wrote ") and len(out.splitlines()) == 1  # stdout: the result alone


@pytest.mark.slow
def test_predict_written_to_files_has_its_results_alone_on_stdout(demo_images, tiny_export, tmp_path):
    code, out, err = _run("trainer.predict", f"--export_dir={tiny_export}", f"--input={demo_images}",
                          f"--output={tmp_path / 'preds.csv'}", "--print_limit=-1", log_dir=tmp_path, name="predict")
    assert code == 0, err[-2000:]
    assert not CONTROL.search(out + err), repr(err[-500:])
    predicting = _progress_lines(err, "predicting")
    assert predicting[-1].startswith("predicting: 96/96 images (100%)") and all(LINE.match(x) for x in predicting)
    rows = out.splitlines()
    assert len(rows) == 97 and rows[-1].startswith("wrote 96 row(s)")  # the table and its last line, nothing else
    assert all(row.startswith(demo_images) and " | " in row for row in rows[:-1]), rows[:3]
