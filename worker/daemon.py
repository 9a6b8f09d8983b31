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

Here: starting and stopping, the scheduler's side, and the outboxes (what a
frame produces leaves when it is handled: one write per peer). Beside it, in
plain functions over the daemon: its executors (``daemon_executors.py``:
spawning, their streams and report pipes, their exits) and the store's
connections (``store_server.py``); peers pull objects through
``transfer.py``; ``host.py`` tells what this host has.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.iostream import IOStream, StreamClosedError
from tornado.netutil import bind_sockets, bind_unix_socket
from tornado.tcpserver import TCPServer

from taskgraph import _wire as w
from taskgraph import config
from taskgraph._ids import client_of
from taskgraph._object_io import host_id
from taskgraph._tls import TLS
from taskgraph._transport import (
    FrameReader,
    connect_tornado,
    write_batch,
)
from taskgraph.exceptions import ProtocolError
from taskgraph.settings import settings

from . import daemon_executors, store
from .host import system_stats
from .logs import read_logs
from .memory import MemoryMonitor
from .output import OutputRelay
from .reports import ReportReader
from .state import (
    CancelRequested,
    Instruction,
    KillActorRequested,
    SignalExecutor,
    SpawnExecutor,
    TasksAssigned,
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
        await daemon_executors.serve(self.daemon, stream)


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
        tls: TLS | None = None,
    ) -> None:
        self.scheduler_address = scheduler_address
        self.token = token
        self.tls = tls  # to the scheduler and other hosts' daemons; executors stay plain
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
        self.exit_codes: dict[int, int] = {}  # exited, stream not yet drained
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
        self.in_frame = False
        self._scheduler_now = False
        self.loop: IOLoop  # set when started, on the loop it runs on
        self.output: OutputRelay | None = None  # what executors print (worker/output.py)
        self.log_dir = Path()  # where it goes (set when started)
        self.stopping = False
        self.stopped = asyncio.Event()
        self.server: _ExecutorServer | None = None
        self.peer_server: PeerServer | None = None
        self.object_store_memory = object_store_memory or store.default_capacity()
        self.spill_dir = Path(spill_dir) if spill_dir else store.default_spill_dir(self.worker_id)
        self.objects: store.ObjectStore | None = None
        self.puller: Puller | None = None
        self._record: Path | None = None
        self._heartbeat: PeriodicCallback | None = None
        # Kills the task using the most when memory runs short (worker/memory.py).
        self.memory = MemoryMonitor(settings().memory_usage_threshold, settings().task_memory_limit)
        self._memory_watch: PeriodicCallback | None = None
        self.joined = asyncio.Event()  # registered with the scheduler, peer address known

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
        self.puller = Puller(self.worker_id, self.token, self.objects, self.info.address, self.tls)
        # Executors first: their interpreters start while we join the scheduler
        # (they wait in the handshake until we have), so the first task does
        # not wait for a Python start-up after the cluster is up.
        sock = bind_unix_socket(self.socket_path, mode=0o600)
        self.server = _ExecutorServer(self)
        self.server.add_socket(sock)
        self.carry_out(self.state.start())
        hello = w.Hello("worker", b"", self.worker_id.encode(), pid=os.getpid(), host=self.host)
        self.scheduler, _ = await connect_tornado(
            self.scheduler_address, self.token, hello, self.tls
        )
        # Peers reach us where we reach the scheduler from (or TASKGRAPH_PEER_HOST).
        assert self.scheduler.socket is not None
        peer_host = settings().peer_host or local_ip_towards(self.scheduler.socket)
        if peer_host not in ("", "0.0.0.0", "::"):
            self.peer_server = PeerServer(self.worker_id, self.token, self.objects, self.tls)
            (sock,) = bind_sockets(0, peer_host)
            self.peer_server.add_socket(sock)
            self.info.peer = f"tcp://{peer_host}:{sock.getsockname()[1]}"
        write_batch(self.scheduler, [w.RegisterWorker(self.info)])
        self.joined.set()
        self._flush_scheduler()  # what executors said before we joined
        IOLoop.current().add_callback(self._read_scheduler)
        if self.parent_pid:
            self._parent_watch = PeriodicCallback(self._check_parent, 500)
            self._parent_watch.start()
        interval = settings().heartbeat_interval
        self._heartbeat = PeriodicCallback(self._send_heartbeat, interval * 1000)
        self._heartbeat.start()
        refresh_ms = settings().memory_monitor_refresh_ms
        if refresh_ms > 0:
            self._memory_watch = PeriodicCallback(self._check_memory, refresh_ms)
            self._memory_watch.start()

    def _check_memory(self) -> None:
        busy = {
            executor_id: self.processes[executor_id].pid
            for executor_id, ex in self.state.executors.items()
            if ex.state == "busy" and not ex.actor_id and executor_id in self.processes
        }
        pressure = self.memory.look(busy)
        if pressure is None:
            return
        instructions = self.state.handle(pressure)
        for ins in instructions:
            if isinstance(ins, SignalExecutor):
                victim = self.state.executors[ins.executor_id]
                log.warning(
                    "memory in use (%d MiB) is over the limit (%d MiB): killing task %s "
                    "(executor %s, %d MiB)",
                    pressure.used >> 20,
                    pressure.limit >> 20,
                    victim.tasks[0].spec.name if victim.tasks else "?",
                    victim.pid,
                    pressure.usage.get(ins.executor_id, 0) >> 20,
                )
        self.carry_out(instructions)

    def _send_heartbeat(self) -> None:
        stats = self.state.statistics()
        self.to_scheduler(
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
        if self.stopping:
            return
        self.stopping = True
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._memory_watch is not None:
            self._memory_watch.stop()
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
                self.in_frame = True
                try:
                    for msg in msgs:
                        self._scheduler_message(msg)
                finally:
                    self.end_frame()
        except (StreamClosedError, ProtocolError) as exc:
            if not self.stopping:
                log.warning("lost the scheduler (%s); stopping", exc)
        except Exception:
            # A bug here must not leave a node that heartbeats but hears nothing:
            # stop, and the scheduler runs this node's tasks elsewhere.
            log.exception("failed on a message from the scheduler; stopping")
        await self.stop()

    def _scheduler_message(self, msg: Any) -> None:
        if isinstance(msg, w.RunTasks):
            self.carry_out(self.state.handle(TasksAssigned(msg.assignments)))
        elif isinstance(msg, w.ToClient):
            executor_id = self.by_client.get(msg.client_id)
            if executor_id is not None:
                for inner in msg.messages:
                    self.to_executor(executor_id, inner)
        elif isinstance(msg, w.ReadReports):
            if len(self.awaited) > AWAITED_MAX:
                self.awaited.clear()  # (of tasks that never reported: batched, then)
            now = self.loop.time()
            self.awaited.update(dict.fromkeys(msg.task_ids, now))
            for executor_id in list(self.report_pipes):
                daemon_executors.read_pipe(self, executor_id)
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
            self.carry_out(self.state.handle(CancelRequested(msg.task_id, msg.force, msg.channel)))
        elif isinstance(msg, w.KillActor):
            self.carry_out(self.state.handle(KillActorRequested(msg.actor_id, msg.graceful)))
        elif isinstance(msg, w.Shutdown):
            IOLoop.current().add_callback(self.stop)
        elif isinstance(msg, w.ReadLogs):
            files = read_logs(self.log_dir, msg.pid, msg.task, msg.offsets, msg.tail)
            self.to_scheduler(w.LogsRead(msg.client_id, msg.request_id, files))
        else:
            log.warning("ignoring unexpected %s from the scheduler", type(msg).__name__)

    def to_scheduler(self, msg: Any) -> None:
        outbox = self._outbox
        if type(msg) is w.TasksDone and self.awaited:
            awaited = [r.task_id for r in msg.results if r.task_id in self.awaited]
            if awaited:
                for task_id in awaited:
                    del self.awaited[task_id]
                if self.in_frame:
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
        elif self.in_frame:
            self._scheduler_now = True
        else:
            self.loop.add_callback(self._flush_scheduler)

    def awaiting(self) -> bool:
        """Whether the scheduler waits on a report here (forgetting stale waits)."""
        if self.awaited:
            stale = self.loop.time() - AWAITED_FOR
            for task_id in [t for t, at in self.awaited.items() if at < stale]:
                del self.awaited[task_id]
        return bool(self.awaited)

    def _send_output(self, msgs: list[w.Msg]) -> None:
        for msg in msgs:
            self.to_scheduler(msg)

    def _flush_scheduler(self) -> None:
        self._scheduler_flush_pending = False
        if not self.joined.is_set():
            return  # kept until we have joined
        batch, self._outbox = self._outbox, []
        if batch and self.scheduler is not None:
            write_batch(self.scheduler, batch)

    def to_executor(self, executor_id: int, msg: Any) -> None:
        self._executor_outbox.setdefault(executor_id, []).append(msg)
        if not self._flush_scheduled and not self.in_frame:
            self._flush_scheduled = True
            self.loop.add_callback(self._flush)

    def end_frame(self) -> None:
        """A frame is handled: send what it produced now, one write per peer."""
        self.in_frame = False
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

    # -- the state machine's instructions ---------------------------------

    def carry_out(self, instructions: list[Instruction]) -> None:
        for ins in instructions:
            if isinstance(ins, ToExecutor):
                self.to_executor(ins.executor_id, ins.message)
            elif isinstance(ins, ToScheduler):
                self.to_scheduler(ins.message)
            elif isinstance(ins, SpawnExecutor):
                daemon_executors.spawn(self, ins.executor_id)
            elif isinstance(ins, SignalExecutor):
                proc = self.processes.get(ins.executor_id)
                if proc is not None and proc.poll() is None:
                    proc.send_signal(ins.signum)


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
