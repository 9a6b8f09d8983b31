"""Pages with one plot each, for embedding: ``/individual-task-stream`` (as
Dask names its individual plots) is what ``tg.task_stream()`` puts in a
notebook cell, in an iframe.

The plot fills its page (``stretch_both``), so the frame decides its size.
Like the pages in scheduler/pages.py, it reads the ``Feed``'s snapshot and
streams only the task rows it has not shown. ``TaskStreamPlot`` is the task
stream as a part, so that any page can hold one.
"""

from __future__ import annotations

from typing import Any

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.document import Document
from bokeh.models import ColumnDataSource, HoverTool
from bokeh.plotting import figure

from .feed import KEEP, Feed, Snapshot

PATH = "/individual-task-stream"
UPDATE_MS = 200  # how often the page asks for the snapshot (as /status does)
TOOLTIPS = [
    ("name", "@name"),
    ("duration", "@duration{0.000} ms"),
    ("node", "@node"),
    ("pid", "@pid"),
    ("state", "@state"),
    ("phases (ms)", "fetch @fetch, decode @deserialize, run @run, store @store"),
]


class TaskStreamPlot:
    """A figure with a bar per finished task (its ``ColumnDataSource`` is named
    ``task-stream``), a lane per ``node/pid``; ``update(snapshot)`` adds the rows
    it has not shown yet."""

    def __init__(self, snap: Snapshot, **figure_options: Any) -> None:
        self.seq, columns = snap.rows_since(0)
        self.lanes = len(snap.lanes)
        self.taken = snap.taken
        columns["top"] = [lane + 0.8 for lane in columns["lane"]]  # a quad's top, beside its lane
        self.source = ColumnDataSource(columns, name="task-stream")
        self.figure = figure(
            title="Task stream",
            name="task-stream-plot",
            x_axis_type="datetime",
            tools="xpan,xwheel_zoom,reset",
            toolbar_location="above",
            **figure_options,
        )
        bars = self.figure.quad(
            left="left",
            right="right",
            bottom="lane",
            top="top",
            fill_color="color",
            line_color="color",
            fill_alpha=0.8,
            source=self.source,
        )
        self.figure.add_tools(HoverTool(renderers=[bars], tooltips=TOOLTIPS))
        self.figure.yaxis.axis_label = "node/pid"
        self.figure.ygrid.visible = False
        self._label_lanes(snap.lanes)

    def update(self, snap: Snapshot) -> None:
        if snap.taken == self.taken:
            return
        self.taken = snap.taken
        self.seq, new = snap.rows_since(self.seq)
        if new["left"]:
            new["top"] = [lane + 0.8 for lane in new["lane"]]
            self.source.stream(dict(new), rollover=KEEP)
        if len(snap.lanes) != self.lanes:
            self.lanes = len(snap.lanes)
            self._label_lanes(snap.lanes)

    def _label_lanes(self, lanes: list[str]) -> None:
        self.figure.yaxis.ticker = [i + 0.4 for i in range(len(lanes))]
        self.figure.yaxis.major_label_overrides = {i + 0.4: lane for i, lane in enumerate(lanes)}


def task_stream_page(doc: Document, feed: Feed) -> None:
    plot = TaskStreamPlot(feed.current(), sizing_mode="stretch_both")

    def update() -> None:
        plot.update(feed.current())

    doc.title = "taskgraph: task stream"
    doc.add_root(plot.figure)
    doc.add_periodic_callback(update, UPDATE_MS)


def applications(feed: Feed) -> dict[str, Application]:
    """This module's pages, for the dashboard's application. They have no
    navigation bar (they go in frames) and are not in the dashboard's."""

    def modify(doc: Document) -> None:
        task_stream_page(doc, feed)

    return {PATH: Application(FunctionHandler(modify))}
