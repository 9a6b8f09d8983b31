"""Streams that carry wire frames: a blocking socket flavour and a Tornado flavour.

The blocking flavour serves clients (a driver, an executor process): one
reader thread, writers from any thread under a lock. The Tornado flavour
serves the scheduler and the worker daemon. Both start with the same
handshake, before anything else crosses::

    server ── Challenge(nonce) ─────────────────────▶ peer
    server ◀─ Hello(role, HMAC-SHA256(token, nonce)) ─ peer
    server ── Welcome | Rejected ────────────────────▶ peer

The token never crosses the network, and nothing from a peer is unpickled
before its Hello checks out. A cluster started with certificates puts TLS
under all of it (``StartTLS`` first: ``_tls.py``); a process without them
pays nothing for it but one type check per connection.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskgraph import _wire as w
from taskgraph.exceptions import AuthenticationError, ClusterConnectionError, ProtocolError

if TYPE_CHECKING:  # Tornado is imported by the daemons' functions below, not by clients
    from tornado.iostream import IOStream

    from taskgraph._tls import TLS

HANDSHAKE_TIMEOUT = 10.0
HELLO_LIMIT = 64 * 1024  # an unauthenticated peer may not make us buffer more


@dataclass(frozen=True)
class Address:
    scheme: str  # "tcp" | "unix"
    host: str
    port: int
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        return f"tcp://{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Accept ``tcp://host:port``, ``host:port`` or ``unix:///path``."""
    original = text
    if text.startswith("unix://"):
        return Address("unix", "", 0, text[len("unix://") :])
    if text.startswith("tcp://"):
        text = text[len("tcp://") :]
    elif "://" in text:
        raise ValueError(f"unsupported address {original!r}: use tcp://HOST:PORT or unix:///PATH")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"malformed address {original!r}: expected tcp://HOST:PORT")
    return Address("tcp", host.strip("[]"), int(port))


def digest(token: bytes, nonce: bytes) -> bytes:
    return hmac.new(token, nonce, hashlib.sha256).digest()


def check_hello(msgs: list[Any], token: bytes, nonce: bytes) -> w.Hello:
    if len(msgs) == 1 and isinstance(msgs[0], w.Rejected):  # (a peer that wants TLS)
        raise AuthenticationError(f"the peer refused: {msgs[0].reason}")
    if len(msgs) != 1 or not isinstance(msgs[0], w.Hello):
        raise AuthenticationError("the peer did not start with a Hello")
    hello: w.Hello = msgs[0]
    if hello.version != w.PROTOCOL_VERSION:
        raise AuthenticationError(
            f"protocol version {hello.version} does not match ours ({w.PROTOCOL_VERSION}): "
            "run the same taskgraph version everywhere"
        )
    if not hmac.compare_digest(hello.digest, digest(token, nonce)):
        raise AuthenticationError("the token does not match the cluster's")
    return hello


# -- blocking flavour --------------------------------------------------------


class BlockingConnection:
    """A socket carrying frames; ``send`` from any thread, ``recv`` from one.
    ``link``: what may arrive (the handshake's messages until it is done)."""

    def __init__(self, sock: socket.socket, link: w.Link = w.HANDSHAKE) -> None:
        self.sock = sock
        self.link = link
        self._rfile = sock.makefile("rb", buffering=1 << 16)
        self._wlock = threading.Lock()
        self.closed = False
        self.frames_sent = 0  # whole frames written (worker/reports.py orders by it)

    def send(self, messages: list[w.Msg]) -> None:
        frame = w.encode(messages)
        with self._wlock:
            self.sock.sendall(frame)
            self.frames_sent += 1

    def recv(self, limit: int = w.MAX_FRAME) -> list[Any]:
        try:
            header = self._rfile.read(4)
            if len(header) < 4:
                raise ClusterConnectionError("the peer closed the connection")
            n = w.frame_length(header)
            if n > limit:
                raise ProtocolError(f"a {n}-byte frame is over the {limit}-byte limit here")
            body = self._rfile.read(n)
        except ValueError:  # close() from another thread, under our read
            raise ClusterConnectionError("the connection was closed") from None
        if len(body) < n:
            raise ClusterConnectionError("the peer closed the connection mid-frame")
        return self.link.decode(body)

    def recv_into(self, view: memoryview) -> int:
        """Raw bytes that follow a frame (a segment streamed by a peer)."""
        return int(self._rfile.readinto(view))  # type: ignore[attr-defined]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._rfile.close()
        self.sock.close()


def accept_blocking(conn: BlockingConnection, token: bytes, welcome: w.Welcome) -> w.Hello:
    """Server side of the handshake on a blocking socket (an actor's direct calls)."""
    nonce = os.urandom(32)
    conn.sock.settimeout(HANDSHAKE_TIMEOUT)
    try:
        conn.send([w.Challenge(nonce)])
        hello = check_hello(conn.recv(HELLO_LIMIT), token, nonce)
    except (AuthenticationError, ProtocolError) as exc:
        reason = getattr(exc, "reason", "") or str(exc)
        try:
            conn.send([w.Rejected(reason)])
        finally:
            conn.close()
        raise AuthenticationError(reason) from exc
    except (OSError, ConnectionError) as exc:
        conn.close()
        raise AuthenticationError("the peer did not complete the handshake") from exc
    conn.sock.settimeout(None)
    welcome.client_id = hello.client_id
    conn.send([welcome])
    return hello


def open_socket(address: Address, timeout: float = 10.0) -> socket.socket:
    if address.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address.path)
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    return sock


def recv_frame(sock: socket.socket, limit: int) -> bytes:
    """One frame's body, read straight from the socket (nothing read beyond it:
    what follows may be a TLS handshake)."""
    n = w.frame_length(_recv_exactly(sock, 4))
    if n > limit:
        raise ProtocolError(f"a {n}-byte frame is over the {limit}-byte limit here")
    return _recv_exactly(sock, n)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray(n)
    view = memoryview(data)
    got = 0
    while got < n:
        more = sock.recv_into(view[got:])
        if not more:
            raise ClusterConnectionError("the peer closed the connection")
        got += more
    return bytes(data)


def connect_blocking(
    address: Address | str,
    token: bytes,
    hello: w.Hello,
    link: w.Link,
    tls: TLS | None = None,
) -> tuple[BlockingConnection, w.Welcome]:
    """Connect and authenticate (then ``link`` says what may arrive); raise
    ``ClusterConnectionError``/``AuthenticationError``. ``tls``: this process's
    certificates, for a cluster that uses TLS (``_tls.py``)."""
    if isinstance(address, str):
        address = parse_address(address)
    try:
        sock = open_socket(address)
    except OSError as exc:
        raise ClusterConnectionError(
            f"could not connect to the scheduler at {address}: {exc}"
        ) from exc
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        challenge = w.HANDSHAKE.decode(recv_frame(sock, HELLO_LIMIT))
    except (OSError, ConnectionError, ProtocolError) as exc:
        sock.close()
        raise _handshake_failed(address, exc) from exc
    if tls is not None or (challenge and isinstance(challenge[0], w.StartTLS)):
        from taskgraph import _tls

        # (It closes the socket and says why when the two ends do not agree.)
        sock, challenge = _tls.connect_blocking(sock, challenge, tls, str(address))
    conn = BlockingConnection(sock)
    try:
        if len(challenge) != 1 or not isinstance(challenge[0], w.Challenge):
            raise ProtocolError(f"{address} is not a taskgraph scheduler")
        hello.digest = digest(token, challenge[0].nonce)
        conn.send([hello])
        reply = conn.recv()
        sock.settimeout(None)
    except (OSError, ConnectionError, ProtocolError) as exc:
        conn.close()
        raise _handshake_failed(address, exc) from exc
    if reply and isinstance(reply[0], w.Rejected):
        conn.close()
        raise AuthenticationError(reply[0].reason, peer=f"the scheduler at {address}")
    if not reply or not isinstance(reply[0], w.Welcome):
        conn.close()
        raise ClusterConnectionError(f"{address} answered the handshake with {reply!r}")
    conn.link = link
    return conn, reply[0]


def _handshake_failed(address: Address, exc: Exception) -> ClusterConnectionError:
    if isinstance(exc, ProtocolError):
        return ClusterConnectionError(f"{address} is not a taskgraph scheduler: {exc}")
    return ClusterConnectionError(f"the scheduler at {address} closed during the handshake")


# -- Tornado flavour ---------------------------------------------------------


async def read_batch(stream: IOStream, link: w.Link, limit: int = w.MAX_FRAME) -> list[Any]:
    header = await stream.read_bytes(4)
    n = w.frame_length(header)
    if n > limit:
        raise ProtocolError(f"a {n}-byte frame is over the {limit}-byte limit here")
    body = await stream.read_bytes(n) if n else b""
    return link.decode(body)


class FrameReader:
    """Reads whatever has arrived and decodes every complete frame in it.

    One await per burst of frames, not two per frame: under load a peer's
    many small frames are handled together (and answered together).
    """

    CHUNK = 1 << 16
    # A large frame is read in pieces this big: Tornado refuses a single read
    # beyond its stream's buffer limit (100 MB by default).
    PIECE = 32 << 20

    def __init__(self, stream: IOStream, link: w.Link) -> None:
        self.stream = stream
        self.link = link
        self.buffer = bytearray()
        # Messages per frame of the last burst (worker/reports.py orders by them).
        self.counts: list[int] = []

    async def read(self) -> list[Any]:
        """The messages of all complete frames available (at least one frame)."""
        while True:
            messages = self._take_frames()
            if messages is not None:
                return messages
            wanted = self._missing()
            if wanted > self.CHUNK:
                self.buffer += await self.stream.read_bytes(min(wanted, self.PIECE))
            else:
                self.buffer += await self.stream.read_bytes(self.CHUNK, partial=True)

    def _missing(self) -> int:
        if len(self.buffer) < 4:
            return 4 - len(self.buffer)
        return 4 + w.frame_length(bytes(self.buffer[:4])) - len(self.buffer)

    def _take_frames(self) -> list[Any] | None:
        frames = w.take_frames(self.buffer, self.link)
        if not frames:
            return None
        self.counts = [len(frame) for frame in frames]
        return [msg for frame in frames for msg in frame]


def write_batch(stream: IOStream, messages: list[w.Msg]) -> None:
    if not stream.closed():
        stream.write(w.encode(messages))


async def accept_handshake(stream: IOStream, token: bytes, welcome: w.Welcome) -> w.Hello:
    """Server side; on failure tell the peer why, close, and raise."""
    import asyncio

    from tornado.iostream import StreamClosedError

    nonce = os.urandom(32)
    write_batch(stream, [w.Challenge(nonce)])
    try:
        msgs = await asyncio.wait_for(
            read_batch(stream, w.HANDSHAKE, HELLO_LIMIT), HANDSHAKE_TIMEOUT
        )
        hello = check_hello(msgs, token, nonce)
    except (AuthenticationError, ProtocolError) as exc:
        reason = getattr(exc, "reason", "") or str(exc)
        write_batch(stream, [w.Rejected(reason)])
        stream.close()
        raise AuthenticationError(reason) from exc
    except (TimeoutError, StreamClosedError) as exc:
        stream.close()
        raise AuthenticationError("the peer did not complete the handshake") from exc
    welcome.client_id = hello.client_id
    write_batch(stream, [welcome])
    return hello


async def connect_tornado(
    address: Address | str, token: bytes, hello: w.Hello, tls: TLS | None = None
) -> tuple[IOStream, w.Welcome]:
    """As ``connect_blocking``, for a daemon's event loop."""
    from tornado.iostream import IOStream
    from tornado.tcpclient import TCPClient

    if isinstance(address, str):
        address = parse_address(address)
    if address.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stream = IOStream(sock)
        await stream.connect(address.path)
    else:
        stream = await TCPClient().connect(address.host, address.port)
        stream.set_nodelay(True)
    challenge = await read_batch(stream, w.HANDSHAKE, HELLO_LIMIT)
    if tls is not None or (challenge and isinstance(challenge[0], w.StartTLS)):
        from taskgraph import _tls

        stream, challenge = await _tls.connect_tornado(stream, challenge, tls, str(address))
    if len(challenge) != 1 or not isinstance(challenge[0], w.Challenge):
        stream.close()
        raise ClusterConnectionError(f"{address} is not a taskgraph scheduler")
    hello.digest = digest(token, challenge[0].nonce)
    write_batch(stream, [hello])
    reply = await read_batch(stream, w.HANDSHAKE)
    if reply and isinstance(reply[0], w.Rejected):
        stream.close()
        raise AuthenticationError(reply[0].reason, peer=str(address))
    if not reply or not isinstance(reply[0], w.Welcome):
        stream.close()
        raise ClusterConnectionError(f"{address} answered the handshake with {reply!r}")
    return stream, reply[0]
