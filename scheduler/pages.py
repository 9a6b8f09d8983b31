"""The dashboard's Bokeh pages: ``/status`` (the task stream, progress per function)
and ``/workers`` (a table of nodes).

Each page is a Bokeh document made per browser tab, on the scheduler's loop,
and updated by a periodic callback that reads the ``Feed``'s snapshot
(scheduler/feed.py), never the state: the task stream gets only the rows it
has not seen (``ColumnDataSource.stream`` with a rollover), the small tables
are replaced whole. Models a test reads back carry names (``task-stream``,
``progress``, ``workers``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.document import Document
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, FactorRange, HoverTool
from bokeh.models.widgets import DataTable, Div, NumberFormatter, TableColumn
from bokeh.plotting import figure

from .feed import KEEP, PROGRESS_STATES, Feed, Snapshot
from .pages_single import applications as single_plot_pages

UPDATE_MS = 200  # how often a page asks for the snapshot
PROGRESS_COLORS = ("#2ca02c", "#1f77b4", "#c7c7c7", "#d62728")  # done, running, waiting, failed
NODE_COLUMNS = (
    ("node_id", "node"), ("host", "host"), ("cpu_percent", "CPU %"),
    ("memory_percent", "memory %"), ("store_bytes", "store bytes"),
    ("spilled_bytes", "spilled bytes"), ("running", "running tasks"), ("executors", "executors"),
)  # fmt: skip

NAV = '<b>taskgraph</b> &nbsp; <a href="status">status</a> &nbsp; <a href="workers">workers</a>'


def applications(feed: Feed) -> dict[str, Application]:
    return {
        **single_plot_pages(feed),  # for frames: no navigation bar, not in it
        "/status": Application(FunctionHandler(_page(feed, status_page))),
        "/workers": Application(FunctionHandler(_page(feed, workers_page))),
    }


def _page(feed: Feed, build: Callable[[Document, Feed], None]) -> Callable[[Document], None]:
    def modify(doc: Document) -> None:
        build(doc, feed)

    return modify


def status_page(doc: Document, feed: Feed) -> None:
    snap = feed.current()
    seen, columns = snap.rows_since(0)
    columns["top"] = [lane + 0.8 for lane in columns["lane"]]  # a quad's top, beside its lane
    tasks = ColumnDataSource(columns, name="task-stream")
    stream = figure(
        title="Task stream",
        name="task-stream-plot",
        x_axis_type="datetime",
        height=360,
        sizing_mode="stretch_width",
        tools="xpan,xwheel_zoom,reset",
        toolbar_location="above",
    )
    bars = stream.quad(
        left="left",
        right="right",
        bottom="lane",
        top="top",
        fill_color="color",
        line_color="color",
        fill_alpha=0.8,
        source=tasks,
    )
    stream.add_tools(
        HoverTool(
            renderers=[bars],
            tooltips=[
                ("name", "@name"),
                ("duration", "@duration{0.000} ms"),
                ("node", "@node"),
                ("pid", "@pid"),
                ("state", "@state"),
                ("phases (ms)", "fetch @fetch, decode @deserialize, run @run, store @store"),
            ],
        )
    )
    stream.yaxis.axis_label = "node/pid"
    stream.ygrid.visible = False

    names = sorted(snap.progress)
    progress = ColumnDataSource(_progress_columns(snap, names), name="progress")
    functions = FactorRange(factors=names)
    bars_height = max(120, 40 + 26 * len(names))
    progress_plot = figure(
        title="Progress per function",
        y_range=functions,
        height=bars_height,
        sizing_mode="stretch_width",
        tools="",
        toolbar_location=None,
    )
    progress_plot.hbar_stack(
        list(PROGRESS_STATES),
        y="name",
        height=0.7,
        color=list(PROGRESS_COLORS),
        source=progress,
        legend_label=list(PROGRESS_STATES),
    )
    progress_plot.legend.location = "bottom_right"
    progress_plot.legend.orientation = "horizontal"
    _label_lanes(stream, snap.lanes)

    shown = _Shown(seen, len(snap.lanes), snap.taken)

    def update() -> None:
        snap = feed.current()
        if snap.taken == shown.taken:
            return
        shown.taken = snap.taken
        shown.seq, new = snap.rows_since(shown.seq)
        if new["left"]:
            new["top"] = [lane + 0.8 for lane in new["lane"]]
            tasks.stream(dict(new), rollover=KEEP)
        if len(snap.lanes) != shown.lanes:
            shown.lanes = len(snap.lanes)
            _label_lanes(stream, snap.lanes)
        names = sorted(snap.progress)
        if list(functions.factors) != names:
            functions.factors = names
            progress_plot.height = max(120, 40 + 26 * len(names))
        progress.data = _progress_columns(snap, names)

    doc.title = "taskgraph: status"
    doc.add_root(column(Div(text=NAV), stream, progress_plot, sizing_mode="stretch_width"))
    doc.add_periodic_callback(update, UPDATE_MS)


@dataclass(slots=True)
class _Shown:
    """What one page has shown: the newest task row, how many lanes, which snapshot."""

    seq: int
    lanes: int
    taken: float


def _label_lanes(plot: Any, lanes: list[str]) -> None:
    plot.yaxis.ticker = [i + 0.4 for i in range(len(lanes))]
    plot.yaxis.major_label_overrides = {i + 0.4: lane for i, lane in enumerate(lanes)}


def _progress_columns(snap: Snapshot, names: list[str]) -> dict[str, list[Any]]:
    data: dict[str, list[Any]] = {"name": names}
    for state in PROGRESS_STATES:
        data[state] = [snap.progress[n][state] for n in names]
    return data


def workers_page(doc: Document, feed: Feed) -> None:
    snap = feed.current()
    nodes = ColumnDataSource(_node_columns(snap), name="workers")
    number = NumberFormatter(format="0,0")
    percent = NumberFormatter(format="0.0")
    table = DataTable(
        source=nodes,
        columns=[
            TableColumn(
                field=key,
                title=title,
                formatter=percent if key.endswith("percent") else number,
            )
            if key not in ("node_id", "host")
            else TableColumn(field=key, title=title)
            for key, title in NODE_COLUMNS
        ],
        sizing_mode="stretch_width",
        height=400,
        index_position=None,
    )
    state = {"taken": snap.taken}

    def update() -> None:
        snap = feed.current()
        if snap.taken != state["taken"]:
            state["taken"] = snap.taken
            nodes.data = _node_columns(snap)

    doc.title = "taskgraph: workers"
    doc.add_root(column(Div(text=NAV), table, sizing_mode="stretch_width"))
    doc.add_periodic_callback(update, 500)


def _node_columns(snap: Snapshot) -> dict[str, list[Any]]:
    return {key: [node[key] for node in snap.nodes] for key, _ in NODE_COLUMNS}
