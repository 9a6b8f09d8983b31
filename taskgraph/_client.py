"""The client: what a driver or a task's process uses to talk to the cluster.

::

    user thread ──.remote()/put──▶ pending messages ──flusher thread──▶ connection
    user thread ◀──get/wait────── values + condition ◀──reader thread── connection

``.remote()`` never touches the network: it appends to ``pending`` and wakes
the flusher, which sends everything queued as one frame (whatever piled up
while it was busy rides in the next). A blocking call flushes first. Refs are
counted here per id; the scheduler hears only the first acquire and the
last release, in batches.

In a task's process the connection is the executor's socket to its worker
daemon, which relays, so submissions, releases and the task's completion
reach the scheduler in one order (``worker/executor_client.py``: what only a
task's client does).

Here: refs, the outbox and its flusher, the reader, and the API's verbs.
Elsewhere: get(), wait() and futures (``_waiting.py``: ``Results``, which the
client holds and whose verbs are the client's), values in and out of this
host's stores (``_object_io.py``), actor calls direct or through the
scheduler (``_direct.py``), leases (``_leases.py``) and channels
(``_channels.py``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import pickle
import socket
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from taskgraph import _metrics
from taskgraph import _wire as w
from taskgraph._call_sites import CallSites
from taskgraph._channels import Channel
from taskgraph._client_statistics import ClientStatistics, Counts
from taskgraph._deliveries import DeliveryListener
from taskgraph._direct import ActorCalls
from taskgraph._ids import first_return, return_ids
from taskgraph._leases import Leases
from taskgraph._object_io import ObjectIO
from taskgraph._object_ref import ObjectRef
from taskgraph._output import OutputPrinter
from taskgraph._transport import BlockingConnection
from taskgraph._waiting import Results
from taskgraph.exceptions import (
    ClusterConnectionError,
    TaskgraphError,
)

# Seconds messages nothing waits on (records of channel tasks) may gather before
# the flusher sends them: the scheduler wakes once per burst (10 ms, not 2: sync
# direct calls 4.5k -> 4.8k/s). Any urgent message takes them along sooner.
LAZY_DELAY = 0.01


class Client:
    """A driver's client, and the base of an executor's (worker/executor_client.py)."""

    def __init__(
        self,
        conn: BlockingConnection,
        client_id: bytes,
        welcome: w.Welcome,
        *,
        token: bytes = b"",
        send: Callable[[list[Any]], None] | None = None,
        start_reader: bool = True,
    ) -> None:
        self.conn = conn
        self.client_id = client_id
        self.cluster_id = welcome.cluster_id
        self.dashboard_url = welcome.dashboard  # "": the scheduler serves no HTTP port
        self._send = send or conn.send
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._flush_cond = threading.Condition(self._lock)
        self._pending: list[Any] = []
        self._flush_requested = False
        # Pending holds something a blocking call must send before it waits
        # (Results reads it before each wait); or only messages that may gather
        # a while (see _queue_lazily).
        self.urgent = False
        self._lazy_waiting = False
        self._counts: dict[bytes, int] = {}
        self.released: collections.deque[bytes] = collections.deque()
        # Refs counted here that the scheduler has not heard of: an executor's,
        # made by its task's arguments (worker/executor_client.py). Empty in a driver.
        self._borrowed: set[bytes] = set()
        self._exported: set[bytes] = set()
        self._queries: dict[int, concurrent.futures.Future[Any]] = {}
        self._query_ids = itertools.count(1)
        self.notices: list[str] = []
        self.on_notice: Callable[[str, str], None] | None = None
        self.output: OutputPrinter | None = None  # a driver's, showing what its tasks print
        # Whose job our tasks belong to, and the task that submissions come from:
        # a driver's own and none; per task in an executor (worker/executor_client.py).
        self.job = b""
        self.parent_task: bytes | None = None
        self.sites = CallSites(self._queue_now)  # where the user's code calls us from
        self.broken: str | None = None
        self.closed = False
        self.token = token  # to reach worker daemons and executors, and pull objects
        # Values in and out, through this host's stores (_object_io.py); what a
        # client does with values is its own, but these are its methods too.
        self.objects = ObjectIO(client_id, token, list(welcome.workers), self._copy_here)
        self.host = self.objects.host
        self.encode_value = self.objects.encode
        self.decode_value = self.objects.decode
        self.store_for = self.objects.store_for
        self.local_worker = self.objects.local_worker
        # Where executors on this host hand over results and open channels
        # (_deliveries.py): a driver's from the start, an executor's on first use.
        self.deliveries: DeliveryListener | None = None
        # A driver's task leases (_leases.py).
        self.leases: Leases | None = None
        self._functions: dict[bytes, bytes] = {}  # exported code by id, for leased executors
        # Actor calls, direct or through the scheduler (_direct.py). Its dicts of
        # open channels and unanswered calls are read here on every flush and
        # value, so we hold them too.
        self.actors = ActorCalls(self, self._lock)
        self._channels = self.actors.channels
        self._slow_calls = self.actors.slow_calls
        self._stats = Counts()
        # Values here and awaited, and who waits for them (_waiting.py). Its verbs
        # are the client's too: callers say client.get(...), at no extra call.
        self.results = Results(self, self._lock, self._queue)
        self.get = self.results.get
        self.wait_values = self.results.wait_values
        self.peek = self.results.peek
        self.is_ready = self.results.is_ready
        self.future = self.results.future
        self._flusher = threading.Thread(
            target=self._flush_loop, name="taskgraph-flush", daemon=True
        )
        self._flusher.start()
        self._reader: threading.Thread | None = None
        if start_reader:
            self._reader = threading.Thread(
                target=self._read_loop, name="taskgraph-read", daemon=True
            )
            self._reader.start()

    @property
    def workers(self) -> list[w.WorkerInfo]:
        """The cluster's workers, as this client last heard."""
        return self.objects.workers

    @workers.setter
    def workers(self, workers: list[w.WorkerInfo]) -> None:
        self.objects.workers = workers

    # -- ids and refs ----------------------------------------------------

    def new_id(self) -> bytes:
        """A fresh 12-byte base; objects append a 4-byte index."""
        return self.client_id + next(self._ids).to_bytes(4, "little")

    def incref(self, object_id: bytes, acquire: bool) -> None:
        with self._lock:
            count = self._counts.get(object_id, 0)
            self._counts[object_id] = count + 1
            if count == 0 and acquire:
                self._queue(w.AcquireRefs([object_id]))

    def _drain_released(self) -> None:
        """Apply the decrements that ``ObjectRef.__del__`` queued (lock held)."""
        released = self.released
        gone: list[bytes] = []
        dropped: list[bytes] = []
        counts = self._counts
        while released:
            oid = released.popleft()
            count = counts.get(oid, 0) - 1
            if count > 0:
                counts[oid] = count
            else:
                counts.pop(oid, None)
                dropped.append(oid)
                if self._borrowed and oid in self._borrowed:
                    self._borrowed.discard(oid)
                    continue  # never acquired: nothing to give back
                if oid in self._slow_calls:
                    self.actors.slow_call_forgotten(oid)
                gone.append(oid)
        if dropped:
            self.results.forget(dropped)
        if gone:
            self._queue(w.ReleaseRefs(gone))

    # -- sending ---------------------------------------------------------

    def _queue(self, msg: Any, wake: bool = True, urgent: bool = True) -> None:
        """Append a message, merging with the last one of the same kind (lock held).

        ``wake=False`` when the caller flushes right away itself: waking the
        flusher thread for nothing costs a context switch on the hot path.
        ``urgent=False``: nothing waits on it (a channel task's record).
        """
        self.urgent = self.urgent or urgent
        pending = self._pending
        if pending:
            last = pending[-1]
            if type(last) is type(msg):
                if isinstance(msg, w.SubmitTasks):
                    last.tasks.extend(msg.tasks)
                    return
                if isinstance(msg, w.AcquireRefs | w.ReleaseRefs | w.WantObjects):
                    last.object_ids.extend(msg.object_ids)
                    return
        pending.append(msg)
        if wake and not self._flush_requested:
            self._flush_requested = True
            self._flush_cond.notify()

    def send_soon(self, msg: Any) -> None:
        with self._lock:
            self._queue(msg)

    def send_now(self, msg: Any) -> None:
        """Queue behind everything pending and send it all before returning."""
        with self._lock:
            self._queue(msg, wake=False)
        self.flush()

    def flush_urgent(self) -> None:
        """Flush if anything but lazy messages waits: before a task goes down a
        channel, what its code may name (a put, its function) goes first."""
        if self.urgent:
            self.flush()

    def sent(self) -> None:
        """Return once everything queued so far has been sent (a flush when
        something waits or is being sent; nothing to do, most of the time)."""
        if self._pending or self.released or self._send_lock.locked():
            self.flush()

    def flush(self) -> None:
        """Send everything queued, in order, before returning."""
        with self._send_lock:
            with self._lock:
                self._drain_released()
                batch, self._pending = self._pending, []
                self._flush_requested = self.urgent = self._lazy_waiting = False
            if batch and self.broken is None:
                try:
                    self._send(batch)
                except OSError as exc:
                    self._break(f"lost the connection to the scheduler: {exc}")
        # After the scheduler's batch (it hears first), and outside its lock,
        # without waiting: an actor that stopped reading must not hold up the
        # scheduler's messages, nor this thread (its own calls flush their channel).
        for channel in list(self._channels.values()):
            channel.flush(block=False)

    def _flush_loop(self) -> None:
        while not self.closed:
            with self._lock:
                if not self._flush_requested and not self._lazy_waiting:
                    # Wake now and then to return refs dropped by garbage collection,
                    # and soon while a channel holds bytes its socket did not take.
                    backlog = any(c.backlogged for c in self._channels.values())
                    self._flush_cond.wait(0.01 if backlog else 0.05 if self.released else 0.5)
                if self._lazy_waiting and not self._flush_requested:
                    # Records only: let more gather, so that they go in one frame.
                    self._flush_cond.wait(LAZY_DELAY)
                if self.closed:
                    return
                if _metrics.RECORDER.due():
                    self._queue_metrics()
            self.flush()
            self.objects.flush_unpins()

    def _queue_metrics(self) -> None:
        """This process's user metrics since the last update (lock held)."""
        update = _metrics.RECORDER.take()
        if update is not None:
            self._pending.append(update)

    # -- receiving -------------------------------------------------------

    def _read_loop(self) -> None:
        while True:
            try:
                msgs = self.conn.recv()
            except (OSError, ConnectionError, TaskgraphError) as exc:
                if not self.closed:
                    why = exc.reason if isinstance(exc, ClusterConnectionError) else exc
                    self._break(f"lost the connection to the scheduler: {why}")
                return
            self.on_messages(msgs)

    def on_messages(self, msgs: list[Any], direct: bool = False) -> None:
        """What the scheduler sent, or (``direct``) an executor on this host."""
        with self._lock:
            fire = self._arrived(msgs, direct)
        self.results.fire(fire)

    def _arrived(self, msgs: list[Any], direct: bool = False) -> list[Callable[[], None]]:
        """Take in what a peer sent (lock held); return the callbacks to run after."""
        fire: list[Callable[[], None]] = []
        for msg in msgs:
            if isinstance(msg, w.ObjectsReady):
                if direct:
                    self._stats.results_direct += len(msg.values)
                else:
                    self._stats.results_via_scheduler += len(msg.values)
                if self._slow_calls:
                    for value in msg.values:
                        if value.object_id in self._slow_calls:
                            self.actors.slow_call_ended(value.object_id, value.error is None)
                self.results.arrived(msg.values, self._counts, fire)
            elif isinstance(msg, w.QueryReply):
                fut = self._queries.pop(msg.request_id, None)
                if fut is not None:
                    fire.append(partial(fut.set_result, msg.result))
            elif isinstance(msg, w.TaskOutput):
                if self.output is not None:
                    fire.append(partial(self.output.show, msg))
            elif isinstance(msg, w.Notice):
                self.notices.append(msg.text)
                if self.on_notice is not None:
                    fire.append(partial(self.on_notice, msg.level, msg.text))
        return fire

    def wait_begins(self) -> bool:
        """A caller is about to wait for values (``Results`` asks; no lock held).
        True: call ``wait_ended`` after. A driver's waits are nobody else's
        business; an executor's task lends its CPUs meanwhile
        (worker/executor_client.py)."""
        return False

    def wait_ended(self) -> None:
        """The wait that ``wait_begins`` said True for is over."""

    def _break(self, reason: str) -> None:
        with self._lock:
            if self.broken is not None:
                return
            self.broken = reason
            callbacks = self.results.broke()
            queries, self._queries = self._queries, {}
        err = self.connection_error(reason)
        for fut in queries.values():
            fut.set_exception(err)
        for oid, cbs in callbacks.items():
            value = w.Value(oid, error=pickle.dumps(err))
            for cb in cbs:
                cb(value)

    # -- the API's verbs -------------------------------------------------

    def export(self, function_id: bytes, payload: bytes) -> None:
        with self._lock:
            if function_id not in self._exported:
                self._exported.add(function_id)
                self._functions[function_id] = payload
                self._queue(w.ExportFunction(function_id, payload))

    def function_payload(self, function_id: bytes) -> bytes:
        return self._functions[function_id]

    def usable(self) -> None:
        """Refuse new work once the scheduler is gone: ``ClusterConnectionError`` (a
        ``ConnectionError``), at once, rather than a ref whose value never comes."""
        if self.broken is not None:
            raise self.connection_error(self.broken)

    def submit(self, spec: w.TaskSpec) -> None:
        self.usable()
        self._stats.tasks_submitted += 1
        if self.leases is not None and self.leases.submit(spec):
            return
        self.submit_later(spec)

    def record_channel_task(self, spec: w.TaskSpec, channel: Channel) -> list[bytes]:
        """A task about to go down ``channel``: the scheduler records it (in our next
        batch; no placement), and its values are awaited from the channel."""
        oids = return_ids(spec.task_id, spec.num_returns)
        with self._lock:
            if spec.actor_id:
                self._stats.direct_actor_calls += 1
            else:
                self._stats.tasks_leased += 1
            self.results.direct.update(dict.fromkeys(oids, channel))
            self._queue_lazily(w.SubmitTasks([spec]))
        return oids

    def _queue_lazily(self, msg: Any) -> None:
        """Queue a message nothing waits on (lock held): the flusher sends it within
        LAZY_DELAY, with others (or any flush sooner), so that many go in one frame."""
        self._queue(msg, wake=False, urgent=False)
        if not self._lazy_waiting:
            self._lazy_waiting = True
            self._flush_cond.notify()

    def channel_answered(
        self, oids: Sequence[bytes], answer: w.DirectResult, by_waiter: bool = False
    ) -> None:
        """A channel task's result came from its executor (reported already);
        ``by_waiter``: read by a thread waiting for it in get() (``Channel.wait_for``)."""
        result = answer.result
        if answer.via_scheduler:
            self.channel_lost(oids)
            return
        if result.error is not None:
            values = [w.Value(oid, error=result.error) for oid in oids]
        else:
            values = [w.Value(r.object_id, r.data, r.location) for r in result.returns]
        fire: list[Callable[[], None]] = []
        direct = self.results.direct
        with self._lock:
            for oid in oids:
                direct.pop(oid, None)
            self._stats.results_direct += len(values)
            if by_waiter:
                self._stats.results_read_in_get += len(values)
            self.results.arrived(values, self._counts, fire)
        self.results.fire(fire)

    def channel_lost(self, oids: Sequence[bytes]) -> None:
        """No answer will come down the channel: ask the scheduler, which decides
        (the task's report, a retry, or its failure)."""
        direct = self.results.direct
        with self._lock:
            for oid in oids:
                direct.pop(oid, None)
            self.results.want([o for o in oids if o in self._counts])
        self.flush()

    def channel_gone(self, channel: Channel) -> None:
        """A channel is lost: what is still awaited from it is asked of the scheduler."""
        with self._lock:
            left = [oid for oid, c in self.results.direct.items() if c is channel]
        if left:
            self.channel_lost(left)

    def statistics(self) -> ClientStatistics:
        """How this client's tasks and their results travelled (counts since it began)."""
        with self._lock:
            awaiting = len(self.results.direct)
            read_again = self.results.read_again
        leases = self.leases.open() if self.leases is not None else 0
        return ClientStatistics(
            **dataclasses.asdict(self._stats),
            values_read_again=read_again,
            awaiting_channels=awaiting,
            open_leases=leases,
            direct_actors=self.actors.direct(),
        )

    def _queue_now(self, msg: w.Msg) -> None:
        with self._lock:
            self._queue(msg)

    def submit_later(self, spec: w.TaskSpec) -> None:
        """Queue a task for the scheduler (the flusher sends it)."""
        with self._lock:
            self._queue(w.SubmitTasks([spec]))

    def put(self, value: Any) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError(
                "Calling put() on an ObjectRef is not allowed: the value is already in the "
                "cluster; pass the ref itself."
            )
        self.usable()  # (before the value is stored: nothing would ever free it)
        oid = first_return(self.new_id())
        msg = self.objects.encode(oid, value, "the value passed to put()")
        ref = ObjectRef(oid, self)
        site = self.sites.here()
        with self._lock:
            self._queue(w.PutObject(oid, msg.data, msg.location, msg.contains, site))
        return ref

    def put_error(self, error: bytes) -> ObjectRef:
        """An object whose value is an error (pickled): getting it raises it."""
        oid = first_return(self.new_id())
        ref = ObjectRef(oid, self)
        with self._lock:
            self._queue(w.PutObject(oid, error=error))
        return ref

    def _copy_here(self, object_id: bytes, location: w.Location) -> w.Location | None:
        """A copy on this host of an object on another; None: a driver has no worker
        daemon of its own to hold one, so it reads the object into its own memory."""
        return None

    def channel_ready(self, channel_id: bytes, sock: socket.socket) -> Channel | None:
        """An executor opened channel ``channel_id`` to us on ``sock`` (the listener's
        thread): a lease we asked for, or an actor we offered; None: not wanted."""
        if self.leases is not None and self.leases.asked_for(channel_id):
            return self.leases.granted(channel_id, sock)
        return self.actors.channel_came(channel_id, sock)

    def listener(self) -> DeliveryListener:
        """Where executors on this host open channels to us (an executor's is made
        on first use)."""
        with self._lock:
            if self.deliveries is None:
                self.deliveries = DeliveryListener(self.token)
                self.deliveries.client = self
            return self.deliveries

    def connection_error(self, reason: str) -> ClusterConnectionError:
        """Why calls fail now: the connection broke, or this client was shut down."""
        return ClusterConnectionError(reason, advice="" if self.closed else None)

    def ask(self, msg: w.Query, callback: Callable[[Any], None]) -> None:
        """Send a query; ``callback`` gets the answer (None if it failed) on another thread."""
        try:
            fut = self._expect_reply(msg, wake=True)
        except ConnectionError:
            return
        fut.add_done_callback(lambda f: callback(None if f.exception() else f.result()))

    def cancel(self, refs: Sequence[ObjectRef], force: bool, recursive: bool) -> None:
        oids = [r.id for r in refs]
        with self._lock:
            self._queue(w.CancelTasks(oids, force, recursive), wake=False)
        self.flush()

    def query(self, what: w.QueryName, arg: Any = None, timeout: float = 30.0) -> Any:
        if what not in w.QUERIES:  # (the scheduler would drop us for it)
            raise ValueError(f"unknown query {what!r}; known: {', '.join(w.QUERIES)}")
        return self.request(w.query_for(what, arg), timeout)

    def request(self, msg: w.Query | w.CreateNamedActor | w.ReadLogs, timeout: float = 30.0) -> Any:
        """Send a message that the scheduler answers with a QueryReply; wait for it."""
        fut = self._expect_reply(msg, wake=False)
        self.flush()
        return fut.result(timeout)

    def _expect_reply(
        self, msg: w.Query | w.CreateNamedActor | w.ReadLogs, wake: bool
    ) -> concurrent.futures.Future[Any]:
        """Queue a message the scheduler answers; the future gets its QueryReply."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self.broken is not None:
                raise self.connection_error(self.broken)
            msg.request_id = next(self._query_ids)
            self._queries[msg.request_id] = fut
            self._queue(msg, wake=wake)
        return fut

    # -- shutdown --------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        with self._lock:
            if _metrics.RECORDER.changed:
                self._queue_metrics()
            self._queue(w.Goodbye())
        self.flush()
        with self._lock:
            self.closed = True
            self._flush_cond.notify_all()
        self._flusher.join(timeout=5)
        self.conn.close()
        if self.leases is not None:
            self.leases.close()
        if self.deliveries is not None:
            self.deliveries.close()
        for channel in list(self._channels.values()):
            channel.close()
        self.objects.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        if self.output is not None:
            self.output.close()
        # Threads still blocked in get() or wait() hear that it is over.
        self._break("the client was shut down (tg.shutdown())")
