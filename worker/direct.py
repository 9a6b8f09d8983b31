"""Direct actor calls, the actor's side: callers on this host skip the scheduler's dispatch.

::

    caller ──DirectCall(spec)──▶ this process's call socket ──▶ the executor's queue
    caller ◀──DirectResult────── (the call is reported too: Executed, to the daemon)

A call that went through the scheduler crosses six process boundaries (caller,
scheduler, daemon, actor and back); a direct call crosses two. The caller
records the call with the scheduler in its ordinary batches, and this process
reports it like any call, on its one ordered stream, before it answers: the
scheduler knows every call, its returns and what they hold (see
``Executor.report`` for which goes first). Only actors that cannot restart
take direct calls.

Each caller gets a connection and a thread that reads it; the executor's
main thread runs the calls in arrival order with the ones the daemon hands
over, and answers on the connection the call came from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import socket
import threading
from typing import TYPE_CHECKING, Any

from taskgraph import _wire as w
from taskgraph._object_ref import ObjectRef
from taskgraph._transport import BlockingConnection, accept_blocking
from taskgraph.exceptions import AuthenticationError, ObjectLostError, TaskgraphError

if TYPE_CHECKING:
    from taskgraph.worker.executor import Executor

log = logging.getLogger("taskgraph.worker")


class DirectServer:
    def __init__(self, executor: Executor, token: bytes, folder: str) -> None:
        self.executor = executor
        self.token = token
        self.path = os.path.join(folder, f"actor-{os.getpid()}.sock")
        self.replies: dict[bytes, BlockingConnection] = {}  # call's task id -> its caller
        self._lock = threading.Lock()

    def start(self) -> str:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(self.path):  # left by an earlier process with our pid
            os.unlink(self.path)
        listener.bind(self.path)
        os.chmod(self.path, 0o600)
        listener.listen(64)
        threading.Thread(
            target=self._accept, args=(listener,), name="taskgraph-direct-accept", daemon=True
        ).start()
        return f"unix://{self.path}"

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(
                target=self._serve, args=(sock,), name="taskgraph-direct-call", daemon=True
            ).start()

    def _serve(self, sock: socket.socket) -> None:
        conn = BlockingConnection(sock)
        welcome = w.Welcome(b"", self.executor.worker_id)
        try:
            hello = accept_blocking(conn, self.token, welcome)
        except AuthenticationError as exc:
            log.warning("refused a direct caller: %s", exc)
            return
        # This thread keeps reading (a caller blocked in a send could be what an
        # argument waits for). A call with ref arguments, and every call after
        # it while it waits, goes to a second thread that fetches and hands
        # them on in order; other calls go to the actor from here at once.
        calls: queue.SimpleQueue[w.TaskSpec | None] = queue.SimpleQueue()
        waiting = [0]  # calls with the second thread (it only ever counts down)
        taker: threading.Thread | None = None
        try:
            while True:
                for msg in conn.recv():
                    if not isinstance(msg, w.DirectCall):
                        log.warning("a direct caller sent %s; closing", type(msg).__name__)
                        return
                    with self._lock:
                        self.replies[msg.spec.task_id] = conn
                        direct = not msg.spec.deps and not waiting[0]
                        if not direct:
                            waiting[0] += 1
                    if direct:
                        self._take(msg.spec)
                        continue
                    if taker is None:
                        taker = threading.Thread(
                            target=self._take_all,
                            args=(calls, waiting),
                            name="taskgraph-direct-take",
                            daemon=True,
                        )
                        taker.start()
                    calls.put(msg.spec)
        except (OSError, ConnectionError, TaskgraphError):
            pass  # the caller is gone; calls it sent still run and are reported
        finally:
            calls.put(None)
            conn.close()
            self._caller_left(hello.client_id, conn)

    def _caller_left(self, client_id: bytes, conn: BlockingConnection) -> None:
        """Tell the scheduler which of this caller's calls we got and have not
        answered: those it recorded and never sent (held when it left) are
        failed there, not left running. After the reports of the calls answered
        (``Executor.report`` queues a report before it answers)."""
        with self._lock:
            in_flight = [task_id for task_id, c in self.replies.items() if c is conn]
        actor_id = self.executor.actor_id
        assert actor_id is not None
        self.executor.client.send_soon(w.CallerLeft(actor_id, client_id, in_flight))

    def _take_all(self, calls: queue.SimpleQueue[w.TaskSpec | None], waiting: list[int]) -> None:
        while (spec := calls.get()) is not None:
            self._take(spec)
            with self._lock:
                waiting[0] -= 1

    def _take(self, spec: w.TaskSpec) -> None:
        assignment = w.Assignment(spec, [])
        if spec.deps:
            # Fetched here, on this caller's thread: its later calls wait (its
            # order), the actor's main thread does not (another caller's call,
            # or one through the scheduler, may be what these wait for).
            resolved = resolve_inputs(self.executor, assignment)
            if isinstance(resolved, w.TaskResult):
                self.executor.report(resolved)
                return
            assignment = resolved
        self.executor.tasks.put(assignment)

    def is_direct(self, task_id: bytes) -> bool:
        with self._lock:
            return task_id in self.replies

    def reply(self, result: w.TaskResult) -> None:
        """Answer a direct call (``Executor.report`` reports it)."""
        with self._lock:
            conn = self.replies.pop(result.task_id, None)
        if conn is None:
            return
        with contextlib.suppress(OSError):  # the caller left: the scheduler has the result
            conn.send([direct_answer(result)])


def direct_answer(result: w.TaskResult) -> w.DirectResult:
    """What a channel task's caller gets straight from its executor: the values,
    unless they hold refs (the caller then asks the scheduler, which holds those)."""
    if any(r.contains for r in result.returns):
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
