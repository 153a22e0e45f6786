"""Progress of long work, written to suit where it is read; every command's one reporter.

On a terminal (standard error is a TTY) it is tf_keras' live bar. Anywhere else (a file, a pipe,
a CI log, Cloud Logging) a bar would be one long line of carriage returns and backspaces that
appears only when the work ends: Vertex AI custom jobs and Dataflow send each line a container
writes to Cloud Logging as its own entry, split at newlines. There the reporter writes whole lines
through absl logging (so each carries absl's timestamp and severity letter) when the work crosses
another tenth of its total (at most one line in 5 s: work of a few seconds gets its last line
alone) or, between tenths, every 30 s while it moves; each says the count, the rate and the time
left:

    I1207 07:40:12.345678 140 progress.py:125] checking: 1,200/4,000 images (30%), 410 images/s, 3 s elapsed, 7 s left

Progress goes to standard error in both forms; standard output carries a command's results
only (predict's table, the client's JSON lines), so `cmd > results` gets nothing else.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Callable, Optional

from absl import logging

LOG_PARTS = 10  # off a terminal, a line each time another tenth of the work is done ...
LOG_MIN_INTERVAL_S = 5.0  # ... but not within 5 s of the last (work of seconds: its last line alone) ...
LOG_INTERVAL_S = 30.0  # ... and between tenths, one every 30 s while the work moves
_LIVE_INTERVAL_S = 0.1  # how often the terminal's bar redraws


def on_terminal(stream=None) -> bool:
    """Whether `stream` (default: standard error, where progress goes) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _duration(seconds: float) -> str:
    """'7 s', '3 min 05 s', '2 h 04 min': whole units a person reads at a glance."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


def progress_line(*, label: str, done: int, total: Optional[int], unit: str, seconds: float) -> str:
    """One progress line: count (of the total), share, rate, time spent and time left."""
    units = _plural(unit)
    rate = done / seconds if seconds > 0 else 0.0
    rate_text = f"{rate:,.1f}" if rate < 100 else f"{rate:,.0f}"
    if total:
        left = (total - done) / rate if rate > 0 else None
        head = f"{label}: {done:,}/{total:,} {units} ({100 * done // total}%)"
        tail = f", {_duration(left)} left" if left is not None and done < total else ", done"
    else:
        head, tail = f"{label}: {done:,} {units}", ""
    return f"{head}, {rate_text} {units}/s, {_duration(seconds)} elapsed{tail}"


class Progress:
    """Counts done work and reports it: a live bar on a terminal, else whole lines in the log.

    Thread-safe (`add` from pool threads). Use as a context manager, or call `close()`, so that
    work that stops short still ends with a line saying where it stopped.

    Args:
      total: how much work there is (None: unknown; the lines then give the count and rate).
      label: what is being done, e.g. "checking" or "predicting".
      unit: what is counted, singular ("image", "batch", "step").
      live: force the terminal bar (True) or the lines (False); default: whether stderr is a TTY.
      clock: seconds, monotonic (time.monotonic).
    """

    def __init__(self, total: Optional[int], *, label: str, unit: str = "item", live: Optional[bool] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.label, self.unit, self.done = total or None, label, unit, 0
        self._clock, self._lock = clock, threading.Lock()
        self._start = self._last_time = clock()
        self._parts_logged, self._closed, self._reported = 0, False, -1
        self._bar = self._build_bar() if (on_terminal() if live is None else live) else None

    def _build_bar(self):
        import tf_keras as keras  # pylint: disable=import-outside-toplevel  # only where a bar is drawn
        with contextlib.redirect_stdout(sys.stderr):  # the bar writes to stdout; progress belongs on stderr
            return keras.utils.Progbar(self.total, unit_name=self.unit, interval=_LIVE_INTERVAL_S)

    def add(self, n: int = 1) -> None:
        """`n` more units done."""
        with self._lock:
            self._moved_to(self.done + n)

    def update(self, done: int) -> None:
        """`done` units done in all."""
        with self._lock:
            self._moved_to(done)

    def _moved_to(self, done: int) -> None:
        self.done = done
        if self._bar is not None:
            with contextlib.redirect_stdout(sys.stderr):
                self._bar.update(done)
            return
        now = self._clock()
        parts = min(done, self.total) * LOG_PARTS // self.total if self.total else 0
        since = now - self._last_time
        finished = self.total is not None and done >= self.total
        if finished or (parts > self._parts_logged and since >= LOG_MIN_INTERVAL_S) or since >= LOG_INTERVAL_S:
            self._parts_logged = parts
            self._log(now)

    def _log(self, now: float) -> None:
        if self.done == self._reported:
            return
        self._reported, self._last_time = self.done, now
        logging.info("%s", progress_line(label=self.label, done=self.done, total=self.total, unit=self.unit,
                                         seconds=now - self._start))

    def close(self) -> None:
        """Ends the report: the last count gets its line (or the bar its newline) if it has none."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                if self.done and (self.total is None or self.done < self.total):
                    with contextlib.redirect_stdout(sys.stderr):
                        self._bar.update(self.done, finalize=True)
            elif self.done:
                self._log(self._clock())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
