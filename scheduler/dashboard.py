"""The scheduler's HTTP port: the dashboard's pages, their JSON, and ``/metrics``.

::

    /                  redirects to /status
    /status /workers   Bokeh server applications (scheduler/pages.py: the list),
    /actors /objects   websockets and all
    /graph /logs
    /api/status        task counts, in all and by function; each node's store
    /api/workers       a row per node
    /api/tasks?limit=  the last task events (100 unless told)
    /api/actors        a row per actor (alive ones first), counts by state
    /api/objects       the largest objects, with who holds them and their call sites
    /api/graph         the task graph's nodes (places, states) and edges (scheduler/graph_feed.py)
    /api/logs?node=    the last lines of each of a node's log files
    /api/timeline      the finished tasks as a Chrome trace (as tg.timeline() writes)
    /metrics           Prometheus text (scheduler/metrics.py)

One HTTP server in the scheduler's process and event loop, beside its TCP
server, with two Tornado applications behind a ``Routes``: our own handlers
(``/``, ``/api/*``, ``/metrics``) and the pages, a ``BokehTornado`` (as
dask.distributed mounts its dashboard). Bokeh costs about half a second of
CPU to import, which every cluster would pay at its start and most never
use, so the port serves the JSON and ``/metrics`` from the start and the
pages are made when the first page is asked for (``LazyPages``: Bokeh is
imported in a thread, the loop serving meanwhile; that request waits for
it). Pages and JSON read the ``Feed``'s snapshots (scheduler/feed.py);
``/metrics`` its collectors' own.
What takes time is not done on the loop: a node's log lines are awaited (its
daemon reads them), the largest objects are found a step at a time, and the
timeline's trace is made and encoded in a thread from a copy of the finished
tasks' events (once per window: kept until another task finishes).
Nothing here changes the cluster or needs its token: it shows numbers, and
listens on 127.0.0.1 unless told otherwise. Bokeh's websockets accept pages
opened from this address only (and localhost's, for a loopback one), so
another site open in the browser cannot read the cluster through them.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from tornado import httputil, web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets
from tornado.routing import Router

from taskgraph import config
from taskgraph._timeline import trace_events

from . import pages
from .feed import Feed
from .history import TaskEvent
from .http_guard import Guarded, allowed_hosts

if TYPE_CHECKING:
    from bokeh.application import Application
    from bokeh.server.tornado import BokehTornado

log = logging.getLogger("taskgraph.scheduler")
# A tab closed between two updates makes Bokeh warn that it could not send the
# second; that is how tabs end, not a fault, and it reached the driver's terminal.
# (Set before Bokeh is imported: a logger's level outlives its import.)
logging.getLogger("bokeh.server.views.ws").setLevel(logging.ERROR)

DEFAULT_PORT = config.DASHBOARD_PORT


class MetricsHandler(Guarded):
    def initialize(self, registry: CollectorRegistry, hosts: frozenset[str] | None) -> None:
        self.registry = registry
        self.hosts = hosts

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(generate_latest(self.registry))


API = ("status", "workers", "tasks", "actors", "objects", "graph", "logs", "timeline")


class Timeline:
    """``/api/timeline``'s trace: made in a thread, one at a time, and kept while no
    task finished since (however many download it)."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.made = 0  # traces made
        self._trace: tuple[int, asyncio.Future[bytes]] | None = None  # (its window's newest, it)

    async def trace(self) -> bytes:
        newest, events = self.feed.finished()
        if self._trace is None or self._trace[0] != newest:
            making = asyncio.get_running_loop().run_in_executor(None, trace_json, events)
            self._trace = (newest, making)
            self.made += 1
        making = self._trace[1]
        try:
            return await asyncio.shield(making)
        except Exception:
            if self._trace is not None and self._trace[1] is making:
                self._trace = None  # (the next reader has it made again)
            raise


class ApiHandler(Guarded):
    def initialize(self, feed: Feed, timeline: Timeline, hosts: frozenset[str] | None) -> None:
        self.feed = feed
        self.timeline = timeline
        self.hosts = hosts

    async def get(self, what: str) -> None:
        if what == "status":
            self.write(self.feed.current().status())
        elif what == "workers":
            snap = self.feed.current()
            self.write({"time": snap.taken, "workers": snap.nodes})
        elif what == "tasks":
            limit = self.get_query_argument("limit", "100")
            if not limit.isdigit():
                raise web.HTTPError(400, reason=f"limit must be a whole number, not {limit!r}")
            snap = self.feed.current()
            self.write({"time": snap.taken, "tasks": snap.tasks(int(limit))})
        elif what == "actors":
            self.write(self.feed.actors().json())
        elif what == "objects":
            self.write((await self.feed.objects_made()).json())
        elif what == "graph":
            from .graph_feed import graph_feed  # (networkx: when the graph is first asked for)

            self.write(graph_feed(self.feed).current().to_json())
        elif what == "logs":
            await self._logs()
        elif what == "timeline":
            trace = await self.timeline.trace()
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.write(trace)
        else:
            known = ", ".join(f"/api/{name}" for name in API)
            raise web.HTTPError(404, reason=f"no /api/{what} (there are {known})")

    async def _logs(self) -> None:
        node = self.get_query_argument("node", "")
        if not node:
            nodes = ", ".join(n["node_id"] for n in self.feed.current().nodes) or "none yet"
            raise web.HTTPError(400, reason=f"say which node: /api/logs?node=ID (nodes: {nodes})")
        if self.feed.logs is None:
            raise web.HTTPError(404, reason="this scheduler reads no log files")
        answer = await self.feed.logs.read(node)
        if answer.unknown:
            raise web.HTTPError(404, reason=answer.error)
        self.write(answer.json())


def trace_json(events: list[TaskEvent]) -> bytes:
    """The tasks' events as the Chrome trace ``tg.timeline()`` writes (taskgraph/_timeline.py),
    encoded: made in a thread, as it costs time in proportion to the window."""
    records: list[dict[str, Any]] = [event.record(detail=True) for event in events]
    return json.dumps(trace_events(records)).encode()


class Dashboard:
    """The HTTP port's server and its applications; ``stop()`` ends them.
    ``pages``: the Bokeh pages, made when the first is asked for."""

    def __init__(self, registry: CollectorRegistry, feed: Feed, socks: list[socket.socket]):
        self.feed = feed
        host, port = socks[0].getsockname()[:2]
        hosts = allowed_hosts(host, port)
        self.own = web.Application(
            [
                (r"/", web.RedirectHandler, {"url": "/status"}),
                (r"/metrics", MetricsHandler, {"registry": registry, "hosts": hosts}),
                (
                    r"/api/(\w+)",
                    ApiHandler,
                    {"feed": feed, "timeline": Timeline(feed), "hosts": hosts},
                ),
            ]
        )
        self.pages = LazyPages(lambda: pages.applications(feed), origins(host, port))
        self.server = HTTPServer(Routes(self.own, self.pages))
        for sock in socks:
            sock.setblocking(False)
        self.server.add_sockets(socks)

    def stop(self) -> None:
        self.server.stop()
        self.pages.stop()


# The paths the Bokeh application answers: each page's (its document, websocket,
# autoload.js, metadata and static files under it) and Bokeh's static files.
PAGE_PATHS = re.compile(
    "/(?:{})(?:/.*)?".format(
        "|".join(re.escape(p[1:]) for p in (*pages.PAGES, *pages.FRAMES, "/static"))
    )
)


class Routes(Router):
    """Sends a page's request to the Bokeh application (made on the first) and the
    rest to our own. The favicon is Bokeh's once there are pages; before, none."""

    def __init__(self, own: web.Application, pages: LazyPages) -> None:
        self.own = own
        self.pages = pages

    def find_handler(
        self, request: httputil.HTTPServerRequest, **kwargs: Any
    ) -> httputil.HTTPMessageDelegate:
        path = request.path
        if PAGE_PATHS.fullmatch(path) or (path == "/favicon.ico" and self.pages.app is not None):
            return self.pages.delegate(request, self.own)
        return self.own.find_handler(request)


class LazyPages:
    """The ``BokehTornado`` serving the pages, made by the first request for one:
    Bokeh and the pages' modules are imported in a thread (the loop serves the
    cluster meanwhile), then the application is made on the loop. Requests that
    come meanwhile wait for it. ``app``: None until made."""

    def __init__(
        self, applications: Callable[[], dict[str, Application]], websocket_origins: list[str]
    ) -> None:
        self.applications = applications
        self.websocket_origins = websocket_origins
        self.app: BokehTornado | None = None
        self._making: asyncio.Future[BokehTornado] | None = None

    def delegate(
        self, request: httputil.HTTPServerRequest, own: web.Application
    ) -> httputil.HTTPMessageDelegate:
        if self.app is not None:
            return self.app.find_handler(request)
        return _WhenMade(self, request, own)

    def made(self) -> Awaitable[BokehTornado]:
        """The application, once made (the first call starts making it)."""
        if self._making is None:
            self._making = asyncio.ensure_future(self._make())
        return asyncio.shield(self._making)

    async def _make(self) -> BokehTornado:
        try:
            tornado_app = await asyncio.get_running_loop().run_in_executor(None, _import_bokeh)
            app = tornado_app(
                self.applications(),
                extra_websocket_origins=self.websocket_origins,
                use_index=False,
                redirect_root=False,
            )
            app.initialize(IOLoop.current())
            app.start()
        except BaseException:
            self._making = None  # (the next request tries again)
            raise
        self.app = app
        return app

    def stop(self) -> None:
        if self.app is not None:
            self.app.stop()


def _import_bokeh() -> type[BokehTornado]:
    """Imports Bokeh's server and the pages' modules (run in a thread)."""
    from bokeh.server.tornado import BokehTornado

    pages.builders()
    return BokehTornado


class _WhenMade(httputil.HTTPMessageDelegate):
    """A page's request that came before the pages were made: its headers wait until
    they are (Tornado reads nothing more of the request meanwhile), then it goes
    to the Bokeh application, as later requests do at once. Had making them
    failed, it gets a 503 from our own application."""

    def __init__(
        self, pages: LazyPages, request: httputil.HTTPServerRequest, own: web.Application
    ) -> None:
        self.pages = pages
        self.request = request
        self.own = own
        self.delegate: httputil.HTTPMessageDelegate | None = None

    async def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        try:
            app = await self.pages.made()
            self.delegate = app.find_handler(self.request)
        except Exception:
            log.exception("the dashboard could not make its pages")
            self.delegate = self.own.get_handler_delegate(
                self.request, web.ErrorHandler, {"status_code": 503}
            )
        received = self.delegate.headers_received(start_line, headers)
        if received is not None:
            await received

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        assert self.delegate is not None
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        assert self.delegate is not None
        self.delegate.finish()

    def on_connection_close(self) -> None:
        if self.delegate is not None:
            self.delegate.on_connection_close()


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
