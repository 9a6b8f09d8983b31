"""The worker daemon's IO shell: one per node, between the scheduler and its executors.

::

    scheduler ◀──TCP──▶ daemon ◀──Unix socket──▶ executor processes (one per CPU, more
                          │                        when tasks block in get)
                          ├─ object store: /dev/shm/tg-<worker id>-arena, reached by
                          │  every process on the host over the same Unix socket
                          └─ peer server: other hosts' daemons pull objects (TCP)

Holds ``WorkerState`` as ``self.state`` and carries out its instructions:
spawn or signal executors, forward frames. Executors' client messages are
relayed to the scheduler in arrival order, wrapped with their client id.
On SIGTERM, on a ``Shutdown`` from the scheduler, or when the scheduler goes
away, it stops its executors, removes its arena and spill files and exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from functools import partial
from pathlib import Path
from typing import Any

import psutil
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.iostream import IOStream, StreamClosedError
from tornado.netutil import bind_sockets, bind_unix_socket
from tornado.tcpserver import TCPServer

from taskgraph import _wire as w
from taskgraph import config
from taskgraph._ids import client_of, same_task
from taskgraph._object_io import host_id
from taskgraph._transport import (
    FrameReader,
    accept_handshake,
    connect_tornado,
    write_batch,
)
from taskgraph.exceptions import AuthenticationError, ProtocolError
from taskgraph.settings import settings

from . import store
from .logs import read_logs
from .output import OutputRelay
from .reports import READ_DELAY, ReportReader
from .state import (
    CancelRequested,
    ExecutorDied,
    ExecutorFinished,
    ExecutorReady,
    Instruction,
    KillActorRequested,
    SignalExecutor,
    SpawnExecutor,
    TaskBlocked,
    TasksAssigned,
    TasksReturned,
    TaskUnblocked,
    ToExecutor,
    ToScheduler,
    WorkerState,
)
from .transfer import PeerServer, Puller, local_ip_towards

log = logging.getLogger("taskgraph.worker")

# How long a busy worker gathers task reports before sending them on.
AWAITED_MAX = 10_000  # tasks remembered as awaited, at most
AWAITED_FOR = 1.0  # seconds a task is remembered as awaited


class _ExecutorServer(TCPServer):
    def __init__(self, daemon: WorkerDaemon) -> None:
        super().__init__()
        self.daemon = daemon

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        await self.daemon.serve_executor(stream)


class WorkerDaemon:
    def __init__(
        self,
        scheduler_address: str,
        token: bytes,
        resources: dict[str, float],
        *,
        worker_id: str | None = None,
        parent_pid: int | None = None,
        object_store_memory: int | None = None,
        spill_dir: str | None = None,
    ) -> None:
        self.scheduler_address = scheduler_address
        self.token = token
        self.worker_id = worker_id or secrets.token_hex(6)
        self.resources = resources
        self.parent_pid = parent_pid
        self.host = host_id()
        cpus = resources.get("CPU", 1.0)
        # Tasks a busy executor may hold, the one it runs included (worker/state.py).
        prefetch = settings().executor_prefetch
        self.state = WorkerState(self.worker_id, max(1, int(cpus)), cpus, prefetch)
        self.socket_dir = tempfile.mkdtemp(prefix="tg-")
        self.socket_path = os.path.join(self.socket_dir, "executors.sock")
        self.info = w.WorkerInfo(
            self.worker_id, self.host, f"unix://{self.socket_path}", resources, os.getpid()
        )
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.executor_streams: dict[int, IOStream] = {}
        self.by_client: dict[bytes, int] = {}
        self._exit_codes: dict[int, int] = {}  # exited, stream not yet drained
        # Each executor's report pipe (worker/reports.py), and how many reports
        # came that way (told in heartbeats: tests see the path taken).
        self.report_pipes: dict[int, ReportReader] = {}
        self.piped_reports = 0
        # Tasks the scheduler waits on (ReadReports), with when it asked: their
        # reports go at once. A hint: forgotten after AWAITED_FOR seconds (one
        # that will never report, e.g. a call its caller never sent).
        self.awaited: dict[bytes, float] = {}
        # Objects an executor sealed in our store and has not told the scheduler
        # of yet (in a report, a put, a generator item), by its client id: if it
        # dies first, nobody else knows them, and they are freed here.
        self.unannounced: dict[bytes, set[bytes]] = {}
        # The same for other processes (drivers), whose messages we do not see:
        # kept until freed; when one leaves our store, the scheduler is told, and
        # frees those it never heard of (the announcement died with it).
        self.sealed_by_others: dict[bytes, set[bytes]] = {}
        self.scheduler: IOStream | None = None
        self._outbox: list[Any] = []
        self._executor_outbox: dict[int, list[Any]] = {}
        self._scheduler_flush_pending = False
        self._flush_scheduled = False
        # While a frame is being handled, what it produces is sent when it ends.
        self._in_frame = False
        self._scheduler_now = False
        self.loop: IOLoop  # set when started, on the loop it runs on
        self.output: OutputRelay | None = None  # what executors print (worker/output.py)
        self.log_dir = Path()  # where it goes (set when started)
        self._stopping = False
        self.stopped = asyncio.Event()
        self.server: _ExecutorServer | None = None
        self.peer_server: PeerServer | None = None
        self.object_store_memory = object_store_memory or store.default_capacity()
        self.spill_dir = Path(spill_dir) if spill_dir else store.default_spill_dir(self.worker_id)
        self.objects: store.ObjectStore | None = None
        self.puller: Puller | None = None
        self._record: Path | None = None
        self._heartbeat: PeriodicCallback | None = None
        self._joined = asyncio.Event()  # registered with the scheduler, peer address known

    # -- start and stop --------------------------------------------------

    async def start(self) -> None:
        self.loop = IOLoop.current()
        self.log_dir = config.state_dir() / "logs" / self.worker_id
        self.output = OutputRelay(self.loop, self.worker_id, self.log_dir, self._send_output)
        swept = store.sweep_dead_daemons()
        if swept:
            log.warning("removed what %d dead worker daemon(s) left behind", swept)
        self._record = config.record_cluster(
            self.scheduler_address,
            "",  # the token stays in memory
            os.getpid(),
            "daemon",
            worker_id=self.worker_id,
            socket_dir=self.socket_dir,
            shm_dir=str(store.shm_dir()),
            spill_dir=str(self.spill_dir),
        )
        self.objects = store.ObjectStore(self.worker_id, self.object_store_memory, self.spill_dir)
        self.puller = Puller(self.worker_id, self.token, self.objects, self.info.address)
        # Executors first: their interpreters start while we join the scheduler
        # (they wait in the handshake until we have), so the first task does
        # not wait for a Python start-up after the cluster is up.
        sock = bind_unix_socket(self.socket_path, mode=0o600)
        self.server = _ExecutorServer(self)
        self.server.add_socket(sock)
        self._carry_out(self.state.start())
        hello = w.Hello("worker", b"", self.worker_id.encode(), pid=os.getpid(), host=self.host)
        self.scheduler, _ = await connect_tornado(self.scheduler_address, self.token, hello)
        # Peers reach us where we reach the scheduler from (or TASKGRAPH_PEER_HOST).
        assert self.scheduler.socket is not None
        peer_host = settings().peer_host or local_ip_towards(self.scheduler.socket)
        if peer_host not in ("", "0.0.0.0", "::"):
            self.peer_server = PeerServer(self.worker_id, self.token, self.objects)
            (sock,) = bind_sockets(0, peer_host)
            self.peer_server.add_socket(sock)
            self.info.peer = f"tcp://{peer_host}:{sock.getsockname()[1]}"
        write_batch(self.scheduler, [w.RegisterWorker(self.info)])
        self._joined.set()
        self._flush_scheduler()  # what executors said before we joined
        IOLoop.current().add_callback(self._read_scheduler)
        if self.parent_pid:
            self._parent_watch = PeriodicCallback(self._check_parent, 500)
            self._parent_watch.start()
        interval = settings().heartbeat_interval
        self._heartbeat = PeriodicCallback(self._send_heartbeat, interval * 1000)
        self._heartbeat.start()

    def _send_heartbeat(self) -> None:
        stats = self.state.statistics()
        self._to_scheduler(
            w.Heartbeat(
                running=stats["running"],
                executors=len(self.processes),
                executor_pids=[p.pid for p in self.processes.values()],
                store=self.objects.stats() if self.objects is not None else None,
                piped_reports=self.piped_reports,
                system=system_stats(),
                transfers=self._transfer_stats(),
            )
        )

    def _transfer_stats(self) -> dict[str, int]:
        stats = {"pulled": 0, "pulled_bytes": 0, "served": 0, "served_bytes": 0}
        if self.puller is not None:
            stats["pulled"] = self.puller.pulled
            stats["pulled_bytes"] = self.puller.pulled_bytes
        if self.peer_server is not None:
            stats["served"] = self.peer_server.served
            stats["served_bytes"] = self.peer_server.served_bytes
        return stats

    def _check_parent(self) -> None:
        # Orphans are re-parented; a dead parent may linger as a zombie, so ask who our parent is.
        if self.parent_pid and os.getppid() != self.parent_pid:
            log.warning("parent process %s is gone; stopping", self.parent_pid)
            IOLoop.current().add_callback(self.stop)

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self.server is not None:
            self.server.stop()
        if self.peer_server is not None:
            self.peer_server.stop()
        if self.puller is not None:
            self.puller.close()
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in list(self.processes.values()):
            try:
                await asyncio.get_running_loop().run_in_executor(None, proc.wait, 3)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.get_running_loop().run_in_executor(None, proc.wait)
        if self.output is not None:
            self.output.close()
            self._flush_scheduler()
        if self.objects is not None:
            self.objects.close()
        store.remove_all(self.worker_id, self.spill_dir)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        if self._record is not None:
            self._record.unlink(missing_ok=True)
        if self.scheduler is not None:
            self.scheduler.close()
        self.stopped.set()

    # -- scheduler side --------------------------------------------------

    async def _read_scheduler(self) -> None:
        assert self.scheduler is not None
        reader = FrameReader(self.scheduler, w.SCHEDULER_TO_WORKER)
        try:
            while True:
                msgs = await reader.read()
                self._in_frame = True
                try:
                    for msg in msgs:
                        self._scheduler_message(msg)
                finally:
                    self._end_frame()
        except (StreamClosedError, ProtocolError) as exc:
            if not self._stopping:
                log.warning("lost the scheduler (%s); stopping", exc)
        await self.stop()

    def _scheduler_message(self, msg: Any) -> None:
        if isinstance(msg, w.RunTasks):
            self._carry_out(self.state.handle(TasksAssigned(msg.assignments)))
        elif isinstance(msg, w.ToClient):
            executor_id = self.by_client.get(msg.client_id)
            if executor_id is not None:
                for inner in msg.messages:
                    self._to_executor(executor_id, inner)
        elif isinstance(msg, w.ReadReports):
            if len(self.awaited) > AWAITED_MAX:
                self.awaited.clear()  # (of tasks that never reported: batched, then)
            now = self.loop.time()
            self.awaited.update(dict.fromkeys(msg.task_ids, now))
            for executor_id in list(self.report_pipes):
                self._read_pipe(executor_id)
            if self._outbox:
                self._scheduler_now = True  # what we gathered goes with it
        elif isinstance(msg, w.FreeObjects):
            assert self.objects is not None and self.puller is not None
            for object_id in msg.object_ids:
                self.puller.forget(object_id)
                self.objects.free(object_id)
                sealed = self.sealed_by_others.get(client_of(object_id))
                if sealed:
                    sealed.discard(object_id)
        elif isinstance(msg, w.CancelRunning):
            self._carry_out(self.state.handle(CancelRequested(msg.task_id, msg.force, msg.channel)))
        elif isinstance(msg, w.KillActor):
            self._carry_out(self.state.handle(KillActorRequested(msg.actor_id, msg.graceful)))
        elif isinstance(msg, w.Shutdown):
            IOLoop.current().add_callback(self.stop)
        elif isinstance(msg, w.ReadLogs):
            files = read_logs(self.log_dir, msg.pid, msg.task, msg.offsets, msg.tail)
            self._to_scheduler(w.LogsRead(msg.client_id, msg.request_id, files))
        else:
            log.warning("ignoring unexpected %s from the scheduler", type(msg).__name__)

    def _to_scheduler(self, msg: Any) -> None:
        outbox = self._outbox
        if type(msg) is w.TasksDone and self.awaited:
            awaited = [r.task_id for r in msg.results if r.task_id in self.awaited]
            if awaited:
                for task_id in awaited:
                    del self.awaited[task_id]
                if self._in_frame:
                    self._scheduler_now = True
                else:
                    self.loop.add_callback(self._flush_scheduler)
        if type(msg) is w.TasksDone and outbox and type(outbox[-1]) is w.TasksDone:
            outbox[-1].results.extend(msg.results)  # one message for a burst of reports
        else:
            outbox.append(msg)
        if self._scheduler_flush_pending:
            return
        self._scheduler_flush_pending = True
        if self.state.running or (
            type(msg) is w.TasksDone and all(r.delivered or r.channel for r in msg.results)
        ):
            # Other tasks here will finish soon: gather their reports into one
            # frame. When nothing else runs, the scheduler waits on us: send now
            # (at the end of the frame we are reading, or on the next turn).
            self.loop.call_later(settings().batch_delay, self._flush_scheduler)
        elif self._in_frame:
            self._scheduler_now = True
        else:
            self.loop.add_callback(self._flush_scheduler)

    def _send_output(self, msgs: list[w.Msg]) -> None:
        for msg in msgs:
            self._to_scheduler(msg)

    def _flush_scheduler(self) -> None:
        self._scheduler_flush_pending = False
        if not self._joined.is_set():
            return  # kept until we have joined
        batch, self._outbox = self._outbox, []
        if batch and self.scheduler is not None:
            write_batch(self.scheduler, batch)

    def _to_executor(self, executor_id: int, msg: Any) -> None:
        self._executor_outbox.setdefault(executor_id, []).append(msg)
        if not self._flush_scheduled and not self._in_frame:
            self._flush_scheduled = True
            self.loop.add_callback(self._flush)

    def _end_frame(self) -> None:
        """A frame is handled: send what it produced now, one write per peer."""
        self._in_frame = False
        if self._executor_outbox:
            self._flush()
        if self._scheduler_now:
            self._scheduler_now = False
            self._flush_scheduler()

    def _flush(self) -> None:
        """One write per executor, whatever piled up."""
        self._flush_scheduled = False
        outbox, self._executor_outbox = self._executor_outbox, {}
        for executor_id, msgs in outbox.items():
            stream = self.executor_streams.get(executor_id)
            if stream is not None:
                write_batch(stream, msgs)

    # -- executor side ---------------------------------------------------

    def _carry_out(self, instructions: list[Instruction]) -> None:
        for ins in instructions:
            if isinstance(ins, ToExecutor):
                self._to_executor(ins.executor_id, ins.message)
            elif isinstance(ins, ToScheduler):
                self._to_scheduler(ins.message)
            elif isinstance(ins, SpawnExecutor):
                self._spawn(ins.executor_id)
            elif isinstance(ins, SignalExecutor):
                proc = self.processes.get(ins.executor_id)
                if proc is not None and proc.poll() is None:
                    proc.send_signal(ins.signum)

    def _spawn(self, executor_id: int) -> None:
        if self._stopping:
            return
        pipe_read, pipe_write = os.pipe()
        env = dict(os.environ)
        env.update(
            TASKGRAPH_EXECUTOR_SOCKET=self.socket_path,
            TASKGRAPH_TOKEN_HEX=self.token.hex(),
            TASKGRAPH_WORKER_ID=self.worker_id,
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
        self.report_pipes[executor_id] = ReportReader(pipe_read)
        self.processes[executor_id] = proc
        assert self.output is not None
        self.output.watch(proc.pid, proc.stdout, proc.stderr)
        loop = IOLoop.current()

        def reap() -> None:
            code = proc.wait()
            loop.add_callback(self._executor_exited, executor_id, code)

        threading.Thread(target=reap, name=f"reap-{executor_id}", daemon=True).start()

    def _executor_exited(self, executor_id: int, code: int) -> None:
        self.processes.pop(executor_id, None)
        if executor_id in self.executor_streams:
            # What it sent before exiting is still being read; report the exit after.
            self._exit_codes[executor_id] = code
            return
        self._report_exit(executor_id, code)

    async def _fetch(self, executor_id: int, msg: w.Fetch) -> None:
        """An executor needs an object held on another host: pull a copy here."""
        assert self.puller is not None
        first = msg.object_id not in self.puller.copies
        try:
            local = await self.puller.fetch(msg.object_id, msg.location, self.host, self.info.peer)
        except Exception as exc:  # whatever went wrong, the task hears of it
            self._to_executor(executor_id, w.Fetched(msg.request_id, error=str(exc)))
            return
        if first:
            self._to_scheduler(w.ObjectCopied(msg.object_id, local))
        self._to_executor(executor_id, w.Fetched(msg.request_id, local))

    # -- report pipes (worker/reports.py) --------------------------------------

    def _watch_pipe(self, executor_id: int) -> None:
        pipe = self.report_pipes.get(executor_id)
        if pipe is not None and not pipe.watched and not pipe.closed:
            self.loop.add_handler(pipe.fd, partial(self._pipe_readable, executor_id), IOLoop.READ)
            pipe.watched = True

    def _pipe_readable(self, executor_id: int, fd: int, events: int) -> None:
        """Reports arrived: read them a moment later, with the ones that follow
        (at once while the scheduler waits on some)."""
        pipe = self.report_pipes.get(executor_id)
        if pipe is None or not pipe.watched:
            return
        self.loop.remove_handler(fd)
        pipe.watched = False
        self.loop.call_later(0 if self._awaiting() else READ_DELAY, self._pipe_due, executor_id)

    def _awaiting(self) -> bool:
        """Whether the scheduler waits on a report here (forgetting stale waits)."""
        if self.awaited:
            stale = self.loop.time() - AWAITED_FOR
            for task_id in [t for t, at in self.awaited.items() if at < stale]:
                del self.awaited[task_id]
        return bool(self.awaited)

    def _pipe_due(self, executor_id: int) -> None:
        self._in_frame = True
        try:
            self._read_pipe(executor_id)
        finally:
            self._end_frame()
        self._watch_pipe(executor_id)

    def _read_pipe(self, executor_id: int, everything: bool = False) -> None:
        """Handle the reports in the pipe that are due (see worker/reports.py)."""
        pipe = self.report_pipes.get(executor_id)
        if pipe is None or not pipe.client_id:
            return
        try:
            pipe.read()
        except ProtocolError as exc:
            log.warning("executor %s wrote a bad report (%s); ignoring its pipe", executor_id, exc)
            self._close_pipe(executor_id)
            return
        msgs = pipe.due(everything)
        if msgs:
            self.piped_reports += len(msgs)
            self._executor_frame(executor_id, pipe.client_id, msgs)

    def _stream_frames(
        self, executor_id: int, client_id: bytes, msgs: list[Any], counts: list[int]
    ) -> None:
        """A burst of frames from an executor's stream (``counts``: messages per
        frame), with its pipe's reports in their places among them. Every report
        written before one of these frames was sent is in the pipe by now."""
        pipe = self.report_pipes.get(executor_id)
        if pipe is None:
            self._executor_frame(executor_id, client_id, msgs)
            return
        self._read_pipe(executor_id)  # those due before the burst
        if not pipe.waiting():
            self._executor_frame(executor_id, client_id, msgs)
            pipe.frames += len(counts)
            self._read_pipe(executor_id)
            return
        start = 0
        for count in counts:
            self._executor_frame(executor_id, client_id, msgs[start : start + count])
            start += count
            pipe.frames += 1
            self._read_pipe(executor_id)

    def _close_pipe(self, executor_id: int) -> None:
        pipe = self.report_pipes.pop(executor_id, None)
        if pipe is None:
            return
        if pipe.watched:
            self.loop.remove_handler(pipe.fd)
        pipe.close()

    def _report_exit(self, executor_id: int, code: int) -> None:
        # Its last reports first: a task it finished is not undone by its death.
        self._read_pipe(executor_id, everything=True)
        self._close_pipe(executor_id)
        for client_id in [c for c, e in self.by_client.items() if e == executor_id]:
            del self.by_client[client_id]
            for object_id in self.unannounced.pop(client_id, ()):
                if self.objects is not None:
                    self.objects.free(object_id)
        if self._stopping or executor_id not in self.state.executors:
            return
        self._carry_out(self.state.handle(ExecutorDied(executor_id, code)))

    async def serve_executor(self, stream: IOStream) -> None:
        await self._joined.wait()  # the welcome carries our peer address
        welcome = w.Welcome(b"", self.worker_id, [self.info])
        try:
            hello = await accept_handshake(stream, self.token, welcome)
        except AuthenticationError as exc:
            log.warning("rejected an executor connection: %s", exc)
            return
        if hello.role == "store":
            await self.serve_store(stream, hello.client_id)
            return
        executor_id = next((e for e, p in self.processes.items() if p.pid == hello.pid), None)
        if executor_id is None or executor_id not in self.state.executors:
            stream.close()
            return
        self.executor_streams[executor_id] = stream
        self.by_client[hello.client_id] = executor_id
        pipe = self.report_pipes.get(executor_id)
        if pipe is not None:
            pipe.client_id = hello.client_id
        self._watch_pipe(executor_id)
        self._carry_out(self.state.handle(ExecutorReady(executor_id, hello.pid, hello.client_id)))
        reader = FrameReader(stream, w.EXECUTOR_TO_DAEMON)
        try:
            while True:
                msgs = await reader.read()
                self._in_frame = True
                try:
                    self._stream_frames(executor_id, hello.client_id, msgs, reader.counts)
                finally:
                    self._end_frame()
        except (StreamClosedError, ProtocolError):
            stream.close()
        finally:
            self.executor_streams.pop(executor_id, None)
            code = self._exit_codes.pop(executor_id, None)
            if code is not None:
                self._report_exit(executor_id, code)
            # else the process lives on for a moment; its reaper reports the exit

    def _executor_frame(self, executor_id: int, client_id: bytes, msgs: list[Any]) -> None:
        """What an executor sent, in its order.

        Its client's messages are relayed to the scheduler; its reports become
        events for the state machine, a run of them handled in one go. Only one
        of the two lists is non-empty at a time, so the scheduler hears both in
        the executor's order.
        """
        relay: list[Any] = []
        events: list[Any] = []
        sealed = self.unannounced.get(client_id)
        if sealed:
            for orphan in _announced(sealed, msgs):
                if self.objects is not None:
                    self.objects.free(orphan)
        for msg in msgs:
            if isinstance(msg, w.Executed | w.Returned):
                if relay:
                    self._to_scheduler(w.FromClient(client_id, relay))
                    relay = []
                if isinstance(msg, w.Executed):
                    events.append(ExecutorFinished(executor_id, msg.result))
                else:
                    events.append(TasksReturned(executor_id, msg.task_ids))
            elif isinstance(msg, w.Fetch):
                self.loop.add_callback(self._fetch, executor_id, msg)
            elif isinstance(msg, w.CLIENT_MESSAGES):
                if events:
                    self._carry_out(self.state.handle_all(events))
                    events = []
                relay.append(msg)
                if isinstance(msg, w.TaskBlocked):
                    self._carry_out(self.state.handle(TaskBlocked(msg.task_id)))
                elif isinstance(msg, w.TaskUnblocked):
                    self._carry_out(self.state.handle(TaskUnblocked(msg.task_id)))
            elif isinstance(msg, w.MetricsUpdate):
                self._to_scheduler(msg)  # for the scheduler's shell; no order to keep
            else:
                raise ProtocolError(f"an executor may not send {type(msg).__name__}")
        if events:
            self._carry_out(self.state.handle_all(events))
        if relay:
            self._to_scheduler(w.FromClient(client_id, relay))

    async def serve_store(self, stream: IOStream, client_id: bytes) -> None:
        """One process on this host writing and reading objects; see worker/store.py."""
        objects = self.objects
        assert objects is not None
        holder = ("store", id(stream), client_id)
        reader = FrameReader(stream, w.STORE_REQUESTS)
        try:
            while True:
                replies: list[w.Msg] = []
                for msg in await reader.read():
                    if isinstance(msg, w.StoreUnpin):
                        for object_id in msg.object_ids:
                            objects.unpin(object_id, holder)
                    else:
                        try:
                            replies.append(self._store_request(objects, msg, holder))
                        except ProtocolError:
                            raise
                        except Exception as exc:  # the asker hears of it, the daemon goes on
                            log.exception("object store request %s failed", type(msg).__name__)
                            replies.append(
                                w.StoreReply(getattr(msg, "object_id", b""), error=repr(exc))
                            )
                if replies:
                    write_batch(stream, replies)
        except (StreamClosedError, ProtocolError):
            stream.close()
        finally:
            objects.drop_holder(holder)
            sealed = self.sealed_by_others.pop(client_id, None)
            if sealed:
                self._to_scheduler(w.StoreClientGone(client_id, list(sealed)))

    def _store_request(self, objects: store.ObjectStore, msg: Any, holder: Any) -> w.StoreReply:
        if isinstance(msg, w.StoreCreate):
            try:
                offset = objects.create(msg.object_id, msg.size, holder)
            except store.StoreFull as exc:
                return w.StoreReply(
                    msg.object_id, full=[exc.needed, exc.used, exc.capacity], error=exc.reason
                )
            except ValueError as exc:
                return w.StoreReply(msg.object_id, error=str(exc))
            return w.StoreReply(msg.object_id, offset=offset, size=msg.size)
        if isinstance(msg, w.StoreSeal):
            objects.seal(msg.object_id, holder)
            if holder[2] in self.by_client:  # an executor's: see unannounced
                self.unannounced.setdefault(holder[2], set()).add(msg.object_id)
            else:
                self.sealed_by_others.setdefault(holder[2], set()).add(msg.object_id)
            return w.StoreReply(msg.object_id)
        if isinstance(msg, w.StorePin):
            try:
                where = objects.pin(msg.object_id, holder)
            except KeyError:
                return w.StoreReply(msg.object_id, error="it is not in its worker's object store")
            return w.StoreReply(
                msg.object_id, offset=where.offset, size=where.size, path=where.path
            )
        if isinstance(msg, w.StoreStats):
            return w.StoreReply(b"", stats=objects.stats(), object_ids=list(objects.entries))
        raise ProtocolError(f"a store client may not send {type(msg).__name__}")


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


def default_resources(
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    memory: float | None = None,
    custom: dict[str, float] | None = None,
) -> dict[str, float]:
    resources: dict[str, float] = {
        "CPU": float(num_cpus if num_cpus is not None else (os.cpu_count() or 1)),
        "memory": float(memory if memory is not None else psutil.virtual_memory().available * 0.7),
    }
    gpus = num_gpus if num_gpus is not None else detect_gpus()
    if gpus:
        resources["GPU"] = float(gpus)
    for name, amount in (custom or {}).items():
        if name in ("CPU", "GPU"):
            raise ValueError(f"set {name} with --num-{name.lower()}s, not in custom resources")
        resources[name] = float(amount)
    return resources


def detect_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return 0
    return len([line for line in out.stdout.splitlines() if line.strip()])


def run(daemon: WorkerDaemon) -> None:
    """Run a daemon until it stops; SIGTERM and SIGINT stop it cleanly."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(daemon.stop()))
        try:
            await daemon.start()
        except (OSError, ConnectionError) as exc:
            log.error("could not join the scheduler at %s: %s", daemon.scheduler_address, exc)
            await daemon.stop()
            raise SystemExit(1) from exc
        await daemon.stopped.wait()

    asyncio.run(main())


def system_stats() -> dict[str, float]:
    """This host's CPU and memory use, for the heartbeat (the scheduler's /metrics).

    CPU is the share used since the previous call (psutil keeps the last
    reading), so the first heartbeat says 0.
    """
    memory = psutil.virtual_memory()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": memory.percent,
        "memory_used": float(memory.total - memory.available),
        "memory_total": float(memory.total),
    }
