"""Results and waiting: what a client does to have values here and wait for them.

``Client`` (``_client.py``) is one class read in two modules: this half asks
the scheduler for values (``WantObjects``; a channel task's come down its
channel instead), blocks callers in get() and wait() until enough have
arrived, and hands values to futures. The reader thread, in the other half,
stores what arrives and wakes them (``Client._arrived``): each waiter counts
down its missing values and is woken once. Both halves share the client's
state and its lock, declared below; this one sends nothing itself but queues
through the client's outbox.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from taskgraph import _wire as w
from taskgraph._object_io import Unreadable
from taskgraph._object_ref import ObjectRef
from taskgraph.exceptions import ClusterConnectionError, GetTimeoutError

if TYPE_CHECKING:
    from taskgraph._channels import Channel
    from taskgraph._client import _Counts
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
            if self.on_wake is not None:
                self.on_wake()

    def wait(self, timeout: float | None) -> bool:
        """Block until woken or ``timeout`` passed; True if woken."""
        return self._gate.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))


class Waiting:
    """The client's get(), wait() and futures (see the module's docstring)."""

    # The client's, set in Client.__init__.
    _lock: threading.RLock
    _values: dict[bytes, w.Value]  # arrived, for refs still counted here
    _wanted: set[bytes]  # asked of the scheduler, not arrived
    _direct: dict[bytes, Channel]  # awaited from a channel: which one
    _waiters: dict[bytes, list[Waiter]]  # object id -> blocked callers
    _callbacks: dict[bytes, list[Callable[[w.Value], None]]]
    _in_callback: threading.local
    _urgent: bool
    broken: str | None
    leases: Leases | None
    _stats: _Counts
    objects: ObjectIO

    def _queue(self, msg: Any, wake: bool = True, urgent: bool = True) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def _connection_error(self, reason: str) -> ClusterConnectionError:
        raise NotImplementedError

    def _want(self, oids: Sequence[bytes]) -> None:
        """Ask for values not yet here (lock held; the caller flushes).

        Returns of tasks sent down a channel come from the channel.
        """
        missing = [
            o
            for o in oids
            if o not in self._values and o not in self._wanted and o not in self._direct
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
            self._want([oid])
        self.flush()
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
            self._want(unique)
            missing = [o for o in unique if o not in self._values]
            waiter = Waiter(count - (len(unique) - len(missing)))
            # All awaited from one channel: this thread may read it itself.
            channel = self._direct.get(missing[0]) if missing else None
            if channel is not None and any(self._direct.get(o) is not channel for o in missing):
                channel = None
            if waiter.remaining > 0:
                if self.broken is not None:
                    raise self._connection_error(self.broken)
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
        blocked = waits and self._wait_begins()
        if self._urgent:  # (values of channel tasks come from their channel)
            self.flush()
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
                self._wait_ended()
        if self.broken is not None:
            raise self._connection_error(self.broken)
        if not arrived:
            return None
        with self._lock:
            return [o for o in unique if o in self._values]

    def _wait_begins(self) -> bool:
        """A caller is about to wait for values (no lock held). True: call
        ``_wait_ended`` after. A driver's waits are nobody else's business; an
        executor's task lends its CPUs meanwhile (worker/executor_client.py)."""
        return False

    def _wait_ended(self) -> None:
        """The wait that ``_wait_begins`` said True for is over."""

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        oids = [r.id for r in refs]
        unique = list(dict.fromkeys(oids))
        # (one deadline for the wait and any reads again: get(timeout=t) returns by t)
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.wait_values(unique, len(unique), timeout) is None:
            with self._lock:
                not_ready = sum(o not in self._values for o in unique)
            raise GetTimeoutError(timeout, not_ready)
        if self.leases is not None:
            self.leases.got(unique)
        with self._lock:
            values = [self._values[o] for o in oids]
        return [self._decode(v, deadline, timeout) for v in values]

    def _decode(self, value: w.Value, deadline: float | None, timeout: float | None) -> Any:
        """A value, read again (from another copy, or once the scheduler has made
        it again) if the copy we were told of is gone."""
        for _ in range(REREADS):
            try:
                return self.objects.decode(value)
            except Unreadable as exc:
                oid = value.object_id
                with self._lock:
                    self._copy_gone(value, exc, wake=False)
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if self.wait_values([oid], 1, left) is None:
                    raise GetTimeoutError(timeout, 1) from exc
                with self._lock:
                    value = self._values[oid]
        return self.objects.decode(value)

    def _copy_gone(self, value: w.Value, exc: Unreadable, wake: bool) -> None:
        """The copy ``value`` names could not be read: forget it, and tell the
        scheduler, which counts that copy lost (lock held)."""
        oid = value.object_id
        if self._values.get(oid) is value:
            del self._values[oid]
        self._queue(w.ObjectUnreadable(oid, exc.worker_id), wake=wake)
        self._stats.values_read_again += 1

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
                result = self.objects.decode(value)
            except Unreadable as exc:
                # Read again, as get() does, once another copy is known or the
                # object is made again (this may run on the thread that delivers
                # values: no waiting here, and the flusher thread sends).
                with self._lock:
                    if rereads[0] > 0 and self.broken is None:
                        rereads[0] -= 1
                        self._copy_gone(value, exc, wake=True)
                        self._callbacks.setdefault(oid, []).extend(again)
                        self._want([oid])
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
                if self.broken is not None:
                    del keep_alive[:], again[:]
                    fut.set_exception(ConnectionError(self.broken))
                    return fut
                self._callbacks.setdefault(ref.id, []).append(done)
                self._want([ref.id])
        if value is not None:
            done(value)
        else:
            self.flush()
        return fut
