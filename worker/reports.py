"""The report pipe: how an executor's small channel reports reach its daemon.

A task sent down a channel (a lease, or a direct actor call) whose returns are
small plain values is answered by its executor straight to its caller; its
report (``Executed``) must still reach the daemon and the scheduler, and must
never be lost once the caller has the value: a crash in the next task must not
undo a finished one. Sending each report on the executor's stream before it
answers costs a daemon wake-up per task (measured: 20 -> 95 µs of daemon CPU
per direct call, a quarter of the calls per second gone); holding reports
back and sending them in bursts loses them when the process dies.

So the executor writes such a report into a pipe the daemon gave it, before it
answers: one ``write``, and the report is safe in the kernel even if the
process dies the moment after. The daemon reads the pipe lazily (``READ_DELAY``
after it turns readable, so a burst of reports is one wake-up), before each
frame of the executor's stream, before it reports the executor's exit, and
at once when the scheduler asks (``ReadReports``: a task or a client waits on
a channel task's returns, and would otherwise wait out the delay).

The daemon still sees one ordered stream: each report carries how many frames
the executor had sent on its stream when it wrote it (``AfterFrames``) (after sending what it had
queued), and the daemon handles it only once it has handled that many frames
(the actor's ``AcquireRefs`` of an argument it keeps must reach the scheduler
before the report that lets the call's hold on it go), and before the frames
sent after it (``CallerLeft`` counts on the reports of the calls answered). A report larger than
``PIPE_BUF`` goes on the stream instead: pipe writes up to that size are whole
even when several threads write at once.
"""

from __future__ import annotations

import os
import select
from collections import deque
from typing import Any

from taskgraph import _wire as w
from taskgraph._transport import BlockingConnection
from taskgraph.exceptions import ProtocolError

ATOMIC = select.PIPE_BUF  # bytes a pipe write delivers whole, even with several writers
# Seconds the daemon lets reports gather once the pipe turns readable (10 ms, not
# 2: sync direct calls 4.8k -> 5.2k/s); the scheduler asks for them at once when
# something waits on a channel task's returns (ReadReports).
READ_DELAY = 0.01


class ReportWriter:
    """The executor's end: ``conn`` is its stream to the daemon, just connected."""

    def __init__(self, fd: int, conn: BlockingConnection | None = None) -> None:
        self.fd = fd
        self.conn = conn
        self.base = conn.frames_sent if conn is not None else 0  # the handshake's

    def write(self, msg: w.Msg) -> bool:
        """Write one report, to follow every frame sent so far; False when it cannot
        go this way (too large): send it on the stream instead."""
        if self.fd < 0 or self.conn is None:
            return False
        frame = w.encode([w.AfterFrames(self.conn.frames_sent - self.base), msg])
        if len(frame) > ATOMIC:
            return False
        try:
            os.write(self.fd, frame)  # whole or not at all (atomic below PIPE_BUF)
        except OSError:  # the daemon closed its end (it found the pipe garbled)
            self.fd = -1
            return False
        return True


class ReportReader:
    """The daemon's end: the reports written so far, released in stream order."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.client_id = b""  # the client the executor speaks as (set at its hello)
        self.frames = 0  # frames of the executor's stream handled so far
        self.closed = False  # the writer's end is closed (the executor exited)
        self.watched = False  # the daemon's loop wakes when it turns readable
        self._buffer = bytearray()
        self._held: deque[tuple[int, list[Any]]] = deque()  # written, not yet due

    def read(self) -> None:
        """Take in what has arrived (never blocks)."""
        while not self.closed:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                self.closed = True
                break
            self._buffer += chunk
        for msgs in w.take_frames(self._buffer, w.REPORT_PIPE):
            if not msgs or not isinstance(msgs[0], w.AfterFrames):
                raise ProtocolError("a report pipe frame must open with AfterFrames")
            self._held.append((msgs[0].count, msgs[1:]))

    def waiting(self) -> bool:
        """Whether reports wait for frames not yet handled."""
        return bool(self._held)

    def due(self, everything: bool = False) -> list[Any]:
        """The reports whose stream frames have all been handled (``everything``:
        all, when the executor is gone)."""
        msgs: list[Any] = []
        held = self._held
        while held and (everything or held[0][0] <= self.frames):
            msgs.extend(held.popleft()[1])
        return msgs

    def close(self) -> None:
        self.closed = True
        os.close(self.fd)
