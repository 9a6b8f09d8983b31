"""The dashboard's ``/graph`` page: the task graph, live, coloured by state.

::

    GraphFeed.current() (scheduler/graph_feed.py), read every 0.2 s by each tab
      a new layout: nodes and edges replaced whole
      the same one: only the states that changed, patched

Where nodes go and when layouts run is ``scheduler/graph_feed.py``'s business;
this module draws what it made.

Models a test reads back carry names: the sources ``graph-nodes`` (a row per
node: ``key``, ``name``, ``state``, ``tasks``, ``size``, ``x``, ``y``; its
renderer ``graph-node-circles`` colours it from ``state``), ``graph-edges``
(``x0``, ``y0``, ``x1``, ``y1``, ``tasks``, ``width``), ``graph-shares`` (a
wedge per function and state, collapsed graphs only) and ``graph-labels``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from bokeh.document import Document
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, DataRange1d, HoverTool
from bokeh.models.annotations import LabelSet
from bokeh.models.widgets import Div
from bokeh.plotting import figure
from bokeh.transform import factor_cmap

from .feed import Feed
from .graph import EMPTY, STATE_COLORS, STATES, GraphView, TaskGraph
from .graph_feed import Drawing, GraphFeed, graph_feed

UPDATE_MS = 200  # how often a page asks for the graph
LABELS = 60  # nodes are named on the page up to this many (and always when collapsed)
# A page takes a new layout at most this many nodes' worth a second: sending one
# costs the loop tens of milliseconds for 5,000 nodes (ids and names as JSON).
REPLACED_PER_SECOND = 5_000


def build(doc: Document, feed: Feed) -> None:
    """The ``/graph`` page (scheduler/pages.py adds the bar above it)."""
    graph_page(doc, graph_feed(feed))


# -- the page ----------------------------------------------------------------


def graph_page(doc: Document, feed: GraphFeed) -> None:
    view = feed.current()
    nodes = ColumnDataSource(node_columns(view, feed.drawing), name="graph-nodes")
    edges = ColumnDataSource(feed.drawing.edges, name="graph-edges")
    shares = ColumnDataSource(share_columns(view), name="graph-shares")
    labels = ColumnDataSource(label_columns(view), name="graph-labels")
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
    # Coloured in the browser from the state (a patch sends the state alone); a
    # function's node says how many of its tasks are in which state, no factor:
    # unfilled, over its wedges.
    fill = factor_cmap("state", list(STATE_COLORS.values()), list(STATE_COLORS), nan_color="#0000")
    circles = plot.scatter(
        x="x",
        y="y",
        size="size",
        fill_color=fill,
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
            text="text",
            x_offset="offset",
            y_offset=4,
            text_font_size="9pt",
            source=labels,
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
        before = shown.view
        now = feed.clock()
        if view.layout is not before.layout:
            if now < shown.hold:
                return  # (a few hundred ms late, for a big graph that grows)
            shown.hold = now + len(view.layout.keys) / REPLACED_PER_SECOND
        shown.view = view
        summary.text = summary_of(view, feed.graph)
        if view.layout is not before.layout:
            edges.data = feed.drawing.edges
        if view.layout.collapsed or before.layout.collapsed:
            shares.data = share_columns(view)
        if view.layout is not before.layout or view.layout.collapsed:
            nodes.data = node_columns(view, feed.drawing)
            labels.data = label_columns(view)
            return
        changed = [
            (i, state)
            for i, (state, was) in enumerate(zip(view.states, before.states, strict=True))
            if state != was
        ]
        if changed:
            nodes.patch({"state": changed})

    doc.title = "taskgraph: graph"
    doc.add_root(column(summary, plot, sizing_mode="stretch_width"))
    doc.add_periodic_callback(update, UPDATE_MS)


@dataclass(slots=True)
class _Shown:
    view: GraphView
    hold: float = 0.0  # no new layout before (monotonic seconds)


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


# Numbers go to the browser as numpy arrays (binary buffers, not JSON lists): a new
# layout of 5,000 nodes is then mostly their ids and names.


def node_columns(view: GraphView, drawing: Drawing) -> dict[str, Any]:
    layout = view.layout
    if not layout.collapsed:
        assert drawing.layout is layout
        return {**drawing.nodes, "state": list(view.states)}
    tasks = np.array([sum(c.values()) for c in view.counts])
    return {
        "key": list(layout.names),
        "name": list(layout.names),
        "state": [_summary(c) for c in view.counts],
        "tasks": tasks,
        "size": 2 * _radius(tasks),
        "x": np.array(layout.x),
        "y": np.array(layout.y),
    }


def label_columns(view: GraphView) -> dict[str, Any]:
    """A function's name beside each node, for a graph small enough to read them
    (or collapsed)."""
    layout = view.layout
    if not layout.collapsed and len(layout.keys) > LABELS:
        layout = EMPTY
    tasks = np.array([sum(c.values()) for c in view.counts]) if layout.collapsed else 1
    return {
        "x": np.array(layout.x),
        "y": np.array(layout.y),
        "text": list(layout.names),
        "offset": _radius(tasks) + 2 if layout.collapsed else np.full(len(layout.x), 9.0),
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
                (x, y, float(_radius(total)), end, start, STATE_COLORS[state], name, state, n),
                strict=True,
            ):
                column_.append(value)
            start = end
    return columns


def _radius(tasks: Any) -> Any:
    """A function's node's radius in pixels, by how many tasks it stands for."""
    return 8 + 3 * np.log10(np.maximum(tasks, 1))


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[s]} {s}" for s in STATES if counts.get(s))
