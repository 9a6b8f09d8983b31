"""Objects between hosts: each worker daemon serves its segments to peers.

::

    reader's daemon ──Hello/FetchSegment──▶ holder's peer server
    reader's daemon ◀──SegmentData(size) + raw bytes── holder (streamed)

The receiving daemon streams the bytes straight into a new segment of its
own (no whole-object copy in memory), tells the scheduler it holds a copy
(``ObjectCopied``) and hands the local location to the executor that asked.
A driver on a host without a worker pulls the same way into its own memory.
Peers authenticate like every other connection; several objects may be in
flight at once, one connection per peer pair, requests answered in order.
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
from taskgraph._transport import (
    BlockingConnection,
    FrameReader,
    accept_handshake,
    connect_blocking,
    connect_tornado,
    read_batch,
    write_batch,
)
from taskgraph.exceptions import AuthenticationError, ObjectLostError, ProtocolError
from taskgraph.worker import store

log = logging.getLogger("taskgraph.worker")
CHUNK = 4 << 20  # bytes per read or write while streaming a segment


class PeerServer(TCPServer):
    """Hands this worker's segments to other workers and remote drivers."""

    def __init__(self, worker_id: str, token: bytes) -> None:
        super().__init__()
        self.worker_id = worker_id
        self.token = token
        self.served = 0

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        stream.set_nodelay(True)
        try:
            await accept_handshake(stream, self.token, w.Welcome(b"", self.worker_id))
        except AuthenticationError as exc:
            log.warning("peer %s refused: %s", address, exc)
            return
        reader = FrameReader(stream)
        try:
            while True:
                for msg in await reader.read():
                    if not isinstance(msg, w.FetchSegment):
                        raise ProtocolError(f"a peer may not send {type(msg).__name__}")
                    await self._send_segment(stream, msg)
        except (StreamClosedError, ProtocolError):
            stream.close()

    async def _send_segment(self, stream: IOStream, msg: w.FetchSegment) -> None:
        if not msg.segment.startswith(f"{store.PREFIX}{self.worker_id}-"):
            write_batch(stream, [w.SegmentMissing(msg.object_id, "not a segment of this worker")])
            return
        try:
            mm = store.open_readonly(msg.segment)
        except FileNotFoundError:
            write_batch(stream, [w.SegmentMissing(msg.object_id, "the segment is gone")])
            return
        with mm, memoryview(mm) as view:
            write_batch(stream, [w.SegmentData(msg.object_id, len(view))])
            for start in range(0, len(view), CHUNK):
                # Waiting for each chunk to leave bounds what we buffer.
                await stream.write(bytes(view[start : start + CHUNK]))
        self.served += 1


class Puller:
    """Pulls segments from peers into this worker's store, one connection per peer."""

    def __init__(self, worker_id: str, token: bytes) -> None:
        self.worker_id = worker_id
        self.token = token
        self._streams: dict[str, IOStream] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._pulls: dict[bytes, asyncio.Future[w.Location]] = {}
        self.copies: dict[bytes, w.Location] = {}

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
        lock = self._locks.setdefault(source.peer, asyncio.Lock())
        async with lock:  # one request at a time per connection: answers come in order
            stream = await self._connect(source.peer)
            try:
                write_batch(stream, [w.FetchSegment(object_id, source.segment)])
                (reply,) = await read_batch(stream)
                if isinstance(reply, w.SegmentMissing):
                    raise ObjectLostError(object_id.hex(), f"its holder says: {reply.reason}")
                if not isinstance(reply, w.SegmentData):
                    raise ProtocolError(f"a peer answered {type(reply).__name__}")
                name = store.segment_name(self.worker_id, object_id)
                mm = store.create(name, reply.size)
                try:
                    with memoryview(mm) as view:
                        for start in range(0, reply.size, CHUNK):
                            # Tornado takes any writable buffer, though typed bytearray.
                            await stream.read_into(view[start : start + CHUNK])  # type: ignore[arg-type]
                finally:
                    mm.close()
            except BaseException:
                self._streams.pop(source.peer, None)
                stream.close()
                store.unlink(store.segment_name(self.worker_id, object_id))
                raise
        local = w.Location(self.worker_id, name, reply.size, host, peer)
        self.copies[object_id] = local
        return local

    async def _connect(self, peer: str) -> IOStream:
        stream = self._streams.get(peer)
        if stream is None or stream.closed():
            hello = w.Hello("peer", b"", self.worker_id.encode(), pid=os.getpid())
            stream, _ = await connect_tornado(peer, self.token, hello)
            self._streams[peer] = stream
        return stream

    def forget(self, object_id: bytes) -> None:
        self.copies.pop(object_id, None)

    def close(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()


def pull_into_memory(location: w.Location, token: bytes, object_id: bytes) -> Any:
    """For a process with no worker on its host: read a remote object into private memory."""
    hello = w.Hello("peer", b"", os.urandom(8), pid=os.getpid())
    conn: BlockingConnection
    conn, _ = connect_blocking(location.peer, token, hello)
    try:
        conn.send([w.FetchSegment(object_id, location.segment)])
        (reply,) = conn.recv()
        if isinstance(reply, w.SegmentMissing):
            raise ObjectLostError(object_id.hex(), f"its holder says: {reply.reason}")
        if not isinstance(reply, w.SegmentData):
            raise ProtocolError(f"a peer answered {type(reply).__name__}")
        data = bytearray(reply.size)
        view = memoryview(data)
        got = 0
        while got < reply.size:
            n = conn.recv_into(view[got:])
            if n == 0:
                raise ConnectionError("the peer closed the connection mid-object")
            got += n
    finally:
        conn.close()
    return store.parse(memoryview(data).toreadonly())


def local_ip_towards(sock: socket.socket) -> str:
    """The address this host uses to reach the scheduler: where peers reach us too."""
    return str(sock.getsockname()[0])
