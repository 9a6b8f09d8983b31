"""TLS between a cluster's processes: whose certificates, the SSL contexts made
from them, and the switch to TLS at the start of a connection.

A cluster with TLS has a certificate authority of its own (``taskgraph tls
init`` makes one, ``_tls_certs.py``). Every process holds a certificate the CA
signed, that certificate's key, and the CA's certificate; each end of a
connection checks the other's certificate against the CA (mutual TLS). Host
names are not checked: the CA is the cluster's alone, so whatever it signed
belongs to the cluster, and peers' addresses (workers' peer servers) are not
known when certificates are made.

Where the switch happens, before the token's handshake (``_transport.py``)::

    server ── StartTLS ──────────────────▶ peer   (plain text; a server without
    server ◀═ TLS handshake, both certs ═▶ peer    TLS sends Challenge instead)
    server ══ Challenge / Hello / Welcome ═▶ peer  (inside TLS from here on)

TLS on either end means no plain TCP between them, and both ends say why:
a peer without certificates that is sent ``StartTLS`` raises, and the
server logs that it closed without starting TLS; a peer with certificates
that is sent a plain ``Challenge`` answers ``Rejected`` (which the server
logs) and raises.

The links that switch: every connection to the scheduler (its TCP port, and
a local cluster's Unix socket) and to workers' peer servers. Those that
never leave a host stay plain (executor and daemon, the object store,
results and channels to a driver): docs/security.md says why.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from taskgraph import _wire as w
from taskgraph import config
from taskgraph._transport import HANDSHAKE_TIMEOUT, HELLO_LIMIT, read_batch, write_batch
from taskgraph.exceptions import AuthenticationError, ClusterConnectionError, ProtocolError
from taskgraph.settings import settings

from ._tls_socket import TLSSocket

if TYPE_CHECKING:
    import socket

    from tornado.iostream import IOStream

# What a process is told when its TLS settings do not fit the cluster's.
ADVICE = (
    "Every process of a cluster with TLS needs a certificate signed by the cluster's CA, "
    "its key, and the CA's certificate: --tls-cert/--tls-key/--tls-ca, "
    "tg.init(tls_cert=, tls_key=, tls_ca=) or TASKGRAPH_TLS_CERT/_KEY/_CA "
    "(docs/security.md)."
)
FLAGS = ("--tls-cert", "--tls-key", "--tls-ca")
KEYWORDS = ("tls_cert", "tls_key", "tls_ca")
_VARIABLES = ("TASKGRAPH_TLS_CERT", "TASKGRAPH_TLS_KEY", "TASKGRAPH_TLS_CA")
_RECORDED = (
    "the scheduler's record's tls_cert",
    "the scheduler's record's tls_key",
    "the scheduler's record's tls_ca",
)


@dataclass(frozen=True)
class TLS:
    """A process's certificate, its key and the cluster's CA certificate (absolute
    paths); made by ``load``, which checks that they can be used."""

    cert: str
    key: str
    ca: str

    @classmethod
    def load(cls, cert: str, key: str, ca: str, names: tuple[str, str, str] = FLAGS) -> TLS:
        """Check the three files and read them; ``ValueError`` says which one is
        wrong and how, naming it as the user gave it (``names``)."""
        for name, path in zip(names, (cert, key, ca), strict=True):
            _check_readable(name, path)
        tls = cls(*(os.path.abspath(p) for p in (cert, key, ca)))
        try:
            tls.client_context  # noqa: B018 - read now: a bad file fails the start, not a connection
            tls.server_context  # noqa: B018
        except ssl.SSLError as exc:
            raise ValueError(_unusable(names, tls, exc)) from None
        return tls

    @cached_property
    def server_context(self) -> ssl.SSLContext:
        """For a listener: asks every peer for a certificate the CA signed."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._configure(context)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    @cached_property
    def client_context(self) -> ssl.SSLContext:
        """For connecting: shows our certificate, checks the server's against the CA."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # (see the module's docstring)
        self._configure(context)
        return context

    def _configure(self, context: ssl.SSLContext) -> None:
        # Only our own processes speak to each other: the newest version will do.
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(self.cert, self.key)
        context.load_verify_locations(cafile=self.ca)

    def args(self) -> list[str]:
        """The command-line flags that give a child process these files."""
        return [
            arg for pair in zip(FLAGS, (self.cert, self.key, self.ca), strict=True) for arg in pair
        ]

    def record(self) -> dict[str, str]:
        """What a scheduler's record on this host keeps, for ``tg.init("auto")`` and
        the ``taskgraph`` commands (the paths, not the files)."""
        return {"tls_cert": self.cert, "tls_key": self.key, "tls_ca": self.ca}


def resolve(
    cert: str | None,
    key: str | None,
    ca: str | None,
    *,
    names: tuple[str, str, str] = FLAGS,
    address: str | None = None,
) -> TLS | None:
    """This process's TLS: each file as given (``names`` say how, for errors), else
    from ``TASKGRAPH_TLS_*``; with none of them, what this host's record of the
    scheduler at ``address`` keeps; None: no TLS."""
    env = settings()
    chosen: list[tuple[str, str]] = []
    for given, name, from_env, variable in zip(
        (cert, key, ca), names, (env.tls_cert, env.tls_key, env.tls_ca), _VARIABLES, strict=True
    ):
        chosen.append((name, given) if given else (variable, from_env))
    if not any(path for _, path in chosen):
        record = config.scheduler_record(address) if address else None
        if record is None or not record.get("tls_cert"):
            return None
        return TLS.load(record["tls_cert"], record["tls_key"], record["tls_ca"], _RECORDED)
    missing = [
        f"{name} (or {var})"
        for name, var, (_, path) in zip(names, _VARIABLES, chosen, strict=True)
        if not path
    ]
    if missing:
        given_names = ", ".join(name for name, path in chosen if path)
        raise ValueError(
            "TLS needs three files: a certificate, its key and the cluster's CA certificate; "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing "
            f"(given: {given_names})"
        )
    (cert_name, cert_path), (key_name, key_path), (ca_name, ca_path) = chosen
    return TLS.load(cert_path, key_path, ca_path, (cert_name, key_name, ca_name))


def _shown(name: str, path: str) -> str:
    """A setting as the user gave it: ``--tls-cert F``, ``tls_cert='F'``,
    ``TASKGRAPH_TLS_CERT=F`` (or where it was found: ``the scheduler's record's ... F``)."""
    if name.startswith("--") or " " in name:
        return f"{name} {path}"
    return f"{name}={path!r}" if name.islower() else f"{name}={path}"


def _check_readable(name: str, path: str) -> None:
    given = _shown(name, path)
    try:
        with open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError:
        raise ValueError(f"{given}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{given}: a folder, not a file") from None
    except PermissionError:
        raise ValueError(f"{given}: this user (uid {os.getuid()}) may not read it") from None
    except OSError as exc:
        raise ValueError(f"{given}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{given}: not a regular file")


def _unusable(names: tuple[str, str, str], tls: TLS, exc: ssl.SSLError) -> str:
    """Which file OpenSSL refused, and why, in words (its own are "PEM lib")."""
    cert, key, ca = (_shown(n, p) for n, p in zip(names, (tls.cert, tls.key, tls.ca), strict=True))
    if b"-----BEGIN CERTIFICATE-----" not in _head(tls.cert):
        return f"{cert}: not a PEM certificate (no BEGIN CERTIFICATE line)"
    if b"PRIVATE KEY-----" not in _head(tls.key):
        return f"{key}: not a PEM private key (no BEGIN PRIVATE KEY line)"
    if b"-----BEGIN CERTIFICATE-----" not in _head(tls.ca):
        return f"{ca}: not a PEM CA certificate (no BEGIN CERTIFICATE line)"
    if exc.reason == "KEY_VALUES_MISMATCH":
        return f"{key} is not the key of {cert}"
    return f"{cert} with {key} and {ca}: unusable ({exc.reason or exc})"


def _head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(1 << 20)


# -- what each end says ---------------------------------------------------------


def tls_required(peer: str) -> ClusterConnectionError:
    return ClusterConnectionError(
        f"{peer} asks for TLS (its cluster was started with certificates), and this "
        "process has none",
        advice=ADVICE,
    )


PLAIN_REFUSED = "it has TLS certificates and refuses plain TCP; start this one with them too"


def plain_refused(peer: str) -> ClusterConnectionError:
    return ClusterConnectionError(
        f"{peer} speaks plain TCP (started without TLS certificates), and this process "
        "has certificates: it refuses plain TCP",
        advice="Start the cluster with --tls-cert/--tls-key/--tls-ca, or give this process "
        "no TLS settings (docs/security.md).",
    )


def explain(exc: BaseException, peer: str, tls: TLS) -> ClusterConnectionError:
    """A failed TLS exchange, as the side that connected says it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = (
            f"the certificate of {peer} is not signed by this cluster's CA ({tls.ca}): "
            f"{exc.verify_message}"
        )
    elif isinstance(exc, ssl.SSLError) and "ALERT" in (exc.reason or ""):
        reason = (
            f"{peer} refused this process's certificate ({exc.reason}): it must be signed "
            f"by the CA {peer} was given"
        )
    else:
        reason = f"TLS with {peer} failed: {exc}"
    return ClusterConnectionError(reason, advice=ADVICE)


def refusal(exc: BaseException | None) -> str:
    """A failed TLS exchange, as the server logs it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its certificate is not signed by this cluster's CA ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError) and exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "it showed no certificate"
    if isinstance(exc, ssl.SSLError) and "ALERT" in (exc.reason or ""):
        return f"it refused this process's certificate ({exc.reason}): it trusts another CA"
    if isinstance(exc, ssl.SSLError) and exc.reason not in (None, "UNEXPECTED_EOF_WHILE_READING"):
        return f"TLS failed ({exc.reason})"
    return (
        "it closed without starting TLS (a process without the cluster's certificates? "
        "it was told why)"
    )


def _cause(exc: OSError) -> BaseException | None:
    """What broke a Tornado stream: an SSL error, say (None: the peer closed)."""
    from tornado.iostream import StreamClosedError

    return exc.real_error if isinstance(exc, StreamClosedError) else exc


def starts_tls(first: list[Any]) -> bool:
    return len(first) == 1 and isinstance(first[0], w.StartTLS)


# -- Tornado ----------------------------------------------------------------------


async def accept_tornado(stream: IOStream, tls: TLS) -> IOStream:
    """A server's side: say ``StartTLS``, then the TLS handshake (the peer's
    certificate checked) under the handshake's deadline. Returns the TLS stream;
    on failure raises ``AuthenticationError`` (its ``reason`` says why), the
    connection closed: by Tornado, whose TLS stream closes on an error, and on
    being given up at the deadline."""
    try:
        await stream.write(w.encode([w.StartTLS()]))
        start = stream.start_tls(True, tls.server_context)
        return await asyncio.wait_for(start, HANDSHAKE_TIMEOUT)
    except TimeoutError:  # (before OSError, of which it is one)
        raise AuthenticationError(
            f"it did not finish a TLS handshake within {HANDSHAKE_TIMEOUT:g} s"
        ) from None
    except OSError as exc:  # (Tornado's StreamClosedError is one; so are SSL errors)
        raise AuthenticationError(refusal(_cause(exc))) from exc


async def connect_tornado(
    stream: IOStream, first: list[Any], tls: TLS | None, peer: str
) -> tuple[IOStream, list[Any]]:
    """A connecting side that has TLS settings or was sent ``StartTLS``: the stream
    to go on with and the first frame read on it, or ``ClusterConnectionError``."""
    if tls is None:
        stream.close()
        raise tls_required(peer)
    if not starts_tls(first):
        write_batch(stream, [w.Rejected(PLAIN_REFUSED)])
        stream.close()
        raise plain_refused(peer)
    # (Until the handshake is done, Tornado closes the connection on an error, and
    # when it is given up at the deadline.)
    start = stream.start_tls(False, tls.client_context)
    try:
        secure = await asyncio.wait_for(start, HANDSHAKE_TIMEOUT)
    except TimeoutError:  # (before OSError, of which it is one)
        raise ClusterConnectionError(
            f"the TLS handshake with {peer} took over {HANDSHAKE_TIMEOUT:g} s"
        ) from None
    except OSError as exc:
        raise explain(_cause(exc) or exc, peer, tls) from exc
    try:
        # The server's verdict on our certificate comes with its first frame.
        return secure, await read_batch(secure, w.HANDSHAKE, HELLO_LIMIT)
    except OSError as exc:
        secure.close()
        raise explain(_cause(exc) or exc, peer, tls) from exc
    except BaseException:
        secure.close()
        raise


# -- blocking sockets --------------------------------------------------------------


def connect_blocking(
    sock: socket.socket, first: list[Any], tls: TLS | None, peer: str
) -> tuple[socket.socket, list[Any]]:
    """As ``connect_tornado``, on a blocking socket (its timeout the handshake's):
    the socket to go on with (a ``TLSSocket``) and the first frame read on it.
    On failure ``sock`` is closed."""
    from taskgraph._transport import recv_frame

    if tls is None:
        sock.close()
        raise tls_required(peer)
    if not starts_tls(first):
        try:
            sock.sendall(w.encode([w.Rejected(PLAIN_REFUSED)]))
        except OSError:
            pass
        sock.close()
        raise plain_refused(peer)
    secure = TLSSocket(sock, tls.client_context)
    try:
        secure.handshake()
        # The server's verdict on our certificate comes with its first frame.
        return secure, w.HANDSHAKE.decode(recv_frame(secure, HELLO_LIMIT))
    except ssl.SSLError as exc:
        secure.close()
        raise explain(exc, peer, tls) from exc
    except TimeoutError:  # (before OSError, of which it is one)
        secure.close()
        raise ClusterConnectionError(
            f"the TLS handshake with {peer} took over {HANDSHAKE_TIMEOUT:g} s"
        ) from None
    except (OSError, ProtocolError) as exc:  # (ClusterConnectionError is an OSError too)
        secure.close()
        raise ClusterConnectionError(f"{peer} closed during the TLS handshake") from exc
    except BaseException:
        secure.close()
        raise
