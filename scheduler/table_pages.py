"""The dashboard's table pages: ``/workers`` (a row per node), ``/actors`` (a row
per actor) and ``/objects`` (the largest objects, who holds them, where they
were made).

Each is a ``TablePage``: a ``DataTable`` over a named ``ColumnDataSource`` (the
name a test reads back: ``workers``, ``actors``, ``objects``), a line of
totals above it, and a callback that replaces both whole when the ``Feed``
(scheduler/feed.py) has a newer table. The rows are the same as the page's
JSON (``/api/workers``, ``/api/actors``, ``/api/objects``); lists in a row
(an object's holders, its copies) show as text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bokeh.document import Document
from bokeh.layouts import column
from bokeh.models import ColumnDataSource
from bokeh.models.widgets import DataTable, Div, NumberFormatter, TableColumn

from .feed import Feed

Rows = tuple[float, list[dict[str, Any]], str]  # (when taken, rows, a line of totals)
# Numbers' formats (numbro's); a formatter is a model of its own in each document.
FORMATS = {"count": "0,0", "bytes": "0.0 b", "percent": "0.0"}
# Columns' widths, in proportion (the table fills the page); others get WIDTH.
WIDTH = 100
WIDTHS = {
    "object_id": 260, "actor_id": 260, "reference_type": 170, "holders": 340, "call_site": 420,
    "resources": 180,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TablePage:
    title: str
    source: str  # the ColumnDataSource's name
    columns: tuple[tuple[str, str, str], ...]  # (key, title, "text" or a FORMATS key)
    rows: Callable[[Feed], Rows]
    update_ms: int = 500

    def build(self, doc: Document, feed: Feed) -> None:
        taken, rows, totals = self.rows(feed)
        source = ColumnDataSource(self.data(rows), name=self.source)
        table = DataTable(
            source=source,
            columns=[_column(key, title, kind) for key, title, kind in self.columns],
            sizing_mode="stretch_width",
            height=600,
            index_position=None,
        )
        summary = Div(text=totals, name=f"{self.source}-totals")
        shown = {"taken": taken}

        def update() -> None:
            taken, rows, totals = self.rows(feed)
            if taken != shown["taken"]:
                shown["taken"] = taken
                source.data = self.data(rows)
                summary.text = totals

        doc.title = f"taskgraph: {self.title}"
        doc.add_root(column(summary, table, sizing_mode="stretch_width"))
        doc.add_periodic_callback(update, self.update_ms)

    def data(self, rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
        return {key: [_cell(row.get(key)) for row in rows] for key, _, _ in self.columns}


def _column(key: str, title: str, kind: str) -> TableColumn:
    width = WIDTHS.get(key, WIDTH)
    if kind in FORMATS:
        formatter = NumberFormatter(format=FORMATS[kind])
        return TableColumn(field=key, title=title, width=width, formatter=formatter)
    return TableColumn(field=key, title=title, width=width)


def _cell(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return "; ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(
            f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()
        )
    return "" if value is None else value


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def _nodes(feed: Feed) -> Rows:
    snap = feed.current()
    return snap.taken, snap.nodes, _count(len(snap.nodes), "node")


def _actors(feed: Feed) -> Rows:
    table = feed.actors()
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(table.by_state.items()))
    shown = f" (the first {len(table.rows)} shown)" if len(table.rows) < table.total else ""
    actors = _count(table.total, "actor")
    return table.taken, table.rows, f"{actors}{': ' + counts if counts else ''}{shown}"


def _objects(feed: Feed) -> Rows:
    table = feed.objects()
    totals = f"{_count(table.total_objects, 'object')}, {table.total_bytes:,} bytes in all" + (
        f"; the {len(table.rows)} largest:" if table.rows else ""
    )
    return table.taken, table.rows, totals


WORKERS = TablePage(
    "workers",
    "workers",
    (
        ("node_id", "node", "text"), ("host", "host", "text"),
        ("resources", "resources", "text"), ("cpu_percent", "CPU %", "percent"),
        ("memory_percent", "memory %", "percent"), ("memory_used", "memory used", "bytes"),
        ("store_bytes", "store: in memory", "bytes"), ("spilled_bytes", "store: spilled", "bytes"),
        ("store_capacity", "store: capacity", "bytes"), ("running", "running tasks", "count"),
        ("executors", "executors", "count"),
    ),
    _nodes,
)  # fmt: skip

ACTORS = TablePage(
    "actors",
    "actors",
    (
        ("actor_id", "actor", "text"), ("class_name", "class", "text"), ("name", "name", "text"),
        ("state", "state", "text"), ("node_id", "node", "text"), ("pid", "pid", "text"),
        ("calls_finished", "calls done", "count"), ("calls_failed", "calls failed", "count"),
        ("calls_running", "running", "count"), ("calls_queued", "queued", "count"),
        ("num_restarts", "restarts", "count"),
    ),
    _actors,
)  # fmt: skip

OBJECTS = TablePage(
    "objects",
    "objects",
    (
        ("object_id", "object", "text"), ("object_size", "size", "bytes"),
        ("state", "state", "text"), ("reference_type", "kept as", "text"),
        ("holders", "held by", "text"), ("call_site", "made at", "text"),
        ("node_id", "node", "text"), ("copies", "copies on", "text"),
    ),
    _objects,
)  # fmt: skip
