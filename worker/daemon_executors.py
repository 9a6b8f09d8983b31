"""The worker daemon's executors: spawned, served, their reports read, their exits told.

::

    spawn() ──▶ executor process ──Hello (the daemon's Unix socket)──▶ serve()
                  │ stream: its reports and its client's messages ──▶ _executor_frame()
                  │ report pipe (worker/reports.py) ──▶ read_pipe() ──▶ _executor_frame()
                  └ exit (seen by its reap-<n> thread) ──▶ _report_exit()

What an executor sends is handled in its order: its reports become events
for the state machine (``daemon.state``), its client's messages go on to the
scheduler wrapped in ``FromClient``, and the reports in its pipe take their
places among the frames of its stream. When it exits, its last reports are
read first; then what it sealed in the store and never announced is freed,
and the state machine hears of its death. The same socket serves every
process's store connection (``store_server.py``).

Plain functions over ``WorkerDaemon`` (``daemon.py``), part of its IO shell:
they read and change its fields, send through its outboxes (``to_scheduler``,
``to_executor``) and ``carry_out`` what the state machine answers.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from functools import partial
from typing import TYPE_CHECKING, Any

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError

from taskgraph import _wire as w
from taskgraph._ids import same_task
from taskgraph._transport import FrameReader, accept_handshake
from taskgraph.exceptions import AuthenticationError, ProtocolError

from . import store_server
from .reports import READ_DELAY, ReportReader
from .state import (
    ActorEnds,
    ExecutorDied,
    ExecutorFinished,
    ExecutorReady,
    TaskBlocked,
    TasksReturned,
    TaskUnblocked,
)

if TYPE_CHECKING:
    from .daemon import WorkerDaemon

log = logging.getLogger("taskgraph.worker")


# -- their lives -------------------------------------------------------------


def spawn(daemon: WorkerDaemon, executor_id: int) -> None:
    if daemon.stopping:
        return
    pipe_read, pipe_write = os.pipe()
    env = dict(os.environ)
    env.update(
        TASKGRAPH_EXECUTOR_SOCKET=daemon.socket_path,
        TASKGRAPH_TOKEN_HEX=daemon.token.hex(),
        TASKGRAPH_WORKER_ID=daemon.worker_id,
        TASKGRAPH_EXECUTOR_ID=str(executor_id),
        TASKGRAPH_REPORT_FD=str(pipe_write),
    )
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskgraph.worker.executor"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,  # what tasks print: worker/output.py
            stderr=subprocess.PIPE,
            pass_fds=(pipe_write,),
        )
    except BaseException:
        os.close(pipe_read)
        raise
    finally:
        os.close(pipe_write)  # the executor's now: we see EOF when it exits
    daemon.report_pipes[executor_id] = ReportReader(pipe_read)
    daemon.processes[executor_id] = proc
    assert daemon.output is not None
    daemon.output.watch(proc.pid, proc.stdout, proc.stderr)
    loop = IOLoop.current()

    def reap() -> None:
        code = proc.wait()
        loop.add_callback(_executor_exited, daemon, executor_id, code)

    threading.Thread(target=reap, name=f"reap-{executor_id}", daemon=True).start()


def _executor_exited(daemon: WorkerDaemon, executor_id: int, code: int) -> None:
    daemon.processes.pop(executor_id, None)
    if executor_id in daemon.executor_streams:
        # What it sent before exiting is still being read; report the exit after.
        daemon.exit_codes[executor_id] = code
        return
    _report_exit(daemon, executor_id, code)


def _report_exit(daemon: WorkerDaemon, executor_id: int, code: int) -> None:
    # Its last reports first: a task it finished is not undone by its death.
    read_pipe(daemon, executor_id, everything=True)
    _close_pipe(daemon, executor_id)
    for client_id in [c for c, e in daemon.by_client.items() if e == executor_id]:
        del daemon.by_client[client_id]
        for object_id in daemon.unannounced.pop(client_id, ()):
            if daemon.objects is not None:
                daemon.objects.free(object_id)
    if daemon.stopping or executor_id not in daemon.state.executors:
        return
    daemon.carry_out(daemon.state.handle(ExecutorDied(executor_id, code)))


# -- what they send ----------------------------------------------------------


async def serve(daemon: WorkerDaemon, stream: IOStream) -> None:
    await daemon.joined.wait()  # the welcome carries our peer address
    welcome = w.Welcome(b"", daemon.worker_id, [daemon.info])
    try:
        hello = await accept_handshake(stream, daemon.token, welcome)
    except AuthenticationError as exc:
        log.warning("rejected an executor connection: %s", exc)
        return
    if hello.role == "store":
        await store_server.serve(daemon, stream, hello.client_id)
        return
    executor_id = next((e for e, p in daemon.processes.items() if p.pid == hello.pid), None)
    if executor_id is None or executor_id not in daemon.state.executors:
        stream.close()
        return
    daemon.executor_streams[executor_id] = stream
    daemon.by_client[hello.client_id] = executor_id
    pipe = daemon.report_pipes.get(executor_id)
    if pipe is not None:
        pipe.client_id = hello.client_id
    _watch_pipe(daemon, executor_id)
    daemon.carry_out(daemon.state.handle(ExecutorReady(executor_id, hello.pid, hello.client_id)))
    reader = FrameReader(stream, w.EXECUTOR_TO_DAEMON)
    try:
        while True:
            msgs = await reader.read()
            daemon.in_frame = True
            try:
                _stream_frames(daemon, executor_id, hello.client_id, msgs, reader.counts)
            finally:
                daemon.end_frame()
    except (StreamClosedError, ProtocolError):
        stream.close()
    except Exception:
        # A bug in handling an executor's frame leaves this node's records in
        # doubt: stop it (the scheduler runs its tasks elsewhere), never limp on.
        log.exception("failed on a frame from executor %s; stopping", executor_id)
        stream.close()
        IOLoop.current().add_callback(daemon.stop)
    finally:
        daemon.executor_streams.pop(executor_id, None)
        code = daemon.exit_codes.pop(executor_id, None)
        if code is not None:
            _report_exit(daemon, executor_id, code)
        # else the process lives on for a moment; its reaper reports the exit


def _stream_frames(
    daemon: WorkerDaemon, executor_id: int, client_id: bytes, msgs: list[Any], counts: list[int]
) -> None:
    """A burst of frames from an executor's stream (``counts``: messages per
    frame), with its pipe's reports in their places among them. Every report
    written before one of these frames was sent is in the pipe by now."""
    pipe = daemon.report_pipes.get(executor_id)
    if pipe is None:
        _executor_frame(daemon, executor_id, client_id, msgs)
        return
    read_pipe(daemon, executor_id)  # those due before the burst
    if not pipe.waiting():
        _executor_frame(daemon, executor_id, client_id, msgs)
        pipe.frames += len(counts)
        read_pipe(daemon, executor_id)
        return
    start = 0
    for count in counts:
        _executor_frame(daemon, executor_id, client_id, msgs[start : start + count])
        start += count
        pipe.frames += 1
        read_pipe(daemon, executor_id)


def _executor_frame(
    daemon: WorkerDaemon, executor_id: int, client_id: bytes, msgs: list[Any]
) -> None:
    """What an executor sent, in its order.

    Its client's messages are relayed to the scheduler; its reports become
    events for the state machine, a run of them handled in one go. Only one
    of the two lists is non-empty at a time, so the scheduler hears both in
    the executor's order.
    """
    relay: list[Any] = []
    events: list[Any] = []
    sealed = daemon.unannounced.get(client_id)
    if sealed:
        for orphan in _announced(sealed, msgs):
            if daemon.objects is not None:
                daemon.objects.free(orphan)
    for msg in msgs:
        if isinstance(msg, w.Executed | w.Returned):
            if relay:
                daemon.to_scheduler(w.FromClient(client_id, relay))
                relay = []
            if isinstance(msg, w.Executed):
                events.append(ExecutorFinished(executor_id, msg.result))
            else:
                events.append(TasksReturned(executor_id, msg.task_ids))
        elif isinstance(msg, w.ActorEnding):
            events.append(ActorEnds(executor_id, msg.reason))
        elif isinstance(msg, w.Fetch):
            daemon.loop.add_callback(_fetch, daemon, executor_id, msg)
        elif isinstance(msg, w.CLIENT_MESSAGES):
            if events:
                daemon.carry_out(daemon.state.handle_all(events))
                events = []
            relay.append(msg)
            if isinstance(msg, w.TaskBlocked):
                daemon.carry_out(daemon.state.handle(TaskBlocked(msg.task_id)))
            elif isinstance(msg, w.TaskUnblocked):
                daemon.carry_out(daemon.state.handle(TaskUnblocked(msg.task_id)))
        elif isinstance(msg, w.MetricsUpdate):
            daemon.to_scheduler(msg)  # for the scheduler's shell; no order to keep
        else:
            raise ProtocolError(f"an executor may not send {type(msg).__name__}")
    if events:
        daemon.carry_out(daemon.state.handle_all(events))
    if relay:
        daemon.to_scheduler(w.FromClient(client_id, relay))


def _announced(sealed: set[bytes], msgs: list[Any]) -> list[bytes]:
    """Drop from ``sealed`` the objects these executor messages tell the scheduler of.

    Returns those no message ever will: returns a task stored before it failed
    (a later return would not pickle), which only this daemon knows of.
    """
    orphans: list[bytes] = []
    for msg in msgs:
        if isinstance(msg, w.Executed):
            result = msg.result
            sealed.difference_update(r.object_id for r in result.returns)
            if result.error is not None:
                orphans.extend(oid for oid in sealed if same_task(oid, result.task_id))
                sealed.difference_update(orphans)
        elif isinstance(msg, w.PutObject):
            sealed.discard(msg.object_id)
        elif isinstance(msg, w.GeneratorItem):
            sealed.discard(msg.value.object_id)
    return orphans


async def _fetch(daemon: WorkerDaemon, executor_id: int, msg: w.Fetch) -> None:
    """An executor needs an object held on another host: pull a copy here."""
    assert daemon.puller is not None
    first = msg.object_id not in daemon.puller.copies
    try:
        local = await daemon.puller.fetch(
            msg.object_id, msg.location, daemon.host, daemon.info.peer
        )
    except Exception as exc:  # whatever went wrong, the task hears of it
        daemon.to_executor(executor_id, w.Fetched(msg.request_id, error=str(exc)))
        return
    if first:
        daemon.to_scheduler(w.ObjectCopied(msg.object_id, local))
    daemon.to_executor(executor_id, w.Fetched(msg.request_id, local))


# -- report pipes (worker/reports.py) ----------------------------------------


def _watch_pipe(daemon: WorkerDaemon, executor_id: int) -> None:
    pipe = daemon.report_pipes.get(executor_id)
    if pipe is not None and not pipe.watched and not pipe.closed:
        daemon.loop.add_handler(pipe.fd, partial(_pipe_readable, daemon, executor_id), IOLoop.READ)
        pipe.watched = True


def _pipe_readable(daemon: WorkerDaemon, executor_id: int, fd: int, events: int) -> None:
    """Reports arrived: read them a moment later, with the ones that follow
    (at once while the scheduler waits on some)."""
    pipe = daemon.report_pipes.get(executor_id)
    if pipe is None or not pipe.watched:
        return
    daemon.loop.remove_handler(fd)
    pipe.watched = False
    daemon.loop.call_later(0 if daemon.awaiting() else READ_DELAY, _pipe_due, daemon, executor_id)


def _pipe_due(daemon: WorkerDaemon, executor_id: int) -> None:
    daemon.in_frame = True
    try:
        read_pipe(daemon, executor_id)
    finally:
        daemon.end_frame()
    _watch_pipe(daemon, executor_id)


def read_pipe(daemon: WorkerDaemon, executor_id: int, everything: bool = False) -> None:
    """Handle the reports in the pipe that are due (see worker/reports.py)."""
    pipe = daemon.report_pipes.get(executor_id)
    if pipe is None or not pipe.client_id:
        return
    try:
        pipe.read()
    except ProtocolError as exc:
        log.warning("executor %s wrote a bad report (%s); ignoring its pipe", executor_id, exc)
        _close_pipe(daemon, executor_id)
        return
    msgs = pipe.due(everything)
    if msgs:
        daemon.piped_reports += len(msgs)
        _executor_frame(daemon, executor_id, pipe.client_id, msgs)


def _close_pipe(daemon: WorkerDaemon, executor_id: int) -> None:
    pipe = daemon.report_pipes.pop(executor_id, None)
    if pipe is None:
        return
    if pipe.watched:
        daemon.loop.remove_handler(pipe.fd)
    pipe.close()
