"""Channels, the client's side: tasks sent straight to an executor, answered straight back.

A channel is a connection that an executor on this client's host opens to the
client's listener (``_deliveries.py``), saying ``ChannelReady``; from then on
the client sends it tasks and the executor answers each::

    client ──ChannelTask(spec)──▶ executor     (recorded with the scheduler, in
    client ◀──DirectResult──────┘              the client's ordinary batches)

Two kinds of executor open one, and each has an *owner* here with its policy
(the decisions themselves are in ``_routing.py``):

- a **lease** (``_leases.py``): an executor holding a task shape's resources
  runs this client's tasks of that shape one after another; it ends when idle
  or when the scheduler wants the resources back (``LeaseEnding``), and the
  client then lets it go.
- an **actor** called directly (``_direct.py``): the actor's process opens a
  channel to a caller that asked (an offer riding on one of its calls through
  the scheduler), and takes that caller's later calls in order.

Whatever the kind, the scheduler records every task sent down a channel and
the executor reports each one on its ordered stream before it answers here,
so an answer only brings a value sooner. When the connection closes, the
tasks in flight are the scheduler's to settle (their reports, a retry, or
their failure): the client asks it for their values. Submitting threads
send. A thread per channel reads it (the listener hands it over after
``ChannelReady``), except while a thread waiting in get() for its answers
reads it itself (``wait_for``): then no thread stands between the answer and
the thread that waits for it.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Protocol

import msgspec

from taskgraph import _wire as w
from taskgraph._transport import BlockingConnection
from taskgraph.exceptions import ClusterConnectionError, TaskgraphError
from taskgraph.settings import settings

if TYPE_CHECKING:
    from taskgraph._client import Client
    from taskgraph._waiting import Waiter

# Seconds the reading thread leaves the socket alone after a thread in get()
# read it (``wait_for``): a caller in a loop of synchronous calls reads every
# answer itself, with no thread between the socket and it.
STICKY = 0.005
# Longest the channel's thread sleeps while one thread in get() reads, should
# its telling be lost (Ctrl-C in that thread as it let go).
PARKED = 1.0


class Owner(Protocol):
    """What a channel tells the lease route or actor route it serves."""

    def channel_ending(self, channel: Channel, revoked: bool) -> None: ...

    def channel_lost(self, channel: Channel) -> None: ...


class Channel:
    """One connection an executor opened to this client, and the tasks in flight on it."""

    def __init__(self, client: Client, channel_id: bytes, sock: socket.socket, owner: Owner):
        self.client = client
        self.channel_id = channel_id  # a lease's task id, or an actor's id
        self.owner = owner
        self.conn = BlockingConnection(sock)
        self.in_flight: dict[bytes, list[bytes]] = {}  # task id -> its return ids, until answered
        self.broken: str | None = None  # set once nothing more can go down it
        self.ending = False  # nothing more will be sent
        self._functions: set[bytes] = set()  # code sent down it already
        self._outbox: list[w.Msg] = []
        self._unsent = bytearray()  # encoded, not taken by the socket yet (see flush)
        self._held = 0  # pings awaited before the outbox may leave (see hold)
        self._shut = False  # our side is closed
        self._lost = False
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()  # batches leave in the order they were taken
        # Who reads the socket (see wait_for): the channel's own thread, or a
        # thread waiting in get() for answers from here. ``_role`` is held by
        # whichever reads; ``_turns`` (and its fields) decides whose turn it is.
        self._buffer = bytearray()  # read, not yet a whole frame (the reader's)
        # (an RLock: its release says whether this thread holds it, see wait_for)
        self._role = threading.RLock()
        # (``with self._mutex``, not ``with self._turns``: a C lock's enter and
        # exit run no Python code, where Ctrl-C could leave it held.)
        self._mutex = threading.Lock()
        self._turns = threading.Condition(self._mutex)
        self._started = False
        self._getter = False  # a thread in get() reads, or is taking the socket
        self._getter_left = 0.0  # when the last one gave it back (monotonic)
        self._getters = 0  # threads in get() that took it so far (tells one from the next)
        self._parked = False  # the channel's thread sleeps until the one reading leaves
        self._bystanders = 0  # threads waiting for answers while another reads
        self._wake_r, self._wake_w = os.pipe()  # pulls the reading thread out of poll
        self._read_in_get = settings().read_in_get
        self._getter_thread = 0  # the thread in get() that reads (its ident), if any

    @property
    def backlogged(self) -> bool:
        """Bytes wait that the socket did not take (a background flush left them)."""
        return bool(self._unsent)

    def idle(self) -> bool:
        """Usable, and running nothing of ours (a lease takes a task only then)."""
        return not self.ending and self.broken is None and not self.in_flight

    def send(self, spec: w.TaskSpec) -> list[bytes]:
        """Queue a task (the caller then flushes); returns its return ids.

        Raises ConnectionError if the channel is gone: the task goes the usual way.
        """
        client = self.client
        fid = spec.function_id
        function = b""
        if not spec.actor_id and fid not in self._functions:
            function = client.function_payload(fid)
        spec = msgspec.structs.replace(spec, channel=self.channel_id)
        with self._lock:
            if self.broken is not None or self.ending:
                raise ClusterConnectionError(self.broken or "the channel is ending")
            # Recorded before it can be sent (another thread may flush us): an
            # answer must never find its ids unexpected.
            oids = self.in_flight[spec.task_id] = client.record_channel_task(spec, self)
            self._outbox.append(w.ChannelTask(spec, function))
            if function:
                self._functions.add(fid)
        return oids

    def hold(self) -> None:
        """Keep what is queued from here on until ``release`` (a scheduler round trip)."""
        with self._lock:
            self._held += 1

    def release(self) -> None:
        with self._lock:
            self._held -= 1
        self.flush(block=False)

    def flush(self, block: bool = True) -> None:
        """Send what is queued, in order.

        ``block=False`` is for every thread but the one that just queued a task
        (the flusher, a ping's answer, another channel's user): it never waits.
        It skips the channel while another thread sends, and writes only what
        the socket takes now; the rest goes with the next flush. (An executor
        that stopped reading must not freeze the client.) A send that fails
        breaks the channel; its reading thread then hears the close and
        settles what was in flight (``lost``).
        """
        if not self._send_lock.acquire(blocking=block):
            return
        try:
            with self._lock:
                if not self._held and self._outbox:
                    batch, self._outbox = self._outbox, []
                    self._unsent += w.encode(batch)
            if self._unsent:
                self._write(block)
        except OSError as exc:
            self._break(f"its process is gone ({exc})")
        finally:
            self._send_lock.release()

    def _write(self, block: bool) -> None:
        sock = self.conn.sock
        if block:
            sock.sendall(self._unsent)
            self._unsent.clear()
            return
        while self._unsent:
            try:
                sent = sock.send(self._unsent, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            del self._unsent[:sent]

    def close(self) -> None:
        """Break it from our side: what is in flight is settled by the scheduler."""
        self._break("the client let it go")

    def _break(self, reason: str) -> None:
        with self._lock:
            if self.broken is None:
                self.broken = reason
            self._outbox = []
        with contextlib.suppress(OSError):
            self.conn.sock.shutdown(socket.SHUT_RDWR)  # the reading thread sees the end
        with self._mutex:
            self._getter_left = 0.0  # (and reads again now, if parked)
            self._turns.notify_all()

    # -- the reading thread ------------------------------------------------------

    def start(self, buffer: bytearray) -> None:
        """Read the channel on a thread of its own, from what the listener read
        after ``ChannelReady`` (``buffer``)."""
        with self._mutex:
            if self._lost:
                return  # (lost before it began: nothing to read)
            self._buffer = buffer
            self._started = True
        threading.Thread(target=self._read, name="taskgraph-channel", daemon=True).start()

    def _read(self) -> None:
        poller = select.poll()
        try:
            with self._role:  # (a thread in get() may have read it to its end already)
                if self._lost:
                    return
                poller.register(self.conn.sock, select.POLLIN)
                poller.register(self._wake_r, select.POLLIN)
            while self._take_turn():
                try:
                    if not self._read_once(poller):
                        self.lost()  # (the role held: no thread in get() reads meanwhile)
                finally:
                    self._role.release()
        finally:
            with self._role, self._mutex:  # (after any thread in get() is done with it)
                self._close_pipe()

    def _read_once(self, poller: select.poll) -> bool:
        """The reading thread's turn (the role held); False at the channel's end."""
        try:
            if not self._take_frames():
                return False
            if any(fd == self._wake_r for fd, _ in poller.poll()):
                os.read(self._wake_r, 4096)  # a thread in get() wants the socket
                return True
            return self._receive()
        except (OSError, TaskgraphError):
            return False

    def _close_pipe(self) -> None:
        """(``_turns`` held: a thread in get() writes to it under it.)"""
        if self._wake_w >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def _take_turn(self) -> bool:
        """The reading thread: wait while a thread in get() reads (and ``STICKY``
        after), then take the socket. False once the channel is lost."""
        while True:
            with self._mutex:
                seen = -1
                while not self._lost:
                    if self._getter:
                        # Not told when a thread in get() is done (a loop of calls
                        # would wake us at each): we look every STICKY, and sleep
                        # until told once the same one still reads (a long wait).
                        if seen == self._getters:
                            self._parked = True
                            self._turns.wait(PARKED)
                            self._parked = False
                        else:
                            seen = self._getters
                            self._turns.wait(STICKY)
                        continue
                    idle = time.monotonic() - self._getter_left
                    if idle >= STICKY:
                        break
                    self._turns.wait(STICKY - idle)
                if self._lost:
                    return False
            self._role.acquire()
            with self._mutex:
                if not self._getter and not self._lost:
                    return True  # (else one came meanwhile: let it read)
            self._role.release()

    def _receive(self) -> bool:
        """Read once (the role held) and act on whole frames; False at the end."""
        data = self.conn.sock.recv(1 << 16)
        if not data:
            return False
        self._buffer += data
        return self._take_frames()

    def _take_frames(self) -> bool:
        for msgs in w.take_frames(self._buffer, w.EXECUTOR_TO_CLIENT):
            for msg in msgs:
                if not self.received(msg):
                    return False
        return True

    def wait_for(self, waiter: Waiter, timeout: float | None) -> bool:
        """Wait until ``waiter``'s values (answers of tasks sent down here) came,
        reading the socket on this thread while no other thread in get() does:
        the answer then wakes this thread itself, not a reading thread that
        would wake it (each thread woken costs tens of microseconds, the most
        of a synchronous call). True if they came within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Ctrl-C may come between any two calls here (in the main thread): each
        # step is undone in ``finally`` from what it left (a role held, or this
        # thread counted), never from what the next line would have done.
        reads: bool | None = None
        held = False
        left_at = 0.0  # (interrupted: the channel's thread reads again at once)
        try:
            with self._mutex:
                reads = self._read_in_get and self._started and not self._getter and not self._lost
                if reads:
                    self._getter = True
                    self._getters += 1
                else:
                    self._bystanders += 1
            if not reads:
                return waiter.wait(timeout)
            held = self._take_socket(deadline)
            # (lost while it waited for the socket: closed; the scheduler answers)
            if held and not self._lost:
                self._getter_thread = threading.get_ident()
                waiter.on_wake = partial(self._poke, self._getter_thread)
                self._read_until(waiter, deadline)
            left_at = time.monotonic()
        finally:
            # (inline: entering a function is a place Ctrl-C comes)
            waiter.on_wake = None
            if reads is not None:
                with self._mutex:
                    if reads:
                        self._getter_thread = 0
                        self._getter = False
                        # Others wait for answers from here: the channel's
                        # thread reads for them now, not after STICKY.
                        now = self._bystanders or self._lost
                        self._getter_left = 0.0 if now else left_at
                        tell = now or self._parked or not left_at
                        # Released if this thread holds it, even when Ctrl-C came
                        # as it took it (``held`` not set yet). After it, Ctrl-C
                        # only delays the channel's thread (STICKY, PARKED).
                        try:
                            self._role.release()
                        except RuntimeError:
                            pass  # (not this thread's: the channel's thread holds it)
                        if tell:
                            self._turns.notify()
                    else:
                        self._bystanders -= 1
        # Lost: the scheduler answers (the client asked it); or it came meanwhile.
        left = None if deadline is None else deadline - time.monotonic()
        return waiter.woken or waiter.wait(left if left is None else max(left, 0.0))

    def _take_socket(self, deadline: float | None) -> bool:
        """A thread in get() takes the role from the channel's thread (out of
        ``poll``; or once it has handed an answer over, whose futures' callbacks
        may take long). False if the deadline passed first."""
        if self._role.acquire(blocking=False):
            return True
        self._wake_reader()
        if deadline is None:
            return self._role.acquire()
        return self._role.acquire(timeout=max(deadline - time.monotonic(), 0.0))

    def received(self, msg: w.Msg) -> bool:
        """Act on what the executor sent; False if the connection should close."""
        if isinstance(msg, w.DirectResult):
            oids = None
            try:
                with self._lock:
                    oids = self.in_flight.pop(msg.result.task_id, None)
                if oids is not None:
                    # (read by the thread that waits: counted, so a test sees the path)
                    by_waiter = self._getter_thread == threading.get_ident()
                    self.client.channel_answered(oids, msg, by_waiter)
            except BaseException:
                # Ctrl-C on a thread in get() while it handed the answer over
                # (futures' callbacks run there too): no longer in flight, so
                # ``lost`` would not ask for it; the scheduler has what did not arrive.
                if oids is not None:
                    self.client.channel_lost(oids)
                raise
            self._shut_when_done()
            return True
        if isinstance(msg, w.LeaseEnding):
            self.owner.channel_ending(self, msg.revoked)
            return True
        return False  # an executor sends nothing else on a channel

    def end(self) -> None:
        """Let the channel go: nothing more is sent; what was sent still runs."""
        self.ending = True
        self._shut_when_done()

    def _shut_when_done(self) -> None:
        """Close our side once it ends and every answer is in: the executor's
        side ends when it reads our end."""
        with self._lock:
            if self._shut or not self.ending or self.in_flight:
                return
            self._shut = True
        with contextlib.suppress(OSError):
            self.conn.sock.shutdown(socket.SHUT_WR)

    def _read_until(self, waiter: Waiter, deadline: float | None) -> None:
        """Read (the role held) until ``waiter`` is woken (here, or by another
        thread: it pokes us), the deadline passes or the channel is lost."""
        if self._lost:
            return  # (the channel's thread read it to its end while we waited for the role)
        poller = select.poll()
        poller.register(self.conn.sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while not waiter.woken and not self._lost:
                left = None if deadline is None else deadline - time.monotonic()
                # Out of time, it still takes what came, once: the channel's
                # thread leaves the socket alone after us, so a loop of
                # get(timeout=0) would otherwise never see its answer.
                late = left is not None and left <= 0
                ready = poller.poll(None if left is None else 0 if late else int(left * 1000) + 1)
                ok = True
                try:
                    for fd, _ in ready:
                        if fd == self._wake_r:
                            os.read(self._wake_r, 4096)
                        else:
                            ok = self._receive()
                except (OSError, TaskgraphError):
                    ok = False
                if not ok:
                    self.lost()
                if late:
                    return
        except BaseException:
            # Interrupted (Ctrl-C) while taking in answers: one may be half
            # handled. Let the channel go: the scheduler answers for all it had.
            self.close()
            raise

    def _poke(self, reader: int) -> None:
        """A waiter that thread ``reader`` reads for was woken elsewhere (its values
        came through the scheduler, or the client broke): stop its reading."""
        if threading.get_ident() != reader:
            self._wake_reader()

    def _wake_reader(self) -> None:
        """A byte down the pipe: whichever thread holds the role leaves ``poll``."""
        with self._mutex:  # (the pipe closes under it)
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    def lost(self) -> None:
        """The connection closed: after the channel's end, or because the executor
        died or the client broke it. What was in flight is the scheduler's to
        settle: it has each task's report, or retries or fails the task."""
        with self._lock:
            if self._lost:
                return
            self._lost = True
            if self.broken is None:
                self.broken = "its process closed the connection"
            self.ending = True
            lost, self.in_flight = self.in_flight, {}
            self._outbox = []
        for oids in lost.values():
            self.client.channel_lost(oids)
        self.client.channel_gone(self)
        self.owner.channel_lost(self)
        self.conn.close()
        with self._mutex:
            self._turns.notify_all()  # (the reading thread ends)
            if not self._started:
                self._close_pipe()
