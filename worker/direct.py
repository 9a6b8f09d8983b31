"""Direct actor calls, the actor's side: callers on this host skip the scheduler.

::

    caller ──DirectCall(spec)──▶ this process's call socket ──▶ the executor's queue
    caller ◀──DirectResult────── (the call ran like any other)

A call that went through the scheduler crosses six process boundaries
(caller, scheduler, daemon, actor and back); a direct call crosses two. The
caller registers the returns with the scheduler itself (as a ``put``), so
refs to them work everywhere. Only actors that cannot restart take direct
calls: a restart would need the scheduler's record of calls in flight.

Each caller gets a connection and a thread that reads it; the executor's
main thread runs the calls in arrival order with the ones the daemon hands
over, and answers on the connection the call came from. If the returns hold
refs, the actor keeps those alive until the caller acknowledges that the
scheduler has the returns (``DirectAck``), so the inner objects never go
unheld in between.
"""

from __future__ import annotations

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
    from taskgraph._client import Client
    from taskgraph.worker.executor import Executor

log = logging.getLogger("taskgraph.worker")


class DirectServer:
    def __init__(self, executor: Executor, token: bytes, folder: str) -> None:
        self.executor = executor
        self.token = token
        self.path = os.path.join(folder, f"actor-{os.getpid()}.sock")
        self.replies: dict[bytes, BlockingConnection] = {}  # call's task id -> its caller
        # refs in a direct call's returns, held until its caller acks
        self._kept: dict[bytes, tuple[BlockingConnection, list[ObjectRef]]] = {}
        self._sync: set[bytes] = set()  # calls whose answer waits for a scheduler round trip
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
            accept_blocking(conn, self.token, welcome)
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
                    if isinstance(msg, w.DirectCall):
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
                    elif isinstance(msg, w.DirectAck):
                        with self._lock:
                            self._kept.pop(msg.task_id, None)
                    else:
                        log.warning("a direct caller sent %s; closing", type(msg).__name__)
                        return
        except (OSError, ConnectionError, TaskgraphError):
            pass  # the caller is gone; calls it sent still run, their answers go nowhere
        finally:
            calls.put(None)
            conn.close()
            with self._lock:  # nobody will ack these any more
                for task_id in [t for t, (c, _) in self._kept.items() if c is conn]:
                    del self._kept[task_id]

    def _take_all(self, calls: queue.SimpleQueue[w.TaskSpec | None], waiting: list[int]) -> None:
        while (spec := calls.get()) is not None:
            self._take(spec)
            with self._lock:
                waiting[0] -= 1

    def _take(self, spec: w.TaskSpec) -> None:
        if len(spec.nested) > 1:  # beyond the actor's anchor: see reply()
            with self._lock:
                self._sync.add(spec.task_id)
        assignment = w.Assignment(spec, [])
        if spec.deps:
            # Fetched here, on this caller's thread: its later calls wait (its
            # order), the actor's main thread does not (another caller's call,
            # or one through the scheduler, may be what these wait for).
            resolved = resolve_inputs(self.executor, assignment)
            if isinstance(resolved, w.TaskResult):
                self.reply(resolved)
                return
            assignment = resolved
        self.executor.tasks.put(assignment)

    def is_direct(self, task_id: bytes) -> bool:
        with self._lock:
            return task_id in self.replies

    def keep(self, task_id: bytes, refs: list[ObjectRef]) -> None:
        """Hold the refs inside a direct call's returns until its caller acks."""
        with self._lock:
            conn = self.replies.get(task_id)
            if conn is not None:
                self._kept[task_id] = (conn, refs)

    def reply(self, result: w.TaskResult) -> bool:
        """Answer a direct call; False if the call came through the daemon."""
        with self._lock:
            conn = self.replies.pop(result.task_id, None)
            sync = result.task_id in self._sync
            self._sync.discard(result.task_id)
        if conn is None:
            return False
        holds = register_stored(self.executor.client, result)
        with self._lock:
            if holds:
                _, inner = self._kept.get(result.task_id, (conn, []))
                self._kept[result.task_id] = (conn, inner + holds)
            needs_ack = result.task_id in self._kept
        if needs_ack or sync:
            # Refs in the returns may be to objects this call just made; refs in
            # the arguments may have been taken by the actor (AcquireRefs). The
            # scheduler must have what we sent about them before the caller,
            # answered, records the returns or lets go of the arguments: a round
            # trip after what we sent makes sure.
            try:
                self.executor.client.query("ping")
            except (OSError, ConnectionError, TimeoutError):
                pass
        try:
            conn.send([w.DirectResult(result, needs_ack, registered=bool(holds))])
        except OSError:  # the caller left: what we stored is nobody's, and freed
            with self._lock:
                self._kept.pop(result.task_id, None)
        return True


def register_stored(client: Client, result: w.TaskResult) -> list[ObjectRef]:
    """Register with the scheduler the returns a direct answer leaves in our store.

    Left to the caller, they would stay in the store for good if it died with
    the answer unread. Returns our holds on them: kept until the caller acks,
    which it does once it has acquired its own (``DirectResult.registered``).
    """
    holds = []
    for ret in result.returns:
        if ret.location is not None:
            client.send_soon(
                w.PutObject(ret.object_id, location=ret.location, contains=list(ret.contains))
            )
            holds.append(ObjectRef(ret.object_id, client))
    return holds


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
