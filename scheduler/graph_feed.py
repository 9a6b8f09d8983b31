"""The ``/graph`` page's snapshots and ``/api/graph``'s: when the task graph is
read off the state and when, and where, it is laid out.

::

    GraphFeed.current(), at most every 0.2 s, by the first reader (on the loop)
      TaskGraph.update(history.since(seq), state.tasks)   the finished since the last, the live
      the set of nodes changed, no layout running ──▶ layout(shape) on the executor's thread
      a layout done ──▶ taken; GraphView = that Layout + the states now
                 ┌──────────────────────────────┴───────────────┐
    /graph (scheduler/graph_page.py)                       /api/graph (JSON)

The graph itself (which tasks, their edges, where they go) is in
``scheduler/graph.py``, pure; the page that draws it in ``graph_page.py``.
As the ``Feed``, a ``GraphFeed`` reads the state only when someone looks, at
most every ``PERIOD`` and at most ``BUDGET`` of the loop's time. Laying out
5,000 nodes takes tens of milliseconds, so it happens on a thread of its own
(``taskgraph-graph-layout``), one at a time, on a frozen copy of the nodes;
the loop keeps showing the last layout, with live states, until the next one
is done. The layout is pure Python and holds the GIL while it runs, so it
shares the loop's time rather than stalling it (the interpreter switches
threads every 5 ms); a layout that took ``t`` seconds waits ``t / BUDGET``
before the next may start, so at most ``BUDGET`` of the time goes to layouts.

No Bokeh here, so ``/api/graph`` needs none; networkx and numpy are imported
with this module, which the dashboard imports when the graph is first asked for.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .feed import BUDGET, PERIOD, Feed
from .graph import EMPTY, KEEP, LIMIT, GraphView, Layout, Shape, TaskGraph, layout

if TYPE_CHECKING:
    from .state import SchedulerState

log = logging.getLogger("taskgraph.scheduler")


class GraphFeed:
    """Makes the ``/graph`` page's snapshots off one ``SchedulerState``, which it only reads.

    ``executor`` runs the layouts (None: at once, in the caller; for tests)."""

    def __init__(
        self,
        state: SchedulerState,
        executor: Executor | None = None,
        period: float = PERIOD,
        keep: int = KEEP,
        limit: int = LIMIT,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.executor = executor
        self.period = period
        self.clock = clock
        self.wall = wall
        self.graph = TaskGraph(keep, limit)
        self.drawing = Drawing.of(EMPTY)  # the last layout done, ready to draw
        self.view = GraphView(EMPTY, [], [], 0)
        self.layouts = 0  # layouts done
        self.layout_seconds = 0.0  # what the last one took
        self._seq = 0  # the history's ``kept`` as of the last update
        self._asked = EMPTY.version  # the version of the nodes last sent to be laid out
        self._running: Future[tuple[Drawing, float]] | None = None
        self._next = 0.0  # when the next snapshot may be made (the feed's clock)
        self._next_layout = 0.0  # when the next layout may start

    def current(self) -> GraphView:
        now = self.clock()
        if now >= self._next:
            self.refresh(now)
            cost = self.clock() - now
            self._next = now + max(self.period, cost / BUDGET)
        return self.view

    def refresh(self, now: float) -> None:
        state, graph = self.state, self.graph
        history = state.history
        graph.update(history.since(self._seq), state.tasks.values())
        self._seq = history.kept
        self._take_layout(now)
        if graph.version != self._asked and self._running is None and now >= self._next_layout:
            self._asked = graph.version
            self._running = self._lay_out(graph.shape())
            self._take_layout(now)  # (done already when laid out in the caller)
        self.view = graph.view(self.drawing.layout, self.wall())

    def _lay_out(self, shape: Shape) -> Future[tuple[Drawing, float]]:
        clock = self.clock

        def lay_out() -> tuple[Drawing, float]:
            start = clock()
            done = Drawing.of(layout(shape))
            return done, clock() - start

        if self.executor is not None:
            return self.executor.submit(lay_out)
        future: Future[tuple[Drawing, float]] = Future()
        try:
            future.set_result(lay_out())
        except Exception as exc:
            future.set_exception(exc)
        return future

    def _take_layout(self, now: float) -> None:
        running = self._running
        if running is None or not running.done():
            return
        self._running = None
        try:
            self.drawing, self.layout_seconds = running.result()
        except Exception:  # (a bug in the layout must not take the scheduler down)
            log.exception("laying out the task graph failed; the page keeps the last layout")
            self._next_layout = now + 10 * self.period
            return
        self.layouts += 1
        self._next_layout = now + self.layout_seconds / BUDGET


@dataclass(frozen=True, slots=True)
class Drawing:
    """A ``Layout`` and what a page draws of it but the states (ids, names, places,
    edges), made with it off the loop: a page that takes a new layout only adds
    the states. (A collapsed graph's nodes, a handful, are made per update.)"""

    layout: Layout
    nodes: dict[str, Any]
    edges: dict[str, Any]

    @classmethod
    def of(cls, layout: Layout) -> Drawing:
        n = len(layout.keys)
        nodes: dict[str, Any] = {}
        if not layout.collapsed:
            nodes = {
                "key": [k.hex() for k in layout.keys if isinstance(k, bytes)],
                "name": list(layout.names),
                "tasks": np.ones(n, dtype=np.int64),
                "size": np.full(n, 14.0 if n <= 100 else 8.0 if n <= 1000 else 5.0),
                "x": np.array(layout.x),
                "y": np.array(layout.y),
            }
        return cls(layout, nodes, edge_columns(layout))


_feeds: weakref.WeakKeyDictionary[Feed, GraphFeed] = weakref.WeakKeyDictionary()


def graph_feed(feed: Feed) -> GraphFeed:
    """The one ``GraphFeed`` beside the dashboard's ``feed`` (the page and the JSON share it)."""
    graph = _feeds.get(feed)
    if graph is None:  # (its thread starts with the first layout, and is idle between them)
        executor = ThreadPoolExecutor(1, thread_name_prefix="taskgraph-graph-layout")
        graph = _feeds[feed] = GraphFeed(feed.state, executor, period=feed.period)
    return graph


def edge_columns(layout: Layout) -> dict[str, Any]:
    x, y = np.array(layout.x), np.array(layout.y)
    parents = np.array([s for s, _ in layout.edges], dtype=np.int64)
    children = np.array([t for _, t in layout.edges], dtype=np.int64)
    tasks = np.array(layout.weights, dtype=np.int64)
    return {
        "x0": x[parents],
        "y0": y[parents],
        "x1": x[children],
        "y1": y[children],
        "tasks": tasks,
        "width": 1 + np.log10(np.maximum(tasks, 1)),
    }
