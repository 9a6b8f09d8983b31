"""What tasks and actors print: tagged in the executor, read and logged by the daemon.

An executor's stdout and stderr are pipes to its daemon. Before the first line a
task or actor writes, the executor writes one marker line naming who prints
from now on (``Source``: the task or actor, its job's driver); a process that
prints nothing writes no marker, so the task path pays only for setting
``task`` when a task starts. The daemon splits what it reads into lines
(``OutputReader``), appends them to the executor's log file with a header line
whenever the source changes, and sends them to the scheduler, which hands them
to the job's driver (taskgraph/_output.py prints them there).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

from tornado.ioloop import IOLoop

from taskgraph import _wire as w
from taskgraph._ids import job_of

MARK = "\x1etaskgraph-source\x1f"  # a marker line starts so: no text a user prints does
# A task's code writes to the same pipe as the executor (print, os.write, a child
# process), so it could write a marker line naming another job and have its text
# shown by that job's driver. So each executor draws a key, writes it on a line of
# its own before any task runs (``TaggedStream``), and only markers with that key
# count; a daemon takes the first key line of each pipe and no other.
KEY = os.urandom(8).hex()
LINE_LIMIT = 16 * 1024  # a longer line is cut into pieces this long (chars)


@dataclass(frozen=True, slots=True)
class Source:
    """Who prints: the task (or actor) and the driver whose job it is."""

    label: str  # "square", or "Counter[name]" for an actor
    task_id: bytes = b""  # the task running (an actor's creation, for an actor)
    job: bytes = b""  # the driver's client id; empty: no driver (the executor itself)

    def marker(self, key: str = KEY) -> str:
        label = self.label.replace("\n", " ").replace("\x1f", " ").replace("\x1e", " ")
        return f"{MARK}{key}\x1f{self.job.hex()}\x1f{self.task_id.hex()}\x1f{label}\n"

    def header(self) -> str:
        """The line the log file shows where this source starts printing."""
        job = self.job.hex() or "-"
        return f"== {self.label} task={self.task_id.hex() or '-'} job={job} ==\n"


NOBODY = Source("executor")  # before any task: the process's own output (log file only)

# -- in the executor -----------------------------------------------------------------

# The task that prints now (an actor's creation, for its whole life): set by the
# executor as each task begins, read only when something is printed.
task: w.TaskSpec | None = None


def source_of(spec: w.TaskSpec | None) -> Source:
    if spec is None:
        return NOBODY
    job = job_of(spec.task_id, spec.job)
    if spec.actor is not None:
        label = spec.actor.class_name
        if spec.actor.name:
            label += f"[{spec.actor.name}]"
        return Source(label, spec.task_id, job)
    return Source(spec.name, spec.task_id, job)


class TaggedStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of an executor: the stream it wraps, with a
    marker line before the first text of each new source. Line-buffered, so
    the driver sees each line as it is printed."""

    def __init__(self, inner: TextIO) -> None:
        super().__init__()
        inner.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
        self.inner = inner
        inner.write(f"{MARK}key\x1f{KEY}\n")  # before any task's code can write here
        self._marked: w.TaskSpec | bool | None = False  # the task of the last marker
        self._line_open = False  # the last text written did not end its line

    def write(self, text: str) -> int:
        if not text:
            return 0
        now = task
        if now is not self._marked:
            if self._line_open:
                self.inner.write("\n")  # the marker must start a line of its own
            self.inner.write(source_of(now).marker())
            self._marked = now
        self._line_open = not text.endswith("\n")
        return self.inner.write(text)

    def flush(self) -> None:
        self.inner.flush()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.inner.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.inner.encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return self.inner.errors

    @property
    def buffer(self) -> Any:
        return self.inner.buffer


# -- in the daemon ---------------------------------------------------------------------


def parse_marker(line: str, key: str) -> Source | None:
    """The source a marker line names (``line`` starts after ``MARK``), if it has ``key``."""
    try:
        given, job, task_id, label = line.split("\x1f", 3)
        if given != key:
            return None  # a task's forgery (or another process's): an ordinary line
        return Source(label, bytes.fromhex(task_id), bytes.fromhex(job))
    except ValueError:
        return None  # not ours after all: an ordinary line


class OutputReader:
    """One executor stream's bytes, as (source, lines) runs in order.

    A line not yet ended waits for the rest (up to ``LINE_LIMIT``); ``close``
    gives what is left when the process is gone.
    """

    def __init__(self) -> None:
        self.source = NOBODY
        self.key = ""  # the executor's (``KEY``): until its key line, no marker counts
        self._partial = b""

    def feed(self, data: bytes) -> list[tuple[Source, list[str]]]:
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        # split("\n"), not splitlines(): that also splits at the marker's \x1e.
        runs = self._lines(data[: cut - 1].decode("utf-8", "replace").split("\n") if cut else [])
        if len(self._partial) > 4 * LINE_LIMIT:  # bytes; chars are at most 4 bytes
            # A marker may have begun at the end (after text with no newline): it
            # stays for the rest of its line, or the next task's text is this one's.
            begun = self._partial.rfind(MARK[:1].encode(), -LINE_LIMIT // 4)
            keep = self._partial[begun:] if begun > 0 else b""
            self._partial = self._partial[: len(self._partial) - len(keep)]
            runs += self.close()
            self._partial = keep
        return runs

    def close(self) -> list[tuple[Source, list[str]]]:
        rest, self._partial = self._partial, b""
        return self._lines([rest.decode("utf-8", "replace")]) if rest else []

    def _lines(self, lines: list[str]) -> list[tuple[Source, list[str]]]:
        runs: list[tuple[Source, list[str]]] = []
        for whole in lines:
            # A marker ends a line that text written without a newline began
            # (os.write, a child process): that text is the last source's.
            line, _, marker = whole.rpartition(MARK)
            marked = None
            if marker and not self.key and marker.startswith("key\x1f"):
                self.key = marker[4:]
                marked = self.source
            elif marker and self.key:
                marked = parse_marker(marker, self.key)
            if marked is None:
                line = whole
            elif not line:
                self.source = marked
                continue
            pieces = [line[i : i + LINE_LIMIT] for i in range(0, len(line), LINE_LIMIT)]
            if not runs or runs[-1][0] is not self.source:
                runs.append((self.source, []))
            runs[-1][1].extend(pieces or [""])
            if marked is not None:
                self.source = marked
        return runs


class OutputRelay:
    """The daemon's end: reads its executors' stdout and stderr pipes, appends to
    their log files (``<state dir>/logs/<worker id>/executor-<pid>.out|.err``,
    made on the first line) and hands the lines of tasks with a driver to
    ``send``, a batch every ``BATCH_DELAY`` seconds."""

    BATCH_DELAY = 0.02  # seconds lines gather before they go: one message per burst

    def __init__(self, loop: IOLoop, node: str, log_dir: Path, send: Callable[[list[w.Msg]], None]):
        self.loop = loop
        self.node = node
        self.log_dir = log_dir
        self.send = send
        self._pending: list[w.Msg] = []
        self._due = False
        self._pipes: dict[int, _Pipe] = {}  # fd -> the executor stream it reads

    def watch(self, pid: int, stdout: IO[bytes] | None, stderr: IO[bytes] | None) -> None:
        for stream, pipe in ((1, stdout), (2, stderr)):
            if pipe is None:
                continue
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            self._pipes[fd] = _Pipe(pipe, pid, stream)
            self.loop.add_handler(fd, self._readable, IOLoop.READ)

    def _readable(self, fd: int, events: int) -> None:
        pipe = self._pipes.get(fd)
        if pipe is None:
            return
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._take(pipe, pipe.reader.feed(data))
            return
        self.loop.remove_handler(fd)  # the process is gone (or closed its end)
        del self._pipes[fd]
        self._take(pipe, pipe.reader.close())
        pipe.close()

    def _take(self, pipe: _Pipe, runs: list[tuple[Source, list[str]]]) -> None:
        for source, lines in runs:
            pipe.log(self.log_dir, source, lines)
            if source.job:
                self._pending.append(
                    w.TaskOutput(source.job, source.label, pipe.pid, self.node, pipe.stream, lines)
                )
        if self._pending and not self._due:
            self._due = True
            self.loop.call_later(self.BATCH_DELAY, self._flush)

    def _flush(self) -> None:
        self._due = False
        pending, self._pending = self._pending, []
        if pending:
            self.send(pending)

    def close(self) -> None:
        """The daemon is stopping (its executors are gone): what they wrote goes now."""
        for fd in list(self._pipes):
            while fd in self._pipes:  # to the end (a pipe's writer is gone: it ends)
                self._readable(fd, IOLoop.READ)
        self._flush()


class _Pipe:
    """One executor stream: its reader, and its log file once something is written."""

    def __init__(self, pipe: IO[bytes], pid: int, stream: int) -> None:
        self.pipe = pipe
        self.pid = pid
        self.stream = stream
        self.reader = OutputReader()
        self._file: IO[str] | None = None
        self._logged: Source | None = None

    def log(self, log_dir: Path, source: Source, lines: list[str]) -> None:
        try:
            if self._file is None:
                log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                name = f"executor-{self.pid}.{'out' if self.stream == 1 else 'err'}"
                self._file = open(log_dir / name, "a", encoding="utf-8")  # noqa: SIM115
            if source is not self._logged:
                self._file.write(source.header())
                self._logged = source
            self._file.write("".join(line + "\n" for line in lines))
            self._file.flush()
        except OSError:
            pass  # a full disk loses the log file, not the task

    def close(self) -> None:
        self.pipe.close()
        if self._file is not None:
            self._file.close()
