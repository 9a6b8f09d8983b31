"""The driver's TLS socket: one thread reads while others write, as a driver's
reader and flusher threads do, and every byte arrives in order, both ways."""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from taskgraph import _tls_certs
from taskgraph import _wire as w
from taskgraph._tls import TLS
from taskgraph._tls_socket import TLSSocket
from taskgraph._transport import BlockingConnection


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLS:
    folder = tmp_path_factory.mktemp("certs")
    _tls_certs.init(folder, ["node"], days=1)
    return TLS.load(str(folder / "node.pem"), str(folder / "node-key.pem"), str(folder / "ca.pem"))


def strict(context: ssl.SSLContext) -> ssl.SSLContext:
    # Python 3.13's default contexts check certificates strictly; ours must pass.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


@pytest.fixture
def pair(tls: TLS) -> Iterator[tuple[TLSSocket, TLSSocket]]:
    a, b = socket.socketpair()
    a.settimeout(30)
    b.settimeout(30)
    client = TLSSocket(a, strict(tls.client_context))
    server = TLSSocket(b, strict(tls.server_context), server_side=True)
    handshake = threading.Thread(target=server.handshake)
    handshake.start()
    client.handshake()
    handshake.join()
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def message(sender: int, n: int) -> bytes:
    """A message that says who sent it and its number, of a size that varies."""
    body = hashlib.sha256(f"{sender}:{n}".encode()).digest() * (1 + (n * 37) % 3000)
    return (
        len(body).to_bytes(4, "little")
        + sender.to_bytes(2, "little")
        + n.to_bytes(4, "little")
        + body
    )


def read_messages(sock: socket.socket, count: int) -> dict[int, list[int]]:
    """Read ``count`` messages, checking each body; the numbers seen per sender."""
    rfile = sock.makefile("rb")
    seen: dict[int, list[int]] = {}
    for _ in range(count):
        size = int.from_bytes(rfile.read(4), "little")
        sender = int.from_bytes(rfile.read(2), "little")
        n = int.from_bytes(rfile.read(4), "little")
        body = rfile.read(size)
        assert message(sender, n)[10:] == body, f"message {n} of {sender} arrived damaged"
        seen.setdefault(sender, []).append(n)
    rfile.close()
    return seen


def test_one_thread_reads_while_others_write(pair: tuple[TLSSocket, TLSSocket]) -> None:
    client, server = pair
    writers, each, replies = 4, 150, 600
    got: dict[str, dict[int, list[int]]] = {}
    errors: list[BaseException] = []

    def run(name: str, fn: object, *args: object) -> threading.Thread:
        def target() -> None:
            try:
                result = fn(*args)  # type: ignore[operator]
                if result is not None:
                    got[name] = result
            except BaseException as exc:  # reported by the test below
                errors.append(exc)

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    def write(sock: TLSSocket, sender: int, count: int) -> None:
        for n in range(count):
            sock.sendall(message(sender, n))

    threads = [
        run("server reads", read_messages, server, writers * each),
        run("client reads", read_messages, client, replies),
        run("server writes", write, server, 99, replies),
        *(run(f"writer {i}", write, client, i, each) for i in range(writers)),
    ]
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert got["server reads"] == {i: list(range(each)) for i in range(writers)}
    assert got["client reads"] == {99: list(range(replies))}


def test_frames_cross_through_a_blocking_connection(pair: tuple[TLSSocket, TLSSocket]) -> None:
    client, server = pair
    conn = BlockingConnection(client, w.HANDSHAKE)
    big = w.Rejected("x" * (3 << 20))  # several TLS records, several encryption chunks
    received: list[object] = []
    reader = threading.Thread(
        target=lambda: received.extend(BlockingConnection(server, w.HANDSHAKE).recv())
    )
    reader.start()
    conn.send([big, w.StartTLS()])
    reader.join(30)
    assert received == [big, w.StartTLS()]
    server.send(w.encode([w.Rejected("back")]))
    assert conn.recv() == [w.Rejected("back")]


def test_a_closed_peer_reads_as_the_end(pair: tuple[TLSSocket, TLSSocket]) -> None:
    client, server = pair
    server.sendall(b"last words")
    server.shutdown(socket.SHUT_RDWR)
    assert client.recv(100) == b"last words"
    assert client.recv(100) == b""
