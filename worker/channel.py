"""Channels, the executor's side (see ``taskgraph/_channels.py`` for the client's).

This process opens a channel to a client on its host when a task asks it to
(``TaskSpec.channel_to``: the client's listening address). It connects, says
``ChannelReady``, and a thread reads the tasks the client sends::

    client ◀──connect, ChannelReady── this executor
    client ──ChannelTask──▶ reader thread ──▶ main thread runs it
    client ◀──DirectResult─────────────────── (after its report, Executed, to the daemon)

The client records each task with the scheduler as it sends it, and this
process reports each one on its ordered stream to its daemon, like any task
(``Executor.report`` says which goes first): the scheduler knows them all.
Two policies:

- a **lease** (``Lease``): a task that holds its resources here and, instead
  of a function of its own, runs the client's tasks one at a time on the main
  thread until the client closes its side. After ``TASKGRAPH_LEASE_IDLE`` with
  nothing to run, or when the scheduler wants the resources back (a task
  waits for them: ``CancelTask`` naming the lease), it says ``LeaseEnding``;
  the client closes its side, and the tasks it sent before that still run. A
  ``CancelTask`` naming a leased task drops it if not started, or interrupts
  it (SIGINT, or SIGKILL with force: the lease dies with it, and the
  scheduler fails or retries what was on it).
- a **caller** of this process's actor (``Caller``; only actors that cannot
  restart): the channel is asked for by an actor call through the scheduler
  (an offer); its calls join the actor's queue in the order they came. When
  the caller's side closes, the scheduler hears which of its calls arrived
  (``CallerLeft``): those it recorded and never sent are not left running.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import queue
import socket
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from taskgraph import _wire as w
from taskgraph._ids import client_of
from taskgraph._object_ref import ObjectRef
from taskgraph._transport import connect_blocking
from taskgraph.exceptions import ObjectLostError, TaskgraphError
from taskgraph.settings import settings

from .executor_client import cancelled_result

if TYPE_CHECKING:
    from .executor import Executor

UNREAD_LIMIT = 64 << 20  # bytes of answers a client may leave unread before its channel closes
ENDING_GRACE = 2.0  # seconds a lease that said LeaseEnding waits for its client to let go


class Channel:
    """A connection this process opened to a client, and a thread reading its tasks."""

    def __init__(self, executor: Executor, channel_id: bytes, address: str) -> None:
        self.executor = executor
        self.channel_id = channel_id
        client = executor.client
        hello = w.Hello("executor", b"", client.client_id, pid=os.getpid())
        self.conn, _ = connect_blocking(address, client.token, hello, w.CLIENT_TO_EXECUTOR)
        self.conn.send([w.ChannelReady(channel_id)])
        self._write_lock = threading.Lock()
        self._unsent: bytearray | None = None  # not taken by the socket yet (see send)
        # Code as it arrives (the first task of a function brings it), so that
        # a cancelled task does not take it away from those after it.
        self.code: dict[bytes, bytes] = {}
        self._reader = threading.Thread(target=self._read, name="taskgraph-channel", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                for msg in self.conn.recv():
                    if not isinstance(msg, w.ChannelTask):
                        return  # a client sends nothing else on a channel
                    if msg.function:
                        self.code[msg.spec.function_id] = msg.function
                    self.arrived(msg.spec)
        except (OSError, ConnectionError, TaskgraphError):
            pass  # the client closed its side: what it sent still runs
        finally:
            self.ended()

    def arrived(self, spec: w.TaskSpec) -> None:
        raise NotImplementedError

    def ended(self) -> None:
        """The client's side closed (or broke): nothing more will come."""

    def answer(self, result: w.TaskResult) -> None:
        self.send([direct_answer(result)])

    def send(self, msgs: list[w.Msg]) -> None:
        """Write to the client without waiting (the main thread calls this: a client
        that stopped reading must not stop the actor, or the lease, for others).
        What the socket does not take now, a thread writes when it can; a client
        that leaves over ``UNREAD_LIMIT`` bytes unread loses the channel (the
        scheduler has the reports: it asks there). A client that is gone is no
        matter either: the scheduler has the reports."""
        frame = w.encode(msgs)
        with self._write_lock:
            if self._unsent is not None:  # a thread writes already: after it
                self._unsent += frame
                if len(self._unsent) > UNREAD_LIMIT:
                    self._unsent.clear()
                    with contextlib.suppress(OSError):
                        self.conn.sock.shutdown(socket.SHUT_RDWR)
                return
            try:
                sent = self.conn.sock.send(frame, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:
                return
            if sent == len(frame):
                return
            self._unsent = bytearray(memoryview(frame)[sent:])
        threading.Thread(
            target=self._write_rest, name="taskgraph-channel-write", daemon=True
        ).start()

    def _write_rest(self) -> None:
        while True:
            with self._write_lock:
                assert self._unsent is not None
                if not self._unsent:
                    self._unsent = None
                    return
                chunk, self._unsent = bytes(self._unsent), bytearray()
            try:
                self.conn.sock.sendall(chunk)
            except OSError:
                with self._write_lock:
                    self._unsent = None
                return

    def close(self) -> None:
        self.conn.close()
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=5)


class Lease(Channel):
    """A lease being served: the tasks its client sent, run by the main thread."""

    def __init__(self, executor: Executor, lease: w.Assignment) -> None:
        self.lease_id = lease.spec.task_id
        self.gpu_ids = list(lease.gpu_ids)
        self.running: bytes | None = None  # the leased task the main thread runs
        self._queue: collections.deque[w.TaskSpec] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False  # the client closed its side, or we stop
        self._revoked = False  # the scheduler wants our resources back
        self._cancelled: set[bytes] = set()  # cancelled before they arrived
        self._idle = settings().lease_idle
        super().__init__(executor, self.lease_id, lease.spec.channel_to)

    def next(self) -> w.Assignment | None:
        """The next task to run (the main thread); None when the lease is over.

        Idle for ``TASKGRAPH_LEASE_IDLE`` (or revoked), it says ``LeaseEnding``
        and waits for the client to close its side, at most ``ENDING_GRACE``
        seconds: a client that stopped must not keep the lease's resources.
        """
        said_ending_at: float | None = None
        while True:
            with self._cond:
                if self._queue:
                    spec = self._queue.popleft()
                    self.running = spec.task_id
                    break
                if self._closed:
                    return None
                if said_ending_at is not None:
                    left = ENDING_GRACE - (time.monotonic() - said_ending_at)
                    if left <= 0:
                        self._closed = True  # it did not let go: the lease ends anyway
                        return None
                    self._cond.wait(left)
                    continue
                if not self._revoked and (
                    self._cond.wait(self._idle) or self._queue or self._closed
                ):
                    continue
                revoked = self._revoked
            self.send([w.LeaseEnding(revoked=revoked)])  # (outside the lock: cancel needs it)
            said_ending_at = time.monotonic()
        code = self.code.get(spec.function_id, b"")  # (sent with an earlier task)
        return w.Assignment(spec, [], code, self.gpu_ids)

    def finish(self, result: w.TaskResult) -> None:
        """Report a leased task (Executed, on our one stream to the daemon) and
        answer its client (see ``Executor.report`` for which goes first)."""
        result.channel = self.lease_id
        with self._cond:
            if self.running == result.task_id:
                self.running = None
        self.executor.report(result, partial(self.answer, result))

    def arrived(self, spec: w.TaskSpec) -> None:
        with self._cond:
            if spec.task_id in self._cancelled:  # (the cancel came first)
                self._cancelled.discard(spec.task_id)
            else:
                self._queue.append(spec)
                self._cond.notify()
                return
        self._cancel_queued(spec)

    def cancel(self, task_id: bytes, force: bool) -> None:
        """The scheduler cancels a task sent down this lease: dropped if not started,
        interrupted if running, remembered if it has not arrived yet."""
        with self._cond:
            queued = next((s for s in self._queue if s.task_id == task_id), None)
            if queued is not None:
                self._queue.remove(queued)
            elif self.running == task_id:
                self.executor.interrupt(task_id, force)
                return
            else:
                self._cancelled.add(task_id)
                return
        self._cancel_queued(queued)

    def _cancel_queued(self, spec: w.TaskSpec) -> None:
        self.finish(cancelled_result(spec.name, spec.task_id))

    def revoke(self) -> None:
        """End the lease as soon as nothing runs (the scheduler wants it back)."""
        with self._cond:
            self._revoked = True
            self._cond.notify()

    def ended(self) -> None:
        self.stop()

    def stop(self) -> None:
        """No more tasks: ``next`` returns None once those queued have run."""
        with self._cond:
            self._closed = True
            self._cond.notify()


class Callers:
    """An actor's channels to its direct callers, and which caller each call came from."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.by_address: dict[str, Caller] = {}
        self.replies: dict[bytes, Caller] = {}  # a call's task id -> its caller, until reported
        self.lock = threading.Lock()

    def offered(self, spec: w.TaskSpec) -> None:
        """A call through the scheduler asks us to open a channel to its caller (before
        it runs: the caller counts an offer whose call ran with no channel as failed)."""
        address = spec.channel_to
        if address in self.by_address:
            return  # open already (a second offer crossed the first)
        try:
            caller = Caller(self, address, client_of(spec.task_id))
        except (OSError, ConnectionError, TaskgraphError):
            return  # the caller is gone, or refuses: its calls go through the scheduler
        with self.lock:
            if not caller.over:
                self.by_address[address] = caller

    def caller_of(self, task_id: bytes) -> Caller | None:
        with self.lock:
            return self.replies.get(task_id)

    def reported(self, task_id: bytes) -> None:
        """A call's report is on its way (queued or in the report pipe): a caller
        leaving from now on need not count it in flight. Not before: a
        ``CallerLeft`` sent ahead of the report would have the call failed."""
        with self.lock:
            self.replies.pop(task_id, None)


class Caller(Channel):
    """One direct caller of this process's actor.

    The reader thread keeps reading (a caller blocked in a send could be what an
    argument waits for). A call with ref arguments, and every call after it
    while it waits, goes to a second thread that fetches their arguments and
    hands them on in order; other calls join the actor's queue from here at once.
    """

    def __init__(self, callers: Callers, address: str, client_id: bytes) -> None:
        self.callers = callers
        self.address = address
        self.client_id = client_id
        self._calls: queue.SimpleQueue[w.TaskSpec | None] = queue.SimpleQueue()
        self._waiting = 0  # calls with the second thread (it only ever counts down)
        self._taker: threading.Thread | None = None
        self.over = False  # its side closed
        executor = callers.executor
        assert executor.actor_id
        super().__init__(executor, executor.actor_id, address)

    def arrived(self, spec: w.TaskSpec) -> None:
        callers = self.callers
        with callers.lock:
            callers.replies[spec.task_id] = self
            direct = not spec.deps and not self._waiting
            if not direct:
                self._waiting += 1
        if direct:
            self._take(spec)
            return
        if self._taker is None:
            self._taker = threading.Thread(
                target=self._take_all, name="taskgraph-direct-take", daemon=True
            )
            self._taker.start()
        self._calls.put(spec)

    def _take_all(self) -> None:
        while (spec := self._calls.get()) is not None:
            self._take(spec)
            with self.callers.lock:
                self._waiting -= 1

    def _take(self, spec: w.TaskSpec) -> None:
        executor = self.executor
        assignment = w.Assignment(spec, [])
        if spec.deps:
            # Fetched here, on this caller's thread: its later calls wait (its
            # order), the actor's main thread does not (another caller's call,
            # or one through the scheduler, may be what these wait for).
            resolved = resolve_inputs(executor, assignment)
            if isinstance(resolved, w.TaskResult):
                executor.report(resolved)
                return
            assignment = resolved
        executor.tasks.put(assignment)

    def ended(self) -> None:
        """Tell the scheduler which of this caller's calls we got and have not
        answered: those it recorded and never sent (held when it left) are
        failed there, not left running. After the reports of the calls answered
        (``Executor.report`` queues a report before it answers)."""
        self._calls.put(None)
        callers = self.callers
        with callers.lock:
            self.over = True
            if callers.by_address.get(self.address) is self:
                del callers.by_address[self.address]
            in_flight = [task_id for task_id, c in callers.replies.items() if c is self]
        self.conn.close()
        executor = self.executor
        executor.client.send_soon(w.CallerLeft(executor.actor_id, self.client_id, in_flight))


def direct_answer(result: w.TaskResult) -> w.DirectResult:
    """What a channel task's caller gets straight from its executor: the values,
    unless they hold refs (the caller then asks the scheduler, which holds those)
    or an argument could not be read (the scheduler runs it again once the
    argument is made again)."""
    if result.failure == "input" or any(r.contains for r in result.returns):
        return w.DirectResult(w.TaskResult(result.task_id), via_scheduler=True)
    return w.DirectResult(result)


def resolve_inputs(executor: Executor, a: w.Assignment) -> w.Assignment | w.TaskResult:
    """A direct call's ref arguments, fetched here (the scheduler did not wait for them).

    Returns the assignment with its inputs, or the failed result when one of
    them is an error (which the call then fails with, as through the scheduler).
    """
    client = executor.client
    holding = [ObjectRef(oid, client, borrowed=True) for oid in a.spec.deps]
    client.wait_values(a.spec.deps, len(a.spec.deps), None)
    inputs: list[Any] = [client.peek(oid) for oid in a.spec.deps]
    del holding
    for oid, value in zip(a.spec.deps, inputs, strict=True):
        if value is None:
            lost = ObjectLostError(oid.hex(), "it was freed before the actor could read it")
            return w.TaskResult(a.spec.task_id, error=pickle.dumps(lost), failure="task")
        if value.error is not None:
            return w.TaskResult(a.spec.task_id, error=value.error, failure="task")
    return w.Assignment(a.spec, inputs)
