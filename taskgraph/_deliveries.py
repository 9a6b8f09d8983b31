"""Results straight from an executor to the client that waits for them, on one host.

A lone task's round trip crosses six process boundaries: client -> scheduler
-> worker daemon -> executor, and the same way back. When the client that
submitted a task already waits for its result and runs on the executor's
host, the scheduler says so in the assignment (``Assignment.deliver``: the
client's listening address). The executor then hands the result to the client
itself, over a Unix socket, and tells the scheduler it did
(``TaskResult.delivered``), which then does not send it again::

    client ──submit──▶ scheduler ──▶ daemon ──▶ executor
       ▲                                           │
       └────────────── ObjectsReady ───────────────┘   (the report still goes
                                                         the usual way)

Only successful, small results with no refs inside travel this way: a failure
may be retried, and refs inside a value must be known to the scheduler before
anyone holds them. A delivery that cannot be made is simply not made; the
scheduler sends the value as before. Connections are authenticated with the
cluster token like every other.

The same socket takes the executors that open a channel to this client (a
lease, or an actor called directly: ``_channels.py``): such an executor's
first message is ``ChannelReady``, and from then on its connection carries
the channel both ways (read by a thread of the channel's own). The listener exists whether or
not results are delivered (``TASKGRAPH_DIRECT_RESULTS``): only the address in
the client's hello says that.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import threading
from typing import TYPE_CHECKING

from taskgraph import _wire as w
from taskgraph._transport import BlockingConnection, accept_blocking, connect_blocking
from taskgraph.exceptions import AuthenticationError, TaskgraphError

if TYPE_CHECKING:
    from taskgraph._channels import Channel
    from taskgraph._client import Client


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


class DeliveryListener:
    """A client's end: one thread accepts executors on this host, reads what they
    deliver, and hands each channel they open to a thread of its own.

    A driver's is made before its client (whose hello carries the address), an
    executor's when it first wants a channel; ``client`` is set once that
    exists, before any task is submitted.
    """

    def __init__(self, token: bytes) -> None:
        self.client: Client | None = None
        self.token = token
        # An abstract Unix socket (Linux): nothing on disk to clean up, gone with us.
        name = f"\0taskgraph-deliver-{os.getpid()}-{os.urandom(6).hex()}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(name)
        self._sock.listen(64)
        self._sock.setblocking(False)
        self.address = f"unix://{name}"
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._buffers: dict[socket.socket, bytearray] = {}
        self._channels: dict[socket.socket, Channel] = {}  # sockets that became channels
        self._greeted: list[socket.socket] = []  # handshakes done, not read yet
        self._lock = threading.Lock()
        self.closed = False
        self._thread = threading.Thread(target=self._run, name="taskgraph-deliveries", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.closed:
            for key, _ in self._selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._wake_r:
                    if not self._take_greeted():
                        return
                elif sock is self._sock:
                    self._accept()
                else:
                    self._read(sock)

    def _accept(self) -> None:
        try:
            sock, _ = self._sock.accept()
        except OSError:
            return
        # The handshake on a thread of its own: a peer that is slow to answer, or
        # never does, holds up no delivery and no channel.
        threading.Thread(
            target=self._greet, args=(sock,), name="taskgraph-greet", daemon=True
        ).start()

    def _greet(self, sock: socket.socket) -> None:
        client = self.client
        conn = BlockingConnection(sock)
        sock.setblocking(True)
        try:
            if client is None:
                raise AuthenticationError("not ready")
            if peer_uid(sock) != os.getuid():  # (an abstract socket has no permissions)
                raise AuthenticationError("a process of another user")
            accept_blocking(conn, self.token, w.Welcome(b"", client.cluster_id, []))
        except AuthenticationError:
            conn.close()
            return
        # The peer waited for our welcome before sending anything, so nothing
        # is buffered in ``conn``: from here we read the raw socket.
        sock.setblocking(False)
        with self._lock:
            if self.closed:
                sock.close()
                return
            self._greeted.append(sock)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"g")

    def _take_greeted(self) -> bool:
        """Start reading the peers greeted since; False once closed."""
        with contextlib.suppress(OSError):
            self._wake_r.recv(4096)
        with self._lock:
            if self.closed:
                return False
            greeted, self._greeted = self._greeted, []
        for sock in greeted:
            self._buffers[sock] = bytearray()
            self._selector.register(sock, selectors.EVENT_READ, None)
        return True

    def _read(self, sock: socket.socket) -> None:
        buffer = self._buffers[sock]
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        buffer += data
        try:
            frames = w.take_frames(buffer, w.EXECUTOR_TO_CLIENT)
        except TaskgraphError:
            self._drop(sock)
            return
        for msgs in frames:
            if not self._handle(sock, msgs):
                self._drop(sock)
                return
        channel = self._channels.pop(sock, None)
        if channel is not None:
            # A channel opened: from here its own thread reads it (a thread
            # blocked in recv wakes sooner than this loop; sync calls: +8%).
            self._selector.unregister(sock)
            channel.start(self._buffers.pop(sock))

    def _handle(self, sock: socket.socket, msgs: list[w.Msg]) -> bool:
        """Act on what an executor sent; False if the connection should close."""
        client = self.client
        if client is None:
            return False
        channel = self._channels.get(sock)
        for msg in msgs:
            if isinstance(msg, w.ObjectsReady):
                client.on_messages([msg], direct=True)
            elif channel is not None:
                if not channel.received(msg):
                    return False
            elif isinstance(msg, w.ChannelReady):
                # From here the executor serves us on this socket: we send from
                # the submitting threads (blocking), read here.
                sock.setblocking(True)
                channel = client.channel_ready(msg.channel_id, sock)
                if channel is None:
                    return False  # not wanted (any more): the executor's side ends
                self._channels[sock] = channel
            else:
                return False  # an executor sends nothing else here
        return True

    def _drop(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        self._buffers.pop(sock, None)
        channel = self._channels.pop(sock, None)
        if channel is not None:
            channel.lost()  # closes it
        else:
            sock.close()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            greeted, self._greeted = self._greeted, []
        for sock in greeted:
            sock.close()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        for sock in list(self._buffers):
            sock.close()
        self._buffers.clear()
        self._selector.close()
        for sock in (self._sock, self._wake_r, self._wake_w):
            sock.close()


class Deliverer:
    """An executor's end: one connection per client it delivers to, made on first use."""

    def __init__(self, token: bytes, client_id: bytes) -> None:
        self.token = token
        self.client_id = client_id
        self._conns: dict[str, BlockingConnection] = {}
        self._failed: set[str] = set()  # clients we could not reach: not tried again

    def deliver(self, address: str, values: list[w.Value]) -> bool:
        """Send ``values`` to the client at ``address``; False if that cannot be done."""
        if address in self._failed:
            return False
        conn = self._conns.get(address)
        try:
            if conn is None:
                hello = w.Hello("executor", b"", self.client_id, pid=os.getpid())
                conn, _ = connect_blocking(address, self.token, hello, w.CLIENT_TO_EXECUTOR)
                self._conns[address] = conn
            conn.send([w.ObjectsReady(values)])
        except (OSError, ConnectionError, AuthenticationError):
            self._failed.add(address)
            dropped = self._conns.pop(address, None)
            if dropped is not None:
                dropped.close()
            return False
        return True

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


def deliverable(result: w.TaskResult) -> list[w.Value] | None:
    """The values an executor may hand over itself, or None (see the module text)."""
    if result.failure or not result.returns:
        return None
    values: list[w.Value] = []
    for ret in result.returns:
        if ret.data is None or ret.location is not None or ret.contains:
            return None
        values.append(w.Value(ret.object_id, data=ret.data))
    return values
