"""Task leases, the executor's side (see ``taskgraph/_leases.py`` for the client's).

A lease is a task like any other to the scheduler and the worker daemon: it
holds its resources on this executor until it ends. Running it means
connecting to the client that asked for it and running the tasks it sends,
one at a time on the main thread, until the client closes its side::

    client ◀──connect, LeaseReady──  this executor
    client ──LeasedTask──▶ reader thread ──▶ main thread runs it
    client ◀──DirectResult────────────────── (and its report, Executed, to the daemon)

The client records each task with the scheduler as it sends it, and the
executor reports each one on its ordered stream to its daemon, like any task:
the scheduler knows them all. After ``IDLE_SECONDS`` with nothing to run, or
when the scheduler wants the resources back (a task waits for them:
``CancelTask`` naming the lease), the executor says ``LeaseEnding``; the
client closes its side, and the tasks it sent before that still run. A
``CancelTask`` naming a leased task (from the scheduler, through the daemon)
drops it if not started, or interrupts it (SIGINT, or SIGKILL with force: the
lease dies with it, and the scheduler fails or retries what was on it).
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import threading
from functools import partial
from typing import TYPE_CHECKING

from taskgraph import _wire as w
from taskgraph._transport import connect_blocking
from taskgraph.exceptions import TaskCancelledError, TaskgraphError
from taskgraph.worker.direct import direct_answer

if TYPE_CHECKING:
    from taskgraph.worker.executor import Executor

IDLE_SECONDS = float(os.environ.get("TASKGRAPH_LEASE_IDLE", "0.05"))


class Lease:
    """One lease being served: the client's connection and the tasks it sent."""

    def __init__(self, executor: Executor, lease: w.Assignment) -> None:
        self.executor = executor
        self.lease_id = lease.spec.task_id
        self.gpu_ids = list(lease.gpu_ids)
        client = executor.client
        hello = w.Hello("executor", b"", client.client_id, pid=os.getpid())
        self.conn, _ = connect_blocking(lease.spec.lease, client.token, hello)
        self.conn.send([w.LeaseReady(self.lease_id)])
        self.running: bytes | None = None  # the leased task the main thread runs
        self._queue: collections.deque[w.LeasedTask] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False  # the client closed its side, or we stop
        self._revoked = False  # the scheduler wants our resources back
        self._cancelled: set[bytes] = set()  # cancelled before they arrived
        # Code as it arrives (the first task of a function brings it), so that
        # a cancelled task does not take it away from those after it.
        self.code: dict[bytes, bytes] = {}
        self._reader = threading.Thread(target=self._read, name="taskgraph-lease", daemon=True)
        self._reader.start()

    def next(self) -> w.LeasedTask | None:
        """The next task to run (the main thread); None when the lease is over."""
        with self._cond:
            said_ending = False
            while not self._queue:
                if self._closed:
                    return None
                if said_ending:
                    self._cond.wait()
                elif self._revoked or (
                    not self._cond.wait(IDLE_SECONDS) and not self._queue and not self._closed
                ):
                    said_ending = True
                    with contextlib.suppress(OSError):
                        self.conn.send([w.LeaseEnding(revoked=self._revoked)])
            task = self._queue.popleft()
            self.running = task.spec.task_id
            return task

    def finish(self, result: w.TaskResult) -> None:
        """Report a leased task (Executed, on our one stream to the daemon) and
        answer its client (see ``Executor.report`` for which goes first)."""
        result.channel = self.lease_id
        with self._cond:
            if self.running == result.task_id:
                self.running = None
        self.executor.report(result, partial(self._answer, result))

    def _answer(self, result: w.TaskResult) -> None:
        with contextlib.suppress(OSError):  # the client is gone: the scheduler has it
            self.conn.send([direct_answer(result)])

    def _read(self) -> None:
        try:
            while True:
                for msg in self.conn.recv():
                    if isinstance(msg, w.LeasedTask):
                        if msg.function:
                            self.code[msg.spec.function_id] = msg.function
                        self._arrived(msg)
                    else:
                        return  # a client sends nothing else here
        except (OSError, ConnectionError, TaskgraphError):
            pass  # the client closed its side: the lease ends after what it sent
        finally:
            self.stop()

    def _arrived(self, task: w.LeasedTask) -> None:
        with self._cond:
            if task.spec.task_id in self._cancelled:  # (the cancel came first)
                self._cancelled.discard(task.spec.task_id)
            else:
                self._queue.append(task)
                self._cond.notify()
                return
        self._cancel_queued(task.spec)

    def cancel(self, task_id: bytes, force: bool) -> None:
        """The scheduler cancels a task sent down this lease: dropped if not started,
        interrupted if running, remembered if it has not arrived yet."""
        with self._cond:
            queued = next((t for t in self._queue if t.spec.task_id == task_id), None)
            if queued is not None:
                self._queue.remove(queued)
            elif self.running == task_id:
                self.executor.interrupt(task_id, force)
                return
            else:
                self._cancelled.add(task_id)
                return
        self._cancel_queued(queued.spec)

    def _cancel_queued(self, spec: w.TaskSpec) -> None:
        err = TaskCancelledError(spec.name, spec.task_id.hex())
        self.finish(w.TaskResult(spec.task_id, error=pickle.dumps(err), failure="cancelled"))

    def revoke(self) -> None:
        """End the lease as soon as nothing runs (the scheduler wants it back)."""
        with self._cond:
            self._revoked = True
            self._cond.notify()

    def stop(self) -> None:
        """No more tasks: ``next`` returns None once those queued have run."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def close(self) -> None:
        self.conn.close()
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
