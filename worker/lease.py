"""Task leases, the executor's side (see ``taskgraph/_leases.py`` for the client's).

A lease is a task like any other to the scheduler and the worker daemon: it
holds its resources on this executor until it ends. Running it means
connecting to the client that asked for it and running the tasks it sends,
one at a time on the main thread, until the client closes its side::

    client ◀──connect, LeaseReady──  this executor
    client ──LeasedTask──▶ reader thread ──▶ main thread runs it
    client ◀──DirectResult────────────────── (answered at once)

After ``IDLE_SECONDS`` with nothing to run, or when the scheduler wants the
resources back (a task waits for them: ``CancelTask`` naming the lease), the
executor says ``LeaseEnding``;
the client closes its side, and the tasks it sent before that still run. A
``CancelTask`` from the client drops a task not started, or interrupts the
running one (SIGINT, or SIGKILL with force: the lease dies with it).
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import threading
from typing import TYPE_CHECKING

from taskgraph import _wire as w
from taskgraph._object_ref import ObjectRef
from taskgraph._transport import connect_blocking
from taskgraph.exceptions import TaskCancelledError, TaskgraphError
from taskgraph.worker.direct import register_stored

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
        self._kept: dict[bytes, list[ObjectRef]] = {}  # refs in returns, until acked
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

    def answer(self, result: w.TaskResult, inner: list[ObjectRef] | None) -> None:
        """Send a task's result; ``inner``: refs inside its returns.

        Those, and our holds on the returns left in our store (registered
        here, see ``register_stored``), are kept until the client acks.
        """
        client = self.executor.client
        holds = register_stored(client, result)
        kept = holds + (inner or [])
        if kept:
            self._kept[result.task_id] = kept
            # The scheduler must have what we sent (the stored returns, what the
            # task sent about the objects inside) before the client acquires or
            # records the returns.
            with contextlib.suppress(OSError, ConnectionError, TimeoutError):
                client.query("ping")
        else:
            client.flush_if_pending()  # what the task sent goes before its answer
        with self._cond:
            self.running = None
        try:
            self.conn.send([w.DirectResult(result, bool(kept), registered=bool(holds))])
        except OSError:  # the client is gone: what the task stored is nobody's, and freed
            self._kept.pop(result.task_id, None)

    def _read(self) -> None:
        try:
            while True:
                for msg in self.conn.recv():
                    if isinstance(msg, w.LeasedTask):
                        if msg.function:
                            self.code[msg.spec.function_id] = msg.function
                        with self._cond:
                            self._queue.append(msg)
                            self._cond.notify()
                    elif isinstance(msg, w.CancelTask):
                        self._cancel(msg.task_id, msg.force)
                    elif isinstance(msg, w.DirectAck):
                        self._kept.pop(msg.task_id, None)
                    else:
                        return  # a client sends nothing else here
        except (OSError, ConnectionError, TaskgraphError):
            pass  # the client closed its side: the lease ends after what it sent
        finally:
            self.stop()

    def _cancel(self, task_id: bytes, force: bool) -> None:
        with self._cond:
            for task in self._queue:
                if task.spec.task_id == task_id:
                    self._queue.remove(task)
                    err = TaskCancelledError(task.spec.name, task_id.hex())
                    cancelled = w.TaskResult(task_id, error=pickle.dumps(err), failure="cancelled")
                    with contextlib.suppress(OSError):
                        self.conn.send([w.DirectResult(cancelled)])
                    return
            if self.running == task_id:
                self.executor.interrupt(task_id, force)

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
        self._kept.clear()
