"""The dashboard's ``/graph`` page and ``/api/graph``: the task graph, live, coloured by state.

::

    GraphFeed.current(), at most every 0.2 s, by the first reader (on the loop)
      TaskGraph.update(history.since(seq), state.tasks)   the finished since the last, the live
      the set of nodes changed, no layout running ──▶ layout(shape) on the executor's thread
      a layout done ──▶ taken; GraphView = that Layout + the states now
                 ┌──────────────────────────────┴───────────────┐
    /graph (a Bokeh document per tab, every 0.2 s)        /api/graph (JSON)
      a new layout: nodes and edges replaced whole
      the same one: only the states that changed, patched

The graph itself (which tasks, their edges, where they go) is in
``scheduler/graph.py``, pure; this module decides when and where it is made.
As the ``Feed``, a ``GraphFeed`` reads the state only when someone looks, at
most every ``PERIOD`` and at most ``BUDGET`` of the loop's time. Laying out
5,000 nodes takes tens of milliseconds, so it happens on a thread of its own
(``taskgraph-graph-layout``), one at a time, on a frozen copy of the nodes;
the loop keeps showing the last layout, with live states, until the next one
is done. The layout is pure Python and holds the GIL while it runs, so it
shares the loop's time rather than stalling it (the interpreter switches
threads every 5 ms); a layout that took ``t`` seconds waits ``t / BUDGET``
before the next may start, so at most ``BUDGET`` of the time goes to layouts.

Models a test reads back carry names: the sources ``graph-nodes`` (a row per
node: ``key``, ``name``, ``state``, ``color``, ``x``, ``y``), ``graph-edges``
(``x0``, ``y0``, ``x1``, ``y1``, ``tasks``) and ``graph-shares`` (a wedge
per function and state, collapsed graphs only).
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.document import Document
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, DataRange1d, HoverTool
from bokeh.models.annotations import LabelSet
from bokeh.models.widgets import Div
from bokeh.plotting import figure
from tornado import web

from .feed import BUDGET, PERIOD, Feed
from .graph import (
    EMPTY,
    KEEP,
    LIMIT,
    STATE_COLORS,
    STATES,
    GraphView,
    Layout,
    Shape,
    TaskGraph,
    layout,
)

if TYPE_CHECKING:
    from .state import SchedulerState

log = logging.getLogger("taskgraph.scheduler")

UPDATE_MS = 200  # how often a page asks for the graph
LABELS = 60  # nodes are named on the page up to this many (and always when collapsed)
NAV = (
    '<b>taskgraph</b> &nbsp; <a href="status">status</a> &nbsp; <a href="workers">workers</a>'
    ' &nbsp; <a href="graph">graph</a>'
)


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
        self.layout = EMPTY  # the last one done
        self.view = GraphView(EMPTY, [], [], 0)
        self.layouts = 0  # layouts done
        self.layout_seconds = 0.0  # what the last one took
        self._seq = 0  # the history's ``kept`` as of the last update
        self._asked = EMPTY.version  # the version of the nodes last sent to be laid out
        self._running: Future[tuple[Layout, float]] | None = None
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
        self.view = graph.view(self.layout, self.wall())

    def _lay_out(self, shape: Shape) -> Future[tuple[Layout, float]]:
        clock = self.clock

        def lay_out() -> tuple[Layout, float]:
            start = clock()
            done = layout(shape)
            return done, clock() - start

        if self.executor is not None:
            return self.executor.submit(lay_out)
        future: Future[tuple[Layout, float]] = Future()
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
            self.layout, self.layout_seconds = running.result()
        except Exception:  # (a bug in the layout must not take the scheduler down)
            log.exception("laying out the task graph failed; the page keeps the last layout")
            self._next_layout = now + 10 * self.period
            return
        self.layouts += 1
        self._next_layout = now + self.layout_seconds / BUDGET


_feeds: weakref.WeakKeyDictionary[Feed, GraphFeed] = weakref.WeakKeyDictionary()


def graph_feed(feed: Feed) -> GraphFeed:
    """The one ``GraphFeed`` beside the dashboard's ``feed`` (the page and the JSON share it)."""
    graph = _feeds.get(feed)
    if graph is None:  # (its thread starts with the first layout, and is idle between them)
        executor = ThreadPoolExecutor(1, thread_name_prefix="taskgraph-graph-layout")
        graph = _feeds[feed] = GraphFeed(feed.state, executor, period=feed.period)
    return graph


class GraphApi(web.RequestHandler):
    def initialize(self, feed: Feed) -> None:
        self.graph = graph_feed(feed)

    def get(self) -> None:
        self.write(self.graph.current().to_json())


def application(feed: Feed) -> Application:
    graph = graph_feed(feed)

    def modify(doc: Document) -> None:
        graph_page(doc, graph)

    return Application(FunctionHandler(modify))


# -- the page ----------------------------------------------------------------


def graph_page(doc: Document, feed: GraphFeed) -> None:
    view = feed.current()
    nodes = ColumnDataSource(node_columns(view), name="graph-nodes")
    edges = ColumnDataSource(edge_columns(view.layout), name="graph-edges")
    shares = ColumnDataSource(share_columns(view), name="graph-shares")
    plot = figure(
        title="Task graph",
        name="graph-plot",
        height=700,
        sizing_mode="stretch_width",
        tools="pan,wheel_zoom,box_zoom,reset,save",
        active_scroll="wheel_zoom",
        toolbar_location="above",
    )
    plot.axis.visible = False
    plot.grid.visible = False
    lines = plot.segment(
        x0="x0",
        y0="y0",
        x1="x1",
        y1="y1",
        line_width="width",
        line_color="#8c8c8c",
        line_alpha=0.5,
        source=edges,
        name="graph-edge-lines",
    )
    plot.wedge(
        x="x",
        y="y",
        radius="radius",
        radius_units="screen",
        start_angle="start",
        end_angle="end",
        fill_color="color",
        line_color="color",
        source=shares,
        name="graph-share-wedges",
    )
    circles = plot.scatter(
        x="x",
        y="y",
        size="size",
        fill_color="fill",
        line_color="#333333",
        line_width=0.5,
        source=nodes,
        name="graph-node-circles",
    )
    # The view fits the nodes and edges only: a wedge's radius is in pixels, which
    # a range would otherwise take for data units.
    plot.x_range = DataRange1d(renderers=[circles, lines], range_padding=0.1)
    plot.y_range = DataRange1d(renderers=[circles, lines], range_padding=0.1)
    plot.add_layout(
        LabelSet(
            x="x",
            y="y",
            text="label",
            x_offset="offset",
            y_offset=4,
            text_font_size="9pt",
            source=nodes,
        )
    )
    plot.add_tools(
        HoverTool(
            renderers=[circles],
            tooltips=[("name", "@name"), ("state", "@state"), ("tasks", "@tasks"), ("", "@key")],
        )
    )
    summary = Div(text=summary_of(view, feed.graph), name="graph-summary")
    shown = _Shown(view)

    def update() -> None:
        view = feed.current()
        if view is shown.view:
            return
        before, shown.view = shown.view, view
        summary.text = summary_of(view, feed.graph)
        if view.layout is not before.layout:
            edges.data = edge_columns(view.layout)
        if view.layout.collapsed or before.layout.collapsed:
            shares.data = share_columns(view)
        if view.layout is not before.layout or view.layout.collapsed:
            nodes.data = node_columns(view)  # (collapsed: a node per function, a few)
            return
        changed = [
            (i, state)
            for i, (state, was) in enumerate(zip(view.states, before.states, strict=True))
            if state != was
        ]
        if changed:
            nodes.patch(
                {
                    "state": changed,
                    "fill": [(i, STATE_COLORS[state]) for i, state in changed],
                    "color": [(i, STATE_COLORS[state]) for i, state in changed],
                }
            )

    doc.title = "taskgraph: graph"
    doc.add_root(column(Div(text=NAV), summary, plot, sizing_mode="stretch_width"))
    doc.add_periodic_callback(update, UPDATE_MS)


@dataclass(slots=True)
class _Shown:
    view: GraphView


def summary_of(view: GraphView, graph: TaskGraph) -> str:
    drawn = len(view.layout.keys)
    if view.layout.collapsed:
        what = f"above {graph.limit:,}, collapsed by function: {drawn:,} functions"
    else:
        what = f"{drawn:,} drawn"
    return (
        f"{view.nodes:,} tasks in the graph (those live and the last {graph.keep:,} "
        f"finished); {what}"
    )


def node_columns(view: GraphView) -> dict[str, list[Any]]:
    layout = view.layout
    n = len(layout.keys)
    colors = view.colors()
    if layout.collapsed:
        tasks = [sum(c.values()) for c in view.counts]
        return {
            "key": list(layout.names),
            "name": list(layout.names),
            "state": [_summary(c) for c in view.counts],
            "color": colors,
            "fill": ["#ffffff00"] * n,  # (the wedges beneath show the states)
            "tasks": tasks,
            "size": [2 * _radius(t) for t in tasks],
            "offset": [_radius(t) + 2 for t in tasks],
            "label": list(layout.names),
            "x": list(layout.x),
            "y": list(layout.y),
        }
    size = 14 if n <= 100 else 8 if n <= 1000 else 5
    return {
        "key": [k.hex() for k in layout.keys if isinstance(k, bytes)],
        "name": list(layout.names),
        "state": list(view.states),
        "color": colors,
        "fill": list(colors),
        "tasks": [1] * n,
        "size": [size] * n,
        "offset": [size / 2 + 2] * n,
        "label": list(layout.names) if n <= LABELS else [""] * n,
        "x": list(layout.x),
        "y": list(layout.y),
    }


def edge_columns(layout: Layout) -> dict[str, list[Any]]:
    x, y = layout.x, layout.y
    return {
        "x0": [x[s] for s, _ in layout.edges],
        "y0": [y[s] for s, _ in layout.edges],
        "x1": [x[t] for _, t in layout.edges],
        "y1": [y[t] for _, t in layout.edges],
        "tasks": list(layout.weights),
        "width": [1 + math.log10(n) for n in layout.weights],
    }


def share_columns(view: GraphView) -> dict[str, list[Any]]:
    """A wedge per function and state, its angle the share of the function's tasks."""
    columns: dict[str, list[Any]] = {
        c: [] for c in ("x", "y", "radius", "start", "end", "color", "name", "state", "tasks")
    }
    layout = view.layout
    if not layout.collapsed:
        return columns
    for name, counts, x, y in zip(layout.names, view.counts, layout.x, layout.y, strict=True):
        total = sum(counts.values())
        start = math.pi / 2
        for state in STATES:
            n = counts.get(state, 0)
            if not n:
                continue
            end = start - 2 * math.pi * n / total
            for column_, value in zip(
                columns.values(),
                (x, y, _radius(total), end, start, STATE_COLORS[state], name, state, n),
                strict=True,
            ):
                column_.append(value)
            start = end
    return columns


def _radius(tasks: int) -> float:
    return 8 + 3 * math.log10(max(tasks, 1))


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[s]} {s}" for s in STATES if counts.get(s))
