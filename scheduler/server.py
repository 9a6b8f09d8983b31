"""The scheduler's IO shell: Tornado streams in, ``SchedulerState`` decides, streams out.

Holds the state object as ``self.state`` and never decides anything itself:
each decoded batch becomes one event, and the returned ``Send`` instructions
become one frame per destination. One coroutine per connection, none per task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tornado.ioloop import PeriodicCallback
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpserver import TCPServer

from taskgraph import _wire as w
from taskgraph._tls import TLS, accept_tornado
from taskgraph._transport import FrameReader, accept_handshake, read_batch, write_batch
from taskgraph.exceptions import AuthenticationError, ProtocolError
from taskgraph.settings import settings

from . import views
from .feed import Feed
from .log_tail import LogTail
from .metrics import LoopLag, UserMetrics, registry_for
from .state import (
    ClientJoined,
    ClientLeft,
    ClientSent,
    Event,
    SchedulerState,
    Send,
    Tick,
    WorkerJoined,
    WorkerLeft,
    WorkerSent,
)

log = logging.getLogger("taskgraph.scheduler")

# For the shell, never the state's: from workers (output and log files for
# clients, executors' metrics), and from clients (log requests, metrics).
RELAYED = (w.TaskOutput, w.LogsRead, w.MetricsUpdate)
FOR_THE_SHELL = (w.ReadLogs, w.MetricsUpdate)
OUTPUT_BACKLOG = 16 << 20  # bytes waiting for a driver past which its tasks' output is dropped
DASHBOARD = b"dashboard"  # who asks, on the dashboard's log requests (a client's id has 16 bytes)


class SchedulerServer(TCPServer):
    """``tls``: every peer must switch to TLS with a certificate of the cluster's CA."""

    def __init__(
        self,
        token: bytes,
        cluster_id: str,
        worker_timeout: float | None = None,
        tls: TLS | None = None,
    ) -> None:
        super().__init__()
        self.token = token
        self.tls = tls
        if worker_timeout is None:
            worker_timeout = settings().worker_timeout
        # Busy workers may queue up to this many short CPU-only tasks per CPU
        # (placement.queue_depth_for).
        queue_depth = settings().queue_depth
        self.state = SchedulerState(
            cluster_id,
            worker_timeout,
            queue_depth,
            task_events=settings().task_events,
            clock_offset=time.time() - time.monotonic(),
        )
        # Time passes for the state machine even when nobody writes: silent
        # workers are noticed on a tick.
        self._ticker = PeriodicCallback(self.handle, 1000)
        self._ticker.start()
        self.client_streams: dict[bytes, IOStream] = {}
        self.shows_output: set[bytes] = set()  # drivers that asked for their tasks' output
        self.output_dropped: dict[bytes, int] = {}  # lines dropped for a slow driver, by driver
        self.worker_streams: dict[str, IOStream] = {}
        self.rejected = 0
        self._outgoing: dict[IOStream, list[w.Msg]] = {}
        self._closing: list[IOStream] = []
        # What /metrics shows (scheduler/metrics.py, served by scheduler/dashboard.py).
        self.user_metrics = UserMetrics()
        self.registry = registry_for(lambda: views.metrics(self.state), self.user_metrics)
        self._loop_lag = LoopLag(self.registry)
        self._loop_lag.start()
        # What the dashboard's pages and JSON read (scheduler/feed.py).
        self.feed = Feed(self.state, logs=LogTail(self.read_logs))
        self._log_requests: dict[int, asyncio.Future[list[dict[str, Any]]]] = {}
        self._log_request_ids = 0
        self.dashboard_url = ""  # set by whoever serves the registry over HTTP

    def handle(self, *events: Event) -> None:
        try:
            sends = self.state.handle(Tick(time.monotonic()), *events)
        except Exception:
            log.exception("scheduler state machine failed on %r", events)
            raise
        self._deliver(sends)

    def _deliver(self, sends: list[Send]) -> None:
        """Write what one handled frame (or tick) produced: one frame per peer.

        Written at once, not on a later turn of the event loop: each turn
        costs a poll and callbacks, which is most of a lone task's round trip.
        Under load a frame carries many messages, so batches stay large.
        """
        for send in sends:
            if send.to == "client":
                stream = self.client_streams.get(send.id)
            else:
                stream = self.worker_streams.get(send.id)
            if stream is None:
                continue
            self._outgoing.setdefault(stream, []).extend(send.messages)
            if send.to == "worker" and send.id not in self.state.workers:
                self._closing.append(stream)  # the state machine gave up on it
        self._flush()

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, {}
        for stream, messages in outgoing.items():
            write_batch(stream, messages)
        closing, self._closing = self._closing, []
        for stream in closing:
            stream.close()

    def _welcome(self) -> w.Welcome:
        workers = [r.info for r in self.state.workers.values()]
        return w.Welcome(b"", self.state.cluster_id, workers, self.dashboard_url)

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        stream.set_nodelay(True)
        try:
            if self.tls is not None:
                stream = await accept_tornado(stream, self.tls)
            hello = await accept_handshake(stream, self.token, self._welcome())
        except AuthenticationError as exc:
            self.rejected += 1
            log.warning(
                "rejected a connection from %s: %s", address or "the Unix socket", exc.reason
            )
            return
        try:
            if hello.role == "worker":
                await self._serve_worker(stream)
            else:
                await self._serve_client(stream, hello)
        except StreamClosedError:
            pass
        except ProtocolError as exc:
            log.warning("closing connection from %s: %s", address, exc)
            stream.close()

    async def _serve_client(self, stream: IOStream, hello: w.Hello) -> None:
        client_id = hello.client_id
        self.client_streams[client_id] = stream
        if hello.output:
            self.shows_output.add(client_id)
        self.handle(ClientJoined(client_id, None, hello.namespace, hello.host, hello.deliver))
        reader = FrameReader(stream, w.CLIENT_TO_SCHEDULER)
        try:
            while True:
                msgs = await reader.read()
                if any(type(m) in FOR_THE_SHELL for m in msgs):
                    msgs = self._shell_messages(client_id, msgs)
                self.handle(ClientSent(client_id, msgs))
                if any(isinstance(m, w.Goodbye) for m in msgs):
                    break
        finally:
            self.client_streams.pop(client_id, None)
            self.shows_output.discard(client_id)
            self.output_dropped.pop(client_id, None)
            self.handle(ClientLeft(client_id))
            stream.close()

    async def _serve_worker(self, stream: IOStream) -> None:
        first = await read_batch(stream, w.WORKER_TO_SCHEDULER)
        if not first or not isinstance(first[0], w.RegisterWorker):
            raise ProtocolError("a worker must register first")
        info = first[0].info
        worker_id = info.worker_id
        self.worker_streams[worker_id] = stream
        log.info("worker %s joined from %s with %s", worker_id, info.host, info.resources)
        self.handle(WorkerJoined(info), WorkerSent(worker_id, first[1:]))
        reader = FrameReader(stream, w.WORKER_TO_SCHEDULER)
        try:
            while True:
                msgs = await reader.read()
                if any(type(m) in RELAYED for m in msgs):
                    msgs = self._relay(msgs)
                self.handle(WorkerSent(worker_id, msgs))
        finally:
            # A worker that re-registered under the same id has a new stream by
            # now; the old stream's end must not remove the new worker.
            if self.worker_streams.get(worker_id) is stream:
                del self.worker_streams[worker_id]
                log.info("worker %s left", worker_id)
                self.handle(WorkerLeft(worker_id))
            stream.close()

    # -- relayed, with no part for the state machine: output, log files, metrics --

    def _relay(self, msgs: list[w.Msg]) -> list[w.Msg]:
        """What tasks printed goes on to their drivers, a worker's log files to the
        client that asked for them, executors' metrics to ``/metrics``; the rest of
        the frame is returned."""
        rest: list[w.Msg] = []
        for msg in msgs:
            if type(msg) is w.TaskOutput:
                if msg.job in self.shows_output:
                    self._relay_output(self.client_streams[msg.job], msg)
            elif type(msg) is w.LogsRead and msg.client_id == DASHBOARD:
                asked = self._log_requests.pop(msg.request_id, None)
                if asked is not None and not asked.done():
                    asked.set_result(msg.files)
            elif type(msg) is w.LogsRead:
                stream = self.client_streams.get(msg.client_id)
                if stream is not None:
                    reply = w.QueryReply(msg.request_id, msg.files)
                    self._outgoing.setdefault(stream, []).append(reply)
            elif type(msg) is w.MetricsUpdate:
                self.user_metrics.update(msg)
            else:
                rest.append(msg)
        self._flush()
        return rest

    def _relay_output(self, stream: IOStream, msg: w.TaskOutput) -> None:
        """A driver that does not read (its stdout blocked, or stopped) would make us
        hold everything its tasks print: past ``OUTPUT_BACKLOG`` bytes waiting for
        it, lines are dropped (it is told when that starts, and how many when it
        reads again)."""
        outgoing = self._outgoing.setdefault(stream, [])
        waiting = len(getattr(stream, "_write_buffer", None) or b"")  # (Tornado's, private)
        if waiting > OUTPUT_BACKLOG:
            if msg.job not in self.output_dropped:
                self.output_dropped[msg.job] = 0
                note = "this driver reads too slowly: what its tasks print is dropped for now"
                outgoing.append(w.TaskOutput(msg.job, "taskgraph", 0, "scheduler", 2, [note]))
            self.output_dropped[msg.job] += len(msg.lines)
            return
        dropped = self.output_dropped.pop(msg.job, None)
        if dropped is not None:
            note = f"{dropped} lines its tasks printed were dropped"
            outgoing.append(w.TaskOutput(msg.job, "taskgraph", 0, "scheduler", 2, [note]))
        outgoing.append(msg)

    def _shell_messages(self, client_id: bytes, msgs: list[w.Msg]) -> list[w.Msg]:
        """Log requests go to the worker named (which answers with ``LogsRead``),
        metrics to ``/metrics``; the rest of the frame is returned."""
        rest: list[w.Msg] = []
        for msg in msgs:
            if type(msg) is w.MetricsUpdate:
                self.user_metrics.update(msg)
                continue
            if type(msg) is not w.ReadLogs:
                rest.append(msg)
                continue
            worker = self.worker_streams.get(msg.node)
            if worker is None:
                known = ", ".join(sorted(self.worker_streams)) or "none"
                error = {"error": f"no node {msg.node!r} in the cluster (nodes: {known})"}
                reply = w.QueryReply(msg.request_id, error)
                self._outgoing.setdefault(self.client_streams[client_id], []).append(reply)
            else:
                msg.client_id = client_id
                self._outgoing.setdefault(worker, []).append(msg)
        self._flush()
        return rest

    def read_logs(self, node: str, tail: int) -> asyncio.Future[list[dict[str, Any]]]:
        """Ask a node's daemon for the last ``tail`` lines of each of its log files,
        for the dashboard (scheduler/log_tail.py): the future of its answer, which
        the caller awaits with a timeout. ``LookupError`` for a node not here."""
        worker = self.worker_streams.get(node)
        if worker is None:
            known = ", ".join(sorted(self.worker_streams)) or "none"
            raise LookupError(f"no node {node!r} in the cluster (nodes: {known})")
        self._log_request_ids += 1
        request_id = self._log_request_ids
        asked: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._log_requests[request_id] = asked
        # Cancelled by a reader's timeout, or answered: either way not waited for any more.
        asked.add_done_callback(lambda _: self._log_requests.pop(request_id, None))
        ask = w.ReadLogs(request_id, node, tail=tail, client_id=DASHBOARD)
        self._outgoing.setdefault(worker, []).append(ask)
        self._flush()
        return asked

    def stop(self) -> None:
        self._ticker.stop()
        self._loop_lag.stop()
        super().stop()

    def shutdown_cluster(self) -> None:
        """Ask every worker to exit; used by ``taskgraph stop`` and local shutdown."""
        for stream in list(self.worker_streams.values()):
            write_batch(stream, [w.Shutdown("the scheduler is stopping")])
