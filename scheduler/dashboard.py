"""The scheduler's HTTP port: ``/metrics`` (Prometheus text) for now; the
dashboard's pages will join it here (CONVENTIONS.md, "Dashboard and output").

Runs in the scheduler's process and event loop, beside its TCP server, and
only reads: the registry's collectors take their snapshots as each request
comes. Nothing here needs the cluster's token: it shows numbers, and it
listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import errno
import logging
import socket

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

log = logging.getLogger("taskgraph.scheduler")

DEFAULT_PORT = 8686  # neither Ray's 8265 nor Dask's 8787


class MetricsHandler(web.RequestHandler):
    def initialize(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(generate_latest(self.registry))


def make_app(registry: CollectorRegistry) -> web.Application:
    return web.Application([(r"/metrics", MetricsHandler, {"registry": registry})])


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on ``host:port``; when that port is taken, on a free one
    (said in the log, as Dask does). Port 0: any free port."""
    try:
        return bind_sockets(port, host)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0:
            raise
    socks = bind_sockets(0, host)
    log.warning(
        "the dashboard's port %d is taken (another cluster's?); it is on port %d instead",
        port,
        socks[0].getsockname()[1],
    )
    return socks


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def serve(registry: CollectorRegistry, socks: list[socket.socket]) -> HTTPServer:
    server = HTTPServer(make_app(registry))
    for sock in socks:
        sock.setblocking(False)
    server.add_sockets(socks)
    return server
