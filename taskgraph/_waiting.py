"""Results and waiting: the values a client has and awaits, and who waits for them.

``Results`` is an object the client holds (``Client.results``): it asks the
scheduler for values (``WantObjects``; a channel task's come down its
channel instead), blocks callers in get() and wait() until enough have
arrived, and hands values to futures. The client's reader thread passes on
what arrives (``arrived``), which wakes them: each waiter counts down its
missing values and is woken once.

It shares the client's lock (a value arrives, a ref is dropped, a call
waits: one order) and speaks to the rest of the client only through
``ResultsClient``: its outbox (the ``queue`` it is given) and flushing,
whether the connection broke, decoding a value (``objects``), its leases (a
get counts toward one), and a task's process's notice that a caller blocks.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from taskgraph import _wire as w
from taskgraph._object_io import Unreadable
from taskgraph._object_ref import ObjectRef
from taskgraph.exceptions import ClusterConnectionError, GetTimeoutError

if TYPE_CHECKING:
    from taskgraph._channels import Channel
    from taskgraph._leases import Leases
    from taskgraph._object_io import ObjectIO

# Times get() reads an object again after its copy was found gone (each time the
# scheduler counts that copy lost, and has it made again at most max_retries times).
REREADS = 20


class Waiter:
    """A caller blocked in get/wait: how many more of its objects must arrive.

    A bare lock, held until ``wake``: a ``threading.Event`` costs a condition
    and a lock made per wait, which showed in every synchronous call.
    """

    __slots__ = ("_gate", "on_wake", "remaining", "woken")

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.woken = False
        self.on_wake: Callable[[], None] | None = None  # set while it reads a channel
        self._gate = threading.Lock()
        self._gate.acquire()

    def wake(self) -> None:
        """Let the waiting thread go (lock held by the caller: the client's)."""
        if not self.woken:
            self.woken = True
            self._gate.release()
            on_wake = self.on_wake  # (read once: its reader may clear it meanwhile)
            if on_wake is not None:
                on_wake()

    def wait(self, timeout: float | None) -> bool:
        """Block until woken or ``timeout`` passed; True if woken."""
        return self._gate.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))


class ResultsClient(Protocol):
    """What ``Results`` uses of the client that holds it. ``Client`` is the one
    implementation (``ExecutorClient`` changes what a blocked wait does)."""

    broken: str | None  # why the connection is gone; None while it lasts
    urgent: bool  # something queued that a caller must send before it waits
    leases: Leases | None
    objects: ObjectIO

    def flush(self) -> None: ...

    def connection_error(self, reason: str) -> ClusterConnectionError: ...

    def wait_begins(self) -> bool:
        """A caller is about to wait for values (no lock held). True: call
        ``wait_ended`` after."""
        ...

    def wait_ended(self) -> None: ...


class Results:
    """The values here and awaited, and the callers and futures waiting for them
    (see the module's docstring). Methods that say "lock held" expect the
    caller to hold the client's lock; the others take it."""

    def __init__(
        self,
        client: ResultsClient,
        lock: threading.RLock,
        queue: Callable[..., None],
    ) -> None:
        self.client = client
        self._lock = lock
        self._queue = queue  # the client's outbox: queue(msg, wake=...) (lock held)
        self._values: dict[bytes, w.Value] = {}  # arrived, for refs still counted here
        self._wanted: set[bytes] = set()  # asked of the scheduler, not arrived
        # Returns of tasks sent down a channel (a lease, an actor called directly)
        # whose values come from that channel, not from the scheduler: which one.
        self.direct: dict[bytes, Channel] = {}
        self._waiters: dict[bytes, list[Waiter]] = {}  # object id -> blocked callers
        self._callbacks: dict[bytes, list[Callable[[w.Value], None]]] = {}
        self._in_callback = threading.local()  # set on a thread while it runs callbacks
        self.read_again = 0  # values whose copy was gone when read, then read again

    # -- what arrives (the client's reader) --------------------------------

    def arrived(
        self,
        values: list[w.Value],
        counted: dict[bytes, int],
        fire: list[Callable[[], None]],
    ) -> None:
        """Values came (lock held): keep those whose refs are ``counted`` here, wake
        who waits, and add the futures' callbacks to ``fire`` (run after, unlocked)."""
        for value in values:
            oid = value.object_id
            self._wanted.discard(oid)
            if oid in counted:
                self._values[oid] = value
            for waiter in self._waiters.pop(oid, ()):
                waiter.remaining -= 1
                if waiter.remaining <= 0:
                    waiter.wake()
            fire.extend(partial(cb, value) for cb in self._callbacks.pop(oid, ()))

    def fire(self, callbacks: list[Callable[[], None]]) -> None:
        """Run callbacks (outside the lock: they may call back into the client),
        marking this thread as the one that delivers values."""
        if callbacks:
            outer = getattr(self._in_callback, "active", False)
            self._in_callback.active = True
            interrupted: BaseException | None = None
            try:
                for callback in callbacks:
                    try:
                        callback()
                    except Exception:
                        logging.getLogger("taskgraph").exception("a ref callback failed")
                    except BaseException as exc:
                        # Ctrl-C on a thread in get() that read values (see
                        # Channel.wait_for): the other futures still complete.
                        interrupted = interrupted or exc
            finally:
                self._in_callback.active = outer
            if interrupted is not None:
                raise interrupted

    def forget(self, oids: list[bytes]) -> None:
        """Refs no longer counted here (lock held): their values go."""
        for oid in oids:
            self._values.pop(oid, None)
            self._wanted.discard(oid)

    def broke(self) -> dict[bytes, list[Callable[[w.Value], None]]]:
        """The connection is gone (lock held): wake every waiter; return the
        futures' callbacks, for the client to fail outside the lock."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.wake()
        self._waiters.clear()
        callbacks, self._callbacks = self._callbacks, {}
        return callbacks

    # -- asking and waiting ------------------------------------------------

    def want(self, oids: Sequence[bytes]) -> None:
        """Ask for values not yet here (lock held; the caller flushes).

        Returns of tasks sent down a channel come from the channel.
        """
        missing = [
            o
            for o in oids
            if o not in self._values and o not in self._wanted and o not in self.direct
        ]
        if missing:
            self._wanted.update(missing)
            self._queue(w.WantObjects(missing), wake=False)

    def peek(self, oid: bytes) -> w.Value | None:
        with self._lock:
            return self._values.get(oid)

    def is_ready(self, oid: bytes) -> bool:
        with self._lock:
            if oid in self._values:
                return True
            self.want([oid])
        self.client.flush()
        return False

    def wait_values(
        self, oids: Sequence[bytes], count: int, timeout: float | None
    ) -> list[bytes] | None:
        """Block until ``count`` of ``oids`` have arrived; return the arrived ones.

        Returns None when the timeout passed first. While blocked inside a
        task, the task's CPU is lent back to its worker. The reader thread
        counts arrivals for us and wakes us once, when enough are here.
        """
        unique = list(dict.fromkeys(oids))
        waits = False
        with self._lock:
            self.want(unique)
            missing = [o for o in unique if o not in self._values]
            waiter = Waiter(count - (len(unique) - len(missing)))
            # All awaited from one channel: this thread may read it itself.
            channel = self.direct.get(missing[0]) if missing else None
            if channel is not None and any(self.direct.get(o) is not channel for o in missing):
                channel = None
            if waiter.remaining > 0:
                if self.client.broken is not None:
                    raise self.client.connection_error(self.client.broken)
                if getattr(self._in_callback, "active", False):
                    # This thread delivers results: waiting here, it would wait for itself.
                    raise RuntimeError(
                        "get() or wait() inside a ref's future callback cannot wait for a "
                        "value that is not here yet: the callback runs on the thread that "
                        "delivers values. Hand the work to a thread or executor of your own."
                    )
                for oid in missing:
                    self._waiters.setdefault(oid, []).append(waiter)
                waits = True
        blocked = waits and self.client.wait_begins()
        if self.client.urgent:  # (values of channel tasks come from their channel)
            self.client.flush()
        try:
            # Already here (perhaps while we flushed): no wait, but a task that
            # said it blocked still says it goes on.
            if waiter.remaining <= 0:
                arrived = True
            elif channel is not None:
                arrived = channel.wait_for(waiter, timeout)
            else:
                arrived = waiter.wait(timeout)
        finally:
            with self._lock:
                for oid in missing:
                    waiting = self._waiters.get(oid)
                    if waiting is not None and waiter in waiting:
                        waiting.remove(waiter)
                        if not waiting:
                            del self._waiters[oid]
            if blocked:
                self.client.wait_ended()
        if self.client.broken is not None:
            raise self.client.connection_error(self.client.broken)
        if not arrived:
            return None
        with self._lock:
            return [o for o in unique if o in self._values]

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        oids = [r.id for r in refs]
        unique = list(dict.fromkeys(oids))
        # (one deadline for the wait and any reads again: get(timeout=t) returns by t)
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.wait_values(unique, len(unique), timeout) is None:
            with self._lock:
                not_ready = sum(o not in self._values for o in unique)
            raise GetTimeoutError(timeout, not_ready)
        if self.client.leases is not None:
            self.client.leases.got(unique)
        with self._lock:
            values = [self._values[o] for o in oids]
        return [self._decode(v, deadline, timeout) for v in values]

    def _decode(self, value: w.Value, deadline: float | None, timeout: float | None) -> Any:
        """A value, read again (from another copy, or once the scheduler has made
        it again) if the copy we were told of is gone."""
        for _ in range(REREADS):
            try:
                return self.client.objects.decode(value)
            except Unreadable as exc:
                oid = value.object_id
                with self._lock:
                    self._copy_gone(value, exc, wake=False)
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if self.wait_values([oid], 1, left) is None:
                    raise GetTimeoutError(timeout, 1) from exc
                with self._lock:
                    value = self._values[oid]
        return self.client.objects.decode(value)

    def _copy_gone(self, value: w.Value, exc: Unreadable, wake: bool) -> None:
        """The copy ``value`` names could not be read: forget it, and tell the
        scheduler, which counts that copy lost (lock held)."""
        oid = value.object_id
        if self._values.get(oid) is value:
            del self._values[oid]
        self._queue(w.ObjectUnreadable(oid, exc.worker_id), wake=wake)
        self.read_again += 1

    def future(self, ref: ObjectRef) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        # The future keeps the ref alive until it completes (``keep_alive``, emptied
        # then). ``done`` reaches itself through ``again`` (to wait once more),
        # emptied then too: a cycle would keep the future, and so its value and
        # the stored object under it, until the garbage collector ran.
        keep = ref
        oid = ref.id

        def done(value: w.Value) -> None:
            try:
                result = self.client.objects.decode(value)
            except Unreadable as exc:
                # Read again, as get() does, once another copy is known or the
                # object is made again (this may run on the thread that delivers
                # values: no waiting here, and the flusher thread sends).
                with self._lock:
                    if rereads[0] > 0 and self.client.broken is None:
                        rereads[0] -= 1
                        self._copy_gone(value, exc, wake=True)
                        self._callbacks.setdefault(oid, []).extend(again)
                        self.want([oid])
                        return
                del keep_alive[:], again[:]
                fut.set_exception(exc)
            except BaseException as exc:
                del keep_alive[:], again[:]
                fut.set_exception(exc)
            else:
                del keep_alive[:], again[:]
                fut.set_result(result)

        keep_alive = [keep]
        again = [done]
        rereads = [REREADS]
        with self._lock:
            value = self._values.get(ref.id)
            if value is None:
                if self.client.broken is not None:
                    del keep_alive[:], again[:]
                    fut.set_exception(self.client.connection_error(self.client.broken))
                    return fut
                self._callbacks.setdefault(ref.id, []).append(done)
                self.want([ref.id])
        if value is not None:
            done(value)
        else:
            self.client.flush()
        return fut
