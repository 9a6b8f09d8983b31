"""A blocking TLS socket that one thread may read while others write.

A driver reads its scheduler connection on one thread and writes it from
others (``BlockingConnection``). ``ssl.SSLSocket`` cannot carry that: OpenSSL
forbids two threads in one connection's ``SSL_read`` and ``SSL_write`` at
once, and breaks in rare, timing-dependent ways when it happens. So here the
TLS state is an ``ssl.SSLObject`` over memory buffers, touched only under a
lock and never while waiting on the network::

    writer threads ── encrypt (lock) ── sendall ──────────▶ socket
    reader thread  ◀─ decrypt (lock) ◀─ recv (no lock) ◀─── socket

The socket stays a ``socket.socket`` (``makefile``, ``shutdown``, ``fileno``,
timeouts all work) whose ``send``/``recv`` family speaks TLS.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any, cast

RECV_CHUNK = 256 << 10  # bytes read from the network per recv
SEND_CHUNK = 1 << 20  # plain bytes encrypted at a time (a large frame is not copied whole)


class TLSSocket(socket.socket):
    """``sock``'s connection, now carried over TLS; ``sock`` is detached.
    ``handshake()`` must run before anything is sent or received."""

    def __init__(
        self, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool = False
    ) -> None:
        timeout = sock.gettimeout()
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self.settimeout(timeout)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._state = threading.Lock()  # every call into the SSLObject and its buffers
        self._sending = threading.Lock()  # encrypted bytes leave in the order they were made

    def handshake(self) -> None:
        """Run the TLS handshake; raises ``ssl.SSLError`` (the peer's certificate
        refused, say) or ``OSError``."""
        while True:
            try:
                with self._state:
                    self._tls.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                data = super().recv(RECV_CHUNK)
                if not data:
                    raise ConnectionResetError("the peer closed during the TLS handshake") from None
                with self._state:
                    self._incoming.write(data)
            except ssl.SSLError:
                self._flush()  # our alert tells the peer why
                raise

    def getpeercert(self) -> dict[str, Any] | None:
        return self._tls.getpeercert()

    def version(self) -> str | None:
        return self._tls.version()

    # -- writing -----------------------------------------------------------

    def sendall(self, data: Any, flags: int = 0) -> None:
        view = memoryview(data).cast("B")
        with self._sending:
            for start in range(0, len(view), SEND_CHUNK):
                with self._state:
                    self._tls.write(view[start : start + SEND_CHUNK])
                    out = self._outgoing.read()
                super().sendall(out)
            self._drain()

    def send(self, data: Any, flags: int = 0) -> int:
        # (A partial TLS write cannot be offered: all of it goes, or an error.)
        self.sendall(data)
        return len(memoryview(data).cast("B"))

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        # The plain socket's sendfile would put the file on the wire unencrypted.
        return self._sendfile_use_send(file, offset, count)  # type: ignore[attr-defined]

    def _drain(self) -> None:
        """Send what reading produced (a TLS 1.3 key update's answer); holds ``_sending``."""
        with self._state:
            out = self._outgoing.read()
        if out:
            super().sendall(out)

    def _flush(self) -> None:
        """Send what the TLS state has for the peer, unless a writer is at it (it
        drains before it lets go, so nothing is left behind for long)."""
        if self._sending.acquire(blocking=False):
            try:
                self._drain()
            finally:
                self._sending.release()

    # -- reading -----------------------------------------------------------

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        wanted = nbytes or len(view)
        if wanted == 0:
            return 0
        while True:
            with self._state:
                try:
                    # (With a buffer it answers how many bytes it wrote there.)
                    return cast(int, self._tls.read(wanted, view))
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:
                    return 0  # the peer ended TLS cleanly
                finally:
                    answer = self._outgoing.pending
            if answer:
                self._flush()
            # Waiting on the network without the lock: writers go on meanwhile.
            data = super().recv(RECV_CHUNK)
            if not data:
                return 0  # (a frame cut short is caught by its length)
            with self._state:
                self._incoming.write(data)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        buffer = bytearray(bufsize)
        n = self.recv_into(buffer)
        return bytes(buffer[:n])
