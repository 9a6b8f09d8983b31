"""The dashboard's ``/logs`` page: pick a node (or open ``/logs?node=ID``) and see
the last lines of each of its log files, what its executors printed, with the
header line where each task began to print (worker/output.py).

The lines come from the ``Feed``'s ``LogTail`` (scheduler/log_tail.py), which
asks the node's daemon through the scheduler, as ``taskgraph logs`` does; the
page awaits the answer in a callback of its own, so the scheduler's loop never
waits for a daemon. The lines are the ``log-lines`` source (a row per line:
its file and its text), refreshed every ``UPDATE_MS`` while the page is open;
the node picker is ``log-node``, a line saying what is shown ``log-status``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from bokeh.document import Document
from bokeh.layouts import column
from bokeh.models import ColumnDataSource
from bokeh.models.widgets import DataTable, Div, Select, TableColumn

from .feed import Feed
from .log_tail import LogAnswer

UPDATE_MS = 1000
MAX_LINES = 2_000  # rows the page holds: the newest of each file, files in turn
LINE_COLUMNS = ("file", "line")


def log_columns(answer: LogAnswer, limit: int = MAX_LINES) -> dict[str, list[Any]]:
    """The answer's lines, file after file (as the daemon named them), at most
    ``limit`` in all: the same share of the newest lines from each file."""
    data: dict[str, list[Any]] = {c: [] for c in LINE_COLUMNS}
    files = [f for f in answer.files if f["lines"]]
    share = limit // len(files) if files else 0
    for entry in files:
        for line in entry["lines"][-share:] if share else []:
            data["file"].append(entry["file"])
            data["line"].append(line)
    return data


def build(doc: Document, feed: Feed) -> None:
    nodes = [node["node_id"] for node in feed.current().nodes]
    asked = _asked_node(doc)
    pick = Select(
        title="node",
        options=_options(nodes, asked),
        value=asked or (nodes[0] if nodes else ""),
        name="log-node",
    )
    status = Div(text="", name="log-status")
    lines = ColumnDataSource({c: [] for c in LINE_COLUMNS}, name="log-lines")
    table = DataTable(
        source=lines,
        columns=[
            TableColumn(field="file", title="file", width=160),
            TableColumn(field="line", title="line", width=1000),
        ],
        sizing_mode="stretch_width",
        height=640,
        index_position=None,
    )
    busy = {"now": False}

    async def update() -> None:
        if busy["now"]:
            return
        nodes = [node["node_id"] for node in feed.current().nodes]
        options = _options(nodes, pick.value)
        if pick.options != options:
            pick.options = options
        node = pick.value or (nodes[0] if nodes else "")
        if not node:
            status.text = "no nodes in the cluster yet"
            return
        if feed.logs is None:
            status.text = "this scheduler reads no log files"
            return
        busy["now"] = True
        try:
            answer = await feed.logs.read(node)
        finally:
            busy["now"] = False
        if pick.value and pick.value != node:
            return  # another node was picked meanwhile: its lines come next
        pick.value = node
        lines.data = log_columns(answer)
        files = sum(1 for f in answer.files if f["lines"])
        status.text = answer.error or (
            f"node {node}: the last lines of {files} log files" if files else
            f"node {node}: nothing printed yet"
        )  # fmt: skip

    def picked(attr: str, old: Any, new: Any) -> None:
        doc.add_next_tick_callback(_awaited(update))

    pick.on_change("value", picked)
    doc.title = "taskgraph: logs"
    doc.add_root(column(pick, status, table, sizing_mode="stretch_width"))
    doc.add_periodic_callback(_awaited(update), UPDATE_MS)
    doc.add_next_tick_callback(_awaited(update))


def _awaited(callback: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """A coroutine as a Bokeh callback: Bokeh awaits it, holding this document's lock
    (other tabs go on), though its annotations name plain functions only."""
    return cast(Callable[[], None], callback)


def _asked_node(doc: Document) -> str:
    request = getattr(doc.session_context, "request", None)  # (a server session's)
    if request is None:
        return ""
    values = request.arguments.get("node") or [b""]
    value = values[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _options(nodes: list[str], current: str) -> list[str | None]:
    """The cluster's nodes, and the one shown though it is gone (or was never there)."""
    return [*nodes] if not current or current in nodes else [*nodes, current]
