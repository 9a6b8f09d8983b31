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
their failure): the client asks it for their values. A thread per channel
reads it (the listener hands it over after ``ChannelReady``); submitting
threads send.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import TYPE_CHECKING, Protocol

import msgspec

from taskgraph import _wire as w
from taskgraph._transport import BlockingConnection
from taskgraph.exceptions import ClusterConnectionError, TaskgraphError

if TYPE_CHECKING:
    from taskgraph._client import Client


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
            oids = self.in_flight[spec.task_id] = client.record_channel_task(spec)
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

    # -- the reading thread ------------------------------------------------------

    def start(self, buffer: bytearray) -> None:
        """Read the channel on a thread of its own, from what the listener read
        after ``ChannelReady`` (``buffer``)."""
        threading.Thread(
            target=self._read, args=(buffer,), name="taskgraph-channel", daemon=True
        ).start()

    def _read(self, buffer: bytearray) -> None:
        sock = self.conn.sock
        try:
            while True:
                for msgs in w.take_frames(buffer, w.EXECUTOR_TO_CLIENT):
                    for msg in msgs:
                        if not self.received(msg):
                            return
                data = sock.recv(1 << 16)
                if not data:
                    return
                buffer += data
        except (OSError, TaskgraphError):
            pass
        finally:
            self.lost()

    def received(self, msg: w.Msg) -> bool:
        """Act on what the executor sent; False if the connection should close."""
        if isinstance(msg, w.DirectResult):
            with self._lock:
                oids = self.in_flight.pop(msg.result.task_id, None)
            if oids is not None:
                self.client.channel_answered(oids, msg)
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
        self.owner.channel_lost(self)
        self.conn.close()
