"""The client inside an executor process, and the inbox of tasks it runs.

A task's process is a full client (``taskgraph/_client.py``) whose connection
is its socket to its worker daemon, which relays. ``ExecutorClient`` adds
what only a task's process does:

- its task's arguments make refs the task already holds at the scheduler, so
  their acquires are held back, and only those still alive when the task ends
  are sent (``borrow_arguments``, ``task_ended``);
- while the task waits in get(), it is blocked: the scheduler lends its CPUs
  out (``TaskBlocked``/``TaskUnblocked``) and the inbox hands back the tasks
  queued behind it;
- a value on another host is copied into our daemon's store first (``Fetch``),
  not pulled into this process's memory;
- the tasks it submits are the running task's children, in its job.

It must not know how tasks run (``worker/executor.py``, ``worker/task_call.py``).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from taskgraph import _wire as w
from taskgraph._client import Client
from taskgraph._transport import BlockingConnection
from taskgraph.exceptions import ObjectLostError, TaskCancelledError


class ExecutorClient(Client):
    """A task's process's client: see the module's docstring. Its reader is the
    executor's (``Executor.read_loop``), which hands it what is not the executor's."""

    def __init__(
        self, conn: BlockingConnection, client_id: bytes, welcome: w.Welcome, *, token: bytes
    ) -> None:
        super().__init__(conn, client_id, welcome, token=token, start_reader=False)
        self.inbox = Inbox(self)
        # The task whose CPUs a blocking get() lends out (a leased task's lease),
        # while a plain task runs; and how many of its threads wait in get().
        self.current_task: bytes | None = None
        self._blocked_waits = 0
        self._deferring = False  # the arguments' refs go to _borrowed, not acquired
        self._fetches: dict[int, concurrent.futures.Future[w.Fetched]] = {}
        self._fetch_ids = itertools.count(1)
        self.fetch_waits = threading.local()  # .seconds: this thread's task waited on copies

    # -- the running task --------------------------------------------------

    def task_began(self, spec: w.TaskSpec, lease_id: bytes | None) -> None:
        """A task or actor call starts: what it submits belongs to its job. Only plain
        tasks hold CPUs that a blocking get() can lend out (a leased task's are the
        lease's), and only their submissions are their children."""
        self.job = spec.job or spec.task_id[:8]  # (job_of, inlined: every task)
        if not spec.actor_id:
            self.current_task = lease_id or spec.task_id
            self.parent_task = spec.task_id

    def task_left(self) -> None:
        """The task's own code returned (its threads may still wait: task_ended)."""
        self.current_task = self.parent_task = None

    def task_ended(self) -> None:
        """The task is over (its waits too), before its report goes."""
        with self._lock:
            self._blocked_waits = 0
        self.keep_borrowed()

    # -- refs its arguments made -------------------------------------------

    def incref(self, object_id: bytes, acquire: bool) -> None:
        with self._lock:
            count = self._counts.get(object_id, 0)
            self._counts[object_id] = count + 1
            if count == 0 and acquire:
                if self._deferring:
                    self._borrowed.add(object_id)
                else:
                    self._queue(w.AcquireRefs([object_id]))

    def borrow_arguments(self, load: Callable[[], Any]) -> Any:
        """Run ``load`` (a task's arguments unpickled) with its refs' acquires held
        back: the task holds them at the scheduler while it runs, so we tell it
        only of those that outlive the task (keep_borrowed), not of every one."""
        with self._lock:
            self._deferring = True
        try:
            return load()
        finally:
            with self._lock:
                self._deferring = False

    def keep_borrowed(self) -> None:
        """The task is over: acquire the refs from its arguments that are still alive here.

        Queued ahead of the task's report, so the scheduler counts us before it
        lets go of what the task held.
        """
        with self._lock:
            if not self._borrowed:
                return
            self._drain_released()
            alive = [oid for oid in self._borrowed if oid in self._counts]
            self._borrowed.clear()
            if alive:
                self._queue(w.AcquireRefs(alive), wake=False)

    # -- waiting in get() ----------------------------------------------------

    def wait_begins(self) -> bool:
        task = self.current_task
        if task is None:
            return False
        # Several threads of a task may wait at once: the task is blocked from the
        # first wait to the end of the last.
        with self._lock:
            self._blocked_waits += 1
            first = self._blocked_waits == 1
            if first:
                self._queue(w.TaskBlocked(task), wake=False)
        if first:
            self.inbox.block()
        return True

    def wait_ended(self) -> None:
        with self._lock:
            self._blocked_waits = max(0, self._blocked_waits - 1)
            last = self._blocked_waits == 0
        if last:
            self.inbox.unblock()
            task = self.current_task
            if task is not None:
                self.send_soon(w.TaskUnblocked(task))

    # -- copies of objects on other hosts ------------------------------------

    def _copy_here(self, object_id: bytes, location: w.Location) -> w.Location:
        """Ask our worker daemon for a copy in its store (``Fetch``); wait for it."""
        waiting: concurrent.futures.Future[w.Fetched] = concurrent.futures.Future()
        request_id = next(self._fetch_ids)
        self._fetches[request_id] = waiting
        began = time.perf_counter()
        self.send_now(w.Fetch(request_id, object_id, location))
        reply = waiting.result()
        self.fetch_waits.seconds = getattr(self.fetch_waits, "seconds", 0.0) + (
            time.perf_counter() - began
        )
        if reply.location is None:
            raise ObjectLostError(object_id.hex(), f"it could not be fetched: {reply.error}")
        return reply.location

    def fetched(self, msg: w.Fetched) -> None:
        """Our daemon's answer to a ``Fetch`` (the executor's reader thread)."""
        waiting = self._fetches.pop(msg.request_id, None)
        if waiting is not None:
            waiting.set_result(msg)


def cancelled_result(name: str, task_id: bytes) -> w.TaskResult:
    """The report of a task or call cancelled before it started."""
    err = TaskCancelledError(name, task_id.hex())
    return w.TaskResult(task_id, error=pickle.dumps(err), failure="cancelled")


class Inbox:
    """The tasks handed to this process, in order, and what the running one is doing.

    The reader thread puts, the main thread gets (a C queue between them: a
    task crosses threads for about a microsecond). The plain tasks waiting
    here go back to the daemon (``Returned``: it queues them for other
    executors) when the running task blocks in get(), so that none waits
    behind a task that may be waiting for it; so do those that arrive until
    it goes on. A task handed back or cancelled stays in the queue but is skipped:
    only the ids in ``_waiting`` are still ours to run. Messages are queued
    under the lock, so that a ``Returned`` always goes before the
    ``TaskUnblocked`` after it.
    """

    def __init__(self, client: ExecutorClient) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[w.Assignment | None] = queue.SimpleQueue()
        self._waiting: dict[bytes, str] = {}  # plain tasks put and not yet taken -> name
        self.current: bytes | None = None  # the task the main thread runs
        self.cancelling: bytes | None = None  # the task the next SIGINT is for
        self.blocked = False  # the running task waits in get()
        self._cancelled_calls: set[bytes] = set()  # actor calls cancelled before they arrived
        self._queued_calls: dict[bytes, str] = {}  # actor calls put and not yet taken -> name
        # Reports an actor call cancelled before it started (the executor sets it).
        self.answer_cancelled: Callable[[str, bytes], None] = lambda name, task_id: None

    def put(self, a: w.Assignment | None) -> None:
        if a is not None:
            with self._lock:
                if a.spec.actor_id and a.spec.task_id in self._cancelled_calls:
                    self._cancelled_calls.discard(a.spec.task_id)
                    cancelled = True  # (its cancel came first: answered now)
                elif a.spec.actor_id:
                    cancelled = False
                    self._queued_calls[a.spec.task_id] = a.spec.name
                elif self.blocked:
                    self.client.send_soon(w.Returned([a.spec.task_id]))
                    return
                else:
                    self._waiting[a.spec.task_id] = a.spec.name
            if a.spec.actor_id and cancelled:
                self.answer_cancelled(a.spec.name, a.spec.task_id)
                return
        self._queue.put(a)

    def done(self) -> None:
        """The main thread finished its task: whatever it waited on is over too."""
        with self._lock:
            self.current, self.blocked = None, False

    def get(self) -> w.Assignment | None:
        while True:
            a = self._queue.get()
            if a is None:
                self.current = None
                return a
            with self._lock:
                taken = self._queued_calls if a.spec.actor_id else self._waiting
                if taken.pop(a.spec.task_id, None) is None:
                    continue  # cancelled (or, a task, handed back) while it waited
                self.current = a.spec.task_id
                return a

    def block(self) -> None:
        """The running task waits in get(): hand back what would wait behind it."""
        with self._lock:
            self.blocked = True
            self._hand_back()

    def unblock(self) -> None:
        with self._lock:
            self.blocked = False

    def _hand_back(self) -> None:
        if self._waiting:
            back = list(self._waiting)
            self._waiting.clear()
            self.client.send_soon(w.Returned(back))

    def cancel_call(self, task_id: bytes) -> str | None:
        """An actor call is cancelled: dropped if it has not started (a call that
        runs goes on: an actor's state may not survive an interrupted method).
        Returns its name if it waited here: the caller answers it now, not when
        the calls before it are done; one that has not come yet is answered as
        it comes (``put``)."""
        with self._lock:
            name = self._queued_calls.pop(task_id, None)
            if name is None and self.current != task_id:
                self._cancelled_calls.add(task_id)
            return name

    def cancel(self, task_id: bytes, force: bool) -> bool:
        """Drop the task if it waits here, interrupt it if it runs; whether it runs."""
        with self._lock:
            name = self._waiting.pop(task_id, None)
            if name is not None:
                self.client.send_soon(w.Executed(cancelled_result(name, task_id)))
            elif self.current == task_id:
                self.cancelling = task_id
                os.kill(os.getpid(), signal.SIGKILL if force else signal.SIGINT)
                return True
            return False
