"""An executor process: runs one task at a time for its worker daemon, forever.

::

    worker daemon ──Execute──▶ reader thread ──inbox──▶ main thread runs the task
    worker daemon ◀─[client messages…, Executed]── client (one ordered stream)

The main thread runs tasks so that a cancel (SIGINT, which the reader thread
raises when the daemon says ``CancelTask``) lands in the task's own code. The
daemon may hand over a few short tasks at once; they run in order, each
reported before the next starts, and if the running task blocks in get() the
ones not started go back to the daemon (``Returned``), so that none waits on
it. A lease (worker/channel.py) is a task that runs, instead of a function of
its own, the tasks its client sends straight here, until it ends; an actor's
direct callers send calls straight here too. The process is also a full
client: a task may submit tasks, put, get and wait, all relayed by the
daemon.

Here: the process's loops, what kind of task each assignment is, leases, an
actor's creation, and reports. How one call runs (its arguments, its context,
its returns, its failure as data) is ``worker/task_call.py``'s.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec

from taskgraph import _api
from taskgraph import _wire as w
from taskgraph._deliveries import Deliverer, deliverable
from taskgraph._transport import connect_blocking
from taskgraph.exceptions import TaskgraphError
from taskgraph.settings import settings

from . import output
from .actor_runtime import ActorRuntime, creation_error, exit_for
from .channel import Caller, Callers, Lease
from .executor_client import ExecutorClient, cancelled_result
from .reports import ReportWriter
from .task_call import Cancelled, TaskCalls

ORPHAN_GRACE = 1.0  # seconds a running task outlives its daemon before the process ends
LINK_CHECK = 1.0  # seconds between looks at our link's descriptor (watch_link)


def watch_link(fd: int) -> None:
    """End the process if its link to the daemon is closed under it. A task may
    close the process's descriptors (``os.closerange``): the link is gone, but
    the thread reading it, blocked in ``recv``, is not woken, and the task would
    run on unheard, holding its CPU. A look once a second finds the descriptor
    closed (or reused for something else); the process then ends as an orphan
    does, and its daemon reports the crash (``WorkerCrashedError``)."""
    inode = os.fstat(fd).st_ino

    def watch() -> None:
        while True:
            time.sleep(LINK_CHECK)
            try:
                same = os.fstat(fd).st_ino == inode
            except OSError:
                same = False
            if not same:
                os._exit(1)

    threading.Thread(target=watch, name="taskgraph-link-watch", daemon=True).start()


class Executor(TaskCalls):
    """The process's loops: what the daemon says (``read_loop``, its own thread)
    and the tasks it hands over, run in turn on the main thread (``serve``)."""

    def __init__(self, client: ExecutorClient, worker_id: str, executor_id: str) -> None:
        super().__init__(client, worker_id, executor_id)
        self.pid = os.getpid()
        self.tasks = client.inbox
        self.tasks.answer_cancelled = lambda name, task_id: self.report(
            cancelled_result(name, task_id)
        )
        self.actor: ActorRuntime | None = None
        self.actor_id = b""
        self.callers: Callers | None = None  # an actor's direct callers (worker/channel.py)
        self.lease: Lease | None = None  # the lease this process serves (worker/channel.py)
        self.leases: set[bytes] = set()  # leases handed to us and not over
        self.revoked: set[bytes] = set()  # of those, the ones the scheduler wants back
        self.deliverer: Deliverer | None = None  # results straight to waiting owners
        self.reports = ReportWriter(-1)  # the daemon's report pipe, set by main()
        # Tasks tg.cancel() was asked for and not reported yet: what
        # get_runtime_context().is_canceled() reads (the reader thread adds).
        self.cancels: set[bytes] = set()

    def read_loop(self) -> None:
        conn = self.client.conn
        while True:
            try:
                msgs = conn.recv()
            except (OSError, ConnectionError, TaskgraphError):
                if self.lease is not None:
                    self.lease.stop()
                self.tasks.put(None)
                # The daemon is gone (killed: a stopping daemon ends us first). An
                # idle executor ends at once; a running task could report to no one
                # and would outlive its node: end the process after a moment.
                orphaned = threading.Timer(ORPHAN_GRACE, os._exit, (1,))
                orphaned.daemon = True
                orphaned.start()
                return
            forward = []
            for msg in msgs:
                if isinstance(msg, w.Shutdown) and self.lease is not None:
                    self.lease.stop()  # the daemon stops us: end a lease we serve
                if isinstance(msg, w.Fetched):
                    self.client.fetched(msg)
                elif isinstance(msg, w.Execute):
                    if w.is_lease(msg.assignment.spec):
                        self.leases.add(msg.assignment.spec.task_id)
                    self.tasks.put(msg.assignment)
                elif isinstance(msg, w.CancelTask):
                    self.cancels.add(msg.task_id)
                    lease = self.lease
                    if msg.task_id in self.leases and not msg.force:
                        self.revoke(msg.task_id)
                    elif lease is not None and msg.task_id != lease.lease_id:
                        lease.cancel(msg.task_id, msg.force)  # a task sent down it
                    elif self.actor_id:
                        if (name := self.tasks.cancel_call(msg.task_id)) is not None:
                            self.report(cancelled_result(name, msg.task_id))
                    elif not self.tasks.cancel(msg.task_id, msg.force):
                        self.cancels.discard(msg.task_id)  # not running here: no report comes
                elif isinstance(msg, w.Shutdown):
                    self.tasks.put(None)
                    return
                else:
                    forward.append(msg)
            if forward:
                self.client.on_messages(forward)

    def on_sigint(self, signum: int, frame: Any) -> None:
        # Only the cancel the reader thread raised, and only into its task: a
        # Ctrl-C meant for the driver, or one that lands as the task ends, is ignored.
        running = self.lease.running if self.lease is not None else self.tasks.current
        if self.running and self.tasks.cancelling == running:
            raise Cancelled()

    def revoke(self, lease_id: bytes) -> None:
        """The scheduler wants a lease's resources back: end it as if idle."""
        self.revoked.add(lease_id)
        lease = self.lease
        if lease is not None and lease.lease_id == lease_id:
            lease.revoke()

    def interrupt(self, task_id: bytes, force: bool) -> None:
        """Cancel the leased task that runs now (see on_sigint)."""
        self.tasks.cancelling = task_id
        os.kill(os.getpid(), signal.SIGKILL if force else signal.SIGINT)

    def serve(self) -> None:
        while True:
            assignment = self.tasks.get()
            if assignment is None:
                return
            spec = assignment.spec
            if spec.actor is not None:
                self.report(self.create_actor(assignment))
            elif spec.actor_id:
                assert self.actor is not None, "a method call reached a process with no actor"
                if spec.channel_to and self.callers is not None:
                    self.callers.offered(spec)  # before it runs: see Callers.offered
                self.actor.submit(assignment)
            elif w.is_lease(spec):
                result = self.serve_lease(assignment)
                self.tasks.done()
                self.client.task_ended()
                self.report(result)
            else:
                result = self.call(assignment, self.function(assignment))
                self.tasks.done()
                self.client.task_ended()
                if assignment.deliver:
                    result = self.deliver(assignment.deliver, result)
                self.report(result)

    def serve_lease(self, a: w.Assignment) -> w.TaskResult:
        """Run the tasks of the client that leased us until it lets go (worker/channel.py)."""
        began = time.perf_counter()
        lease_id = a.spec.task_id
        try:
            if lease_id in self.revoked:
                return self.returns_none(a)  # wanted back before it began
            try:
                lease = Lease(self, a)
            except (OSError, ConnectionError, TaskgraphError):
                return self.returns_none(a)  # the client is gone: nothing to serve
            self.lease = lease
            if lease_id in self.revoked:  # (the reader thread may have missed self.lease)
                lease.revoke()
            self._serve(lease)
        finally:
            self.leases.discard(lease_id)
            self.revoked.discard(lease_id)
        return msgspec.structs.replace(self.returns_none(a), duration=time.perf_counter() - began)

    def _serve(self, lease: Lease) -> None:
        try:
            while (task := lease.next()) is not None:
                try:
                    fn = self.function(task)
                except BaseException as exc:
                    result = self.failed(task, exc)
                else:
                    result = self.call(task, fn)
                self.client.task_ended()
                lease.finish(result)
        finally:
            self.lease = None
            lease.close()

    def deliver(self, address: str, result: w.TaskResult) -> w.TaskResult:
        """Hand a small result to its owner, who waits for it on this host (_deliveries.py)."""
        values = deliverable(result)
        if values is None:
            return result
        if self.deliverer is None:
            self.deliverer = Deliverer(self.client.token, self.client.client_id)
        if not self.deliverer.deliver(address, values):
            return result
        return msgspec.structs.replace(result, delivered=True)

    def report(self, result: w.TaskResult, answer: Callable[[], None] | None = None) -> None:
        """Hand a result back after everything the task sent (one ordered stream).

        Sent before the next task starts, even when more wait here: had the
        process died holding reports, the daemon could not tell which task
        killed it, and tasks that finished would have to run again.
        (Measured: holding up to 8 reports back gained nothing.)

        A channel task's caller is also ``answer``ed (a direct call's, here).
        Its report goes first when the answer names a stored return or one
        holding refs: the caller will read or ask about those. A small plain
        value's report goes into the report pipe, then the caller is answered:
        the daemon reads a burst of them at once, and a task that kills the
        process cannot take a finished one's report with it."""
        held = self._until_reported.pop(result.task_id, None)  # alive until we return
        self.cancels.discard(result.task_id)
        result.pid = self.pid
        caller = self.callers.caller_of(result.task_id) if self.callers is not None else None
        if caller is not None:
            result.channel = self.actor_id
            answer = partial(self._answer_caller, caller, result)
        if answer is None:
            self.client.send_now(w.Executed(result))
        elif any(r.location is not None or r.contains for r in result.returns):
            self.client.send_now(w.Executed(result))
            answer()
        else:
            # Into the report pipe before the caller hears: safe from a crash in
            # the next task, with no wake-up of the daemon per task (see
            # worker/reports.py). After what the task sent, which goes first.
            self.client.sent()
            if not self.reports.write(w.Executed(result)):
                self.client.send_now(w.Executed(result))
            answer()
        del held

    def _answer_caller(self, caller: Caller, result: w.TaskResult) -> None:
        """After the call's report: until then, a caller that leaves counts it in flight."""
        assert self.callers is not None
        self.callers.reported(result.task_id)
        caller.answer(result)

    def create_actor(self, a: w.Assignment) -> w.TaskResult:
        """Run the constructor; the result is timed as a task's is (its events)."""
        started, began = time.time(), time.perf_counter()
        result = self._construct(a)
        result.started, result.duration = started, time.perf_counter() - began
        return result

    def _construct(self, a: w.Assignment) -> w.TaskResult:
        spec = a.spec
        assert spec.actor is not None
        try:
            cls = self.function(a)
            args, kwargs = self.arguments(a)
            self.actor_id = spec.actor_id
            self.enter(a)
            try:
                instance = cls(*args, **kwargs)
            finally:
                self.leave(a, keep_gpus=True)
        except SystemExit as exc:  # as in Ray: the process ends (a restart, unless code 0)
            exit_for(self, exc, "constructor")
        except BaseException as exc:  # the constructor's failure is the actor's
            return w.TaskResult(
                spec.task_id,
                error=creation_error(spec.actor.class_name, exc),
                failure="task",
                error_type=type(exc).__name__,
            )
        self.actor = ActorRuntime(self, instance, spec.actor)
        if spec.actor.max_restarts == 0:  # (calls to a restarted one could be lost)
            self.callers = Callers(self)
        # The daemon asks an actor to end with SIGTERM (its last handle is gone):
        # a graceful end, atexit handlers included. kill() uses SIGKILL.
        signal.signal(signal.SIGTERM, self._on_sigterm)
        return self.returns_none(a)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        # Not here: the handler interrupts the main thread wherever it is, maybe
        # holding the client's locks, which ending (a last message, a flush) takes.
        actor = self.actor
        if actor is not None:
            threading.Thread(
                target=actor.exit_now, args=("its last handle was dropped",), daemon=True
            ).start()


def main() -> None:
    given = settings()  # set by our daemon (worker/daemon_executors.py, spawn)
    socket_path, token = given.executor_socket, bytes.fromhex(given.token_hex)
    worker_id, executor_id = given.worker_id, given.executor_id
    # What tasks print goes to our daemon, tagged with who printed it (worker/output.py).
    sys.stdout = output.TaggedStream(sys.stdout)
    sys.stderr = output.TaggedStream(sys.stderr)
    client_id = os.urandom(8)
    hello = w.Hello("executor", b"", client_id, pid=os.getpid())
    conn, welcome = connect_blocking(f"unix://{socket_path}", token, hello, w.DAEMON_TO_EXECUTOR)
    reports = ReportWriter(given.report_fd, conn)
    client = ExecutorClient(conn, client_id, welcome, token=token)
    _api.set_executor_client(client, welcome.cluster_id)
    executor = Executor(client, worker_id, f"{worker_id}/{executor_id}")
    executor.reports = reports
    signal.signal(signal.SIGINT, executor.on_sigint)
    threading.Thread(target=executor.read_loop, name="taskgraph-executor-read", daemon=True).start()
    watch_link(executor.client.conn.sock.fileno())
    code = 0
    try:
        executor.serve()  # returns when the daemon is gone or asked us to stop
    except BaseException:
        # Our own bug: say so, and exit as a crash (its task and the actor's calls
        # fail with WorkerCrashedError / ActorDiedError), not as a graceful end.
        traceback.print_exc()
        code = 70  # EX_SOFTWARE
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
