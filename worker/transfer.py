"""Objects between hosts: each worker daemon serves its store to peers.

::

    reader's daemon ──Hello/FetchObject──▶ holder's peer server
    reader's daemon ◀──ObjectData(size) + raw bytes── holder (streamed)

The receiving daemon streams the bytes straight into its own store (no
whole-object copy in memory; pages reused from earlier objects take no page
faults), tells the scheduler it holds a copy
(``ObjectCopied``) and hands the local location to the executor that asked.
A driver on a host without a worker pulls the same way into its own memory.
Peers authenticate like every other connection. Up to four objects are in
flight from one peer at once, each on a connection of its own (reused by
later pulls); pulls from different peers run side by side.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpserver import TCPServer

from taskgraph import _wire as w
from taskgraph._tls import TLS, accept_tornado
from taskgraph._transport import (
    BlockingConnection,
    FrameReader,
    accept_handshake,
    connect_blocking,
    connect_tornado,
    read_batch,
    write_batch,
)
from taskgraph.exceptions import (
    AuthenticationError,
    ClusterConnectionError,
    ObjectLostError,
    ObjectStoreFullError,
    ProtocolError,
)

from . import store

log = logging.getLogger("taskgraph.worker")
# Bytes per read into the store: under Tornado's buffer limit (100 MB by default).
CHUNK = 32 << 20
PULLS_PER_PEER = 4  # objects in flight from one peer, each on its own connection


class PeerServer(TCPServer):
    """Hands this worker's objects to other workers and remote drivers (over TLS
    when given ``tls``: then only to peers with a certificate of the cluster's CA)."""

    def __init__(
        self, worker_id: str, token: bytes, objects: store.ObjectStore, tls: TLS | None = None
    ) -> None:
        super().__init__()
        self.worker_id = worker_id
        self.token = token
        self.tls = tls
        self.objects = objects
        self.served = 0
        self.served_bytes = 0

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        stream.set_nodelay(True)
        try:
            if self.tls is not None:
                stream = await accept_tornado(stream, self.tls)
            await accept_handshake(stream, self.token, w.Welcome(b"", self.worker_id))
        except AuthenticationError as exc:
            log.warning("peer %s refused: %s", address, exc.reason)
            return
        reader = FrameReader(stream, w.PEER_REQUESTS)
        try:
            while True:
                for msg in await reader.read():
                    if not isinstance(msg, w.FetchObject):
                        raise ProtocolError(f"a peer may not send {type(msg).__name__}")
                    await self._send(stream, msg.object_id)
        except (StreamClosedError, ProtocolError):
            stream.close()

    async def _send(self, stream: IOStream, object_id: bytes) -> None:
        holder = ("peer", id(stream), object_id)
        try:
            self.objects.pin(object_id, holder)
        except KeyError:
            write_batch(stream, [w.ObjectMissing(object_id, "not in this worker's store")])
            return
        try:
            view = self.objects.read(object_id)
            write_batch(stream, [w.ObjectData(object_id, len(view))])
            # Tornado sends straight from the view; waiting bounds what we buffer.
            await stream.write(view)
        finally:
            self.objects.unpin(object_id, holder)
        self.served += 1
        self.served_bytes += len(view)


class Puller:
    """Pulls objects from peers into this worker's store, a few at once per peer."""

    def __init__(
        self,
        worker_id: str,
        token: bytes,
        objects: store.ObjectStore,
        address: str,
        tls: TLS | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.token = token
        self.tls = tls
        self.objects = objects
        self.address = address  # where readers on this host reach our store
        self._idle: dict[str, list[IOStream]] = {}  # connections to each peer, free
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._open: set[IOStream] = set()
        self._pulls: dict[bytes, asyncio.Future[w.Location]] = {}
        self.copies: dict[bytes, w.Location] = {}
        self.pulled = 0
        self.pulled_bytes = 0

    async def fetch(self, object_id: bytes, source: w.Location, host: str, peer: str) -> w.Location:
        """A local copy of the object, pulling it once however many ask at once."""
        if object_id in self.copies:
            return self.copies[object_id]
        pending = self._pulls.get(object_id)
        if pending is None:
            pending = asyncio.ensure_future(self._pull(object_id, source, host, peer))
            self._pulls[object_id] = pending
        try:
            return await asyncio.shield(pending)
        finally:
            if pending.done():
                self._pulls.pop(object_id, None)

    async def _pull(self, object_id: bytes, source: w.Location, host: str, peer: str) -> w.Location:
        if not source.peer:
            raise ObjectLostError(object_id.hex(), "its worker serves no peers")
        slots = self._slots.setdefault(source.peer, asyncio.Semaphore(PULLS_PER_PEER))
        holder = ("pull", object_id)
        async with slots:  # each pull has a connection to itself while it runs
            stream = await self._connect(source.peer)
            created = False
            try:
                write_batch(stream, [w.FetchObject(object_id)])
                (reply,) = await read_batch(stream, w.PEER_REPLIES)
                if isinstance(reply, w.ObjectMissing):
                    raise ObjectLostError(object_id.hex(), f"its holder says: {reply.reason}")
                if not isinstance(reply, w.ObjectData):
                    raise ProtocolError(f"a peer answered {type(reply).__name__}")
                try:
                    offset = self.objects.create(object_id, reply.size, holder)
                except store.StoreFull as exc:
                    raise ObjectStoreFullError(
                        exc.needed, exc.used, exc.capacity, node=self.worker_id
                    ) from exc
                created = True
                # Straight into the store: Tornado reads into the view as bytes arrive.
                view = self.objects.view[offset : offset + reply.size]
                for start in range(0, reply.size, CHUNK):
                    # (Tornado's stubs say bytearray; any writable buffer works.)
                    await stream.read_into(view[start : start + CHUNK])  # type: ignore[arg-type]
                self.objects.seal(object_id, holder)
            except BaseException:
                # The stream is mid-object or broken: the next pull opens another.
                self._open.discard(stream)
                stream.close()
                if created:
                    self.objects.unpin(object_id, holder)  # frees what was never sealed
                raise
            self._idle.setdefault(source.peer, []).append(stream)
        self.pulled += 1
        self.pulled_bytes += reply.size
        local = w.Location(self.worker_id, self.address, reply.size, host, peer)
        self.copies[object_id] = local
        return local

    async def _connect(self, peer: str) -> IOStream:
        idle = self._idle.get(peer, [])
        while idle:
            stream = idle.pop()
            if not stream.closed():
                return stream
            self._open.discard(stream)
        hello = w.Hello("peer", b"", self.worker_id.encode(), pid=os.getpid())
        stream, _ = await connect_tornado(peer, self.token, hello, self.tls)
        self._open.add(stream)
        return stream

    def forget(self, object_id: bytes) -> None:
        self.copies.pop(object_id, None)

    def close(self) -> None:
        for stream in self._open:
            stream.close()
        self._open.clear()
        self._idle.clear()


def pull_into_memory(
    location: w.Location, token: bytes, object_id: bytes, tls: TLS | None = None
) -> Any:
    """For a process with no worker on its host: read a remote object into private memory."""
    hello = w.Hello("peer", b"", os.urandom(8), pid=os.getpid())
    conn: BlockingConnection
    conn, _ = connect_blocking(location.peer, token, hello, w.PEER_REPLIES, tls)
    try:
        conn.send([w.FetchObject(object_id)])
        (reply,) = conn.recv()
        if isinstance(reply, w.ObjectMissing):
            raise ObjectLostError(object_id.hex(), f"its holder says: {reply.reason}")
        if not isinstance(reply, w.ObjectData):
            raise ProtocolError(f"a peer answered {type(reply).__name__}")
        data = bytearray(reply.size)
        view = memoryview(data)
        got = 0
        while got < reply.size:
            n = conn.recv_into(view[got:])
            if n == 0:
                raise ClusterConnectionError("the peer closed the connection mid-object")
            got += n
    finally:
        conn.close()
    return store.parse(memoryview(data).toreadonly())


def local_ip_towards(sock: socket.socket) -> str:
    """The address this host uses to reach the scheduler: where peers reach us too.

    Over a Unix socket the scheduler is on this host, which peers of a local
    cluster reach on loopback.
    """
    if sock.family == socket.AF_UNIX:
        return "127.0.0.1"
    return str(sock.getsockname()[0])
