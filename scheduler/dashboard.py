"""The scheduler's HTTP port: the dashboard's pages, their JSON, and ``/metrics``.

::

    /                 redirects to /status
    /status /workers  Bokeh server applications (scheduler/pages.py), websockets and all
    /api/status       task counts, in all and by function
    /api/workers      a row per node
    /api/tasks?limit= the last task events (100 unless told)
    /metrics          Prometheus text (scheduler/metrics.py)

One Tornado application, a ``BokehTornado`` with our handlers as its extra
patterns (as dask.distributed mounts its dashboard), in the scheduler's
process and event loop beside its TCP server. Pages and JSON read the
``Feed``'s snapshot (scheduler/feed.py); ``/metrics`` its collectors' own.
Nothing here changes the cluster or needs its token: it shows numbers, and
listens on 127.0.0.1 unless told otherwise. Bokeh's websockets accept pages
opened from this address only (and localhost's, for a loopback one), so
another site open in the browser cannot read the cluster through them.
"""

from __future__ import annotations

import errno
import logging
import socket

from bokeh.server.tornado import BokehTornado
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from . import graph_page, pages
from .feed import Feed

log = logging.getLogger("taskgraph.scheduler")

DEFAULT_PORT = 8686  # neither Ray's 8265 nor Dask's 8787


class MetricsHandler(web.RequestHandler):
    def initialize(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(generate_latest(self.registry))


class ApiHandler(web.RequestHandler):
    def initialize(self, feed: Feed) -> None:
        self.feed = feed

    def get(self, what: str) -> None:
        snap = self.feed.current()
        if what == "status":
            self.write(snap.status())
        elif what == "workers":
            self.write({"time": snap.taken, "workers": snap.nodes})
        elif what == "tasks":
            limit = self.get_query_argument("limit", "100")
            if not limit.isdigit():
                raise web.HTTPError(400, reason=f"limit must be a whole number, not {limit!r}")
            self.write({"time": snap.taken, "tasks": snap.tasks(int(limit))})
        else:
            known = "/api/status, /api/workers, /api/tasks"
            raise web.HTTPError(404, reason=f"no /api/{what} (there are {known})")


class Dashboard:
    """The HTTP port's server and application; ``stop()`` ends both."""

    def __init__(self, registry: CollectorRegistry, feed: Feed, socks: list[socket.socket]):
        self.feed = feed
        port = socks[0].getsockname()[1]
        self.app = BokehTornado(
            pages.applications(feed),
            extra_patterns=[
                (r"/", web.RedirectHandler, {"url": "/status"}),
                (r"/metrics", MetricsHandler, {"registry": registry}),
                (r"/api/graph", graph_page.GraphApi, {"feed": feed}),
                (r"/api/(\w+)", ApiHandler, {"feed": feed}),
            ],
            extra_websocket_origins=origins(socks[0].getsockname()[0], port),
            use_index=False,
            redirect_root=False,
        )
        self.app.initialize(IOLoop.current())
        self.app.start()
        self.server = HTTPServer(self.app)
        for sock in socks:
            sock.setblocking(False)
        self.server.add_sockets(socks)

    def stop(self) -> None:
        self.server.stop()
        self.app.stop()


def origins(host: str, port: int) -> list[str]:
    """Where a page must come from to open Bokeh's websocket: this address, and for
    loopback ones the names a browser may use for it; on all interfaces, any."""
    if host in ("0.0.0.0", "::"):
        return ["*"]
    names = {host}
    if host in ("127.0.0.1", "::1", "localhost"):
        names |= {"localhost", "127.0.0.1", "[::1]"}
    return [
        f"{name if ':' not in name or name.startswith('[') else f'[{name}]'}:{port}"
        for name in names
    ]


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


def serve(registry: CollectorRegistry, feed: Feed, socks: list[socket.socket]) -> Dashboard:
    return Dashboard(registry, feed, socks)
