"""Task leases, the client's side: tasks run one after another skip the scheduler.

A driver that submits a task, waits for it, submits the next (``get(f.remote())``
in a loop) pays for four process crossings per task even with direct results
(client -> scheduler -> worker daemon -> executor -> client). After it has done
that ``SYNC_STREAK`` times with tasks of one shape (their resources), the
client asks for a *lease*: an ordinary task, placed by the scheduler on the
worker of the client's host with that shape's resources, whose executor
connects back to the client (on its delivery socket, with the cluster token)
and runs tasks sent straight to it::

    client ──LeasedTask(spec)──▶ leased executor      (two crossings a task)
    client ◀──DirectResult─────┘

The task that asked waits up to ``GRANT_WAIT`` for the lease and goes on it
(had it gone the usual way, it could wait for the very CPU the lease took).
While the lease runs it holds its resources like any task; if a leased task
blocks in get(), the lease lends its CPU out as a blocked task does. The
executor ends the lease after ``TASKGRAPH_LEASE_IDLE`` seconds without a task,
or at once when a task elsewhere waits for its resources (the worker daemon
or the scheduler cancels the lease, softly): it says ``LeaseEnding``, the
client closes its side, and what it sent before still runs. After such a
revoke the client does not ask again for ``QUIET_AFTER_REVOKE``. The client
ends a lease itself when a task comes while the leased one still runs: the
caller is no longer waiting on each task, and tasks sent the usual way spread
over every CPU.

Only plain tasks go this way: no ref arguments, a fixed number of returns,
no GPUs, the default scheduling strategy, no retry on exceptions. Their
returns are registered with the scheduler as a direct actor call's are
(``Client.direct_answered``, ``Client.settle``; stored ones by the
executor). If the leased
executor dies, a task in flight is sent again the usual way when it has
retries left (and no ref to its returns has left this client), else it fails
with ``WorkerCrashedError``; a task cancelled with ``force=True`` fails with
``TaskCancelledError``. The scheduler does not see leased tasks one by one:
it sees the lease.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import msgspec

from taskgraph import _wire as w
from taskgraph._ids import return_ids
from taskgraph._object_ref import ObjectRef
from taskgraph._transport import BlockingConnection
from taskgraph.exceptions import TaskCancelledError, WorkerCrashedError

if TYPE_CHECKING:
    from taskgraph._client import Client

ENABLED = os.environ.get("TASKGRAPH_TASK_LEASES", "1") != "0"
SYNC_STREAK = 2  # tasks of a shape awaited one by one before a lease is asked for
ASK_AGAIN = 10.0  # seconds: a lease asked for and not come by then is asked for again
GRANT_WAIT = 0.005  # seconds a task waits for the lease just asked for, before going the usual way
QUIET_AFTER_REVOKE = 1.0  # seconds without asking, once the scheduler took a lease back
MAX_ROUTES = 64  # shapes remembered; beyond, those with no lease are forgotten
LEASE_FUNCTION = b"taskgraph.lease"  # a lease's "function" id (it runs none of its own)

Shape = tuple[tuple[str, float], ...]


def lease_shape(spec: w.TaskSpec) -> Shape | None:
    """The resources a leased executor must hold for ``spec``; None if it may not be leased."""
    if (
        spec.deps
        or spec.nested
        or spec.generator
        or spec.actor_id
        or spec.retry_exceptions
        or spec.strategy != "DEFAULT"
        or spec.num_returns < 1
        or spec.resources.get("GPU", 0.0) > 0
    ):
        return None
    return tuple(sorted(spec.resources.items()))


class _Route:
    """Tasks of one shape: their lease, or how close they are to asking for one."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.lock = threading.Lock()  # one task routed at a time
        self.granted = threading.Condition(self.lock)
        self.channel: LeaseChannel | None = None
        self.asked = b""  # the lease asked for and not come yet
        self.asked_at = 0.0
        self.asked_ref: ObjectRef | None = None  # its return (an error if its executor died)
        self.quiet_until = 0.0  # no asking before this (monotonic seconds)
        self.last = b""  # first return of the last task sent the usual way
        self.answered = False  # a get() returned it before the next task came
        self.streak = 0


class LeaseChannel:
    """One lease: the connection its executor opened, and the tasks in flight on it.

    The client's delivery thread reads the connection (``_deliveries.py``)
    and calls ``answered``, ``ending`` and ``lost``; submitting threads send.
    """

    def __init__(
        self, leases: Leases, route: _Route, lease_id: bytes, ref: ObjectRef, sock: socket.socket
    ) -> None:
        self.leases = leases
        self.route = route
        self.lease_id = lease_id
        self.ref = ref  # the lease's return: why it ended, once it has
        self.conn = BlockingConnection(sock)
        self.in_flight: dict[bytes, w.TaskSpec] = {}
        self.functions: set[bytes] = set()  # sent on this lease already
        self.forced: set[bytes] = set()  # tasks cancelled with force=True
        self.ending = False
        self.runs = 0  # tasks sent on it (tests and benchmarks look)
        self._acks = 0  # answers whose DirectAck is not sent yet
        self._shut = False  # our side is closed
        self._lock = threading.Lock()

    def idle(self) -> bool:
        return not self.ending and not self.in_flight

    def send(self, spec: w.TaskSpec) -> bool:
        """Send a task (route lock held); False if the lease is gone (send it the usual way)."""
        client = self.leases.client
        oids = return_ids(spec.task_id, spec.num_returns)
        fid = spec.function_id
        function = b"" if fid in self.functions else client.function_payload(fid)
        client.expect_direct(oids)  # before it can be answered
        with self._lock:
            self.in_flight[spec.task_id] = spec
        self.leases.by_task[spec.task_id] = self
        client.flush_if_pending()  # what the client said before goes first
        try:
            self.conn.send([w.LeasedTask(spec, function)])
        except OSError:
            with self._lock:
                self.in_flight.pop(spec.task_id, None)
            self.leases.by_task.pop(spec.task_id, None)
            client.unexpect_direct(oids)
            self.ending = True
            return False
        self.functions.add(fid)
        self.runs += 1
        return True

    def end(self) -> None:
        """Let the lease go: nothing more is sent; what was sent still runs."""
        self.ending = True
        self._shut_when_done()

    def _shut_when_done(self) -> None:
        """Close our side once the lease ends and every answer is in and acked.

        The executor's lease ends when it reads our end: before the acks, it
        would let go of what the answers' returns hold too early.
        """
        with self._lock:
            if self._shut or not self.ending or self.in_flight or self._acks:
                return
            self._shut = True
        with contextlib.suppress(OSError):
            self.conn.sock.shutdown(socket.SHUT_WR)

    def answered(self, result: w.TaskResult, needs_ack: bool, registered: bool) -> None:
        with self._lock:
            spec = self.in_flight.pop(result.task_id, None)
            self.forced.discard(result.task_id)
            if spec is not None and needs_ack:
                self._acks += 1
        if spec is None:
            return
        self.leases.by_task.pop(result.task_id, None)
        client = self.leases.client
        client.direct_result(return_ids(spec.task_id, spec.num_returns), result, registered)
        if not needs_ack:
            self._shut_when_done()
            return

        # The executor keeps what the returns hold (and the returns it stored)
        # alive until the scheduler has what we sent about them.
        def ack(_: object) -> None:
            with contextlib.suppress(OSError):
                self.conn.send([w.DirectAck(result.task_id)])
            with self._lock:
                self._acks -= 1
            self._shut_when_done()

        client.ask(w.Query(0, "ping"), ack)

    def ending_asked(self, revoked: bool) -> None:
        """The executor ends the lease (idle, or ``revoked`` by the scheduler): close our side."""
        route = self.route
        with route.lock:
            if route.channel is self:
                route.channel = None
                route.streak = 0  # the next lease waits for a new streak
            if revoked:  # others need the resources: do not ask again at once
                route.quiet_until = time.monotonic() + QUIET_AFTER_REVOKE
            self.end()

    def lost(self) -> None:
        """The connection closed: after the lease's end, or because the executor died."""
        route = self.route
        with route.lock:
            if route.channel is self:
                route.channel = None
            self.ending = True
        with self._lock:
            lost, self.in_flight = self.in_flight, {}
            forced, self.forced = self.forced, set()
        client = self.leases.client
        crashed = []
        for spec in lost.values():
            self.leases.by_task.pop(spec.task_id, None)
            oids = return_ids(spec.task_id, spec.num_returns)
            if spec.task_id in forced:
                cancelled = pickle.dumps(TaskCancelledError(spec.name, spec.task_id.hex()))
                client.direct_failed(oids, cancelled)
            elif spec.max_retries <= 0 or not client.resubmit(
                msgspec.structs.replace(spec, max_retries=spec.max_retries - 1), oids
            ):
                crashed.append(spec)
        self.conn.close()
        if crashed:
            # The scheduler hears how the executor died (its exit code) and
            # fails the lease's return with it: the tasks fail the same way.
            client.future(self.ref).add_done_callback(lambda f: _crashed(client, crashed, f))

    def cancel(self, task_id: bytes, force: bool) -> None:
        if force:
            with self._lock:
                self.forced.add(task_id)
        with contextlib.suppress(OSError):
            self.conn.send([w.CancelTask(task_id, force)])


def _crashed(client: Client, specs: list[w.TaskSpec], lease: Future[Any]) -> None:
    """Fail tasks that were in flight on a lease whose executor died."""
    why = lease.exception()
    reason, exit_code = "its leased executor went away", None
    if isinstance(why, WorkerCrashedError):
        reason, exit_code = why.reason, why.exit_code
    for spec in specs:
        oids = return_ids(spec.task_id, spec.num_returns)
        err = WorkerCrashedError(reason, task_name=spec.name, exit_code=exit_code)
        client.direct_failed(oids, pickle.dumps(err))


class Leases:
    """A driver's leases, one route per task shape."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.routes: dict[Shape, _Route] = {}
        self.asked: dict[bytes, _Route] = {}  # lease id -> the route that asked for it
        self.by_task: dict[bytes, LeaseChannel] = {}  # tasks in flight on a lease
        self.closed = False

    def submit(self, spec: w.TaskSpec) -> bool:
        """Send ``spec`` on a lease if one is idle; False: send it the usual way."""
        shape = lease_shape(spec)
        if shape is None:
            return False
        route = self.routes.get(shape)
        if route is None:
            if len(self.routes) >= MAX_ROUTES:  # many shapes (memory= per task, say)
                self.routes = {s: r for s, r in self.routes.items() if r.channel or r.asked}
            route = self.routes.setdefault(shape, _Route(shape))
        with route.lock:
            channel = route.channel
            if channel is None:
                route.streak = route.streak + 1 if route.answered else 0
                route.answered = False
                if route.streak >= SYNC_STREAK:
                    self._ask(route)
                if route.asked:
                    # Placed at once when a CPU is free: this task may go on it.
                    left = route.asked_at + GRANT_WAIT - time.monotonic()
                    if left > 0:
                        route.granted.wait(left)
                channel = route.channel
            if channel is not None:
                if channel.idle() and channel.send(spec):
                    return True
                # A task while the last one runs: its caller does not wait on
                # each, and the usual way spreads them over every CPU.
                route.channel = None
                channel.end()
                route.streak, route.answered = 0, False
            route.last = return_ids(spec.task_id, 1)[0]
        return False

    def got(self, oids: list[bytes]) -> None:
        """A get() returned these: a task awaited one by one counts toward a lease."""
        for route in list(self.routes.values()):  # (another thread may add one)
            if route.last and route.last in oids:
                route.answered = True

    def _ask(self, route: _Route) -> None:
        """Submit a lease for ``route`` (its lock held) unless one is on its way."""
        now = time.monotonic()
        if (
            self.closed
            or now < route.quiet_until
            or (route.asked and now - route.asked_at < ASK_AGAIN)
        ):
            return
        client = self.client
        worker = client.local_worker()
        if worker is None or client.deliveries is None:
            return
        if any(worker.resources.get(name, 0.0) < amount for name, amount in route.shape):
            return  # more than the worker here has: the usual way finds one
        lease_id = client.new_id() + b"\0\0\0\0"
        self.asked.pop(route.asked, None)
        route.asked, route.asked_at = lease_id, now
        route.asked_ref = ObjectRef(return_ids(lease_id, 1)[0], client)
        self.asked[lease_id] = route
        client.submit_later(
            w.TaskSpec(
                task_id=lease_id,
                function_id=LEASE_FUNCTION,
                name="lease",
                args=b"",
                deps=[],
                resources=dict(route.shape),
                strategy=f"node:{worker.worker_id}",
                lease=client.deliveries.address,
            )
        )
        client.flush()  # now: the task that asked waits for it

    def granted(self, lease_id: bytes, sock: socket.socket) -> LeaseChannel | None:
        """An executor serves lease ``lease_id`` on ``sock``; None: not wanted (close it)."""
        route = self.asked.pop(lease_id, None)
        if route is None or self.closed:
            return None
        with route.lock:
            if route.asked != lease_id or route.channel is not None:
                return None
            ref, route.asked, route.asked_ref = route.asked_ref, b"", None
            assert ref is not None
            channel = route.channel = LeaseChannel(self, route, lease_id, ref, sock)
            route.granted.notify_all()
            return channel

    def cancel(self, oids: list[bytes], force: bool) -> list[bytes]:
        """Cancel the tasks of ``oids`` that run on a lease; return the other ids."""
        others = []
        for oid in oids:
            task_id = oid[:12] + b"\0\0\0\0"
            channel = self.by_task.get(task_id)
            if channel is None:
                others.append(oid)
            else:
                channel.cancel(task_id, force)
        return others

    def close(self) -> None:
        self.closed = True
        for route in list(self.routes.values()):
            with route.lock:
                channel, route.channel = route.channel, None
            if channel is not None:
                channel.end()
