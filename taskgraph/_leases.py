"""Task leases, the client's side: tasks run one after another skip the scheduler.

A driver that submits a task, waits for it, submits the next (``get(f.remote())``
in a loop) pays for four process crossings per task even with direct results
(client -> scheduler -> worker daemon -> executor -> client). After it has done
that ``SYNC_STREAK`` times with tasks of one shape (their resources), the
client asks for a *lease*: an ordinary task, placed by the scheduler on the
worker of the client's host with that shape's resources, whose executor
opens a channel to the client (``_channels.py``: it connects to the client's
listener, with the cluster token) and runs tasks sent straight to it::

    client ──ChannelTask(spec)──▶ leased executor      (two crossings a task)
    client ◀──DirectResult──────┘

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
no GPUs, the default scheduling strategy, no retry on exceptions. The
scheduler sees every one: the client records each task it sends down a lease
in its ordinary batches (``Client.record_channel_task``; no placement), and
the executor reports it on its ordered stream to its daemon before it answers
here. So the scheduler's rules serve leased tasks as any: ``cancel`` reaches
them through the daemon, and if the leased executor dies, the tasks it never
reported are retried the usual way (or fail with ``WorkerCrashedError``).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

from taskgraph import _wire as w
from taskgraph._channels import Channel
from taskgraph._ids import return_ids, task_id
from taskgraph._routing import LeaseRoute

if TYPE_CHECKING:
    from taskgraph._client import Client

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
        or spec.max_calls
        or spec.strategy != "DEFAULT"
        or spec.num_returns < 1
        or spec.resources.get("GPU", 0.0) > 0
    ):
        return None
    return tuple(sorted(spec.resources.items()))


class _Route:
    """Tasks of one shape: their lease, and the decisions about it (_routing.py).
    The owner of the lease's channel (``_channels.py``)."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.lock = threading.Lock()  # one task routed at a time
        self.granted = threading.Condition(self.lock)
        self.channel: Channel | None = None  # set exactly when decide.leased
        self.decide = LeaseRoute()

    def channel_ending(self, channel: Channel, revoked: bool) -> None:
        """The executor ends the lease (idle, or ``revoked`` by the scheduler): close our side."""
        with self.lock:
            if self.channel is channel:
                self.channel = None
                self.decide.ended(revoked, time.monotonic())
        channel.end()

    def channel_lost(self, channel: Channel) -> None:
        """The connection closed: after the lease's end, or because the executor died
        (the scheduler retries or fails the tasks it never reported)."""
        with self.lock:
            if self.channel is channel:
                self.channel = None
                self.decide.lost()


class Leases:
    """A driver's leases, one route per task shape."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.routes: dict[Shape, _Route] = {}
        self.asked: dict[bytes, _Route] = {}  # lease id -> the route that asked for it
        self.closed = False

    def submit(self, spec: w.TaskSpec) -> bool:
        """Send ``spec`` on a lease if one is idle; False: send it the usual way."""
        shape = lease_shape(spec)
        if shape is None:
            return False
        route = self.routes.get(shape)
        if route is None:
            if len(self.routes) >= MAX_ROUTES:  # many shapes (memory= per task, say)
                self.routes = {s: r for s, r in self.routes.items() if r.channel or r.decide.asked}
            route = self.routes.setdefault(shape, _Route(shape))
        with route.lock:
            decide = route.decide
            if decide.arrive(time.monotonic()):
                self._ask(route)
            # Placed at once when a CPU is free: this task may go on it.
            left = decide.grant_wait(time.monotonic())
            if left > 0:
                route.granted.wait(left)
            channel = route.channel
            where = decide.take(channel is not None and channel.idle())
            if where == "lease":
                assert channel is not None
                try:
                    channel.send(spec)
                except ConnectionError:
                    return False  # it broke just now: its reading thread will hear
                self.client.flush_urgent()  # what the task may name (a put) goes first
                channel.flush()
                return True
            if where == "end":
                # A task while the last one runs: its caller does not wait on
                # each, and the usual way spreads them over every CPU.
                assert channel is not None
                route.channel = None
                channel.end()
            decide.sent_usual(return_ids(spec.task_id, 1)[0])
        return False

    def got(self, oids: list[bytes]) -> None:
        """A get() returned these: a task awaited one by one counts toward a lease."""
        for route in list(self.routes.values()):  # (another thread may add one)
            route.decide.got(oids)

    def _ask(self, route: _Route) -> None:
        """Submit a lease for ``route`` (its lock held), if a worker here can hold it."""
        if self.closed:
            return
        client = self.client
        worker = client.local_worker()
        if worker is None or client.deliveries is None:
            return  # (a driver's client has a listener; an executor's takes no lease)
        if any(worker.resources.get(name, 0.0) < amount for name, amount in route.shape):
            return  # more than the worker here has: the usual way finds one
        lease_id = task_id(client.new_id())
        self.asked.pop(route.decide.asking(lease_id, time.monotonic()), None)
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
                channel_to=client.deliveries.address,
            )
        )
        client.flush()  # now: the task that asked waits for it

    def asked_for(self, lease_id: bytes) -> bool:
        return lease_id in self.asked

    def granted(self, lease_id: bytes, sock: socket.socket) -> Channel | None:
        """An executor serves lease ``lease_id`` on ``sock``; None: not wanted (close it)."""
        route = self.asked.pop(lease_id, None)
        if route is None or self.closed:
            return None
        with route.lock:
            if not route.decide.granted(lease_id):
                return None
            channel = route.channel = Channel(self.client, lease_id, sock, route)
            route.granted.notify_all()
            return channel

    def open(self) -> int:
        """How many leases serve this client now."""
        return sum(1 for route in list(self.routes.values()) if route.channel is not None)

    def close(self) -> None:
        self.closed = True
        for route in list(self.routes.values()):
            with route.lock:
                channel, route.channel = route.channel, None
                route.decide.lost()
            if channel is not None:
                channel.close()  # (the client is closing: answers still on the way go unread)
