"""The dashboard's ``/status`` page: the live task stream, progress per function,
and each node's object store.

- **Task stream**: one lane per executor process (``node/pid``), one rectangle
  per finished task from its start to its end, coloured by function (failed
  ones black): the ``task-stream`` source, a row per task. Over each rectangle,
  its phases other than running are drawn in shades of their own (the
  ``task-phases`` source, a row per phase that took any time): *transfer*
  (waiting for copies of its arguments from other hosts) in red, *arguments*
  (reading and decoding them) lighter, *store* (storing its result) darker;
  what is left of the rectangle in the function's colour is its run.
- **Progress per function**: done, running, waiting, failed (``progress``).
- **Store memory**: per node, bytes in memory and spilled to disk against the
  store's capacity (``store-memory``).

The page reads the ``Feed``'s snapshot (scheduler/feed.py), never the state,
in a callback every ``UPDATE_MS``: the stream gets only the rows it has not
seen (``ColumnDataSource.stream`` with a rollover), the small tables are
replaced whole when they changed.

What an open page costs while tasks pour in is mostly per update (Bokeh's
message, the browser redrawing and indexing every rectangle it holds), so
the stream coalesces: after streaming ``n`` rows it streams again no sooner
than ``n / STREAMED_PER_SECOND`` seconds later (rows wait in the snapshot
meanwhile), and never more than the ``SHOWN`` newest (older ones would roll
over at once). At a few hundred tasks a second it updates every
``UPDATE_MS``; at thousands, once a second. A phase is shaded only when it
is at least a pixel wide on a stream ``PIXELS`` wide showing the page's
rows (its time is in the task's tooltip either way): tasks of a
millisecond add no shades, which would triple what the browser draws.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from bokeh.document import Document
from bokeh.layouts import column
from bokeh.models import (
    ColumnDataSource,
    DataRange1d,
    FactorRange,
    HoverTool,
    NumeralTickFormatter,
)
from bokeh.plotting import figure

from .feed import PROGRESS_STATES, Feed, Snapshot

UPDATE_MS = 200  # how often a page asks for the snapshot
# Rectangles a page holds, the newest (the feed keeps more, for /api/tasks): a
# browser redraws them all, and indexes them for hovering, on every update,
# which costs it more than the scheduler spends on the tasks themselves.
SHOWN = 2_000
STREAMED_PER_SECOND = SHOWN  # rows a page streams a second, at most (in fewer, larger updates)
PIXELS = 2_000  # a stream this wide at most: a phase narrower than one of its pixels is not shaded
NUMBERS = frozenset(
    ("left", "right", "lane", "top", "duration", "fetch", "deserialize", "run", "store",
     "alpha"),
)  # fmt: skip
PROGRESS_COLORS = ("#2ca02c", "#1f77b4", "#c7c7c7", "#d62728")  # done, running, waiting, failed
LANE_HEIGHT = 0.8
# A task's phases in order, as its row names them, and how each is drawn over it:
# (name shown, colour, alpha); None: not drawn (its rectangle shows it).
PHASES = (
    ("fetch", ("transfer", "#d62728", 0.9)),
    ("deserialize", ("arguments", "#ffffff", 0.55)),
    ("run", None),
    ("store", ("store", "#000000", 0.45)),
)
PHASE_COLUMNS = ("left", "right", "lane", "top", "phase", "color", "alpha", "name", "duration")
STORE_COLUMNS = ("node_id", "in_memory", "spilled", "spilled_end", "capacity")


def phase_columns(tasks: dict[str, list[Any]], narrowest: float = 0.0) -> dict[str, list[Any]]:
    """The phase segments of task rows (``Snapshot.rows_since``'s columns): each
    phase drawn that took more than ``narrowest`` (ms), from where the one before
    it ended, cut at the task's end."""
    out: dict[str, list[Any]] = {c: [] for c in PHASE_COLUMNS}
    for i, start in enumerate(tasks["left"]):
        if tasks["right"][i] - start <= narrowest:
            continue  # (its phases are narrower still)
        end, lane, at = tasks["right"][i], tasks["lane"][i], start
        for key, style in PHASES:
            spent = tasks[key][i]
            if spent > narrowest and style is not None and at < end:
                phase, color, alpha = style
                right = min(at + spent, end)
                for name, value in zip(
                    PHASE_COLUMNS,
                    (at, right, lane, lane + LANE_HEIGHT, phase, color, alpha,
                     tasks["name"][i], spent),
                    strict=True,
                ):  # fmt: skip
                    out[name].append(value)
            at += spent
    return out


def store_columns(snap: Snapshot) -> dict[str, list[Any]]:
    data: dict[str, list[Any]] = {c: [] for c in STORE_COLUMNS}
    for node in snap.store():
        data["node_id"].append(node["node_id"])
        data["in_memory"].append(node["bytes_in_memory"])
        data["spilled"].append(node["bytes_spilled"])
        data["spilled_end"].append(node["bytes_in_memory"] + node["bytes_spilled"])
        data["capacity"].append(node["capacity"])
    return data


class TaskStreamPart:
    """The task stream as a part of a page (``/status``, and the one in a notebook
    cell's frame): its figure (``plot``) over the ``task-stream`` and
    ``task-phases`` sources; ``update(snap)`` adds the rows it has not shown,
    unless it streamed so many so lately that they should wait (``streams``:
    how many times it streamed)."""

    def __init__(
        self, snap: Snapshot, clock: Callable[[], float] = time.monotonic, **figure_options: Any
    ) -> None:
        self.clock = clock
        self.seq, columns = snap.rows_since(0, SHOWN)
        self.lanes = len(snap.lanes)
        self.tasks = ColumnDataSource(_as_arrays(_with_tops(columns)), name="task-stream")
        shades = phase_columns(columns, self._narrowest())
        self.phases = ColumnDataSource(_as_arrays(shades), name="task-phases")
        self.plot = _task_stream(self.tasks, self.phases, **figure_options)
        _label_lanes(self.plot, snap.lanes)
        self.streams = 0
        self._next = 0.0  # no stream before (the clock's time)

    def update(self, snap: Snapshot) -> None:
        now = self.clock()
        if now >= self._next and snap.seq > self.seq:
            self.seq, new = snap.rows_since(self.seq, SHOWN)
            self.tasks.stream(_as_arrays(_with_tops(new)), rollover=SHOWN)
            shades = phase_columns(new, self._narrowest())
            if shades["left"]:
                self.phases.stream(_as_arrays(shades), rollover=self._phases_kept(shades))
            self.streams += 1
            self._next = now + len(new["left"]) / STREAMED_PER_SECOND
        if len(snap.lanes) != self.lanes:
            self.lanes = len(snap.lanes)
            _label_lanes(self.plot, snap.lanes)

    def _phases_kept(self, shades: dict[str, list[Any]]) -> int:
        """The held phases still over a held task (those left of them all go first:
        the source is in the order tasks finished), and the new ones."""
        oldest = np.min(self.tasks.data["left"])
        stale = int(np.count_nonzero(np.asarray(self.phases.data["right"]) <= oldest))
        return len(self.phases.data["left"]) - stale + len(shades["left"])

    def _narrowest(self) -> float:
        """A pixel's time (ms) on a stream ``PIXELS`` wide showing the rows held."""
        left, right = self.tasks.data["left"], self.tasks.data["right"]
        return float(np.max(right) - np.min(left)) / PIXELS if len(left) else 0.0


def build(doc: Document, feed: Feed) -> None:
    snap = feed.current()
    stream = TaskStreamPart(snap)

    names = sorted(snap.progress)
    progress = ColumnDataSource(_progress_columns(snap, names), name="progress")
    functions = FactorRange(factors=names)
    progress_plot = _progress_plot(progress, functions, len(names))

    nodes = store_columns(snap)
    store = ColumnDataSource(nodes, name="store-memory")
    node_range = FactorRange(factors=nodes["node_id"])
    store_plot = _store_plot(store, node_range, len(nodes["node_id"]))

    taken = snap.taken  # the snapshot shown

    def update() -> None:
        nonlocal taken
        snap = feed.current()
        if snap.taken == taken:
            return
        taken = snap.taken
        stream.update(snap)
        names = sorted(snap.progress)
        if list(functions.factors) != names:
            functions.factors = names
            progress_plot.height = _bars_height(len(names))
        counts = _progress_columns(snap, names)
        if counts != progress.data:  # (each change is a message, and a redraw)
            progress.data = counts
        nodes = store_columns(snap)
        if list(node_range.factors) != nodes["node_id"]:
            node_range.factors = nodes["node_id"]
            store_plot.height = _bars_height(len(nodes["node_id"]))
        if nodes != store.data:
            store.data = nodes

    doc.title = "taskgraph: status"
    doc.add_root(column(stream.plot, progress_plot, store_plot, sizing_mode="stretch_width"))
    doc.add_periodic_callback(update, UPDATE_MS)


def _as_arrays(columns: dict[str, list[Any]]) -> dict[str, Any]:
    """Number columns as numpy arrays: Bokeh sends those as binary buffers, not JSON
    lists, which is most of what streaming a few thousand rows a second costs."""
    return {
        name: np.asarray(values, dtype=np.float64) if name in NUMBERS else values
        for name, values in columns.items()
    }


def _with_tops(columns: dict[str, list[Any]]) -> dict[str, Any]:
    columns["top"] = [lane + LANE_HEIGHT for lane in columns["lane"]]  # a quad's top
    return columns


def _task_stream(tasks: ColumnDataSource, phases: ColumnDataSource, **options: Any) -> Any:
    stream = figure(
        title="Task stream",
        name="task-stream-plot",
        x_axis_type="datetime",
        tools="xpan,xwheel_zoom,reset",
        toolbar_location="above",
        **{"height": 360, "sizing_mode": "stretch_width", **options},
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
    shades = stream.quad(
        left="left",
        right="right",
        bottom="lane",
        top="top",
        fill_color="color",
        fill_alpha="alpha",
        line_alpha=0,
        source=phases,
    )
    # The view fits the tasks (a shade is always inside its task's rectangle).
    stream.x_range = DataRange1d(renderers=[bars])
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
        ),
        HoverTool(renderers=[shades], tooltips=[("@name", "@phase @duration{0.000} ms")]),
    )
    stream.yaxis.axis_label = "node/pid"
    stream.ygrid.visible = False
    return stream


def _label_lanes(plot: Any, lanes: list[str]) -> None:
    middle = LANE_HEIGHT / 2
    plot.yaxis.ticker = [i + middle for i in range(len(lanes))]
    plot.yaxis.major_label_overrides = {i + middle: lane for i, lane in enumerate(lanes)}


def _bars_height(bars: int) -> int:
    return max(120, 40 + 26 * bars)


def _progress_plot(progress: ColumnDataSource, functions: FactorRange, bars: int) -> Any:
    plot = figure(
        title="Progress per function",
        y_range=functions,
        height=_bars_height(bars),
        sizing_mode="stretch_width",
        tools="",
        toolbar_location=None,
    )
    plot.hbar_stack(
        list(PROGRESS_STATES),
        y="name",
        height=0.7,
        color=list(PROGRESS_COLORS),
        source=progress,
        legend_label=list(PROGRESS_STATES),
    )
    plot.legend.location = "bottom_right"
    plot.legend.orientation = "horizontal"
    return plot


def _progress_columns(snap: Snapshot, names: list[str]) -> dict[str, list[Any]]:
    data: dict[str, list[Any]] = {"name": names}
    for state in PROGRESS_STATES:
        data[state] = [snap.progress[n][state] for n in names]
    return data


def _store_plot(store: ColumnDataSource, nodes: FactorRange, bars: int) -> Any:
    """A bar per node: in memory from 0, spilled after it, the capacity as an outline."""
    plot = figure(
        title="Store memory per node",
        name="store-memory-plot",
        y_range=nodes,
        x_range=DataRange1d(start=0),
        height=_bars_height(bars),
        sizing_mode="stretch_width",
        tools="",
        toolbar_location=None,
    )
    plot.hbar(y="node_id", left=0, right="in_memory", height=0.6, color="#1f77b4",
              source=store, legend_label="in memory")  # fmt: skip
    plot.hbar(y="node_id", left="in_memory", right="spilled_end", height=0.6, color="#ff7f0e",
              hatch_pattern="/", hatch_color="#ffffff", source=store,
              legend_label="spilled to disk")  # fmt: skip
    plot.hbar(y="node_id", left=0, right="capacity", height=0.8, fill_alpha=0,
              line_color="#444444", line_dash="dashed", source=store,
              legend_label="capacity")  # fmt: skip
    plot.xaxis.formatter = NumeralTickFormatter(format="0.0 b")
    plot.add_tools(
        HoverTool(
            tooltips=[
                ("node", "@node_id"),
                ("in memory", "@in_memory{0.0 b}"),
                ("spilled", "@spilled{0.0 b}"),
                ("capacity", "@capacity{0.0 b}"),
            ]
        )
    )
    plot.legend.location = "bottom_right"
    plot.legend.orientation = "horizontal"
    return plot
