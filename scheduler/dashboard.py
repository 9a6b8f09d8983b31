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
    /api/graph         the task graph's nodes (places, states) and edges (scheduler/graph_page.py)
    /api/logs?node=    the last lines of each of a node's log files
    /api/timeline      the finished tasks as a Chrome trace (as tg.timeline() writes)
    /metrics           Prometheus text (scheduler/metrics.py)

One Tornado application, a ``BokehTornado`` with our handlers as its extra
patterns (as dask.distributed mounts its dashboard), in the scheduler's
process and event loop beside its TCP server. Pages and JSON read the
``Feed``'s snapshots (scheduler/feed.py); ``/metrics`` its collectors' own.
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
import socket
from typing import Any

from bokeh.server.tornado import BokehTornado
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from taskgraph import config
from taskgraph._timeline import trace_events

from . import graph_page, pages
from .feed import Feed
from .history import TaskEvent
from .http_guard import Guarded, allowed_hosts

log = logging.getLogger("taskgraph.scheduler")
# A tab closed between two updates makes Bokeh warn that it could not send the
# second; that is how tabs end, not a fault, and it reached the driver's terminal.
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
    """The HTTP port's server and application; ``stop()`` ends both."""

    def __init__(self, registry: CollectorRegistry, feed: Feed, socks: list[socket.socket]):
        self.feed = feed
        port = socks[0].getsockname()[1]
        hosts = allowed_hosts(socks[0].getsockname()[0], port)
        self.app = BokehTornado(
            pages.applications(feed),
            extra_patterns=[
                (r"/", web.RedirectHandler, {"url": "/status"}),
                (r"/metrics", MetricsHandler, {"registry": registry, "hosts": hosts}),
                (r"/api/graph", graph_page.GraphApi, {"feed": feed, "hosts": hosts}),
                (
                    r"/api/(\w+)",
                    ApiHandler,
                    {"feed": feed, "timeline": Timeline(feed), "hosts": hosts},
                ),
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
