"""What tasks and actors print, shown in the driver that submitted them.

Each line comes prefixed with who printed it, as Ray's drivers show it:
``(square pid=4242, node=ab12cd) text``; an actor's lines by its class (and
name). Lines come from the scheduler (``TaskOutput``; worker/output.py says how
they are gathered) and go to this process's stdout or stderr, whichever the
task wrote to, as they are at that moment (a notebook or pytest may swap them).

The same line printed by many processes at once (a hundred tasks saying
"loading model") is shown once, then folded: ``Folder`` counts the copies from
other processes for ``FOLD_WINDOW`` seconds and then shows one line
``... [repeated 7x across the cluster]``. A process's own repeats always show:
a loop printing "tick" is the user's to see.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from taskgraph import _wire as w

FOLD_WINDOW = 5.0  # seconds a line's copies from other processes are folded for
# Lines remembered for folding, at most: tasks printing thousands of distinct lines
# a second would otherwise hold them all for a window; past this the oldest
# window ends early (its count, if any, shows then).
MAX_WINDOWS = 10_000


@dataclass(slots=True)
class _Window:
    since: float
    process: tuple[str, int]  # (node, pid) that printed it first
    prefix: str
    folded: int = 0


class Folder:
    """Which lines show now and which fold into a count (pure: the caller says the time)."""

    def __init__(self, window: float = FOLD_WINDOW, limit: int = MAX_WINDOWS) -> None:
        self.window = window
        self.limit = limit
        self._open: OrderedDict[tuple[int, str], _Window] = OrderedDict()  # oldest first
        self._folding = 0  # windows with folds: ``pending`` is asked at every message
        self._ended: list[tuple[int, str]] = []  # counts of windows ended early, for ``due``

    def take(
        self, now: float, stream: int, text: str, process: tuple[str, int], prefix: str
    ) -> bool:
        """True: show this line now; False: it is folded (counted for ``due``)."""
        key = (stream, text)
        seen = self._open.get(key)
        if seen is None or now - seen.since >= self.window:
            ended = self._open.pop(key, None)
            if ended is not None:
                self._end(key, ended)  # (its count shows at the next ``due``)
            if len(self._open) >= self.limit:
                self._end(*self._open.popitem(last=False))
            self._open[key] = _Window(now, process, prefix)
            return True
        if process == seen.process:
            return True
        self._folding += not seen.folded
        seen.folded += 1
        return False

    def _end(self, key: tuple[int, str], seen: _Window) -> None:
        if seen.folded:
            self._folding -= 1
            stream, text = key
            self._ended.append(
                (stream, f"{seen.prefix} {text} [repeated {seen.folded}x across the cluster]")
            )

    def due(self, now: float) -> list[tuple[int, str]]:
        """The windows that ended with folds, as (stream, line to show); forgets ended ones."""
        while self._open:
            key, seen = next(iter(self._open.items()))
            if now - seen.since < self.window:
                break
            del self._open[key]
            self._end(key, seen)
        shown, self._ended = self._ended, []
        return shown

    def pending(self) -> bool:
        return self._folding > 0 or bool(self._ended)

    def __len__(self) -> int:
        """Lines remembered now (at most ``limit``)."""
        return len(self._open)

    def flush(self) -> list[tuple[int, str]]:
        """Every window's folds now (the driver is leaving)."""
        return self.due(float("inf"))


def prefix(msg: w.TaskOutput) -> str:
    return f"({msg.label} pid={msg.pid}, node={msg.node[:6]})"


class OutputPrinter:
    """The driver's end. ``show`` (called on the client's reader thread) only
    queues: a driver whose stdout blocks (a full pipe nobody reads) must not
    hold up its results. A thread of its own prints the lines, and the folded
    ones whose window ended; it ends when nothing is queued or folded, and the
    next line starts another. Past ``MAX_QUEUED`` lines waiting, lines are
    dropped and counted (the count is printed once the stream takes lines again)."""

    MAX_QUEUED = 100_000  # lines waiting to be printed

    def __init__(self, window: float = FOLD_WINDOW) -> None:
        self._folder = Folder(window)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._queue: list[w.TaskOutput] = []
        self._queued = 0  # lines in _queue
        self._lost = 0  # lines dropped since the last note
        self._closed = False
        self._thread: threading.Thread | None = None

    def show(self, msg: w.TaskOutput) -> None:
        with self._lock:
            if self._closed:
                return
            if self._queued + len(msg.lines) > self.MAX_QUEUED:
                self._lost += len(msg.lines)
                return
            self._queue.append(msg)
            self._queued += len(msg.lines)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="taskgraph-output", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def _take(self) -> tuple[list[tuple[int, str]], bool]:
        """What to print now (lock held), and whether the thread is done."""
        queue, self._queue, self._queued = self._queue, [], 0
        now = time.monotonic()
        lines = self._folder.due(now)
        for msg in queue:
            head, process = prefix(msg), (msg.node, msg.pid)
            lines += [
                (msg.stream, f"{head} {text}")
                for text in msg.lines
                if self._folder.take(now, msg.stream, text, process, head)
            ]
        if self._lost:
            lines.append((2, f"[taskgraph: {self._lost} lines of task output dropped: "
                             "this process's output was not being read]"))  # fmt: skip
            self._lost = 0
        if self._closed:
            lines += self._folder.flush()
        done = self._closed or (not queue and not self._folder.pending())
        if done:
            self._thread = None
        return lines, done

    def _run(self) -> None:
        while True:
            self._wake.clear()
            with self._lock:
                lines, done = self._take()
            _write(lines)
            if done:
                return
            self._wake.wait(self._folder.window / 5 if not lines else 0.0)

    def close(self) -> None:
        """Print what is queued or folded still; the driver is leaving."""
        with self._lock:
            self._closed = True
            thread = self._thread
            lines = self._take()[0] if thread is None else []
        self._wake.set()
        if thread is not None:
            thread.join(5)
        _write(lines)


def _write(lines: list[tuple[int, str]]) -> None:
    """Write in order; a closed stream (the program is ending) is no matter."""
    for stream, text in lines:
        out = sys.stdout if stream == 1 else sys.stderr
        try:
            out.write(text + "\n")
        except (ValueError, OSError):
            continue
    for out in {sys.stdout, sys.stderr} if lines else ():
        try:
            out.flush()
        except (ValueError, OSError):
            pass
